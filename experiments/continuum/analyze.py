"""Tables and figures of the continuum study from its per-run reports (base.json, result.json).

    python -m experiments.continuum.analyze --workdir runs/continuum --out experiments/continuum/results
    python -m experiments.continuum.analyze --results experiments/continuum/results   # from committed data

From a study directory (--workdir) it reads every sft/*/result.json and pretrain/*/base.json, copies them
into <out>/raw/ (results.jsonl, bases.json: the raw results, small enough to commit) and writes the rest.
From a results directory (--results) it reads <dir>/raw/ when present, else the per-run rows of
<dir>/runs.csv and the per-level rows of <dir>/levels.json; those hold every number of the accuracy and
mean-p tables and verdicts, not the per-step dynamics (α trajectory) or the wrong-label rows, whose
tables are then left out with a note. It writes to runs/continuum_recomputed unless --out says otherwise.

Writes <out>/continuum.md (every table), <out>/runs.csv (one row per SFT run), <out>/summary.json (the
numbers behind the tables and every verdict), <out>/verdicts.md (experiments/continuum/verdicts.py),
continuum.png (score vs the base model's measured mean target probability, 95% intervals over seeds),
paired.png (differences against NLL on the same seed and data order) and alpha.png (DEFT's α per step, per
prior level). Intervals are t intervals over seeds (experiments/continuum/stats.py): mean ± t(0.975, n − 1)
· sd / √n; a cell marked "≈" is a paired difference whose raw interval includes zero (the tables are
descriptive; the verdicts apply Holm's adjustment over the comparisons each rests on).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import pathlib
import sys
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from experiments.continuum import stats  # noqa: E402

LABEL_ORDER = ("nll", "prob", "dft", "dlog0.25", "dlog0.5", "dlog0.75", "eaft", "cayley", "deft", "deft_eps0")
DISPLAY = {"nll": "NLL", "prob": "−p", "dft": "DFT", "dlog0.25": "dlog α=0.25", "dlog0.5": "dlog α=0.5",
           "dlog0.75": "dlog α=0.75", "eaft": "EAFT", "cayley": "Cayley", "deft": "DEFT",
           "deft_eps0": "DEFT ε=0"}
SCORE = ("generation", "char_accuracy")


def load_results(root: pathlib.Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / "sft").glob("*/result.json"))]


def load_bases(root: pathlib.Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / "pretrain").glob("*/base.json"))]


CSV_FIELDS = {"char_accuracy": ("generation", "char_accuracy"), "jaro_winkler": ("generation", "jaro_winkler"),
              "exact_match": ("generation", "exact_match"), "eval_nll": ("eval", "nll"),
              "eval_mean_p": ("eval", "mean_p"), "eval_token_accuracy": ("eval", "token_accuracy")}


def results_from_csv(path: pathlib.Path) -> list[dict]:
    """runs.csv's rows in result.json's shape (the fields runs.csv holds)."""
    results = []
    with pathlib.Path(path).open(newline="") as handle:
        for row in csv.DictReader(handle):
            result = {"name": row["name"], "level": int(row["level"]), "seed": int(row["seed"]),
                      "noise": float(row["noise"]), "label": row["label"], "generation": {}, "eval": {},
                      "train_seconds": float(row["train_seconds"]), "seconds": float(row["seconds"])}
            for column, (group, key) in CSV_FIELDS.items():
                result[group][key] = float(row[column])
            results.append(result)
    return results


def export_raw(results: Sequence[dict], bases: Sequence[dict], out: pathlib.Path) -> None:
    """<out>/raw/results.jsonl (one result.json per line, by name) and <out>/raw/bases.json."""
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    ordered = sorted(results, key=lambda r: r["name"])
    (raw / "results.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in ordered))
    (raw / "bases.json").write_text(json.dumps(sorted(bases, key=lambda b: b["level"]), indent=1, sort_keys=True))


def load_study(results_dir: pathlib.Path) -> tuple[list[dict], list[dict], str]:
    """(results, bases, source) of a results directory: raw/ if present, else runs.csv + levels.json."""
    raw = results_dir / "raw"
    if (raw / "results.jsonl").is_file() and (raw / "bases.json").is_file():
        results = [json.loads(line) for line in (raw / "results.jsonl").read_text().splitlines() if line]
        return results, json.loads((raw / "bases.json").read_text()), "raw"
    runs, levels = results_dir / "runs.csv", results_dir / "levels.json"
    missing = [str(p) for p in (runs, levels) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"continuum-analyze: error: {', '.join(missing)} missing and no {raw}/results.jsonl; "
                                "point --results at experiments/continuum/results or analyse a study with --workdir")
    return results_from_csv(runs), json.loads(levels.read_text())["levels"], "csv"


def value(report: dict, path: Sequence[str] = SCORE) -> float:
    for key in path:
        report = report[key]
    return float(report)


def interval(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, half-width of the 95% t interval, n); half-width NaN for n < 2 (stats.interval)."""
    return stats.interval(values).as_tuple()


