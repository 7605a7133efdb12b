"""`python -m deft_jax.sweep` end to end: 3 tiny runs, SIGKILL in the middle and a relaunch that finishes
without retraining the finished run; summary table/CSV/plot; cluster commands; bad sweep input."""

from __future__ import annotations
import csv
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import pytest
from deft_jax import sweeping as sweep
from tests.helpers.runs import subprocess_env


REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


SEEDS = (0, 1, 2)


TINY_SWEEP_CONFIG = f"""
import sys
sys.path.insert(0, {str(REPO_ROOT)!r})
from configs import deformed_log


def get_config(arg=None):
    return deformed_log.get_config(arg)


def sweep():
    return [{{"seed": seed}} for seed in {SEEDS!r}]
"""


def sweep_args(config_file: pathlib.Path, workdir: pathlib.Path) -> list[str]:
    return [sys.executable, "-m", "deft_jax.sweep", f"--config={config_file}:smoke", "--config.eval.at_end=True",
            f"--workdir={workdir}", "--max_new_tokens=4"]


def wait_for(path: pathlib.Path, *, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"the sweep exited ({process.returncode}) before {path} appeared")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout}s")
        time.sleep(0.2)


@pytest.mark.slow
def test_sweep_killed_in_the_middle_resumes_without_redoing_finished_runs(tmp_path):
    config_file = tmp_path / "tiny_sweep.py"
    config_file.write_text(TINY_SWEEP_CONFIG)
    workdir = tmp_path / "sweep"
    env = subprocess_env()  # runs share one compiled step (the session's compilation cache)
    first_marker = workdir / "seed=0" / sweep.DONE_MARKER

    with open(tmp_path / "first_launch.log", "wb") as log:
        process = subprocess.Popen(sweep_args(config_file, workdir), cwd=REPO_ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(first_marker, process=process, timeout=240)
        finally:
            os.killpg(process.pid, signal.SIGKILL)  # the sweep and the trainer it is running
            process.wait()
    assert not (workdir / "seed=1" / sweep.DONE_MARKER).exists()
    assert not (workdir / "seed=2" / sweep.DONE_MARKER).exists()
    finished_files = {path: path.stat().st_mtime_ns for path in (workdir / "seed=0").rglob("*")
                      if path.is_file() and "eval" not in path.parts}

    relaunch = subprocess.run(sweep_args(config_file, workdir), cwd=REPO_ROOT, env=env, capture_output=True,
                              text=True, timeout=400)
    assert relaunch.returncode == 0, relaunch.stdout[-3000:] + relaunch.stderr[-3000:]
    assert "seed=0: already finished, skipping" in relaunch.stdout
    for path, mtime in finished_files.items():  # nothing of the finished run was rewritten
        assert path.stat().st_mtime_ns == mtime, path
    assert (workdir / "seed=0" / sweep.TRAIN_LOG).read_text().count("\n$ ") == 1  # trained once
    for seed in SEEDS:
        run_dir = workdir / f"seed={seed}"
        assert (run_dir / sweep.DONE_MARKER).is_file()
        resolved = json.loads((run_dir / "config.json").read_text())
        assert resolved["seed"] == seed and resolved["eval"]["at_end"] is True  # point + passed-through override

    with open(workdir / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["run"] for row in rows] == [f"seed={seed}" for seed in SEEDS]
    assert [int(row["seed"]) for row in rows] == list(SEEDS)
    for row in rows:
        report = json.loads((workdir / row["run"] / "eval" / f"step_{row['step']}.json").read_text())
        logged = [json.loads(line) for line in (workdir / row["run"] / "metrics.jsonl").read_text().splitlines()]
        trainer_nll = [record["eval/nll"] for record in logged if "eval/nll" in record][-1]
        assert float(row["nll"]) == pytest.approx(report["teacher_forced"]["nll"], rel=1e-5)
        assert float(row["nll"]) == pytest.approx(trainer_nll, abs=1e-5)
        assert row["status"] in ("done", "skipped (done)") and 0.0 <= float(row["score"]) <= 1.0
    assert len({row["nll"] for row in rows}) == 3  # three different seeds, three different runs
    assert (workdir / "summary.md").read_text().count("| seed=") == 3
    assert (workdir / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_print_commands_and_commands_file(tmp_path):
    workdir = tmp_path / "cluster"
    commands_file = tmp_path / "commands.txt"
    done = subprocess.run([sys.executable, "-m", "deft_jax.sweep", "--config=configs/deformed_log.py:smoke",
                           "--config.total_steps=3", f"--workdir={workdir}", "--print_commands",
                           f"--commands_file={commands_file}"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert commands_file.read_text().strip().splitlines() == lines
    alphas = (0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 10.0)  # configs/deformed_log.py sweep()
    assert len(lines) == len(alphas)
    for line, alpha in zip(lines, alphas):
        assert line.startswith("python -m deft_jax.train --config=")
        assert "--config.total_steps=3" in line and f"--config.objective.alpha={alpha!r}" in line
        assert line.index("--config.total_steps=3") < line.index("--config.objective.alpha")  # the point wins
        run_dir = workdir / f"alpha={alpha!r}"
        assert line.endswith(f"--workdir={run_dir}") or line.endswith(f"'--workdir={run_dir}'")
        point = json.loads((run_dir / sweep.POINT_FILE).read_text())
        assert point["point"] == {"objective.alpha": alpha} and point["config"]["objective"]["alpha"] == alpha
        assert point["config"]["total_steps"] == 3
    assert not any((workdir / name).exists() for name in ("summary.csv", "alpha=0.1/checkpoints"))  # nothing ran


@pytest.mark.slow
def test_cli_bad_input_is_a_message(tmp_path):
    no_sweep = tmp_path / "no_sweep.py"
    no_sweep.write_text(f"import sys\nsys.path.insert(0, {str(REPO_ROOT)!r})\nfrom configs import nll\n"
                        "def get_config(arg=None):\n    return nll.get_config(arg)\n")
    done = subprocess.run([sys.executable, "-m", "deft_jax.sweep", f"--config={no_sweep}:smoke",
                           f"--workdir={tmp_path / 'w'}"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "sweep: error:" in done.stderr and "has no sweep() function" in done.stderr
    assert "Traceback" not in done.stderr
