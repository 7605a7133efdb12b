"""Shared helpers for tests that train (no tests here): config loading, tiny runs, subprocess runs."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import numpy as np
from deft_jax.training import config as config_lib


REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


CONFIGS = REPO_ROOT / "configs"


ABLATIONS = sorted(p.stem for p in CONFIGS.glob("*.py") if p.stem not in ("base", "__init__"))


def smoke_config(name="nll", arg="", **overrides):
    """configs/<name>.py:smoke[,arg] with dotted-key overrides applied (and validated)."""

    config = config_lib.load_config(f"{CONFIGS / name}.py:smoke" + (f",{arg}" if arg else ""))
    return config_lib.apply_overrides(config, overrides) if overrides else config


def run_in_process(config, workdir, **kwargs):
    from deft_jax.training import loop as train

    return train.train_and_evaluate(config, workdir, **kwargs)


def read_metrics(workdir):
    path = pathlib.Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def losses_by_step(workdir):
    """{step: train/loss} from metrics.jsonl (the last record of a step wins, as after a resume)."""
    return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


def subprocess_env(*, devices=8, extra=None):
    """The test environment for a subprocess: `devices` fake CPU devices, the repo on PYTHONPATH, and the
    session's JAX compilation cache (inherited from os.environ, set by conftest.py), so the programs a
    tiny run compiles are compiled once per session, whichever process asks first."""
    env = dict(os.environ)
    kept = [flag for flag in env.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in flag]
    env["XLA_FLAGS"] = " ".join([f"--xla_force_host_platform_device_count={devices}", *kept])
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def cli_command(config_spec, workdir, *overrides):
    return [sys.executable, "-m", "deft_jax.train", f"--config={config_spec}", f"--workdir={workdir}",
            *overrides]


def start_cli(config_spec, workdir, *overrides, devices=8, log_path=None):
    log = open(log_path or pathlib.Path(workdir).with_suffix(".log"), "w")
    return subprocess.Popen(cli_command(config_spec, workdir, *overrides), cwd=REPO_ROOT,
                            env=subprocess_env(devices=devices), stdout=log, stderr=subprocess.STDOUT)


def wait_for_step(process, workdir, *, step, timeout=120.0):
    """Poll metrics.jsonl until a record with step >= `step` exists (or the process ends)."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and any(r.get("step", 0) >= step for r in read_metrics(workdir)):
            return
        if process.poll() is not None:
            raise AssertionError(f"the run ended (rc {process.returncode}) before step {step}")
        time.sleep(0.02)
    process.kill()
    raise AssertionError(f"no step {step} within {timeout}s")


def params_leaves(state):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))]


def kill(process, sig=signal.SIGKILL):
    process.send_signal(sig)
    return process.wait(timeout=120)


def run_module(module: str, *args: str, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def session_dir(tmp_path_factory) -> pathlib.Path:
    """A folder shared by every process of one test session: the xdist workers' base folders are
    <root>/popen-gw<N>, so theirs is <root>."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def trained_smoke_run(tmp_path_factory) -> pathlib.Path:
    """A tiny deformed-log run trained (in this process) for 2 steps on 8 fake devices with the trainer's
    final eval, shared by the test modules and xdist workers of one session: read-only, trained by
    whichever asks first."""
    import filelock

    workdir = session_dir(tmp_path_factory) / "shared_smoke_run"
    with filelock.FileLock(f"{workdir}.lock"):
        if not (workdir / "TRAINED").is_file():
            shutil.rmtree(workdir, ignore_errors=True)  # what a failed first attempt left
            final = run_in_process(smoke_config("deformed_log", **{"eval.at_end": True}), workdir)
            assert final["step"] == 2 and not final["preempted"], final
            (workdir / "TRAINED").write_text("ok")
    return workdir


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a multi-process job's coordinator)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
