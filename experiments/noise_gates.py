"""How much of each objective's gradient a wrong answer gets, where the model knows the truth and where not.

    python experiments/noise_gates.py --out experiments/noise_gates.md    # ≈ 3 min on an idle small CPU
    python experiments/noise_gates.py --smoke                             # tiny random model (plumbing only)

The paper's claim: DEFT suppresses confidently-wrong supervision. Its gate p^α (α = Σπ²) is small when
the model confidently predicts something other than the target, so a wrong label the model "knows" is
wrong earns little gradient, while NLL (gate 1) pushes hardest exactly there. This measures it at step 0
(the base model, no training) on two tasks with 20% label noise (deft_jax.data.noise):

- FigFont (weak prior): the answer word replaced by another word. The model cannot read the art, so it
  has no belief the wrong word contradicts.
- GSM8K (../shared/data/gsm8k_test.jsonl, its training split): the final `#### N` replaced by a wrong
  number, after a reasoning chain that computes the right one: confidently wrong by construction.

For every corrupted example, its clean twin (the same example without noise) gives the reference: the
wrong-answer tokens are the supervised tokens that differ from the twin's (between the common prefix and
the common suffix, so the shared EOS is not counted), the right-answer tokens the twin's at that place.
Per objective: the wrong-answer tokens' share of Σ gate·‖π − e_y‖ over every supervised token of the noisy
training set (compare with their share of the tokens), and the mean gradient magnitude on a wrong-answer
token relative to a right-answer one.

    python experiments/noise_gates.py --workdir RUN [--workdir RUN ...] --out FILE

measures trained runs instead: each noisy run's own training set under its final checkpoint (and the base
model once per training set): has training taught the model the wrong answers?
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time
from collections.abc import Sequence

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from experiments import figures, measure_prior, raw  # noqa: E402
from deft_jax.training import checkpointing
from deft_jax.training import setup as build

TASKS = {"figfont": measure_prior.CANDIDATES["figfont"], "gsm8k": measure_prior.CANDIDATES["gsm8k"]}


def task_config(task: str, *, smoke: bool, num: int, noise: float, seed: int):
    """measure_prior's config for `task` (response + EOS supervised, nothing dropped below 2048 tokens)
    with `noise` of its training answers corrupted by `seed`."""
    config = measure_prior.candidate_config(base_arg="smoke" if smoke else "", overrides=TASKS[task], num=num,
                                            max_length=1024 if smoke else 2048)
    config.data.noise_fraction = noise
    config.data.noise_seed = seed
    return config


def split_per_example(values: np.ndarray, tokenized: Sequence) -> list[np.ndarray]:
    """Flat per-token values (examples in order, supervised tokens only) -> one array per example."""
    counts = [len(t.tokens) - t.prompt_length for t in tokenized]
    if sum(counts) != len(values):
        raise ValueError(f"{len(values)} token values for {sum(counts)} supervised tokens")
    return np.split(values, np.cumsum(counts)[:-1])


def first_difference(a: np.ndarray, b: np.ndarray) -> int:
    """The first position where the token sequences a and b differ (the shorter length if one is a prefix)."""
    length = min(len(a), len(b))
    differing = np.flatnonzero(a[:length] != b[:length])
    return int(differing[0]) if differing.size else length


def differing_spans(a: np.ndarray, b: np.ndarray) -> tuple[slice, slice]:
    """The parts of a and of b between their common prefix and their common suffix (e.g. the wrong and the
    right number of `#### N<eos>`, without the shared EOS)."""
    prefix = first_difference(a, b)
    suffix = min(first_difference(a[::-1], b[::-1]), min(len(a), len(b)) - prefix)
    return slice(prefix, len(a) - suffix), slice(prefix, len(b) - suffix)


def wrong_answer_rows(*, noisy_stats: dict, twin_stats: dict, noisy_tokenized: Sequence, twin_tokenized: Sequence,
                      corrupted: Sequence[bool], task: str) -> list[dict]:
    """One row per objective label: the wrong-answer tokens' token share and gradient share over the noisy
    set, their mean p, α and gradient magnitude, and the clean twins' right-answer tokens' (differing_spans).

    noisy_stats / twin_stats: {label: token statistics} (figures.token_statistics) of every noisy example /
    of the clean twins of the corrupted ones (in the same order as the corrupted flags)."""
    targets = [t.tokens[t.prompt_length:] for t in noisy_tokenized]
    twin_targets = [t.tokens[t.prompt_length:] for t in twin_tokenized]
    corrupted_positions = [i for i, flag in enumerate(corrupted) if flag]
    if len(corrupted_positions) != len(twin_targets):
        raise ValueError(f"{len(corrupted_positions)} corrupted examples but {len(twin_targets)} clean twins")
    spans = [differing_spans(targets[i], twin) for i, twin in zip(corrupted_positions, twin_targets)]
    rows = []
    for label, stats in noisy_stats.items():
        per_example = {key: split_per_example(stats[key], noisy_tokenized) for key in ("p", "collision", "gate",
                                                                                       "grad_norm")}
        twin = {key: split_per_example(twin_stats[label][key], twin_tokenized) for key in ("p", "grad_norm")}
        wrong = {key: np.concatenate([per_example[key][i][span] for i, (span, _) in zip(corrupted_positions, spans)])
                 for key in per_example}
        twin_span = {key: np.concatenate([twin[key][j][span] for j, (_, span) in enumerate(spans)]) for key in twin}
        total = float(stats["grad_norm"].sum())
        rows.append({"task": task, "objective": label, "wrong_tokens": int(wrong["p"].size),
                     "tokens": int(stats["p"].size), "token_share": wrong["p"].size / stats["p"].size,
                     "gradient_share": float(wrong["grad_norm"].sum()) / total,
                     "mean_p_wrong": float(wrong["p"].mean()), "mean_alpha_wrong": float(wrong["collision"].mean()),
                     "mean_gate_wrong": float(wrong["gate"].mean()),
                     "mean_p_twin": float(twin_span["p"].mean()),
                     "grad_wrong_over_twin": float(wrong["grad_norm"].mean() / twin_span["grad_norm"].mean())})
    return rows


def measure_task(task: str, *, smoke: bool, num: int, noise: float, seed: int, log=print) -> list[dict]:
    """wrong_answer_rows of `task` under the base model, for every continuum objective's gate."""
    noisy_config = task_config(task, smoke=smoke, num=num, noise=noise, seed=seed)
    clean_config = task_config(task, smoke=smoke, num=num, noise=0.0, seed=seed)
    (rows,) = measure(noisy_config=noisy_config, clean_config=clean_config, models=[None], log=log).values()
    return rows


