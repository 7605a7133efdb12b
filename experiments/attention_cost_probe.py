"""How the TPU compiler's cost model prices one attention layer (forward + backward), xla vs splash.

    python experiments/attention_cost_probe.py --topology v5p-32 --seq_len 3072 --heads 32 --kv_heads 8

One row per chip (batch sharded over all chips), bf16. Prints, per kernel: the compiler's
`optimal_seconds`, its FLOP count, temporaries per chip, and the analytic time of the causal attention's
matmuls at peak: forward 2 T^2 H hd (half of 4 T^2 H hd: causal), backward 2.5x the forward.
"""
from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from deft_jax.aot import programs  # noqa: E402
from deft_jax.model import attention  # noqa: E402


def probe(*, kernel: str, topology: str, seq_len: int, heads: int, kv_heads: int, head_dim: int) -> dict:
    parsed = programs.parse_topology(topology)
    devices = programs.topology_devices(parsed)
    mesh = jax.sharding.Mesh(np.array(devices).reshape(-1), ("fsdp",))
    rows = parsed.chips
    spec = attention.AttentionSpec(implementation=kernel)
    q_shape, kv_shape = (rows, seq_len, heads, head_dim), (rows, seq_len, kv_heads, head_dim)
    batch = NamedSharding(mesh, PartitionSpec("fsdp"))
    args = [jax.ShapeDtypeStruct(s, jnp.bfloat16, sharding=batch) for s in (q_shape, kv_shape, kv_shape)]
    ids = jax.ShapeDtypeStruct((rows, seq_len), jnp.int32, sharding=batch)

    def loss(q, k, v, segment_ids):
        out = attention.self_attention(q=q, k=k, v=v, segment_ids=segment_ids, sliding_window=None, spec=spec)
        return jnp.sum(out.astype(jnp.float32))

    with jax.set_mesh(mesh), nn.logical_axis_rules([("batch", "fsdp")]):  # splash's shard_map: rows
        compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*args, ids).compile()
    costs = compiled.cost_analysis()
    costs = costs[0] if isinstance(costs, (list, tuple)) else costs
    forward = 2 * seq_len**2 * heads * head_dim  # causal half of QK^T and PV, per row
    analytic = 3.5 * forward / parsed.chip.peak_flops
    memory = compiled.memory_analysis()
    return {"kernel": kernel, "optimal_seconds": float(costs.get("optimal_seconds", float("nan"))),
            "compiler_flops_per_chip": float(costs.get("flops", float("nan"))),
            "analytic_causal_seconds": analytic, "analytic_causal_flops": 3.5 * forward,
            "temporaries_gib": memory.temp_size_in_bytes / 1024**3,
            "custom_calls": compiled.as_text().count("custom_call_target=\"tpu_custom_call\"")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topology", default="v5p-32")
    parser.add_argument("--seq_len", type=int, default=3072)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv_heads", type=int, default=8)
    parser.add_argument("--head_dim", type=int, default=128)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results = [probe(kernel=k, topology=args.topology, seq_len=args.seq_len, heads=args.heads,
                     kv_heads=args.kv_heads, head_dim=args.head_dim) for k in ("xla", "splash")]
    for r in results:
        print(json.dumps(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
