"""Benchmark: lm-head + objective + gradient, naive (full logits) vs chunked (deft_jax.fused), per objective.

Prints one table per (tokens, d_model, vocab) shape. Everything is measured side by side in one run
(these machines are shared and noisy: read the ratios, not the absolute seconds).

  time      median wall seconds of jit(value_and_grad) w.r.t. hidden and lm-head weight, after compile;
            cases are timed in interleaved rounds so that load changes hit every case alike
  xla_peak  XLA's compiled memory analysis: arguments + outputs + temporaries (bytes the program needs)
  rss_peak  peak resident set size of a fresh subprocess that runs only that one case (--isolate):
            interpreter + JAX runtime + inputs + the program
  vs_nll    time / the NLL time of the same implementation (DEFT target: <= 1.02)
  vs_naive  chunked time / naive time of the same objective

Usage:
  python experiments/bench_objectives.py                        # (8192, 576, 49152), 5 objectives
  python experiments/bench_objectives.py --vocab 152064 --impls chunked --objectives nll,deft
  python experiments/bench_objectives.py --isolate              # adds the per-case process RSS
  python experiments/bench_objectives.py --xla project,default  # with and without the trainer's XLA options
  python experiments/bench_objectives.py --json PATH            # also every round, settings, machine (raw)
Naive cases whose XLA peak exceeds --max_naive_gib are compiled (for their memory) but not run.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from experiments import raw  # noqa: E402
from deft_jax.objectives import fused
from deft_jax import objectives
from deft_jax.training import xla_options

DEFAULT_OBJECTIVES = "nll,prob,deft,cayley,eaft"
OBJECTIVE_PARAMS = {"deformed_log": {"alpha": 0.5}, "tsallis": {"q": 0.5}, "only_top_p": {"tau": 0.1},
                    "only_bottom_p": {"tau": 0.1}, "only_top_logp": {"tau": 0.1},
                    "only_bottom_logp": {"tau": 0.1}}


def _loss_fn(*, impl: str, name: str, chunk_size: int, with_metrics: bool = False, xla: str = "project"):
    """jit(value_and_grad) w.r.t. hidden and weight; `with_metrics` also returns the token means of p,
    entropy and Σπ² that the trainer logs for every objective (so every objective computes all three
    statistics, as in a train step; without them XLA drops the ones the objective does not read).
    `xla`: "project" compiles with the trainer's `xla_options.compiler_options()`, "default" without."""
    params = OBJECTIVE_PARAMS.get(name, {})

    def loss(hidden, weight, targets, mask):
        if impl == "naive":
            out = fused.compute_naive(name, hidden, weight, targets, mask, **params)
        else:
            out = fused.compute_chunked(name, hidden, weight, targets, mask, chunk_size=chunk_size, **params)
        total, denom = objectives.reduce_output(out)
        metrics = {key: pair[0] / pair[1] for key, pair in objectives.token_metrics(out, mask).items()
                   if key in ("p", "entropy", "collision")} if with_metrics else {}
        return objectives.safe_divide(total, denom), metrics

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True),
                   compiler_options=xla_options.compiler_options() if xla == "project" else {})


