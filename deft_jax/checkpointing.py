"""Checkpoints: orbax CheckpointManager holding the train state and the data iterator's state.

Layout: <workdir>/checkpoints/<step>/{state, data_iterator}. `state` is the train-state pytree
(orbax PyTree handler, OCDBT; restored onto target shardings, so a checkpoint written on one mesh restores
onto another mesh shape or device count); `data_iterator` is a JSON dict (JsonSave/JsonRestore).

The state handler is orbax's standard PyTree handler with one change: replicated arrays are written
replica-parallel (each replica writes a slice) only when a slice is at least 4 MiB. Below that the
per-device slicing costs a small compile per array shape on the first save (seconds for a model with
many small replicated tensors) and saves no time. Saves are
asynchronous and atomic: orbax writes into a temporary directory and renames it when complete, so a
process killed mid-write leaves the previous checkpoints restorable (the partial directory is ignored and
cleaned up by the next manager).
"""
from __future__ import annotations

import pathlib
import shutil
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

STATE_ITEM = "state"
DATA_ITEM = "data_iterator"
MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL = 4 << 20


def _state_handler() -> ocp.PyTreeCheckpointHandler:
    from orbax.checkpoint._src.serialization import type_handler_registry

    handlers = []
    for kind, handler in type_handler_registry._DEFAULT_TYPE_HANDLERS:  # noqa: SLF001 (orbax's defaults)
        if kind is jax.Array:
            handler = ocp.type_handlers.ArrayHandler(
                min_slice_bytes_for_replica_parallel=MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL)
        handlers.append((kind, handler))
    registry = ocp.type_handlers.create_type_handler_registry(*handlers)
    return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


def checkpoint_dir(workdir: str | pathlib.Path) -> pathlib.Path:
    return pathlib.Path(workdir).absolute() / "checkpoints"  # orbax reads no metadata from relative paths


TMP_MARKER = ".orbax-checkpoint-tmp"


def remove_partial_writes(directory: str | pathlib.Path) -> list[pathlib.Path]:
    """Delete unfinished writes (`<step>.orbax-checkpoint-tmp-*`, left by a process killed mid-save).

    Done synchronously by process 0 before the manager starts (orbax's own clean-up runs in the
    background); returns what was removed.
    """
    directory = pathlib.Path(directory)
    if jax.process_index() != 0 or not directory.is_dir():
        return []
    partial = sorted(p for p in directory.iterdir() if TMP_MARKER in p.name)
    for path in partial:
        shutil.rmtree(path, ignore_errors=True)
    return partial


def make_manager(*, directory: str | pathlib.Path, max_to_keep: int | None = 3,
                 async_save: bool = True, read_only: bool = False) -> ocp.CheckpointManager:
    """A manager keeping the last `max_to_keep` checkpoints (None keeps all); saves when asked to."""
    directory = pathlib.Path(directory).absolute()
    if not read_only:
        remove_partial_writes(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
        enable_async_checkpointing=async_save, cleanup_tmp_directories=not read_only)
    return ocp.CheckpointManager(directory, options=options, item_handlers={
        STATE_ITEM: _state_handler(), DATA_ITEM: ocp.JsonCheckpointHandler()})


def save(manager: ocp.CheckpointManager, *, step: int, state: Any,
         data_state: dict[str, Any] | None, wait: bool = False) -> float:
    """Start saving `state` and `data_state` at `step` (asynchronous unless `wait`).

    Returns the seconds the caller was blocked (device->host copy, plus the write when `wait`). The
    state's arrays are copied before this returns, so the caller may donate them to the next step.
    """
    start = time.perf_counter()
    manager.save(int(step), force=True, args=ocp.args.Composite(**{
        STATE_ITEM: ocp.args.PyTreeSave(state),
        DATA_ITEM: ocp.args.JsonSave(data_state or {}),
    }))
    if wait:
        manager.wait_until_finished()
    return time.perf_counter() - start


def restore(manager: ocp.CheckpointManager, *, target: Any, step: int | None = None
            ) -> tuple[Any, dict[str, Any], int]:
    """Restore (state, data_state, step) from `step` (default: the latest complete checkpoint).

    `target` is the abstract train state: a pytree of jax.ShapeDtypeStruct with `.sharding` set to the
    shardings wanted now (see sharding.with_shardings); arrays are resharded onto them on load.
    """
    if step is None:
        step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"no complete checkpoint under {manager.directory}.")
    restored = manager.restore(int(step), args=ocp.args.Composite(**{
        STATE_ITEM: ocp.args.PyTreeRestore(
            target, restore_args=ocp.checkpoint_utils.construct_restore_args(target)),
        DATA_ITEM: ocp.args.JsonRestore(),
    }))
    return restored[STATE_ITEM], dict(restored[DATA_ITEM] or {}), int(step)


def restore_params(*, workdir: str | pathlib.Path, target: Any) -> Any:
    """The params of the latest checkpoint of run `workdir` (the optimizer state is not read), placed on
    `target`'s shardings (abstract params: jax.ShapeDtypeStruct with `.sharding`)."""
    manager = make_manager(directory=checkpoint_dir(workdir), read_only=True, async_save=False)
    try:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint under {manager.directory} to start from.")
        target = {"params": target}
        restored = manager.restore(int(step), args=ocp.args.Composite(**{STATE_ITEM: ocp.args.PyTreeRestore(
            target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True)}))
    finally:
        manager.close()
    return restored[STATE_ITEM]["params"]


def latest_step(manager: ocp.CheckpointManager) -> int | None:
    manager.reload()
    return manager.latest_step()


def check_restorable(*, directory: str | pathlib.Path, target: Any) -> int:
    """Restore the latest checkpoint under `directory` onto `target`; returns its step (for tools/tests)."""
    manager = make_manager(directory=directory, read_only=True, async_save=False)
    try:
        state, _, step = restore(manager, target=target)
        jax.block_until_ready(state)
        return step
    finally:
        manager.close()
