"""Test-wide setup: 8 fake CPU devices (set before jax is imported) so sharding is tested for real."""
import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

from helpers.tiny_tokenizer import TinyChatTokenizer  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# DEFT_SHARED_DATA points elsewhere when the checkout does not sit beside shared/ (e.g. a git worktree).
SHARED_DATA = pathlib.Path(os.environ.get("DEFT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


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


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: multi-process or long tests (deselect with -m 'not slow')")
