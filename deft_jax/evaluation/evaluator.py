"""Evaluation: restore a run's checkpoint (or the base model) and score its task on the eval split.

    python -m deft_jax.evaluate --workdir DIR                  # the latest checkpoint
    python -m deft_jax.evaluate --workdir DIR --step 500       # one step ('all': every checkpoint)
    python -m deft_jax.evaluate --workdir DIR --base           # the run's model before fine-tuning
    python -m deft_jax.evaluate --config configs/nll.py:runlocal --config.data.num_eval=100 --base --out_dir DIR

Two kinds of scores, both on the run config's eval split (config.data, split 'eval'):

  teacher-forced  the trainer's forward pass and objective over the supervised tokens (response + EOS),
                  summed over every eval batch, then divided once (token means over all tokens):
                  nll = Σ −log p / N, token_accuracy = Σ [argmax z = y] / N, mean_p = Σ p / N,
                  mean_gate, mean_alpha (the objective's gate and deformed-log exponent), mean_entropy
                  (H = −Σ π log π of the predicted distribution), loss = the objective's Σ sum / Σ den.
                  It equals the trainer's eval/nll for the same params and data.
  generation      greedy decoding (at most max_new_tokens new tokens, stopping at EOS) of each eval
                  prompt, scored as the paper scores its task by deft_jax.scoring.score: FigFont by
                  Jaro-Winkler similarity (5 new tokens), GSM8K by final-number match, MATH by
                  equivalence of the final boxed answer, reasoning-gym tasks by their own score_answer.

Restoring works on whatever devices are present: the parameters (only) are read from
<workdir>/checkpoints/<step>/state onto the evaluation mesh (the run's mesh when it fits the devices,
else data parallelism over all of them). Results go to <out_dir>/step_<N>.json and .md (base.json/.md
for --base); out_dir defaults to <workdir>/eval.
"""
from __future__ import annotations

import dataclasses
import pathlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from deft_jax import data as data_lib
from deft_jax import errors, reporting
from deft_jax import sharding as sharding_lib
from deft_jax.evaluation import scoring
from deft_jax.inference import sampler
from deft_jax.training import checkpointing
from deft_jax.training import config as config_lib
from deft_jax.training import setup as build
from deft_jax.training import step as step_lib
from deft_jax.training import teacher_forced

DEFAULT_MAX_NEW_TOKENS = {"figfont": 5, "gsm8k": 256, "math": 1024, "reasoning_gym": 64}


class EvaluationError(errors.UserError):
    """Bad input to evaluation (workdir, step, checkpoint/config mismatch); the message says what to do."""


# ====================================================================================================
# Teacher-forced metrics.

def teacher_forced_metrics(setup: build.Setup, params, tokenized: Sequence[Any], *,
                           batch_size: int | None = None) -> dict[str, float]:
    """Token means over every supervised eval token (see the module docstring), by the trainer's own
    teacher-forced path (each process feeds its rows of each global batch)."""
    means = teacher_forced.eval_means(setup, params, tokenized, batch_size=batch_size)
    return {**{name: means.get(name, float("nan")) for name in step_lib.TEACHER_FORCED_METRICS},
            "supervised_tokens": means["supervised_tokens"], "examples": len(tokenized)}


# ====================================================================================================
# Generation-based scores.

def max_new_tokens_for(scoring_task: str | None, *, requested: int | None) -> int:
    """`requested` when given, else the task's default (DEFAULT_MAX_NEW_TOKENS)."""
    if requested:
        return int(requested)
    if scoring_task not in DEFAULT_MAX_NEW_TOKENS:
        raise EvaluationError(f"no default generation length for scoring task {scoring_task!r}; pass "
                              f"--max_new_tokens.")
    return DEFAULT_MAX_NEW_TOKENS[scoring_task]


def score_predictions(prompts: Sequence[Any], predictions: Sequence[str]) -> list[float]:
    """scoring.score of each prediction against its prompt's reference (and reasoning-gym entry)."""
    if len(prompts) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(prompts)} prompts")
    return [scoring.score(prompt.scoring_task, prediction=prediction, reference=prompt.reference,
                          entry=prompt.entry)
            for prompt, prediction in zip(prompts, predictions)]


