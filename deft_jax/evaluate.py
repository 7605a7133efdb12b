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
import functools
import json
import math
import pathlib
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from deft_jax import checkpointing
from deft_jax import model as model_lib
from deft_jax import objectives
from deft_jax import scoring
from deft_jax import sharding as sharding_lib

# Generation length per scoring task when --max_new_tokens is not given. FigFont: the paper's 5 new
# tokens; the others are bounds long enough for a short worked answer (raise them for real runs).
DEFAULT_MAX_NEW_TOKENS = {"figfont": 5, "gsm8k": 256, "math": 1024, "reasoning_gym": 64}
TEACHER_FORCED_METRICS = ("nll", "token_accuracy", "mean_p", "mean_gate", "mean_alpha", "mean_entropy", "loss")
BASE_NAME = "base"


class EvaluationError(ValueError):
    """Bad input to evaluation (workdir, step, checkpoint/config mismatch); the message says what to do."""


# ====================================================================================================
# Runs, configs and checkpoints on disk.

def load_run_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The resolved config the trainer saved as <workdir>/config.json, validated (not device-checked)."""
    from deft_jax import train

    workdir = pathlib.Path(workdir)
    if not workdir.is_dir():
        raise FileNotFoundError(f"workdir {str(workdir)!r} does not exist; pass the --workdir of a training run.")
    path = workdir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {workdir} is not a training run's workdir (the trainer "
                                f"writes config.json there when it starts).")
    try:
        config = ml_collections.ConfigDict(json.loads(path.read_text()))
    except json.JSONDecodeError as error:
        raise EvaluationError(f"{path}: invalid JSON at line {error.lineno}: {error.msg}") from None
    try:
        train.validate_config(config, check_devices=False)
    except ValueError as error:
        raise EvaluationError(f"{path}: {error}") from None
    return config


def available_steps(workdir: str | pathlib.Path) -> list[int]:
    """Steps with a complete checkpoint under <workdir>/checkpoints (ascending; [] when none)."""
    directory = checkpointing.checkpoint_dir(workdir)
    if not directory.is_dir():
        return []
    manager = checkpointing.make_manager(directory=directory, read_only=True, async_save=False)
    try:
        return sorted(int(step) for step in manager.all_steps())
    finally:
        manager.close()


def resolve_steps(*, workdir: str | pathlib.Path, requested: str | int | None) -> list[int]:
    """`requested`: None or 'latest' (the latest checkpoint), 'all', or a step number."""
    steps = available_steps(workdir)
    if not steps:
        raise FileNotFoundError(f"no checkpoint under {checkpointing.checkpoint_dir(workdir)}: the run has not "
                                f"saved one yet (or --workdir points elsewhere). Use --base to evaluate the model "
                                f"before fine-tuning.")
    if requested in (None, "", "latest"):
        return [steps[-1]]
    if requested == "all":
        return steps
    try:
        step = int(requested)
    except (TypeError, ValueError):
        raise EvaluationError(f"--step={requested!r}: expected a step number, 'latest' or 'all'.") from None
    if step not in steps:
        raise EvaluationError(f"--step={step}: there is no checkpoint for step {step} under "
                              f"{checkpointing.checkpoint_dir(workdir)}; available steps: {steps}.")
    return [step]


def checkpoint_param_shapes(*, workdir: str | pathlib.Path, step: int) -> dict[str, tuple[tuple, str]]:
    """{'/'-joined parameter path: (shape, dtype)} of the params stored in a checkpoint (metadata only)."""
    import orbax.checkpoint as ocp

    path = checkpointing.checkpoint_dir(workdir) / str(step) / checkpointing.STATE_ITEM
    metadata = ocp.PyTreeCheckpointer().metadata(path)
    tree = metadata.item_metadata.tree if hasattr(metadata, "item_metadata") else metadata.tree
    if not isinstance(tree, Mapping) or "params" not in tree:
        raise EvaluationError(f"{path} holds no 'params' entry (found {sorted(tree) if isinstance(tree, Mapping) else type(tree).__name__}); "
                              "it was not written by deft_jax.train.")
    return {_path_name(p): (tuple(leaf.shape), str(leaf.dtype))
            for p, leaf in jax.tree_util.tree_flatten_with_path(tree["params"])[0]}


def _path_name(path) -> str:
    return "/".join(str(getattr(key, "key", getattr(key, "name", key))) for key in path)


def shape_differences(*, stored: Mapping[str, tuple[tuple, str]], expected: Any) -> list[str]:
    """Human-readable differences between a checkpoint's params and an abstract params tree."""
    wanted = {_path_name(p): tuple(leaf.shape) for p, leaf in jax.tree_util.tree_flatten_with_path(expected)[0]}
    problems = []
    for name in sorted(set(wanted) | set(stored)):
        if name not in stored:
            problems.append(f"{name}: missing from the checkpoint (config expects {wanted[name]})")
        elif name not in wanted:
            problems.append(f"{name}: in the checkpoint {stored[name][0]} but not in the config's model")
        elif stored[name][0] != wanted[name]:
            problems.append(f"{name}: checkpoint {stored[name][0]} vs config {wanted[name]}")
    return problems


