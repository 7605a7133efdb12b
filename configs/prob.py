"""−p objective (official 'p'): 1 − p, gate p (deformed-log with α = 1)."""
import pathlib
import sys

_REPO_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _REPO_ROOT not in sys.path:  # so that `configs.base` imports from any working directory
    sys.path.insert(0, _REPO_ROOT)
from configs import base  # noqa: E402


def get_config(arg=None):
    """`arg`: runlocal, smoke, model=..., task=... (see configs/base.py)."""
    return base.objective_config(arg, "prob")


def sweep():
    """No objective parameter: three seeds."""
    return [{"seed": seed} for seed in (0, 1, 2)]
