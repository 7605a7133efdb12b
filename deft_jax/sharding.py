"""Device mesh, logical-axis sharding and multi-host initialisation.

The mesh has three named axes (MaxText/T5X habit):
    data   - pure data parallelism (parameters replicated across it),
    fsdp   - data parallelism with parameters and optimizer state sharded across it (ZeRO-3 style),
    tensor - tensor (model) parallelism over heads / MLP / vocabulary.
The global batch is split over ('data', 'fsdp'); parameters are placed by logical-axis rules
(logical name -> mesh axis), so the model code never names a mesh axis.
"""
from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import itertools
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from deft_jax import errors

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the mesh axes a batch dimension is split over

# Environment variables that ask for `jax.distributed.initialize` (besides the config).
COORDINATOR_ENV = "DEFT_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "DEFT_NUM_PROCESSES"
PROCESS_ID_ENV = "DEFT_PROCESS_ID"


def resolve_mesh_shape(*, data: int, fsdp: int, tensor: int, num_devices: int) -> dict[str, int]:
    """Sizes of (data, fsdp, tensor); at most one may be -1, meaning 'all remaining devices'.

    Raises ValueError when the product differs from the number of devices, naming both.
    """
    sizes = {"data": int(data), "fsdp": int(fsdp), "tensor": int(tensor)}
    for name, size in sizes.items():
        if size == 0 or size < -1:
            raise errors.UserError(f"config.mesh.{name}={size}: mesh axis sizes must be positive or -1 (fill).")
    fill = [name for name, size in sizes.items() if size == -1]
    if len(fill) > 1:
        raise errors.UserError(f"config.mesh: only one axis may be -1 (fill), got {fill}.")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if fill:
        if num_devices % fixed:
            raise errors.UserError(
                f"config.mesh: the fixed axes {sizes} multiply to {fixed}, which does not divide the "
                f"{num_devices} available devices; choose sizes whose product divides {num_devices}.")
        sizes[fill[0]] = num_devices // fixed
    product = math.prod(sizes.values())
    if product != num_devices:
        raise errors.UserError(
            f"config.mesh: data={sizes['data']} x fsdp={sizes['fsdp']} x tensor={sizes['tensor']} = "
            f"{product} devices, but JAX sees {num_devices} device(s) ({jax.default_backend()}). Set the "
            f"sizes so that their product is {num_devices} (or set one of them to -1 to fill).")
    return sizes


def make_mesh(*, data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[Any] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = resolve_mesh_shape(data=data, fsdp=fsdp, tensor=tensor, num_devices=len(devices))
    shape = tuple(sizes[name] for name in MESH_AXES)
    # Auto axes: classic GSPMD propagation from the in/out shardings and logical constraints (recent JAX
    # makes jax.make_mesh axes Explicit by default, which changes the typing of every sharded op).
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    if len({d.process_index for d in devices}) > 1:
        # Process-major device order: each process's devices hold one contiguous block of batch rows.
        devices = sorted(devices, key=lambda d: (d.process_index, d.id))
        return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=axis_types)
    return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)


def mesh_from_config(mesh_config: Mapping[str, Any], *, devices: Sequence[Any] | None = None) -> Mesh:
    """`make_mesh` from a config's `mesh` section (fields data, fsdp, tensor)."""
    return make_mesh(data=mesh_config["data"], fsdp=mesh_config["fsdp"], tensor=mesh_config["tensor"],
                     devices=devices)


def data_parallel_size(mesh: Mesh) -> int:
    """Number of batch shards: product of the mesh's batch axes (data x fsdp)."""
    return math.prod(mesh.shape[name] for name in BATCH_AXES)


def logical_rules(*, base_rules: Sequence[tuple[str, Any]],
                  overrides: Sequence[Sequence[Any]] | None = None) -> tuple[tuple[str, Any], ...]:
    """Logical-axis rules: `overrides` (logical name -> mesh axis/axes/None) replace the base entries."""
    rules = {name: target for name, target in base_rules}
    for item in overrides or ():
        if len(item) != 2:
            raise errors.UserError(f"config.mesh.rules: each rule must be (logical_name, mesh_axes), got {item!r}.")
        name, target = item
        targets = (target,) if isinstance(target, str) else tuple(target or ())
        unknown = [axis for axis in targets if axis not in MESH_AXES]
        if unknown:
            raise errors.UserError(f"config.mesh.rules: rule {name!r} -> {target!r} names unknown mesh axes "
                             f"{unknown}; mesh axes are {MESH_AXES}.")
        rules[name] = None if not targets else (targets[0] if len(targets) == 1 else targets)
    return tuple(rules.items())


