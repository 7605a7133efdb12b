"""The JAX-free host supervisor (deft_jax.training.hosts) in process: the lost-process line, exit 75, errors
and statuses passed through, SIGTERM forwarded. (Multi-process jobs: tests/integration/test_hosts_end_to_end.py.)"""

from __future__ import annotations
import pathlib
import signal
import subprocess
import sys
import time
import pytest
from deft_jax import sharding as sharding_lib
from deft_jax.training import config as config_lib
from deft_jax.training import hosts
from tests.helpers.runs import subprocess_env


STEPS, EVERY = 40, 4  # the tiny smoke model: a kill after step 8 leaves most of the run to do


HEARTBEAT_ABORT = """\
E1203 coordination_service.cc:1549] Use error polling to propagate the following error to all tasks: \
UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):
1
The tasks have crashed. Check the task logs for an earlier error.
F1203 client.h:80] Terminating process because the JAX distributed service detected fatal errors. \
absl::Status: UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):
1
*** Check failure stack trace: ***
"""


LEADER_ABORT = """\
F1203 client.h:80] Terminating process because the JAX distributed service detected fatal errors. \
absl::Status: UNAVAILABLE: Failed to send RPC to coordination service. Either the leader task was \
preempted/died/restarted unexpectedly or this task is experiencing network issues.
"""


def test_the_lost_process_is_read_from_the_coordination_service_message():
    assert hosts.lost_processes(HEARTBEAT_ABORT) == [1]
    assert hosts.lost_processes("unhealthy (stopped sending heartbeats):\n/job:jax_worker/replica:0/task:2, "
                                "/job:jax_worker/replica:0/task:3\n") == [2, 3]
    assert hosts.lost_processes(LEADER_ABORT) == [0]
    assert hosts.lost_processes("Gloo AllGather failed: Connection closed by peer") is None


def test_the_line_names_the_process_and_the_last_complete_step(tmp_path):
    for name in ("4", "8", "12.orbax-checkpoint-tmp", "16.orbax-checkpoint-tmp-1234", "3.corrupt-99"):
        (tmp_path / name).mkdir()
    (tmp_path / "20").write_text("a file, not a step")
    assert hosts.complete_steps(tmp_path) == [4, 8]
    line = hosts.host_lost_line(tool="train", lost=[1], num_processes=2, checkpoints=str(tmp_path))
    assert line == (f"train: process 1 of 2 stopped answering; the last complete checkpoint is step 8 in "
                    f"{tmp_path}; relaunch the same command on every host to resume from it (exit status 75)")
    assert "process 0 of 4 (the coordinator)" in hosts.host_lost_line(
        tool="sweep", lost=[0], num_processes=4, checkpoints=None)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no checkpoint was complete yet" in hosts.host_lost_line(tool="t", lost=None, num_processes=2,
                                                                     checkpoints=str(empty))


def test_only_a_multi_process_command_is_supervised():
    assert not hosts.wants_supervision({})
    assert not hosts.wants_supervision({"DEFT_NUM_PROCESSES": "1"})
    assert hosts.wants_supervision({"DEFT_NUM_PROCESSES": "2"})
    assert hosts.wants_supervision({"DEFT_COORDINATOR_ADDRESS": "h:1"})
    assert not hosts.wants_supervision({"DEFT_COORDINATOR_ADDRESS": "h:1", hosts.WORKER_ENV: "1"})
    assert not hosts.wants_supervision({"DEFT_COORDINATOR_ADDRESS": "h:1", "DEFT_SUPERVISE": "0"})
    assert hosts.wants_supervision({"DEFT_SUPERVISE": "1"})


def test_the_timeouts_reach_jax_distributed_initialize_and_are_validated():
    config = config_lib.default_config()
    assert sharding_lib.distributed_timeouts(config.distributed) == {
        "heartbeat_timeout_seconds": 60, "initialization_timeout": 300, "shutdown_timeout_seconds": 60}
    assert sharding_lib.distributed_timeouts({"heartbeat_timeout_seconds": 5}) == {"heartbeat_timeout_seconds": 5}
    assert sharding_lib.distributed_timeouts(None) == {}  # JAX's own defaults
    with pytest.raises(config_lib.ConfigError, match=r"config\.distributed\.heartbeat_timeout_seconds must be >= 1"):
        config_lib.apply_overrides(config, {"distributed.heartbeat_timeout_seconds": 0})


