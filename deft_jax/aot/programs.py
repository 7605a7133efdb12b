"""Ahead-of-time compilation for a TPU slice, on a machine without one: will this config fit, and what
would a step cost?

    python -m deft_jax.compile --config configs/paper/llama_3_1_8b.py:regime=figfont --topology v5p-32
    python -m deft_jax.compile --config configs/paper/qwen2_5_math_1_5b.py --topology v5p:2x2x4 \\
        --config.micro_batch_size=32 --json report.json

It builds the programs that `deft_jax.train` and `deft_jax.evaluate` run for the config, from the
architecture alone (no weights, no data: ShapeDtypeStructs carrying their shardings):
  train    the jitted train step (micro-batch scan, clip, AdamW) with the trainer's shardings, state donated;
  eval     the trainer's eval step on `eval.batch_size` rows;
  prefill  the engine's prompt pass (deft_jax.inference.sampler.prefill), filling a KV cache of
           prompt_len + max_new_tokens slots (rounded up to the engine's kv_bucket);
  decode   one of the engine's decode chunks (sampler.decode_chunk: a while-loop of cached single-token
           steps, temperature 1), attending over the whole cache: its costliest chunk.
Each is lowered and compiled for the devices of `jax.experimental.topologies.get_topology_desc`, and
`compiled.memory_analysis()` gives the bytes per chip.

Report (printed, and as JSON with --json):
  per-chip HBM: params, optimizer state, batch (from the shard shapes), temporaries (compiler), total
  = arguments + temporaries + outputs not aliased to arguments, against the chip's capacity;
  model FLOPs per token = model.flops_per_token (fwd + bwd; XLA's cost analysis counts a while-loop body
  once, so it does not give a step's FLOPs), per step = per token x batch_size x row length;
  roofline lower bound on the step time = max(FLOPs / (chips x peak), HBM bytes per chip / bandwidth), with
  HBM bytes = 2 x (params + optimizer state) [read and written once by the update] + micro-batches x
  (2 + remat) x N / tensor x itemsize(compute dtype) [the weights streamed through forward and backward];
  tokens/s at MFU m = m x chips x peak / FLOPs per token.

Topology names: slice names (v4-32 and v5p-32 count TensorCores, two per chip: 16 chips; v5e-16 and v6e-16
count chips) or JAX's strings ('v5p:2x2x4'). GPU targets cannot be compiled without a GPU (JAX has no
GPU topology description), so only TPUs are offered.
"""
from __future__ import annotations

import os

# Targets are described, never attached: JAX's default backend stays the CPU (libtpu then never claims a
# TPU or its lock file), and several compile processes may load libtpu at once.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import dataclasses  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from collections.abc import Mapping, Sequence  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from deft_jax import data as data_lib  # noqa: E402
from deft_jax import errors  # noqa: E402
from deft_jax import sharding as sharding_lib  # noqa: E402
from deft_jax.evaluation import evaluator as evaluate  # noqa: E402
from deft_jax.inference import sampler  # noqa: E402
from deft_jax.model import attention as attention_lib  # noqa: E402
from deft_jax.model import decoder as model_lib  # noqa: E402
from deft_jax.training.metrics import TPU_PEAK_FLOPS  # noqa: E402
from deft_jax.training import setup as build  # noqa: E402
from deft_jax.training import step as step_lib  # noqa: E402

GIB = 1024**3
PROGRAMS = ("train", "eval", "prefill", "decode")
MFU_LEVELS = (0.4, 0.5)


class CompileError(errors.UserError):
    """Bad input to the compile tool (topology, mesh, config); the message says what to change."""


# ====================================================================================================
# Chips and topologies.

@dataclasses.dataclass(frozen=True)
class Chip:
    """Public per-chip figures: HBM capacity, peak bf16 FLOP/s, HBM bandwidth (bytes/s)."""

    kind: str
    hbm_bytes: int
    peak_flops: float
    hbm_bandwidth: float
    cores_in_slice_name: int  # v4-32 / v5p-32 count TensorCores (2 per chip); v5e-16 / v6e-16 count chips
    dims: int  # 3D torus (v4, v5p) or 2D (v5e, v6e)
    chip_config: str  # get_topology_desc's chip_config_name: one device per chip


