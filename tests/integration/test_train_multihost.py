"""Two processes on 127.0.0.1 (2 fake CPU devices each, gloo collectives) form one 4-device mesh and
train exactly as one process does: same losses, and the checkpoint they write together restores here."""

import jax
import numpy as np
import pytest

from deft_jax.training import checkpointing
from deft_jax.training import setup as build
from tests.helpers.runs import (CONFIGS, REPO_ROOT, cli_command, free_port, losses_by_step, params_leaves,
                                read_metrics, run_in_process, smoke_config, subprocess_env)

pytestmark = pytest.mark.slow  # processes

STEPS = 3  # as test_sharding's one-device reference (the compiled step is shared in one session)


def test_two_processes_match_one_process(tmp_path):
    import subprocess

    workdir = tmp_path / "two_processes"
    address = f"127.0.0.1:{free_port()}"
    processes = []
    for process_id in range(2):
        env = subprocess_env(devices=2, extra={"DEFT_COORDINATOR_ADDRESS": address, "DEFT_NUM_PROCESSES": "2",
                                               "DEFT_PROCESS_ID": str(process_id)})
        log = open(tmp_path / f"process{process_id}.log", "w")
        processes.append(subprocess.Popen(
            cli_command(f"{CONFIGS}/deft.py:smoke", workdir, f"--config.total_steps={STEPS}"),
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    codes = [p.wait(timeout=300) for p in processes]
    logs = [(tmp_path / f"process{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], "\n".join(log[-3000:] for log in logs)
    assert "on 4 cpu device(s)" in logs[0] and "'data': 4" in logs[0]
    assert "deft_jax:" not in logs[1]  # only process 0 reports and writes logs
    records = read_metrics(workdir)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))

    reference_dir = tmp_path / "one_process"
    reference = run_in_process(smoke_config("deft", total_steps=STEPS, **{"mesh.data": 1}), reference_dir,
                               devices=jax.devices()[:1])
    losses, reference_losses = losses_by_step(workdir), losses_by_step(reference_dir)
    relative = max(abs(losses[s] - reference_losses[s]) / abs(reference_losses[s]) for s in reference_losses)
    assert relative <= 1e-5, relative

    # The checkpoint written by the two processes restores in this one (8 devices), matching the reference.
    target = build.setup(smoke_config("deft", total_steps=STEPS)).state_target
    manager = checkpointing.make_manager(directory=checkpointing.checkpoint_dir(workdir), read_only=True)
    state, data_state, step = checkpointing.restore(manager, target=target)
    manager.close()
    assert step == STEPS and data_state["cursor"] == STEPS * 16
    for got, want in zip(params_leaves(state), params_leaves(reference["state"])):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)
