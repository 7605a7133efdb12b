"""tests/conftest.py itself: under CI=true a skip (a missing test dependency above all) fails; the slow
marker is registered; the compilation cache settings. (Subprocesses: tests/integration/test_compilation_cache.py.)"""

import os
import pathlib
import pytest
from tests import conftest


class CIHooks:
    """Only the report hooks: the inner sessions must not set up (and remove) a cache of their own."""
    pytest_runtest_makereport = staticmethod(conftest.pytest_runtest_makereport)
    pytest_make_collect_report = staticmethod(conftest.pytest_make_collect_report)


MISSING_AT_MODULE_LEVEL = """
import pytest
pytest.importorskip("deft_jax_no_such_module")

def test_never_runs():
    pass
"""


SKIPS_INSIDE_TESTS = """
import pytest

def test_missing_module():
    pytest.importorskip("deft_jax_no_such_module", reason="a second, optional reference")

def test_plain_skip():
    pytest.skip("not on this machine")

@pytest.mark.xfail(reason="known bug", strict=True)
def test_expected_failure():
    assert False

def test_passes():
    pass
"""


def _run(pytester, monkeypatch, source, *, ci):
    pytester.makepyfile(test_inner=source)
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rA", plugins=[CIHooks()])


@pytest.mark.parametrize("ci", [None, "false", "1"])
def test_outside_ci_a_missing_module_skips(pytester, monkeypatch, ci):
    result = _run(pytester, monkeypatch, MISSING_AT_MODULE_LEVEL, ci=ci)
    result.assert_outcomes(skipped=1)
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED


def test_in_ci_a_module_level_importorskip_fails_collection_naming_the_module(pytester, monkeypatch):
    result = _run(pytester, monkeypatch, MISSING_AT_MODULE_LEVEL, ci="true")
    result.assert_outcomes(errors=1)
    assert result.ret != pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*skipped under CI=true*could not import 'deft_jax_no_such_module'*"])


def test_in_ci_every_skip_inside_a_test_fails_but_xfail_and_passes_stand(pytester, monkeypatch):
    outside = _run(pytester, monkeypatch, SKIPS_INSIDE_TESTS, ci=None)
    outside.assert_outcomes(passed=1, skipped=2, xfailed=1)
    inside = _run(pytester, monkeypatch, SKIPS_INSIDE_TESTS, ci="true")
    inside.assert_outcomes(passed=1, failed=2, xfailed=1)
    inside.stdout.fnmatch_lines(["*skipped under CI=true*a second, optional reference*",
                                 "*skipped under CI=true*not on this machine*"])


def test_the_slow_marker_is_registered(pytestconfig):
    assert any(line.startswith("slow:") for line in pytestconfig.getini("markers"))


def test_this_process_uses_the_sessions_compilation_cache():
    import jax

    assert jax.config.jax_compilation_cache_dir == os.environ["JAX_COMPILATION_CACHE_DIR"]
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
    assert pathlib.Path(jax.config.jax_compilation_cache_dir).is_dir()


def test_tests_compile_without_backend_optimizations():
    import jax

    assert os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] == "1"
    assert jax.config.values["jax_disable_most_optimizations"] is True


@pytest.mark.full_optimization
def test_a_full_optimization_test_compiles_as_users_do():
    import jax

    assert jax.config.values["jax_disable_most_optimizations"] is False



def test_the_suite_and_its_subprocesses_compile_with_the_older_emitters_and_compile_as_users_undoes_it():
    from tests.helpers.compiling import TEST_XLA_FLAGS, USER_CPU_COMPILER_OPTIONS
    from tests.helpers.runs import subprocess_env

    assert TEST_XLA_FLAGS in os.environ["XLA_FLAGS"].split()
    env = subprocess_env(devices=2)
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=2", TEST_XLA_FLAGS]
    # compile_as_users sets back every option the suite's flags change (tests/training/test_step.py's
    # bit-for-bit comparisons fail without it).
    assert TEST_XLA_FLAGS.split() == [f"--{name}={str(not value).lower()}"
                                      for name, value in USER_CPU_COMPILER_OPTIONS.items()]
