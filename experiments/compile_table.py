"""The paper presets compiled for TPU slices (deft_jax.compile, one process per row), as a markdown table.

    python experiments/compile_table.py                  # compile the missing rows in order, then print
    python experiments/compile_table.py --table          # print the table from the JSON alone
    python experiments/compile_table.py --only llama8b_math_v5p-32_splash_full   # one row
    python experiments/compile_table.py --reestimate --only ROW ...   # redo only the compiler's estimate

Each row is one `python -m deft_jax.compile --programs=train --json` process (with the compiler's step
estimate: 1- and 2-layer loop-free compiles, deft_jax.aot.estimate). Its report lands in
<out>/<label>.json (default experiments/results/compile_table/), with the row's attention and remat
policy, the wall and CPU seconds of the process and the load average before and after. A row whose JSON
exists is not compiled again; several workers may share one --out (a row being compiled is claimed by
<label>.running). Rows are listed cheapest-most-informative first.

--reestimate reruns, for compiled rows whose estimate predates the current method (no 'reliable' field),
only the estimate (`deft_jax.compile --estimate_only`: its four compiles, not the full program): the new
estimate replaces the old, which is kept as 'estimate_superseded', with the process's own wall / CPU
seconds and load under 'estimate_run'. The memory figures stay those of the row's full compile.

Table columns: GiB per chip (total, temporaries), fits, the roofline and the compiler's estimate of the
step (s/step, MFU = model FLOPs / (chips x peak x estimate), and the compiler's own FLOPs as a share of
peak), the superseded estimate's MFU where there is one, and the compile's wall / CPU seconds.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import re
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


def run_measured(command: list[str]) -> tuple[subprocess.CompletedProcess, dict]:
    """Run one compile process: its result and {wall, CPU seconds, max RSS, load average before and after}."""
    load_before, before = os.getloadavg(), resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return done, {"wall_seconds": round(wall, 1),
                  "cpu_seconds": round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 1),
                  "max_rss_gib": round(after.ru_maxrss / 1024**2, 2), "load_average_before": load_before,
                  "load_average_after": os.getloadavg(), "exit_code": done.returncode, "machine": machine()}


def merge_estimate(row: dict, report: dict, measured: dict) -> dict:
    """A compiled row's JSON with `report`'s estimate in place of its own (kept as 'estimate_superseded')."""
    merged = {**row, "estimate": report["estimate"], "estimate_run": measured}
    if "estimate" in row and "estimate_superseded" not in row:
        merged["estimate_superseded"] = row["estimate"]
    return merged


def needs_reestimate(row: dict) -> bool:
    return "error" not in row and "reliable" not in row.get("estimate", {})


def reestimate_row(r: Row, *, out: pathlib.Path) -> bool:
    """Redo a compiled row's estimate alone (--estimate_only) when it predates the method; True when it ran."""
    path, claim = out / f"{r.label}.json", out / f"{r.label}.reestimating"
    if not path.exists() or not needs_reestimate(json.loads(path.read_text())):
        return False
    try:
        claim.touch(exist_ok=False)
    except FileExistsError:
        return False
    scratch = out / f"{r.label}.estimate.tmp"
    command = [sys.executable, "-m", "deft_jax.compile", f"--config={r.spec}", f"--topology={r.topology}",
               "--estimate_only", f"--json={scratch}", *r.flags()]
    done, measured = run_measured(command)
    if done.returncode == 0 and scratch.exists():
        row = merge_estimate(json.loads(path.read_text()), json.loads(scratch.read_text()), measured)
        path.write_text(json.dumps(row, indent=2, sort_keys=True) + "\n")
        scratch.unlink()
    else:
        print(f"{r.label}: re-estimate failed: {done.stderr.strip().splitlines()[-3:]}", flush=True)
    claim.unlink()
    print(f"{r.label}: re-estimated in {measured['wall_seconds']:.0f}s wall, {measured['cpu_seconds']:.0f}s CPU "
          f"(exit {done.returncode})", flush=True)
    return True


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
    done, measured = run_measured(command)
    measured = {"label": r.label, "spec": r.spec, "flags": r.flags(), "row_attention": r.attention,
                "row_remat_policy": r.remat_policy, **measured}
    if done.returncode not in (0, 1) or not path.exists():  # 1 = compiled, does not fit (JSON written)
        report = {"error": done.stderr.strip().splitlines()[-3:] or ["?"]}
    else:
        report = json.loads(path.read_text())
    path.write_text(json.dumps({**report, **measured}, indent=2, sort_keys=True) + "\n")
    claim.unlink()
    print(f"{r.label}: {measured['wall_seconds']:.0f}s wall, {measured['cpu_seconds']:.0f}s CPU (exit {done.returncode})",
          flush=True)
    return True