def generate_predictions(setup: build.Setup, params, prompts: Sequence[Any], *, max_new_tokens: int,
                         batch_size: int) -> tuple[list[str], dict[str, float]]:
    """Greedy continuations (text, special tokens skipped) of each prompt, in the prompts' order, and
    timing: 'seconds' (all, compilation included), 'examples_per_second' (all), and
    'steady_examples_per_second' (batches after the first, i.e. without most compilation; NaN with one
    batch). Prompts are batched by length (less padding)."""
    options = sampler.SamplerOptions(sampling=sampler.SamplingConfig(max_new_tokens=max_new_tokens))
    stops = sampler.StopCriteria(token_ids=(setup.tokenizer.eos_id,))
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].prompt_ids))
    texts: list[str | None] = [None] * len(prompts)
    new_tokens = 0
    batch_seconds, batch_rows = [], []
    for first in range(0, len(order), batch_size):
        chunk = order[first:first + batch_size]
        start = time.perf_counter()
        samples = sampler.generate(params, setup.model_config, [prompts[i].prompt_ids.tolist() for i in chunk],
                                   stops=stops, pad_id=setup.tokenizer.pad_id, options=options,
                                   decode_text=lambda ids: setup.tokenizer.decode(ids, skip_special_tokens=True),
                                   mesh=setup.mesh, rules=setup.rules)
        batch_seconds.append(time.perf_counter() - start)
        batch_rows.append(len(chunk))
        new_tokens += sum(s.num_tokens for s in samples)
        for index, sample in zip(chunk, samples):
            texts[index] = sample.text
    seconds = sum(batch_seconds)
    steady = sum(batch_rows[1:]) / sum(batch_seconds[1:]) if len(batch_rows) > 1 else float("nan")
    return texts, {"seconds": seconds, "examples_per_second": len(prompts) / seconds if seconds else float("nan"),
                   "steady_examples_per_second": steady, "new_tokens": new_tokens}


