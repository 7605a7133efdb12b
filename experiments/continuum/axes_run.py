"""The continuum's axes study, one resumable command:

    python -m experiments.continuum.axes_run --workdir runs/continuum_axes --workers 2
    python -m experiments.continuum.axes_run --workdir runs/continuum_axes_smoke --smoke

The grid of configs/continuum_axes.py: prior level × ambiguity × label noise × objectives × seeds. For every
pretrained (level, ambiguity) model and every SFT run it measures three scores (experiments/continuum/
axes.py): fit (the SFT task's seen entries), gen (entries of the task SFT never shows) and retention (maps
1..K, the pretraining tasks), each the greedy character accuracy with any valid symbol accepted. A base
report (base.json) also holds the prior (mean p of seed 0's clean SFT labels), the probe's statistics at
those labels (deft_jax.evaluation.probe: entropy, near-top tokens, measured ambiguity), the generated data's
measured ambiguity, and a fingerprint (SHA-256) of the params; every SFT run (result.json) records the
fingerprint of the params it started from, so retention is always against the same base model.

Done markers and resuming are experiments/continuum/run.py's: a run's report is written last and
atomically, and a relaunch skips finished runs. --workers N splits the (level, ambiguity, seed) groups over N
processes; --levels, --ambiguity, --noise, --seeds, --objectives restrict the grid; --deadline_minutes stops
starting new groups after that long. The summary line gives wall time, CPU time (getrusage of all its
processes) and the load average.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
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
from configs import continuum_axes as axes_grid  # noqa: E402
from experiments.continuum import axes as axes_lib  # noqa: E402
from experiments.continuum import run as run_lib  # noqa: E402
from experiments.continuum import world as world_lib  # noqa: E402

SMOKE = dict(levels=(0, 1), ambiguity=(0.0, 0.5), seeds=(0,), noise=(0.0,), objectives=("nll", "prob"))
RESULT, BASE = run_lib.RESULT, run_lib.BASE


def label(run: dict) -> str:
    return run_lib.objective_label(run)


def run_name(run: dict) -> str:
    return (f"{grid.level_name(run['level'])}-{axes_grid.amb_name(run['ambiguity'])}-seed{run['seed']}-"
            f"noise{run['noise']:g}-{label(run)}")


def config_arg(run: dict, *, root: pathlib.Path, smoke: bool) -> str:
    fields = {"stage": "sft", "root": str(root), **run}
    return ",".join([f"{k}={v}" for k, v in fields.items()] + (["smoke"] if smoke else []))


def select_runs(*, smoke: bool, levels=None, ambiguity=None, seeds=None, noise=None, objectives=None) -> list[dict]:
    if smoke:  # SMOKE's grid, restricted further by what is given
        levels, ambiguity, seeds, noise, objectives = (given or SMOKE[k] for k, given in (
            ("levels", levels), ("ambiguity", ambiguity), ("seeds", seeds), ("noise", noise),
            ("objectives", objectives)))
    runs = axes_grid.sweep(levels=levels or axes_grid.LEVELS, ambiguity=ambiguity or axes_grid.AMBIGUITY,
                           seeds=seeds or axes_grid.SEEDS, noise=noise or axes_grid.NOISE)
    return [r for r in runs if objectives is None or label(r) in objectives]


def groups(runs: Sequence[dict]) -> list[tuple]:
    """(level, ambiguity, seed) groups, seed-major (a partial study has whole seeds)."""
    return sorted({(r["level"], r["ambiguity"], r["seed"]) for r in runs}, key=lambda k: (k[2], k[1], k[0]))


# ------------------------------------------------------------------------------------------------ data

def prepare_data(root: pathlib.Path, *, smoke: bool, levels: Sequence[int], ambiguity: Sequence[float],
                 seeds: Sequence[int], noise_levels: Sequence[float]) -> None:
    """The JSONL files of every (ambiguity, level ≤ max level) pretraining step, SFT set and eval set."""
    world = world_lib.make_world(**grid.WORLD)
    steps = grid.level_steps(smoke=smoke)
    pre, level_budget, sft = (grid.BUDGETS[(stage, smoke)] for stage in ("pretrain", "level", "sft"))
    for a in ambiguity:
        axes = axes_lib.make_axes(world, ambiguity=a)
        where = axes_grid.paths(root=str(root), level=0, seed=0, noise=0.0, ambiguity=a)
        for name, records in axes_lib.eval_sets(axes).items():
            if not where[f"eval_{name}"].is_file():
                world_lib.write_jsonl(where[f"eval_{name}"], records)
        for index in range(max(levels) + 1):
            path = axes_grid.paths(root=str(root), level=index, seed=0, noise=0.0, ambiguity=a)["pretrain_data"]
            if path.is_file():
                continue
            if index == 0:  # the other maps only: shared by every ambiguity setting
                records = world_lib.pretraining_records(world, x=0.0, count=pre["steps"] * pre["batch"], seed=0)
            else:
                count = (steps[index] - steps[index - 1]) * level_budget["batch"]
                records = axes_lib.pretraining_records(axes, x=grid.TARGET_FRACTION, count=count, seed=index)
            world_lib.write_jsonl(path, world_lib.corrupt(records, fraction=0.0, seed=0))
        for seed in seeds:
            for f in noise_levels:
                path = axes_grid.paths(root=str(root), level=0, seed=seed, noise=f, ambiguity=a)["sft_data"]
                if not path.is_file():
                    clean = axes_lib.sft_records(axes, count=sft["steps"] * sft["batch"], seed=seed)
                    world_lib.write_jsonl(path, world_lib.corrupt(clean, fraction=f, seed=seed))


# ------------------------------------------------------------------------------------------------ measuring

def fingerprint(params) -> str:
    """SHA-256 of every parameter array's bytes, in tree order."""
    import jax
    import numpy as np

    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(jax.device_get(params)):
        digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return digest.hexdigest()


