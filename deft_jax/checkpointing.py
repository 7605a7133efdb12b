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
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

STATE_ITEM = "state"
DATA_ITEM = "data_iterator"
MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL = 4 << 20


def _state_handler() -> ocp.PyTreeCheckpointHandler:
    """orbax's default handlers, with replica-parallel writes of jax.Arrays only for slices >= 4 MiB."""
    handlers = [(int, ocp.type_handlers.ScalarHandler()), (float, ocp.type_handlers.ScalarHandler()),
                (bytes, ocp.type_handlers.ScalarHandler()), (np.number, ocp.type_handlers.ScalarHandler()),
                (np.ndarray, ocp.type_handlers.NumpyHandler()),
                (jax.Array, ocp.type_handlers.ArrayHandler(
                    min_slice_bytes_for_replica_parallel=MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL)),
                (str, ocp.type_handlers.StringHandler())]
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


def check_restorable(*, directory: str | pathlib.Path, target: Any) -> int:
    """Restore the latest checkpoint under `directory` onto `target`; returns its step (for tools/tests)."""
    manager = make_manager(directory=directory, read_only=True, async_save=False)
    try:
        state, _, step = restore(manager, target=target)
        jax.block_until_ready(state)
        return step
    finally:
        manager.close()


# ====================================================================================================
# Reading a run's checkpoints for evaluation and export (parameters only).

class CheckpointError(ValueError):
    """A checkpoint that is missing, of another model, or unreadable; the message says which and what to do."""


def available_steps(workdir: str | pathlib.Path) -> list[int]:
    """Steps with a complete checkpoint under <workdir>/checkpoints (ascending; [] when none)."""
    directory = checkpoint_dir(workdir)
    if not directory.is_dir():
        return []
    manager = make_manager(directory=directory, read_only=True, async_save=False)
    try:
        return sorted(int(step) for step in manager.all_steps())
    finally:
        manager.close()


def resolve_steps(*, workdir: str | pathlib.Path, requested: str | int | None) -> list[int]:
    """`requested`: None or 'latest' (the latest checkpoint), 'all', or a step number."""
    steps = available_steps(workdir)
    if not steps:
        raise CheckpointError(f"no checkpoint under {checkpoint_dir(workdir)}: the run has not saved one yet (or "
                              f"--workdir points elsewhere). Use --base to evaluate the model before fine-tuning.")
    if requested in (None, "", "latest"):
        return [steps[-1]]
    if requested == "all":
        return steps
    try:
        step = int(requested)
    except (TypeError, ValueError):
        raise CheckpointError(f"--step={requested!r}: expected a step number, 'latest' or 'all'.") from None
    if step not in steps:
        raise CheckpointError(f"--step={step}: there is no checkpoint for step {step} under "
                              f"{checkpoint_dir(workdir)}; available steps: {steps}.")
    return [step]


def path_name(path) -> str:
    """'/'-joined keys of a pytree path ('layers/attention/q/kernel')."""
    return "/".join(str(getattr(key, "key", getattr(key, "name", key))) for key in path)


def param_shapes(*, workdir: str | pathlib.Path, step: int) -> dict[str, tuple[tuple, str]]:
    """{parameter path: (shape, dtype)} of the params stored in a checkpoint (metadata only)."""
    path = checkpoint_dir(workdir) / str(step) / STATE_ITEM
    metadata = ocp.PyTreeCheckpointer().metadata(path)
    tree = metadata.item_metadata.tree if hasattr(metadata, "item_metadata") else metadata.tree
    if not isinstance(tree, Mapping) or "params" not in tree:
        found = sorted(tree) if isinstance(tree, Mapping) else type(tree).__name__
        raise CheckpointError(f"{path} holds no 'params' entry (found {found}); it was not written by "
                              f"deft_jax.train.")
    return {path_name(p): (tuple(leaf.shape), str(leaf.dtype))
            for p, leaf in jax.tree_util.tree_flatten_with_path(tree["params"])[0]}


def shape_differences(*, stored: Mapping[str, tuple[tuple, str]], expected: Any) -> list[str]:
    """Human-readable differences between a checkpoint's params and an abstract params tree."""
    wanted = {path_name(p): tuple(leaf.shape) for p, leaf in jax.tree_util.tree_flatten_with_path(expected)[0]}
    problems = []
    for name in sorted(set(wanted) | set(stored)):
        if name not in stored:
            problems.append(f"{name}: missing from the checkpoint (config expects {wanted[name]})")
        elif name not in wanted:
            problems.append(f"{name}: in the checkpoint {stored[name][0]} but not in the config's model")
        elif stored[name][0] != wanted[name]:
            problems.append(f"{name}: checkpoint {stored[name][0]} vs config {wanted[name]}")
    return problems


def restore_params(*, workdir: str | pathlib.Path, step: int, abstract_params: Any, shardings: Any) -> Any:
    """The params of checkpoint `step` placed on `shardings` (the optimizer state is not read).

    Raises CheckpointError listing the tensors whose shapes differ when the checkpoint was written by
    another model config.
    """
    problems = shape_differences(stored=param_shapes(workdir=workdir, step=step), expected=abstract_params)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; ... and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise CheckpointError(
            f"checkpoint {checkpoint_dir(workdir) / str(step)} was written by a different model config than "
            f"{pathlib.Path(workdir) / 'config.json'} describes ({len(problems)} parameter(s) differ: {shown}); "
            f"evaluate it with the config it was trained with.")
    target = {"params": jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                     abstract_params, shardings)}
    restore_args = jax.tree.map(
        lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype), target)
    manager = make_manager(directory=checkpoint_dir(workdir), read_only=True, async_save=False)
    try:
        restored = manager.restore(int(step), args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.PyTreeRestore(target, restore_args=restore_args, partial_restore=True)}))
    finally:
        manager.close()
    return restored[STATE_ITEM]["params"]
