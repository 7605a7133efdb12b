"""A lost host ends a multi-process job cleanly: every survivor prints one line (who stopped answering, the
last complete checkpoint, relaunch to resume) and exits 75; the relaunch resumes bit-identically; SIGTERM
to one host stops every host at the same step; and no stray traceback follows a one-line error. (A sweep
that survives a run failing on every host: test_sweep_multihost.py.) Multi-process tests use two local
processes (gloo, 2 fake CPU devices each) with a 5 s heartbeat timeout."""

from __future__ import annotations
import json
import signal
import subprocess
import sys
import time
import pytest
from deft_jax.training import hosts
from tests.helpers.runs import free_port, CONFIGS, REPO_ROOT, losses_by_step, read_metrics, subprocess_env


STEPS, EVERY, LOG_EVERY = 24, 4, 2  # the tiny smoke model: room for three interruptions, 4 steps apart


FAST = [f"--config.total_steps={STEPS}", f"--config.checkpoint.every_steps={EVERY}",
        f"--config.log_every={LOG_EVERY}",
        "--config.eval.at_end=False", "--config.progress=off", "--config.checkpoint.keep=20",
        "--config.distributed.heartbeat_timeout_seconds=5", "--config.distributed.shutdown_timeout_seconds=10",
        "--config.distributed.initialization_timeout_seconds=120"]


JOB_TIMEOUT = 420  # generous: the machine may be loaded; each job itself is short


def _launch(command, *, logs, tag):
    """Both processes of a 2-process job (each under its supervisor); returns the Popens."""
    address = f"127.0.0.1:{free_port()}"
    processes = []
    for process_id in range(2):
        env = subprocess_env(devices=2, extra={
            "DEFT_COORDINATOR_ADDRESS": address, "DEFT_NUM_PROCESSES": "2", "DEFT_PROCESS_ID": str(process_id)})
        log = logs / f"{tag}.process{process_id}.log"
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=open(log, "w"),
                                   stderr=open(log.with_suffix(".err"), "w"))
        process.err_path = log.with_suffix(".err")
        processes.append(process)
    return processes


def _finish(processes, *, timeout=JOB_TIMEOUT):
    """[(returncode, stderr)] of both processes."""
    codes = [p.wait(timeout=timeout) for p in processes]
    return [(code, p.err_path.read_text()) for code, p in zip(codes, processes)]


def _train_command(workdir):
    return [sys.executable, "-m", "deft_jax.train", f"--config={CONFIGS}/deft.py:smoke", f"--workdir={workdir}",
            *FAST]