HEADER = ("| row | model | regime | topology | mesh | micro-batches | attention | remat | fits "
          "| GiB/chip total (temps) | roofline s/step | estimate s/step | estimated MFU | compiler's FLOPs, % of peak "
          "| superseded MFU | compile wall / CPU s |")
COLUMNS = HEADER.count("|") - 1


def error_text(r: dict) -> str:
    """An error row's message: 'does not fit' with the compiler's figures when it ran out of HBM."""
    text = " ".join(r["error"])
    if "RESOURCE_EXHAUSTED" in text:
        needed = re.search(r"temporaries \(([\d.]+G)\) exceeds available HBM \(([\d.]+G)\)", text)
        figures = f": temporaries {needed.group(1)} > {needed.group(2)} HBM" if needed else ""
        return f"does NOT fit: the TPU compiler ran out of HBM{figures}"
    return f"error: {text[-160:]}"


def estimate_cells(r: dict) -> tuple[str, str, str, str]:
    """(s/step, MFU, compiler's FLOPs % of peak, superseded MFU) of a row's estimate."""
    estimate = r.get("estimate", {"error": "not run"})
    old = r.get("estimate_superseded")
    superseded = f"{100 * old['mfu']:.0f}%" if old and "mfu" in old else "–"
    if "error" in estimate:
        return "–", "–", "–", superseded
    step, mfu = f"{estimate['step_seconds']:.2f}", f"{100 * estimate['mfu']:.1f}%"
    if "reliable" not in estimate:
        return step, f"{mfu} (old method)", "–", superseded
    if not estimate["reliable"]:
        mfu = f"unreliable ({mfu})"
    return step, mfu, f"{100 * estimate['compiler_utilisation']:.0f}%", superseded


def table_line(r: dict) -> str:
    """One table line of a row's JSON report."""
    if "error" in r:
        return f"| {r['label']} | {error_text(r)} |" + " |" * (COLUMNS - 2)
    train = r["programs"]["train"]
    mesh = "x".join(str(r["mesh"][axis]) for axis in ("data", "fsdp", "tensor"))
    regime = r["spec"].split("regime=")[1].split(",")[0]
    step, mfu, utilisation, superseded = estimate_cells(r)
    return (f"| {r['label']} | {r['model']} | {regime} | {r['topology']} ({r['chips']} chips) | {mesh} "
            f"| {r['micro_batches']} | {r['attention']} | {r['remat_policy']} | {'yes' if train['fits'] else 'NO'} "
            f"| {train['total_gib']:.1f} ({train['temporaries_gib']:.1f}) | {r['costs']['roofline_step_seconds']:.2f} "
            f"| {step} | {mfu} | {utilisation} | {superseded} | {wall_cell(r)} |")


def wall_cell(r: dict) -> str:
    """'wall / CPU' of the row's compile, and of its re-estimate where there was one."""
    cell = f"{r['wall_seconds']:.0f} / {r['cpu_seconds']:.0f}"
    run = r.get("estimate_run")
    return cell + (f" (re-estimate {run['wall_seconds']:.0f} / {run['cpu_seconds']:.0f})" if run else "")


def table(out: pathlib.Path, *, rows: list[Row] = ROWS) -> str:
    """The markdown table of every row, from <out>/*.json alone: listed rows in order, then any others."""
    listed = [r.label for r in rows]
    extra = sorted(p.stem for p in out.glob("*.json") if p.stem not in listed)
    lines, missing = [HEADER, "|" + "---|" * COLUMNS], []
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
    parser.add_argument("--reestimate", action="store_true", help="redo only the estimate of compiled rows "
                        "whose estimate predates the current method")
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
                (reestimate_row if args.reestimate else compile_row)(r, out=out)
        print(f"machine: {machine()}")
    elif not out.is_dir():
        sys.exit(f"compile_table: no results folder {out}; compile rows first (without --table)")
    print(table(out))


if __name__ == "__main__":
    main()