# ====================================================================================================
# Model, mesh and parameters.

@dataclasses.dataclass
class EvalSetup:
    """What evaluation needs besides the parameters (built once per run)."""

    config: Any
    mesh: Any
    rules: Any
    tokenizer: Any
    model_config: model_lib.ModelConfig
    loss: Any  # train.LossSpec
    abstract_params: Any
    param_shardings: Any


def evaluation_mesh(config, *, devices: Sequence[Any] | None = None):
    """The run's (data, fsdp, tensor) mesh when its sizes fit the devices present, else pure data
    parallelism over all of them (printed, so the choice is visible)."""
    devices = list(jax.devices() if devices is None else devices)
    try:
        return sharding_lib.mesh_from_config(config.mesh, devices=devices)
    except ValueError as error:
        print(f"evaluate: the run's mesh does not fit the {len(devices)} device(s) present ({error}); "
              f"evaluating with data parallelism over all of them.", file=sys.stderr)
        return sharding_lib.make_mesh(data=-1, fsdp=1, tensor=1, devices=devices)


def build_setup(config, *, devices: Sequence[Any] | None = None) -> EvalSetup:
    """Mesh, tokenizer, model config, loss spec and parameter shardings of `config` (no weights)."""
    from deft_jax import train

    mesh = evaluation_mesh(config, devices=devices)
    rules = sharding_lib.logical_rules(base_rules=model_lib.DEFAULT_LOGICAL_RULES, overrides=config.mesh.rules)
    tokenizer = train.build_tokenizer(config)
    base = None if config.model.name == train.TINY_MODEL else train.pretrained_architecture(config)
    model_config = train.build_model_config(config, tokenizer=tokenizer, base=base)
    abstract_params, shardings = train.param_shardings(model_config, mesh=mesh, rules=rules)
    loss = train.LossSpec(model_config=model_config, objective=train.objective_spec(config),
                          normalization=config.loss.normalization, impl=config.loss.impl,
                          chunk_size=config.loss.chunk_size)
    return EvalSetup(config=config, mesh=mesh, rules=rules, tokenizer=tokenizer, model_config=model_config,
                     loss=loss, abstract_params=abstract_params, param_shardings=shardings)


def restore_params(setup: EvalSetup, *, workdir: str | pathlib.Path, step: int) -> Any:
    """The params of checkpoint `step` placed on the evaluation mesh (the optimizer state is not read).

    Raises EvaluationError listing the tensors whose shapes differ when the checkpoint was written by
    another model config.
    """
    import orbax.checkpoint as ocp

    problems = shape_differences(stored=checkpoint_param_shapes(workdir=workdir, step=step),
                                 expected=setup.abstract_params)
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise EvaluationError(
            f"checkpoint {checkpointing.checkpoint_dir(workdir) / str(step)} was written by a different model "
            f"config than {pathlib.Path(workdir) / 'config.json'} describes ({len(problems)} parameter(s) "
            f"differ):\n  {shown}\nEvaluate it with the config it was trained with.")
    target = {"params": sharding_lib.with_shardings(setup.abstract_params, setup.param_shardings)}
    restore_args = jax.tree.map(
        lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype), target)
    manager = checkpointing.make_manager(directory=checkpointing.checkpoint_dir(workdir), read_only=True,
                                         async_save=False)
    try:
        restored = manager.restore(int(step), args=ocp.args.Composite(**{
            checkpointing.STATE_ITEM: ocp.args.PyTreeRestore(target, restore_args=restore_args,
                                                             partial_restore=True)}))
    finally:
        manager.close()
    return restored[checkpointing.STATE_ITEM]["params"]