@functools.lru_cache(maxsize=16)
def eval_examples(config_arg_text: str, ambiguity: float) -> dict:
    """{set: Examples} of the three eval sets (the config's data settings, each set's JSONL)."""
    from deft_jax import data as data_lib

    config = axes_grid.get_config(config_arg_text)
    config.unlock()
    out = {}
    for name in axes_grid.EVAL_SETS:
        config.data.eval_path = config.data.eval_path.replace("eval-fit-", f"eval-{name}-")
        out[name] = data_lib.load_examples(config.data, split="eval")
        config.data.eval_path = config.data.eval_path.replace(f"eval-{name}-", "eval-fit-")
    return out


def scores(setup, params, *, examples: dict, axes: axes_lib.Axes) -> dict:
    """Per eval set: greedy character accuracy (any valid symbol accepted), exact match, n; one generation
    call over the three sets."""
    import numpy as np

    from deft_jax import data as data_lib
    from deft_jax.evaluation import evaluator as evaluate

    names = list(examples)
    everything = [e for name in names for e in examples[name]]
    prompts = data_lib.make_generation_prompts(everything, tokenizer=setup.tokenizer)
    predictions, _ = evaluate.generate_predictions(setup, params, prompts, max_new_tokens=run_lib.answer_tokens(),
                                                   batch_size=len(prompts))
    out, start = {}, 0
    for name in names:
        part = slice(start, start + len(examples[name]))
        start = part.stop
        pairs = [(p, prompt.reference) for p, prompt in zip(predictions[part], prompts[part])]
        char = [axes_lib.score(prediction=p, reference=r, axes=axes) for p, r in pairs]
        exact = [float(axes_lib.canonical_prediction(p, r, axes=axes) == r) for p, r in pairs]
        out[name] = {"accuracy": float(np.mean(char)), "exact_match": float(np.mean(exact)), "n": len(pairs),
                     "samples": [{"reference": r, "prediction": p} for p, r in pairs[:2]]}
    return out


def base_measurements(setup, params, *, config, axes) -> dict:
    """The prior on seed 0's clean SFT labels (teacher-forced mean p, NLL) and the probe's statistics there."""
    import numpy as np

    from deft_jax import data as data_lib
    from deft_jax.evaluation import probe
    from experiments.continuum import measure

    records = [json.loads(line) for line in pathlib.Path(config.data.path).read_text().splitlines() if line]
    labels = data_lib.load_examples(config.data, split="train")
    tokenized, _ = data_lib.tokenize_examples(list(labels), tokenizer=setup.tokenizer, cfg=config.data)
    found = probe.measure(setup, params, tokenized, batch_size=64)
    return {"sft_data": measure.teacher_forced(setup, params, labels),
            "probe": {"mean_p": float(found.p.mean()), "entropy": float(found.entropy.mean()),
                      "near_top": float(np.mean(found.near_top)), "ambiguity": probe.ambiguity(found.near_top)},
            "data_ambiguity": axes_lib.measured_ambiguity(records)}


