"""The studies of experiments/README.md, each one resumable command.

    python experiments/study.py continuum [--smoke] [--workdir runs/study]   # objectives x regimes
    python experiments/study.py noise     [--smoke]                          # FigFont, 0% / 20% noise, 3 seeds
    python experiments/study.py seeds     [--smoke]                          # NLL vs DEFT, 3 seeds
    python experiments/study.py all       [--smoke]                          # the three, then figures
    python experiments/study.py continuum --print_commands                   # one trainer command per run

Every run is `python -m deft_jax.train --config configs/study.py:<args>` in <workdir>/<run name>/
(name = regime, objective, noise, seed), trained and marked done by deft_jax.sweep's runner, so the
studies share runs (the noise study's 0% runs and the seeds study's seed 0 are continuum runs) and a
killed study relaunched with the same command skips finished runs and resumes interrupted ones. Then
each finished run is scored by deft_jax.evaluate (cached in <run>/eval/), the base model once per
regime (<workdir>/base-<regime>/), and the study writes <workdir>/<study>.md and .csv: one row per
(regime, objective, noise) with the score's mean and standard deviation over seeds.
`--smoke` uses configs/study.py's tiny random model and a subset of objectives: plumbing, not results.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import pathlib
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
STUDY_CONFIG = REPO_ROOT / "configs" / "study.py"

OBJECTIVES = ("nll", "prob", "dft", "eaft", "cayley", "deft", "deformed_log")
# DFT's gradient is −p's exactly (gate p times π − e_y; only the logged loss differs), so under the same
# seed it trains the same model: it runs on the weak regime only, where its score checks that claim.
DFT_REGIMES = ("weak",)
DEFORMED_ALPHA = 0.5  # the deformed-log member of the continuum study (between NLL, α → 0, and −p, α = 1)
REGIMES = ("weak", "intermediate", "strong")
SMOKE_OBJECTIVES = ("nll", "deft")
SEEDED_OBJECTIVES = ("nll", "deft")  # the headline pair: several seeds in the seeds and noise studies
STUDIES = ("continuum", "noise", "seeds")
TEACHER_FORCED = ("nll", "mean_p", "token_accuracy")
SMOKE_NUM_EVAL, SMOKE_MAX_NEW_TOKENS = 4, 8
# Greedy tokens per eval answer: FigFont the paper's 5 (the evaluator's default); the others cover their
# longest reference + EOS (measured on eval items 10,000-10,199: word_sorting 30, number_sorting 66 tokens).
REGIME_MAX_NEW_TOKENS = {"weak": None, "intermediate": 48, "strong": 96}


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One training run of a study: configs/study.py's arguments."""

    regime: str
    objective: str
    noise: float = 0.0
    seed: int = 0

    @property
    def name(self) -> str:
        objective = f"deformed_log{DEFORMED_ALPHA:g}" if self.objective == "deformed_log" else self.objective
        return f"{self.regime}-{objective}-noise{self.noise:g}-seed{self.seed}"

    def config_arg(self, *, smoke: bool) -> str:
        parts = [f"objective={self.objective}", f"regime={self.regime}", f"noise={self.noise!r}",
                 f"seed={self.seed}"]
        if self.objective == "deformed_log":
            parts.append(f"alpha={DEFORMED_ALPHA!r}")
        if smoke:
            parts.append("smoke")
        return f"{STUDY_CONFIG}:{','.join(parts)}"

    def point(self) -> dict[str, Any]:
        objective = f"deformed_log(α={DEFORMED_ALPHA:g})" if self.objective == "deformed_log" else self.objective
        return {"regime": self.regime, "objective": objective, "noise": self.noise, "seed": self.seed}