FAKE_WORKER = """
import os, signal, sys, time
from deft_jax.training import hosts
hosts.supervise("fake")
mode = sys.argv[1]
if mode == "abort":  # what the coordination service does to a survivor
    hosts.announce_checkpoints(sys.argv[2])
    print("step 9 done", flush=True)
    sys.stderr.write({abort!r})
    sys.stderr.flush()
    os.abort()
if mode == "other_abort":  # a fatal error of the distributed runtime that names no lost process
    sys.stderr.write("F1203 client.h:80] Terminating process because the JAX distributed service detected "
                     "fatal errors. absl::Status: INTERNAL: something else\\n")
    sys.stderr.flush()
    os.abort()
if mode == "fails":
    print("some output", flush=True)
    sys.stderr.write("fake: error: a bad value\\n")
    sys.exit(2)
if mode == "term":
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(75))
    print("ready", flush=True)
    time.sleep(60)
"""


def _run_fake(tmp_path, *args, signal_after=None):
    script = tmp_path / "worker.py"
    script.write_text(FAKE_WORKER.format(abort=HEARTBEAT_ABORT))
    env = subprocess_env(devices=1, extra={"DEFT_NUM_PROCESSES": "2"})
    process = subprocess.Popen([sys.executable, str(script), *args], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    if signal_after:
        assert process.stdout.readline() == f"{signal_after}\n"
        process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err


def test_a_survivor_aborted_by_the_coordination_service_prints_one_line_and_exits_75(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "8").mkdir(parents=True)
    (checkpoints / "12.orbax-checkpoint-tmp").mkdir()
    code, out, err = _run_fake(tmp_path, "abort", str(checkpoints))
    assert code == hosts.EXIT_HOST_LOST == 75
    assert out == "step 9 done\n"
    assert err.startswith(f"fake: process 1 of 2 stopped answering; the last complete checkpoint is step 8 in "
                          f"{checkpoints}; relaunch the same command on every host to resume from it (exit status "
                          f"75; JAX's report: ")
    assert err.endswith(".log).\n") and err.count("\n") == 1
    report = pathlib.Path(err.split("JAX's report: ")[1][:-3])
    assert "Terminating process" in report.read_text()  # the dump kept aside, not shown


def test_a_worker_error_and_its_status_pass_through_unchanged(tmp_path):
    assert _run_fake(tmp_path, "fails") == (2, "some output\n", "fake: error: a bad value\n")


def test_an_abort_that_names_no_lost_process_is_not_reported_as_one(tmp_path):
    code, _, err = _run_fake(tmp_path, "other_abort")
    assert code == 128 + signal.SIGABRT
    assert "stopped answering" not in err
    assert "INTERNAL: something else" in err  # JAX's own message, shown


def test_a_collective_that_fails_without_a_lost_peer_keeps_its_error(monkeypatch):
    """A gloo rendezvous that timed out because another process was late (no verdict of the coordination
    service follows) is raised as it was: not turned into a lost host."""
    import jax

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(hosts, "VERDICT_GRACE_SECONDS", 0.1)
    late = RuntimeError("Gloo context initialization failed: DEADLINE_EXCEEDED: GetKeyValue() timed out with key: "
                        "gloo/0,1,2,3/rank_1 and duration: 29.99s")
    started = time.monotonic()
    with pytest.raises(RuntimeError) as raised:
        with hosts.waiting_for_verdict(heartbeat_timeout_seconds=0):
            raise late
    assert raised.value is late and time.monotonic() - started >= 0.1
    with pytest.raises(ValueError, match="a bad value"):  # not a collective: raised at once
        with hosts.waiting_for_verdict(heartbeat_timeout_seconds=100):
            raise ValueError("a bad value")


def test_sigterm_reaches_the_worker(tmp_path):
    code, _, err = _run_fake(tmp_path, "term", signal_after="ready")
    assert (code, err) == (75, "")
