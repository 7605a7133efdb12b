"""A benchmark suite on two processes (127.0.0.1, gloo, 2 fake CPU devices each) samples and scores exactly
as one process of 4 devices: the same generations, sample for sample, and the same report."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers.runs import free_port, REPO_ROOT, subprocess_env

pytestmark = pytest.mark.slow  # processes

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "suites"
BENCHMARKS = ("aime24", "amc23")


def _suite_command(out_dir) -> list[str]:
    """Sampled math suite (temperature > 0, n = 3 per problem) on the smoke config's base model."""
    return [sys.executable, "-m", "deft_jax.evaluate", "--suite=math", f"--benchmarks={','.join(BENCHMARKS)}",
            f"--data_dir={FIXTURES}", "--config=configs/nll.py:smoke", "--base", f"--out_dir={out_dir}", "--n=3",
            "--max_new_tokens=6", "--seed=5"]


def _generations(out_dir, name) -> list[dict]:
    path = out_dir / "base" / "math" / f"{name}.generations.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(records, key=json.dumps)


def test_two_process_suite_equals_one_process(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    pod_dir, single_dir = tmp_path / "two_processes", tmp_path / "one_process"
    processes, logs = [], []
    for process_id in range(2):
        env = subprocess_env(devices=2, extra={"DEFT_COORDINATOR_ADDRESS": address, "DEFT_NUM_PROCESSES": "2",
                                               "DEFT_PROCESS_ID": str(process_id)})
        logs.append(tmp_path / f"process{process_id}.log")
        processes.append(subprocess.Popen(_suite_command(pod_dir), cwd=REPO_ROOT, env=env,
                                          stdout=open(logs[-1], "w"), stderr=subprocess.STDOUT))
    codes = [p.wait(timeout=600) for p in processes]
    logs.append(tmp_path / "single.log")
    single = subprocess.run(_suite_command(single_dir), cwd=REPO_ROOT, env=subprocess_env(devices=4),
                            stdout=open(logs[-1], "w"), stderr=subprocess.STDOUT, timeout=600)
    codes.append(single.returncode)
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0, 0], "\n=====\n".join(text[-3000:] for text in texts)

    for name in BENCHMARKS:
        pod, one = _generations(pod_dir, name), _generations(single_dir, name)
        problems = len((FIXTURES / f"{name}_test.jsonl").read_text().splitlines())
        assert len(one) == problems * 3  # n = 3 samples of every problem
        assert pod == one, name  # every sample, token for token (its text), on both layouts
    pod_report = json.loads((pod_dir / "base" / "math" / "report.json").read_text())
    one_report = json.loads((single_dir / "base" / "math" / "report.json").read_text())
    assert pod_report["complete"] and pod_report["benchmarks"] == one_report["benchmarks"]
    assert pod_report["mean"] == one_report["mean"]
