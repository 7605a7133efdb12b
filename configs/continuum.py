"""The capability continuum (experiments/continuum): a tiny Llama pretrained from scratch on a synthetic
family of string maps, then fine-tuned on the target map; the prior on the target is a dial.

The dial is the number of target-map examples the model saw in pretraining. Level 0 is pretrained from
random init on the other maps only (the target's tag never appears); level i > 0 continues level i − 1
(model.init_from) on a mixture with TARGET_FRACTION target-map examples until LEVEL_STEPS[i] steps of it
in all. Every level is measured (its mean target probability p on the SFT data), not assumed.

One config per run, two stages:
    stage=pretrain  level 0: random init, other maps only; level i: continues level i − 1 (NLL)
    stage=sft       starts from the pretraining run of `level` (model.init_from), SFT on target-map examples

Arguments (comma-separated, after the file name), besides base.py's common ones:
    stage=<name>       pretrain | sft (default sft)
    root=<dir>         the study directory: data under <root>/data, pretraining runs under <root>/pretrain
    level=<int>        the prior level (index into LEVEL_STEPS; default 0)
    seed=<int>         SFT: data sample, order and which labels are wrong (pretraining uses seed 0)
    objective=<name>   one of OBJECTIVES (default nll); alpha=<float> (deformed_log), epsilon=<float> (deft)
    noise=<float>      fraction of SFT answers replaced by random strings (default 0)
    smoke              a smaller budget (tests, seconds)
e.g. `python -m deft_jax.train --config configs/continuum.py:stage=sft,level=2,objective=deft,root=runs/continuum
--workdir DIR` after the data and the pretraining run exist (experiments/continuum/run.py makes both).
"""
import pathlib

import ml_collections

from configs import base
from deft_jax.training import config as config_lib

STAGES = ("pretrain", "sft")
OBJECTIVES = ("nll", "prob", "dft", "deformed_log", "eaft", "cayley", "deft")
# The grid: prior levels, seeds, label noise, and the objectives (name, parameters) compared.
# Steps of target-rich pretraining per level (cumulative); level 0 never saw the target map.
LEVEL_STEPS = (0, 5, 10, 20, 40, 80)
TARGET_FRACTION = 0.5
LEVELS = tuple(range(len(LEVEL_STEPS)))
SEEDS = (0, 1, 2, 3, 4)
NOISE = (0.0, 0.2)
# DFT (its gradient is −p's) and DEFT with ε = 0 (the same gate to within ε/Σπ²) are not in the grid: runs
# of them could only confirm those identities, which tests/experiments/test_continuum.py checks directly. The
# committed results (experiments/continuum/results) predate this and still hold their columns.
GRID_OBJECTIVES = (
    ("nll", {}), ("prob", {}),
    ("deformed_log", {"alpha": 0.25}), ("deformed_log", {"alpha": 0.5}), ("deformed_log", {"alpha": 0.75}),
    ("eaft", {}), ("cayley", {}), ("deft", {"epsilon": 1e-6}),
)

WORLD = dict(num_maps=4, seed=1234, length=8)
# The model: ModelConfig.tiny (d = 64, 2 layers, 4 heads) with a wider MLP, byte-level tokenizer.
MODEL = dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=16, d_ff=256)
# Row length in bytes: ChatML framing (19) + "f0 c" + the answer (8) + EOS = 32.
SEQ_LEN = 32
BUDGETS = {
    # examples are generated to the budget: steps x batch (one epoch)
    ("pretrain", False): dict(steps=150, batch=64, lr=3e-3),
    ("level", False): dict(batch=64, lr=1e-3),
    ("sft", False): dict(steps=16, batch=16, lr=1e-3),
    ("pretrain", True): dict(steps=40, batch=32, lr=3e-3),
    ("level", True): dict(batch=32, lr=1e-3),
    ("sft", True): dict(steps=4, batch=16, lr=1e-3),
}
SMOKE_LEVEL_STEPS = (0, 40)
NUM_EVAL = {False: 32, True: 32}  # the eval set is every start symbol once


def level_steps(*, smoke: bool) -> tuple:
    return SMOKE_LEVEL_STEPS if smoke else LEVEL_STEPS


def _spec():
    return dict(stage="sft", root="runs/continuum", level=0, seed=0, objective="nll", alpha=0.5, epsilon=1e-6,
                noise=0.0)


def level_name(level: int) -> str:
    return f"level{level}"


