"""Plain NLL (−log p; official 'original'), gate 1: the SFT baseline."""
from configs import base


def get_config(arg=None):
    """`arg`: runlocal, smoke, model=..., task=... (see configs/base.py)."""
    return base.objective_config(arg, "nll")


def sweep():
    """No objective parameter: three seeds."""
    return [{"seed": seed} for seed in (0, 1, 2)]
