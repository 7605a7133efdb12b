"""The TPU compiler's own estimate of a train step's time, with its loops accounted for.

`compiled.cost_analysis()["optimal_seconds"]` is the compiler's estimate of a program's time on the chip,
but (like its FLOPs) it counts a while-loop body once: the scanned layers, the micro-batch scan and the
chunked head's scan. So the step is rebuilt from loop-free programs (layers fully unrolled, one
micro-batch, the head in one chunk), each compiled for the same topology and mesh:

  A(l) = train step of one micro-batch with l layers      F(l) = its forward + backward alone
  U(l) = A(l) - F(l)                                      (clip, optimizer update, ...: once per step)
  X(L) = X(1) + (L - 1) (X(2) - X(1))   for X in {F, U}   (every layer costs the same)
  step(L, M) = M F(L) + U(L)                              (M micro-batches of the config's rows)

Reported beside the roofline, as "compiler's estimate": seconds per step, tokens/s = tokens per step /
step, and MFU = model FLOPs per step / (chips x peak x step), the FLOPs from model.flops_per_token.
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections

from deft_jax import data as data_lib
from deft_jax import sharding as sharding_lib
from deft_jax.aot import programs as programs_lib
from deft_jax.training import setup as build
from deft_jax.training import step as step_lib

LAYER_COUNTS = (1, 2)


@dataclasses.dataclass(frozen=True)
class Estimate:
    """The compiler's estimate of one train step, and the loop-free compiles it came from."""

    step_seconds: float
    tokens_per_second: float
    mfu: float
    per_layer: dict  # {'grads': [F(1), F(2)], 'train': [A(1), A(2)]} in seconds
    micro_batches: int
    n_layers: int

    def as_dict(self) -> dict[str, Any]:
        return {"label": "the TPU compiler's estimate (cost_analysis optimal_seconds, loops unrolled)",
                **dataclasses.asdict(self)}


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
        return jitted.lower(params, batch).compile()


def compile_train(target) -> Any:
    lowered, _ = programs_lib.lower_train(target)
    return lowered.compile()


def extrapolate(values: Sequence[float], *, n_layers: int) -> float:
    """X(L) = X(1) + (L - 1) (X(2) - X(1)) from X at 1 and 2 layers."""
    one, two = values
    return one + (n_layers - 1) * (two - one)


def estimate_train_step(config, *, devices: Sequence[Any], chips: int, peak_flops: float,
                        flops_per_step: float, tokens_per_step: float, n_layers: int,
                        micro_batches: int) -> Estimate:
    """step(L, M) = M F(L) + U(L) from loop-free compiles at 1 and 2 layers (see the module doc)."""
    seconds: dict[str, list[float]] = {"grads": [], "train": []}
    for layers in LAYER_COUNTS:
        target = programs_lib.build_programs(loop_free_config(config, n_layers=layers), devices=devices)
        seconds["grads"].append(optimal_seconds(compile_grads(target)))
        seconds["train"].append(optimal_seconds(compile_train(target)))
    forward_backward = extrapolate(seconds["grads"], n_layers=n_layers)
    update = extrapolate(seconds["train"], n_layers=n_layers) - forward_backward
    step = micro_batches * forward_backward + update
    return Estimate(step_seconds=step, tokens_per_second=tokens_per_step / step,
                    mfu=flops_per_step / (chips * peak_flops * step), per_layer=seconds,
                    micro_batches=micro_batches, n_layers=n_layers)


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
    """One line: the compiler's estimate beside the roofline."""
    estimate, costs = result["estimate"], result["costs"]
    if "error" in estimate:
        return f"compiler's estimate: none ({estimate['error']})"
    return (f"compiler's estimate (TPU cost model, loops unrolled): {estimate['step_seconds']:.3f} s/step, "
            f"{estimate['tokens_per_second']:,.0f} tokens/s, MFU {100 * estimate['mfu']:.1f}%  "
            f"(roofline >= {costs['roofline_step_seconds']:.3f} s/step)")