def batch_sharding(mesh: Mesh, *, ndim: int = 2) -> NamedSharding:
    """Sharding of a [B, ...] batch array: batch split over (data, fsdp), the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def logical_to_shardings(*, logical_axes: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Any:
    """Map a pytree of logical axis-name tuples (or PartitionSpecs of logical names) to NamedShardings."""
    def to_spec(axes):
        return axes if isinstance(axes, PartitionSpec) else PartitionSpec(*axes)
    specs = jax.tree.map(to_spec, logical_axes, is_leaf=_is_axes_leaf)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def _is_axes_leaf(node: Any) -> bool:
    return isinstance(node, PartitionSpec) or (
        isinstance(node, tuple) and all(a is None or isinstance(a, str) for a in node))


def check_divisible(*, abstract_tree: Any, shardings: Any, what: str = "parameter") -> None:
    """Raise ValueError naming the tensor when a dimension is not divisible by its mesh axes."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(abstract_tree)
    sharding_leaves = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    if len(leaves) != len(sharding_leaves):
        raise errors.UserError(f"{what} tree and sharding tree differ: {len(leaves)} vs {len(sharding_leaves)} leaves.")
    for (path, leaf), sharding in zip(leaves, sharding_leaves):
        spec = tuple(sharding.spec) + (None,) * (len(leaf.shape) - len(sharding.spec))
        for dim, (size, axes) in enumerate(zip(leaf.shape, spec)):
            if axes is None:
                continue
            axes = (axes,) if isinstance(axes, str) else tuple(axes)
            shards = math.prod(sharding.mesh.shape[a] for a in axes)
            if size % shards:
                raise errors.UserError(
                    f"{what} {jax.tree_util.keystr(path)} has shape {tuple(leaf.shape)}: dimension {dim} "
                    f"(size {size}) is split over mesh axes {axes} of total size {shards}, which does not "
                    f"divide it. Change config.mesh sizes or map that logical axis to None in "
                    f"config.mesh.rules.")


def optimizer_state_shardings(optimizer: Any, abstract_opt_state: Any, *, param_shardings: Any,
                              other: NamedSharding) -> Any:
    """Shardings of `optimizer`'s state: every copy of the parameter tree in it (Adam's moments) takes the
    parameters' shardings, every other leaf (step counts) `other` (optax.tree_map_params, which finds the
    copies by initialising `optimizer` on a placeholder).

    Works on ShapeDtypeStruct trees only and executes nothing, so it also serves meshes of devices that
    exist only as a compilation target.
    """
    return optax.tree_map_params(optimizer, lambda _, sharding: sharding, abstract_opt_state, param_shardings,
                                 transform_non_params=lambda _: other)


def with_shardings(abstract_tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying their target shardings (orbax restore targets, jit shapes)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        abstract_tree, shardings)


# ----------------------------------------------------------------------------------------------------
# Multi-host.

