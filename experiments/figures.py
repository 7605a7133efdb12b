"""The paper's analysis figures, from our study runs (experiments/study.py).

    python experiments/figures.py --workdir runs/study --out experiments/figures
    python experiments/figures.py --workdir runs/study_smoke --out runs/study_smoke/figures --smoke

Writes (each only when its inputs exist):
  token_scatter.png  one panel per regime (row) and objective (column): every supervised token of a fixed
                     set of eval examples (the first --scatter_examples of the regime's eval split), x = target
                     probability p, y = entropy H of the predicted distribution, colour = log10 of the
                     gradient magnitude ‖∇_z loss‖ = gate · ‖π − e_y‖₂, with ‖π − e_y‖₂ = sqrt(Σπ² − 2p + 1)
                     (from objectives.compute's p, gate and collision Σπ²), under each run's final
                     checkpoint (the 'base' column: the untrained model with NLL's gate 1).
                     Per-run token statistics are cached in <run>/token_stats.npz.
  dynamics.png       DEFT's mean α (= mean Σπ²) and mean target probability per training step, one line per
                     regime, from the trainer's metrics.jsonl (NLL's mean p dashed, for contrast).
  initial_scatter.png  the same panels for the untrained model under every objective's gate (step 0;
                     needs no study run: `--only initial_scatter`).
  scores.png         the evaluator's score per objective and regime (continuum), 0% vs 20% label noise
                     (noise) and the seed spread (seeds): bars are means, error bars one standard deviation.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import pathlib
import sys
from collections.abc import Sequence

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from experiments import study  # noqa: E402

STATS_FILE = "token_stats.npz"
DPI = 72


# ====================================================================================================
# Token statistics (gate x error) of one set of parameters.

def gradient_magnitude(*, p, gate, collision):
    """‖∇_z loss‖₂ = gate · ‖π − e_y‖₂ = gate · sqrt(Σπ² − 2p + 1) (clipped at 0 against rounding)."""
    return gate * np.sqrt(np.maximum(collision - 2.0 * p + 1.0, 0.0))


def token_statistics(setup, params, tokenized, *, objective_specs=None) -> dict:
    """p, entropy, gate and gate·‖π − e_y‖ of every supervised token of `tokenized` (fixed order) under the
    run's objective; with `objective_specs` ({label: spec}), {label: statistics} for each of them from
    the same forward pass."""
    import jax

    from deft_jax import data as data_lib
    from deft_jax.training import teacher_forced
    from deft_jax import objectives
    from deft_jax import sharding
    from deft_jax.training import step

    specs = objective_specs or {"": setup.loss.objective}

    @jax.jit
    def stats(params, batch):
        logits = step.forward_logits(params, batch, model_config=setup.model_config)
        mask = batch["loss_mask"] * batch["weights"][:, None]
        outs = {label: objectives.compute(spec, logits, batch["targets"], mask) for label, spec in specs.items()}
        return {label: {"p": o.p, "entropy": o.entropy, "gate": o.gate, "collision": o.collision}
                for label, o in outs.items()}, mask

    columns = {label: {"p": [], "entropy": [], "gate": [], "collision": []} for label in specs}
    with sharding.mesh_context(setup.mesh, setup.rules):
        for batch in teacher_forced.local_batches(setup, tokenized, rows=8):
            arrays = sharding.put_batch(batch, mesh=setup.mesh, global_rows=8, keys=data_lib.BATCH_KEYS + ("weights",))
            result, mask = jax.device_get(stats(params, arrays))
            valid = np.asarray(mask) > 0
            for label in specs:
                for key in columns[label]:
                    columns[label][key].append(np.asarray(result[label][key])[valid])
    out = {}
    for label in specs:
        values = {key: np.concatenate(parts).astype(np.float32) for key, parts in columns[label].items()}
        values["grad_norm"] = gradient_magnitude(p=values["p"], gate=values["gate"], collision=values["collision"])
        out[label] = values
    return out if objective_specs else out[""]


def study_objective_specs() -> dict:
    """{column label: ObjectiveSpec} of the continuum's objectives (as configs/study.py sets them)."""
    from configs import study as study_config
    from deft_jax import objectives

    return {study.RunSpec("weak", name).point()["objective"]:
            objectives.parse_objective(name, **study_config.objective_params(name, alpha=study.DEFORMED_ALPHA))
            for name in study.OBJECTIVES}