CHIPS = {  # peak FLOP/s: training.metrics.TPU_PEAK_FLOPS
    "v4": Chip("v4", 32 * GIB, TPU_PEAK_FLOPS["v4"], 1228e9, cores_in_slice_name=2, dims=3, chip_config="megacore"),
    "v5e": Chip("v5e", 16 * GIB, TPU_PEAK_FLOPS["v5e"], 819e9, cores_in_slice_name=1, dims=2, chip_config="default"),
    "v5p": Chip("v5p", 95 * GIB, TPU_PEAK_FLOPS["v5p"], 2765e9, cores_in_slice_name=2, dims=3, chip_config="megacore"),
    "v6e": Chip("v6e", 32 * GIB, TPU_PEAK_FLOPS["v6e"], 1640e9, cores_in_slice_name=1, dims=2, chip_config="default"),
}

# Chips -> JAX topology shape, for the slice sizes Cloud TPU offers.
SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
             512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
SHAPES_2D = {4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str  # as the user typed it
    jax_name: str  # 'v5p:2x2x4'
    chip: Chip
    chips: int


def parse_topology(name: str) -> Topology:
    """'v5p-32' (slice name) or 'v5p:2x2x4' (JAX) -> Topology; CompileError for anything else."""
    text = str(name).strip().lower()
    slice_match = re.fullmatch(r"(v4|v5e|v5p|v6e)-(\d+)", text)
    jax_match = re.fullmatch(r"(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})", text)
    if slice_match:
        chip = CHIPS[slice_match.group(1)]
        count = int(slice_match.group(2))
        if count % chip.cores_in_slice_name:
            raise CompileError(f"topology {name!r}: {chip.kind} slice names count TensorCores (2 per chip), so "
                               f"the number must be even")
        chips = count // chip.cores_in_slice_name
        shapes = SHAPES_3D if chip.dims == 3 else SHAPES_2D
        if chips not in shapes:
            sizes = ", ".join(f"{chip.kind}-{n * chip.cores_in_slice_name}" for n in sorted(shapes))
            raise CompileError(f"topology {name!r}: no {chip.kind} slice of {chips} chips; known slices: {sizes}")
        return Topology(name=name, jax_name=f"{chip.kind}:{shapes[chips]}", chip=chip, chips=chips)
    if jax_match:
        chip = CHIPS[jax_match.group(1)]
        sizes = [int(n) for n in jax_match.group(2).split("x")]
        if len(sizes) != chip.dims:
            raise CompileError(f"topology {name!r}: {chip.kind} topologies have {chip.dims} dimensions "
                               f"(e.g. {chip.kind}:{(SHAPES_3D if chip.dims == 3 else SHAPES_2D)[16]})")
        return Topology(name=name, jax_name=text, chip=chip, chips=math.prod(sizes))
    raise CompileError(f"topology {name!r} is not a TPU slice name (v4-32, v5p-32, v5e-16, v6e-16: v4/v5p count "
                       f"TensorCores, v5e/v6e chips) or a JAX topology string (v5p:2x2x4, v6e:4x4)")


def topology_devices(topology: Topology) -> list:
    """The TPU devices (one per chip, on every host) of `topology`, described by libtpu: nothing runs."""
    from jax.experimental import topologies

    try:
        description = topologies.get_topology_desc(topology_name=topology.jax_name, platform="tpu",
                                                   chip_config_name=topology.chip.chip_config)
    except (RuntimeError, ValueError) as error:  # JaxRuntimeError is a RuntimeError
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CompileError(f"topology {topology.name!r} ({topology.jax_name}): libtpu cannot describe it: "
                           f"{message}. Is libtpu installed (pip install -e .[tpu])?") from None
    devices = list(description.devices)
    if len(devices) != topology.chips:
        raise CompileError(f"topology {topology.name!r}: libtpu describes {len(devices)} devices, expected "
                           f"{topology.chips} chips")
    return devices


# ====================================================================================================
# The programs, abstractly.

@dataclasses.dataclass(frozen=True)
class GenerationShape:
    """Generation's batch: prompts per prefill call, prompt length (padded), new tokens, the decode slots
    (rows decoded together; None: batch_size) and the prefill chunk (None: the prompt in one pass)."""

    batch_size: int
    prompt_len: int
    max_new_tokens: int
    slots: int | None = None
    prefill_chunk: int | None = None

    @property
    def decode_rows(self) -> int:
        return self.slots or self.batch_size


@dataclasses.dataclass(frozen=True, eq=False)
class Programs:
    """What the programs of one config are lowered from: its Setup (built on the target's devices, nothing
    executed) and generation's batch shape."""

    setup: build.Setup
    generation: GenerationShape

    @property
    def seq_len(self) -> int:
        return data_lib.row_length(self.setup.config.data)

    @property
    def eos_id(self) -> int:
        return self.setup.model_config.vocab_size - 1  # a stand-in: the stop id is a constant of decode, not a shape


def shard_bytes(tree) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs carrying shardings (the largest shard)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
    return int(total)


def _abstract(shape, dtype, sharding) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype), sharding=sharding)