def study_specs(study: str, *, smoke: bool) -> list[RunSpec]:
    """The runs of `study` (smoke: NLL and DEFT only, 2 seeds)."""
    objectives = SMOKE_OBJECTIVES if smoke else OBJECTIVES
    if study == "continuum":
        return [RunSpec(regime, objective) for regime in REGIMES for objective in objectives
                if objective != "dft" or regime in DFT_REGIMES]
    seeds = (0, 1) if smoke else (0, 1, 2)
    if study == "noise":  # NLL and DEFT over the seeds study's seeds at both noise levels, −p on seed 0
        noisy = SMOKE_OBJECTIVES if smoke else ("nll", "prob", "deft")
        return [RunSpec("weak", objective, noise=noise, seed=seed) for noise in (0.0, 0.2) for objective in noisy
                for seed in (seeds if objective in SEEDED_OBJECTIVES else (0,))]
    if study == "seeds":
        return [RunSpec("weak", objective, seed=seed) for objective in SEEDED_OBJECTIVES for seed in seeds]
    raise ValueError(f"unknown study {study!r}; choose from {STUDIES}")


def plan(specs: Sequence[RunSpec], *, workdir: pathlib.Path, smoke: bool):
    """deft_jax.sweeping.SweepRun per spec (resolved, validated config + trainer command)."""
    from deft_jax.training import config as config_lib
    from deft_jax import sweeping as sweep

    runs = []
    for spec in specs:
        arg = spec.config_arg(smoke=smoke)
        run_dir = workdir / spec.name
        runs.append(sweep.SweepRun(name=spec.name, point=spec.point(), workdir=run_dir, config=config_lib.load_config(arg),
                                   command=sweep.train_command(config_arg=arg, overrides={}, point={},
                                                               run_dir=run_dir)))
    return runs


def base_config(regime: str, *, smoke: bool):
    from deft_jax.training import config as config_lib

    return config_lib.load_config(RunSpec(regime, "nll").config_arg(smoke=smoke))


def evaluate_base(regimes: Sequence[str], *, workdir: pathlib.Path, smoke: bool, options, log=print):
    """{regime: evaluation of the untrained model} (cached in <workdir>/base-<regime>/base.json)."""
    from deft_jax.evaluation import evaluator as evaluate
    from deft_jax import reporting

    results = {}
    for regime in regimes:
        out_dir = workdir / f"base-{regime}"
        cached = out_dir / f"{reporting.report_name(None)}.json"
        if cached.is_file():
            results[regime] = json.loads(cached.read_text())
            continue
        log(f"base-{regime}: evaluating the base model")
        results[regime] = evaluate.evaluate_run(config=base_config(regime, smoke=smoke), base=True, out_dir=out_dir,
                                                options=options)[0]
    return results


def _metrics(result: dict | None) -> dict[str, float | None]:
    result = result or {}
    teacher = result.get("teacher_forced") or {}
    generation = result.get("generation") or {}
    return {"score": generation.get("score"), **{key: teacher.get(key) for key in TEACHER_FORCED}}


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None, 0
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None), len(values)


def aggregate(specs: Sequence[RunSpec], *, results: dict, base: dict) -> list[dict[str, Any]]:
    """Rows (regime, objective, noise): each metric's mean and std over the finished seeds; base rows first."""
    rows = []
    for regime in dict.fromkeys(spec.regime for spec in specs):
        if regime in base:
            rows.append({"regime": regime, "objective": "base", "noise": 0.0, "seeds": "-", "n": 1,
                         **{f"{k}_mean": v for k, v in _metrics(base[regime]).items()}})
        groups: dict[tuple, list[RunSpec]] = {}
        for spec in specs:
            if spec.regime == regime:
                groups.setdefault((spec.point()["objective"], spec.noise), []).append(spec)
        for (objective, noise), members in groups.items():
            row = {"regime": regime, "objective": objective, "noise": noise,
                   "seeds": ",".join(str(m.seed) for m in members)}
            per_run = [_metrics(results.get(m.name)) for m in members]
            for key in ("score",) + TEACHER_FORCED:
                mean, std, count = _mean_std([metrics[key] for metrics in per_run])
                row[f"{key}_mean"], row[f"{key}_std"] = mean, std
                row["n"] = max(row.get("n", 0), count)
            rows.append(row)
    return rows


def _fmt(mean, std=None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "")


