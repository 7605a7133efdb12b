"""The capability continuum study, one resumable command:

    python -m experiments.continuum.run --workdir runs/continuum            # the full grid (configs/continuum.py)
    python -m experiments.continuum.run --workdir runs/continuum_smoke --smoke   # plumbing, seconds

1. writes the synthetic world's data (JSONL) under <workdir>/data;
2. pretrains the chain of prior levels (configs/continuum.py:stage=pretrain: level 0 from scratch on the
   other maps, each next level continuing the previous one on target-rich data) and measures each level's
   model (base.json: mean target probability p on the SFT data, scores, wrong-label gradient shares at
   step 0);
3. fine-tunes each level once per (seed, objective, label noise) of configs/continuum.py's sweep()
   (stage=sft, started from the level's pretraining run through model.init_from) and measures the result
   (result.json);
4. writes the tables and figures (experiments/continuum/analyze.py).

Every run goes through deft_jax.train.train_and_evaluate and deft_jax.evaluate in-process; runs of one
process with the same objective share one compiled step. A finished run has its report (base.json or
result.json, written last and atomically) and is skipped on relaunch; an unfinished SFT run restarts, an
unfinished pretraining run resumes from its checkpoint.
--workers N splits the SFT runs' (level, seed) groups over N processes (each single-threaded XLA);
--seeds, --levels, --noise, --objectives and --noisy_objectives restrict the grid (a reduced study);
--deadline_minutes stops
starting new groups after that long (a relaunch continues).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from configs import continuum as grid  # noqa: E402
from experiments.continuum import world as world_lib  # noqa: E402
from deft_jax.training import setup as build

SMOKE = dict(levels=(0, 1), seeds=(0,), noise=(0.0, 0.2), objectives=("nll", "deft"))
SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
RESULT = "result.json"
BASE = "base.json"


def objective_label(run: dict) -> str:
    """A short name per grid objective: nll, prob, dft, dlog0.25, eaft, cayley, deft, deft_eps0."""
    name = run["objective"]
    if name == "deformed_log":
        return f"dlog{run['alpha']:g}"
    if name == "deft" and run.get("epsilon", 1e-6) == 0.0:
        return "deft_eps0"
    return name


def run_name(run: dict) -> str:
    return f"{grid.level_name(run['level'])}-seed{run['seed']}-noise{run['noise']:g}-{objective_label(run)}"


def config_arg(run: dict, *, root: pathlib.Path, smoke: bool) -> str:
    """configs/continuum.py's argument string for one SFT run of the sweep."""
    fields = {"stage": "sft", "root": str(root), **run}
    return ",".join([f"{k}={v}" for k, v in fields.items()] + (["smoke"] if smoke else []))


def load_config(arg: str):
    return grid.get_config(arg)


def select_runs(*, smoke: bool, levels=None, seeds=None, noise=None, objectives=None,
                noisy_objectives=None) -> list[dict]:
    """configs/continuum.py's sweep(), restricted (smoke: SMOKE's grid); `noisy_objectives` restricts the
    runs with label noise further."""
    runs = grid.sweep()
    if smoke:
        levels, seeds, noise, objectives = SMOKE["levels"], SMOKE["seeds"], SMOKE["noise"], SMOKE["objectives"]
    return [r for r in runs
            if (levels is None or r["level"] in levels) and (seeds is None or r["seed"] in seeds)
            and (noise is None or r["noise"] in noise)
            and (objectives is None or objective_label(r) in objectives)
            and (noisy_objectives is None or r["noise"] == 0 or objective_label(r) in noisy_objectives)]


def groups(runs: Sequence[dict]) -> list[tuple[int, int]]:
    """The (level, seed) groups of SFT runs, seed-major (a partial study has whole seeds)."""
    return sorted({(r["level"], r["seed"]) for r in runs}, key=lambda k: (k[1], k[0]))


# ------------------------------------------------------------------------------------------------ data

