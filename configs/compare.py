"""Objectives side by side on one task: NLL, −p and DEFT, each a run of the same config.

    python -m deft_jax.sweep --config configs/compare.py:runlocal --workdir runs/compare --base

`--base` adds the base model's row. The summary (summary.md/.csv/.png in the workdir) has, per objective,
the task's greedy-generation figures on the held-out prompts (FigFont: exact match and Jaro-Winkler) and
the teacher-forced mean target probability. `arg` takes the common args (runlocal, smoke, model=...,
task=...; see configs/base.py).
"""
from configs import base

OBJECTIVES = ("nll", "prob", "deft")


def get_config(arg=None):
    config = base.get_base_config(base.parse_arg(arg))
    base.set_objective(config, OBJECTIVES[0])
    config.eval.report_prompts = 0  # the sweep's summary compares every run with the base model once
    return base.finalize(config)


def sweep():
    """One run per objective, at the objectives' default parameters (DEFT: the official ε = 1e-6)."""
    return [{"objective.name": name} for name in OBJECTIVES]
