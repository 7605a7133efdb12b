"""Deformed-log family (official 'GeneralFamily-α'): (1 − p^α)/α, gate p^α; α → 0 is NLL, α = 1 is −p."""
from configs import base


def get_config(arg=None):
    """`arg`: alpha=<float ≥ 0> (default 0.5), runlocal, smoke, model=..., task=... (see configs/base.py)."""
    return base.objective_config(arg, "deformed_log", alpha=0.5)


def sweep():
    """The paper's grid of focus indices α."""
    return [{"objective.alpha": alpha} for alpha in (0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 10.0)]
