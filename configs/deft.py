"""DEFT (arXiv 2602.11424): (1 − p^α)/(α + ε), α = sg(Σ_v π_v²) (collision probability), official ε = 1e-6."""
from configs import base


def get_config(arg=None):
    """`arg`: epsilon=<float ≥ 0> (default 1e-6, official; 0 = exact family), runlocal, smoke, model=..., task=... (see configs/base.py)."""
    return base.objective_config(arg, "deft", epsilon=1e-6)


def sweep():
    """The official ε and the exact family (ε = 0)."""
    return [{"objective.epsilon": epsilon} for epsilon in (1e-6, 0.0)]
