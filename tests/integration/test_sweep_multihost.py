"""deft_jax.sweep on two processes (127.0.0.1, gloo, 2 fake CPU devices each): both step through the same
runs, only process 0 writes, a run that fails on every host is recorded and the sweep goes on, and the
summary equals the same sweep's in one process of 4 devices."""
from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from deft_jax import sweeping as sweep
from tests.helpers.runs import free_port, REPO_ROOT, subprocess_env

pytestmark = pytest.mark.slow  # processes

TWO_POINT_SWEEP = f"""
import sys
sys.path.insert(0, {str(REPO_ROOT)!r})
from configs import deft


def get_config(arg=None):
    return deft.get_config(arg)


def sweep():
    # 6 rows do not split over the 4 devices: valid as a config, it fails on every host when the run starts
    return [{{"batch_size": 6, "micro_batch_size": 6}}, {{"seed": 0}}, {{"seed": 1}}]
"""

FAILED = "batch_size=6,micro_batch_size=6"


def _sweep_command(config_file, workdir):
    return [sys.executable, "-m", "deft_jax.sweep", f"--config={config_file}:smoke", "--config.eval.at_end=True",
            f"--workdir={workdir}", "--in_process", "--max_new_tokens=4", "--num_eval=8"]


def _summary(workdir):
    with open(workdir / "summary.csv") as handle:
        return list(csv.DictReader(handle))


def test_two_process_sweep_matches_one_process(tmp_path):
    config_file = tmp_path / "two_points.py"
    config_file.write_text(TWO_POINT_SWEEP)
    address = f"127.0.0.1:{free_port()}"
    pod_dir, single_dir = tmp_path / "two_processes", tmp_path / "one_process"
    processes, logs = [], []
    for process_id in range(2):
        env = subprocess_env(devices=2, extra={"DEFT_COORDINATOR_ADDRESS": address, "DEFT_NUM_PROCESSES": "2",
                                               "DEFT_PROCESS_ID": str(process_id)})
        logs.append(tmp_path / f"process{process_id}.log")
        processes.append(subprocess.Popen(_sweep_command(config_file, pod_dir), cwd=REPO_ROOT, env=env,
                                          stdout=open(logs[-1], "w"), stderr=subprocess.STDOUT))
    codes = [p.wait(timeout=600) for p in processes]
    logs.append(tmp_path / "single.log")  # afterwards: the two processes' compilations must meet in time
    single = subprocess.run(_sweep_command(config_file, single_dir), cwd=REPO_ROOT, env=subprocess_env(devices=4),
                            stdout=open(logs[-1], "w"), stderr=subprocess.STDOUT, timeout=600)
    codes.append(single.returncode)
    texts = [log.read_text() for log in logs]
    # A run failed: every process ends the sweep with exit status 1 and says to relaunch.
    assert codes == [1, 1, 1], "\n=====\n".join(text[-3000:] for text in texts)
    for text in texts:
        assert text.rstrip().splitlines()[-1] == (f"sweep: 1 run(s) did not finish: [{FAILED!r}]; launch the same "
                                                  "command again to resume them."), text[-3000:]

    assert "(process 0 of 2)" in texts[0] and "sweep: 3 runs of" not in texts[1]  # only process 0 reports
    assert "on 4 cpu device(s)" in texts[0]  # each run trained as one job over both processes
    assert f"[1/3] {FAILED}: failed: config.micro_batch_size=6 (rows per micro-batch) is not divisible" in texts[0]
    assert "[3/3] seed=1: finished at step" in texts[0]
    assert "Traceback" in (pod_dir / FAILED / "error.txt").read_text()
    assert not (pod_dir / FAILED / sweep.DONE_MARKER).exists()
    assert all("Traceback" not in text for text in texts[:2])  # the failure is recorded, not printed
    for name in ("seed=0", "seed=1"):
        assert (pod_dir / name / sweep.DONE_MARKER).is_file()
    pod, single = _summary(pod_dir), _summary(single_dir)
    assert [row["run"] for row in pod] == [row["run"] for row in single] == [FAILED, "seed=0", "seed=1"]
    assert pod[0]["status"].startswith("failed: ") and pod[0]["nll"] == ""
    assert pod[0].keys() == single[0].keys()
    for got, want in zip(pod, single):
        for column, value in want.items():
            if column == "status":  # the same, but for the workdir in a failed run's traceback path
                assert got[column] == value.replace(str(single_dir), str(pod_dir)), (got, want)
            elif column in ("run", "seed", "step", "scoring_task"):
                assert got[column] == value, (column, got, want)
            elif value:
                assert float(got[column]) == pytest.approx(float(value), rel=1e-4, abs=1e-6), (column, got, want)
            else:
                assert got[column] == value
    assert float(pod[1]["nll"]) != pytest.approx(float(pod[2]["nll"]), rel=1e-6)  # the seeds differ
