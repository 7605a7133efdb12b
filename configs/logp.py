"""The official 'logp' string: −log p, i.e. NLL under its official alias (same numbers as nll.py)."""
import pathlib
import sys

_REPO_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _REPO_ROOT not in sys.path:  # so that `configs.base` imports from any working directory
    sys.path.insert(0, _REPO_ROOT)
from configs import base  # noqa: E402


def get_config(arg=None):
    """`arg`: runlocal, smoke, model=..., task=... (see configs/base.py)."""
    return base.objective_config(arg, "logp")


def sweep():
    """No objective parameter: three seeds."""
    return [{"seed": seed} for seed in (0, 1, 2)]
