"""Test-wide setup.

- 8 fake CPU devices (set before jax is imported), so sharding is tested for real.
- The `slow` marker (end-to-end tests that spawn `python -m deft_jax.<tool>` processes):
  `-m "not slow"` runs the fast tier alone. Modules with slow tests are collected first (the longest
  files start first under `--dist loadfile`).
- One persistent JAX compilation cache per test session, shared by the xdist workers and every
  subprocess they start, so a program compiled once (the tiny model's train step, its eval step, ...)
  is loaded from disk afterwards instead of being compiled again. DEFT_TEST_COMPILATION_CACHE=<dir>
  keeps the cache in <dir> across sessions instead.
- XLA CPU's older loop emitters (tests/helpers/compiling.py, also inherited by subprocesses): the suite's
  tiny programs compile faster (docs/testing.md has the figures); tests that compare two programs bit for
  bit compile both as users' are (`compile_as_users`).
- XLA's backend (LLVM) optimisations off (`JAX_DISABLE_MOST_OPTIMIZATIONS=1`, JAX's switch for smoke
  tests, inherited by every subprocess): the same programs with less-optimised machine code, ~30% less
  wall time for the suite's tiny programs. Tests marked `full_optimization` (the TPU compiler's figures:
  memory, time estimates) compile with the optimisations users get.
- CI=true: a skipped test (e.g. a test dependency missing, `pytest.importorskip`) fails instead.
"""
import os
import pathlib
import shutil
import sys
import tempfile

from tests.helpers.compiling import TEST_XLA_FLAGS

os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {TEST_XLA_FLAGS}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import pytest  # noqa: E402

from tests.helpers.tiny_tokenizer import TinyChatTokenizer  # noqa: E402