def prepare_data(root: pathlib.Path, *, smoke: bool, seeds: Sequence[int], noise_levels: Sequence[float]) -> None:
    """The world's JSONL files (each skipped when present): eval (clean), pretraining per level, SFT per
    (seed, noise). Sizes follow the budgets: one epoch of steps x batch."""
    world = world_lib.make_world(**grid.WORLD)
    steps = grid.level_steps(smoke=smoke)
    pre, level, sft = (grid.BUDGETS[(stage, smoke)] for stage in ("pretrain", "level", "sft"))
    for index in range(len(steps)):
        where = grid.paths(root=str(root), level=index, seed=0, noise=0.0)
        if not where["eval_data"].is_file():
            world_lib.write_jsonl(where["eval_data"], world_lib.corrupt(world_lib.all_target_records(world),
                                                                        fraction=0.0, seed=0))
        if not where["pretrain_data"].is_file():
            if index == 0:  # the other maps only: the target's tag never appears
                records = world_lib.pretraining_records(world, x=0.0, count=pre["steps"] * pre["batch"], seed=0)
            else:
                count = (steps[index] - steps[index - 1]) * level["batch"]
                records = world_lib.pretraining_records(world, x=grid.TARGET_FRACTION, count=count, seed=index)
            world_lib.write_jsonl(where["pretrain_data"], world_lib.corrupt(records, fraction=0.0, seed=0))
    for seed in seeds:
        for noise in noise_levels:
            path = grid.paths(root=str(root), level=0, seed=seed, noise=noise)["sft_data"]
            if not path.is_file():
                clean = world_lib.target_records(world, count=sft["steps"] * sft["batch"], seed=seed)
                world_lib.write_jsonl(path, world_lib.corrupt(clean, fraction=noise, seed=seed))


def write_json(path: pathlib.Path, value) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    tmp.replace(path)


# ------------------------------------------------------------------------------------------------ runs

def objective_specs(runs: Sequence[dict]) -> dict:
    """{label: ObjectiveSpec} of the objectives in `runs` (DFT's gate is −p's: left out)."""
    from deft_jax import objectives

    specs = {}
    for run in runs:
        params = grid.objective_params(run["objective"], alpha=run.get("alpha", 0.5),
                                       epsilon=run.get("epsilon", 1e-6))
        if run["objective"] != "dft":
            specs[objective_label(run)] = objectives.parse_objective(run["objective"], **params)
    return specs


def measure_model(config, params, *, max_new_tokens: int) -> dict:
    """Teacher-forced metrics on the eval set (clean answers) and graded generation scores. The metrics do
    not depend on the training objective: they are measured under NLL's loss spec, so one compiled
    evaluation serves every run ('loss' and 'mean_gate' are NLL's)."""
    from deft_jax.evaluation import evaluator as evaluate
    from experiments.continuum import measure

    config = config.copy_and_resolve_references()
    config.unlock()
    config.objective = grid.ml_collections.ConfigDict({"name": "nll"})
    setup = build.setup(config, mesh_fallback=True)
    examples = evaluate.eval_examples(config, num_eval=None)
    return {"eval": measure.teacher_forced(setup, params, examples),
            "generation": measure.generation_scores(setup, params, examples, max_new_tokens=max_new_tokens)}


def pretrain_level(root: pathlib.Path, *, level: int, smoke: bool, specs: dict, log=print) -> dict:
    """Pretrain `level` unless done (level 0 from scratch, level i from level i − 1) and measure it: its
    prior on the SFT task (mean target probability p of seed 0's clean SFT answers), eval scores, and the
    wrong labels' gradient shares at step 0 (seed 0's 20%-noise SFT set, every objective's gate)."""
    from deft_jax import data as data_lib
    from deft_jax.training import loop as train
    from experiments.continuum import measure

    run_dir = grid.paths(root=str(root), level=level, seed=0, noise=0.0)["pretrain_run"]
    if (run_dir / BASE).is_file():
        report = json.loads((run_dir / BASE).read_text())
        if set(specs) <= {row["objective"] for row in report["wrong_labels"]}:
            return report
        return refresh_wrong_labels(root, level=level, smoke=smoke, specs=specs, report=report)
    smoke_arg = ",smoke" if smoke else ""
    config = load_config(f"stage=pretrain,root={root},level={level}{smoke_arg}")
    started = time.perf_counter()
    final = train.train_and_evaluate(config, run_dir)
    if final.get("preempted"):  # stopped by a signal (checkpoint saved): resumes on relaunch
        raise SystemExit(f"continuum: {grid.level_name(level)} stopped at step {final['step']}; relaunch to continue")
    train_seconds = time.perf_counter() - started
    params = final["state"].params
    sft_config = load_config(f"stage=sft,root={root},level={level},seed=0,noise=0.2{smoke_arg}")
    setup = build.setup(sft_config, mesh_fallback=True)
    noisy = data_lib.load_examples(sft_config.data, split="train")
    clean = [dataclasses.replace(example, response=example.reference) for example in noisy]
    steps = grid.level_steps(smoke=smoke)
    report = {"level": level, "target_steps": steps[level],
              "target_examples": round(steps[level] * grid.BUDGETS[("level", smoke)]["batch"] * grid.TARGET_FRACTION),
              "train_seconds": train_seconds, "final_train_loss": final.get("train/loss"),
              "sft_data": measure.teacher_forced(setup, params, clean),
              **measure_model(sft_config, params, max_new_tokens=answer_tokens()),
              "wrong_labels": measure.wrong_label_rows(setup, params, noisy=noisy, objective_specs=specs,
                                                       task=grid.level_name(level))}
    report["seconds"] = time.perf_counter() - started
    write_json(run_dir / BASE, report)
    log(f"pretrained {grid.level_name(level)} ({steps[level]} target-rich steps): base mean p on the SFT data "
        f"{report['sft_data']['mean_p']:.3f}, eval char accuracy {report['generation']['char_accuracy']:.3f} "
        f"({train_seconds:.0f}s training, {report['seconds']:.0f}s in all)")
    return report