# ------------------------------------------------------------------------------------------------ runs

def pretrain_level(root: pathlib.Path, *, level: int, ambiguity: float, smoke: bool, log=print) -> dict:
    """Pretrain (level, ambiguity) unless done, continuing the previous level, and measure it (base.json)."""
    from deft_jax.training import loop as train
    from deft_jax.training import setup as build

    world = world_lib.make_world(**grid.WORLD)
    axes = axes_lib.make_axes(world, ambiguity=ambiguity)
    run_dir = axes_grid.paths(root=str(root), level=level, seed=0, noise=0.0, ambiguity=ambiguity)["pretrain_run"]
    report_path = run_dir / f"base-{axes_grid.amb_name(ambiguity)}.json"
    if report_path.is_file():
        return json.loads(report_path.read_text())
    smoke_arg = ",smoke" if smoke else ""
    started = time.perf_counter()
    if not (run_dir / "done").is_file():
        config = axes_grid.get_config(f"stage=pretrain,root={root},level={level},ambiguity={ambiguity}{smoke_arg}")
        final = train.train_and_evaluate(config, run_dir)
        if final.get("preempted"):
            raise SystemExit(f"continuum-axes: {run_dir} stopped at step {final['step']}; relaunch to continue")
        (run_dir / "done").write_text("")
    sft_arg = f"stage=sft,root={root},level={level},ambiguity={ambiguity},seed=0,noise=0.0{smoke_arg}"
    sft_config = axes_grid.get_config(sft_arg)
    setup = build.setup(sft_config, mesh_fallback=True)
    params = setup.initial_params()  # the params every SFT run of this (level, ambiguity) starts from
    steps = grid.level_steps(smoke=smoke)
    report = {"level": level, "ambiguity": ambiguity, "target_steps": steps[level],
              "target_examples": round(steps[level] * grid.BUDGETS[("level", smoke)]["batch"] * grid.TARGET_FRACTION),
              "fingerprint": fingerprint(params),
              "scores": scores(setup, params, examples=eval_examples(sft_arg, ambiguity), axes=axes),
              **base_measurements(setup, params, config=sft_config, axes=axes)}
    report["seconds"] = time.perf_counter() - started
    run_lib.write_json(report_path, report)
    log(f"base level {level} ambiguity {ambiguity:g}: mean p {report['sft_data']['mean_p']:.3f}, fit "
        f"{report['scores']['fit']['accuracy']:.3f}, gen {report['scores']['gen']['accuracy']:.3f}, retention "
        f"{report['scores']['retention']['accuracy']:.3f}, probe ambiguity {report['probe']['ambiguity']:.3f}")
    return report


def sft_run(root: pathlib.Path, run: dict, *, smoke: bool, log=print) -> dict:
    """Fine-tune one run unless done and measure its three scores (result.json)."""
    from deft_jax.training import loop as train
    from deft_jax.training import setup as build
    from experiments.continuum import measure

    run_dir = root / "sft" / run_name(run)
    if (run_dir / RESULT).is_file():
        return json.loads((run_dir / RESULT).read_text())
    if run_dir.exists():
        shutil.rmtree(run_dir)
    arg = config_arg(run, root=root, smoke=smoke)
    config = axes_grid.get_config(arg)
    setup = build.setup(config, mesh_fallback=True)
    started_from = fingerprint(setup.initial_params())
    started = time.perf_counter()
    final = train.train_and_evaluate(config, run_dir)
    if final.get("preempted"):
        raise SystemExit(f"continuum-axes: {run_name(run)} stopped at step {final['step']}; relaunch to continue")
    train_seconds = time.perf_counter() - started
    axes = axes_lib.make_axes(world_lib.make_world(**grid.WORLD), ambiguity=run["ambiguity"])
    result = {"name": run_name(run), "label": label(run), **run, "train_seconds": train_seconds,
              "skipped_steps": final["skipped_steps"], "base_fingerprint": started_from,
              "scores": scores(setup, final["state"].params, examples=eval_examples(arg, run["ambiguity"]), axes=axes),
              "dynamics": measure.dynamics(run_dir)}
    result["seconds"] = time.perf_counter() - started
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    run_lib.write_json(run_dir / RESULT, result)
    s = result["scores"]
    log(f"{run_name(run)}: fit {s['fit']['accuracy']:.3f}, gen {s['gen']['accuracy']:.3f}, retention "
        f"{s['retention']['accuracy']:.3f} ({result['seconds']:.1f}s)")
    return result