def base_params(setup: EvalSetup) -> Any:
    """The run's weights before fine-tuning: the pretrained checkpoint, or the trainer's random init
    (config.model.init='random', same seed, so identical to the trainer's step-0 parameters)."""
    from deft_jax import train

    config = setup.config
    if config.model.init_from:
        return checkpointing.restore_params(
            workdir=config.model.init_from,
            target=sharding_lib.with_shardings(setup.abstract_params, setup.param_shardings))
    if config.model.init == "pretrained":
        _, params = train.load_pretrained(config, mesh=setup.mesh, rules=setup.rules)
        if jax.tree.structure(params) != jax.tree.structure(setup.abstract_params):
            convert = model_lib.stacked_params if setup.model_config.scan_layers else model_lib.unstacked_params
            params = convert(params, setup.model_config)
        return params
    optimizer = train.make_optimizer(b1=config.optim.b1, b2=config.optim.b2, eps=config.optim.eps,
                                     weight_decay=config.optim.weight_decay)
    _, state_shardings = train.abstract_train_state(setup.model_config, optimizer=optimizer, mesh=setup.mesh,
                                                    rules=setup.rules)
    state = train.init_train_state(model_config=setup.model_config, optimizer=optimizer, seed=config.seed,
                                   state_shardings=state_shardings)
    return state.params


# ====================================================================================================
# Teacher-forced metrics.

