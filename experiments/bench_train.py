"""Train-step throughput at SmolLM2-135M shapes: every objective relative to NLL, naive and chunked loss,
and the torch + transformers reference step, all measured side by side in one process; plus checkpointing.

    python experiments/bench_train.py                                  # NLL, DEFT; naive; + torch reference
    python experiments/bench_train.py --objectives all --impls naive,chunked --rounds 3
    python experiments/bench_train.py --torch none --batch 8 --seq 512 --dtype bfloat16 --mesh_data -1
    python experiments/bench_train.py --impls chunked --xla project,default   # with and without the XLA options

The architecture comes from the SmolLM2-135M-Instruct GGUF metadata (30 layers, d 576, vocab 49152,
tied embeddings); the weights are random (same shapes and cost as the real ones) and the batch is random
tokens with the second half of every row supervised, so nothing here depends on the data pipeline.
Every case (objective x impl, and torch NLL / DEFT) is compiled and run once first (reported as
compile+first), then timed in `--rounds` interleaved rounds of `--steps` steps, each after
`--warm_steps` untimed ones (a load change on the shared machine hits every case alike; the first step
after switching cases pays for paging its memory in again; the table shows the median round). All JAX cases step one shared
AdamW state (timing does not depend on the values), so memory stays that of one state. The torch
reference (experiments/torch_reference.py, `pip install -e .[bench]`) is the same architecture in
transformers with torch.optim.AdamW and the official DEFT code's loss formulas, run in a child process
(timed inside it) so that the two runtimes' allocators and thread pools stay apart.
Then one AdamW state (params + moments) is checkpointed with the trainer's orbax manager and restored.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import platform
import shutil
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from experiments import raw  # noqa: E402
from deft_jax.training import config as config_lib
from deft_jax.training import step as step_lib
from deft_jax.training import setup as build
from deft_jax.training import checkpointing  # noqa: E402
from deft_jax.training import metrics as metrics_lib  # noqa: E402
from deft_jax.model import decoder as model_lib  # noqa: E402
from deft_jax import objectives  # noqa: E402
from deft_jax import data as data_lib  # noqa: E402
from deft_jax import sharding as sharding_lib  # noqa: E402
from deft_jax.model import weights  # noqa: E402
from experiments import torch_reference  # noqa: E402
from experiments.bench_objectives import OBJECTIVE_PARAMS  # noqa: E402


def random_batch(*, batch: int, seq: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, size=(batch, seq + 1), dtype=np.int32)
    mask = np.zeros((batch, seq), np.float32)
    mask[:, seq // 2:] = 1.0
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": mask,
            "positions": np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy(),
            "segment_ids": np.ones((batch, seq), np.int32)}


def objective_spec(name: str) -> objectives.ObjectiveSpec:
    return objectives.parse_objective(name, **OBJECTIVE_PARAMS.get(name, {}))


def jax_case(name: str, *, impl: str, model_config, mesh, rules, arrays, state_box: list, xla: str = "project"):
    """step() -> metrics for one (objective, impl): its own jitted train step on the shared state.
    xla="project": the trainer's program (the project's XLA options); "default": the same step without."""
    optimizer = step_lib.make_optimizer(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.01)
    spec = step_lib.StepSpec(loss=step_lib.LossSpec(model_config=model_config, objective=objective_spec(name), impl=impl),
                          optimizer=optimizer)
    if xla == "project":
        compiled = build.jitted_train_step(spec, mesh, rules)
    else:
        _, shardings = build.state_layout(model_config, optimizer, mesh, rules)
        compiled = step_lib.compile_train_step(spec=spec, mesh=mesh, state_shardings=shardings, compiler_options={})
    schedule = step_lib.Schedule(lr=5e-5, total_steps=1000).as_arrays()

    def step():
        with sharding_lib.mesh_context(mesh, rules):
            state_box[0], metrics = compiled(state_box[0], arrays, schedule)
            return jax.block_until_ready(metrics)

    return step


def torch_case(objective: str, *, worker: torch_reference.TorchWorker):
    """step() for the torch reference; the time is taken inside its worker process."""
    def step():
        _, seconds = worker.step(objective)
        return seconds
    step.reports_seconds = True
    return step


def time_cases(cases: dict, *, rounds: int, steps: int, warm_steps: int = 1, log=print) -> dict[str, dict]:
    """{(objective, impl): {'first_s', 'seconds_per_step' (median round), 'rounds'}}: first call each case,
    then `rounds` interleaved rounds of `warm_steps` untimed and `steps` timed steps per case."""
    def timed(step) -> float:
        start = time.perf_counter()
        reported = step()
        return reported if getattr(step, "reports_seconds", False) else time.perf_counter() - start

    results = {}
    for label, step in cases.items():
        results[label] = {"first_s": timed(step), "rounds": []}
        log(f"  {' '.join(label)}: compile + first step {results[label]['first_s']:.1f} s")
    for round_index in range(rounds):
        for label, step in cases.items():
            for _ in range(warm_steps):  # untimed: the first step after another case pays for its memory
                step()
            results[label]["rounds"].append(sum(timed(step) for _ in range(steps)) / steps)
        log(f"  round {round_index + 1}/{rounds}: " + ", ".join(f"{' '.join(k)} {v['rounds'][-1]:.2f}s"
                                                                   for k, v in results.items()))
    for row in results.values():
        row["seconds_per_step"] = statistics.median(row["rounds"])
    return results


def bench_checkpoint(state, *, directory: pathlib.Path, mesh, rules, model_config) -> dict:
    optimizer = step_lib.make_optimizer(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.01)
    abstract, shardings = build.state_layout(model_config, optimizer, mesh, rules)
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


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=1, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median reported)")
    parser.add_argument("--warm_steps", type=int, default=1,
                        help="untimed steps before each case's timed steps in every round (measured: the first "
                             "JAX step after a torch step ran up to 3 s slower, its memory paged in anew)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--objectives", default="nll,deft", help="comma-separated, or 'all' (every objective)")
    parser.add_argument("--impls", default="naive", help="comma-separated from " + ",".join(step_lib.LOSS_IMPLS))
    parser.add_argument("--scan_unroll", type=int, default=1, help="model.scan_unroll (>= 30: fully unrolled)")
    parser.add_argument("--torch", default="nll,deft",
                        help="torch reference objectives to time beside ours ('none' to skip)")
    parser.add_argument("--xla", default="project",
                        help="comma-separated from 'project' (the trainer's compiled step) and 'default' (the same "
                             "step without the project's XLA compiler options)")
    parser.add_argument("--mesh_data", type=int, default=-1)
    parser.add_argument("--no_checkpoint", action="store_true")
    parser.add_argument("--json", default="",
                        help="also write every case's rounds, the settings and the machine here (raw output)")
    args = parser.parse_args(argv)

    config = config_lib.load_config(f"{REPO_ROOT}/configs/nll.py")
    with config.unlocked():
        config.model.name = args.model
        config.model.dtype = args.dtype
        config.model.scan_unroll = args.scan_unroll
        config.model.init = "random"
    model_config = weights.load_model_config(config.model.name, **build.model_fields(config))
    mesh = sharding_lib.make_mesh(data=args.mesh_data)
    rules = model_lib.DEFAULT_LOGICAL_RULES
    batch = random_batch(batch=args.batch, seq=args.seq, vocab=model_config.vocab_size)
    tokens = batch["inputs"].size
    names = list(objectives.OBJECTIVES) if args.objectives == "all" else args.objectives.split(",")
    impls = args.impls.split(",")
    torch_objectives = [] if args.torch in ("", "none") else args.torch.split(",")
    peak = metrics_lib.assumed_peak_flops_per_device(configured=0.0, device_kind=jax.devices()[0].device_kind)
    flops_per_token = model_lib.flops_per_token(model_config, seq_len=args.seq)
    print(f"{args.model}: {model_lib.count_params(model_lib.abstract_params(model_config)[0]) / 1e6:.1f}M params, "
          f"batch {args.batch} x {args.seq}, compute {args.dtype}, params float32, scan_unroll {args.scan_unroll}; "
          f"{jax.device_count()} {jax.default_backend()} device(s) ({platform.processor() or platform.machine()}); "
          f"MFU assumes {peak:.3g} FLOP/s per device", flush=True)

    optimizer = step_lib.make_optimizer(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.01)
    state_box = [build.init_state(config, model_config=model_config, optimizer=optimizer, mesh=mesh, rules=rules)]
    with sharding_lib.mesh_context(mesh, rules):
        arrays = sharding_lib.put_batch(batch, mesh=mesh, global_rows=args.batch, keys=data_lib.BATCH_KEYS)
    xla_choices = args.xla.split(",")
    if sorted(set(xla_choices) - {"project", "default"}):
        parser.error(f"--xla: unknown {sorted(set(xla_choices) - {'project', 'default'})}; choose from project, default")
    cases = {(name, impl if xla == "project" else f"{impl}, XLA defaults"):
             jax_case(name, impl=impl, model_config=model_config, mesh=mesh, rules=rules, arrays=arrays,
                      state_box=state_box, xla=xla)
             for xla in xla_choices for impl in impls for name in names}
    worker = None
    if torch_objectives:
        worker = torch_reference.TorchWorker(model_config=model_config, objectives=torch_objectives, batch=batch)
        cases.update({(name, "torch"): torch_case(name, worker=worker) for name in torch_objectives})
    try:
        results = time_cases(cases, rounds=args.rounds, steps=args.steps, warm_steps=args.warm_steps, log=lambda m: print(m, flush=True))
    finally:
        if worker is not None:
            worker.close()

    rows = []
    torch_nll = results.get(("nll", "torch"), {}).get("seconds_per_step")
    print(f"\n| objective, loss impl | compile + first step | s/step (median of {args.rounds}) | tokens/s | MFU | vs NLL (same impl) "
          f"| vs naive | tokens/s vs torch NLL |\n|---|---|---|---|---|---|---|---|")
    for (name, impl), row in results.items():
        seconds = row["seconds_per_step"]
        nll_key, naive_key = ("nll", impl), (name, impl.replace("chunked", "naive"))
        row.update({"objective": name, "impl": impl, "tokens_per_second": tokens / seconds,
                    "mfu": metrics_lib.model_flops_utilization(flops_per_token=flops_per_token,
                                                               tokens_per_second=tokens / seconds,
                                                               num_devices=mesh.devices.size,
                                                               peak_flops_per_device=peak),
                    "vs_nll": seconds / results[nll_key]["seconds_per_step"] if nll_key in results else None,
                    "vs_naive": (seconds / results[naive_key]["seconds_per_step"]
                                 if impl.startswith("chunked") and naive_key in results else None),
                    "speed_vs_torch_nll": torch_nll / seconds if torch_nll else None})
        rows.append(row)
        fmt = lambda v, spec: "–" if v is None else format(v, spec)  # noqa: E731
        print(f"| {name} {impl} | {row['first_s']:.1f} s | {seconds:.2f} | {row['tokens_per_second']:.0f} | "
              f"{row['mfu']:.0%} | {fmt(row['vs_nll'], '.3f')} | {fmt(row['vs_naive'], '.3f')} | "
              f"{fmt(row['speed_vs_torch_nll'], '.2f')}× |", flush=True)
    result = {"model": args.model, "batch": args.batch, "seq": args.seq, "dtype": args.dtype,
              "scan_unroll": args.scan_unroll, "devices": jax.device_count(), "backend": jax.default_backend(),
              "peak_flops_per_device": peak, "flops_per_token": flops_per_token, "cases": rows}
    if not args.no_checkpoint:
        directory = pathlib.Path(tempfile.mkdtemp(prefix="bench_ckpt_"))
        try:
            result["checkpoint"] = bench_checkpoint(state_box[0], directory=directory / "checkpoints", mesh=mesh,
                                                    rules=rules, model_config=model_config)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        c = result["checkpoint"]
        print(f"checkpoint (params + AdamW moments, {c['bytes'] / 2**30:.2f} GiB): save blocks "
              f"{c['save_blocking_s']:.2f} s, written in {c['save_total_s']:.2f} s; restore "
              f"{c['restore_s']:.2f} s; bit-exact {c['bit_exact']}", flush=True)
    if args.json:
        raw.write(args.json, raw.record(script="bench_train", settings=vars(args), figures=result))
    return result


if __name__ == "__main__":
    main()
