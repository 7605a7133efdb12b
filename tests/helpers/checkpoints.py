"""Checkpoint checks for tests: verify one step without a target, restore the latest onto a target."""
from __future__ import annotations

import json
import pathlib
from typing import Any

import jax

from deft_jax.training import checkpointing


def verify_step(directory: str | pathlib.Path, step: int) -> int:
    """Restore checkpoint `step` under `directory` (its files, readability, checksums and finiteness are
    checked; CheckpointCorruptError naming the step and the file or tensor) as laid out in its metadata,
    on one device. Returns how many tensors matched a recorded checksum (0 for a step saved before
    checksums were recorded)."""
    tree = checkpointing.state_metadata(directory, step)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device), tree)
    manager = checkpointing.make_manager(directory=directory, read_only=True, async_save=False)
    try:
        state, _, _ = checkpointing.restore(manager, target=target, step=int(step))
    finally:
        manager.close()
    step_dir = checkpointing.step_directory(pathlib.Path(directory).absolute(), step)
    record_file = step_dir / checkpointing.CHECKSUM_ITEM / "metadata"
    record = json.loads(record_file.read_text()) if record_file.exists() else None
    return checkpointing.verify_tensors(state, record=record, step=int(step),
                                        where=str(step_dir / checkpointing.STATE_ITEM))


def latest_restorable_step(*, directory: str | pathlib.Path, target: Any) -> int:
    """Restore the latest checkpoint under `directory` onto `target` (verified); returns its step."""
    manager = checkpointing.make_manager(directory=directory, read_only=True, async_save=False)
    try:
        state, _, step = checkpointing.restore(manager, target=target)
        jax.block_until_ready(state)
        return step
    finally:
        manager.close()
