"""The TPU compiler's own estimate of a train step's time, with its loops accounted for.

`compiled.cost_analysis()["optimal_seconds"]` is the compiler's estimate of a program's time on the chip,
but (like its FLOPs) it counts a while-loop body once: the scanned layers, the micro-batch scan and the
chunked head's scan. So the step is rebuilt from loop-free programs (layers fully unrolled, one
micro-batch, the head in one chunk), each compiled for the same topology and mesh:

  A(l) = train step of one micro-batch with l layers      F(l) = its forward + backward alone
  U(l) = A(l) - F(l)                                      (clip, optimizer update, ...: once per step)
  X(L) = X(1) + (L - 1) (X(2) - X(1))   for X in {F, U}   (every layer costs the same)
  step(L, M) = M F(L) + U(L)                              (M micro-batches of the config's rows)

Two things the compiler does to a loop-free program that make it under-count, and what is done here:
  * Windowed einsums. The TPU compiler turns an all-gather of fsdp-sharded weights followed by a matmul
    (and a matmul followed by a reduce-scatter) into a while loop over the shards (collective matmul),
    whose body cost_analysis then counts once: a 6144 x 4096 x 14336 matmul with fsdp-sharded weights on
    v5p-32 reads 1/4 of its FLOPs and 53% of the replicated matmul's time. The estimate's programs are
    compiled with windowed einsums off (COMPILER_OPTIONS; the trainer's program keeps them), which
    leaves them loop-free: a compiled program that still has a while loop is reported as unreliable.
  * Splash attention is a Pallas custom call that the cost model prices by its bytes alone (0 FLOPs):
    one forward kernel of 32 heads x 3072 tokens reads 0.09 ms where its matmuls need 0.2 ms at peak.
    Each splash kernel in the compiled program (forward, dq, dkv: 2, 3 and 4 block-sparse matmuls of
    its visible (query, key) blocks) is added at the chip's peak: kernel FLOPs / peak (optimistic).

Reported beside the roofline, as "compiler's estimate": seconds per step, tokens/s = tokens per step /
step, and MFU = model FLOPs per step / (chips x peak x step), the FLOPs from model.flops_per_token; also
the compiler's own FLOPs per chip (extrapolated as above, splash kernels added) and the utilisation they
imply, compiler FLOPs / (peak x step). An estimate faster than the FLOPs lower bound (model FLOPs /
(chips x peak): MFU above 100%) cannot be right; it is flagged as unreliable and the roofline stands.

Evaluation (the decode program compiled): one decode step of the engine's S slots, priced two ways,
  compiler   D(L) = D(1) + (L - 1) (D(2) - D(1)), D(l) the optimal_seconds of a one-step decode chunk
             with l layers unrolled, compiled with windowed einsums off as above (no loop but the chunk's
             own, one trip; flagged as unreliable when another is left or D(L) beats the HBM bound below);
  HBM        bytes per chip / bandwidth, bytes = N x itemsize(param_dtype) / tensor [every weight read
             once per step, gathered over fsdp] + the KV cache per chip [every slot attends over all of it];
then tokens/s per chip = S / chips / step, and the chip-hours of the paper's math avg@16 evaluation =
problems x samples x mean sample tokens / (tokens/s per chip) / 3600 (decoding only: the prompts' prefill
is a few hundred tokens per problem, shared by its samples). Slots that fit = the row split x
floor((0.9 x HBM - (decode total - KV cache)) / KV cache per slot group), from the compiled decode.
"""
from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections

from deft_jax import data as data_lib
from deft_jax import sharding as sharding_lib
from deft_jax.aot import programs as programs_lib
from deft_jax.model import attention as attention_lib
from deft_jax.training import setup as build
from deft_jax.training import step as step_lib

LAYER_COUNTS = (1, 2)


