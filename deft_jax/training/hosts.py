"""A lost host ends a multi-process job cleanly: one line on every survivor, exit 75, and the relaunch resumes.

JAX's coordination service watches the processes of a job (`jax.distributed.initialize`): a process whose
heartbeats stop for `config.distributed.heartbeat_timeout_seconds` counts as lost, and the service then
terminates every other process (a lost coordinator, process 0, terminates them at once). It does so with
a C++ abort (a check-failure dump, exit status 134) that nothing inside the process can intercept (the
client's missed-heartbeat callback is not usable from Python in the JAX we pin). So a multi-process
command runs under a thin supervisor, this process's parent:

    supervisor (no JAX)  --same argv, stderr piped-->  worker (trains, sweeps)

The supervisor forwards SIGTERM/SIGINT to the worker (preemption keeps working), passes its output
through, holds back the coordination service's dump, and when the worker ends because a peer was lost
prints one line instead (which process stopped answering, the last complete checkpoint step, relaunch
the same command to resume) and exits EXIT_HOST_LOST (75, EX_TEMPFAIL, as a preemption does), so a
scheduler restarts the job. Single-process commands are not supervised.

Worker side: `announce_checkpoints(directory)` tells the supervisor where the current run checkpoints;
`waiting_for_verdict()` turns a collective that failed because a peer vanished into a wait for the
service's verdict (no Python traceback), bounded by the heartbeat timeout; without a verdict the error
stands. Anything else the worker does (an error, a late process, an abort that names no lost process)
comes through unchanged, with the worker's exit status.

Imports nothing heavy (the supervisor never loads JAX).
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping

EXIT_HOST_LOST = 75  # EX_TEMPFAIL: relaunch the same command to resume (the preemption status too)
VERDICT_GRACE_SECONDS = 5  # waited beyond twice the heartbeat timeout for the coordination service's verdict

WORKER_ENV = "DEFT_SUPERVISED_WORKER"  # set in the worker: do not supervise again
STATUS_ENV = "DEFT_HOST_STATUS_FILE"  # where the worker names its checkpoint directory
SUPERVISE_ENV = "DEFT_SUPERVISE"  # "0": never supervise; "1": supervise even without the variables below
# The environment that asks for a multi-process job (as deft_jax.sharding reads it).
COORDINATOR_ENV, NUM_PROCESSES_ENV, PROCESS_ID_ENV = ("DEFT_COORDINATOR_ADDRESS", "DEFT_NUM_PROCESSES",
                                                      "DEFT_PROCESS_ID")

# What the coordination service and the collectives print when a peer is lost.
_FATAL = "detected fatal errors"
_HOLD = re.compile(r"coordination_service|preemption_sync_manager|client\.h:\d+\]|Gloo \w+ failed|"
                   r"Connection (reset|closed) by peer")
_PEER_FAILURE = re.compile(r"Gloo \w+ failed|Connection (reset|closed) by peer|Broken pipe|"
                           r"coordination service|DEADLINE_EXCEEDED|UNAVAILABLE")
_UNHEALTHY = re.compile(r"unhealthy \(stopped sending heartbeats\):\s*((?:[\s,]*(?:/job:\S+/task:)?\d+)+)")
_LEADER_LOST = re.compile(r"leader task was preempted/died|Failed to send RPC to coordination service|"
                          r"Failed to connect to the coordination service")


# ====================================================================================================
# Reading what happened.

def lost_processes(text: str) -> list[int] | None:
    """The process ids the coordination service reports as lost in `text`; [0] when the coordinator
    itself is unreachable; None when `text` reports no lost process."""
    match = _UNHEALTHY.search(text)
    if match:
        names = match.group(1)
        return sorted({int(n) for n in re.findall(r"task:(\d+)" if "task:" in names else r"\d+", names)})
    if _LEADER_LOST.search(text):
        return [0]
    return None


def complete_steps(directory: str | os.PathLike | None) -> list[int]:
    """Steps of `directory` whose checkpoint write finished (a `<step>` folder; unfinished writes are
    `<step>.orbax-checkpoint-tmp-*`, damaged steps set aside `<step>.corrupt-*`), ascending."""
    if not directory or not pathlib.Path(directory).is_dir():
        return []
    return sorted(int(p.name) for p in pathlib.Path(directory).iterdir() if p.is_dir() and p.name.isdigit())


def host_lost_line(*, tool: str, lost: list[int] | None, num_processes: int | None,
                   checkpoints: str | None) -> str:
    """The survivor's one line: who stopped answering, the last complete checkpoint, what to do."""
    of = f" of {num_processes}" if num_processes else ""
    if lost:
        who = (f"process {lost[0]}{of}" if len(lost) == 1 else f"processes {lost}{of}")
        who += " (the coordinator)" if lost == [0] else ""
    else:
        who = "another process of the job"
    steps = complete_steps(checkpoints)
    if steps:
        where = f"the last complete checkpoint is step {steps[-1]} in {checkpoints}"
        resume = "relaunch the same command on every host to resume from it"
    elif checkpoints:
        where = f"no checkpoint was complete yet in {checkpoints}"
        resume = "relaunch the same command on every host to start again"
    else:
        where = "no run had started checkpointing"
        resume = "relaunch the same command on every host"
    return f"{tool}: {who} stopped answering; {where}; {resume} (exit status {EXIT_HOST_LOST})"