def _max_logit_chunked(hidden, weight, *, chunk_size: int):
    """max_v (h W)_v per token without the [tokens, V] logits (chunks of `chunk_size` tokens)."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    n = flat.shape[0]
    padded = -(-n // chunk_size) * chunk_size
    flat = jnp.pad(flat, ((0, padded - n), (0, 0))).reshape(-1, chunk_size, flat.shape[-1])
    maxima = jax.lax.map(lambda h: jnp.max(jnp.einsum("cd,dv->cv", h, weight,
                                                      preferred_element_type=jnp.float32), axis=-1), flat)
    return maxima.reshape(-1)[:n].reshape(hidden.shape[:-1])


def teacher_forced_sums(params, batch, *, loss) -> dict[str, jax.Array]:
    """Additive sums of one eval batch (rows weighted by batch['weights']); means are taken once at the end.

    Same forward and objective as the trainer's eval step (train.objective_output), plus the argmax hit
    count for token accuracy.
    """
    from deft_jax import fused

    batch = dict(batch)
    mask = batch["loss_mask"] * batch.pop("weights")[:, None]
    targets = batch["targets"]
    forward = functools.partial(model_lib.forward, params, loss.model_config, batch["inputs"],
                                positions=batch["positions"], segment_ids=batch["segment_ids"])
    if loss.impl == "chunked":
        hidden = forward(return_hidden=True)
        weight = model_lib.lm_head_weight(params, loss.model_config).astype(hidden.dtype)
        stats = fused.chunked_token_stats(hidden, weight, targets, chunk_size=loss.chunk_size,
                                          topk=objectives.required_topk(loss.objective))
        output = objectives.objective_from_stats(loss.objective, stats, mask)
        hits = stats.target_logit >= _max_logit_chunked(hidden, weight, chunk_size=loss.chunk_size)
    else:
        logits = forward()
        output = objectives.compute(loss.objective, logits, targets, mask)
        hits = jnp.argmax(logits, axis=-1) == targets
    total, denominator = objectives.reduce_output(output, normalization=loss.normalization,
                                                  segment_ids=batch["segment_ids"])
    valid = mask != 0
    sums = {f"{name}_sum": pair[0] for name, pair in objectives.token_metrics(output, mask).items()}
    sums.update(loss_sum=total, denominator=denominator,
                supervised_tokens=jnp.sum(valid.astype(jnp.float32)),
                correct_sum=jnp.sum(jnp.where(valid, hits, False).astype(jnp.float32)))
    return sums


# One compiled program per (loss spec, batch shapes and shardings), reused across runs and steps.
_teacher_forced_sums_jit = jax.jit(teacher_forced_sums, static_argnames=("loss",))


def eval_token_batches(setup: EvalSetup, tokenized: Sequence[Any], *, batch_size: int) -> list[dict]:
    """The eval batches (fixed order, one example per row, weights 0 for padding rows) as the trainer
    builds them, with `batch_size` rows per global batch."""
    from deft_jax import data as data_lib

    config = setup.config
    return data_lib.make_eval_batches(list(tokenized), batch_size=batch_size,
                                      seq_len=data_lib.row_length(config.data),
                                      buckets=tuple(config.data.bucket_lengths), pad_id=setup.tokenizer.pad_id)


def eval_batch_size(requested: int, *, mesh) -> int:
    """`requested` rounded up to a multiple of the data-parallel size (extra rows are zero-weight padding)."""
    shards = sharding_lib.data_parallel_size(mesh)
    return -(-requested // shards) * shards


def teacher_forced_metrics(setup: EvalSetup, params, tokenized: Sequence[Any], *,
                           batch_size: int | None = None) -> dict[str, float]:
    """Token means over every supervised eval token (see the module docstring)."""
    from deft_jax import train

    batch_size = eval_batch_size(batch_size or setup.config.eval.batch_size, mesh=setup.mesh)
    batches = eval_token_batches(setup, tokenized, batch_size=batch_size)
    keys = train.BATCH_KEYS + ("weights",)
    totals = None
    with train.mesh_context(setup.mesh, setup.rules):
        for batch in batches:
            arrays = {key: jax.device_put(batch[key], sharding_lib.batch_sharding(setup.mesh, ndim=batch[key].ndim))
                      for key in keys}
            sums = _teacher_forced_sums_jit(params, arrays, loss=setup.loss)
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = {key: float(value) for key, value in jax.device_get(totals).items()}
    count = totals["supervised_tokens"]

    def mean(name):
        return totals[name] / count if count and name in totals else float("nan")

    return {
        "nll": mean("nll_sum"),
        "token_accuracy": mean("correct_sum"),
        "mean_p": mean("p_sum"),
        "mean_gate": mean("gate_sum"),
        "mean_alpha": mean("alpha_sum"),
        "mean_entropy": mean("entropy_sum"),
        "loss": totals["loss_sum"] / totals["denominator"] if totals["denominator"] else float("nan"),
        "supervised_tokens": count,
        "examples": len(tokenized),
    }


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


def generate_predictions(setup: EvalSetup, params, prompts: Sequence[Any], *, max_new_tokens: int,
                         batch_size: int) -> tuple[list[str], dict[str, float]]:
    """Greedy continuations (text, special tokens skipped) of each prompt, in the prompts' order, and
    timing: 'seconds' (all, compilation included), 'examples_per_second' (all), and
    'steady_examples_per_second' (batches after the first, i.e. without most compilation; NaN with one
    batch). Prompts are batched by length (less padding)."""
    from deft_jax import generate as generate_lib

    sampling = generate_lib.SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].prompt_ids))
    texts: list[str | None] = [None] * len(prompts)
    new_tokens = 0
    batch_seconds, batch_rows = [], []
    for first in range(0, len(order), batch_size):
        chunk = order[first:first + batch_size]
        start = time.perf_counter()
        result = generate_lib.generate(params, setup.model_config, [prompts[i].prompt_ids.tolist() for i in chunk],
                                       stop_ids=[setup.tokenizer.eos_id], sampling=sampling,
                                       pad_id=setup.tokenizer.pad_id)
        batch_seconds.append(time.perf_counter() - start)
        batch_rows.append(len(chunk))
        new_tokens += result.generated_tokens
        for index, tokens in zip(chunk, result.tokens):
            texts[index] = setup.tokenizer.decode(tokens, skip_special_tokens=True)
    seconds = sum(batch_seconds)
    steady = sum(batch_rows[1:]) / sum(batch_seconds[1:]) if len(batch_rows) > 1 else float("nan")
    return texts, {"seconds": seconds, "examples_per_second": len(prompts) / seconds if seconds else float("nan"),
                   "steady_examples_per_second": steady, "new_tokens": new_tokens}


def generation_metrics(setup: EvalSetup, params, examples: Sequence[Any], *, max_new_tokens: int | None,
                       batch_size: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(summary, per-example records) of greedy generation scored by deft_jax.scoring; the summary is
    {'skipped': reason} when the task has no scorer or reference."""
    from deft_jax import data as data_lib

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
    from deft_jax import data as data_lib

    examples = data_lib.load_examples(config.data, split="eval")
    if num_eval is not None:
        if num_eval < 1:
            raise EvaluationError(f"--num_eval={num_eval}: must be >= 1")
        examples = examples[:num_eval]
    return examples


