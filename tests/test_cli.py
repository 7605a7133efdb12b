"""deft_jax.cli in process: a UserError is `<tool>: error: <message>` on one line, exit status 2, and no
traceback; a bug keeps its traceback. (The CLIs themselves: tests/integration/test_cli_errors.py.)"""

import numpy as np
import pytest
from deft_jax.inference import sampler
from deft_jax import cli
from deft_jax import generate as generate_cli


@pytest.mark.parametrize("args, expected", [
    (["--prompt", "hi", "--temperature", "-1"], "temperature must be >= 0"),
    (["--prompt", "hi", "--max-new-tokens", "x"], "invalid int value: 'x'"),
    (["--max-new-tokens", "3"], "the following arguments are required: --prompt"),
], ids=["bad_temperature", "argparse_type", "argparse_missing"])
def test_generate_main_user_errors(capsys, args, expected):
    with pytest.raises(SystemExit) as exit_info:
        cli.run("generate", generate_cli.main, args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and err.startswith("generate: error: ")
    assert expected in err


def _multi_line_error(argv):
    raise cli.UserError("data.jsonl:3: bad\n  second line")


def test_user_errors_print_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.run("tool", _multi_line_error, [])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "tool: error: data.jsonl:3: bad; second line\n"
    with pytest.raises(SystemExit):  # a plain ValueError raised by the project's own checks
        cli.run("tool", lambda argv: sampler.SamplingConfig(top_p=2.0), [])
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