def initial_panels(workdir: pathlib.Path, *, smoke: bool, num_examples: int, log=print) -> dict:
    """{(regime, objective): statistics} of the untrained model under every objective's gate: what each
    objective does with the base model's tokens at step 0 (cached in <workdir>/initial-<regime>.npz)."""
    from deft_jax.training import setup as build
    from deft_jax.evaluation import evaluator as evaluate
    from deft_jax import data as data_lib

    specs = study_objective_specs()
    panels = {}
    for regime in study.REGIMES:
        path = workdir / f"initial-{regime}-{num_examples}.npz"
        if path.is_file():
            with np.load(path) as data:
                flat = {key: data[key] for key in data.files}
        else:
            log(f"initial token statistics: {regime}")
            config = study.base_config(regime, smoke=smoke)
            setup = build.setup(config, mesh_fallback=True)
            params = setup.initial_params()
            tokenized, _ = data_lib.tokenize_examples(evaluate.eval_examples(config, num_eval=num_examples),
                                                      tokenizer=setup.tokenizer, cfg=config.data)
            stats = token_statistics(setup, params, tokenized, objective_specs=specs)
            flat = {f"{label}|{key}": value for label, values in stats.items() for key, value in values.items()}
            workdir.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(path.stem + ".tmp.npz")
            np.savez(temporary, **flat)
            temporary.replace(path)
        for name, value in flat.items():
            label, key = name.split("|")
            panels.setdefault((regime, label), {})[key] = value
    return panels


def initial_summary(panels: dict) -> dict:
    """{regime: {tokens, mean_p, mean_entropy, objectives: {label: {mean_gate, grad_ratio}}}} of the untrained
    model's panels: mean gate and mean gate·‖π − e_y‖ relative to NLL's, over the same supervised tokens."""
    summary = {}
    for regime in study.REGIMES:
        nll = panels[(regime, "nll")]
        objectives = {label: values for (r, label), values in panels.items() if r == regime}
        summary[regime] = {
            "tokens": int(nll["p"].size), "mean_p": float(np.mean(nll["p"])),
            "mean_entropy": float(np.mean(nll["entropy"])),
            "objectives": {label: {"mean_gate": float(np.mean(values["gate"])),
                                   "grad_ratio": float(np.mean(values["grad_norm"]) / np.mean(nll["grad_norm"]))}
                           for label, values in objectives.items()}}
    return summary


def run_token_statistics(*, run_dir: pathlib.Path | None, config, num_examples: int) -> dict[str, np.ndarray]:
    """Token statistics of a run's latest checkpoint (run_dir) or of the base model (run_dir None: config's
    untrained model, objective forced to NLL); cached in <run_dir or its cache dir>/token_stats.npz."""
    from deft_jax.training import setup as build
    from deft_jax.training import checkpointing
    from deft_jax.evaluation import evaluator as evaluate
    from deft_jax import data as data_lib

    setup = build.setup(config, mesh_fallback=True)
    if run_dir is None:
        params = setup.initial_params()
    else:
        params = setup.restore_params(workdir=run_dir, step=checkpointing.available_steps(run_dir)[-1])
    examples = evaluate.eval_examples(config, num_eval=num_examples)
    tokenized, _ = data_lib.tokenize_examples(examples, tokenizer=setup.tokenizer, cfg=config.data)
    return token_statistics(setup, params, tokenized)


def cached_statistics(path: pathlib.Path, compute) -> dict[str, np.ndarray]:
    if path.is_file():
        with np.load(path) as data:
            return {key: data[key] for key in data.files}
    values = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.stem + ".tmp.npz")
    np.savez(temporary, **values)
    temporary.replace(path)
    return values


def scatter_panels(workdir: pathlib.Path, *, smoke: bool, num_examples: int, log=print):
    """{(regime, column label): stats} for the base model and every finished continuum run."""
    panels = {}
    for spec in study.study_specs("continuum", smoke=smoke):
        run_dir = workdir / spec.name
        if not (run_dir / "SWEEP_DONE.json").is_file():
            continue
        if (spec.regime, "base") not in panels:
            panels[(spec.regime, "base")] = cached_statistics(
                workdir / f"base-{spec.regime}" / STATS_FILE,
                lambda: run_token_statistics(run_dir=None, config=study.base_config(spec.regime, smoke=smoke),
                                             num_examples=num_examples))
        from deft_jax.training import setup as build

        log(f"token statistics: {spec.name}")
        panels[(spec.regime, spec.point()["objective"])] = cached_statistics(
            run_dir / STATS_FILE,
            lambda: run_token_statistics(run_dir=run_dir, config=build.load_run_config(run_dir),
                                         num_examples=num_examples))
    return panels


