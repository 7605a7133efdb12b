"""Every CLI end to end: a user's mistake is `<tool>: error: <message>` on one line, exit status 2, and no
traceback."""

import os
import subprocess
import sys
import pytest
from tests.helpers.runs import REPO_ROOT, run_module, subprocess_env


def _only_error_line(done, tool):
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert len(lines) == 1 and lines[0].startswith(f"{tool}: error: "), done.stderr[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def env():
    return subprocess_env(devices=1)


@pytest.mark.slow
def test_generate_user_error_is_one_line(env):
    line = _only_error_line(run_module("deft_jax.generate", "--prompt", "hi", "--model", "smollm2-135m-instrct",
                                       env=env), "generate")
    assert "did you mean 'smollm2-135m-instruct'?" in line


@pytest.mark.slow
@pytest.mark.parametrize("args, expected", [
    (["--workdir={tmp}/missing", "--out={tmp}/out", "--dtype=bfloat15"], "did you mean 'bfloat16'?"),
    (["--wrkdir={tmp}", "--out={tmp}/out"], "Unknown command line flag 'wrkdir'"),
], ids=["misspelt_dtype", "misspelt_flag"])
def test_export_user_errors_are_one_line(env, tmp_path, args, expected):
    line = _only_error_line(run_module("deft_jax.export", *[a.format(tmp=tmp_path) for a in args], env=env),
                            "export")
    assert expected in line


ABSL_TOOL = """
from absl import flags
from ml_collections import config_flags
from deft_jax import cli
config_flags.DEFINE_config_file("config", None, "config file", lock_config=True)
cli.run_absl("tool", lambda argv: print(flags.FLAGS.config.optim.lr))
"""


@pytest.mark.slow
@pytest.mark.parametrize("args, expected", [
    (["--config={missing}"], "--config: cannot load the config file: [Errno 2] No such file or directory: '{missing}'"),
    (["--config={config}", "--config.optim.lrr=1e-3"],
     "--config.optim.lrr: no such config field 'lrr'; Did you mean \"lr\" instead of \"lrr\"?"),
    (["--config={config}", "--config.optim.lr=abc"],
     "flag --config.optim.lr=abc: could not convert string to float: 'abc'"),
    (["--config={config}", "--config.optim.lr=0.5"], None),
], ids=["missing_config_file", "misspelt_override", "ill_typed_override", "valid"])
def test_absl_and_config_flag_errors_are_one_line(tmp_path, args, expected):
    """What train / evaluate / sweep get from cli.run_absl (ml_collections reports a config file that fails
    to load only on first use, and a misspelt override as a chained KeyError/AttributeError)."""
    missing, config = str(tmp_path / "nope.py"), tmp_path / "config.py"
    config.write_text("import ml_collections\n\ndef get_config():\n"
                      "    return ml_collections.ConfigDict({'optim': {'lr': 1e-3, 'b1': 0.9}})\n")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    args = [a.format(missing=missing, config=config) for a in args]
    done = subprocess.run([sys.executable, "-c", ABSL_TOOL, *args],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    if expected is None:
        assert done.returncode == 0 and done.stdout.strip() == "0.5", done.stderr[-2000:]
    else:
        assert _only_error_line(done, "tool") == f"tool: error: {expected.format(missing=missing)}"


@pytest.mark.slow
@pytest.mark.parametrize("args, expected", [
    (["--config={configs}/deft.py:smoke", "--config.optim.lrr=1e-3", "--workdir={tmp}/w"],
     "Did you mean \"lr\""),
    (["--config={tmp}/missing.py", "--workdir={tmp}/w"], "No such file or directory"),
    (["--config={configs}/deformed_log.py:alpha=-1,smoke", "--workdir={tmp}/w"], "config.objective: "),
    (["--config={configs}/deft.py:smoke,model=tiny,task=gsm8k", "--workdir={tmp}/w"], "data.path"),
], ids=["misspelt_override", "missing_config_file", "bad_objective_parameter", "missing_data_path"])
def test_train_user_errors_are_one_line(env, tmp_path, args, expected):
    args = [a.format(configs=REPO_ROOT / "configs", tmp=tmp_path) for a in args]
    line = _only_error_line(run_module("deft_jax.train", *args, env=env), "train")
    assert expected in line
    assert not (tmp_path / "w" / "config.json").exists()  # nothing of a refused run is recorded
