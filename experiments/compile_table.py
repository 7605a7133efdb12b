"""The paper presets compiled for TPU slices (deft_jax.compile, one process per row), as a markdown table.

    python experiments/compile_table.py --out runs/compile_table          # compile missing rows, then print
    python experiments/compile_table.py --out runs/compile_table --table  # print the table only

Each row's report is <out>/<label>.json (a row whose JSON exists is not compiled again); the table shows
fits, per-chip GiB, mesh, micro-batches, the roofline and the compile time (with the machine's CPU).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import platform
import subprocess
import sys
import time

PAPER = "configs/paper"

# (label, config spec, topology, extra flags). The 8B FigFont rows compare objectives and heads.
ROWS = [
    ("llama8b_figfont_deft_chunked_v5p-32", f"{PAPER}/llama_3_1_8b.py:regime=figfont", "v5p-32", []),
    ("llama8b_figfont_nll_chunked_v5p-32", f"{PAPER}/llama_3_1_8b.py:regime=figfont,objective=nll", "v5p-32", []),
    ("llama8b_figfont_deft_naive_v5p-32", f"{PAPER}/llama_3_1_8b.py:regime=figfont,impl=naive", "v5p-32", []),
    ("llama8b_figfont_nll_naive_v5p-32", f"{PAPER}/llama_3_1_8b.py:regime=figfont,objective=nll,impl=naive",
     "v5p-32", []),
    ("qwen_math_1_5b_math_v5p-32", f"{PAPER}/qwen2_5_math_1_5b.py:regime=math", "v5p-32", []),
    ("qwen_math_7b_math_v5p-32", f"{PAPER}/qwen2_5_math_7b.py:regime=math", "v5p-32", []),
    ("llama8b_math_v5p-32", f"{PAPER}/llama_3_1_8b.py:regime=math", "v5p-32", []),
    ("llama3b_figfont_v5p-32", f"{PAPER}/llama_3_2_3b.py:regime=figfont", "v5p-32", []),
    ("deepseek_math_7b_math_v5p-32", f"{PAPER}/deepseek_math_7b_base.py:regime=math", "v5p-32", []),
    ("qwen_7b_math_v5p-32", f"{PAPER}/qwen2_5_7b.py:regime=math", "v5p-32", []),
    ("qwen_1_5b_math_v5p-32", f"{PAPER}/qwen2_5_1_5b.py:regime=math", "v5p-32", []),
    ("llama8b_figfont_v4-32", f"{PAPER}/llama_3_1_8b.py:regime=figfont", "v4-32", ["--config.micro_batch_size=32"]),
    ("llama8b_figfont_v5p-8", f"{PAPER}/llama_3_1_8b.py:regime=figfont", "v5p-8",
     ["--config.mesh.fsdp=4", "--config.micro_batch_size=64"]),
    ("llama8b_figfont_v6e-8", f"{PAPER}/llama_3_1_8b.py:regime=figfont", "v6e-8",
     ["--config.mesh.fsdp=8", "--config.micro_batch_size=32"]),
    ("llama8b_figfont_generation_v5p-32", f"{PAPER}/llama_3_1_8b.py:regime=figfont", "v5p-32",
     ["--programs=eval,prefill,decode"]),
]


def compile_row(label: str, spec: str, topology: str, extra: list[str], *, out: pathlib.Path) -> None:
    path = out / f"{label}.json"
    claim = out / f"{label}.running"
    if path.exists():
        return
    try:  # several workers may share one --out: each row is compiled once
        claim.touch(exist_ok=False)
    except FileExistsError:
        return
    programs = [] if any(flag.startswith("--programs") for flag in extra) else ["--programs=train"]
    command = [sys.executable, "-m", "deft_jax.compile", f"--config={spec}", f"--topology={topology}",
               f"--json={path}", *programs, *extra]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1) or not path.exists():  # 1 = compiled, does not fit (JSON written)
        failure = {"label": label, "error": done.stderr.strip().splitlines()[-1:] or ["?"], "wall_seconds": seconds}
        path.write_text(json.dumps(failure, indent=2))
    else:
        report = json.loads(path.read_text())
        report.update(label=label, spec=spec, extra=extra, wall_seconds=round(seconds, 1))
        path.write_text(json.dumps(report, indent=2, sort_keys=True))
    claim.unlink()
    print(f"{label}: {seconds:.0f}s (exit {done.returncode})", flush=True)


def table(out: pathlib.Path) -> str:
    lines = ["| row | model | objective / head | topology | mesh | micro-batches | fits | GiB/chip (params + opt + temps) "
             "| roofline s/step | tokens/s at 40% MFU | compile s |", "|" + "---|" * 11]
    for label, *_ in ROWS:
        path = out / f"{label}.json"
        if not path.exists():
            lines.append(f"| {label} | not compiled | | | | | | | | | |")
            continue
        r = json.loads(path.read_text())
        if "error" in r:
            lines.append(f"| {label} | error: {r['error'][0][:120]} | | | | | | | | | |")
            continue
        mesh = "x".join(str(r["mesh"][a]) for a in ("data", "fsdp", "tensor"))
        for name, p in r["programs"].items():
            parts = f"{p['total_gib']:.1f} ({p.get('params_gib', 0):.1f} + {p.get('optimizer_gib', 0):.1f} + {p['temporaries_gib']:.1f})"
            costs = r["costs"]
            roofline, tokens = ((f"{costs['roofline_step_seconds']:.2f}", f"{costs['tokens_per_second_at_40_mfu']:,.0f}")
                                if name == "train" else ("–", "–"))
            lines.append(
                f"| {label}{'' if name == 'train' else ' ' + name} | {r['model']} | {r['objective']} / {r['loss_impl']} "
                f"| {r['topology']} ({r['chips']} chips, {r['hosts']} hosts) | {mesh} | {r['micro_batches']} "
                f"| {'yes' if p['fits'] else 'NO'} | {parts} | {roofline} | {tokens} | {p['compile_seconds']:.0f} |")
    return "\n".join(lines)


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "")
    vector = [f for f in ("avx2", "avx512f") if f" {f}" in flags]
    return f"{model} ({', '.join(vector)}), {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--table", action="store_true", help="only print the table")
    parser.add_argument("--reverse", action="store_true", help="compile the rows last to first (a second worker)")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.table:
        for row in (ROWS[::-1] if args.reverse else ROWS):
            compile_row(*row, out=out)
    print(f"machine: {machine()}")
    print(table(out))


if __name__ == "__main__":
    main()