pytest_plugins = ["pytester"]  # tests/test_conftest.py runs small pytest sessions with these hooks

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# DEFT_SHARED_DATA points elsewhere when the checkout does not sit beside shared/ (e.g. a git worktree).
SHARED_DATA = pathlib.Path(os.environ.get("DEFT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

KEEP_CACHE_ENV = "DEFT_TEST_COMPILATION_CACHE"
_WORKER_KEY = "deft_compilation_cache"  # xdist: the controller hands its cache directory to each worker
_OWNED = pytest.StashKey[str]()  # a cache directory this process created, removed at the end
_CACHE = pytest.StashKey[str]()
# Every program is cached (the tiny test programs compile in well under JAX's 1 s default threshold).
# A size limit switches on JAX's file lock, so concurrent workers and subprocesses never read a
# half-written entry; 8 GiB is far above what the suite writes.
CACHE_SETTINGS = {
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    "JAX_COMPILATION_CACHE_MAX_SIZE": str(8 << 30),
}


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: end-to-end tests that spawn deft_jax processes (deselect with -m 'not slow')")
    config.addinivalue_line(
        "markers", "full_optimization: compile with XLA's backend optimisations on (the TPU compiler's figures)")
    if hasattr(config, "workerinput"):  # an xdist worker: use the controller's cache
        directory = config.workerinput[_WORKER_KEY]
    elif os.environ.get(KEEP_CACHE_ENV):
        directory = str(pathlib.Path(os.environ[KEEP_CACHE_ENV]).absolute())
    else:
        directory = tempfile.mkdtemp(prefix="deft_jax_test_xla_cache_")
        config.stash[_OWNED] = directory
    config.stash[_CACHE] = directory
    use_compilation_cache(directory)
    if not _is_xdist_controller(config):  # the processes that run tests
        count_cache_events(config)


def _is_xdist_controller(config) -> bool:
    return not hasattr(config, "workerinput") and bool(getattr(config.option, "numprocesses", None))


CACHE_EVENTS = {"/jax/compilation_cache/compile_requests_use_cache": "requests",
                "/jax/compilation_cache/cache_hits": "hits"}
_COUNTS = pytest.StashKey[dict]()


def count_cache_events(config) -> None:
    """Count this process's compilation-cache requests and hits (JAX's monitoring events)."""
    import jax

    counts = config.stash[_COUNTS] = {"requests": 0, "hits": 0}

    def listener(event, **kwargs):
        if event in CACHE_EVENTS:
            counts[CACHE_EVENTS[event]] += 1
    jax.monitoring.register_event_listener(listener)


def use_compilation_cache(directory: str) -> None:
    """Point this process and every subprocess it starts (they inherit os.environ) at `directory`."""
    os.environ["JAX_COMPILATION_CACHE_DIR"] = directory
    os.environ.update(CACHE_SETTINGS)
    if "jax" in sys.modules:  # imported already: the environment was read; set the live config too
        import jax

        jax.config.update("jax_compilation_cache_dir", directory)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        jax.config.update("jax_compilation_cache_max_size", int(CACHE_SETTINGS["JAX_COMPILATION_CACHE_MAX_SIZE"]))


@pytest.hookimpl(optionalhook=True)
def pytest_collection_modifyitems(session, config, items):
    """Modules holding `slow` tests first, each module's tests in their own order: with `--dist loadfile`
    the workers take files in this order, so the longest files start first and no worker is left
    finishing one long end-to-end file alone at the end."""
    slow_modules = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    order = {item.nodeid: index for index, item in enumerate(items)}
    items.sort(key=lambda item: (item.nodeid.split("::")[0] not in slow_modules, order[item.nodeid]))


@pytest.fixture(autouse=True)
def _backend_optimizations(request):
    """Tests marked `full_optimization` compile with XLA's backend optimisations on, as users do."""
    if request.node.get_closest_marker("full_optimization") is None:
        yield
        return
    import jax

    before = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", before)


def pytest_configure_node(node):
    """xdist (controller side): every worker shares the controller's cache directory."""
    node.workerinput[_WORKER_KEY] = node.config.stash[_CACHE]


def pytest_sessionfinish(session):
    """xdist worker: send its counts to the controller."""
    if hasattr(session.config, "workeroutput") and _COUNTS in session.config.stash:
        session.config.workeroutput[_WORKER_KEY] = dict(session.config.stash[_COUNTS])


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """xdist controller: add up the workers' counts."""
    counts = getattr(node, "workeroutput", {}).get(_WORKER_KEY)
    if counts:
        total = node.config.stash.setdefault(_COUNTS, {"requests": 0, "hits": 0})
        for key in total:
            total[key] += counts[key]


def pytest_terminal_summary(terminalreporter, config):
    counts = config.stash.get(_COUNTS, None)
    if counts and counts["requests"]:
        terminalreporter.write_line(
            f"compilation cache {config.stash[_CACHE]}: {counts['hits']} of {counts['requests']} compilations in "
            "the test processes read back (subprocesses not counted)")


def pytest_unconfigure(config):
    owned = config.stash.get(_OWNED, None)
    if owned:
        shutil.rmtree(owned, ignore_errors=True)


# ---- CI=true: no silent skips ------------------------------------------------------------------

def skips_fail() -> bool:
    return os.environ.get("CI") == "true"


def _fail_skip(report) -> None:
    """Turn a skipped report into a failure that says why it was skipped."""
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    report.outcome = "failed"
    report.longrepr = (f"skipped under CI=true, which allows no skips: {reason}\n"
                       "(a missing module: install the test extras, pip install -e \".[test]\")")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if skips_fail() and report.skipped and not hasattr(report, "wasxfail"):
        _fail_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """A module-level `pytest.importorskip` skips the whole module at collection."""
    report = yield
    if skips_fail() and report.skipped:
        _fail_skip(report)
    return report


@pytest.fixture(scope="session")
def shared_data_dir():
    """../shared/data (GSM8K, MATH500 files); the project reads them from there, never copies them."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"expected the shared data folder at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A shared TinyChatTokenizer (ChatML, byte-level BPE; <pad>=0, <|im_end|>=2 is EOS)."""
    return TinyChatTokenizer()
