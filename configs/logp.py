"""The official 'logp' string: −log p, i.e. NLL under its official alias (same numbers as nll.py)."""
from configs import base


def get_config(arg=None):
    """`arg`: runlocal, smoke, model=..., task=... (see configs/base.py)."""
    return base.objective_config(arg, "logp")


def sweep():
    """No objective parameter: three seeds."""
    return [{"seed": seed} for seed in (0, 1, 2)]