def evaluate_params(setup: EvalSetup, params, *, examples: Sequence[Any], options: EvalOptions) -> dict[str, Any]:
    """Teacher-forced and generation scores of `params` on `examples`."""
    from deft_jax import data as data_lib

    result: dict[str, Any] = {}
    if options.teacher_forced:
        tokenized, report = data_lib.tokenize_examples(list(examples), tokenizer=setup.tokenizer,
                                                       cfg=setup.config.data)
        result["teacher_forced"] = teacher_forced_metrics(setup, params, tokenized, batch_size=options.batch_size)
        result["truncation"] = report.summary()
    if options.generate:
        summary, records = generation_metrics(
            setup, params, examples, max_new_tokens=options.max_new_tokens,
            batch_size=options.generation_batch_size or setup.config.eval.batch_size)
        result["generation"] = summary
        result["predictions"] = records
    return result


def run_description(setup: EvalSetup, *, workdir, step: int | None) -> dict[str, Any]:
    config = setup.config
    return {"workdir": None if workdir is None else str(workdir), "step": step, "base": step is None,
            "model": config.model.name, "objective": str(setup.loss.objective), "task": config.data.task,
            "devices": f"{len(setup.mesh.devices.flat)} x {jax.default_backend()}",
            "mesh": {name: int(size) for name, size in setup.mesh.shape.items()}}