def paths(*, root: str, level: int, seed: int, noise: float) -> dict:
    """Where the data files and the pretraining run of `level` live under `root`."""
    root = pathlib.Path(root)
    return {"pretrain_data": root / "data" / f"pretrain-{level_name(level)}.jsonl",
            "sft_data": root / "data" / f"sft-seed{seed}-noise{noise:g}.jsonl",
            "eval_data": root / "data" / "eval.jsonl",
            "pretrain_run": root / "pretrain" / level_name(level),
            "previous_level_run": root / "pretrain" / level_name(level - 1)}


def objective_params(name: str, *, alpha: float, epsilon: float) -> dict:
    """config.objective's parameters for `name` (the objectives' own defaults otherwise)."""
    if name not in OBJECTIVES:
        raise config_lib.ConfigError(f"config argument objective={name!r} is not one of {OBJECTIVES}")
    return {"deformed_log": {"alpha": alpha}, "deft": {"epsilon": epsilon}}.get(name, {})


def get_config(arg=None):
    parsed = base.parse_arg(arg, **_spec())
    if parsed.stage not in STAGES:
        raise config_lib.ConfigError(f"config argument stage={parsed.stage!r} is not one of {STAGES}")
    if parsed.runlocal:
        raise config_lib.ConfigError("configs/continuum.py has its own budget; use `smoke` or the defaults, not `runlocal`.")
    steps = level_steps(smoke=parsed.smoke)
    if not 0 <= parsed.level < len(steps):
        raise config_lib.ConfigError(f"config argument level={parsed.level} must lie in [0, {len(steps) - 1}]")
    if not 0.0 <= parsed.noise < 1.0:
        raise config_lib.ConfigError(f"config argument noise={parsed.noise} must lie in [0, 1)")
    config = base.get_base_config(ml_collections.ConfigDict({**base.COMMON_ARGS, "smoke": True}))
    pretrain = parsed.stage == "pretrain"
    where = paths(root=parsed.root, level=parsed.level, seed=parsed.seed, noise=parsed.noise)
    if not pretrain:
        budget = BUDGETS[("sft", parsed.smoke)]
        init_from = where["pretrain_run"]
    elif parsed.level == 0:
        budget = BUDGETS[("pretrain", parsed.smoke)]
        init_from = ""
    else:
        budget = {**BUDGETS[("level", parsed.smoke)], "steps": steps[parsed.level] - steps[parsed.level - 1]}
        init_from = where["previous_level_run"]
    config.model.overrides = ml_collections.ConfigDict(MODEL)
    config.model.init_from = str(init_from)
    config.data.task = "jsonl"
    config.data.path = str(where["pretrain_data"] if pretrain else where["sft_data"])
    config.data.eval_path = str(where["eval_data"])
    config.data.prompt_field, config.data.response_field = "prompt", "response"
    config.data.reference_field = "clean_response"  # generations are scored against the clean answer
    config.data.num_train = None
    config.data.num_eval = NUM_EVAL[parsed.smoke]
    config.data.max_length = SEQ_LEN
    config.data.seq_len = SEQ_LEN
    config.data.shuffle_seed = 0 if pretrain else parsed.seed
    config.seed = 0 if pretrain else parsed.seed
    config.batch_size = budget["batch"]
    config.micro_batch_size = budget["batch"]
    config.total_steps = budget["steps"]
    config.optim.lr = budget["lr"]
    config.checkpoint.every_steps = budget["steps"]  # the final checkpoint only
    config.checkpoint.keep = 1
    config.checkpoint.async_save = False
    config.eval.at_end = False  # the study evaluates every run with deft_jax.evaluate afterwards
    config.eval.batch_size = 64
    config.log_every = 1 if not pretrain else 50
    config.tensorboard = False
    config.progress = "off"
    # The cache is process-wide: a smoke run (tests, in-process) keeps the caller's.
    config.compilation_cache_dir = "" if parsed.smoke else str(pathlib.Path(parsed.root).absolute() / "xla_cache")
    if pretrain:
        base.set_objective(config, "nll")
    else:
        base.set_objective(config, parsed.objective, **objective_params(parsed.objective, alpha=parsed.alpha,
                                                                         epsilon=parsed.epsilon))
    return base.finalize(config)


def sweep():
    """Every SFT run of the study: {config argument: value} per run (stage=sft; root and smoke are the
    runner's)."""
    return [{"level": level, "seed": seed, "noise": noise, "objective": name, **params}
            for seed in SEEDS for noise in NOISE for level in LEVELS for name, params in GRID_OBJECTIVES]