def refresh_wrong_labels(root: pathlib.Path, *, level: int, smoke: bool, specs: dict, report: dict) -> dict:
    """Re-measure a level's step-0 wrong-label rows under every objective of `specs` (a report written by
    a narrower selection lacks some) from its checkpoint; the rest of base.json is kept."""
    from deft_jax import data as data_lib
    from experiments.continuum import measure

    run_dir = grid.paths(root=str(root), level=level, seed=0, noise=0.0)["pretrain_run"]
    config = load_config(f"stage=sft,root={root},level={level},seed=0,noise=0.2" + (",smoke" if smoke else ""))
    setup = build.setup(config, mesh_fallback=True)
    params = setup.initial_params()
    noisy = data_lib.load_examples(config.data, split="train")
    report["wrong_labels"] = measure.wrong_label_rows(setup, params, noisy=noisy, objective_specs=specs,
                                                      task=grid.level_name(level))
    write_json(run_dir / BASE, report)
    return report


def answer_tokens() -> int:
    """Generation length: the answer (one byte per symbol) plus EOS and a margin of 2."""
    return grid.WORLD["length"] + 3


def sft_run(root: pathlib.Path, run: dict, *, smoke: bool, specs: dict, log=print) -> dict:
    """Fine-tune one grid run unless done and write its report (result.json)."""
    from deft_jax import data as data_lib
    from deft_jax.training import loop as train
    from experiments.continuum import measure

    run_dir = root / "sft" / run_name(run)
    if (run_dir / RESULT).is_file():
        return json.loads((run_dir / RESULT).read_text())
    if run_dir.exists():
        shutil.rmtree(run_dir)
    config = load_config(config_arg(run, root=root, smoke=smoke))
    started = time.perf_counter()
    final = train.train_and_evaluate(config, run_dir)
    if final.get("preempted"):  # stopped by a signal (checkpoint saved): not a finished run
        raise SystemExit(f"continuum: {run_name(run)} stopped at step {final['step']}; relaunch to continue")
    train_seconds = time.perf_counter() - started
    params = final["state"].params
    result = {"name": run_name(run), "label": objective_label(run), **run, "train_seconds": train_seconds,
              "skipped_steps": final["skipped_steps"], "compilations": final["compilations"],
              **measure_model(config, params, max_new_tokens=answer_tokens()),
              "dynamics": measure.dynamics(run_dir)}
    if run["noise"] > 0:
        setup = build.setup(config, mesh_fallback=True)
        noisy = data_lib.load_examples(config.data, split="train")
        label = objective_label(run)
        own = {label: specs[label]} if label in specs else {"prob": specs.get("prob")}
        result["wrong_labels"] = measure.wrong_label_rows(setup, params, noisy=noisy,
                                                          objective_specs={k: v for k, v in own.items() if v},
                                                          task=grid.level_name(run["level"]))
    result["seconds"] = time.perf_counter() - started
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # reports only: keeps the study small
    write_json(run_dir / RESULT, result)
    log(f"{run_name(run)}: char accuracy {result['generation']['char_accuracy']:.3f}, eval mean p "
        f"{result['eval']['mean_p']:.3f} ({train_seconds:.1f}s training, {result['seconds']:.1f}s in all)")
    return result