def report_name(step: int | None) -> str:
    return BASE_NAME if step is None else f"step_{step}"


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def _format(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def summary_row(result: Mapping[str, Any]) -> dict[str, Any]:
    """The headline numbers of one evaluation: 'examples' counts the teacher-forced examples (those kept by
    data.truncation), 'generated' the prompts decoded and scored."""
    row = {"row": report_name(result.get("step")), "examples": None}
    teacher = result.get("teacher_forced") or {}
    for name in TEACHER_FORCED_METRICS:
        row[name] = teacher.get(name)
    row["examples"] = teacher.get("examples")
    generation = result.get("generation") or {}
    if "score" in generation:
        row[f"score ({generation['scoring_task']})"] = generation["score"]
        row["generated"] = generation["num_scored"]
        row["examples/s"] = generation["examples_per_second"]
    return row


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_format(row.get(column)) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


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
    lines += ["", markdown_table([summary_row(result)]), ""]
    samples = (result.get("predictions") or [])[:max_samples]
    if samples:
        lines += ["## Generations (first %d)" % len(samples), "", "| index | reference | prediction | score |",
                  "|---|---|---|---|"]
        for record in samples:
            cells = [str(record["index"]), repr(record["reference"])[:80], repr(record["prediction"])[:120],
                     _format(record["score"])]
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_reports(result: Mapping[str, Any], *, out_dir: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """<out_dir>/<step_N|base>.json and .md (written atomically: a temporary file, then renamed)."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = report_name(result["step"])
    paths = (out_dir / f"{name}.json", out_dir / f"{name}.md")
    texts = (json.dumps(_json_safe(dict(result)), indent=2, sort_keys=True) + "\n", markdown_report(result))
    for path, text in zip(paths, texts):
        temporary = path.with_suffix(path.suffix + ".tmp")
        temporary.write_text(text)
        temporary.replace(path)
    return paths


def evaluate_run(*, workdir: str | pathlib.Path | None = None, config=None, steps: str | int | None = None,
                 base: bool = False, out_dir: str | pathlib.Path | None = None,
                 options: EvalOptions = EvalOptions(), devices: Sequence[Any] | None = None,
                 write: bool = True) -> list[dict[str, Any]]:
    """Evaluate the checkpoints `steps` of the run in `workdir` (or its base model, or the base model of
    `config` without a workdir); returns one result dict per evaluation and writes its reports."""
    if workdir is None and config is None:
        raise EvaluationError("pass --workdir (a training run) or --config with --base.")
    if workdir is None and not base:
        raise EvaluationError("--config without --workdir evaluates the base model: add --base (or pass the "
                              "--workdir of a run to evaluate its checkpoints).")
    if config is None:
        config = load_run_config(workdir)
    else:
        from deft_jax import train

        train.validate_config(config, check_devices=False)  # --config.* overrides are applied after get_config
    if out_dir is None:
        if workdir is None:
            raise EvaluationError("--base with --config and no --workdir needs --out_dir for its reports.")
        out_dir = pathlib.Path(workdir) / "eval"
    step_list = [None] if base else resolve_steps(workdir=workdir, requested=steps)
    setup = build_setup(config, devices=devices)
    examples = eval_examples(config, num_eval=options.num_eval)
    results = []
    for step in step_list:
        params = base_params(setup) if step is None else restore_params(setup, workdir=workdir, step=step)
        result = run_description(setup, workdir=workdir, step=step)
        result.update(evaluate_params(setup, params, examples=examples, options=options))
        result["time"] = time.time()
        if write:
            result["reports"] = [str(path) for path in write_reports(result, out_dir=out_dir)]
        results.append(result)
        del params
    return results


# ====================================================================================================
# CLI.

def _define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config file for --base without a workdir, e.g. "
                                    "configs/nll.py:runlocal (overrides: --config.data.num_eval=50).",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "A training run's workdir (config.json + checkpoints/).")
    flags.DEFINE_string("step", None, "Checkpoint step to evaluate: a number, 'latest' (default) or 'all'.")
    flags.DEFINE_bool("base", False, "Evaluate the run's model before fine-tuning (pretrained or initial weights).")
    flags.DEFINE_string("out_dir", None, "Where to write step_<N>.json/.md (default <workdir>/eval).")
    flags.DEFINE_integer("num_eval", None, "Evaluate the first N examples of the eval split (default all).")
    flags.DEFINE_integer("max_new_tokens", None, f"Generation length (default per task: {DEFAULT_MAX_NEW_TOKENS}).")
    flags.DEFINE_integer("batch_size", None, "Rows per teacher-forced batch (default config.eval.batch_size).")
    flags.DEFINE_integer("generation_batch_size", None, "Prompts per generation batch (default config.eval.batch_size).")
    flags.DEFINE_bool("generate", True, "Score greedy generations (--nogenerate: teacher-forced metrics only).")
    flags.DEFINE_bool("teacher_forced", True, "Teacher-forced metrics (--noteacher_forced: generation only).")


def print_table(results: Sequence[Mapping[str, Any]]) -> None:
    print(markdown_table([summary_row(result) for result in results]))
    for result in results:
        for path in result.get("reports", []):
            print(f"wrote {path}")


def main(argv: Sequence[str]) -> None:
    from absl import flags

    if len(argv) > 1:
        raise SystemExit(f"evaluate: error: unexpected arguments {list(argv[1:])}")
    FLAGS = flags.FLAGS
    options = EvalOptions(num_eval=FLAGS.num_eval, max_new_tokens=FLAGS.max_new_tokens, batch_size=FLAGS.batch_size,
                          generation_batch_size=FLAGS.generation_batch_size, generate=FLAGS.generate,
                          teacher_forced=FLAGS.teacher_forced)
    try:
        if FLAGS.config is not None and FLAGS.workdir is not None:
            raise EvaluationError("pass either --workdir (the run's own config.json is used) or --config with "
                                  "--base, not both.")
        results = evaluate_run(workdir=FLAGS.workdir, config=FLAGS.config, steps=FLAGS.step, base=FLAGS.base,
                               out_dir=FLAGS.out_dir, options=options)
    except (ValueError, FileNotFoundError, PermissionError) as error:
        raise SystemExit(f"evaluate: error: {error}") from None
    print_table(results)


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
