"""Tsallis q-log: −ln_q p = (1 − p^(1−q))/(1 − q), gate p^(1−q) (the deformed-log family with q = 1 − α)."""
from configs import base


def get_config(arg=None):
    """`arg`: q=<float ≤ 1> (default 0.5), runlocal, smoke, model=..., task=... (see configs/base.py)."""
    return base.objective_config(arg, "tsallis", q=0.5)


def sweep():
    """q = 1 − α over the deformed-log grid."""
    return [{"objective.q": q} for q in (0.9, 0.75, 0.5, 0.25, 0.0, -1.0, -9.0)]
