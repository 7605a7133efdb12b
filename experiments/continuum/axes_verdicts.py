"""The axes study's tables, figures and verdicts, generated from its raw results.

    python -m experiments.continuum.axes_verdicts --workdir runs/continuum_axes   # copy raw/ from a study
    python -m experiments.continuum.verdicts --write_docs                          # regenerates these blocks too

Three scores per SFT run (experiments/continuum/axes.py), each reported as the change from the base model
it started from (the same params: result.json's base_fingerprint is base.json's fingerprint):
    fit        greedy character accuracy on the SFT task's seen entries
    gen        on the task's entries SFT never shows (answerable only through the prior)
    retention  on the pretraining tasks (maps 1..K); its change is the drop (negative = forgot)
Objectives are compared paired by seed (same pretrained model, SFT sample, order, wrong labels and label
choices), so a difference of changes is a difference of scores. Each claim is decided per score and label
noise over the family of its comparisons (experiments/continuum/stats.py: paired t, Holm over the family,
"holds" only when every comparison is resolved in the claim's direction). A cell's regime is the probe's,
from the cell's own base mean p on its SFT labels.

Outputs under experiments/continuum/results/axes/: raw/results.jsonl, raw/bases.json (the raw reports),
axes.md (every table), verdicts.md (every family, raw and Holm-adjusted intervals), summary.json,
frontier.png (plasticity against stability per objective), winners.png (the best objective per cell of the
prior × ambiguity plane), lr-selection.jsonl (the SFT learning-rate check run before the grid). real_data.json (the probe on SmolLM2, experiments/continuum/axes_real.py) places
real datasets on that plane.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
from collections.abc import Sequence

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from experiments.continuum import analyze, stats  # noqa: E402

RESULTS = REPO_ROOT / "experiments" / "continuum" / "results" / "axes"
SCORES = {"fit": "fit (seen entries)", "gen": "generalisation (unseen entries)",
          "retention": "retention (pretraining tasks)"}
NEAR_MARGIN = 0.05
D = analyze.DISPLAY
ALPHAS = ("dlog0.25", "dlog0.5", "dlog0.75")


# ------------------------------------------------------------------------------------------------ data

def load(results_dir: pathlib.Path = RESULTS) -> tuple[list[dict], list[dict]]:
    raw = pathlib.Path(results_dir) / "raw"
    if not (raw / "results.jsonl").is_file():
        raise FileNotFoundError(f"continuum-axes: error: {raw}/results.jsonl missing; copy a study's reports with "
                                "`python -m experiments.continuum.axes_verdicts --workdir runs/continuum_axes`")
    results = [json.loads(line) for line in (raw / "results.jsonl").read_text().splitlines() if line]
    return results, json.loads((raw / "bases.json").read_text())


def export_raw(workdir: pathlib.Path, out: pathlib.Path = RESULTS) -> tuple[int, int]:
    """Copy every result.json and base-*.json of a study into <out>/raw/ (sorted; samples of SFT runs
    dropped to keep it small)."""
    results = []
    for path in sorted((workdir / "sft").glob("*/result.json")):
        report = json.loads(path.read_text())
        for score in report["scores"].values():
            score.pop("samples", None)
        results.append(report)
    bases = [json.loads(p.read_text()) for p in sorted((workdir / "pretrain").glob("**/base-*.json"))]
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "results.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n"
                                               for r in sorted(results, key=lambda r: r["name"])))
    (raw / "bases.json").write_text(json.dumps(sorted(bases, key=lambda b: (b["ambiguity"], b["level"])),
                                               indent=1, sort_keys=True) + "\n")
    return len(results), len(bases)


class Axes:
    """The results indexed by cell (level, ambiguity, noise) and objective."""

    def __init__(self, results: Sequence[dict], bases: Sequence[dict]):
        from deft_jax.evaluation import probe

        self.results = list(results)
        self.base = {(b["level"], b["ambiguity"]): b for b in bases}
        self.labels = [l for l in analyze.LABEL_ORDER if any(r["label"] == l for r in self.results)]
        self.levels = sorted({r["level"] for r in self.results})
        self.ambiguity = sorted({r["ambiguity"] for r in self.results})
        self.noise = sorted({r["noise"] for r in self.results})
        self.planes = [(x, a) for x in self.levels for a in self.ambiguity]
        self.base_p = {k: b["sft_data"]["mean_p"] for k, b in self.base.items()}
        self.regime = {k: probe.regime(p) for k, p in self.base_p.items()}
        self._cells = {}
        for r in self.results:
            self._cells.setdefault((r["level"], r["ambiguity"], r["noise"], r["label"]), {})[r["seed"]] = r

    def scores(self, *, level, ambiguity, noise, label, score) -> dict[int, float]:
        """{seed: score − the base model's score} of one cell."""
        base = self.base[(level, ambiguity)]["scores"][score]["accuracy"]
        runs = self._cells.get((level, ambiguity, noise, label), {})
        return {s: r["scores"][score]["accuracy"] - base for s, r in sorted(runs.items())}

    def mean(self, **cell) -> float:
        return stats.interval(list(self.scores(**cell).values())).mean

    def ranking(self, *, level, ambiguity, noise, score, labels=None) -> list[str]:
        labels = labels or self.labels
        means = {l: self.mean(level=level, ambiguity=ambiguity, noise=noise, label=l, score=score) for l in labels}
        return sorted((l for l in means if not math.isnan(means[l])), key=lambda l: -means[l])

    def compare(self, a, b, *, level, ambiguity, noise, score, expect=1, margin=0.0) -> stats.Comparison:
        c = stats.comparison(a=a, b=b, metric=score, level=level, noise=noise, expect=expect, margin=margin,
                             mine=self.scores(level=level, ambiguity=ambiguity, noise=noise, label=a, score=score),
                             theirs=self.scores(level=level, ambiguity=ambiguity, noise=noise, label=b, score=score))
        return c

    def cells_in(self, *regimes) -> list[tuple]:
        return [k for k in self.planes if k in self.regime and self.regime[k] in regimes]


def where_text(keys: Sequence[tuple]) -> str:
    return ", ".join(f"({x}, {a:g})" for x, a in keys) if keys else "no cell"


# ------------------------------------------------------------------------------------------------ claims

def family_json(family, keys):
    """stats.Comparison JSON with the cell's ambiguity added (Comparison carries level and noise only)."""
    return [{**c.to_json(), "ambiguity": a} for c, (_, a) in zip(family, keys)]


def decide(*, key, claim, score, noise, family, keys, text) -> dict:
    signs = [c.resolved * c.expect for c in family]
    status = stats.verdict(family)
    summary = (f"{sum(s > 0 for s in signs)} of {len(family)} resolved for, {sum(s < 0 for s in signs)} against")
    return {"id": key, "claim": claim, "score": score, "noise": noise, "status": status, "summary": summary,
            "family": family_json(family, keys), "text": text}


def best_in(study: Axes, *, favourite, regimes, score, noise, key, claim) -> dict:
    """`favourite` beats every other objective at every cell of `regimes` (Holm over all of them)."""
    cells = study.cells_in(*regimes)
    pairs = [((x, a), other) for x, a in cells for other in study.labels if other != favourite]
    family = stats.adjust([study.compare(favourite, other, level=x, ambiguity=a, noise=noise, score=score)
                           for (x, a), other in pairs])
    against = [(c, k) for c, (k, _) in zip(family, pairs) if c.resolved * c.expect < 0]
    text = f"cells (level, ambiguity) {where_text(cells)}"
    if against:
        worst = max(against, key=lambda ck: abs(ck[0].raw.mean))
        c, (x, a) = worst
        text += f"; largest resolved against: {D[c.b]} − {D[c.a]} {-c.raw.mean:+.3f} ± {c.raw.half:.3f} at ({x}, {a:g})"
    return decide(key=key, claim=claim, score=score, noise=noise, family=family, keys=[k for k, _ in pairs], text=text)


def beats(study: Axes, *, a, b, cells, score, noise, key, claim) -> dict:
    """`a` − `b` > 0 at every cell of `cells`."""
    family = stats.adjust([study.compare(a, b, level=x, ambiguity=amb, noise=noise, score=score) for x, amb in cells])
    means = [c.raw.mean for c in family]
    text = (f"cells {where_text(cells)}; {D[a]} − {D[b]} ranges {min(means):+.3f} to {max(means):+.3f}"
            if family else "no cell")
    return decide(key=key, claim=claim, score=score, noise=noise, family=family, keys=list(cells), text=text)


def near_best(study: Axes, *, label, score, noise, key) -> dict:
    """`label` within NEAR_MARGIN of the best other objective at every cell (non-inferiority)."""
    family, keys = [], []
    for x, a in study.planes:
        ranked = [l for l in study.ranking(level=x, ambiguity=a, noise=noise, score=score) if l != label]
        if ranked:
            family.append(study.compare(label, ranked[0], level=x, ambiguity=a, noise=noise, score=score,
                                        margin=NEAR_MARGIN))
            keys.append((x, a))
    family = stats.adjust(family)
    gaps = [c.raw.mean - c.margin for c in family]
    text = f"{D[label]} − the best other per cell ranges {min(gaps):+.3f} to {max(gaps):+.3f}" if gaps else "no cell"
    return decide(key=key, claim=f"{D[label]} is within {NEAR_MARGIN:g} of the best everywhere", score=score,
                  noise=noise, family=family, keys=keys, text=text)


def deft_vs_best_alpha(study: Axes, *, score, noise) -> dict:
    """DEFT − the deformed-log α with the highest mean in each cell (chosen on the same data)."""
    family, keys = [], []
    for x, a in study.planes:
        alphas = study.ranking(level=x, ambiguity=a, noise=noise, score=score,
                               labels=[l for l in ALPHAS if l in study.labels])
        if alphas and "deft" in study.labels:
            family.append(study.compare("deft", alphas[0], level=x, ambiguity=a, noise=noise, score=score))
            keys.append((x, a))
    family = stats.adjust(family)
    means = [c.raw.mean for c in family]
    text = f"DEFT − best α per cell ranges {min(means):+.3f} to {max(means):+.3f}" if means else "no cell"
    return decide(key=f"deft-vs-best-alpha-{score}-noise{noise:g}", claim="DEFT beats the best fixed α of each cell",
                  score=score, noise=noise, family=family, keys=keys, text=text)


def verdicts(study: Axes) -> list[dict]:
    out = []
    for noise in study.noise:
        for score in SCORES:
            n = f"{score}-noise{noise:g}"
            out.append(best_in(study, favourite="nll", regimes=("weak",), score=score, noise=noise,
                               key=f"nll-best-weak-{n}", claim="NLL is best where the prior is weak"))
            out.append(best_in(study, favourite="prob", regimes=("strong",), score=score, noise=noise,
                               key=f"prob-best-strong-{n}", claim="−p is best where the prior is strong"))
            for name, cells in (("unambiguous", [k for k in study.cells_in("intermediate", "strong") if k[1] == 0]),
                                ("ambiguous", [k for k in study.cells_in("intermediate", "strong") if k[1] > 0])):
                out.append(beats(study, a="prob", b="nll", cells=cells, score=score, noise=noise,
                                 key=f"prob-over-nll-{name}-{n}",
                                 claim=f"−p beats NLL where the prior is not weak ({name} cells)"))
            out.append(near_best(study, label="deft", score=score, noise=noise, key=f"deft-near-best-{n}"))
            out.append(deft_vs_best_alpha(study, score=score, noise=noise))
            out.append(beats(study, a="deft", b="cayley", cells=study.planes, score=score, noise=noise,
                             key=f"deft-over-cayley-{n}", claim="DEFT beats Cayley"))
    return out


# ------------------------------------------------------------------------------------------------ tables

def base_table(study: Axes) -> str:
    lines = ["| level | ambiguity | base mean p (SFT labels) | regime | measured ambiguity: data | base model (probe) | "
             "base fit | base gen | base retention |", "|---|---|---|---|---|---|---|---|---|"]
    for x, a in sorted(study.base):
        b = study.base[(x, a)]
        lines.append(f"| {x} | {a:g} | {b['sft_data']['mean_p']:.3f} | {study.regime[(x, a)]} | "
                     f"{b['data_ambiguity']['ambiguous_fraction']:.3f} | {b['probe']['ambiguity']:.3f} | "
                     + " | ".join(f"{b['scores'][s]['accuracy']:.3f}" for s in SCORES) + " |")
    return "\n".join(lines)


def score_table(study: Axes, *, score: str, noise: float) -> str:
    lines = ["| level, ambiguity (base p) | base | " + " | ".join(D[l] for l in study.labels) + " |",
             "|---|---|" + "---|" * len(study.labels)]
    for x, a in study.planes:
        if (x, a) not in study.base:
            continue
        cells = {l: stats.interval(list(study.scores(level=x, ambiguity=a, noise=noise, label=l, score=score).values()))
                 for l in study.labels}
        top = max((c.mean for c in cells.values() if not math.isnan(c.mean)), default=float("nan"))
        text = [(f"**{analyze.fmt(c.mean, c.half, 3)}**" if c.mean == top else analyze.fmt(c.mean, c.half, 3))
                if c.n else "–" for c in cells.values()]
        lines.append(f"| {x}, {a:g} ({study.base_p[(x, a)]:.2f}) | "
                     f"{study.base[(x, a)]['scores'][score]['accuracy']:.3f} | " + " | ".join(text) + " |")
    return "\n".join(lines)


def deft_table(study: Axes, *, noise: float) -> str:
    """DEFT − best α and DEFT − Cayley per cell and score (raw 95% paired intervals)."""
    lines = ["| level, ambiguity | " + " | ".join(f"{s}: DEFT − best α | {s}: DEFT − Cayley" for s in SCORES) + " |",
             "|---|" + "---|---|" * len(SCORES)]
    for x, a in study.planes:
        row = []
        for s in SCORES:
            alphas = study.ranking(level=x, ambiguity=a, noise=noise, score=s, labels=list(ALPHAS))
            for other in (alphas[0] if alphas else None, "cayley"):
                if other is None:
                    row.append("–")
                    continue
                c = study.compare("deft", other, level=x, ambiguity=a, noise=noise, score=s)
                mark = "" if c.raw.n < 2 or abs(c.raw.mean) > c.raw.half else " ≈"
                row.append(f"{c.raw.mean:+.3f} ± {c.raw.half:.3f}{mark}"
                           + (f" ({D[other]})" if other != "cayley" else ""))
        lines.append(f"| {x}, {a:g} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def winners(study: Axes) -> dict:
    """{noise: {score: {"level,amb": {best, ahead_of_all}}}}: the best mean per cell, and whether it is
    resolved ahead of every other objective (Holm over that cell's comparisons)."""
    out = {}
    for noise in study.noise:
        out[f"{noise:g}"] = {}
        for score in SCORES:
            cells = {}
            for x, a in study.planes:
                ranked = study.ranking(level=x, ambiguity=a, noise=noise, score=score)
                if not ranked:
                    continue
                family = stats.adjust([study.compare(ranked[0], o, level=x, ambiguity=a, noise=noise, score=score)
                                       for o in ranked[1:]])
                cells[f"{x},{a:g}"] = {"best": ranked[0], "ahead_of_all": all(c.resolved > 0 for c in family),
                                       "not_separated": [ranked[0]] + [c.b for c in family if c.resolved <= 0],
                                       "behind": [c.b for c in family if c.resolved > 0]}
            out[f"{noise:g}"][score] = cells
    return out


def verdict_table(found: Sequence[dict]) -> str:
    lines = ["| claim | score (change in greedy character accuracy, any valid symbol) | noise | verdict | "
             "comparisons (Holm over the family) | where |",
             "|---|---|---|---|---|---|"]
    for v in found:
        lines.append(f"| {v['claim']} | {v['score']} | {v['noise']:g} | **{v['status']}** | {v['summary']} | "
                     f"{v['text']} |")
    return "\n".join(lines)


def verdicts_markdown(found: Sequence[dict]) -> str:
    lines = ["# The axes study's verdicts, every comparison", "",
             "Each family: the raw 95% paired t interval, p, Holm's adjusted p and the interval at Holm's level for "
             "that comparison (experiments/continuum/stats.py). Differences are of the change from the base model.", ""]
    for v in found:
        lines += [f"## {v['claim']} — {v['score']}, noise {v['noise']:g}: {v['status']}", "",
                  "| level, ambiguity | comparison | difference, raw 95% CI | n | p | Holm p | adjusted CI | resolved |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in v["family"]:
            margin = f" + {c['margin']:g}" if c["margin"] else ""
            lines.append(f"| {c['level']}, {c['ambiguity']:g} | {D[c['a']]} − {D[c['b']]}{margin} | "
                         f"{c['difference']:+.3f} ± {c['half']:.3f} | {c['n']} | {c['p']:.3g} | {c['p_holm']:.3g} | "
                         f"± {c['adjusted_half']:.3f} | {c['resolved']:+d} |")
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ real data

def real_data_rows(study: Axes, real: dict) -> list[dict]:
    """Each real dataset's nearest testbed cell on (base mean p, the probe's measured ambiguity) (Euclidean
    in those two coordinates, both in [0, 1]) and the winners there, per score without noise."""
    won = winners(study)["0"]
    rows = []
    for name, measured in real.get("datasets", {}).items():
        def distance(key):
            b = study.base[key]
            dp = b["sft_data"]["mean_p"] - measured["mean_p"]
            da = (b["probe"]["ambiguity"] - measured["ambiguity"]) if measured.get("ambiguity") is not None else 0.0
            return math.hypot(dp, da)

        key = min(study.planes, key=distance)
        rows.append({"dataset": name, **measured, "cell": key,
                     "winners": {s: won[s].get(f"{key[0]},{key[1]:g}") for s in SCORES}})
    return rows


def real_data_table(study: Axes, real: dict) -> str:
    rows = real_data_rows(study, real)
    if not rows:
        return "(No real-data probe results: run `python -m experiments.continuum.axes_real`.)"
    lines = [f"Probe: {real.get('model', '?')}, first {real.get('examples', '?')} training examples of each dataset.",
             "", "| dataset | mean p | measured ambiguity | nearest cell (level, ambiguity) | best in fit | "
             "best in gen | best in retention |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        amb = "not measured" if r.get("ambiguity") is None else f"{r['ambiguity']:.3f}"
        best = []
        for s in SCORES:
            w = r["winners"][s]
            if w is None:
                best.append("–")
            elif w["ahead_of_all"]:
                best.append(f"{D[w['best']]} (resolved)")
            else:
                best.append(f"not separated: {', '.join(D[l] for l in w['not_separated'])}"
                            + (f"; behind: {', '.join(D[l] for l in w['behind'])}" if w["behind"] else ""))
        lines.append(f"| {r['dataset']} | {r['mean_p']:.3f} | {amb} | ({r['cell'][0]}, {r['cell'][1]:g}) | "
                     + " | ".join(best) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ figures

COLOURS = {"nll": "tab:blue", "prob": "tab:red", "dlog0.25": "tab:olive", "dlog0.5": "tab:orange",
           "dlog0.75": "tab:brown", "eaft": "tab:pink", "cayley": "tab:green", "deft": "tab:purple"}


def frontier_figure(study: Axes, path: pathlib.Path) -> pathlib.Path:
    """Rows: fit and gen change against retention change; columns: noise. One point per (level,
    ambiguity) cell and objective (mean over seeds); the large marker is the objective's mean over cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, len(study.noise), figsize=(5.5 * len(study.noise), 9), squeeze=False)
    for column, noise in enumerate(study.noise):
        for row, score in enumerate(("fit", "gen")):
            ax = axes[row][column]
            for label in study.labels:
                xs = [study.mean(level=x, ambiguity=a, noise=noise, label=label, score="retention") for x, a in study.planes]
                ys = [study.mean(level=x, ambiguity=a, noise=noise, label=label, score=score) for x, a in study.planes]
                ax.scatter(xs, ys, s=12, alpha=0.45, color=COLOURS[label])
                ax.scatter([np.nanmean(xs)], [np.nanmean(ys)], s=120, color=COLOURS[label], edgecolor="black",
                           label=D[label])
            ax.axhline(0, color="grey", linewidth=0.6)
            ax.axvline(0, color="grey", linewidth=0.6)
            ax.set(xlabel="retention change (after − base)", ylabel=f"{score} change (after − base)",
                   title=f"{SCORES[score]}, noise {noise:g}")
        axes[0][column].legend(fontsize=7, loc="best")
    figure.suptitle("Plasticity (up) against stability (right): small points are (level, ambiguity) cells")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def winners_figure(study: Axes, path: pathlib.Path) -> pathlib.Path:
    """Per score (columns) and noise (rows): the (level × ambiguity) plane, each cell coloured by the
    objective with the highest mean; bold with a star when resolved ahead of every other (Holm)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    won = winners(study)
    figure, axes = plt.subplots(len(study.noise), len(SCORES), figsize=(4.2 * len(SCORES), 3.4 * len(study.noise)),
                                squeeze=False)
    for r, noise in enumerate(study.noise):
        for c, score in enumerate(SCORES):
            ax = axes[r][c]
            for i, x in enumerate(study.levels):
                for j, a in enumerate(study.ambiguity):
                    cell = won[f"{noise:g}"][score].get(f"{x},{a:g}")
                    if cell is None:
                        continue
                    ax.add_patch(plt.Rectangle((i - 0.5, j - 0.5), 1, 1, color=COLOURS[cell["best"]],
                                               alpha=0.85 if cell["ahead_of_all"] else 0.35))
                    text = D[cell["best"]] + (" *" if cell["ahead_of_all"] else f"\n(+{len(cell['not_separated']) - 1} tied)")
                    ax.text(i, j, text, ha="center", va="center", fontsize=7,
                            fontweight="bold" if cell["ahead_of_all"] else "normal")
            ax.set_xticks(range(len(study.levels)), [
                f"{x}\np≈{np.mean([study.base_p[(x, a)] for a in study.ambiguity]):.2f}" for x in study.levels])
            ax.set_yticks(range(len(study.ambiguity)), [f"{a:g}" for a in study.ambiguity])
            ax.set(xlim=(-0.5, len(study.levels) - 0.5), ylim=(-0.5, len(study.ambiguity) - 0.5),
                   xlabel="prior level (mean base p)", ylabel="ambiguity", title=f"{score}, noise {noise:g}")
    figure.suptitle("Best objective per cell (pale: not separated from others after Holm; * resolved ahead of all)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


# ------------------------------------------------------------------------------------------------ outputs

def lr_table(study: Axes, rows: Sequence[dict]) -> str:
    """The SFT learning-rate check (seed 0, before the grid): per learning rate, the mean change of each
    score from the base model over its runs, and the cells and objectives they cover."""
    if not rows:
        return "(No learning-rate check in these results.)"
    lines = ["| SFT lr | runs | cells (level, ambiguity) | objectives | " + " | ".join(f"{s} change" for s in SCORES)
             + " |", "|---|---|---|---|" + "---|" * len(SCORES)]
    for lr in sorted({r["lr"] for r in rows}, reverse=True):
        runs = [r for r in rows if r["lr"] == lr]
        cells = sorted({(r["level"], r["ambiguity"]) for r in runs})
        labels = [l for l in analyze.LABEL_ORDER if any(r["label"] == l for r in runs)]
        changes = [np.mean([r["scores"][s]["accuracy"] - study.base[(r["level"], r["ambiguity"])]["scores"][s]["accuracy"]
                            for r in runs]) for s in SCORES]
        lines.append(f"| {lr:g} | {len(runs)} | {where_text(cells)} | {', '.join(D[l] for l in labels)} | "
                     + " | ".join(f"{c:+.3f}" for c in changes) + " |")
    return "\n".join(lines)


def blocks(study: Axes, found: Sequence[dict], real: dict, lr_rows: Sequence[dict] = ()) -> dict[str, str]:
    """The docs' generated blocks of the axes study."""
    out = {"axes-bases": base_table(study)}
    for score in SCORES:
        out[f"axes-{score}"] = score_table(study, score=score, noise=0.0)
    out["axes-verdicts"] = verdict_table(found)
    out["axes-deft"] = deft_table(study, noise=0.0)
    out["axes-real"] = real_data_table(study, real)
    out["axes-lr"] = lr_table(study, lr_rows)
    out["readme-axes"] = readme_paragraph(study, found)
    return out


def readme_paragraph(study: Axes, found: Sequence[dict]) -> str:
    v = {f["id"]: f for f in found}

    def statuses(prefix):
        return ", ".join(f"{s} {v[f'{prefix}-{s}-noise0']['status']}" for s in SCORES if f"{prefix}-{s}-noise0" in v)

    runs = len(study.results)
    return (f"**Generalisation, retention and ambiguity** ({runs} SFT runs: prior levels {', '.join(map(str, study.levels))} "
            f"× ambiguity {', '.join(f'{a:g}' for a in study.ambiguity)} × noise × 7 objectives × 5 seeds; "
            "`experiments/README.md`, the axes study). Each score is the change from the same base model, no label "
            f"noise, Holm over each claim's comparisons. NLL best where the prior is weak: {statuses('nll-best-weak')}. "
            f"−p best where it is strong: {statuses('prob-best-strong')}. −p beats NLL where the prior is not weak, "
            f"unambiguous cells: {statuses('prob-over-nll-unambiguous')}; ambiguous cells: "
            f"{statuses('prob-over-nll-ambiguous')}. DEFT within {NEAR_MARGIN:g} of the best everywhere: "
            f"{statuses('deft-near-best')}. DEFT beats the best fixed α per cell: {statuses('deft-vs-best-alpha')}; "
            f"beats Cayley: {statuses('deft-over-cayley')}.")


def summary(study: Axes, found: Sequence[dict], real: dict) -> dict:
    return {"verdicts": list(found), "winners": winners(study), "real_data": [
        {**r, "cell": list(r["cell"])} for r in real_data_rows(study, real)],
        "cells": {f"{x},{a:g},{n:g}": {l: {s: list(stats.interval(list(study.scores(
            level=x, ambiguity=a, noise=n, label=l, score=s).values())).as_tuple()) for s in SCORES}
            for l in study.labels} for x, a in study.planes for n in study.noise}}


def expected_files(results_dir: pathlib.Path = RESULTS) -> tuple[dict[pathlib.Path, str], dict[str, str]]:
    """({path: text}, blocks) of the axes study from its committed raw results."""
    results, bases = load(results_dir)
    study = Axes(results, bases)
    real_path = results_dir / "real_data.json"
    real = json.loads(real_path.read_text()) if real_path.is_file() else {}
    found = verdicts(study)
    lr_path = results_dir / "lr-selection.jsonl"
    lr_rows = [json.loads(line) for line in lr_path.read_text().splitlines() if line] if lr_path.is_file() else []
    generated = blocks(study, found, real, lr_rows)
    tables = ["# The axes study: every table", "", "## Base models", "", generated["axes-bases"], ""]
    for noise in study.noise:
        for score in SCORES:
            tables += [f"## {SCORES[score]}: change from the base model, noise {noise:g}", "",
                       score_table(study, score=score, noise=noise), ""]
        tables += [f"## DEFT against the best fixed α and against Cayley, noise {noise:g}", "",
                   deft_table(study, noise=noise), ""]
    tables += ["## The SFT learning-rate check (seed 0, before the grid)", "", generated["axes-lr"], ""]
    tables += ["## Verdicts", "", generated["axes-verdicts"], "", "## Real data on the plane", "", generated["axes-real"], ""]
    files = {results_dir / "axes.md": "\n".join(tables),
             results_dir / "verdicts.md": verdicts_markdown(found),
             results_dir / "summary.json": json.dumps(summary(study, found, real), indent=1, sort_keys=True,
                                                      default=float) + "\n"}
    return files, generated


def write_figures(results_dir: pathlib.Path = RESULTS) -> list[pathlib.Path]:
    study = Axes(*load(results_dir))
    return [frontier_figure(study, results_dir / "frontier.png"), winners_figure(study, results_dir / "winners.png")]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="continuum-axes-verdicts", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default=None, help="a study directory: copy its reports into --results/raw")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args(argv)
    results_dir = pathlib.Path(args.results)
    if args.workdir:
        n, m = export_raw(pathlib.Path(args.workdir), results_dir)
        print(f"continuum-axes: copied {n} results and {m} base reports into {results_dir / 'raw'}")
    try:
        files, _ = expected_files(results_dir)
    except FileNotFoundError as error:
        print(error, file=sys.stderr)
        return 2
    for path, text in files.items():
        path.write_text(text)
    for path in write_figures(results_dir):
        print(f"wrote {path}")
    print(f"wrote {', '.join(str(p) for p in files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