def work(root: pathlib.Path, *, runs: Sequence[dict], keys: Sequence[tuple], smoke: bool, deadline: float | None,
         log=print) -> int:
    for index, key in enumerate(keys):
        if deadline is not None and time.time() > deadline:
            log(f"deadline reached: {len(keys) - index} group(s) left; relaunch to continue")
            return len(keys) - index
        for run in [r for r in runs if (r["level"], r["ambiguity"], r["seed"]) == key]:
            sft_run(root, run, smoke=smoke, log=log)
    return 0


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="continuum-axes", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="runs/continuum_axes")
    parser.add_argument("--smoke", action="store_true", help="two levels, two ambiguity settings, one seed, NLL and −p")
    parser.add_argument("--workers", type=int, default=1)
    for flag in ("levels", "ambiguity", "noise", "seeds", "objectives"):
        parser.add_argument(f"--{flag}", default=None, help="comma-separated restriction of the grid")
    parser.add_argument("--deadline_minutes", type=float, default=None)
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers={args.workers}: must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    root = pathlib.Path(args.workdir).absolute()
    parse = run_lib.parse_list
    runs = select_runs(smoke=args.smoke, levels=parse(args.levels, int), ambiguity=parse(args.ambiguity, float),
                       seeds=parse(args.seeds, int), noise=parse(args.noise, float),
                       objectives=parse(args.objectives, str))
    if not runs:
        print("continuum-axes: error: the selection (--levels/--ambiguity/--seeds/--noise/--objectives) leaves no "
              "run", file=sys.stderr)
        return 2
    keys = groups(runs)
    started = time.time()
    deadline = args.deadline or (started + 60 * args.deadline_minutes if args.deadline_minutes else None)
    if args.worker is not None:
        return work(root, runs=runs, keys=keys[args.worker::args.workers], smoke=args.smoke, deadline=deadline,
                    log=lambda m: print(f"[worker {args.worker}] {m}", flush=True))
    levels, ambiguity = sorted({r["level"] for r in runs}), sorted({r["ambiguity"] for r in runs})
    prepare_data(root, smoke=args.smoke, levels=levels, ambiguity=ambiguity,
                 seeds=sorted({r["seed"] for r in runs}), noise_levels=sorted({r["noise"] for r in runs}))
    for a in ambiguity:
        for level in range(max(levels) + 1):  # the chain up to the highest level used
            pretrain_level(root, level=level, ambiguity=a, smoke=args.smoke)
    pretrain_seconds = time.time() - started
    if args.workers == 1:
        left = work(root, runs=runs, keys=keys, smoke=args.smoke, deadline=deadline)
    else:
        env = {**os.environ, "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " " + run_lib.SINGLE_THREAD_XLA).strip(),
               "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        passed = ["--workdir", str(root)] + (["--smoke"] if args.smoke else []) + [
            item for flag in ("levels", "ambiguity", "seeds", "noise", "objectives") if getattr(args, flag)
            for item in (f"--{flag}", getattr(args, flag))]
        extra = ["--deadline", str(deadline)] if deadline else []
        workers = [subprocess.Popen([sys.executable, "-m", "experiments.continuum.axes_run", *passed, *extra,
                                     "--workers", str(args.workers), "--worker", str(i)], env=env, cwd=REPO_ROOT)
                   for i in range(min(args.workers, len(keys)))]
        left = sum(w.wait() for w in workers)
    usage = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(u.ru_utime + u.ru_stime for u in usage)
    print(f"continuum-axes: {len(runs)} runs in {len(keys)} groups under {root}; wall {time.time() - started:.0f}s "
          f"(pretraining chains {pretrain_seconds:.0f}s), CPU time {cpu:.0f}s, load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}" + (f"; {left} group(s) left (relaunch to continue)"
                                                                 if left else ""), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.exit(main())
