"""`python -m deft_jax.train` end to end: SIGTERM resume and SIGKILL in the middle of a checkpoint write end
exactly as an uninterrupted run."""

import json
import os
import signal
import numpy as np
import pytest
from deft_jax.training import setup as build
from deft_jax.training import checkpointing
from deft_jax.training import loop as train
from tests.helpers.checkpoints import latest_restorable_step
from tests.helpers.runs import (CONFIGS, kill, losses_by_step, params_leaves, run_in_process, smoke_config,
                              start_cli, wait_for_step)


LONG = {"total_steps": 40, "checkpoint.every_steps": 4}


LONG_FLAGS = ["--config.total_steps=40", "--config.checkpoint.every_steps=4"]


@pytest.fixture(scope="module")
def compilation_cache():
    """The session's cache (conftest.py), passed again through the config field the trainer reads."""
    return os.environ["JAX_COMPILATION_CACHE_DIR"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    final = run_in_process(smoke_config("deft", **LONG), workdir)
    assert final["step"] == 40
    return params_leaves(final["state"]), losses_by_step(workdir)


def _kill_during_a_checkpoint_write(process, workdir, *, give_up_at_step):
    """SIGKILL as soon as a checkpoint write is in flight (its temporary directory exists); failing
    that, at step `give_up_at_step`. Returns whether a write was interrupted."""
    checkpoints = checkpointing.checkpoint_dir(workdir)
    polls = 0
    while process.poll() is None:
        if any(checkpointing.TMP_MARKER in p.name for p in checkpoints.iterdir()):
            kill(process)
            return True
        polls += 1
        if polls % 200 == 0 and max(losses_by_step(workdir), default=0) >= give_up_at_step:
            kill(process)
            return False
    raise AssertionError(f"the run ended (rc {process.returncode}) before it could be killed")


@pytest.mark.slow
def test_sigterm_resume_and_sigkill_mid_write_end_exactly_as_an_uninterrupted_run(
        tmp_path, uninterrupted, compilation_cache):
    workdir = tmp_path / "run"
    command = (f"{CONFIGS}/deft.py:smoke", workdir, *LONG_FLAGS, f"--config.compilation_cache_dir={compilation_cache}")
    # 1. SIGTERM (preemption): a checkpoint at the step reached, the "resume me" exit code and final.json
    #    flag (a finished run exits 0 with preempted false, below), the resolved config saved.
    process = start_cli(*command, log_path=tmp_path / "first.log")
    wait_for_step(process, workdir, step=3)
    assert kill(process, signal.SIGTERM) == train.EXIT_PREEMPTED
    stopped_at = max(losses_by_step(workdir))
    assert 3 <= stopped_at < 40
    assert "run the same command again to resume" in (tmp_path / "first.log").read_text()
    assert train.read_final(workdir)["preempted"] is True and train.read_final(workdir)["step"] == stopped_at
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["total_steps"] == 40 and saved["objective"]["name"] == "deft"
    target = build.setup(smoke_config("deft", **LONG)).state_target
    directory = checkpointing.checkpoint_dir(workdir)
    assert latest_restorable_step(directory=directory, target=target) == stopped_at
    # 2. The same command resumes from there; SIGKILL it while it writes a checkpoint.
    process = start_cli(*command, log_path=tmp_path / "second.log")
    wait_for_step(process, workdir, step=stopped_at + 2)
    interrupted_write = _kill_during_a_checkpoint_write(process, workdir, give_up_at_step=36)
    assert f"resumed from {directory}/{stopped_at}" in (tmp_path / "second.log").read_text()
    killed_at = max(losses_by_step(workdir))
    assert killed_at < 40
    # 3. Once more (in this process): it resumes from the last complete checkpoint and ends exactly as
    #    the uninterrupted run, parameters bit for bit, every logged loss identical.
    final = run_in_process(smoke_config("deft", **LONG), workdir)
    assert final["step"] == 40
    assert train.read_final(workdir)["preempted"] is False
    logged_steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()
                    if "train/loss" in json.loads(line)]
    assert logged_steps == list(range(1, 41))  # the replayed steps after SIGKILL: one line each
    reference_params, reference_losses = uninterrupted
    for got, want in zip(params_leaves(final["state"]), reference_params):
        assert np.array_equal(got, want)
    losses = losses_by_step(workdir)
    assert [losses[s] for s in range(1, 41)] == [reference_losses[s] for s in range(1, 41)]
    print(f"SIGTERM at step {stopped_at}; SIGKILL at step {killed_at}, during a checkpoint write: "
          f"{interrupted_write}")