def fmt(mean: float, half: float, digits: int = 3) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" if math.isnan(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


def labels_present(results: Sequence[dict]) -> list[str]:
    present = {r["label"] for r in results}
    return [label for label in LABEL_ORDER if label in present]


def prior_by_level(bases: Sequence[dict]) -> dict[float, dict]:
    """{level: {'p': the base mean p on the SFT data, 'score': eval char accuracy, ...}} (intervals; one
    pretrained model per level, so n = 1)."""
    by_level = defaultdict(list)
    for base in bases:
        by_level[base["level"]].append(base)
    return {x: {"p": interval([b["sft_data"]["mean_p"] for b in items]),
                "eval_p": interval([b["eval"]["mean_p"] for b in items]),
                "score": interval([value(b) for b in items]),
                "nll": interval([b["sft_data"]["nll"] for b in items]),
                "target_examples": items[0]["target_examples"]}
            for x, items in sorted(by_level.items())}


def cell_scores(results: Sequence[dict], *, x: float, noise: float, label: str,
                path: Sequence[str] = SCORE) -> dict[int, float]:
    """{seed: score} of one (level, noise, objective) cell."""
    return {r["seed"]: value(r, path) for r in results
            if r["level"] == x and r["noise"] == noise and r["label"] == label}


def paired_difference(results: Sequence[dict], *, x: float, noise: float, label: str, against: str = "nll",
                      path: Sequence[str] = SCORE) -> tuple[float, float, int]:
    """Interval of score(label) − score(against) over the seeds both have (same pretrained model, data
    order and wrong labels)."""
    return stats.paired_difference(cell_scores(results, x=x, noise=noise, label=label, path=path),
                                   cell_scores(results, x=x, noise=noise, label=against, path=path)).as_tuple()


