"""Checkpoints: orbax CheckpointManager holding the train state and the data iterator's state.

Layout: <workdir>/checkpoints/<step>/{state, data_iterator, checksums}. `state` is the train-state pytree
(orbax PyTree handler, OCDBT; restored onto target shardings, so a checkpoint written on one mesh restores
onto another mesh shape or device count); `data_iterator` is a JSON dict (JsonSave/JsonRestore);
`checksums` is a JSON record of every saved tensor's fingerprint (see `tensor_fingerprints`), written in
the same atomic commit as the state (by process 0, orbax's JSON handler) and deleted with its step.

Integrity. Orbax does not notice a flipped bit in a data file (chunks are zstd frames without a checksum:
the restore returns other numbers), and a damaged or missing `_METADATA` / `manifest.ocdbt` surfaces as
an AttributeError or a raw TensorStore error. `restore` therefore checks each step before trusting it:
the files orbax needs are present and parse, the tensors read without error, their fingerprints equal
the ones written at save time, and every floating tensor is finite. Any failure raises
CheckpointCorruptError naming the step and the file or tensor; `restore_latest_intact` falls back to the
newest intact step and says so in one line per skipped step. Steps saved before checksums were recorded
are checked for everything but the fingerprints.

The state handler is orbax's standard PyTree handler with one change: replicated arrays are written
replica-parallel (each replica writes a slice) only when a slice is at least 4 MiB. Below that the
per-device slicing costs a small compile per array shape on the first save (seconds for a model with
many small replicated tensors) and saves no time. Saves are
asynchronous and atomic: orbax writes into a temporary directory and renames it when complete, so a
process killed mid-write leaves the previous checkpoints restorable (the partial directory is ignored and
cleaned up by the next manager).
"""
from __future__ import annotations

import json
import pathlib
import re
import shutil
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from etils import epath

from deft_jax import errors

STATE_ITEM = "state"
DATA_ITEM = "data_iterator"
CHECKSUM_ITEM = "checksums"
CHECKSUM_FORMAT = 1
STATE_FILES = ("_METADATA", "manifest.ocdbt")  # what orbax needs to find the tensors of an OCDBT state
MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL = 4 << 20
CPU_SAVE_WINDOW_BYTES = 256 << 20  # bytes in flight in a CPU state write (see save_window_bytes)


class CheckpointError(errors.UserError):
    """A checkpoint that is missing, of another model, or unreadable; the message says which and what to do."""


class CheckpointCorruptError(CheckpointError):
    """A checkpoint step that cannot be trusted: a file is missing, damaged or unreadable, a tensor differs
    from its checksum, or a tensor is not finite. `step`, `where` (file or tensor) and `reason` say which."""

    def __init__(self, *, step: int, where: str, reason: str):
        self.step, self.where, self.reason = int(step), str(where), errors.one_line(reason)
        super().__init__(f"checkpoint {self.step} is corrupt ({self.where}: {self.reason})")


def save_window_bytes(abstract_state: Any, *, platform: str) -> int | None:
    """Bytes a state write may have in flight: on CPU max(CPU_SAVE_WINDOW_BYTES, 2 x the largest
    tensor) (orbax refuses a tensor that is not below its window); None (orbax's default, 96 GB) elsewhere."""
    if platform != "cpu":
        return None
    largest = max((int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
                   for leaf in jax.tree.leaves(abstract_state) if hasattr(leaf, "shape")), default=0)
    return max(CPU_SAVE_WINDOW_BYTES, 2 * largest)


