"""Train-step throughput at SmolLM2-135M shapes, NLL and DEFT side by side, plus checkpoint save/restore.

    python experiments/bench_train.py                     # batch 4 x 256, float32, 3 timed steps each
    python experiments/bench_train.py --batch 8 --seq 512 --steps 5 --dtype bfloat16 --mesh_data -1

The architecture comes from the SmolLM2-135M-Instruct GGUF metadata (30 layers, d 576, vocab 49152,
tied embeddings); the weights are random (same shapes and cost as the real ones) and the batch is random
tokens with the second half of every row supervised, so nothing here depends on the data pipeline.
Each objective gets its own jitted train step (compile + first step reported separately) on a fresh
state; the timed steps are the steady state. Then one AdamW state (params + moments) is checkpointed
with the trainer's orbax manager and restored onto the same shardings.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import platform
import shutil
import tempfile
import time

import jax
import numpy as np

from deft_jax import checkpointing, metrics as metrics_lib, model as model_lib, objectives, sharding as sharding_lib
from deft_jax import train

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def random_batch(*, batch: int, seq: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, size=(batch, seq + 1), dtype=np.int32)
    mask = np.zeros((batch, seq), np.float32)
    mask[:, seq // 2:] = 1.0
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": mask,
            "positions": np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy(),
            "segment_ids": np.ones((batch, seq), np.int32)}


def bench_objective(name, *, model_config, mesh, rules, batch, steps, impl) -> dict:
    optimizer = train.make_optimizer(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.01)
    spec = train.StepSpec(
        loss=train.LossSpec(model_config=model_config, objective=objectives.parse_objective(name), impl=impl),
        optimizer=optimizer)
    schedule = train.Schedule(lr=5e-5, total_steps=1000)
    flops_per_token = model_lib.flops_per_token(model_config, seq_len=batch["inputs"].shape[1])
    with train.mesh_context(mesh, rules):
        state = train._jitted_random_init(model_config, optimizer, mesh, rules)(np.uint32(0))
        jax.block_until_ready(state)
        compiled = train.jitted_train_step(spec, mesh, rules)
        step_fn = train.bind_schedule(compiled, schedule)
        arrays = train._put_batch(batch, mesh=mesh, global_rows=batch["inputs"].shape[0])
        start = time.perf_counter()
        state, metrics = step_fn(state, arrays)
        jax.block_until_ready(metrics)
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = step_fn(state, arrays)
        jax.block_until_ready(metrics)
        seconds = (time.perf_counter() - start) / steps
    host = metrics_lib.to_host_scalars(metrics)
    tokens = batch["inputs"].size
    return {"objective": name, "compile_and_first_step_s": first, "seconds_per_step": seconds,
            "steps_per_second": 1 / seconds, "tokens_per_second": tokens / seconds,
            "flops_per_token": flops_per_token, "loss": host["train/loss"], "nll": host["train/nll"],
            "compilations": compiled._cache_size(), "state": state}


def bench_checkpoint(state, *, directory: pathlib.Path, mesh, rules, model_config) -> dict:
    optimizer = train.make_optimizer(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.01)
    abstract, shardings = train.state_layout(model_config, optimizer, mesh, rules)
    target = sharding_lib.with_shardings(abstract, shardings)
    manager = checkpointing.make_manager(directory=directory, max_to_keep=2)
    start = time.perf_counter()
    blocked = checkpointing.save(manager, step=1, state=state, data_state={"cursor": 0})
    manager.wait_until_finished()
    total = time.perf_counter() - start
    manager.close()
    size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    manager = checkpointing.make_manager(directory=directory, read_only=True)
    start = time.perf_counter()
    restored, _, _ = checkpointing.restore(manager, target=target)
    jax.block_until_ready(restored)
    restore = time.perf_counter() - start
    manager.close()
    same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(jax.device_get(restored.params)),
                                                    jax.tree.leaves(jax.device_get(state.params))))
    return {"save_blocking_s": blocked, "save_total_s": total, "restore_s": restore, "bytes": size,
            "bit_exact": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--objectives", default="nll,deft")
    parser.add_argument("--impl", default="naive", choices=train.LOSS_IMPLS)
    parser.add_argument("--mesh_data", type=int, default=-1)
    parser.add_argument("--no_checkpoint", action="store_true")
    parser.add_argument("--json", default="", help="also write the results here")
    args = parser.parse_args()

    config = train.load_config(f"{REPO_ROOT}/configs/nll.py")
    with config.unlocked():
        config.model.name = args.model
        config.model.dtype = args.dtype
    model_config = train.pretrained_architecture(config)
    mesh = sharding_lib.make_mesh(data=args.mesh_data)
    rules = model_lib.DEFAULT_LOGICAL_RULES
    batch = random_batch(batch=args.batch, seq=args.seq, vocab=model_config.vocab_size)
    peak = metrics_lib.assumed_peak_flops_per_device(configured=0.0, device_kind=jax.devices()[0].device_kind)
    print(f"{args.model}: {model_lib.count_params(model_lib.abstract_params(model_config)[0]) / 1e6:.1f}M params, "
          f"batch {args.batch} x {args.seq}, compute {args.dtype}, params float32, loss impl {args.impl}; "
          f"{jax.device_count()} {jax.default_backend()} device(s) ({platform.processor() or platform.machine()}); "
          f"MFU assumes {peak:.3g} FLOP/s per device", flush=True)
    rows, state = [], None
    for name in args.objectives.split(","):
        row = bench_objective(name, model_config=model_config, mesh=mesh, rules=rules, batch=batch,
                              steps=args.steps, impl=args.impl)
        state = row.pop("state")
        row["mfu"] = metrics_lib.model_flops_utilization(
            flops_per_token=row["flops_per_token"], tokens_per_second=row["tokens_per_second"],
            num_devices=mesh.devices.size, peak_flops_per_device=peak)
        rows.append(row)
        print(f"  {name:>6}: compile+first step {row['compile_and_first_step_s']:6.1f} s | "
              f"{row['seconds_per_step']:6.2f} s/step | {row['steps_per_second']:.3f} steps/s | "
              f"{row['tokens_per_second']:7.1f} tokens/s | MFU {row['mfu']:.1%} | loss {row['loss']:.4f} "
              f"(nll {row['nll']:.4f})", flush=True)
    result = {"model": args.model, "batch": args.batch, "seq": args.seq, "dtype": args.dtype,
              "devices": jax.device_count(), "backend": jax.default_backend(), "peak_flops_per_device": peak,
              "objectives": rows}
    if not args.no_checkpoint:
        directory = pathlib.Path(tempfile.mkdtemp(prefix="bench_ckpt_"))
        try:
            result["checkpoint"] = bench_checkpoint(state, directory=directory / "checkpoints", mesh=mesh,
                                                    rules=rules, model_config=model_config)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        c = result["checkpoint"]
        print(f"  checkpoint (params + AdamW moments, {c['bytes'] / 2**30:.2f} GiB): save blocks "
              f"{c['save_blocking_s']:.2f} s, written in {c['save_total_s']:.2f} s; restore "
              f"{c['restore_s']:.2f} s; bit-exact {c['bit_exact']}", flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