# ====================================================================================================
# Figures.

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_token_scatter(panels: dict, *, path: pathlib.Path, title: str) -> pathlib.Path | None:
    if not panels:
        return None
    plt = _pyplot()
    from matplotlib.colors import Normalize

    regimes = [r for r in study.REGIMES if any(key[0] == r for key in panels)]
    columns = list(dict.fromkeys(key[1] for key in panels))
    values = np.concatenate([np.log10(np.maximum(s["grad_norm"], 1e-6)) for s in panels.values()])
    norm = Normalize(vmin=float(np.percentile(values, 1)), vmax=float(np.percentile(values, 99)))
    figure, axes = plt.subplots(len(regimes), len(columns), figsize=(1.9 * len(columns), 1.8 * len(regimes) + 0.6),
                                squeeze=False, sharex=True, sharey=True)
    scatter = None
    for i, regime in enumerate(regimes):
        for j, column in enumerate(columns):
            axis = axes[i][j]
            stats = panels.get((regime, column))
            if stats is None:
                axis.set_axis_off()
                continue
            order = np.argsort(stats["grad_norm"])  # largest gradients drawn last (on top)
            scatter = axis.scatter(stats["p"][order], stats["entropy"][order], s=3, linewidths=0,
                                   c=np.log10(np.maximum(stats["grad_norm"][order], 1e-6)), cmap="viridis", norm=norm)
            if i == 0:
                axis.set_title(column, fontsize=7)
            if j == 0:
                axis.set_ylabel(f"{regime}\nentropy H", fontsize=7)
            if i == len(regimes) - 1:
                axis.set_xlabel("target prob. p", fontsize=7)
            axis.tick_params(labelsize=6)
            axis.set_xlim(-0.02, 1.02)
    if scatter is not None:
        colorbar = figure.colorbar(scatter, ax=axes, fraction=0.015, pad=0.01)
        colorbar.set_label("log10 gate·‖π − e_y‖", fontsize=7)
        colorbar.ax.tick_params(labelsize=6)
    figure.suptitle(title, fontsize=8)
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path