def _inputs(*, tokens: int, d_model: int, vocab: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    hidden = jnp.asarray(rng.normal(size=(tokens, d_model)), jnp.float32)
    weight = jnp.asarray(rng.normal(size=(d_model, vocab)) / np.sqrt(d_model), jnp.float32)
    targets = jnp.asarray(rng.integers(0, vocab, size=(tokens,)), jnp.int32)
    mask = jnp.ones((tokens,), jnp.float32)
    return hidden, weight, targets, mask


def compile_case(*, impl: str, name: str, tokens: int, d_model: int, vocab: int, chunk_size: int,
                 with_metrics: bool = False, xla: str = "project"):
    """(compiled executable, XLA peak bytes = arguments + outputs + temporaries) for one case."""
    args = _inputs(tokens=tokens, d_model=d_model, vocab=vocab)
    compiled = _loss_fn(impl=impl, name=name, chunk_size=chunk_size,
                        with_metrics=with_metrics, xla=xla).lower(*args).compile()
    mem = compiled.memory_analysis()
    return compiled, mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes


def run_case(*, impl: str, name: str, tokens: int, d_model: int, vocab: int, chunk_size: int,
             repeats: int, max_naive_gib: float, with_metrics: bool = False, xla: str = "project") -> dict:
    """One case alone in this process (used by --isolate for its peak RSS)."""
    compiled, xla_peak = compile_case(impl=impl, name=name, tokens=tokens, d_model=d_model, vocab=vocab,
                                      chunk_size=chunk_size, with_metrics=with_metrics, xla=xla)
    result = {"impl": _impl_label(impl, xla), "objective": name, "xla_peak": xla_peak, "time": None}
    if impl == "naive" and xla_peak > max_naive_gib * 2**30:
        return result
    args = _inputs(tokens=tokens, d_model=d_model, vocab=vocab)
    for _ in range(max(repeats, 1)):
        jax.block_until_ready(compiled(*args))
    result["rss_peak"] = _peak_rss_bytes()
    return result


def _peak_rss_bytes() -> int:
    """This process's peak resident set (VmHWM). Not getrusage's ru_maxrss: on Linux that also counts
    the peak of the parent the process was forked from."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_interleaved(cases: list[dict], *, tokens: int, d_model: int, vocab: int, repeats: int,
                    max_naive_gib: float) -> list[dict]:
    """Time every case in rounds (case 1, case 2, ..., then again), so that load changes on a shared
    machine hit all cases alike; report the median per case."""
    args = _inputs(tokens=tokens, d_model=d_model, vocab=vocab)
    rows, runnable = [], []
    for case in cases:
        compiled, xla_peak = compile_case(tokens=tokens, d_model=d_model, vocab=vocab, **case)
        row = {"impl": _impl_label(case["impl"], case.get("xla", "project")), "objective": case["name"],
               "xla_peak": xla_peak, "time": None}
        rows.append(row)
        if case["impl"] == "naive" and xla_peak > max_naive_gib * 2**30:
            continue
        jax.block_until_ready(compiled(*args))  # warm-up
        runnable.append((row, compiled, []))
    for round_index in range(repeats):
        for row, compiled, times in runnable:
            start = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            times.append(time.perf_counter() - start)
        print(f"  round {round_index + 1}/{repeats}: " + ", ".join(
            f"{row['objective']}/{row['impl']} {times[-1]:.2f}s" for row, _, times in runnable),
            file=sys.stderr, flush=True)
    for row, _, times in runnable:
        row["time"] = statistics.median(times)
        row["times"] = list(times)
    return rows


def _impl_label(impl: str, xla: str) -> str:
    return impl if xla == "project" else f"{impl}, XLA defaults"


def _isolated(case: dict) -> dict:
    """Run one case in a fresh interpreter so its peak RSS is its own."""
    out = subprocess.run([sys.executable, __file__, "--_case", json.dumps(case)], capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"case {case} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fmt_bytes(n):
    return "—" if n is None else f"{n / 2**30:.2f} GiB"


def _fmt_ratio(a, b):
    return "—" if a is None or b is None else f"{a / b:.3f}"


def print_table(rows: list[dict], *, tokens: int, d_model: int, vocab: int, chunk_size: int,
                with_metrics: bool = False) -> None:
    print(f"\n### lm-head + objective + grad: tokens={tokens}, d_model={d_model}, vocab={vocab}, "
          f"chunk={chunk_size}, float32{', with metrics' if with_metrics else ''}\n")
    print(table(rows))


def table(rows: list[dict]) -> str:
    """One line per case: median time, its ratio to NLL's (same impl) and to naive's (same objective), memory."""
    lines = ["| objective | impl | time (s) | vs NLL | vs naive | XLA peak | process RSS peak |",
             "|---|---|---|---|---|---|---|"]
    by_key = {(r["objective"], r["impl"]): r for r in rows}
    for r in rows:
        nll = by_key.get(("nll", r["impl"]), {}).get("time")
        naive = by_key.get((r["objective"], r["impl"].replace("chunked", "naive")), {}).get("time")
        vs_naive = _fmt_ratio(r["time"], naive) if r["impl"].startswith("chunked") else "—"
        time_s = "not run (too large)" if r["time"] is None else f"{r['time']:.3f}"
        lines.append(f"| {r['objective']} | {r['impl']} | {time_s} | {_fmt_ratio(r['time'], nll)} | {vs_naive} | "
                     f"{_fmt_bytes(r['xla_peak'])} | {_fmt_bytes(r.get('rss_peak'))} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--d_model", type=int, default=576)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--chunk_size", type=int, default=1024)
    parser.add_argument("--objectives", default=DEFAULT_OBJECTIVES)
    parser.add_argument("--impls", default="naive,chunked")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max_naive_gib", type=float, default=12.0)
    parser.add_argument("--isolate", action="store_true", help="one subprocess per case (RSS per case)")
    parser.add_argument("--with_metrics", action="store_true",
                        help="also return the token means of p, entropy and Σπ² (what the trainer logs)")
    parser.add_argument("--xla", default="project",
                        help="comma-separated from 'project' (the trainer's xla_options.compiler_options()) and "
                             "'default' (no compiler options), to measure what the options change")
    parser.add_argument("--json", default="", help="also write every case's rounds, the settings and the machine here")
    parser.add_argument("--_case", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._case:
        print(json.dumps(run_case(**json.loads(args._case))))
        return
    names = [n.strip() for n in args.objectives.split(",") if n.strip()]
    for name in names:
        objectives.parse_objective(name, **OBJECTIVE_PARAMS.get(name, {}))  # fail early on a typo
    impls = [i.strip() for i in args.impls.split(",")]
    unknown = sorted(set(impls) - {"naive", "chunked"})
    if unknown:
        parser.error(f"--impls: unknown {unknown}; choose from naive, chunked")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"jax {jax.__version__} on {jax.devices()[0].device_kind}")
    xla_choices = [x.strip() for x in args.xla.split(",")]
    if sorted(set(xla_choices) - {"project", "default"}):
        parser.error(f"--xla: unknown {sorted(set(xla_choices) - {'project', 'default'})}; choose from project, default")
    cases = [dict(impl=impl, name=name, chunk_size=args.chunk_size, with_metrics=args.with_metrics, xla=xla)
             for xla in xla_choices for name in names for impl in impls]
    shape = dict(tokens=args.tokens, d_model=args.d_model, vocab=args.vocab)
    rows = run_interleaved(cases, repeats=args.repeats, max_naive_gib=args.max_naive_gib, **shape)
    if args.isolate:  # peak RSS of a fresh process per case (timing stays the interleaved one)
        for row, case in zip(rows, cases):
            alone = _isolated(dict(case, repeats=1, max_naive_gib=args.max_naive_gib, **shape))
            row["rss_peak"] = alone.get("rss_peak")
            print(f"  {case['name']}/{case['impl']}: process RSS peak {_fmt_bytes(row['rss_peak'])}",
                  file=sys.stderr, flush=True)
    print_table(rows, tokens=args.tokens, d_model=args.d_model, vocab=args.vocab, chunk_size=args.chunk_size,
                with_metrics=args.with_metrics)
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "_case"}
        raw.write(args.json, raw.record(script="bench_objectives", settings=settings, figures={"rows": rows}))


if __name__ == "__main__":
    main()