def generation_metrics(setup: build.Setup, params, examples: Sequence[Any], *, max_new_tokens: int | None,
                       batch_size: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(summary, per-example records) of greedy generation scored by deft_jax.scoring; the summary is
    {'skipped': reason} when the task has no scorer or reference."""
    tasks = sorted({str(example.scoring_task) for example in examples})
    if not examples or any(example.scoring_task is None for example in examples):
        return {"skipped": f"the eval examples have no scoring task (data.task={setup.config.data.task!r}); "
                           f"set data.reference_field for a file task to score generations"}, []
    if len(tasks) != 1:
        raise EvaluationError(f"the eval split mixes scoring tasks {tasks}; evaluate one task at a time.")
    task = tasks[0]
    length = max_new_tokens_for(task, requested=max_new_tokens)
    prompts = data_lib.make_generation_prompts(list(examples), tokenizer=setup.tokenizer)
    predictions, timing = generate_predictions(setup, params, prompts, max_new_tokens=length,
                                               batch_size=batch_size)
    scores = score_predictions(prompts, predictions)
    records = [{"index": prompt.index, "source": prompt.source, "reference": prompt.reference,
                "prediction": prediction, "score": value}
               for prompt, prediction, value in zip(prompts, predictions, scores)]
    summary = {"scoring_task": task, "score": float(np.mean(scores)), "num_scored": len(scores),
               "max_new_tokens": length, "batch_size": batch_size, **timing}
    return summary, records


# ====================================================================================================
# One evaluation, reports.

@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """Knobs of one evaluation (CLI flags)."""

    num_eval: int | None = None  # first N eval examples (None = the config's whole eval split)
    max_new_tokens: int | None = None  # None = the task default
    batch_size: int | None = None  # rows per teacher-forced batch (None = config.eval.batch_size)
    generation_batch_size: int | None = None  # prompts per generate call (None = config.eval.batch_size)
    generate: bool = True
    teacher_forced: bool = True


def eval_examples(config, *, num_eval: int | None) -> list[Any]:
    """The eval split of config.data (its first `num_eval` examples when given)."""
    examples = data_lib.load_examples(config.data, split="eval")
    if num_eval is not None:
        if num_eval < 1:
            raise EvaluationError(f"--num_eval={num_eval}: must be >= 1")
        examples = examples[:num_eval]
    return examples


def evaluate_params(setup: build.Setup, params, *, examples: Sequence[Any], options: EvalOptions) -> dict[str, Any]:
    """Teacher-forced and generation scores of `params` on `examples`."""
    result: dict[str, Any] = {}
    if options.teacher_forced:
        tokenized, report = data_lib.tokenize_examples(list(examples), tokenizer=setup.tokenizer,
                                                       cfg=setup.config.data,
                                                       vocab_size=setup.model_config.vocab_size)
        result["teacher_forced"] = teacher_forced_metrics(setup, params, tokenized, batch_size=options.batch_size)
        result["truncation"] = report.summary()
    if options.generate:
        summary, records = generation_metrics(
            setup, params, examples, max_new_tokens=options.max_new_tokens,
            batch_size=options.generation_batch_size or setup.config.eval.batch_size)
        result["generation"] = summary
        result["predictions"] = records
    return result


def run_description(setup: build.Setup, *, workdir, step: int | None) -> dict[str, Any]:
    config = setup.config
    return {"workdir": None if workdir is None else str(workdir), "step": step, "base": step is None,
            "model": config.model.name, "objective": str(setup.loss.objective), "task": config.data.task,
            "devices": f"{len(setup.mesh.devices.flat)} x {jax.default_backend()}",
            "mesh": {name: int(size) for name, size in setup.mesh.shape.items()}}


def summary_row(result: Mapping[str, Any]) -> dict[str, Any]:
    """The headline numbers of one evaluation: 'examples' counts the teacher-forced examples (those kept by
    data.truncation), 'generated' the prompts decoded and scored."""
    row = {"row": reporting.report_name(result.get("step")), "examples": None}
    teacher = result.get("teacher_forced") or {}
    for name in step_lib.TEACHER_FORCED_METRICS:
        row[name] = teacher.get(name)
    row["examples"] = teacher.get("examples")
    generation = result.get("generation") or {}
    if "score" in generation:
        row[f"score ({generation['scoring_task']})"] = generation["score"]
        row["generated"] = generation["num_scored"]
        row["examples/s"] = generation["examples_per_second"]
    return row


def markdown_report(result: Mapping[str, Any], *, max_samples: int = 10) -> str:
    """The Markdown report of one evaluation: what was evaluated, the table, a few generations."""
    title = "Base model (no fine-tuning)" if result["base"] else f"Step {result['step']}"
    lines = [f"# Evaluation: {title}", "",
             f"- workdir: `{result['workdir']}`" if result["workdir"] else "- config only (no workdir)",
             f"- model: `{result['model']}`, objective: `{result['objective']}`, task: `{result['task']}`",
             f"- devices: {result['devices']}, mesh {result['mesh']}"]
    if "truncation" in result:
        lines.append(f"- eval data: {result['truncation']}")
    generation = result.get("generation") or {}
    if "skipped" in generation:
        lines.append(f"- generation: skipped ({generation['skipped']})")
    elif generation:
        lines.append(f"- generation: greedy, at most {generation['max_new_tokens']} new tokens, "
                     f"{generation['num_scored']} prompts in {generation['seconds']:.1f}s "
                     f"({generation['examples_per_second']:.2f} examples/s, batches of {generation['batch_size']})")
    lines += ["", reporting.markdown_table([summary_row(result)]), ""]
    samples = (result.get("predictions") or [])[:max_samples]
    if samples:
        lines += ["## Generations (first %d)" % len(samples), "", "| index | reference | prediction | score |",
                  "|---|---|---|---|"]
        for record in samples:
            cells = [record["index"], repr(record["reference"])[:80], repr(record["prediction"])[:120],
                     record["score"]]
            lines.append("| " + " | ".join(reporting.format_cell(cell) for cell in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_reports(result: Mapping[str, Any], *, out_dir: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """<out_dir>/<step_N|base>.json and .md, each written atomically."""
    name = reporting.report_name(result["step"])
    return (reporting.write_json(pathlib.Path(out_dir) / f"{name}.json", dict(result)),
            reporting.write_text(pathlib.Path(out_dir) / f"{name}.md", markdown_report(result)))


def evaluate_run(*, workdir: str | pathlib.Path | None = None, config=None, steps: str | int | None = None,
                 base: bool = False, out_dir: str | pathlib.Path | None = None,
                 options: EvalOptions = EvalOptions(), devices: Sequence[Any] | None = None,
                 write: bool = True) -> list[dict[str, Any]]:
    """Evaluate the checkpoints `steps` of the run in `workdir` (or its base model, or the base model of
    `config` without a workdir); returns one result dict per evaluation and writes its reports (process 0).
    Across several processes (config.distributed or $DEFT_COORDINATOR_ADDRESS ...), each feeds its own rows
    of every teacher-forced batch and all get the same result."""
    if workdir is None and config is None:
        raise EvaluationError("pass --workdir (a training run) or --config with --base.")
    if workdir is None and not base:
        raise EvaluationError("--config without --workdir evaluates the base model: add --base (or pass the "
                              "--workdir of a run to evaluate its checkpoints).")
    if config is None:
        config = build.load_run_config(workdir)
    else:
        config_lib.validate(config)  # --config.* overrides are applied after get_config
    sharding_lib.maybe_initialize_distributed(config.distributed)  # several hosts: each feeds its own rows
    if out_dir is None:
        if workdir is None:
            raise EvaluationError("--base with --config and no --workdir needs --out_dir for its reports.")
        out_dir = pathlib.Path(workdir) / "eval"
    step_list = [None] if base else checkpointing.resolve_steps(workdir=workdir, requested=steps)
    setup = build.setup(config, devices=devices, mesh_fallback=True)
    examples = eval_examples(config, num_eval=options.num_eval)
    results = []
    for step in step_list:
        params = setup.initial_params() if step is None else setup.restore_params(workdir=workdir, step=step)
        result = run_description(setup, workdir=workdir, step=step)
        result.update(evaluate_params(setup, params, examples=examples, options=options))
        result["time"] = time.time()
        if write and jax.process_index() == 0:
            result["reports"] = [str(path) for path in write_reports(result, out_dir=out_dir)]
        results.append(result)
        del params
    return results
