"""EAFT (arXiv 2601.02151): sg(H̃)^β·(−log p), H̃ = normalised entropy of the top-k (k = 20) distribution."""
from configs import base


def get_config(arg=None):
    """`arg`: power=<β ≥ 0> (default 1), k=<int ≥ 1> (default 20), runlocal, smoke, model=..., task=... (see configs/base.py)."""
    return base.objective_config(arg, "eaft", power=1.0, k=20)


def sweep():
    """Exponents β on the normalised top-k entropy."""
    return [{"objective.power": power} for power in (0.5, 1.0, 2.0)]
