"""The experiments' config (experiments/study.py): one objective on one capability regime, CPU-sized.

Regimes (experiments/README.md; chosen by the base model's measured mean target probability,
experiments/measure_prior.py):
    weak          FigFont (the paper's weak-prior task)                     measured mean p 0.010
    intermediate  reasoning-gym word_sorting (default settings, seed 1)     measured mean p 0.343
    strong        reasoning-gym number_sorting (default settings, seed 1)   measured mean p 0.656
Every regime uses the same budget: `steps` optimizer steps of `batch` rows, lr `lr`, the paper's AdamW
(0.9, 0.95), weight decay 0.01, cosine schedule with 10% warmup, grad-norm clip 1.0, float32 on CPU.

Arguments (comma-separated, after the file name), besides base.py's common ones (smoke, model=, ...):
    objective=<name>   nll | prob | dft | eaft | cayley | deft | deformed_log (default nll)
    alpha=<float>      deformed_log's α (default 0.5; ignored by the other objectives)
    regime=<name>      weak | intermediate | strong (default weak)
    noise=<float>      fraction of corrupted FigFont answers in the train split (default 0; which ones: by seed)
    seed=<int>         model/optimizer seed and data shuffle seed (default 0)
    steps=, batch=, lr=, num_train=, num_eval=   the budget (defaults: the full study's)
    smoke              tiny random model + byte tokenizer, a few steps (tests, seconds)
e.g. `python -m deft_jax.train --config configs/study.py:objective=deft,regime=strong --workdir DIR`.
"""
import pathlib

import ml_collections

from configs import base
from deft_jax.training import config as config_lib

OBJECTIVES = ("nll", "prob", "dft", "eaft", "cayley", "deft", "deformed_log")
REGIMES = ("weak", "intermediate", "strong")

# data.* fields per regime (full study, SmolLM2 tokenizer). Measured tokens per example (mean, max of 16):
# FigFont 210, 438 (the 256 cap drops ≈ 14%, counted in the trainer's log); word_sorting 136, 154;
# number_sorting 259, 307. Longer items are dropped, never truncated.
REGIME_DATA = {
    "weak": dict(task="figfont", max_length=256),
    "intermediate": dict(task="reasoning_gym:word_sorting", rg_seed=1, rg_eval_start=10_000, max_length=192),
    "strong": dict(task="reasoning_gym:number_sorting", rg_seed=1, rg_eval_start=10_000, max_length=320),
}
# The full study's budget: the train step runs ≈115 tokens/s for the 135M model on a small CPU
# (measured, experiments/README.md), so 16 steps of 6 rows = one epoch of 96 examples, as the paper
# trains one epoch; lr 1e-4 rather than the paper's 5e-5 because we take 16 steps instead of its ~156
# (40,000 / 256): see experiments/README.md.
FULL_BUDGET = dict(steps=16, batch=6, lr=1e-4, num_train=96, num_eval=32)
# Layers per scan iteration: >= SmolLM2's 30, i.e. fully unrolled (same numbers; faster on CPU).
FULL_SCAN_UNROLL = 64
# Full runs share XLA's persistent compilation cache: runs with the same objective and row length (seeds,
# noise, regimes of equal length) skip recompiling the 135M train step.
COMPILATION_CACHE = str(pathlib.Path(__file__).resolve().parents[1] / "runs" / "xla_cache")
# Smoke: the same regimes' tasks at tiny sizes (FigFont art is up to ~940 bytes: byte tokenizer).
SMOKE_BUDGET = dict(steps=2, batch=8, lr=1e-3, num_train=16, num_eval=8)
# Smoke: rows of 512 bytes, so FigFont uses 2-letter words and number_sorting short integer lists there.
SMOKE_MAX_LENGTH = 512
SMOKE_RG_KWARGS = {"weak": dict(min_word_len=2, max_word_len=2), "intermediate": dict(max_words=5),
                   "strong": dict(min_numbers=3, max_numbers=4, min_decimals=0, max_decimals=0, min_value=0,
                                  max_value=99)}


def _spec():
    return dict(objective="nll", alpha=0.5, regime="weak", noise=0.0, seed=0, steps=0, batch=0, lr=0.0,
                num_train=0, num_eval=0)


def objective_params(name: str, *, alpha: float) -> dict:
    """config.objective's parameters for `name` (the objectives' own defaults otherwise)."""
    if name not in OBJECTIVES:
        raise config_lib.ConfigError(f"config argument objective={name!r} is not one of {OBJECTIVES}")
    return {"alpha": alpha} if name == "deformed_log" else {}


def set_regime_data(config: ml_collections.ConfigDict, *, regime: str, smoke: bool) -> None:
    """config.data for `regime` (its task, item ranges, generator settings, lengths)."""
    if regime not in REGIMES:
        raise config_lib.ConfigError(f"config argument regime={regime!r} is not one of {REGIMES}")
    fields = dict(REGIME_DATA[regime])
    rg_kwargs = fields.pop("rg_kwargs", {})
    for key, value in fields.items():
        config.data[key] = value
    if smoke:
        config.data.max_length = SMOKE_MAX_LENGTH
        rg_kwargs = SMOKE_RG_KWARGS[regime]
    config.data.rg_kwargs = ml_collections.ConfigDict(rg_kwargs)
    config.data.system_prompt = None  # the task default (FigFont: the paper's prompt)
    config.data.seq_len = config.data.max_length  # one row length: the step compiles once
    config.data.bucket_lengths = ()
    config.data.truncation = "drop"


def get_config(arg=None):
    parsed = base.parse_arg(arg, **_spec())
    if parsed.runlocal:
        raise config_lib.ConfigError("configs/study.py has its own budget; use `smoke` or the defaults, not `runlocal`.")
    config = base.get_base_config(parsed)
    budget = dict(SMOKE_BUDGET if parsed.smoke else FULL_BUDGET)
    for key in budget:
        if parsed[key]:
            budget[key] = parsed[key]
    set_regime_data(config, regime=parsed.regime, smoke=parsed.smoke)
    if parsed.task:
        config.data.task = parsed.task
    config.data.num_train = budget["num_train"]
    config.data.num_eval = budget["num_eval"]
    config.data.noise_fraction = float(parsed.noise)
    if parsed.noise > 0:  # each seed corrupts its own examples, so the spread covers which labels are wrong
        config.data.noise_seed = parsed.seed
    config.data.shuffle_seed = parsed.seed
    config.seed = parsed.seed
    config.model.dtype = "float32"  # bf16 matmuls are slow on CPUs
    if not parsed.smoke:
        config.model.scan_unroll = FULL_SCAN_UNROLL
    config.batch_size = budget["batch"]
    config.micro_batch_size = budget["batch"]
    config.total_steps = budget["steps"]
    config.optim.lr = budget["lr"]
    config.checkpoint.every_steps = budget["steps"]  # the final checkpoint only (resume = rerun)
    config.checkpoint.keep = 1
    config.checkpoint.async_save = False
    config.eval.at_end = False  # deft_jax.evaluate scores every run the same way afterwards
    config.eval.batch_size = 8
    config.log_every = 1  # per-step metrics (mean alpha, mean p) for the dynamics figure
    config.progress = "off"
    config.tensorboard = False
    config.compilation_cache_dir = "" if parsed.smoke else COMPILATION_CACHE
    base.set_objective(config, parsed.objective, **objective_params(parsed.objective, alpha=parsed.alpha))
    return base.finalize(config)


def sweep():
    """The continuum study's objectives (experiments/study.py continuum runs them on every regime)."""
    return [{"objective.name": name} for name in OBJECTIVES if name != "deformed_log"]