def write_table(rows: Sequence[dict], *, path: pathlib.Path, title: str) -> None:
    """<path>.md (mean ± std) and <path>.csv (every column)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    path.with_suffix(".md").write_text(f"# {title}\n\n" + markdown_table(rows) + "\n")


def markdown_table(rows: Sequence[dict]) -> str:
    """One line per aggregate row: each metric's mean ± std over seeds."""
    lines = ["| regime | objective | noise | seeds | score | NLL | mean p | token acc. |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['regime']} | {row['objective']} | {row['noise']:g} | {row['seeds']} | "
                     + " | ".join(_fmt(row.get(f"{k}_mean"), row.get(f"{k}_std")) for k in ("score",) + TEACHER_FORCED)
                     + " |")
    return "\n".join(lines)


def training_record(run_dir: pathlib.Path) -> dict[str, Any]:
    """What a run's metrics.jsonl says of its training: {"steps": per-step mean α (= mean Σπ²) and mean target
    p, "training_seconds": from the first step's start to the last step's end}."""
    from deft_jax.training import metrics

    steps = [r for r in metrics.read_records(run_dir) if "train/mean_p" in r]
    seconds = None
    if steps and "time" in steps[0] and "perf/first_step_seconds" in steps[0]:
        seconds = steps[-1]["time"] - steps[0]["time"] + steps[0]["perf/first_step_seconds"]
    return {"steps": {"mean_alpha": [r.get("train/mean_alpha") for r in steps],
                      "mean_p": [r["train/mean_p"] for r in steps]},
            "training_seconds": seconds}


def per_run(specs: Sequence[RunSpec], *, results: dict, base: dict,
            workdir: pathlib.Path | None = None) -> list[dict[str, Any]]:
    """The raw figures behind aggregate's rows: each run's (and each base model's) metrics and supervised
    token count; with `workdir`, each run's training record (training_record) too."""
    def tokens(result):
        return ((result or {}).get("teacher_forced") or {}).get("supervised_tokens")

    out = [{"name": f"base-{regime}", "regime": regime, "objective": "base", "noise": 0.0, "seed": None,
            **_metrics(result), "supervised_tokens": tokens(result)} for regime, result in base.items()]
    out += [{"name": spec.name, "regime": spec.regime, "objective": spec.point()["objective"], "noise": spec.noise,
             "seed": spec.seed, **_metrics(results.get(spec.name)), "supervised_tokens": tokens(results.get(spec.name)),
             **(training_record(workdir / spec.name) if workdir is not None else {})} for spec in specs]
    return out


def eval_options(regime: str, *, smoke: bool, num_eval: int | None):
    """The evaluator's options for `regime` (smoke: 4 examples, 8 new tokens; a random tiny model never
    stops early)."""
    from deft_jax.evaluation import evaluator as evaluate

    if smoke:
        return evaluate.EvalOptions(num_eval=num_eval or SMOKE_NUM_EVAL, max_new_tokens=SMOKE_MAX_NEW_TOKENS)
    return evaluate.EvalOptions(num_eval=num_eval, max_new_tokens=REGIME_MAX_NEW_TOKENS[regime])


def select(specs: Sequence[RunSpec], *, only: Sequence[str] | None) -> list[RunSpec]:
    """The specs whose run name is in `only` (all when None); an unknown name is an error."""
    if not only:
        return list(specs)
    names = {spec.name for spec in specs}
    unknown = sorted(set(only) - names)
    if unknown:
        raise ValueError(f"--only: {unknown} are not runs of this study; its runs: {sorted(names)}")
    return [spec for spec in specs if spec.name in set(only)]