def distributed_settings(dist_config: Mapping[str, Any] | None,
                         environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The arguments for `jax.distributed.initialize`, or None when nothing asks for it.

    The config (`distributed.initialize=True`, with coordinator_address / num_processes / process_id)
    or the environment (DEFT_COORDINATOR_ADDRESS, DEFT_NUM_PROCESSES, DEFT_PROCESS_ID) asks for it.
    With `initialize=True` and no address, JAX's cluster auto-detection (TPU pods, SLURM, ...) is used.
    """
    environ = os.environ if environ is None else environ
    dist_config = dict(dist_config or {})
    address = dist_config.get("coordinator_address") or environ.get(COORDINATOR_ENV) or None
    if not (dist_config.get("initialize") or address):
        return None
    num_processes = dist_config.get("num_processes") or environ.get(NUM_PROCESSES_ENV)
    process_id = dist_config.get("process_id")
    if process_id is None or process_id == -1:
        process_id = environ.get(PROCESS_ID_ENV)
    settings = {"coordinator_address": address,
                "num_processes": None if num_processes in (None, "", -1) else int(num_processes),
                "process_id": None if process_id in (None, "", -1) else int(process_id)}
    if address and (settings["num_processes"] is None or settings["process_id"] is None):
        raise errors.UserError(
            f"distributed: coordinator_address={address!r} also needs num_processes and process_id "
            f"(config.distributed.* or ${NUM_PROCESSES_ENV} / ${PROCESS_ID_ENV}).")
    return settings


def maybe_initialize_distributed(dist_config: Mapping[str, Any] | None) -> bool:
    """Call `jax.distributed.initialize` when the config or environment asks; True when it did.

    Must run before any other JAX call touches the devices. On CPU, cross-process collectives use gloo.
    """
    settings = distributed_settings(dist_config)
    if settings is None:
        return False
    if jax.distributed.is_initialized():
        return True
    cpu_collectives = (dist_config or {}).get("cpu_collectives", "gloo")
    if cpu_collectives:  # only used by the CPU backend (harmless on TPU/GPU)
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(**{k: v for k, v in settings.items() if v is not None},
                               **distributed_timeouts(dist_config))
    timeout = int((dist_config or {}).get("initialization_timeout_seconds") or DEFAULT_INITIALIZATION_TIMEOUT)
    meet("initialized", timeout_seconds=timeout)
    # The communicator of all devices is created (its rendezvous gives up after 30 s) while the processes
    # are in step; a later collective over them waits for a slower process as long as it takes.
    multihost_utils.sync_global_devices("deft_jax: communicators")
    return True


# Signs that a TPU may be attached: its device nodes, or a PCI device of Google's vendor id.
TPU_DEVICE_GLOBS = ("dev/accel*", "dev/vfio/[0-9]*")
PCI_VENDOR_GLOB = "sys/bus/pci/devices/*/vendor"
GOOGLE_PCI_VENDOR = "0x1ae0"


def pjrt_plugins_installed() -> bool:
    """Whether any JAX PJRT plugin is installed (JAX's GPU backends, and others, come as plugins)."""
    return bool(list(importlib.metadata.entry_points(group="jax_plugins"))
                or importlib.util.find_spec("jax_plugins"))


def accelerator_may_be_present(*, root: str = "/") -> bool:
    """False only when no accelerator can be attached: no PJRT plugin is installed and the machine (under
    `root`) shows no TPU: no dev/accel*, dev/vfio/N, nor a PCI device of Google's vendor id."""
    if pjrt_plugins_installed():
        return True
    if any(glob.glob(os.path.join(root, pattern)) for pattern in TPU_DEVICE_GLOBS):
        return True
    for vendor in glob.glob(os.path.join(root, PCI_VENDOR_GLOB)):
        try:
            with open(vendor) as handle:
                if handle.read().strip() == GOOGLE_PCI_VENDOR:
                    return True
        except OSError:  # unreadable: assume it may be one
            return True
    return False


def cpu_only_without_accelerator() -> bool:
    """Set JAX's platforms to 'cpu' when none were chosen (JAX_PLATFORMS, jax_platforms) and no accelerator
    may be present; True when it did. JAX otherwise probes every installed backend: an installed libtpu is
    loaded to look for a TPU (~0.1 GiB resident, and a warning) before JAX falls back to the same CPU
    devices. Call it before anything asks JAX for devices (later it changes nothing)."""
    if os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms or accelerator_may_be_present():
        return False
    jax.config.update("jax_platforms", "cpu")
    return True


DEFAULT_INITIALIZATION_TIMEOUT = 300  # seconds (config.distributed.initialization_timeout_seconds)
_meetings = itertools.count()


def meet(name: str, *, timeout_seconds: int) -> None:
    """Wait until every process of the job has reached `name` (nothing on one process).

    The coordination service's barrier, not a device collective: it waits `timeout_seconds`, where the
    first collective of a new group of devices gives up when another process is more than 30 s late (a
    gloo rendezvous). Every process must call it the same number of times, in the same order.
    """
    if jax.process_count() == 1:
        return
    from orbax.checkpoint import multihost as ocp_multihost

    ocp_multihost.get_jax_distributed_client().wait_at_barrier(
        f"deft_jax/{next(_meetings)}/{name}", timeout_in_ms=int(timeout_seconds) * 1000)


# config.distributed field -> jax.distributed.initialize argument (JAX's own defaults when a field is absent).
TIMEOUT_ARGUMENTS = {"heartbeat_timeout_seconds": "heartbeat_timeout_seconds",
                     "initialization_timeout_seconds": "initialization_timeout",
                     "shutdown_timeout_seconds": "shutdown_timeout_seconds"}


def distributed_timeouts(dist_config: Mapping[str, Any] | None) -> dict[str, int]:
    """The timeouts of `jax.distributed.initialize` that config.distributed sets.

    heartbeat: a process whose heartbeats stop this long counts as lost, and the coordination service
    then ends every other process (a lost coordinator ends them at once); initialization: how long the
    processes wait for each other at start; shutdown: how long a finished process waits at exit.
    """
    dist_config = dict(dist_config or {})
    return {argument: int(dist_config[field]) for field, argument in TIMEOUT_ARGUMENTS.items()
            if dist_config.get(field)}


def global_batch(local_batch: Mapping[str, np.ndarray], *, mesh: Mesh,
                 global_batch_size: int) -> dict[str, jax.Array]:
    """Assemble global [B, ...] arrays from this process's rows (jax.make_array_from_process_local_data).

    Each process passes its share: global_batch_size / process_count rows, in process order.
    """
    out = {}
    for name, local in local_batch.items():
        local = np.asarray(local)
        global_shape = (global_batch_size,) + local.shape[1:]
        out[name] = jax.make_array_from_process_local_data(batch_sharding(mesh, ndim=local.ndim), local,
                                                           global_shape)
    return out


def process_rows(mesh: Mesh, *, global_rows: int) -> tuple[int, int]:
    """(block index, block count): this process feeds rows [i·R/n, (i+1)·R/n) of each global batch.

    With the mesh's devices ordered by process, each process's devices hold one contiguous block of
    rows; the data iterator is then asked for that block (its process_index / process_count).
    """
    if jax.process_count() == 1:
        return 0, 1
    index_map = batch_sharding(mesh).addressable_devices_indices_map((global_rows, 1))
    blocks = sorted({(s[0].start or 0, global_rows if s[0].stop is None else s[0].stop) for s in index_map.values()})
    lo, hi = blocks[0][0], blocks[-1][1]
    contiguous = all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    rows = hi - lo
    if not contiguous or global_rows % rows or lo % rows:
        raise ValueError(f"process {jax.process_index()} holds batch rows {blocks}, not one aligned contiguous "
                         f"block; order the mesh devices by process.")
    return lo // rows, global_rows // rows


def put_batch(local: Mapping[str, np.ndarray], *, mesh: Mesh, global_rows: int,
              keys: Sequence[str]) -> dict[str, jax.Array]:
    """This process's rows of `keys` placed as global [global_rows, ...] arrays split over the batch axes."""
    local = {key: local[key] for key in keys}
    if jax.process_count() == 1:
        return {key: jax.device_put(value, batch_sharding(mesh, ndim=np.ndim(value))) for key, value in local.items()}
    return global_batch(local, mesh=mesh, global_batch_size=global_rows)


class mesh_context:  # noqa: N801 (a context manager used like a function)
    """`with jax.set_mesh(mesh), nn.logical_axis_rules(rules)`: activation constraints use the rules."""

    def __init__(self, mesh: Mesh, rules):
        self._mesh, self._rules = mesh, rules
        self._stack = []

    def __enter__(self):
        for context in (jax.set_mesh(self._mesh), nn.logical_axis_rules(self._rules)):
            context.__enter__()
            self._stack.append(context)
        return self

    def __exit__(self, *exc):
        while self._stack:
            self._stack.pop().__exit__(*exc)
        return False