def train_batch(*, mesh, rows: int, seq_len: int, with_weights: bool = False) -> dict:
    """The trainer's batch arrays ([rows, T]: int32 ids, float32 loss mask), split over (data, fsdp)."""
    sharding = sharding_lib.batch_sharding(mesh)
    batch = {key: _abstract((rows, seq_len), jnp.float32 if key == "loss_mask" else jnp.int32, sharding)
             for key in data_lib.BATCH_KEYS}
    if with_weights:
        batch["weights"] = _abstract((rows,), jnp.float32, sharding_lib.batch_sharding(mesh, ndim=1))
    return batch


def default_generation(config) -> GenerationShape:
    """eval.batch_size prompts of the row length (the longest prompt the data allows), with the evaluator's
    new-token budget for the task."""
    task = str(config.data.task).split(":")[0]
    new_tokens = evaluate.DEFAULT_MAX_NEW_TOKENS.get(task, evaluate.DEFAULT_MAX_NEW_TOKENS["reasoning_gym"])
    prompt_len = -(-data_lib.row_length(config.data) // sampler.PROMPT_BUCKET) * sampler.PROMPT_BUCKET
    return GenerationShape(batch_size=config.eval.batch_size, prompt_len=prompt_len, max_new_tokens=new_tokens)


def build_programs(config, *, devices: Sequence[Any], generation: GenerationShape | None = None) -> Programs:
    """`config`'s Setup on `devices` (validated against them; architecture only, no tokenizer, no weights;
    nothing is executed), with generation's shape."""
    try:
        setup = build.setup(config, devices=devices, load_tokenizer=False)
    except ValueError as error:  # a bad field, or a parameter dimension the mesh does not divide
        raise CompileError(f"{error} (the topology has {len(devices)} chips)") from None
    return Programs(setup=setup, generation=generation or default_generation(setup.config))


def lower_train(target: Programs):
    replicated = sharding_lib.replicated(target.setup.mesh)
    schedule = {key: _abstract((), jnp.float32, replicated)
                for key in target.setup.schedule(total_steps=1).as_arrays()}
    batch = train_batch(mesh=target.setup.mesh, rows=target.setup.config.batch_size, seq_len=target.seq_len)
    with sharding_lib.mesh_context(target.setup.mesh, target.setup.rules):
        step = target.setup.train_step()
        return step.lower(target.setup.state_target, batch, schedule), {"batch": batch}


def lower_eval(target: Programs):
    batch = train_batch(mesh=target.setup.mesh, rows=target.setup.config.eval.batch_size, seq_len=target.seq_len,
                        with_weights=True)
    with sharding_lib.mesh_context(target.setup.mesh, target.setup.rules):
        step = step_lib.jitted_eval_sums(target.setup.spec.loss, target.setup.mesh)
        return step.lower(target.setup.state_target.params, batch), {"batch": batch}


def _generation_params(target: Programs):
    if target.setup.model_config.scan_layers:
        return target.setup.state_target.params, target.setup.model_config
    # generate() stacks unscanned params first; the stacked layout has its own shardings.
    config = target.setup.model_config.replace(scan_layers=True)
    abstract, shardings = model_lib.param_layout(config, mesh=target.setup.mesh, rules=target.setup.rules)
    return sharding_lib.with_shardings(abstract, shardings), config


def _prompt_arrays(target: Programs):
    g = target.generation
    replicated = sharding_lib.replicated(target.setup.mesh)
    return tuple(_abstract((g.batch_size, g.prompt_len), jnp.int32, replicated) for _ in range(3))


def _cache_length(target: Programs) -> int:
    g = target.generation
    return sampler.cache_length(prompt_len=g.prompt_len, max_new_tokens=g.max_new_tokens,
                                kv_bucket=sampler.SamplerOptions().kv_bucket)


def lower_prefill(target: Programs):
    """The engine's prefill of batch_size prompts (in chunks of prefill_chunk tokens when set) into a cache
    of prompt_len slots, the part of a decode slot that a refill writes."""
    params, config = _generation_params(target)
    g = target.generation
    if g.prefill_chunk is not None and g.prompt_len % g.prefill_chunk:
        raise CompileError(f"--prefill_chunk={g.prefill_chunk} must divide --prompt_len={g.prompt_len}")
    with sharding_lib.mesh_context(target.setup.mesh, target.setup.rules):
        lowered = sampler.prefill.lower(params, *_prompt_arrays(target), config=config, max_len=g.prompt_len,
                                        chunk=g.prefill_chunk)
    return lowered, {"batch": _prompt_arrays(target)}


def decode_slots(target: Programs) -> int:
    """The decode rows, rounded up to a multiple of the row split (data x fsdp), as the engine does."""
    multiple = sampler.rows_multiple(target.setup.mesh, target.setup.rules)
    return -(-target.generation.decode_rows // multiple) * multiple


def slot_arrays(target: Programs, *, config) -> dict:
    """The decode state of the engine's slots, abstract with the engine's shardings: logits [S, V], a cache
    of S rows x (prompt_len + max_new_tokens) slots with per-row ends, and the per-row vectors."""
    mesh, slots = target.setup.mesh, decode_slots(target)
    spec = sampler.cache_spec(mesh, target.setup.rules)
    from jax.sharding import NamedSharding

    def placed(shape, dtype):
        value = jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype))
        return _abstract(shape, dtype, NamedSharding(mesh, spec(value)))

    max_len = _cache_length(target)
    c = config
    kv = (c.n_layers, slots, c.n_kv_heads, max_len, c.head_dim)
    cache = {"k": placed(kv, c.dtype), "v": placed(kv, c.dtype), "segment_ids": placed((slots, max_len), jnp.int32),
             "end": placed((slots,), jnp.int32)}
    keys = jax.eval_shape(lambda: sampler.row_keys(seed=0, prompt_ids=[0] * slots, sample_indices=[0] * slots))
    replicated = sharding_lib.replicated(mesh)
    return {"logits": placed((slots, c.vocab_size), jnp.float32), "cache": cache,
            "positions": placed((slots,), jnp.int32), "done": placed((slots,), jnp.bool_),
            "keys": jax.ShapeDtypeStruct(keys.shape, keys.dtype, sharding=NamedSharding(mesh, spec(keys))),
            "drawn": placed((slots,), jnp.int32), "max_new_tokens": _abstract((), jnp.int32, replicated),
            "free_target": _abstract((), jnp.int32, replicated)}