def _series(records: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    points = {r["step"]: r[key] for r in records if key in r}  # a resumed run may repeat steps: keep the last
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def plot_dynamics(workdir: pathlib.Path, *, path: pathlib.Path, title: str) -> pathlib.Path | None:
    """DEFT's mean α and mean p per step, per regime (NLL's mean p dashed)."""
    from deft_jax.training import metrics

    lines = {}
    for regime in study.REGIMES:
        deft = metrics.read_records(workdir / study.RunSpec(regime, "deft").name)
        if deft:
            lines[regime] = (deft, metrics.read_records(workdir / study.RunSpec(regime, "nll").name))
    if not lines:
        return None
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(7.0, 2.6))
    for index, (regime, (deft, nll)) in enumerate(lines.items()):
        color = f"C{index}"
        left.plot(*_series(deft, "train/mean_alpha"), color=color, label=regime)
        right.plot(*_series(deft, "train/mean_p"), color=color, label=f"{regime} (DEFT)")
        if nll:
            right.plot(*_series(nll, "train/mean_p"), color=color, linestyle="--", alpha=0.6,
                       label=f"{regime} (NLL)")
    left.set_ylabel("DEFT mean α = mean Σπ²", fontsize=8)
    right.set_ylabel("mean target prob. p (train batch)", fontsize=8)
    for axis in (left, right):
        axis.set_xlabel("step", fontsize=8)
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)
        axis.tick_params(labelsize=7)
    left.legend(fontsize=6)
    right.legend(fontsize=6)
    figure.suptitle(title, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path


def read_table(path: pathlib.Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _float(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def plot_scores(workdir: pathlib.Path, *, path: pathlib.Path, title: str) -> pathlib.Path | None:
    """Bars of the score's mean (± std): continuum objectives × regimes, noise 0 vs 0.2, seeds."""
    tables = {name: read_table(workdir / f"{name}.csv") for name in study.STUDIES}
    tables = {name: rows for name, rows in tables.items() if rows}
    if not tables:
        return None
    plt = _pyplot()
    labels = ["base"] + [run.point()["objective"] for run in (study.RunSpec("weak", o) for o in study.OBJECTIVES)]
    labels += [row["objective"] for rows in tables.values() for row in rows if row["objective"] not in labels]
    colors = {label: f"C{index % 10}" for index, label in enumerate(dict.fromkeys(labels))}  # same in every panel
    widths = {"continuum": 3.0, "noise": 1.4, "seeds": 1.0}
    figure, axes = plt.subplots(1, len(tables), figsize=(sum(2.4 * widths[n] for n in tables), 2.8), squeeze=False,
                                gridspec_kw={"width_ratios": [widths[n] for n in tables]})
    for axis, (name, rows) in zip(axes[0], tables.items()):
        if name == "continuum":
            groups, series = [r for r in study.REGIMES if any(row["regime"] == r for row in rows)], \
                list(dict.fromkeys(row["objective"] for row in rows))
            key = lambda row: (row["regime"], row["objective"])  # noqa: E731
        elif name == "noise":
            groups = [f"{_float(n):g}" for n in dict.fromkeys(row["noise"] for row in rows)]
            series = list(dict.fromkeys(row["objective"] for row in rows))
            key = lambda row: (f"{_float(row['noise']):g}", row["objective"])  # noqa: E731
        else:
            groups, series = ["weak"], list(dict.fromkeys(row["objective"] for row in rows))
            key = lambda row: (row["regime"], row["objective"])  # noqa: E731
        by_key = {key(row): row for row in rows}
        width = 0.8 / max(len(series), 1)
        for s, label in enumerate(series):
            xs, means, stds = [], [], []
            for g, group in enumerate(groups):
                row = by_key.get((group, label))
                if row is None:
                    continue
                xs.append(g - 0.4 + width * (s + 0.5))
                means.append(_float(row.get("score_mean")))
                stds.append(_float(row.get("score_std")))
            stds = [0.0 if math.isnan(v) else v for v in stds]
            axis.bar(xs, means, width=width, yerr=stds, capsize=2, label=label, color=colors[label])
        axis.set_xticks(range(len(groups)), [f"noise {g}" if name == "noise" else g for g in groups], fontsize=7)
        axis.set_title(name if name == "continuum" else f"{name} (± std over seeds)", fontsize=8)
        axis.set_ylabel("score", fontsize=7)
        axis.tick_params(labelsize=6)
        axis.grid(axis="y", alpha=0.3)
        axis.legend(fontsize=5, ncol=2 if len(series) > 4 else 1)
    figure.suptitle(title, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path


def main(argv: Sequence[str] | None = None) -> list[pathlib.Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="runs/study", help="the studies' workdir (experiments/study.py)")
    parser.add_argument("--out", default="experiments/figures", help="folder for the PNGs")
    parser.add_argument("--smoke", action="store_true", help="the smoke studies' runs (titles say so)")
    parser.add_argument("--scatter_examples", type=int, default=8, help="eval examples per scatter panel")
    parser.add_argument("--json", default=None, help="with initial_scatter: also write its mean gate and gradient "
                        "per regime and objective (raw output, experiments/raw.py) here")
    parser.add_argument("--only", default="token_scatter,dynamics,scores",
                        help="comma-separated, of token_scatter, dynamics, scores, initial_scatter (the untrained "
                             "model under every objective's gate; needs no study run)")
    args = parser.parse_args(argv)
    workdir, out = pathlib.Path(args.workdir).absolute(), pathlib.Path(args.out)
    wanted = set(args.only.split(","))
    unknown = sorted(wanted - {"token_scatter", "dynamics", "scores", "initial_scatter"})
    if unknown:
        raise SystemExit(f"figures: unknown figure(s) {unknown} in --only")
    if args.json and "initial_scatter" not in wanted:
        raise SystemExit("figures: --json writes initial_scatter's figures: add initial_scatter to --only")
    if not workdir.is_dir() and wanted != {"initial_scatter"}:
        raise SystemExit(f"figures: --workdir {workdir} does not exist; run experiments/study.py first")
    out.mkdir(parents=True, exist_ok=True)
    note = " (SMOKE: tiny random model, not a result)" if args.smoke else ""
    written = []
    if "initial_scatter" in wanted:
        panels = initial_panels(workdir, smoke=args.smoke, num_examples=args.scatter_examples)
        if args.json:
            from experiments import raw

            raw.write(args.json, raw.record(script="figures_initial", figures=initial_summary(panels),
                                            settings={"num_examples": args.scatter_examples, "smoke": args.smoke}))
            print(f"wrote {args.json}")
        written.append(plot_token_scatter(panels, path=out / "initial_scatter.png",
                                          title=f"untrained model, {args.scatter_examples} eval examples per regime: "
                                                f"p vs entropy, colour = each objective's gradient magnitude{note}"))
    if "token_scatter" in wanted:
        panels = scatter_panels(workdir, smoke=args.smoke, num_examples=args.scatter_examples)
        written.append(plot_token_scatter(panels, path=out / "token_scatter.png",
                                          title=f"tokens of {args.scatter_examples} eval examples per regime: "
                                                f"p vs entropy, colour = gradient magnitude{note}"))
    if "dynamics" in wanted:
        written.append(plot_dynamics(workdir, path=out / "dynamics.png", title=f"DEFT training dynamics{note}"))
    if "scores" in wanted:
        written.append(plot_scores(workdir, path=out / "scores.png", title=f"evaluator scores{note}"))
    written = [path for path in written if path is not None]
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main()
