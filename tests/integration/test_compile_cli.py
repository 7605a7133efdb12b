"""`python -m deft_jax.compile` end to end: a bad topology is one line, exit status 2."""

import subprocess
import sys
import pytest
from tests.helpers.runs import REPO_ROOT, subprocess_env


pytest.importorskip("libtpu")


# A small decoder whose per-chip shards (fsdp=8) are whole TPU tiles.
V, D, L, H, HD, F = 1024, 1024, 8, 8, 128, 128


@pytest.mark.slow
def test_cli_bad_topology_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "deft_jax.compile", f"--config={REPO_ROOT}/configs/deft.py:smoke",
                           "--topology=v5p-31"], cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("compile: error: topology 'v5p-31'")
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_cli_estimate_only_prints_the_estimate_and_compiles_no_program(tmp_path):
    report = tmp_path / "estimate.json"
    done = subprocess.run([sys.executable, "-m", "deft_jax.compile", f"--config={REPO_ROOT}/configs/nll.py:smoke",
                           "--topology=v5e:2x2", "--estimate_only", f"--json={report}", "--config.data.seq_len=128",
                           "--config.mesh.data=1", "--config.mesh.fsdp=4", "--config.batch_size=8",
                           "--config.micro_batch_size=8"],
                          cwd=REPO_ROOT, env=subprocess_env(extra={"JAX_DISABLE_MOST_OPTIMIZATIONS": "0"}),
                          capture_output=True, text=True, timeout=300)  # the TPU compiler's figures, as users get them
    assert done.returncode == 0, done.stderr[-2000:]
    assert "compiler's estimate (TPU cost model, loops unrolled):" in done.stdout
    import json

    result = json.loads(report.read_text())
    assert result["programs"] == {} and result["estimate"]["while_loops"] == 0
    assert result["estimate"]["n_layers"] == 2 and result["estimate"]["step_seconds"] > 0  # the smoke model's
