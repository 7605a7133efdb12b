"""`python -m deft_jax.evaluate --suite` end to end: an unknown suite is one line, exit status 2."""

import pytest


@pytest.mark.slow
def test_cli_bad_suite_is_one_line_exit_2(tmp_path):
    from tests.helpers.runs import run_module, subprocess_env

    done = run_module("deft_jax.evaluate", "--suite=maths", "--config=configs/nll.py:smoke", "--base",
                      f"--out_dir={tmp_path}", env=subprocess_env(devices=1))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == ("evaluate: error: unknown suite 'maths' (did you mean 'math'?); "
                                                    "known: figfont, math, medical")
