"""The paper presets compiled for TPU slices (deft_jax.compile, one process per row), as a markdown table.

    python experiments/compile_table.py                  # compile the missing rows in order, then print
    python experiments/compile_table.py --table          # print the table from the JSON alone
    python experiments/compile_table.py --only llama8b_math_v5p-32_splash_full   # one row

Each row is one `python -m deft_jax.compile --programs=train --json` process (with the compiler's step
estimate: 1- and 2-layer loop-free compiles, deft_jax.aot.estimate). Its report lands in
<out>/<label>.json (default experiments/results/compile_table/), with the row's attention and remat
policy, the wall and CPU seconds of the process and the load average before and after. A row whose JSON
exists is not compiled again; several workers may share one --out (a row being compiled is claimed by
<label>.running). Rows are listed cheapest-most-informative first.

Table columns: GiB per chip (total, temporaries), fits, the roofline and the compiler's estimate of the
step (s/step, MFU = model FLOPs / (chips x peak x estimate)), and the compile's wall / CPU seconds.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import time

PAPER = "configs/paper"
DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "results" / "compile_table"


@dataclasses.dataclass(frozen=True)
class Row:
    """One compile: a paper config on a topology with an attention kernel and a remat policy."""

    label: str
    spec: str  # config file and its argument
    topology: str
    attention: str  # xla | splash
    remat_policy: str  # deft_jax.model.remat.POLICIES
    extra: tuple[str, ...] = ()  # further --config.* flags (mesh, micro-batch size)

    def flags(self) -> list[str]:
        remat = ["--config.model.remat=False"] if self.remat_policy == "none" else []
        return [f"--config.model.attention={self.attention}", f"--config.model.remat_policy={self.remat_policy}",
                *remat, *self.extra]


def row(stem: str, config: str, regime: str, topology: str, attention: str, remat_policy: str,
        *extra: str, tag: str = "") -> Row:
    label = f"{stem}_{regime}_{topology}_{attention}_{remat_policy}{tag}"
    return Row(label=label, spec=f"{PAPER}/{config}.py:regime={regime}", topology=topology, attention=attention,
               remat_policy=remat_policy, extra=tuple(extra))


LLAMA8B, QWEN_MATH_7B = ("llama8b", "llama_3_1_8b"), ("qwen_math_7b", "qwen2_5_math_7b")
V5E16 = ("--config.mesh.fsdp=16",)

ROWS = [
    # 7-8B math on v5p-32: the attention kernel at the paper's remat (full), then the remat policies.
    row(*LLAMA8B, "math", "v5p-32", "splash", "full"),
    row(*LLAMA8B, "math", "v5p-32", "xla", "full"),
    row(*QWEN_MATH_7B, "math", "v5p-32", "splash", "full"),
    row(*QWEN_MATH_7B, "math", "v5p-32", "xla", "full"),
    row(*LLAMA8B, "math", "v5p-32", "splash", "save_dot_except_mlp"),
    row(*LLAMA8B, "math", "v5p-32", "splash", "minimal"),
    row(*LLAMA8B, "math", "v5p-32", "splash", "none"),
    row(*QWEN_MATH_7B, "math", "v5p-32", "splash", "save_dot_except_mlp"),
    # The smallest slice where the sharded 7-8B state fits: v5e-16 (16 GiB HBM per chip).
    row(*LLAMA8B, "math", "v5e-16", "splash", "full", *V5E16),
    row(*QWEN_MATH_7B, "math", "v5e-16", "splash", "full", *V5E16),
    row(*LLAMA8B, "math", "v5e-16", "splash", "full", *V5E16, "--config.micro_batch_size=16", tag="_mb16"),
    row(*LLAMA8B, "math", "v5e-16", "xla", "full", *V5E16),
    # FigFont 8B, then the smaller models.
    row(*LLAMA8B, "figfont", "v5p-32", "splash", "full"),
    row(*LLAMA8B, "figfont", "v5p-32", "xla", "full"),
    row(*LLAMA8B, "figfont", "v5p-32", "splash", "save_dot_except_mlp"),
    row("qwen_math_1_5b", "qwen2_5_math_1_5b", "math", "v5p-32", "splash", "full"),
    row("qwen_math_1_5b", "qwen2_5_math_1_5b", "math", "v5p-32", "xla", "full"),
    row("llama3b", "llama_3_2_3b", "figfont", "v5p-32", "splash", "full"),
    row("llama3b", "llama_3_2_3b", "figfont", "v5p-32", "xla", "full"),
]


def compile_row(r: Row, *, out: pathlib.Path) -> bool:
    """Compile one row into <out>/<label>.json unless it exists or is claimed; True when it compiled."""
    path, claim = out / f"{r.label}.json", out / f"{r.label}.running"
    if path.exists():
        return False
    try:
        claim.touch(exist_ok=False)
    except FileExistsError:
        return False
    command = [sys.executable, "-m", "deft_jax.compile", f"--config={r.spec}", f"--topology={r.topology}",
               "--programs=train", "--estimate", f"--json={path}", *r.flags()]
    load_before, before = os.getloadavg(), resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    measured = {"label": r.label, "spec": r.spec, "flags": r.flags(), "row_attention": r.attention,
                "row_remat_policy": r.remat_policy, "wall_seconds": round(wall, 1),
                "cpu_seconds": round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 1),
                "max_rss_gib": round(after.ru_maxrss / 1024**2, 2), "load_average_before": load_before,
                "load_average_after": os.getloadavg(), "exit_code": done.returncode}
    if done.returncode not in (0, 1) or not path.exists():  # 1 = compiled, does not fit (JSON written)
        report = {"error": done.stderr.strip().splitlines()[-3:] or ["?"]}
    else:
        report = json.loads(path.read_text())
    path.write_text(json.dumps({**report, **measured}, indent=2, sort_keys=True) + "\n")
    claim.unlink()
    print(f"{r.label}: {wall:.0f}s wall, {measured['cpu_seconds']:.0f}s CPU (exit {done.returncode})", flush=True)
    return True


HEADER = ("| row | model | regime | topology | mesh | micro-batches | attention | remat | fits "
          "| GiB/chip total (temps) | roofline s/step | estimate s/step | estimated MFU | compile wall / CPU s |")


def table_line(r: dict) -> str:
    """One table line of a row's JSON report."""
    if "error" in r:
        return f"| {r['label']} | error: {' '.join(r['error'])[-160:]} |" + " |" * 12
    train = r["programs"]["train"]
    mesh = "x".join(str(r["mesh"][axis]) for axis in ("data", "fsdp", "tensor"))
    regime = r["spec"].split("regime=")[1].split(",")[0]
    estimate = r.get("estimate", {"error": "not run"})
    step, mfu = (("–", "–") if "error" in estimate
                 else (f"{estimate['step_seconds']:.2f}", f"{100 * estimate['mfu']:.1f}%"))
    return (f"| {r['label']} | {r['model']} | {regime} | {r['topology']} ({r['chips']} chips) | {mesh} "
            f"| {r['micro_batches']} | {r['attention']} | {r['remat_policy']} | {'yes' if train['fits'] else 'NO'} "
            f"| {train['total_gib']:.1f} ({train['temporaries_gib']:.1f}) | {r['costs']['roofline_step_seconds']:.2f} "
            f"| {step} | {mfu} | {r['wall_seconds']:.0f} / {r['cpu_seconds']:.0f} |")


