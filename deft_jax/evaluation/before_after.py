"""The base model against the fine-tuned one on the same held-out prompts: did fine-tuning work?

For a run's workdir it evaluates two parameter sets with the evaluator's own functions, on the first
`num_prompts` examples of the eval split (items the run never trained on):
  base        the run's step-0 weights (the pretrained model);
  step N      the run's latest checkpoint.
Each row has the greedy-generation figures of the task (FigFont: exact match, case-insensitive match and
Jaro-Winkler, the paper's three; other tasks: the task's score) and the teacher-forced mean target
probability p̄ = Σ p·mask / Σ mask over the supervised tokens. The generations are kept in the report,
so every figure can be recomputed from it (`figures_from_generations`).

Writes <workdir>/eval/before_after.json and .md; `markdown` is the table the train command prints.
"""
from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from deft_jax import reporting
from deft_jax.evaluation import evaluator, scoring
from deft_jax.training import checkpointing
from deft_jax.training import setup as build

REPORT_NAME = "before_after"


def figures_from_generations(records: Sequence[Mapping[str, Any]], *, scoring_task: str) -> dict[str, float]:
    """Means over `records` (the evaluator's saved generations: 'prediction', 'reference', 'score') of the
    task's generation figures: FigFont's three recomputed from the text (scoring.figfont_metrics), other
    tasks their per-answer 'score' (some scorers need the reasoning-gym entry, which is not saved)."""
    if scoring_task == "figfont":
        per_answer = [scoring.figfont_metrics(prediction=r["prediction"], reference=r["reference"]) for r in records]
    else:
        per_answer = [{"score": float(r["score"])} for r in records]
    return {name: float(np.mean([figures[name] for figures in per_answer])) for name in per_answer[0]}


def row_of(result: Mapping[str, Any], *, label: str) -> dict[str, Any]:
    """One table row of an evaluator result."""
    generation = result.get("generation") or {}
    teacher = result.get("teacher_forced") or {}
    row: dict[str, Any] = {"model": label}
    if result.get("predictions"):
        row.update(figures_from_generations(result["predictions"], scoring_task=generation["scoring_task"]))
    row["mean_p"] = teacher.get("mean_p")
    row["prompts"] = generation.get("num_scored")
    row["scored_tokens"] = teacher.get("supervised_tokens")
    return row


def compare(config, *, workdir: str | pathlib.Path, num_prompts: int, devices=None) -> dict[str, Any]:
    """Evaluate the base model and the latest checkpoint of the run in `workdir` on the first `num_prompts`
    held-out prompts; writes the report and returns it ({'rows', 'results', 'step', paths})."""
    workdir = pathlib.Path(workdir)
    step = checkpointing.resolve_steps(workdir=workdir, requested="latest")[-1]
    setup = build.setup(config, devices=devices, mesh_fallback=True)
    examples = evaluator.eval_examples(config, num_eval=num_prompts)
    options = evaluator.EvalOptions(num_eval=num_prompts)
    results = {}
    for label, load in (("base", setup.initial_params),
                        (f"step {step}", lambda: setup.restore_params(workdir=workdir, step=step))):
        params = load()
        results[label] = evaluator.evaluate_params(setup, params, examples=examples, options=options)
        del params
    report = {"workdir": str(workdir), "step": step, "model": config.model.name, "task": config.data.task,
              "objective": str(setup.loss.objective), "num_prompts": num_prompts,
              "rows": [row_of(result, label=label) for label, result in results.items()],
              "results": results}
    out_dir = workdir / "eval"
    report["json"] = str(reporting.write_json(out_dir / f"{REPORT_NAME}.json", report))
    report["markdown"] = str(reporting.write_text(out_dir / f"{REPORT_NAME}.md", markdown(report)))
    return report


def markdown(report: Mapping[str, Any]) -> str:
    """The before/after table with what it measured and where the full report and logs are."""
    workdir = pathlib.Path(report["workdir"])
    return "\n".join([
        f"Fine-tuning {report['model']} with {report['objective']} on {report['task']}: base model vs step "
        f"{report['step']}, greedy generation on the first {report['num_prompts']} held-out prompts "
        "(mean_p: teacher-forced mean target probability)",
        "",
        reporting.markdown_table(list(report["rows"])),
        "",
        f"report: {workdir / 'eval' / (REPORT_NAME + '.md')} (generations in {REPORT_NAME}.json); "
        f"TensorBoard: tensorboard --logdir {workdir / 'tensorboard'}",
    ])
