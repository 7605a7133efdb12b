"""What the continuum measures of one model: teacher-forced metrics, graded generation scores, per-step
dynamics, and the wrong labels' share of each objective's gradient (experiments/noise_gates.py's rows).

Every measurement goes through deft_jax.evaluate (teacher_forced_metrics, generate_predictions) or
deft_jax.objectives; scores are experiments/continuum/world.py's character accuracy and
deft_jax.scoring's Jaro-Winkler.
"""
from __future__ import annotations

import functools
import json
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from experiments.continuum import world as world_lib
from deft_jax import data as data_lib
from deft_jax import sharding as sharding_lib


def teacher_forced(setup, params, examples: Sequence) -> dict:
    """deft_jax.evaluate's token means (NLL, mean p, token accuracy, ...) over `examples`' supervised tokens."""
    from deft_jax import data as data_lib
    from deft_jax.evaluation import evaluator as evaluate

    tokenized, _ = data_lib.tokenize_examples(list(examples), tokenizer=setup.tokenizer, cfg=setup.config.data)
    return evaluate.teacher_forced_metrics(setup, params, tokenized)


def generation_scores(setup, params, examples: Sequence, *, max_new_tokens: int) -> dict:
    """Greedy answers (deft_jax.evaluate.generate_predictions) scored against each example's clean answer:
    mean character accuracy (partial credit per position), Jaro-Winkler and exact match."""
    from deft_jax import data as data_lib
    from deft_jax.evaluation import evaluator as evaluate
    from deft_jax.evaluation import scoring

    prompts = data_lib.make_generation_prompts(list(examples), tokenizer=setup.tokenizer)
    predictions, _ = evaluate.generate_predictions(setup, params, prompts, max_new_tokens=max_new_tokens,
                                                   batch_size=len(prompts))
    references = [prompt.reference for prompt in prompts]
    char = [world_lib.char_accuracy(prediction=p, reference=r) for p, r in zip(predictions, references)]
    jw = [scoring.jaro_winkler(p.strip(), r) for p, r in zip(predictions, references)]
    exact = [float(p.strip() == r) for p, r in zip(predictions, references)]
    return {"char_accuracy": float(np.mean(char)), "jaro_winkler": float(np.mean(jw)),
            "exact_match": float(np.mean(exact)), "num_scored": len(prompts),
            "samples": [{"reference": r, "prediction": p} for p, r in list(zip(predictions, references))[:4]]}


def dynamics(workdir: str | pathlib.Path) -> dict:
    """Per-step train/mean_alpha (DEFT's α = mean Σπ²), train/mean_p and train/loss from metrics.jsonl."""
    steps, alpha, mean_p, loss = [], [], [], []
    for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "train/mean_p" in row:
            steps.append(row["step"])
            alpha.append(row.get("train/mean_collision", float("nan")))
            mean_p.append(row["train/mean_p"])
            loss.append(row["train/loss"])
    return {"step": steps, "mean_alpha": alpha, "mean_p": mean_p, "loss": loss}


@functools.lru_cache(maxsize=8)
def _token_stats_fn(model_config, specs: tuple):
    import jax

    from deft_jax.model import decoder as model_lib
    from deft_jax import objectives

    @jax.jit
    def stats(params, batch):
        logits = model_lib.forward(params, model_config, batch["inputs"], positions=batch["positions"],
                                   segment_ids=batch["segment_ids"])
        mask = batch["loss_mask"] * batch["weights"][:, None]
        outs = [objectives.compute(spec, logits, batch["targets"], mask) for _, spec in specs]
        return [{"p": o.p, "gate": o.gate, "collision": o.collision} for o in outs], mask
    return stats


def token_statistics(setup, params, tokenized: Sequence, *, objective_specs: Mapping) -> dict:
    """{label: {p, gate, collision, grad_norm}} over every supervised token of `tokenized` (in order), as
    experiments/figures.token_statistics, with the jitted forward cached per (model, objectives)."""
    import jax

    from deft_jax.training import teacher_forced as teacher_forced_lib
    from experiments import figures

    specs = tuple(objective_specs.items())
    fn = _token_stats_fn(setup.model_config, specs)
    columns = {label: {"p": [], "gate": [], "collision": []} for label, _ in specs}
    with sharding_lib.mesh_context(setup.mesh, setup.rules):
        for batch in teacher_forced_lib.local_batches(setup, tokenized, rows=64):
            arrays = {key: batch[key] for key in data_lib.BATCH_KEYS + ("weights",)}
            result, mask = jax.device_get(fn(params, arrays))
            valid = np.asarray(mask) > 0
            for (label, _), values in zip(specs, result):
                for key in columns[label]:
                    columns[label][key].append(np.asarray(values[key])[valid])
    out = {}
    for label, _ in specs:
        values = {key: np.concatenate(parts).astype(np.float32) for key, parts in columns[label].items()}
        values["grad_norm"] = figures.gradient_magnitude(p=values["p"], gate=values["gate"],
                                                         collision=values["collision"])
        out[label] = values
    return out


def wrong_label_rows(setup, params, *, noisy: Sequence, objective_specs: Mapping, task: str) -> list[dict]:
    """experiments/noise_gates.wrong_answer_rows for a noisy training set `noisy` (Examples whose reference
    is the clean answer; a response that differs from it is a wrong label): the wrong answers' share of
    each objective's gradient."""
    import dataclasses

    from deft_jax import data as data_lib
    from experiments import noise_gates

    tokenized, _ = data_lib.tokenize_examples(list(noisy), tokenizer=setup.tokenizer, cfg=setup.config.data)
    corrupted = [example.response != example.reference for example in noisy]
    twins = [dataclasses.replace(example, response=example.reference)
             for example, flag in zip(noisy, corrupted) if flag]
    twin_tokenized, _ = data_lib.tokenize_examples(twins, tokenizer=setup.tokenizer, cfg=setup.config.data)
    noisy_stats = token_statistics(setup, params, tokenized, objective_specs=objective_specs)
    twin_stats = token_statistics(setup, params, twin_tokenized, objective_specs=objective_specs)
    return noise_gates.wrong_answer_rows(noisy_stats=noisy_stats, twin_stats=twin_stats, noisy_tokenized=tokenized,
                                         twin_tokenized=twin_tokenized, corrupted=corrupted, task=task)