def measure_run(run_dir: pathlib.Path, *, with_base: bool = True, log=print) -> list[dict]:
    """wrong_answer_rows on a noisy training run's own training set: under its final checkpoint, and (with_base)
    under the base model (the same examples and row lengths), labelled by `model`."""

    noisy_config = build.load_run_config(run_dir)
    if not noisy_config.data.noise_fraction > 0:
        raise SystemExit(f"noise_gates: {run_dir} trained without label noise (data.noise_fraction 0); pass a "
                         "run trained with data.noise_fraction > 0")
    if not checkpointing.available_steps(run_dir):
        raise SystemExit(f"noise_gates: {run_dir} has no checkpoint yet; let its training finish (or resume it)")
    clean_config = noisy_config.copy_and_resolve_references()
    clean_config.data.noise_fraction = 0.0
    by_model = measure(noisy_config=noisy_config, clean_config=clean_config,
                       models=[None, run_dir] if with_base else [run_dir], log=log)
    return [{"model": "base" if model is None else str(model), **row} for model, rows in by_model.items()
            for row in rows]


def measure(*, noisy_config, clean_config, models: Sequence[pathlib.Path | None], log=print) -> dict:
    """{model: wrong_answer_rows} of noisy_config's training set (twins from clean_config), per model: None
    for the base model, else a run directory's latest checkpoint. Data and setup are built once."""
    from deft_jax import data as data_lib

    task = noisy_config.data.task
    setup = build.setup(noisy_config, mesh_fallback=True)
    noisy = data_lib.load_examples(noisy_config.data, split="train")
    clean = {e.index: e for e in data_lib.load_examples(clean_config.data, split="train")}
    noisy_tokenized, report = data_lib.tokenize_examples(noisy, tokenizer=setup.tokenizer, cfg=noisy_config.data)
    if report.num_dropped:
        log(f"{task}: {report.summary()} (measured on the kept ones)")
    kept = {t.index for t in noisy_tokenized}
    noisy = [e for e in noisy if e.index in kept]
    corrupted = [e.corrupted for e in noisy]
    twins, _ = data_lib.tokenize_examples([clean[e.index] for e in noisy if e.corrupted], tokenizer=setup.tokenizer,
                                          cfg=clean_config.data)
    specs = figures.study_objective_specs()
    out = {}
    for model in models:
        log(f"{task}: {sum(corrupted)} of {len(noisy)} answers corrupted; forward passes under "
            f"{'the base model' if model is None else model}")
        params = (setup.initial_params() if model is None else
                  setup.restore_params(workdir=model, step=checkpointing.available_steps(model)[-1]))
        noisy_stats = figures.token_statistics(setup, params, noisy_tokenized, objective_specs=specs)
        twin_stats = figures.token_statistics(setup, params, twins, objective_specs=specs)
        out[model] = wrong_answer_rows(noisy_stats=noisy_stats, twin_stats=twin_stats, noisy_tokenized=noisy_tokenized,
                                       twin_tokenized=twins, corrupted=corrupted, task=task)
    return out