def read_status(path: str | os.PathLike) -> dict:
    try:
        return json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError):
        return {}


# ====================================================================================================
# Worker side.

def _write_status(**fields) -> None:
    path = os.environ.get(STATUS_ENV)
    if not path:
        return
    status = read_status(path)
    status.update(fields)
    tmp = f"{path}.tmp"
    pathlib.Path(tmp).write_text(json.dumps(status))
    os.replace(tmp, path)


def announce_checkpoints(directory: str | os.PathLike) -> None:
    """Tell the supervisor (if any) that the current run checkpoints under `directory`."""
    _write_status(checkpoints=str(pathlib.Path(directory).absolute()))


def is_peer_failure(error: BaseException) -> bool:
    """Whether `error` is a collective or coordination call that failed because a peer went away."""
    return bool(_PEER_FAILURE.search(str(error))) and type(error).__name__ in (
        "XlaRuntimeError", "JaxRuntimeError", "ValueError", "RuntimeError")


@contextlib.contextmanager
def waiting_for_verdict(*, heartbeat_timeout_seconds: int) -> Iterator[None]:
    """A collective that failed inside as a lost peer would make it fail (a broken connection, a timed-out
    rendezvous) becomes a wait for the coordination service: if a peer was lost, the service ends this
    process within the heartbeat timeout and names it (the supervisor's one line). If the service gives
    no verdict, no peer was lost (e.g. another process was merely late) and the error is raised as it
    was. Other errors pass unchanged."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 (re-raised unless the service ends the process first)
        import jax  # (the worker has it loaded already)

        if jax.process_count() < 2 or not is_peer_failure(error):
            raise
        _write_status(peer_failure=str(error).splitlines()[0][:300])
        time.sleep(2 * heartbeat_timeout_seconds + VERDICT_GRACE_SECONDS)  # the service's verdict ends the process meanwhile
        raise


# ====================================================================================================
# Supervisor side.

def wants_supervision(environ: Mapping[str, str]) -> bool:
    """Whether this command should run under a supervisor: a multi-process job asked for through the
    environment, not already a worker, and not switched off with DEFT_SUPERVISE=0."""
    if environ.get(WORKER_ENV) or environ.get(SUPERVISE_ENV) == "0":
        return False
    if environ.get(SUPERVISE_ENV) == "1":
        return True
    try:
        many = int(environ.get(NUM_PROCESSES_ENV) or 0) > 1
    except ValueError:
        many = False  # the worker reports the bad value in one line
    return bool(environ.get(COORDINATOR_ENV)) or many


def _worker_command() -> list[str]:
    """This interpreter's original command line (`python -m deft_jax.train ...`)."""
    return [sys.executable, *getattr(sys, "orig_argv", [sys.executable, *sys.argv])[1:]]


def _die_with_parent() -> None:
    """In the worker (before exec): receive SIGKILL when the supervisor dies (Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _Relay:
    """Copies the worker's stderr to ours line by line; from the first line of the coordination machinery
    on, holds everything back (printed at the end unless the worker was ended by a lost peer)."""

    def __init__(self, stream, out):
        self.held: list[bytes] = []
        self._stream, self._out = stream, out
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for line in iter(self._stream.readline, b""):
            if self.held or _HOLD.search(line.decode(errors="replace")):
                self.held.append(line)
            else:
                self._out.write(line)
                self._out.flush()

    def join(self) -> str:
        self._thread.join()
        return b"".join(self.held).decode(errors="replace")

    def release(self) -> None:
        self._out.write(b"".join(self.held))
        self._out.flush()


def supervise(tool: str, *, environ: Mapping[str, str] | None = None) -> None:
    """Run this command as a supervised worker when it is one process of a multi-process job, and exit
    with the worker's status (EXIT_HOST_LOST and one line when a peer was lost). Returns at once, doing
    nothing, in a single-process command or in the worker itself."""
    environ = os.environ if environ is None else environ
    if not wants_supervision(environ):
        return
    handle, status_path = tempfile.mkstemp(prefix="deft_hosts_", suffix=".json")
    os.close(handle)
    env = dict(environ, **{WORKER_ENV: "1", STATUS_ENV: status_path})
    worker = subprocess.Popen(_worker_command(), env=env, stderr=subprocess.PIPE, preexec_fn=_die_with_parent)

    def forward(signum, frame):
        if worker.poll() is None:
            worker.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    relay = _Relay(worker.stderr, sys.stderr.buffer)
    code = worker.wait()
    held = relay.join()
    status = read_status(status_path)
    os.unlink(status_path)
    lost = lost_processes(held)
    if _FATAL in held and lost is not None:  # the coordination service ended the worker: a peer was lost
        count = environ.get(NUM_PROCESSES_ENV)
        report = pathlib.Path(status_path).with_suffix(".log")  # JAX's own report, for the curious
        report.write_text(held + "".join(f"\n{key}: {value}" for key, value in status.items()))
        line = host_lost_line(tool=tool, lost=lost, num_processes=int(count) if count and count.isdigit()
                              else None, checkpoints=status.get("checkpoints"))
        sys.stderr.write(f"{line[:-1]}; JAX's report: {report}).\n")
        sys.stderr.flush()
        sys.exit(EXIT_HOST_LOST)
    relay.release()
    sys.exit(128 - code if code < 0 else code)