def _state_handler(*, save_window: int | None = None) -> ocp.PyTreeCheckpointHandler:
    """orbax's default handlers, with replica-parallel writes of jax.Arrays only for slices >= 4 MiB, and
    at most `save_window` bytes in flight in a write (None: orbax's default)."""
    handlers = [(int, ocp.type_handlers.ScalarHandler()), (float, ocp.type_handlers.ScalarHandler()),
                (bytes, ocp.type_handlers.ScalarHandler()), (np.number, ocp.type_handlers.ScalarHandler()),
                (np.ndarray, ocp.type_handlers.NumpyHandler()),
                (jax.Array, ocp.type_handlers.ArrayHandler(
                    min_slice_bytes_for_replica_parallel=MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL)),
                (str, ocp.type_handlers.StringHandler())]
    registry = ocp.type_handlers.create_type_handler_registry(*handlers)
    # orbax takes the window in GB (x 1e9); a fraction gives a window below 1 GB.
    return ocp.PyTreeCheckpointHandler(type_handler_registry=registry, save_concurrent_gb=(
        None if save_window is None else save_window / 1e9))


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
                 async_save: bool = True, read_only: bool = False,
                 save_window: int | None = None) -> ocp.CheckpointManager:
    """A manager keeping the last `max_to_keep` checkpoints (None keeps all); saves when asked to, with at
    most `save_window` bytes of the state in flight (None: orbax's default; see `save_window_bytes`)."""
    directory = pathlib.Path(directory).absolute()
    if not read_only:
        remove_partial_writes(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
        enable_async_checkpointing=async_save, cleanup_tmp_directories=not read_only)
    return ocp.CheckpointManager(directory, options=options, item_handlers={
        STATE_ITEM: _state_handler(save_window=save_window), DATA_ITEM: ocp.JsonCheckpointHandler(),
        CHECKSUM_ITEM: ocp.JsonCheckpointHandler()})


class NoIntactCheckpointError(CheckpointError):
    """Every checkpoint step under a directory is corrupt; `errors` holds each step's error, newest first."""

    def __init__(self, *, directory: str, errors: list[CheckpointCorruptError]):
        self.errors = list(errors)
        detail = "; ".join(f"step {e.step}: {e.where}: {e.reason}" for e in self.errors)
        super().__init__(f"no intact checkpoint under {directory}: {detail}")


# ----------------------------------------------------------------------------------------- fingerprints

_LANE_SEEDS = (0x9E3779B9, 0x7F4A7C15)  # two independent 32-bit lanes: a 64-bit fingerprint


def path_name(path) -> str:
    """'/'-joined key path of a pytree leaf ('params/layers/attn/q_proj/kernel', 'opt_state/0/mu/...'):
    jax.tree_util.keystr(simple=True), which names a dataclass / namedtuple field, a dict key and a list
    index alike, so a state restored without its target (plain dicts and lists) names its tensors as the
    saved state did."""
    return jax.tree_util.keystr(path, simple=True, separator="/")


