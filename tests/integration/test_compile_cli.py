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
