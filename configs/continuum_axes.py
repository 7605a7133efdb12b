"""The continuum's axes study (experiments/continuum/axes_run.py): configs/continuum.py's model, budgets and
objectives, with the ambiguity dial and the fit/generalisation split of experiments/continuum/axes.py.

Arguments: configs/continuum.py's, plus
    ambiguity=<float>  the fraction of the target's symbols with a valid alternative (default 0)
Pretraining level 0 never sees the target, so it is shared by every ambiguity setting; levels i > 0 form
one chain per setting. Paths (under root): data/pretrain-level0.jsonl, data/pretrain-amb<a>-level<i>.jsonl,
data/sft-amb<a>-seed<s>-noise<f>.jsonl, data/eval-{fit,gen,retention}-amb<a>.jsonl; pretrain/level0,
pretrain/amb<a>/level<i>.
e.g. `python -m deft_jax.train --config configs/continuum_axes.py:stage=sft,level=3,ambiguity=0.5,
objective=deft,root=runs/continuum_axes --workdir DIR` once the data and pretraining runs exist.
"""
import pathlib

from configs import continuum
from deft_jax.training import config as config_lib

AMBIGUITY = (0.0, 0.25, 0.5)
LEVELS = (0, 2, 3, 4)
SEEDS = continuum.SEEDS
NOISE = continuum.NOISE
GRID_OBJECTIVES = (
    ("nll", {}), ("prob", {}),
    ("deformed_log", {"alpha": 0.25}), ("deformed_log", {"alpha": 0.5}), ("deformed_log", {"alpha": 0.75}),
    ("cayley", {}), ("deft", {"epsilon": 1e-6}),
)
EVAL_SETS = ("fit", "gen", "retention")
SFT_LR = 3e-4  # the SFT learning rate (configs/continuum.py uses 1e-3; see experiments/README.md)
SPEC = dict(stage="sft", root="runs/continuum", level=0, seed=0, objective="nll", alpha=0.5, epsilon=1e-6,
            noise=0.0)  # configs/continuum.py's arguments and defaults


def amb_name(ambiguity: float) -> str:
    return f"amb{ambiguity:g}"


def paths(*, root: str, level: int, seed: int, noise: float, ambiguity: float) -> dict:
    root = pathlib.Path(root)
    a = amb_name(ambiguity)

    def run(x):
        return root / "pretrain" / continuum.level_name(0) if x == 0 else root / "pretrain" / a / continuum.level_name(x)

    out = {"pretrain_data": root / "data" / ("pretrain-level0.jsonl" if level == 0
                                             else f"pretrain-{a}-{continuum.level_name(level)}.jsonl"),
           "sft_data": root / "data" / f"sft-{a}-seed{seed}-noise{noise:g}.jsonl",
           "pretrain_run": run(level), "previous_level_run": run(level - 1) if level > 0 else None}
    out.update({f"eval_{name}": root / "data" / f"eval-{name}-{a}.jsonl" for name in EVAL_SETS})
    return out


def get_config(arg=None):
    items = [item for item in (arg or "").split(",") if item]
    ambiguity = 0.0
    rest = []
    for item in items:
        key, _, value = item.partition("=")
        if key.strip() == "ambiguity":
            try:
                ambiguity = float(value)
            except ValueError:
                raise config_lib.ConfigError(f"config argument ambiguity={value!r} is not a number") from None
        else:
            rest.append(item)
    if not 0.0 <= ambiguity <= 1.0:
        raise config_lib.ConfigError(f"config argument ambiguity={ambiguity} must lie in [0, 1]")
    config = continuum.get_config(",".join(rest))
    parsed = continuum.base.parse_arg(",".join(rest), **SPEC)
    where = paths(root=parsed.root, level=parsed.level, seed=parsed.seed, noise=parsed.noise, ambiguity=ambiguity)
    config.unlock()
    pretrain = parsed.stage == "pretrain"
    config.data.path = str(where["pretrain_data"] if pretrain else where["sft_data"])
    config.data.eval_path = str(where["eval_fit"])
    config.data.num_eval = None
    if pretrain:
        config.model.init_from = str(where["previous_level_run"]) if parsed.level > 0 else ""
    else:
        config.model.init_from = str(where["pretrain_run"])
        config.optim.lr = SFT_LR
    config.lock()
    return config


def sweep(*, levels=LEVELS, ambiguity=AMBIGUITY, noise=NOISE, seeds=SEEDS, objectives=GRID_OBJECTIVES):
    """Every SFT run of the axes study, seed-major."""
    return [{"level": level, "ambiguity": a, "seed": seed, "noise": f, "objective": name, **params}
            for seed in seeds for a in ambiguity for f in noise for level in levels for name, params in objectives]
