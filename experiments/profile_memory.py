"""Resident memory of a command over time, attributed to the phases its log lines announce.

    python experiments/profile_memory.py --out /tmp/mem.json -- \
        python -m deft_jax.train --config configs/deft.py:runlocal --workdir /tmp/run

Runs the command, samples the resident set size of it and its children every `--interval` seconds
(psutil), timestamps every line it prints (stdout and stderr, merged), and writes
{samples: [[t, rss_bytes]], lines: [[t, text]], peak_bytes, peak_t, phases: [...]} where each phase is
the span between two log lines with the largest RSS seen in it. Prints the phases, largest first.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time

import psutil


def tree_rss(process: psutil.Process) -> int:
    """RSS of `process` and all its children (bytes); 0 once it is gone."""
    total = 0
    try:
        for proc in [process, *process.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        return 0
    return total


def phases_of(samples: list, lines: list) -> list[dict]:
    """Each span between consecutive log lines (the line that opens it names it) with its peak RSS."""
    marks = [(0.0, "<start>")] + [(t, text) for t, text in lines]
    spans = []
    for index, (start, name) in enumerate(marks):
        end = marks[index + 1][0] if index + 1 < len(marks) else float("inf")
        inside = [rss for t, rss in samples if start <= t < end]
        if inside:
            spans.append({"after_line": name[:160], "start_s": round(start, 2), "peak_gib": max(inside) / 2**30})
    return spans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    process = psutil.Process(child.pid)
    samples, lines, done = [], [], threading.Event()

    def sample():
        while not done.is_set():
            samples.append((time.perf_counter() - start, tree_rss(process)))
            time.sleep(args.interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for line in child.stdout:
        lines.append((time.perf_counter() - start, line.rstrip("\n")))
        sys.stdout.write(line)
        sys.stdout.flush()
    returncode = child.wait()
    done.set()
    sampler.join()
    peak_t, peak = max(samples, key=lambda s: s[1])
    phases = phases_of(samples, lines)
    with open(args.out, "w") as handle:
        json.dump({"command": command, "returncode": returncode, "peak_bytes": peak, "peak_t": peak_t,
                   "samples": samples, "lines": lines, "phases": phases}, handle)
    print(f"\npeak RSS {peak / 2**30:.2f} GiB at t={peak_t:.1f}s; phases by peak:")
    for phase in sorted(phases, key=lambda p: -p["peak_gib"])[:12]:
        print(f"  {phase['peak_gib']:.2f} GiB  t={phase['start_s']:>7.1f}s  after: {phase['after_line']}")
    sys.exit(returncode)


if __name__ == "__main__":
    main()