def work(root: pathlib.Path, *, runs: Sequence[dict], keys: Sequence[tuple[int, int]], smoke: bool,
         deadline: float | None, rotate: int = 0, log=print) -> int:
    """Fine-tune the runs of each (level, seed) group of `keys`; returns the number of groups left. Each
    group's objectives start at offset `rotate`, so parallel workers compile different steps first and
    find the others in the shared compilation cache."""
    specs = objective_specs(runs)
    for index, key in enumerate(keys):
        if deadline is not None and time.time() > deadline:
            log(f"deadline reached: {len(keys) - index} group(s) left; relaunch to continue")
            return len(keys) - index
        group = [run for run in runs if (run["level"], run["seed"]) == key]
        shift = rotate % len(group)
        for run in group[shift:] + group[:shift]:
            sft_run(root, run, smoke=smoke, specs=specs, log=log)
    return 0


def parse_list(text: str | None, kind):
    return None if not text else tuple(kind(v) for v in text.split(","))


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="continuum", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="runs/continuum")
    parser.add_argument("--smoke", action="store_true", help="two levels, one seed, NLL and DEFT, tiny budget")
    parser.add_argument("--workers", type=int, default=1, help="processes (each single-threaded XLA)")
    parser.add_argument("--levels", default=None, help="comma-separated level indices (default: configs/continuum.py)")
    parser.add_argument("--noise", default=None, help="comma-separated noise fractions")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds")
    parser.add_argument("--objectives", default=None, help="comma-separated labels (nll,prob,dlog0.5,eaft,cayley,deft,...)")
    parser.add_argument("--noisy_objectives", default=None, help="labels kept for the runs with label noise")
    parser.add_argument("--deadline_minutes", type=float, default=None,
                        help="start no new (level, seed) group after this long")
    parser.add_argument("--no_analysis", action="store_true")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers={args.workers}: must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    root = pathlib.Path(args.workdir).absolute()
    runs = select_runs(smoke=args.smoke, levels=parse_list(args.levels, int), seeds=parse_list(args.seeds, int),
                       noise=parse_list(args.noise, float), objectives=parse_list(args.objectives, str),
                       noisy_objectives=parse_list(args.noisy_objectives, str))
    if not runs:
        print("continuum: error: the selection (--levels/--seeds/--noise/--objectives) leaves no run",
              file=sys.stderr)
        return 2
    keys = groups(runs)
    started = time.time()
    deadline = args.deadline or (started + 60 * args.deadline_minutes if args.deadline_minutes else None)
    if args.worker is not None:  # one of --workers processes: its share of the groups
        return work(root, runs=runs, keys=keys[args.worker::args.workers], smoke=args.smoke, deadline=deadline,
                    rotate=3 * args.worker, log=lambda m: print(f"[worker {args.worker}] {m}", flush=True))
    prepare_data(root, smoke=args.smoke, seeds=sorted({r["seed"] for r in runs}),
                 noise_levels=sorted({r["noise"] for r in runs} | {0.2}))
    specs = objective_specs(runs)
    for level in range(max(r["level"] for r in runs) + 1):  # the chain up to the highest level used
        pretrain_level(root, level=level, smoke=args.smoke, specs=specs)
    pretrain_seconds = time.time() - started
    if args.workers == 1:
        left = work(root, runs=runs, keys=keys, smoke=args.smoke, deadline=deadline)
    else:
        env = {**os.environ, "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " " + SINGLE_THREAD_XLA).strip(),
               "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        passed = ["--workdir", str(root)] + (["--smoke"] if args.smoke else []) + [
            item for flag in ("levels", "seeds", "noise", "objectives", "noisy_objectives") if getattr(args, flag)
            for item in (f"--{flag}", getattr(args, flag))]
        extra = ["--deadline", str(deadline)] if deadline else []
        workers = [subprocess.Popen([sys.executable, "-m", "experiments.continuum.run", *passed, *extra,
                                     "--workers", str(args.workers), "--worker", str(i)], env=env, cwd=REPO_ROOT)
                   for i in range(min(args.workers, len(keys)))]
        left = sum(w.wait() for w in workers)
    usage = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(u.ru_utime + u.ru_stime for u in usage)
    print(f"continuum: {len(runs)} runs in {len(keys)} groups under {root}; wall {time.time() - started:.0f}s "
          f"(pretraining chain {pretrain_seconds:.0f}s), CPU time {cpu:.0f}s, load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}"
          + (f"; {left} group(s) left (relaunch to continue)" if left else ""), flush=True)
    if not args.no_analysis:
        from experiments.continuum import analyze

        analyze.main(["--workdir", str(root)] + (["--smoke"] if args.smoke else []))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.exit(main())