def _wait_for(predicate, *, processes, timeout=JOB_TIMEOUT, poll=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if any(p.poll() is not None for p in processes):
            raise AssertionError(f"a process ended early: {[p.poll() for p in processes]}")
        time.sleep(poll)
    raise AssertionError("timed out")


def _final_state(workdir):
    """(tensor fingerprints, data-iterator state) of the last checkpoint: equal means bit-identical state."""
    step = max(hosts.complete_steps(workdir / "checkpoints"))
    step_dir = workdir / "checkpoints" / str(step)
    return step, json.loads((step_dir / "checksums" / "metadata").read_text())["tensors"], \
        json.loads((step_dir / "data_iterator" / "metadata").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """An uninterrupted 2-process run of STEPS steps: its workdir."""
    workdir = tmp_path_factory.mktemp("uninterrupted") / "run"
    results = _finish(_launch(_train_command(workdir), logs=workdir.parent, tag="run"))
    assert [code for code, _ in results] == [0, 0], results
    return workdir


def _assert_resumed_exactly(workdir, reference):
    step, tensors, data = _final_state(workdir)
    assert (step, data) == _final_state(reference)[::2]
    assert tensors == _final_state(reference)[1]  # every tensor of the state, bit for bit
    assert losses_by_step(workdir) == losses_by_step(reference)


def _assert_resumed(err, *, workdir, after):
    """Process 0's report says it resumed from checkpoint `after`."""
    assert f"resumed from {workdir / 'checkpoints'}/{after} (" in err, err[-3000:]


def _sigterm_to_one_host(workdir, *, logs):
    """SIGTERM to host 1 once checkpoint 4 is complete: both hosts stop at the same step, saved by both.
    Returns that step."""
    processes = _launch(_train_command(workdir), logs=logs, tag="preempted")
    _wait_for(lambda: 4 in hosts.complete_steps(workdir / "checkpoints"), processes=processes)
    processes[1].send_signal(signal.SIGTERM)  # one host only
    results = _finish(processes)
    assert [code for code, _ in results] == [75, 75], results
    stopped = [int(line.split()[3]) for line in results[0][1].splitlines() if line.startswith("stopped at step")]
    assert len(stopped) == 1 and stopped[0] < STEPS, results[0][1]
    assert max(hosts.complete_steps(workdir / "checkpoints")) == stopped[0]  # saved by both, together
    # Metrics are written every LOG_EVERY steps: the last record is the last of those at or before the stop.
    assert [r["step"] for r in read_metrics(workdir)][-1] == stopped[0] - stopped[0] % LOG_EVERY
    return stopped[0]


def _sigkill_one_host(workdir, *, logs, resumes_from):
    """The relaunch resumes; SIGKILL of host 1 once a newer checkpoint is complete: host 0 prints one line
    (who stopped answering, the last complete checkpoint, relaunch to resume) and exits 75 within the
    heartbeat timeout. Returns the last complete step."""
    checkpoints = workdir / "checkpoints"
    processes = _launch(_train_command(workdir), logs=logs, tag="killed")
    _wait_for(lambda: max(hosts.complete_steps(checkpoints)) > resumes_from, processes=processes)
    processes[1].kill()  # SIGKILL: the host is gone
    killed = time.monotonic()
    code = processes[0].wait(timeout=120)
    took = time.monotonic() - killed
    err = _finish(processes)[0][1]
    lines = err.strip().splitlines()
    last = max(hosts.complete_steps(checkpoints))
    _assert_resumed(err, workdir=workdir, after=resumes_from)
    assert code == 75, err
    assert lines[-1].startswith(f"train: process 1 of 2 stopped answering; the last complete checkpoint is step {last} in "
                         f"{checkpoints}; relaunch the same command on every host to resume from it "
                         f"(exit status 75; JAX's report: ")
    assert "Traceback" not in err and "Check failure" not in err and "Gloo" not in err
    assert took < 60, took  # within the 5 s heartbeat timeout (plus the load of the machine)
    assert last < STEPS
    return last


def _sigkill_the_coordinator_while_it_writes(workdir, *, logs, resumes_from):
    """The relaunch resumes; SIGKILL of process 0 while a newer checkpoint is being written: process 1
    names it, and the unfinished write is not counted as complete. Returns the last complete step."""
    checkpoints = workdir / "checkpoints"
    processes = _launch(_train_command(workdir), logs=logs, tag="coordinator_killed")

    def writing():
        return any(p.name.startswith(str(s)) and "tmp" in p.name for p in checkpoints.iterdir()
                   for s in range(resumes_from + EVERY, STEPS, EVERY))
    _wait_for(writing, processes=processes, poll=0.002)
    processes[0].kill()
    unfinished = sorted(p.name for p in checkpoints.iterdir() if "tmp" in p.name)
    (_, coordinator_err), (code, err) = _finish(processes, timeout=120)
    last = max(hosts.complete_steps(checkpoints))
    _assert_resumed(coordinator_err, workdir=workdir, after=resumes_from)
    assert code == 75, err
    assert err.strip().splitlines()[-1].startswith(
        f"train: process 0 of 2 (the coordinator) stopped answering; the last complete checkpoint is step {last} ")
    assert "Traceback" not in err and "Check failure" not in err
    assert unfinished and all(int(name.split(".")[0]) > last for name in unfinished), (unfinished, last)
    return last


@pytest.mark.slow
def test_a_job_stopped_by_sigterm_a_killed_host_and_a_killed_coordinator_resumes_exactly(tmp_path, uninterrupted):
    """One job interrupted three ways, each relaunch resuming the last (4 launches where one job per way
    would take 6): SIGTERM to one host, SIGKILL of a host, SIGKILL of the coordinator mid-write; the last
    relaunch ends bit-identically to the uninterrupted run."""
    workdir = tmp_path / "run"
    stopped = _sigterm_to_one_host(workdir, logs=tmp_path)
    killed = _sigkill_one_host(workdir, logs=tmp_path, resumes_from=stopped)
    written = _sigkill_the_coordinator_while_it_writes(workdir, logs=tmp_path,
                                                       resumes_from=killed)
    results = _finish(_launch(_train_command(workdir), logs=tmp_path, tag="relaunch"))
    assert [code for code, _ in results] == [0, 0], results
    assert all("Traceback" not in err for _, err in results), results
    _assert_resumed(results[0][1], workdir=workdir, after=written)
    _assert_resumed_exactly(workdir, uninterrupted)
    print(f"SIGTERM: stopped at step {stopped}; host 1 killed: last complete {killed}; the coordinator killed "
          f"mid-write: last complete {written}")


@pytest.mark.slow
def test_evaluate_on_a_damaged_checkpoint_prints_one_line_and_no_traceback(tmp_path):
    workdir = tmp_path / "run"
    env = subprocess_env(devices=1)
    trained = subprocess.run([sys.executable, "-m", "deft_jax.train", f"--config={CONFIGS}/deft.py:smoke",
                              f"--workdir={workdir}", "--config.total_steps=2", "--config.eval.at_end=False",
                              "--config.progress=off"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                             timeout=JOB_TIMEOUT)
    assert trained.returncode == 0, trained.stderr[-3000:]
    index = workdir / "checkpoints" / "2" / "state" / "d"
    node = max(index.iterdir(), key=lambda p: p.stat().st_size)  # the b-tree of the tensors
    data = bytearray(node.read_bytes())
    data[len(data) // 2] ^= 0xFF
    node.write_bytes(bytes(data))
    for _ in range(2):  # the stray traceback came from reads still in flight: not on every run
        result = subprocess.run([sys.executable, "-m", "deft_jax.evaluate", f"--workdir={workdir}", "--num_eval=2",
                                 "--max_new_tokens=2"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                                timeout=JOB_TIMEOUT)
        mine = [line for line in result.stderr.splitlines() if line.startswith("evaluate:")]
        assert result.returncode == 2, result.stderr[-3000:]
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        assert result.stderr.endswith(mine[-1] + "\n")  # the one line is the last, and ends the output
        assert len(mine) == 1 and mine[0].startswith("evaluate: error: checkpoint 2 is corrupt (")
        assert "CRC-32C" in mine[0]
