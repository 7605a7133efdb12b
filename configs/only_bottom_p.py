"""Official 'OnlyBottomP-τ': (1 − p) on tokens with p ≤ τ; the others leave the sum and the token count."""
import pathlib
import sys

_REPO_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _REPO_ROOT not in sys.path:  # so that `configs.base` imports from any working directory
    sys.path.insert(0, _REPO_ROOT)
from configs import base  # noqa: E402


def get_config(arg=None):
    """`arg`: tau=<float in [0, 1]> (default 0.5), runlocal, smoke, model=..., task=... (see configs/base.py)."""
    return base.objective_config(arg, "only_bottom_p", tau=0.5)


def sweep():
    """Thresholds τ."""
    return [{"objective.tau": tau} for tau in (0.1, 0.3, 0.5, 0.7, 0.9)]