def markdown(rows: Sequence[dict], *, title: str) -> str:
    return f"# {title}\n\n" + table(rows) + "\n"


def table(rows: Sequence[dict]) -> str:
    """One line per (model, task, objective) row; the gradient share also relative to NLL's of that model and task."""
    with_model = any("model" in row for row in rows)
    columns = (["model"] if with_model else []) + [
        "task", "objective", "wrong-answer tokens", "token share", "gradient share", "share / NLL's",
        "mean p wrong (twin)", "mean α wrong", "mean gate wrong", "‖grad‖ wrong / twin"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    nll_share = {(row.get("model"), row["task"]): row["gradient_share"] for row in rows if row["objective"] == "nll"}
    for row in rows:
        key = (row.get("model"), row["task"])
        relative = row["gradient_share"] / nll_share[key] if key in nll_share else float("nan")
        cells = ([row["model"]] if with_model else []) + [
            row["task"], row["objective"], f"{row['wrong_tokens']} of {row['tokens']}", f"{row['token_share']:.3g}",
            f"{row['gradient_share']:.3g}", f"{relative:.2f}", f"{row['mean_p_wrong']:.3f} ({row['mean_p_twin']:.3f})",
            f"{row['mean_alpha_wrong']:.3f}", f"{row['mean_gate_wrong']:.3g}", f"{row['grad_wrong_over_twin']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def trained_markdown(rows: Sequence[dict]) -> str:
    """Per model (base, then each run): what it predicts on the wrong answers and on their clean twins."""
    lines = ["| model | task | wrong-answer tokens | mean p wrong answer | mean p right answer (twin) |",
             "|---|---|---|---|---|"]
    for row in rows:
        if row["objective"] == "nll":  # p does not depend on the gate: one row per model
            lines.append(f"| {row['model']} | {row['task']} | {row['wrong_tokens']} | {row['mean_p_wrong']:.4f} | "
                         f"{row['mean_p_twin']:.4f} |")
    return "\n".join(lines) + "\n"


def document(figures_: dict) -> str:
    """The Markdown page of one run's raw figures ({kind: step0 | trained, title, rows})."""
    rows = figures_["rows"]
    if figures_["kind"] == "trained":
        return ("# Wrong answers after training on them vs before (p is the model's, whatever the gate)\n\n"
                + trained_markdown(rows) + "\n" + markdown(rows, title="Every gate, per model"))
    return markdown(rows, title=figures_["title"])


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {list(TASKS)}")
    parser.add_argument("--num", type=int, default=96, help="training examples per task (the study's 96)")
    parser.add_argument("--noise", type=float, default=0.2, help="fraction of corrupted answers")
    parser.add_argument("--seed", type=int, default=0, help="which answers are corrupted")
    parser.add_argument("--smoke", action="store_true", help="tiny random model + byte tokenizer (plumbing only)")
    parser.add_argument("--workdir", action="append", default=[],
                        help="instead of --tasks: a training run with label noise (repeatable); measures its own "
                             "training set under its final checkpoint and under the base model")
    parser.add_argument("--out", default=None, help="also write the table (Markdown) here")
    parser.add_argument("--json", default=None, help="also write the rows, settings and machine here (raw output)")
    args = parser.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise SystemExit(f"noise_gates: unknown task(s) {unknown}; choose from {list(TASKS)}")
    started = time.perf_counter()
    rows = []
    if args.workdir:

        measured_sets = []
        for run_dir in map(pathlib.Path, args.workdir):
            data = build.load_run_config(run_dir).data.to_json(sort_keys=True)
            rows += measure_run(run_dir, with_base=data not in measured_sets)  # the base model once per set
            measured_sets.append(data)
        title = None
    else:
        for task in tasks:
            rows += measure_task(task, smoke=args.smoke, num=args.num, noise=args.noise, seed=args.seed)
        model = "tiny random model (SMOKE: not a result)" if args.smoke else "base smollm2-135m-instruct"
        title = (f"{model}, step 0: wrong answers' share of each objective's gradient "
                 f"({args.noise:g} noise, seed {args.seed}, first {args.num} training examples)")
    figures_ = {"kind": "trained" if args.workdir else "step0", "title": title, "rows": rows}
    table = document(figures_)
    print(table)
    print(f"total {time.perf_counter() - started:.0f}s")
    if args.out:
        out = pathlib.Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table)
    if args.json:
        raw.write(args.json, raw.record(script="noise_gates", settings=vars(args), figures=figures_))
    return rows


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from deft_jax.data import DataError
    from deft_jax.evaluation.evaluator import EvaluationError

    try:
        main()
    except (DataError, EvaluationError, FileNotFoundError) as error:  # bad input: the message, no traceback
        raise SystemExit(f"noise_gates: {error}") from None
