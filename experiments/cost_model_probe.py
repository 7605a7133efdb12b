"""What peak the TPU compiler's cost model assumes: one matmul of a layer's per-chip shape, compiled for a slice.

    python experiments/cost_model_probe.py --topology v5p-32 --json OUT.json     # matmuls only (seconds)
    python experiments/cost_model_probe.py --topology v5p-32 --layer CONFIG      # + a 1-layer grads program

Splash cases: one row per chip of 32 heads (8 kv heads) x 3072 x 128, forward and forward + backward.

Matmul cases (x [chips * tokens, d_model] sharded over rows on every chip, bf16, w [d_model, d_ff]):
  forward      x @ w, w replicated;            hand FLOPs per chip 2 t d f
  forward_fsdp x @ w, w sharded over its rows (all-gathered in the program)
  grads        sum(x @ w) and its d/dx, d/dw, w fsdp-sharded;  hand 6 t d f
each compiled as the trainer's are (windowed einsums on) and, as "<case>+plain", with the compile tool's
estimate options (deft_jax.aot.estimate.COMPILER_OPTIONS: windowed einsums off). For each: the
compiler's 'flops' (per chip) and 'optimal_seconds', the while loops left in the compiled HLO, the hand
count, its time at the chip's published peak, and implied peak = compiler flops / optimal_seconds.

--layer compiles the compile tool's loop-free 1-layer forward + backward (deft_jax.aot.estimate) of a config
and reports its compiler FLOPs beside the model's hand count for one layer plus head per chip.
"""
from __future__ import annotations

import argparse
import json
import os
import re

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from deft_jax.aot import estimate, programs  # noqa: E402


def costs_of(compiled) -> dict:
    costs = compiled.cost_analysis()
    return costs[0] if isinstance(costs, (list, tuple)) else costs


def matmul_case(*, case: str, topology: str, tokens: int, d_model: int, d_ff: int, plain: bool) -> dict:
    parsed = programs.parse_topology(topology)
    mesh = jax.sharding.Mesh(np.array(programs.topology_devices(parsed)), ("fsdp",))
    rows = NamedSharding(mesh, PartitionSpec("fsdp"))
    w_sharding = NamedSharding(mesh, PartitionSpec() if case == "forward" else PartitionSpec("fsdp"))
    x = jax.ShapeDtypeStruct((parsed.chips * tokens, d_model), jnp.bfloat16, sharding=rows)
    w = jax.ShapeDtypeStruct((d_model, d_ff), jnp.bfloat16, sharding=w_sharding)

    def forward(x, w):
        return jnp.dot(x, w, preferred_element_type=jnp.float32).astype(jnp.bfloat16)

    def grads(x, w):  # the loss is returned, so the forward matmul stays
        return jax.value_and_grad(lambda x, w: jnp.sum(forward(x, w).astype(jnp.float32)), argnums=(0, 1))(x, w)

    fn, passes = (grads, 3) if case == "grads" else (forward, 1)
    out = (NamedSharding(mesh, PartitionSpec()), (rows, w_sharding)) if case == "grads" else rows
    compiled = jax.jit(fn, out_shardings=out).lower(x, w).compile(
        compiler_options=estimate.COMPILER_OPTIONS if plain else {})
    costs = costs_of(compiled)
    hand = passes * 2.0 * tokens * d_model * d_ff
    seconds = float(costs["optimal_seconds"])
    return {"case": case + ("+plain" if plain else ""), "topology": topology, "chip": parsed.chip.kind,
            "chips": parsed.chips, "while_loops": len(re.findall(r"\swhile\(", compiled.as_text())),
            "shape": [tokens, d_model, d_ff], "compiler_flops": float(costs["flops"]), "hand_flops": hand,
            "optimal_seconds": seconds, "hand_seconds_at_peak": hand / parsed.chip.peak_flops,
            "published_peak": parsed.chip.peak_flops, "implied_peak": float(costs["flops"]) / seconds}