def table(out: pathlib.Path, *, rows: list[Row] = ROWS) -> str:
    """The markdown table of every row, from <out>/*.json alone: listed rows in order, then any others."""
    listed = [r.label for r in rows]
    extra = sorted(p.stem for p in out.glob("*.json") if p.stem not in listed)
    lines, missing = [HEADER, "|" + "---|" * 14], []
    for label in listed + extra:
        path = out / f"{label}.json"
        if path.exists():
            lines.append(table_line(json.loads(path.read_text())))
        else:
            missing.append(label)
    if missing:
        lines += ["", "Not compiled: " + ", ".join(missing) + "."]
    return "\n".join(lines)


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return f"{os.cpu_count()}-core {model}, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="folder of the rows' JSON")
    parser.add_argument("--table", action="store_true", help="only print the table from the JSON")
    parser.add_argument("--only", nargs="*", default=None, help="compile only these row labels")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    if not args.table:
        out.mkdir(parents=True, exist_ok=True)
        known = {r.label for r in ROWS}
        unknown = sorted(set(args.only or ()) - known)
        if unknown:
            sys.exit(f"compile_table: unknown row(s) {unknown}; rows are listed in ROWS of {__file__}")
        for r in ROWS:
            if args.only is None or r.label in args.only:
                compile_row(r, out=out)
        print(f"machine: {machine()}")
    elif not out.is_dir():
        sys.exit(f"compile_table: no results folder {out}; compile rows first (without --table)")
    print(table(out))


if __name__ == "__main__":
    main()