def lower_decode(target: Programs, *, steps: int | None = None):
    """decode_chunk() of the engine's slots (continuous batching: per-row cache ends): `steps` single-token
    steps (default the engine's chunk_steps, at most max_new_tokens), attending over every cache slot (the
    costliest chunk)."""
    params, config = _generation_params(target)
    g = target.generation
    rows = slot_arrays(target, config=config)
    with sharding_lib.mesh_context(target.setup.mesh, target.setup.rules):
        lowered = sampler.decode_chunk.lower(
            params, rows["logits"], rows["cache"], rows["positions"], rows["done"], rows["keys"], rows["drawn"],
            rows["max_new_tokens"], rows["free_target"], config=config,
            steps=steps or min(sampler.SamplerOptions().chunk_steps, g.max_new_tokens), kv_len=_cache_length(target),
            stop_ids=(target.eos_id,), pad_id=0, temperature=1.0, top_p=1.0)
    return lowered, {"batch": rows}


# ====================================================================================================
# Compiling and measuring.

@dataclasses.dataclass
class ProgramReport:
    """Per-chip bytes of one compiled program (or why the compiler refused it)."""

    name: str
    compile_seconds: float
    arguments: int = 0
    outputs: int = 0
    aliased: int = 0
    temporaries: int = 0
    code: int = 0
    parts: dict = dataclasses.field(default_factory=dict)  # analytic bytes: params, optimizer, batch, ...
    out_of_memory: str = ""  # the compiler's own message when it ran out of HBM

    @property
    def total(self) -> int:
        """Peak per-chip bytes: arguments + temporaries + outputs not aliased to arguments + code."""
        return self.arguments + self.temporaries + self.outputs - self.aliased + self.code

    def fits(self, capacity: int) -> bool:
        return not self.out_of_memory and self.total <= capacity


OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Ran out of memory", "out of memory")


def _compile(name: str, lowered, parts: Mapping[str, int]) -> tuple[ProgramReport, Any]:
    start = time.perf_counter()
    try:
        compiled = lowered.compile()
    except Exception as error:  # noqa: BLE001 - only the compiler's out-of-memory verdict is a result
        text = str(error)
        if not any(marker in text for marker in OOM_MARKERS):
            raise
        return ProgramReport(name=name, compile_seconds=time.perf_counter() - start, parts=dict(parts),
                             out_of_memory=summarise_oom(text)), None
    seconds = time.perf_counter() - start
    stats = compiled.memory_analysis()
    report = ProgramReport(name=name, compile_seconds=seconds, arguments=int(stats.argument_size_in_bytes),
                           outputs=int(stats.output_size_in_bytes), aliased=int(stats.alias_size_in_bytes),
                           temporaries=int(stats.temp_size_in_bytes),
                           code=int(stats.generated_code_size_in_bytes), parts=dict(parts))
    return report, compiled


def summarise_oom(text: str, *, allocations: int = 3) -> str:
    """The TPU compiler's out-of-memory message in a few lines: usage vs capacity, largest allocations."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    used = next((line for line in lines if line.startswith("Used ") or "Exceeded" in line), lines[0])
    kept = [used]
    sizes = [i for i, line in enumerate(lines) if line.startswith(tuple(f"{n}. Size:" for n in range(1, 10)))]
    for i in sizes[:allocations]:
        detail = [lines[i]] + [line for line in lines[i + 1:i + 6]
                               if line.startswith(("Shape:", "Operator:", "Allocation type:"))]
        kept.append(" ".join(detail)[:300])
    return " | ".join(kept)


def compile_target(target: Programs, *, programs: Sequence[str] = PROGRAMS) -> dict[str, ProgramReport]:
    """Lower and compile the requested programs; their per-chip memory reports, by name."""
    unknown = sorted(set(programs) - set(PROGRAMS))
    if unknown:
        raise CompileError(f"unknown program(s) {unknown}; choose from {PROGRAMS}")
    state = target.setup.state_target
    reports: dict[str, ProgramReport] = {}
    if "train" in programs:
        lowered, extra = lower_train(target)
        reports["train"], _ = _compile("train", lowered, {
            "params": shard_bytes(state.params), "optimizer": shard_bytes(state.opt_state),
            "batch": shard_bytes(extra["batch"])})
    if "eval" in programs:
        lowered, extra = lower_eval(target)
        reports["eval"], _ = _compile("eval", lowered, {"params": shard_bytes(state.params),
                                                        "batch": shard_bytes(extra["batch"])})
    if "prefill" in programs or "decode" in programs:
        params, _ = _generation_params(target)
    if "prefill" in programs:
        lowered, extra = lower_prefill(target)
        reports["prefill"], _ = _compile("prefill", lowered, {"params": shard_bytes(params),
                                                              "batch": shard_bytes(extra["batch"])})
    if "decode" in programs:
        lowered, extra = lower_decode(target)
        reports["decode"], _ = _compile("decode", lowered, {
            "params": shard_bytes(params), "kv_cache": shard_bytes(extra["batch"]["cache"])})
    return reports


# ====================================================================================================
# Cost model.

def step_costs(target: Programs, *, chip: Chip, chips: int) -> dict[str, float]:
    """Analytic FLOPs, roofline lower bound and tokens/s at fixed MFU of one train step."""
    c = target.setup.model_config
    per_token = model_lib.flops_per_token(c, seq_len=target.seq_len)
    tokens = target.setup.config.batch_size * target.seq_len
    per_step = per_token * tokens
    compute_seconds = per_step / (chips * chip.peak_flops)
    n_params = model_lib.count_non_embedding_params(c) + c.vocab_size * c.d_model * (1 if c.tie_embeddings else 2)
    tensor = target.setup.mesh.shape["tensor"]
    passes = 2 + int(c.remat_name != "none")
    streamed = target.setup.spec.num_micro_batches * passes * n_params / tensor * jnp.dtype(c.dtype).itemsize
    state = shard_bytes(target.setup.state_target.params) + shard_bytes(target.setup.state_target.opt_state)
    hbm_bytes = 2 * state + streamed
    memory_seconds = hbm_bytes / chip.hbm_bandwidth
    costs = {"params": float(n_params), "flops_per_token": per_token, "tokens_per_step": float(tokens),
             "flops_per_step": per_step, "hbm_bytes_per_chip": float(hbm_bytes),
             "roofline_compute_seconds": compute_seconds, "roofline_memory_seconds": memory_seconds,
             "roofline_step_seconds": max(compute_seconds, memory_seconds)}
    for mfu in MFU_LEVELS:
        costs[f"tokens_per_second_at_{int(mfu * 100)}_mfu"] = mfu * chips * chip.peak_flops / per_token
    return costs


def advice(target: Programs, report: ProgramReport, *, capacity: int) -> str:
    """One message for a program that does not fit: the largest buffers and what to change."""
    config, c = target.setup.config, target.setup.model_config
    mesh = target.setup.mesh.shape
    if report.out_of_memory:
        head = f"{report.name} does not fit: the TPU compiler ran out of HBM: {report.out_of_memory}"
    else:
        head = (f"{report.name} does not fit: {report.total / GIB:.1f} GiB per chip > {capacity / GIB:.0f} GiB")
    buffers = dict(report.parts)
    if report.temporaries:
        buffers["temporaries"] = report.temporaries
    if report.name in ("train", "eval") and config.loss.impl == "naive":
        rows = (config.micro_batch_size or config.batch_size) if report.name == "train" else config.eval.batch_size
        rows_per_chip = -(-rows // (mesh["data"] * mesh["fsdp"]))
        buffers["logits of one micro-batch (float32)"] = rows_per_chip * target.seq_len * c.vocab_size // mesh["tensor"] * 4
    largest = sorted(buffers.items(), key=lambda item: -item[1])[:4]
    listed = ", ".join(f"{name} {size / GIB:.1f} GiB" for name, size in largest)
    fixes = []
    state = report.parts.get("params", 0) + report.parts.get("optimizer", 0)
    if state > capacity / 2:
        fixes.append(f"more fsdp (config.mesh.fsdp, now {mesh['fsdp']}) to shard params and optimizer state")
    if report.name == "train":
        fixes.append(f"more micro-batches (config.micro_batch_size smaller, now {config.micro_batch_size or config.batch_size} rows)")
        if c.remat_name == "none":
            fixes.append("remat (config.model.remat_policy='full', or a lighter policy)")
        if config.loss.impl == "naive":
            fixes.append("the chunked head (config.loss.impl='chunked')")
    elif report.name == "prefill":
        fixes.append("fewer prompts per generation batch (--generate_batch_size), a smaller --prefill_chunk, or "
                     "more fsdp/tensor")
    elif report.name == "decode":
        fixes.append("fewer decode slots (--slots: the KV cache grows with them) or more fsdp/tensor")
    else:
        fixes.append("a smaller config.eval.batch_size")
    return f"{head}; largest: {listed}. Change: {'; '.join(fixes)}."


def compile_report(config, *, topology: str, programs: Sequence[str] = PROGRAMS,
                   generation: GenerationShape | None = None) -> dict[str, Any]:
    """Everything the CLI prints, as a JSON-ready dict (raises CompileError for bad input)."""
    parsed = parse_topology(topology)
    devices = topology_devices(parsed)
    start = time.perf_counter()
    target = build_programs(config, devices=devices, generation=generation)
    reports = compile_target(target, programs=programs)
    capacity = parsed.chip.hbm_bytes
    result: dict[str, Any] = {
        "topology": parsed.name, "jax_topology": parsed.jax_name, "chip": parsed.chip.kind, "chips": parsed.chips,
        "hosts": len({d.process_index for d in devices}), "hbm_capacity_gib": capacity / GIB,
        "model": str(config.model.name), "objective": str(config.objective.name), "loss_impl": config.loss.impl,
        "remat": target.setup.model_config.remat_name != "none", "remat_policy": target.setup.model_config.remat_name,
        "attention": attention_lib.resolve(target.setup.model_config.attention_spec, platform="tpu",
                                           seq_len=target.seq_len), "mesh": dict(target.setup.mesh.shape),
        "batch_size": int(config.batch_size), "micro_batches": int(target.setup.spec.num_micro_batches),
        "seq_len": int(target.seq_len), "generation": dataclasses.asdict(target.generation), "programs": {},
        "problems": []}
    for name, report in reports.items():
        entry = {"compile_seconds": round(report.compile_seconds, 2), "fits": report.fits(capacity),
                 "total_gib": report.total / GIB, "arguments_gib": report.arguments / GIB,
                 "temporaries_gib": report.temporaries / GIB, "outputs_not_aliased_gib":
                 (report.outputs - report.aliased) / GIB, "code_gib": report.code / GIB,
                 **{f"{part}_gib": size / GIB for part, size in report.parts.items()},
                 "bytes": {**dataclasses.asdict(report), "total": report.total}}
        if report.out_of_memory:
            entry["out_of_memory"] = report.out_of_memory
        if not entry["fits"]:
            result["problems"].append(advice(target, report, capacity=capacity))
        result["programs"][name] = entry
    result["costs"] = step_costs(target, chip=parsed.chip, chips=parsed.chips)
    result["decode_slots"] = decode_slots(target)
    result["decode_row_split"] = sampler.rows_multiple(target.setup.mesh, target.setup.rules)
    result["state_gib"] = {"params": shard_bytes(target.setup.state_target.params) / GIB,
                           "optimizer": shard_bytes(target.setup.state_target.opt_state) / GIB}
    result["fits"] = not result["problems"] if reports else None  # None: nothing compiled
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


# ====================================================================================================
# Printing and the CLI.

def format_report(result: Mapping[str, Any]) -> str:
    """The report as a few aligned lines and a per-program table."""
    costs = result["costs"]
    mesh = " x ".join(f"{k}={v}" for k, v in result["mesh"].items())
    lines = [
        f"{result['model']} ({costs['params'] / 1e9:.2f}B params), {result['objective']} ({result['loss_impl']} head"
        f", remat policy {result['remat_policy']}, attention {result['attention']}), "
        f"{result['batch_size']} rows x {result['seq_len']} tokens in "
        f"{result['micro_batches']} micro-batch(es)",
        f"topology {result['topology']} ({result['jax_topology']}): {result['chips']} {result['chip']} chips on "
        f"{result['hosts']} host(s), {result['hbm_capacity_gib']:.0f} GiB HBM each; mesh {mesh}",
        "",
        f"{'program':<8} {'fits':<4} {'total':>8} {'params':>8} {'optim':>8} {'batch':>8} {'temps':>8} "
        f"{'compile':>8}   (GiB per chip, seconds)",
    ]
    for name, p in result["programs"].items():
        batch = p.get("batch_gib", p.get("kv_cache_gib", 0.0))
        lines.append(f"{name:<8} {'yes' if p['fits'] else 'NO':<4} {p['total_gib']:>8.2f} {p.get('params_gib', 0):>8.2f} "
                     f"{p.get('optimizer_gib', 0):>8.2f} {batch:>8.2f} {p['temporaries_gib']:>8.2f} "
                     f"{p['compile_seconds']:>8.1f}" + ("   (compiler: out of HBM)" if "out_of_memory" in p else ""))
    state = result["state_gib"]
    lines += [
        "",
        f"state per chip (from the shardings): params {state['params']:.2f} GiB, optimizer {state['optimizer']:.2f} GiB",
        f"model FLOPs: {costs['flops_per_token'] / 1e9:.2f} GFLOP/token, {costs['flops_per_step'] / 1e15:.2f} PFLOP/step "
        f"({costs['tokens_per_step']:.0f} tokens)",
        f"roofline step time >= {costs['roofline_step_seconds']:.2f} s (compute {costs['roofline_compute_seconds']:.2f} s, "
        f"HBM {costs['roofline_memory_seconds']:.3f} s)",
        "tokens/s: " + ", ".join(f"{costs[f'tokens_per_second_at_{int(m * 100)}_mfu']:,.0f} at {int(m * 100)}% MFU"
                                 for m in MFU_LEVELS),
    ]
    return "\n".join(lines)
