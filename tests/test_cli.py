"""One error path for every CLI: a user's mistake is `<tool>: error: <message>` on one line, exit status 2,
and no traceback; a bug keeps its traceback."""
import numpy as np
import pytest

from deft_jax import cli
from deft_jax import generate
from tests.test_train_utils import run_module, subprocess_env


def _only_error_line(done, tool):
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert len(lines) == 1 and lines[0].startswith(f"{tool}: error: "), done.stderr[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return subprocess_env(devices=1, cache_root=tmp_path_factory.getbasetemp())


def test_generate_user_error_is_one_line(env):
    line = _only_error_line(run_module("deft_jax.generate", "--prompt", "hi", "--model", "smollm2-135m-instrct",
                                       env=env), "generate")
    assert "did you mean 'smollm2-135m-instruct'?" in line


@pytest.mark.parametrize("args, expected", [
    (["--prompt", "hi", "--temperature", "-1"], "temperature must be >= 0"),
    (["--prompt", "hi", "--max-new-tokens", "x"], "invalid int value: 'x'"),
    (["--max-new-tokens", "3"], "the following arguments are required: --prompt"),
], ids=["bad_temperature", "argparse_type", "argparse_missing"])
def test_generate_main_user_errors(capsys, args, expected):
    with pytest.raises(SystemExit) as exit_info:
        cli.run("generate", generate.main, args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and err.startswith("generate: error: ")
    assert expected in err


@pytest.mark.parametrize("args, expected", [
    (["--workdir={tmp}/missing", "--out={tmp}/out", "--dtype=bfloat15"], "did you mean 'bfloat16'?"),
    (["--wrkdir={tmp}", "--out={tmp}/out"], "Unknown command line flag 'wrkdir'"),
], ids=["misspelt_dtype", "misspelt_flag"])
def test_export_user_errors_are_one_line(env, tmp_path, args, expected):
    line = _only_error_line(run_module("deft_jax.export", *[a.format(tmp=tmp_path) for a in args], env=env),
                            "export")
    assert expected in line


def _multi_line_error(argv):
    raise cli.UserError("data.jsonl:3: bad\n  second line")


def test_user_errors_print_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.run("tool", _multi_line_error, [])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "tool: error: data.jsonl:3: bad; second line\n"
    with pytest.raises(SystemExit):  # a plain ValueError raised by the project's own checks
        cli.run("tool", lambda argv: generate.SamplingConfig(top_p=2.0), [])
    assert capsys.readouterr().err == "tool: error: top_p must be in (0, 1], got 2.0\n"
    with pytest.raises(SystemExit):
        cli.run("tool", lambda argv: cli.ArgumentParser(prog="tool").parse_args(["--x"]), [])
    assert capsys.readouterr().err == "tool: error: unrecognized arguments: --x\n"


def test_bugs_keep_their_traceback():
    """A ValueError raised inside NumPy (not by the project's own checks) and a TypeError are bugs."""
    with pytest.raises(ValueError, match="could not be broadcast"):
        cli.run("tool", lambda argv: np.ones(3) + np.ones(4), [])
    with pytest.raises(TypeError):
        cli.run("tool", lambda argv: len(None), [])
    assert cli.is_user_error(cli.UserError("x")) and not cli.is_user_error(KeyError("x"))


def test_did_you_mean():
    assert cli.did_you_mean("lrr", ["lr", "b1", "b2"]) == " (did you mean 'lr'?)"
    assert cli.did_you_mean("zzz", ["lr", "b1"]) == ""