def splash_case(*, topology: str, seq_len: int, heads: int, kv_heads: int, head_dim: int, grads: bool) -> dict:
    """One row per chip of splash attention (forward, or forward + backward): the compiler's price of its
    kernels against their matmul FLOPs at peak (estimate.splash_kernel_flops)."""
    import flax.linen as nn

    from deft_jax.model import attention

    parsed = programs.parse_topology(topology)
    mesh = jax.sharding.Mesh(np.array(programs.topology_devices(parsed)), ("fsdp",))
    rows = NamedSharding(mesh, PartitionSpec("fsdp"))
    spec = attention.AttentionSpec(implementation="splash")
    q = jax.ShapeDtypeStruct((parsed.chips, seq_len, heads, head_dim), jnp.bfloat16, sharding=rows)
    kv = jax.ShapeDtypeStruct((parsed.chips, seq_len, kv_heads, head_dim), jnp.bfloat16, sharding=rows)
    ids = jax.ShapeDtypeStruct((parsed.chips, seq_len), jnp.int32, sharding=rows)

    def loss(q, k, v, segment_ids):
        out = attention.self_attention(q=q, k=k, v=v, segment_ids=segment_ids, sliding_window=None, spec=spec)
        return jnp.sum(out.astype(jnp.float32))

    fn = jax.grad(loss, argnums=(0, 1, 2)) if grads else loss
    with jax.set_mesh(mesh), nn.logical_axis_rules([("batch", "fsdp")]):
        compiled = jax.jit(fn).lower(q, kv, kv, ids).compile()
    costs = costs_of(compiled)
    calls = estimate.splash_calls(compiled.as_text())
    per_call = estimate.splash_kernel_flops(tiling=attention.splash_tiling(seq_len=seq_len, spec=spec),
                                            head_dim=head_dim, heads_per_chip=heads, rows_per_chip=1)
    kernel_flops = sum(n * per_call[name] for name, n in calls.items())
    return {"case": "splash_grads" if grads else "splash_forward", "topology": topology, "seq_len": seq_len,
            "heads": heads, "kv_heads": kv_heads, "calls": calls, "optimal_seconds": float(costs["optimal_seconds"]),
            "compiler_flops": float(costs["flops"]), "bytes_accessed": float(costs["bytes accessed"]),
            "bytes_seconds": float(costs["bytes accessed"]) / parsed.chip.hbm_bandwidth,
            "kernel_flops": kernel_flops, "kernel_seconds_at_peak": kernel_flops / parsed.chip.peak_flops}


def layer_case(*, spec: str, topology: str) -> dict:
    """The compiler FLOPs of the estimate's 1- and 2-layer grads programs against the hand count."""
    from deft_jax.model import decoder
    from deft_jax.training import config as config_lib
    from deft_jax.training import setup as build

    spec, *overrides = spec.split(";")  # 'configs/x.py:regime=math;model.attention=splash;...'
    config = config_lib.load_config(spec)
    if overrides:
        config = config_lib.apply_overrides(config, dict(o.split("=", 1) for o in overrides))
    parsed = programs.parse_topology(topology)
    devices = programs.topology_devices(parsed)
    out = {"spec": spec, "topology": topology, "layers": []}
    for layers in estimate.LAYER_COUNTS:
        free = estimate.loop_free_config(config, n_layers=layers)
        target = programs.build_programs(free, devices=devices)
        compiled = estimate.compile_grads(target)
        costs = costs_of(compiled)
        model = build.architecture(free)
        tokens_per_chip = free.batch_size * target.seq_len / parsed.chips
        hand = decoder.flops_per_token(model, seq_len=target.seq_len) * tokens_per_chip
        out["layers"].append({"n_layers": layers, "compiler_flops": float(costs["flops"]), "hand_flops": hand,
                              "optimal_seconds": float(costs["optimal_seconds"]),
                              "hand_seconds_at_peak": hand / parsed.chip.peak_flops,
                              "bytes_accessed": float(costs.get("bytes accessed", float("nan")))})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topology", nargs="+", default=["v5p-32", "v5e-16"])
    parser.add_argument("--tokens", type=int, default=6144, help="tokens per chip (2 rows x 3072)")
    parser.add_argument("--d_model", type=int, default=4096)
    parser.add_argument("--d_ff", type=int, default=14336)
    parser.add_argument("--layer", default=None, help="also a config's 1- and 2-layer grads programs")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results = {"matmuls": [], "splash": [], "layer": []}
    for topology in args.topology:
        for case in ("forward", "forward_fsdp", "grads"):
            for plain in (False, True):
                r = matmul_case(case=case, topology=topology, tokens=args.tokens, d_model=args.d_model,
                                d_ff=args.d_ff, plain=plain)
                results["matmuls"].append(r)
                print(json.dumps(r), flush=True)
        for grads in (False, True):
            r = splash_case(topology=topology, seq_len=3072, heads=32, kv_heads=8, head_dim=128, grads=grads)
            results["splash"].append(r)
            print(json.dumps(r), flush=True)
        if args.layer:
            r = layer_case(spec=args.layer, topology=topology)
            results["layer"].append(r)
            print(json.dumps(r), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), **results}, f, indent=2)


if __name__ == "__main__":
    main()