def _mix32(x: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser (a bijection on uint32)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def _words(x: jax.Array) -> jax.Array:
    """The bits of `x` as uint32 words (one per element; 64-bit dtypes give a trailing axis of 2)."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _flat_index(shape: tuple[int, ...]) -> jax.Array:
    """uint32 row-major position of every element (mod 2^32), built from per-axis iotas (no reshape, so a
    sharded array needs no communication)."""
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride % (1 << 32))
        stride *= shape[axis]
    return index


def _leaf_digest(x: jax.Array) -> jax.Array:
    """uint32 [3]: the two fingerprint lanes and the count of non-finite elements of `x`.

    lane_k = Σ_i w_i · (mix32(i ⊕ seed_k) | 1)  mod 2^32, over the uint32 words w_i of x at row-major
    position i. Sums mod 2^32 are exact in any order, so the fingerprint is the same on every mesh and
    sharding; each multiplier is odd, so any single flipped bit changes both lanes, and a swap of two
    elements changes them unless both multipliers collide."""
    words = _words(x)
    index = _flat_index(words.shape)
    lanes = [jnp.sum(words * (_mix32(index ^ jnp.uint32(seed)) | jnp.uint32(1)), dtype=jnp.uint32)
             for seed in _LANE_SEEDS]
    nonfinite = (jnp.sum(~jnp.isfinite(x), dtype=jnp.uint32) if jnp.issubdtype(x.dtype, jnp.floating)
                 else jnp.uint32(0))
    return jnp.stack(lanes + [nonfinite])


_jitted_leaf_digest = jax.jit(_leaf_digest)  # one compile per (shape, dtype, sharding), shared by leaves


def _to_host(x: jax.Array) -> np.ndarray:
    """A small result on every process (a global array of a multi-host run is not fetched whole)."""
    if x.is_fully_addressable:
        return np.asarray(x)
    if x.sharding.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _digests(leaves: list) -> np.ndarray:
    """uint32 [len(leaves), 3]: `_leaf_digest` of each leaf (all dispatched before any is fetched)."""
    rows = [_jitted_leaf_digest(leaf) for leaf in leaves]
    return np.stack([_to_host(row) for row in rows]) if rows else np.zeros((0, 3), np.uint32)


def tensor_digests(tree: Any) -> dict[str, tuple[str, int]]:
    """{leaf name: (16-hex-digit fingerprint of the tensor's bits, number of non-finite elements)}.

    Computed on the devices holding the arrays (a jitted reduction per leaf, compiled once per distinct
    shape, dtype and sharding; every process of a multi-host run must call it, as for a save); numpy
    leaves are put on the default device first."""
    named = jax.tree_util.tree_flatten_with_path(tree)[0]
    digests = _digests([leaf for _, leaf in named])
    return {path_name(path): (f"{int(row[0]):08x}{int(row[1]):08x}", int(row[2]))
            for (path, _), row in zip(named, digests)}


def checksum_record(state: Any) -> dict[str, Any]:
    """The JSON saved beside a state: {"format": 1, "tensors": {name: {shape, dtype, fingerprint}}}."""
    digests = tensor_digests(state)
    leaves = {path_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}
    return {"format": CHECKSUM_FORMAT, "tensors": {
        name: {"shape": list(np.shape(leaves[name])), "dtype": str(jnp.result_type(leaves[name])),
               "fingerprint": fingerprint}
        for name, (fingerprint, _) in digests.items()}}


def verify_tensors(tree: Any, *, record: dict[str, Any] | None, step: int, where: str) -> int:
    """Check the restored `tree` against the checksum `record` (None: no record, fingerprints unchecked)
    and that every floating tensor is finite; returns how many tensors matched a recorded fingerprint.

    Raises CheckpointCorruptError naming the first tensor (in the tree's order) that differs or holds
    a non-finite value. A partial restore checks the tensors it restored; a tensor restored as another
    dtype than it was saved in (orbax casts to the target's dtype) has no fingerprint to compare."""
    recorded = None if record is None else record.get("tensors", {})
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    dtypes = {path_name(path): str(jnp.result_type(leaf)) for path, leaf in leaves}
    matched = 0
    for name, (fingerprint, nonfinite) in tensor_digests(tree).items():
        if recorded is not None:
            saved = recorded.get(name)
            if saved is None:
                raise CheckpointCorruptError(step=step, where=f"{where} (tensor {name})",
                                             reason="not in the checksums written at save time")
            if saved.get("dtype") == dtypes[name]:  # (cast on restore to another dtype: other bits)
                if saved.get("fingerprint") != fingerprint:
                    raise CheckpointCorruptError(
                        step=step, where=f"{where} (tensor {name})",
                        reason=f"its bits differ from the checksum written at save time (fingerprint "
                               f"{fingerprint}, saved {saved.get('fingerprint')}): a data file was damaged")
                matched += 1
        if nonfinite:
            raise CheckpointCorruptError(step=step, where=f"{where} (tensor {name})",
                                         reason=f"{nonfinite} non-finite value(s) (NaN or inf)")
    return matched


# ------------------------------------------------------------------------------------------ save/restore


def save(manager: ocp.CheckpointManager, *, step: int, state: Any,
         data_state: dict[str, Any] | None, wait: bool = False) -> float:
    """Start saving `state`, `data_state` and the state's checksums at `step` (asynchronous unless `wait`).

    Returns the seconds the caller was blocked (fingerprints and device->host copy, plus the write when
    `wait`). On an accelerator the state's arrays are copied to the host before this returns, so the caller
    may donate them to the next step. On the CPU backend orbax's host "copy" is a view of the state's own
    buffers: a step donating them while the write runs could not reuse them and would hold a second
    state (2 x the parameters and moments) until the write ends, so there the save always waits.
    """
    start = time.perf_counter()
    record = checksum_record(state)
    manager.save(int(step), force=True, args=ocp.args.Composite(**{
        STATE_ITEM: ocp.args.PyTreeSave(state),
        DATA_ITEM: ocp.args.JsonSave(data_state or {}),
        CHECKSUM_ITEM: ocp.args.JsonSave(record),
    }))
    if wait or viewed_by_host_copy(state):
        manager.wait_until_finished()
    return time.perf_counter() - start


def viewed_by_host_copy(state: Any) -> bool:
    """Whether every array of `state` lives on CPU devices (where numpy views it without a copy)."""
    arrays = [leaf for leaf in jax.tree.leaves(state) if isinstance(leaf, jax.Array)]
    return bool(arrays) and all(device.platform == "cpu" for leaf in arrays for device in leaf.devices())


def step_directory(directory: str | pathlib.Path | epath.Path, step: int) -> epath.Path:
    return epath.Path(directory) / str(int(step))


def check_step_files(directory: str | pathlib.Path | epath.Path, step: int) -> None:
    """The files orbax needs to find a step's tensors are present and parse (CheckpointCorruptError if
    not). Orbax itself restores without `_METADATA` when given a target, then fails elsewhere without it
    (AttributeError: 'NoneType' object has no attribute 'tree'), so this check comes first."""
    step_dir = step_directory(directory, step)
    state_dir = step_dir / STATE_ITEM
    if not state_dir.is_dir():
        raise CheckpointCorruptError(step=step, where=str(state_dir), reason="the state directory is missing")
    for name in STATE_FILES:
        path = state_dir / name
        if not path.exists():
            raise CheckpointCorruptError(step=step, where=str(path), reason="file missing")
        if path.stat().length == 0:
            raise CheckpointCorruptError(step=step, where=str(path), reason="file is empty")
    metadata = state_dir / "_METADATA"
    try:
        parsed = json.loads(metadata.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointCorruptError(step=step, where=str(metadata), reason=f"not valid JSON ({error})") from None
    if not isinstance(parsed, dict) or "tree_metadata" not in parsed:
        raise CheckpointCorruptError(step=step, where=str(metadata), reason="no 'tree_metadata' entry")
    check_tensor_index(state_dir, step=step)


def check_tensor_index(state_dir: str | pathlib.Path | epath.Path, *, step: int) -> None:
    """Walk the step's OCDBT b-tree (every node is CRC-32C checked) synchronously, before orbax reads.

    A damaged node met inside orbax's asynchronous restore fails one read while others are in flight;
    those complete into an event loop orbax has closed, and print a stray 'Event loop is closed'
    traceback after the one-line error. Found here, the error is raised before any read starts.
    """
    if not (epath.Path(state_dir) / "manifest.ocdbt").exists():
        return  # not an OCDBT checkpoint: orbax reports what it finds
    try:
        base = str(state_dir) if "://" in str(state_dir) else f"file://{state_dir}"
        store = ts.KvStore.open({"driver": "ocdbt", "base": base.rstrip("/") + "/"}).result()
        store.list().result()
    except Exception as error:  # noqa: BLE001 (classified: a damaged step, or re-raised untouched)
        corrupt = _unreadable(error, step=int(step), step_dir=epath.Path(state_dir).parent)
        if corrupt is None:
            raise
        raise corrupt from None


# Neither orbax nor TensorStore has an exception type for a damaged file: TensorStore raises a plain
# ValueError whose message starts with the absl status code of the read ("DATA_LOSS: Error reading ...").
# So a ValueError is classified by that leading code (the only place the status survives); JSON and UTF-8
# decoding errors by their types; anything else (a TypeError, a target that does not fit) is not corruption.
_READ_STATUS = re.compile(r"^(DATA_LOSS|OUT_OF_RANGE|NOT_FOUND|FAILED_PRECONDITION): ")


def _is_read_error(error: BaseException) -> bool:
    """A decoding error, or TensorStore's ValueError for a read that failed on the data itself."""
    if isinstance(error, (json.JSONDecodeError, UnicodeDecodeError)):
        return True
    return type(error) is ValueError and bool(_READ_STATUS.match(str(error)))


def _unreadable(error: BaseException, *, step: int, step_dir: epath.Path) -> CheckpointCorruptError | None:
    """The CheckpointCorruptError for an exception orbax or TensorStore raised reading a damaged step (the
    most specific file or tensor its messages name), or None for any other exception (a bug or a target
    that does not fit: re-raised as is)."""
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or error.__context__
    messages = [str(e) for e in chain if _is_read_error(e)]
    if not messages:
        return None
    message = messages[-1].split(" [tensorstore_spec")[0].split(". See full TensorStore details")[0]
    files = list(re.finditer(r'local file "([^"]+)"', message))
    tensor = re.search(r'(?:Error reading|Metadata at) "([^"/]+)', message)
    where, reason = str(step_dir), message
    if files:
        where = files[-1].group(1).rstrip("/")
        reason = message[files[-1].end():].lstrip(": ") or message
    if tensor and not where.endswith("manifest.ocdbt"):  # the manifest is shared by every tensor
        where += f" (tensor {tensor.group(1)})"
    return CheckpointCorruptError(step=step, where=where, reason=f"unreadable: {reason[:300]}")


def restore(manager: ocp.CheckpointManager, *, target: Any, step: int | None = None, verify: bool = True,
            partial: bool = False) -> tuple[Any, dict[str, Any], int]:
    """Restore (state, data_state, step) from `step` (default: the latest complete checkpoint).

    `target` is the abstract train state: a pytree of jax.ShapeDtypeStruct with `.sharding` set to the
    shardings wanted now (see sharding.with_shardings); arrays are resharded onto them on load.
    `partial`: `target` is a subtree of the saved state (e.g. {"params": ...}); only that is read.
    With `verify` (default), the step's files, readability, checksums and finiteness are checked
    (CheckpointCorruptError naming the step and the file or tensor).
    """
    if step is None:
        step = manager.latest_step()
    if step is None:
        raise errors.MissingPathError(f"no complete checkpoint under {manager.directory}.")
    state_args = ocp.args.PyTreeRestore(target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                        partial_restore=partial)
    state, data_state, record = _restore_items(manager, step=int(step), state_args=state_args, verify=verify)
    if verify:
        verify_tensors(state, record=record, step=int(step),
                       where=str(step_directory(manager.directory, step) / STATE_ITEM))
    return state, data_state, int(step)


def _restore_items(manager: ocp.CheckpointManager, *, step: int, state_args, verify: bool
                   ) -> tuple[Any, dict[str, Any], dict[str, Any] | None]:
    """(state, data_state, checksum record or None) of `step`, read errors turned into
    CheckpointCorruptError when `verify`."""
    step_dir = step_directory(manager.directory, step)
    if verify:
        check_step_files(manager.directory, step)
    items = {STATE_ITEM: state_args, DATA_ITEM: ocp.args.JsonRestore()}
    has_record = (step_dir / CHECKSUM_ITEM).exists()
    if has_record:
        items[CHECKSUM_ITEM] = ocp.args.JsonRestore()
    try:
        restored = manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as error:  # noqa: BLE001 (classified: a damaged step, or re-raised untouched)
        corrupt = _unreadable(error, step=step, step_dir=step_dir) if verify else None
        if corrupt is None:
            raise
        raise corrupt from error
    record = restored[CHECKSUM_ITEM] if has_record else None
    if verify and has_record and (not isinstance(record, dict) or record.get("format") != CHECKSUM_FORMAT):
        raise CheckpointCorruptError(step=step, where=str(step_dir / CHECKSUM_ITEM),
                                     reason=f"not a checksum record of format {CHECKSUM_FORMAT}")
    return restored[STATE_ITEM], dict(restored[DATA_ITEM] or {}), record


def state_metadata(directory: str | pathlib.Path | epath.Path, step: int) -> Any:
    """The saved state's tree of array metadata (shape, dtype) of `step`, read without the tensors;
    CheckpointCorruptError when the files it comes from are missing or damaged (orbax's checkpointer
    returns None there, which callers met as AttributeError: 'NoneType' object has no attribute 'tree')."""
    check_step_files(directory, step)
    step_dir = step_directory(directory, step)
    try:
        return _state_handler().metadata(step_dir / STATE_ITEM).tree
    except Exception as error:  # noqa: BLE001 (classified: a damaged step, or re-raised untouched)
        corrupt = _unreadable(error, step=int(step), step_dir=step_dir)
        if corrupt is None:
            raise
        raise corrupt from error


def restore_latest_intact(manager_or_dir: ocp.CheckpointManager | str | pathlib.Path, *, target: Any,
                          log: Callable[[str], None] | None = None
                          ) -> tuple[Any, dict[str, Any], int, list[str]]:
    """Restore the newest step that passes `restore`'s checks, newest first: (state, data_state, step,
    skipped), `skipped` holding one line per corrupt newer step ("checkpoint 6 is corrupt (<file>:
    <reason>); falling back to step 4"), each also passed to `log` when given.

    Raises FileNotFoundError when there is no checkpoint and NoIntactCheckpointError (naming every step)
    when none is intact. Other errors (a target that does not fit) propagate: they are not corruption.
    Corrupt steps stay on disk; see `set_aside` before saving those steps again."""
    manager = (manager_or_dir if isinstance(manager_or_dir, ocp.CheckpointManager)
               else make_manager(directory=manager_or_dir, read_only=True, async_save=False))
    try:
        manager.reload()
        steps = sorted(manager.all_steps(), reverse=True)
        if not steps:
            raise errors.MissingPathError(f"no complete checkpoint under {manager.directory}.")
        skipped, corrupt = [], []
        for position, step in enumerate(steps):
            try:
                state, data_state, step = restore(manager, target=target, step=step)
            except CheckpointCorruptError as error:
                corrupt.append(error)
                if position + 1 < len(steps):
                    line = f"{error}; falling back to step {steps[position + 1]}"
                    skipped.append(line)
                    if log is not None:
                        log(line)
                continue
            return state, data_state, step, skipped
        raise NoIntactCheckpointError(directory=str(manager.directory), errors=corrupt)
    finally:
        if manager is not manager_or_dir:
            manager.close()


def set_aside(directory: str | pathlib.Path, step: int) -> pathlib.Path | None:
    """Rename corrupt step `step` to `<step>.corrupt-<unix time>` (process 0; orbax no longer lists it,
    so the step can be saved again and keep-N counts intact steps only). Returns the new path (None on
    other processes). Reload any open manager afterwards."""
    source = pathlib.Path(directory) / str(int(step))
    if jax.process_index() != 0:
        return None
    target = source.with_name(f"{source.name}.corrupt-{int(time.time())}")
    source.rename(target)
    return target


# ====================================================================================================
# Reading a run's checkpoints for evaluation and export (parameters only).

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


def param_shapes(*, workdir: str | pathlib.Path, step: int) -> dict[str, tuple[tuple, str]]:
    """{parameter path: (shape, dtype)} of the params stored in a checkpoint (metadata only)."""
    path = checkpoint_dir(workdir) / str(step) / STATE_ITEM
    tree = state_metadata(checkpoint_dir(workdir), step)
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
    another model config, and CheckpointCorruptError (naming the step and the file or tensor) when the
    step is damaged or holds non-finite params.
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
    manager = make_manager(directory=checkpoint_dir(workdir), read_only=True, async_save=False)
    try:
        restored, _, _ = restore(manager, target=target, step=int(step), partial=True)
    finally:
        manager.close()
    return restored["params"]