def run_study(study: str, *, workdir: pathlib.Path, smoke: bool, in_process: bool, evaluate_runs: bool = True,
              num_eval: int | None = None, only: Sequence[str] | None = None, record: dict | None = None,
              log=print) -> list[dict[str, Any]]:
    """Train the study's unfinished runs (or the `only` ones), evaluate, write <workdir>/<study>.md/.csv
    (a partial table with `only`); returns the rows. `record[study]` (when given) gets the rows and every
    run's own metrics (per_run)."""
    from deft_jax import sweeping as sweep

    specs = select(study_specs(study, smoke=smoke), only=only)
    runs = plan(specs, workdir=workdir, smoke=smoke)
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    statuses = sweep.run_all(runs, in_process=in_process, log=log)
    log(f"{study}: training took {time.perf_counter() - started:.0f}s")
    if not evaluate_runs:
        return []
    started = time.perf_counter()
    results, base = {}, {}
    for regime in sorted({spec.regime for spec in specs}, key=REGIMES.index):
        options = eval_options(regime, smoke=smoke, num_eval=num_eval)
        results.update(sweep.evaluate_finished([run for run, spec in zip(runs, specs) if spec.regime == regime],
                                               options=options, log=log))
        if study == "continuum":
            base.update(evaluate_base([regime], workdir=workdir, smoke=smoke, options=options, log=log))
    log(f"{study}: evaluation took {time.perf_counter() - started:.0f}s")
    rows = aggregate(specs, results=results, base=base)
    title = f"{study} study{' (SMOKE: tiny random model, not a result)' if smoke else ''}"
    write_table(rows, path=workdir / study, title=title)
    if record is not None:
        record[study] = {"title": title, "rows": rows,
                         "runs": per_run(specs, results=results, base=base, workdir=workdir)}
    log((workdir / f"{study}.md").read_text())
    unfinished = [name for name, status in statuses.items() if status not in ("done", "skipped (done)")]
    if unfinished:
        raise SystemExit(f"study {study}: {len(unfinished)} run(s) did not finish: {unfinished}; launch the same "
                         f"command again to resume them.")
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("study", choices=STUDIES + ("all",))
    parser.add_argument("--workdir", default=None, help="default runs/study (runs/study_smoke with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="tiny random model, NLL + DEFT only (plumbing)")
    parser.add_argument("--in_process", action="store_true",
                        help="train in this process (no trainer subprocesses; faster for --smoke)")
    parser.add_argument("--num_eval", type=int, default=None, help="score the first N eval examples only")
    parser.add_argument("--only", default="", help="comma-separated run names (e.g. strong-deft-noise0-seed0): "
                        "train and score only these (the table then covers only them)")
    parser.add_argument("--print_commands", action="store_true", help="print one trainer command per run and exit")
    parser.add_argument("--no_figures", action="store_true", help="with 'all': skip experiments/figures.py")
    parser.add_argument("--figures_dir", default=None,
                        help="with 'all': where figures go (default <workdir>/figures; the README's are in "
                             "experiments/figures/)")
    parser.add_argument("--json", default=None,
                        help="also write each study's rows, every run's metrics, the settings and the machine here")
    args = parser.parse_args(argv)
    workdir = pathlib.Path(args.workdir or ("runs/study_smoke" if args.smoke else "runs/study")).absolute()
    studies = STUDIES if args.study == "all" else (args.study,)
    if args.print_commands:  # each shared run once
        specs = list({spec.name: spec for study in studies for spec in study_specs(study, smoke=args.smoke)}.values())
        for run in plan(specs, workdir=workdir, smoke=args.smoke):
            print(run.shell_command(python="python"))
        return
    record: dict = {}
    for study in studies:
        run_study(study, workdir=workdir, smoke=args.smoke, in_process=args.in_process, num_eval=args.num_eval,
                  only=[name for name in args.only.split(",") if name] or None, record=record,
                  log=lambda message: print(message, flush=True))
    if args.json:
        from experiments import raw

        raw.write(args.json, raw.record(script="study", settings=vars(args), figures={"studies": record}))
    if args.study == "all" and not args.no_figures:  # a separate process: figures.py imports this module
        subprocess.run([sys.executable, str(pathlib.Path(__file__).with_name("figures.py")), f"--workdir={workdir}",
                        f"--out={args.figures_dir or workdir / 'figures'}"] + (["--smoke"] if args.smoke else []),
                       check=True)


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main()
