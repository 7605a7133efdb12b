"""DFT (Wu et al. 2025): sg(p)·(−log p), gate p (the gradient of −p, the value of a scaled NLL)."""
from configs import base


def get_config(arg=None):
    """`arg`: runlocal, smoke, model=..., task=... (see configs/base.py)."""
    return base.objective_config(arg, "dft")


def sweep():
    """No objective parameter: three seeds."""
    return [{"seed": seed} for seed in (0, 1, 2)]