# The estimate's programs: without windowed einsums (collective matmuls are while loops over the shards).
COMPILER_OPTIONS = {"xla_tpu_enable_windowed_einsum_for_all_gather": False,
                    "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False}
SPLASH_KERNEL_MATMULS = {"splash_mha_fwd": 2, "splash_mha_dq": 3, "splash_mha_dkv": 4}  # S=QK^T, PV / S, dP, dq / S, dP, dv, dk


@dataclasses.dataclass(frozen=True)
class Estimate:
    """The compiler's estimate of one train step, and the loop-free compiles it came from."""

    step_seconds: float
    tokens_per_second: float
    mfu: float
    per_layer: dict  # {'grads': [F(1), F(2)], 'train': [A(1), A(2)]} in seconds (splash kernels added)
    per_layer_flops: dict  # the same programs' compiler FLOPs per chip (splash kernels added)
    micro_batches: int
    n_layers: int
    compiler_flops_per_chip: float  # per step, extrapolated like the seconds, splash kernels added
    compiler_utilisation: float  # compiler_flops_per_chip / (peak x step)
    flops_lower_bound_seconds: float  # model FLOPs / (chips x peak)
    splash_seconds: float  # of step_seconds: the splash kernels at peak
    while_loops: int  # left in the loop-free programs (0 for a valid estimate)
    reliable: bool
    problem: str = ""  # why not reliable

    def as_dict(self) -> dict[str, Any]:
        return {"label": "the TPU compiler's estimate (cost_analysis optimal_seconds, loops unrolled, "
                         "windowed einsums off, splash kernels at peak)", **dataclasses.asdict(self)}


# Custom calls the TPU compiler's cost model does not price: each adds -1 to 'optimal_seconds'
# (measured with libtpu 0.0.42.1: three ConcatBitcast calls made a 0.7 ms program read -2.9993 s).
UNPRICED_CUSTOM_CALLS = ("ConcatBitcast",)


def optimal_seconds(compiled) -> float:
    """The compiler's time estimate of a compiled program (cost_analysis 'optimal_seconds'), with the -1 s
    each unpriced custom call contributes added back; CompileError when it still is not a time."""
    costs = compiled.cost_analysis()
    costs = costs[0] if isinstance(costs, (list, tuple)) else costs
    if not costs or "optimal_seconds" not in costs:
        raise programs_lib.CompileError("this compiler gives no 'optimal_seconds' estimate (TPU compilers do)")
    text = compiled.as_text()
    unpriced = sum(text.count(f'custom_call_target="{name}"') for name in UNPRICED_CUSTOM_CALLS)
    seconds = float(costs["optimal_seconds"]) + unpriced
    if seconds <= 0:
        raise programs_lib.CompileError(
            f"the TPU compiler's estimate is not a time ({costs['optimal_seconds']:.4g} s, {unpriced} unpriced "
            f"custom calls added back): some op has no cost model; use the roofline instead")
    return seconds


def splash_calls(text: str) -> dict[str, int]:
    """{kernel: count} of the splash kernels in HLO text: tpu_custom_call instructions whose name (or
    op_name) says splash_mha_fwd / _dq / _dkv."""
    counts = dict.fromkeys(SPLASH_KERNEL_MATMULS, 0)
    for line in text.splitlines():
        if 'custom_call_target="tpu_custom_call"' not in line:
            continue
        name = re.search(r"(splash_mha_(?:fwd|dq|dkv))", line)
        if name:
            counts[name.group(1)] += 1
    return counts


def splash_kernel_flops(*, tiling: attention_lib.SplashTiling, head_dim: int, heads_per_chip: float,
                        rows_per_chip: float) -> dict[str, float]:
    """FLOPs per chip of one call of each splash kernel: matmuls x visible blocks x bq x bkv x 2 hd x heads
    x rows."""
    per_matmul = tiling.visible_blocks * tiling.block_q * tiling.block_kv * 2 * head_dim * heads_per_chip * rows_per_chip
    return {name: matmuls * per_matmul for name, matmuls in SPLASH_KERNEL_MATMULS.items()}


@dataclasses.dataclass(frozen=True)
class ProgramCost:
    """One compiled loop-free program, priced: the compiler's seconds and FLOPs with splash kernels added."""

    seconds: float
    flops: float
    splash_seconds: float
    while_loops: int


def program_cost(compiled, *, splash_flops: dict[str, float], peak_flops: float) -> ProgramCost:
    """optimal_seconds (unpriced calls added back) + splash kernel FLOPs / peak; the compiler's FLOPs +
    the kernels'; and how many while loops the compiled program still has."""
    text = compiled.as_text()
    costs = compiled.cost_analysis()
    costs = costs[0] if isinstance(costs, (list, tuple)) else costs
    kernels = sum(count * splash_flops.get(name, 0.0) for name, count in splash_calls(text).items())
    return ProgramCost(seconds=optimal_seconds(compiled) + kernels / peak_flops,
                       flops=float(costs.get("flops", 0.0)) + kernels, splash_seconds=kernels / peak_flops,
                       while_loops=count_while_loops(text))


def count_while_loops(text: str) -> int:
    """While loops in a compiled program's HLO text."""
    return len(re.findall(r"\swhile\(", text))


def while_loops(compiled) -> int:
    """While loops left in a compiled program (cost_analysis counts each body once)."""
    return count_while_loops(compiled.as_text())


def loop_free_config(config, *, n_layers: int) -> ml_collections.ConfigDict:
    """`config` with n_layers layers, fully unrolled, one micro-batch of its rows, the head in one chunk."""
    config = copy.deepcopy(config)
    micro = config.micro_batch_size or config.batch_size
    with config.unlocked():
        overrides = config.model.overrides.to_dict() if hasattr(config.model.overrides, "to_dict") else {}
        config.model.overrides = ml_collections.ConfigDict({**overrides, "n_layers": n_layers})
        config.model.scan_unroll = max(n_layers, 1)
        config.batch_size = micro
        config.micro_batch_size = 0
        config.loss.chunk_size = max(int(config.loss.chunk_size), micro * data_lib.row_length(config.data))
    return config


def compile_grads(target) -> Any:
    """Forward + backward of one micro-batch (the body of the trainer's micro-batch scan), compiled."""
    params = target.setup.state_target.params
    batch = programs_lib.train_batch(mesh=target.setup.mesh, rows=target.setup.config.batch_size, seq_len=target.seq_len)
    replicated = sharding_lib.replicated(target.setup.mesh)

    def grads(params, batch):
        return step_lib.accumulate_gradients(params, batch, loss=target.setup.spec.loss, num_micro_batches=1,
                                             accumulation=target.setup.spec.accumulation, mesh=target.setup.mesh)

    shardings = jax.tree.map(lambda leaf: leaf.sharding, params)
    with sharding_lib.mesh_context(target.setup.mesh, target.setup.rules):
        jitted = jax.jit(grads, out_shardings=(replicated, shardings, replicated))
        return jitted.lower(params, batch).compile(compiler_options=COMPILER_OPTIONS)


def compile_train(target) -> Any:
    """The train step (one micro-batch), compiled with the estimate's options."""
    lowered, _ = programs_lib.lower_train(target)
    return lowered.compile(compiler_options=COMPILER_OPTIONS)


def target_splash_flops(target) -> dict[str, float]:
    """splash_kernel_flops of the target's attention (zeros when it does not run splash)."""
    c = target.setup.model_config
    if attention_lib.resolve(c.attention_spec, platform="tpu", seq_len=target.seq_len) != "splash":
        return dict.fromkeys(SPLASH_KERNEL_MATMULS, 0.0)
    mesh = target.setup.mesh.shape
    tiling = attention_lib.splash_tiling(seq_len=target.seq_len, spec=c.attention_spec, sliding_window=c.sliding_window)
    heads = c.n_heads / (mesh["tensor"] if c.n_heads % mesh["tensor"] == 0 else 1)
    rows = target.setup.config.batch_size / (mesh["data"] * mesh["fsdp"])
    return splash_kernel_flops(tiling=tiling, head_dim=c.head_dim, heads_per_chip=heads, rows_per_chip=rows)


def extrapolate(values: Sequence[float], *, n_layers: int) -> float:
    """X(L) = X(1) + (L - 1) (X(2) - X(1)) from X at 1 and 2 layers."""
    one, two = values
    return one + (n_layers - 1) * (two - one)


FLOPS_BOUND = "the FLOPs lower bound (model FLOPs / (chips x peak))"
HBM_BOUND = "the HBM lower bound (bytes per chip / bandwidth)"


def reliability_problem(*, step_seconds: float, bound_seconds: float, while_loops: int,
                        bound: str = FLOPS_BOUND) -> str:
    """Why an estimate cannot be trusted ('' when it can): loops left in its programs (bodies counted once),
    or a step faster than its lower bound (for the train step, MFU above 100%)."""
    if while_loops:
        return f"{while_loops} while loop(s) left in the loop-free programs: their bodies are counted once"
    if step_seconds < bound_seconds:
        return (f"{step_seconds:.3g} s/step is below {bound} {bound_seconds:.3g} s: the compiler's cost model "
                f"missed work")
    return ""


def estimate_train_step(config, *, devices: Sequence[Any], chips: int, peak_flops: float,
                        flops_per_step: float, tokens_per_step: float, n_layers: int,
                        micro_batches: int) -> Estimate:
    """step(L, M) = M F(L) + U(L) from loop-free compiles at 1 and 2 layers (see the module doc)."""
    costs: dict[str, list[ProgramCost]] = {"grads": [], "train": []}
    for layers in LAYER_COUNTS:
        target = programs_lib.build_programs(loop_free_config(config, n_layers=layers), devices=devices)
        splash = target_splash_flops(target)
        costs["grads"].append(program_cost(compile_grads(target), splash_flops=splash, peak_flops=peak_flops))
        costs["train"].append(program_cost(compile_train(target), splash_flops=splash, peak_flops=peak_flops))

    def step_of(field: str) -> float:
        forward_backward = extrapolate([getattr(c, field) for c in costs["grads"]], n_layers=n_layers)
        update = extrapolate([getattr(c, field) for c in costs["train"]], n_layers=n_layers) - forward_backward
        return micro_batches * forward_backward + update

    step, flops = step_of("seconds"), step_of("flops")
    loops = sum(c.while_loops for program in costs.values() for c in program)
    bound = flops_per_step / (chips * peak_flops)
    problem = reliability_problem(step_seconds=step, bound_seconds=bound, while_loops=loops)
    return Estimate(step_seconds=step, tokens_per_second=tokens_per_step / step,
                    mfu=flops_per_step / (chips * peak_flops * step),
                    per_layer={name: [c.seconds for c in program] for name, program in costs.items()},
                    per_layer_flops={name: [c.flops for c in program] for name, program in costs.items()},
                    micro_batches=micro_batches, n_layers=n_layers, compiler_flops_per_chip=flops,
                    compiler_utilisation=flops / (peak_flops * step), flops_lower_bound_seconds=bound,
                    splash_seconds=step_of("splash_seconds"), while_loops=loops, reliable=not problem,
                    problem=problem)


def add_to_report(config, result: dict) -> dict:
    """result (a programs.compile_report) with 'estimate': the compiler's estimate of the train step, or
    {'error': why} when the compiler gives no usable time."""
    topology = programs_lib.parse_topology(result["jax_topology"])
    costs = result["costs"]
    try:
        estimate = estimate_train_step(
            config, devices=programs_lib.topology_devices(topology), chips=topology.chips,
            peak_flops=topology.chip.peak_flops, flops_per_step=costs["flops_per_step"],
            tokens_per_step=costs["tokens_per_step"], n_layers=build.architecture(config).n_layers,
            micro_batches=result["micro_batches"])
    except programs_lib.CompileError as error:
        return {**result, "estimate": {"error": str(error)}}
    return {**result, "estimate": estimate.as_dict()}


def format_estimate(result: dict) -> str:
    """One line: the compiler's estimate beside the roofline (or why it is not to be trusted)."""
    estimate, costs = result["estimate"], result["costs"]
    if "error" in estimate:
        return f"compiler's estimate: none ({estimate['error']})"
    line = (f"compiler's estimate (TPU cost model, loops unrolled): {estimate['step_seconds']:.3f} s/step, "
            f"{estimate['tokens_per_second']:,.0f} tokens/s, MFU {100 * estimate['mfu']:.1f}%")
    if "compiler_utilisation" in estimate:
        line += (f" (compiler's FLOPs {estimate['compiler_flops_per_chip'] / 1e15:.2f} PFLOP/chip, "
                 f"{100 * estimate['compiler_utilisation']:.0f}% of peak; splash kernels "
                 f"{estimate['splash_seconds']:.2f} s at peak)")
    line += f"  (roofline >= {costs['roofline_step_seconds']:.3f} s/step)"
    if not estimate.get("reliable", True):
        line += f"\n  UNRELIABLE: {estimate['problem']}; report the roofline instead"
    return line


# ====================================================================================================
# Evaluation: the decode step and what the paper's math evaluation costs.

MATH_PROBLEMS = 1517  # the math suite: MATH-500 500, Minerva 272, OlympiadBench 675, AIME24 30, AMC23 40
MATH_SAMPLES = 16     # avg@16
DEFAULT_MEAN_SAMPLE_TOKENS = 1024  # assumed mean new tokens per sample (budget 4,096; most stop far earlier)
HBM_MARGIN = 0.9


def decode_hbm_bytes(*, n_params: float, param_itemsize: int, tensor: int, kv_cache_bytes: float) -> float:
    """HBM bytes one chip reads per decode step: N x itemsize / tensor + its KV cache."""
    return n_params * param_itemsize / tensor + kv_cache_bytes


def evaluation_cost(*, step_seconds: float, slots: int, chips: int, mean_sample_tokens: float,
                    problems: int = MATH_PROBLEMS, samples: int = MATH_SAMPLES) -> dict[str, float]:
    """tokens/s per chip = slots / chips / step; chip-hours = problems x samples x mean tokens / that / 3600;
    hours on the slice = chip-hours / chips."""
    per_chip = slots / chips / step_seconds
    tokens = problems * samples * mean_sample_tokens
    chip_hours = tokens / per_chip / 3600
    return {"step_seconds": step_seconds, "tokens_per_second_per_chip": per_chip,
            "tokens_per_second": per_chip * chips, "tokens": tokens, "chip_hours": chip_hours,
            "slice_hours": chip_hours / chips}


def slots_that_fit(*, slots: int, multiple: int, total_bytes: int, kv_cache_bytes: int, capacity: int) -> int:
    """The row split x floor((margin x capacity - what is not cache) / cache bytes per slot group)."""
    per_group = kv_cache_bytes / (slots // multiple)
    return multiple * max(0, int((HBM_MARGIN * capacity - (total_bytes - kv_cache_bytes)) // per_group))


def estimate_decode_step(config, *, devices: Sequence[Any], generation, n_layers: int,
                         hbm_bound_seconds: float) -> dict[str, Any]:
    """The compiler's D(L) of one decode step (see the module doc) from loop-free 1- and 2-layer compiles,
    with windowed einsums off as for the train step; 'problem' says why it cannot be trusted ('' when it
    can): loops left in the programs beside the one-step chunk's own, or a step faster than the HBM bound."""
    seconds, loops = [], 0
    for layers in LAYER_COUNTS:
        target = programs_lib.build_programs(loop_free_config(config, n_layers=layers), devices=devices,
                                             generation=generation)
        lowered, _ = programs_lib.lower_decode(target, steps=1)
        compiled = lowered.compile(compiler_options=COMPILER_OPTIONS)
        seconds.append(optimal_seconds(compiled))
        loops += max(0, while_loops(compiled) - 1)  # the chunk's own loop runs its body once: counted right
    step = extrapolate(seconds, n_layers=n_layers)
    problem = reliability_problem(step_seconds=step, bound_seconds=hbm_bound_seconds, while_loops=loops,
                                  bound=HBM_BOUND)
    return {"step_seconds": step, "per_layer": seconds, "while_loops": loops, "problem": problem}


def add_evaluation_to_report(config, result: dict, *, mean_sample_tokens: float = DEFAULT_MEAN_SAMPLE_TOKENS,
                             compiler: bool = True) -> dict:
    """result (a programs.compile_report with the decode program) with 'evaluation': the decode step's time
    (compiler, HBM), tokens/s per chip, slots that fit, and the math avg@16 chip-hours for each."""
    decode = result["programs"]["decode"]
    topology = programs_lib.parse_topology(result["jax_topology"])
    model = build.architecture(config)
    generation = programs_lib.GenerationShape(**result["generation"])
    slots, multiple = result["decode_slots"], result["decode_row_split"]
    kv = decode["bytes"]["parts"]["kv_cache"]
    hbm_bytes = decode_hbm_bytes(n_params=result["costs"]["params"], tensor=result["mesh"]["tensor"],
                                 param_itemsize=jax.numpy.dtype(model.param_dtype).itemsize, kv_cache_bytes=kv)
    steps = {"hbm": hbm_bytes / topology.chip.hbm_bandwidth}
    evaluation: dict[str, Any] = {
        "slots": slots, "mean_sample_tokens": mean_sample_tokens, "problems": MATH_PROBLEMS,
        "samples": MATH_SAMPLES, "hbm_bytes_per_step_per_chip": hbm_bytes,
        "hbm_bandwidth": topology.chip.hbm_bandwidth,
        # Extrapolated from the compiled decode's bytes: none when the compiler refused it (out of HBM).
        "slots_that_fit": slots_that_fit(slots=slots, multiple=multiple, total_bytes=decode["bytes"]["total"],
                                         kv_cache_bytes=kv, capacity=topology.chip.hbm_bytes)
        if decode["fits"] else None}
    if compiler:
        try:
            compiled = estimate_decode_step(config, devices=programs_lib.topology_devices(topology),
                                            generation=generation, n_layers=model.n_layers,
                                            hbm_bound_seconds=steps["hbm"])
            steps["compiler"] = compiled["step_seconds"]
            evaluation["compiler_per_layer_seconds"] = compiled["per_layer"]
            evaluation["compiler_while_loops"] = compiled["while_loops"]
            evaluation["compiler_problem"] = compiled["problem"]
        except programs_lib.CompileError as error:
            evaluation["compiler_error"] = str(error)
    for name, seconds in steps.items():
        evaluation[name] = evaluation_cost(step_seconds=seconds, slots=slots, chips=topology.chips,
                                           mean_sample_tokens=mean_sample_tokens)
    return {**result, "evaluation": evaluation}


def format_evaluation(result: dict) -> str:
    """The decode step's time, tokens/s per chip and the math avg@16 chip-hours, one line per estimate."""
    e = result["evaluation"]
    fit = (f"{e['slots_that_fit']} would fit in {int(HBM_MARGIN * 100)}% of HBM" if e["slots_that_fit"] is not None
           else "the decode does not fit: compile fewer --slots")
    lines = [f"evaluation: {e['slots']} decode slots ({fit}); math avg@16 = {e['problems']} problems x {e['samples']} samples x "
             f"{e['mean_sample_tokens']:g} mean new tokens (assumed) = {e['problems'] * e['samples'] * e['mean_sample_tokens'] / 1e6:.1f}M tokens"]
    labels = {"compiler": "compiler's estimate (one loop-free step)",
              "hbm": f"HBM bound ({e['hbm_bytes_per_step_per_chip'] / 2**30:.2f} GiB/chip/step at "
                     f"{e['hbm_bandwidth'] / 1e9:.0f} GB/s)"}
    for name in ("compiler", "hbm"):
        if name in e:
            c = e[name]
            lines.append(f"  {labels[name]}: {c['step_seconds'] * 1e3:.2f} ms/step, {c['tokens_per_second_per_chip']:,.0f} "
                         f"tokens/s per chip, {c['chip_hours']:,.1f} chip-hours ({c['slice_hours']:.2f} h on the slice)")
    if e.get("compiler_problem"):
        lines.append(f"  UNRELIABLE compiler's estimate: {e['compiler_problem']}; report the HBM bound instead")
    if "compiler_error" in e:
        lines.append(f"  compiler's estimate: none ({e['compiler_error']})")
    return "\n".join(lines)
