"""Official 'Cayley_Trans': (1 − p^α*)/(α* + 1e-8), α* = clamp(f + (1 − f)(1 − r)/(1 + r), 0.001, 1), r = 1 − p,\nf = 0.5 · mean p over the valid tokens of each micro-batch (the floor couples the tokens of a micro-batch)."""
from configs import base


def get_config(arg=None):
    """`arg`: floor_scale=<float in [0, 1]> (default 0.5), runlocal, smoke, model=..., task=... (see configs/base.py)."""
    return base.objective_config(arg, "cayley", floor_scale=0.5)


def sweep():
    """Floor scales (official 0.5)."""
    return [{"objective.floor_scale": scale} for scale in (0.0, 0.25, 0.5, 0.75)]