def continuum_table(results, priors, *, noise: float, path: Sequence[str] = SCORE) -> str:
    labels = labels_present(results)
    lines = ["| level | base mean p (SFT data) | base score | " + " | ".join(DISPLAY[l] for l in labels) + " |",
             "|---|---|---|" + "---|" * len(labels)]
    for x, prior in priors.items():
        cells = [fmt(*interval(list(cell_scores(results, x=x, noise=noise, label=l, path=path).values()))[:2])
                 for l in labels]
        lines.append(f"| {x:g} | {fmt(*prior['p'][:2])} | {fmt(*prior['score'][:2])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(results, priors, *, noise: float, path: Sequence[str] = SCORE) -> str:
    labels = [l for l in labels_present(results) if l != "nll"]
    lines = ["| level (base p) | " + " | ".join(DISPLAY[l] + " − NLL" for l in labels) + " |",
             "|---|" + "---|" * len(labels)]
    for x, prior in priors.items():
        cells = []
        for label in labels:
            mean, half, n = paired_difference(results, x=x, noise=noise, label=label, path=path)
            mark = "" if n < 2 or math.isnan(half) or abs(mean) > half else " ≈"
            cells.append(f"{mean:+.3f} ± {half:.3f}{mark}" if n >= 2 else fmt(mean, half))
        lines.append(f"| {x:g} ({prior['p'][0]:.2f}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def winners(results, priors, *, noise: float, path: Sequence[str] = SCORE) -> list[dict]:
    """Per level: the best objective by mean score, its margin over the runner-up and over NLL (paired
    intervals), and DEFT's gap to the best (paired)."""
    rows = []
    labels = [l for l in labels_present(results) if l != "dft"]  # DFT ran once (a check), not ranked
    for x, prior in priors.items():
        means = {l: interval(list(cell_scores(results, x=x, noise=noise, label=l, path=path).values()))[0]
                 for l in labels}
        means = {l: m for l, m in means.items() if not math.isnan(m)}
        if not means:
            continue
        ranked = sorted(means, key=means.get, reverse=True)
        best = ranked[0]
        row = {"level": x, "p": prior["p"][0], "best": best, "best_score": means[best],
               "runner_up": ranked[1] if len(ranked) > 1 else None,
               "over_runner_up": paired_difference(results, x=x, noise=noise, label=best,
                                                   against=ranked[1], path=path) if len(ranked) > 1 else None,
               "over_nll": paired_difference(results, x=x, noise=noise, label=best, against="nll", path=path),
               "deft_minus_best": paired_difference(results, x=x, noise=noise, label="deft", against=best,
                                                    path=path) if "deft" in means else None,
               "prob_minus_nll": paired_difference(results, x=x, noise=noise, label="prob", against="nll",
                                                   path=path) if "prob" in means else None,
               "order": ranked}
        rows.append(row)
    return rows


def paired_text(result: tuple | None) -> str:
    if result is None:
        return "–"
    mean, half, n = result
    if n < 2:
        return f"{mean:+.3f} (1 seed)"
    return f"{mean:+.3f} ± {half:.3f}" + (" ≈" if abs(mean) <= half else "")


def winners_table(rows: Sequence[dict]) -> str:
    lines = ["| level (base p) | best | score | best − runner-up | best − NLL | DEFT − best | −p − NLL | order |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        runner = f"({DISPLAY[row['runner_up']]}) " if row["runner_up"] else ""
        lines.append(f"| {row['level']:g} ({row['p']:.2f}) | {DISPLAY[row['best']]} | {row['best_score']:.3f} | "
                     f"{runner}{paired_text(row['over_runner_up'])} | {paired_text(row['over_nll'])} | "
                     f"{paired_text(row['deft_minus_best'])} | {paired_text(row['prob_minus_nll'])} | "
                     + " > ".join(DISPLAY[l] for l in row["order"]) + " |")
    return "\n".join(lines)


def seed_spread(results, *, noise: float, path: Sequence[str] = SCORE) -> float:
    """The median over cells of the between-seed standard deviation of the score."""
    by_cell = defaultdict(list)
    for r in results:
        if r["noise"] == noise:
            by_cell[(r["level"], r["label"])].append(value(r, path))
    sds = [np.std(v, ddof=1) for v in by_cell.values() if len(v) > 1]
    return float(np.median(sds)) if sds else float("nan")


def alpha_table(results, priors) -> str:
    lines = ["| level (base p) | DEFT mean α step 1 | α at 25% | α at 50% | α last step | mean p step 1 → last |",
             "|---|---|---|---|---|---|"]
    for x, prior in priors.items():
        runs = [r for r in results if r["level"] == x and r["label"] == "deft" and r["noise"] == 0.0]
        if not runs:
            continue
        alpha = np.array([r["dynamics"]["mean_alpha"] for r in runs])
        mean_p = np.array([r["dynamics"]["mean_p"] for r in runs])
        n = alpha.shape[1]
        picks = [alpha[:, i].mean() for i in (0, n // 4, n // 2, n - 1)]
        lines.append(f"| {x:g} ({prior['p'][0]:.2f}) | " + " | ".join(f"{v:.3f}" for v in picks)
                     + f" | {mean_p[:, 0].mean():.3f} → {mean_p[:, -1].mean():.3f} |")
    return "\n".join(lines)


def wrong_label_table(bases, results) -> str:
    """Step 0 (base model, every objective's gate) and after training (each run's own gate): the wrong
    answers' share of the gradient relative to NLL's, and what the trained model predicts on them."""
    by_level = defaultdict(lambda: defaultdict(list))
    token_share = defaultdict(list)
    for base in bases:
        rows = {row["objective"]: row for row in base["wrong_labels"]}
        for label, row in rows.items():
            by_level[base["level"]][label].append(row["gradient_share"] / rows["nll"]["gradient_share"])
        token_share[base["level"]].append(rows["nll"]["token_share"])
    labels = [l for l in LABEL_ORDER if any(l in v for v in by_level.values())]
    lines = ["Step 0 (each level's pretrained model, before SFT, on seed 0's noisy SFT set): the wrong answers' "
             "share of each objective's gradient divided by NLL's; their token share; mean p of the wrong vs the "
             "right (twin) answer tokens.", "",
             "| level | token share | p wrong (right) | " + " | ".join(DISPLAY[l] for l in labels) + " |",
             "|---|---|---|" + "---|" * len(labels)]
    for x in sorted(by_level):
        p_rows = [[row for row in b["wrong_labels"] if row["objective"] == "nll"][0] for b in bases if b["level"] == x]
        p_wrong = np.mean([r["mean_p_wrong"] for r in p_rows])
        p_twin = np.mean([r["mean_p_twin"] for r in p_rows])
        lines.append(f"| {x:g} | {np.mean(token_share[x]):.3f} | {p_wrong:.3f} ({p_twin:.3f}) | "
                     + " | ".join(f"{np.mean(by_level[x][l]):.2f}" if by_level[x][l] else "–" for l in labels) + " |")
    trained = defaultdict(lambda: defaultdict(list))
    for r in results:
        for row in r.get("wrong_labels", []):
            trained[r["level"]][r["label"]].append((row["mean_p_wrong"], row["mean_p_twin"]))
    if trained:
        labels = [l for l in LABEL_ORDER if any(l in v for v in trained.values())]
        lines += ["", "After SFT with 20% wrong labels: mean p the trained model gives the wrong answers it was "
                  "trained on (and the right ones it never saw for those prompts), mean over seeds.", "",
                  "| level | " + " | ".join(DISPLAY[l] for l in labels) + " |", "|---|" + "---|" * len(labels)]
        for x in sorted(trained):
            cells = []
            for l in labels:
                pairs = trained[x][l]
                cells.append(f"{np.mean([a for a, _ in pairs]):.3f} ({np.mean([b for _, b in pairs]):.3f})"
                             if pairs else "–")
            lines.append(f"| {x:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figures(results, priors, *, out: pathlib.Path, noise_levels: Sequence[float]) -> list[pathlib.Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = labels_present(results)
    colors = {l: plt.get_cmap("tab10")(i) for i, l in enumerate(LABEL_ORDER)}
    written = []
    fig, axes = plt.subplots(1, len(noise_levels), figsize=(6 * len(noise_levels), 4.5), squeeze=False)
    for ax, noise in zip(axes[0], noise_levels):
        for label in labels:
            xs, ys, hs = [], [], []
            for x, prior in priors.items():
                mean, half, n = interval(list(cell_scores(results, x=x, noise=noise, label=label).values()))
                if n:
                    xs.append(prior["p"][0]), ys.append(mean), hs.append(0 if math.isnan(half) else half)
            ax.errorbar(xs, ys, yerr=hs, marker="o", ms=3, capsize=2, lw=1, label=DISPLAY[label],
                        color=colors[label], ls="--" if label in ("dft", "deft_eps0") else "-")
        base_x = [prior["p"][0] for prior in priors.values()]
        ax.plot(base_x, [prior["score"][0] for prior in priors.values()], "k:", lw=1, label="base (no SFT)")
        ax.set_xlabel("base model's mean target probability p on the SFT data")
        ax.set_ylabel("eval character accuracy (greedy)")
        ax.set_title(f"label noise {noise:g}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    written.append(out / "continuum.png")
    fig.savefig(written[-1], dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(noise_levels), figsize=(6 * len(noise_levels), 4.5), squeeze=False)
    for ax, noise in zip(axes[0], noise_levels):
        for label in [l for l in labels if l != "nll"]:
            xs, ys, hs = [], [], []
            for x, prior in priors.items():
                mean, half, n = paired_difference(results, x=x, noise=noise, label=label)
                if n >= 2:
                    xs.append(prior["p"][0]), ys.append(mean), hs.append(half)
            ax.errorbar(xs, ys, yerr=hs, marker="o", ms=3, capsize=2, lw=1, label=DISPLAY[label],
                        color=colors[label])
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xlabel("base mean p on the SFT data")
        ax.set_ylabel("score − NLL's (same seed), 95% CI")
        ax.set_title(f"paired differences vs NLL, noise {noise:g}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    written.append(out / "paired.png")
    fig.savefig(written[-1], dpi=90)
    plt.close(fig)

    if not all("dynamics" in r for r in results):  # runs.csv holds no per-step dynamics
        return written
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    cmap = plt.get_cmap("viridis")
    for i, (x, prior) in enumerate(priors.items()):
        runs = [r for r in results if r["level"] == x and r["label"] == "deft" and r["noise"] == 0.0]
        if not runs:
            continue
        color = cmap(i / max(1, len(priors) - 1))
        steps = runs[0]["dynamics"]["step"]
        for ax, key in zip(axes, ("mean_alpha", "mean_p")):
            ax.plot(steps, np.mean([r["dynamics"][key] for r in runs], axis=0), color=color,
                    label=f"level {x:g} (base p {prior['p'][0]:.2f})")
        nll = [r for r in results if r["level"] == x and r["label"] == "nll" and r["noise"] == 0.0]
        if nll:
            axes[1].plot(steps, np.mean([r["dynamics"]["mean_p"] for r in nll], axis=0), color=color, ls="--", lw=0.8)
    axes[0].set_title("DEFT: mean α = Σπ² per step (mean over seeds)")
    axes[1].set_title("mean target p per step (DEFT solid, NLL dashed)")
    for ax in axes:
        ax.set_xlabel("SFT step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    written.append(out / "alpha.png")
    fig.savefig(written[-1], dpi=90)
    plt.close(fig)
    return written


def write_csv(results, path: pathlib.Path) -> None:
    columns = ["name", "level", "seed", "noise", "label", "char_accuracy", "jaro_winkler", "exact_match", "eval_nll",
               "eval_mean_p", "eval_token_accuracy", "train_seconds", "seconds"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for r in results:
            g, e = r["generation"], r["eval"]
            writer.writerow([r["name"], r["level"], r["seed"], r["noise"], r["label"], g["char_accuracy"],
                             g["jaro_winkler"], g["exact_match"], e["nll"], e["mean_p"], e["token_accuracy"],
                             round(r["train_seconds"], 2), round(r["seconds"], 2)])


def report(root: pathlib.Path, *, smoke: bool = False) -> tuple[str, dict]:
    """report_of the finished runs of a study directory."""
    results, bases = load_results(root), load_bases(root)
    if not results or not bases:
        print(f"continuum-analyze: error: no finished runs under {root}; run experiments.continuum.run first",
              file=sys.stderr)
        sys.exit(2)
    return report_of(results, bases, smoke=smoke)


def report_of(results: Sequence[dict], bases: Sequence[dict], *, smoke: bool = False) -> tuple[str, dict]:
    """The Markdown of every table, and the numbers behind it ({'priors', 'winners': {noise: rows}}).
    Tables whose fields the results lack (dynamics, wrong labels: not in runs.csv) are left out with a note."""
    priors = prior_by_level(bases)
    noise_levels = sorted({r["noise"] for r in results})
    seeds = sorted({r["seed"] for r in results})
    title = "SMOKE (plumbing only, not results)" if smoke else "Continuum study"
    parts = [f"# {title}: {len(results)} SFT runs from {len(bases)} pretrained levels, seeds {seeds}", "",
             "## The dial: the pretrained model's prior on the SFT task", "",
             "| level | target-map examples in pretraining | base mean p on SFT data | base mean p on eval | "
             "base NLL on SFT data | base eval char accuracy |", "|---|---|---|---|---|---|"]
    for x, prior in priors.items():
        parts.append(f"| {x:g} | {prior['target_examples']} | {fmt(*prior['p'][:2])} | {fmt(*prior['eval_p'][:2])} | "
                     f"{fmt(*prior['nll'][:2])} | {fmt(*prior['score'][:2])} |")
    numbers = {"priors": {str(x): p for x, p in priors.items()}, "winners": {}}
    for noise in noise_levels:
        spread = seed_spread(results, noise=noise)
        parts += ["", f"## Label noise {noise:g}", "",
                  f"Score: eval character accuracy of greedy answers, mean ± 95% CI over seeds "
                  f"(median between-seed sd of a cell: {spread:.3f}).", "",
                  continuum_table(results, priors, noise=noise), "",
                  "Paired differences against NLL (same pretrained model, data order and wrong labels), "
                  "mean ± 95% CI; ≈: the interval includes zero.", "",
                  paired_table(results, priors, noise=noise), "",
                  "Who wins (DFT excluded: it ran on one seed as a check):", "",
                  winners_table(winners(results, priors, noise=noise)), "",
                  "Teacher-forced mean p on the eval set (clean answers; graded where greedy answers saturate):", "",
                  continuum_table(results, priors, noise=noise, path=("eval", "mean_p")), "",
                  "Paired differences against NLL in eval mean p:", "",
                  paired_table(results, priors, noise=noise, path=("eval", "mean_p")), "",
                  "Who wins in eval mean p:", "",
                  winners_table(winners(results, priors, noise=noise, path=("eval", "mean_p")))]
        numbers["winners"][str(noise)] = winners(results, priors, noise=noise)
    if all("dynamics" in r for r in results):
        parts += ["", "## DEFT's α trajectory (noise 0, mean over seeds)", "", alpha_table(results, priors)]
    else:
        parts += ["", "(DEFT's α trajectory needs the per-run result.json files (their `dynamics`): not in these "
                      "results.)"]
    if any(b.get("wrong_labels") for b in bases):
        parts += ["", "## Wrong labels (20% noise)", "", wrong_label_table(bases, [r for r in results if r["noise"] > 0])]
    else:
        parts += ["", "(The wrong-label tables need the per-level base.json and per-run result.json files: not in "
                      "these results.)"]
    dft = [r for r in results if r["label"] == "dft"]
    if dft:
        checks = []
        for r in dft:
            twin = [p for p in results if p["label"] == "prob" and p["level"] == r["level"] and p["seed"] == r["seed"]
                    and p["noise"] == r["noise"]]
            if twin:
                checks.append(abs(value(r) - value(twin[0])))
        parts += ["", f"DFT check: |score(DFT) − score(−p)| on the same seed: max {max(checks):.4f} over "
                      f"{len(checks)} levels (DFT's gradient is −p's)." if checks else ""]
    timing = [r["seconds"] for r in results]
    pretraining = [b["seconds"] for b in bases if "seconds" in b]
    parts += ["", f"Per SFT run (training + measurement): median {np.median(timing):.1f}s, "
                  f"total {sum(timing):.0f}s" + (f"; pretraining: total {sum(pretraining):.0f}s." if pretraining
                                                 else ".")]
    return "\n".join(parts) + "\n", numbers


def write_outputs(results: Sequence[dict], bases: Sequence[dict], *, out: pathlib.Path, smoke: bool,
                  figures_too: bool) -> str:
    """Every table, summary.json (table numbers and verdicts), verdicts.md, runs.csv and the figures."""
    from experiments.continuum import verdicts as verdicts_lib

    text, _ = report_of(results, bases, smoke=smoke)
    summary, found = verdicts_lib.summary(results, bases)
    (out / "continuum.md").write_text(text)
    (out / "summary.json").write_text(summary)
    (out / "verdicts.md").write_text(verdicts_lib.verdicts_markdown(found))
    write_csv(results, out / "runs.csv")
    if figures_too:
        figures(results, prior_by_level(bases), out=out, noise_levels=sorted({r["noise"] for r in results}))
    return text


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="continuum-analyze", description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--workdir", default=None, help="a study directory (default runs/continuum)")
    source.add_argument("--results", default=None, help="a results directory (raw/, or runs.csv + levels.json)")
    parser.add_argument("--out", default=None,
                        help="where tables and figures go (default: <workdir>/analysis; with --results: "
                             "runs/continuum_recomputed, so the committed results are never overwritten)")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--no_figures", action="store_true")
    args = parser.parse_args(argv)
    if args.results:
        results_dir = pathlib.Path(args.results)
        try:
            results, bases, _ = load_study(results_dir)
        except FileNotFoundError as error:
            print(error, file=sys.stderr)
            sys.exit(2)
        out = pathlib.Path(args.out) if args.out else pathlib.Path("runs/continuum_recomputed")
    else:
        root = pathlib.Path(args.workdir or "runs/continuum")
        results, bases = load_results(root), load_bases(root)
        if not results or not bases:
            print(f"continuum-analyze: error: no finished runs under {root}; run experiments.continuum.run first",
                  file=sys.stderr)
            sys.exit(2)
        out = pathlib.Path(args.out) if args.out else root / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    if not args.results:
        export_raw(results, bases, out)
    text = write_outputs(results, bases, out=out, smoke=args.smoke, figures_too=not args.no_figures)
    print(text)
    return text


if __name__ == "__main__":
    main()
