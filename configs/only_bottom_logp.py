"""Official 'OnlyBottomLogP-τ': −log p on tokens with p ≤ τ; the others leave the sum and the token count."""
from configs import base


def get_config(arg=None):
    """`arg`: tau=<float in [0, 1]> (default 0.5), runlocal, smoke, model=..., task=... (see configs/base.py)."""
    return base.objective_config(arg, "only_bottom_logp", tau=0.5)


def sweep():
    """Thresholds τ."""
    return [{"objective.tau": tau} for tau in (0.1, 0.3, 0.5, 0.7, 0.9)]
