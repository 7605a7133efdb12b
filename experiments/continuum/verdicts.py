"""The continuum's verdicts, every number they quote, and the probe's evidence, computed from the results.

    python -m experiments.continuum.verdicts --results experiments/continuum/results --write_docs

Each verdict states its claim, its metric and label noise, and the family of paired comparisons it rests
on (experiments/continuum/stats.py): Holm's adjustment runs over that family alone, at a family-wise level
of 0.05; "holds" needs every comparison of the family resolved in the claim's direction. The Markdown
quotes the raw 95% interval and Holm's adjusted p of every comparison it names; verdicts.md lists every
comparison with its raw and adjusted interval.

The axes study's blocks and files (experiments/continuum/axes_verdicts.py: results/axes/) are regenerated and
checked the same way when its raw results are present.

The prose blocks that the docs include between `<!-- BEGIN GENERATED: <name> -->` and `<!-- END GENERATED -->`
markers are `blocks()`; --write_docs rewrites them in experiments/README.md and README.md (and the results
directory's verdicts.md and summary.json), --check exits 1 when one of them differs; `table-*` blocks are
experiments/tables.py's (which also runs this check). The probe's evidence (deft_jax/evaluation/continuum_evidence.json) is
`evidence()`: per prior level, each objective's score and which objectives the best one is resolved ahead
of.

Regimes by base mean p on the SFT data are the probe's (deft_jax.evaluation.probe.regime): weak < 0.365 ≤
intermediate < 0.785 ≤ strong. DFT and DEFT ε = 0 are checks of identities, not ranked.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import re
import sys
from collections.abc import Mapping, Sequence

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from experiments.continuum import analyze, stats  # noqa: E402

METRICS = {"accuracy": (("generation", "char_accuracy"), "greedy character accuracy"),
           "mean_p": (("eval", "mean_p"), "teacher-forced eval mean p")}
NOT_RANKED = ("dft", "deft_eps0")
NEAR_MARGIN = 0.05  # "near the best": within 0.05 (accuracy or mean p), a non-inferiority test
DOCS = (REPO_ROOT / "experiments" / "README.md", REPO_ROOT / "README.md")
EVIDENCE = REPO_ROOT / "deft_jax" / "evaluation" / "continuum_evidence.json"
BEGIN = "<!-- BEGIN GENERATED: {name} -->"
END = "<!-- END GENERATED -->"
FOREIGN = ("table-",)  # blocks of experiments/tables.py (the other published tables), left to it
D = analyze.DISPLAY


# ------------------------------------------------------------------------------------------------ data

class Study:
    """The results indexed for the verdicts: priors per level, ranked objectives, per-seed cells."""

    def __init__(self, results: Sequence[dict], bases: Sequence[dict]):
        from deft_jax.evaluation import probe

        self.results = list(results)
        self.priors = analyze.prior_by_level(bases)
        self.levels = list(self.priors)
        self.base_p = {x: prior["p"][0] for x, prior in self.priors.items()}
        self.regime = {x: probe.regime(p) for x, p in self.base_p.items()}
        self.labels = [l for l in analyze.labels_present(self.results) if l not in NOT_RANKED]
        self.noise_levels = sorted({r["noise"] for r in self.results})

    def cell(self, *, level, noise, label, metric) -> dict[int, float]:
        return analyze.cell_scores(self.results, x=level, noise=noise, label=label, path=METRICS[metric][0])

    def mean(self, **cell) -> float:
        return stats.interval(list(self.cell(**cell).values())).mean

    def ranking(self, *, level, noise, metric) -> list[str]:
        means = {l: self.mean(level=level, noise=noise, label=l, metric=metric) for l in self.labels}
        return sorted((l for l in means if not math.isnan(means[l])), key=lambda l: -means[l])

    def compare(self, a, b, *, level, noise, metric, expect=1, margin=0.0) -> stats.Comparison:
        return stats.comparison(a=a, b=b, metric=metric, level=level, noise=noise, expect=expect, margin=margin,
                                mine=self.cell(level=level, noise=noise, label=a, metric=metric),
                                theirs=self.cell(level=level, noise=noise, label=b, metric=metric))

    def in_regime(self, *names) -> list[int]:
        return [x for x in self.levels if self.regime[x] in names]


# ------------------------------------------------------------------------------------------------ text

def signed(c: stats.Comparison) -> str:
    """'+0.012 ± 0.002 (Holm p 0.003)': the difference (margin removed), raw interval, adjusted p."""
    raw = c.raw
    if raw.n < 2:
        return f"{raw.mean - c.margin:+.3f} (1 seed)"
    return f"{raw.mean - c.margin:+.3f} ± {raw.half:.3f} (Holm p {c.p_holm:.3g})"


def levels_text(levels: Sequence[int]) -> str:
    """'no level', 'level 1', 'levels 1 and 2', 'levels 0, 1 and 2'."""
    levels = [str(x) for x in levels]
    if not levels:
        return "no level"
    if len(levels) == 1:
        return f"level {levels[0]}"
    return "levels " + ", ".join(levels[:-1]) + " and " + levels[-1]


def family_summary(family: Sequence[stats.Comparison]) -> str:
    signs = [c.resolved * c.expect for c in family]
    return (f"{sum(s > 0 for s in signs)} of {len(family)} comparisons resolved in its favour, "
            f"{sum(s < 0 for s in signs)} against (Holm over the {len(family)})")


def record(*, key: str, claim: str, metric: str, noise: float, family: Sequence[stats.Comparison], text: str,
           **extra) -> dict:
    return {"id": key, "claim": claim, "metric": metric, "noise": noise, "status": stats.verdict(family),
            "family": [c.to_json() for c in family], "text": text, **extra}


def where(study: Study, levels: Sequence[int]) -> str:
    """'levels 0 and 1 (base p 0.11, 0.22)'."""
    if not levels:
        return "no level"
    return f"{levels_text(levels)} (base p " + ", ".join(f"{study.base_p[x]:.2f}" for x in levels) + ")"


# ------------------------------------------------------------------------------------------------ claims

def best_where(study: Study, *, favourite: str, regimes: Sequence[str], metric: str, noise: float, key: str,
               claim: str) -> dict:
    """`favourite` beats every other ranked objective at the levels of `regimes`."""
    levels = study.in_regime(*regimes)
    family = stats.adjust([study.compare(favourite, other, level=x, noise=noise, metric=metric)
                           for x in levels for other in study.labels if other != favourite])
    status = stats.verdict(family)
    against = [c for c in family if c.resolved * c.expect < 0]
    top = [x for x in study.levels if favourite in study.ranking(level=x, noise=noise, metric=metric)[:1]
           or study.mean(level=x, noise=noise, label=favourite, metric=metric)
           == study.mean(level=x, noise=noise, label=study.ranking(level=x, noise=noise, metric=metric)[0], metric=metric)]
    text = (f"**{claim}** ({METRICS[metric][1]}, noise {noise:g}, {' and '.join(regimes)} {where(study, levels)}): "
            f"**{status}**; {family_summary(family)}.")
    if against:
        text += " Resolved against: " + "; ".join(
            f"{D[c.b]} − {D[c.a]} {signed_flip(c)} at level {c.level}" for c in against) + "."
    text += f" {D[favourite]} has the highest (or tied-highest) mean at {where(study, top)}."
    return record(key=key, claim=claim, metric=metric, noise=noise, family=family, text=text, top_levels=top)


def signed_flip(c: stats.Comparison) -> str:
    """The comparison as b − a (for quoting who beat the favourite)."""
    raw = c.raw
    return f"{-raw.mean:+.3f} ± {raw.half:.3f} (Holm p {c.p_holm:.3g})"


def near_best(study: Study, *, label: str, metric: str, noise: float, key: str) -> dict:
    """`label` within NEAR_MARGIN of the best at every level (non-inferiority, Holm over the levels), and
    where it is the best, not separated from it, or resolved behind it (difference, Holm over the levels)."""
    near, gap, best_of = [], [], {}
    for x in study.levels:
        ranked = study.ranking(level=x, noise=noise, metric=metric)
        best = ranked[0] if ranked[0] != label else ranked[1]
        best_of[x] = ranked[0]
        near.append(study.compare(label, best, level=x, noise=noise, metric=metric, margin=NEAR_MARGIN))
        gap.append(study.compare(label, best, level=x, noise=noise, metric=metric))
    near, gap = stats.adjust(near), stats.adjust(gap)
    is_best = [x for x in study.levels if best_of[x] == label]
    behind = [c.level for c in gap if c.level not in is_best and c.resolved < 0]
    raw_behind = [c.level for c in gap if c.level not in is_best and c.raw.n > 1 and c.raw.mean + c.raw.half < 0]
    tied = [x for x in study.levels if x not in is_best and x not in behind]
    claim = f"{D[label]} is near the best everywhere"
    text = (f"**{claim}** (within {NEAR_MARGIN:g}; {METRICS[metric][1]}, noise {noise:g}): "
            f"**{stats.verdict(near)}**; {family_summary(near)}. {D[label]} − the best other objective: "
            + "; ".join(f"level {c.level} {signed(c)} vs {D[c.b]}" for c in gap) + ". "
            f"It has the highest mean at {levels_text(is_best)}, is not separated from the best at "
            f"{levels_text(tied)} and is resolved behind it at {levels_text(behind)}")
    extra = sorted(set(raw_behind) - set(behind))
    text += (f" (the raw intervals alone would also put it behind at {levels_text(extra)})." if extra else ".")
    return record(key=key, claim=claim, metric=metric, noise=noise, family=near, text=text,
                  gap=[c.to_json() for c in gap], best_levels=is_best, tied_levels=tied, behind_levels=behind)


def fixed_alpha_vs_deft(study: Study, *, metric: str, noise: float, key: str) -> dict:
    """The best deformed-log α per level (chosen by mean on the same data) beats DEFT."""
    alphas = [l for l in study.labels if l.startswith("dlog")]
    family = []
    for x in study.levels:
        best = max(alphas, key=lambda l: study.mean(level=x, noise=noise, label=l, metric=metric))
        family.append(study.compare(best, "deft", level=x, noise=noise, metric=metric))
    family = stats.adjust(family)
    claim = "A fixed deformed-log α chosen per level beats DEFT"
    gaps = [c.raw.mean for c in family]
    text = (f"**{claim}** ({METRICS[metric][1]}, noise {noise:g}; the α with the highest mean at that level, "
            f"chosen on the same data): **{stats.verdict(family)}**; {family_summary(family)}. Best α − DEFT: "
            + "; ".join(f"level {c.level} ({D[c.a]}) {signed(c)}" for c in family)
            + f"; the gap ranges {min(gaps):.3f}–{max(gaps):.3f}.")
    return record(key=key, claim=claim, metric=metric, noise=noise, family=family, text=text)


def beats_all(study: Study, *, label: str, metric: str, noise: float, key: str, claim: str,
              against: Sequence[str] | None = None, levels: Sequence[int] | None = None) -> dict:
    """`label` ahead of each of `against` (default: every other ranked objective) at each of `levels`."""
    levels = list(study.levels if levels is None else levels)
    others = [l for l in (against or study.labels) if l != label]
    family = stats.adjust([study.compare(label, other, level=x, noise=noise, metric=metric)
                           for x in levels for other in others])
    ahead = [x for x in levels if all(c.resolved > 0 for c in family if c.level == x)]
    behind = sorted({c.level for c in family if c.resolved < 0})
    text = (f"**{claim}** ({METRICS[metric][1]}, noise {noise:g}, {where(study, levels)}): "
            f"**{stats.verdict(family)}**; {family_summary(family)}. Resolved ahead of "
            f"{'every one' if len(others) > 1 else D[others[0]]} at {levels_text(ahead)}; resolved behind "
            f"{'at least one ' if len(others) > 1 else ''}at {levels_text(behind)}.")
    if len(others) == 1:
        text += " " + D[label] + " − " + D[others[0]] + ": " + "; ".join(
            f"level {c.level} {signed(c)}" for c in family) + "."
    else:
        closest = [min((c for c in family if c.level == x), key=lambda c: c.raw.mean) for x in levels]
        text += f" {D[label]} − its closest rival per level: " + "; ".join(
            f"level {c.level} {signed(c)} vs {D[c.b]}" for c in closest) + "."
    return record(key=key, claim=claim, metric=metric, noise=noise, family=family, text=text,
                  ahead_levels=ahead, behind_levels=behind)


def figures_quoted(study: Study) -> dict:
    """The descriptive figures the prose quotes: between-seed spread and interval widths."""
    acc = METRICS["accuracy"][0]
    spread = {f"{noise:g}": analyze.seed_spread(study.results, noise=noise, path=acc) for noise in study.noise_levels}
    halves, paired_halves, paired = [], [], []
    for noise in study.noise_levels:
        for x in study.levels:
            for label in study.labels:
                cell = study.cell(level=x, noise=noise, label=label, metric="accuracy")
                if noise == 0.0 and len(cell) > 1:
                    halves.append(stats.interval(list(cell.values())).half)
                if noise == 0.0 and label != "nll":
                    diff = study.compare(label, "nll", level=x, noise=noise, metric="accuracy").raw
                    if diff.n > 1:
                        paired_halves.append(diff.half)
                for metric in METRICS:
                    if label != "nll":
                        paired.append(study.compare(label, "nll", level=x, noise=noise, metric=metric))
    raw = sum(c.raw.n > 1 and abs(c.raw.mean) > c.raw.half for c in paired)
    checks = {}
    for label, twin in (("deft_eps0", "deft"), ("dft", "prob")):
        gaps = [abs(r["generation"]["char_accuracy"] - t["generation"]["char_accuracy"]) for r in study.results
                if r["label"] == label for t in study.results if t["label"] == twin
                and (t["level"], t["seed"], t["noise"]) == (r["level"], r["seed"], r["noise"])]
        if gaps:
            checks[label] = {"runs": len(gaps), "max_abs_accuracy_difference": float(max(gaps))}
    eval_nll = {label: stats.interval(list(analyze.cell_scores(study.results, x=study.levels[0], noise=0.0,
                                                               label=label, path=("eval", "nll")).values())).mean
                for label in ("nll", "prob")}
    adjusted = stats.adjust(paired)
    return {"median_seed_sd_accuracy": spread, "cell_half_width_accuracy_noise0": {
        "min": float(np.min(halves)), "median": float(np.median(halves)), "max": float(np.max(halves)),
        "cells": len(halves)}, "paired_half_width_accuracy_noise0": {
        "min": float(np.min(paired_halves)), "median": float(np.median(paired_halves)),
        "max": float(np.max(paired_halves)), "comparisons": len(paired_halves)}, "paired_vs_nll": {"comparisons": len(paired), "resolved_raw": int(raw),
                                                 "resolved_holm_over_all": int(sum(c.resolved != 0 for c in adjusted))},
            "identity_checks": checks, "eval_nll_lowest_level": eval_nll}


def verdicts(results: Sequence[dict], bases: Sequence[dict]) -> dict:
    """{'verdicts': [...], 'figures': {...}} of the results (module docstring). A verdict whose objectives
    the results lack (a reduced or smoke grid) is left out."""
    study = Study(results, bases)
    have = set(study.labels)
    if not {"nll", "prob", "deft", "cayley", "dlog0.25", "dlog0.5", "dlog0.75"} <= have or len(study.levels) < 2:
        return {"policy": "Holm over the comparisons each verdict rests on, family-wise level 0.05",
                "near_margin": NEAR_MARGIN, "verdicts": [], "figures": {},
                "skipped": f"the verdicts need every grid objective and at least two levels; these results have "
                           f"{sorted(have)} at {len(study.levels)} level(s)",
                "levels": {str(x): {"base_mean_p": study.base_p[x], "regime": study.regime[x]} for x in study.levels}}
    found = []
    for metric in METRICS:
        found.append(best_where(study, favourite="nll", regimes=("weak",), metric=metric, noise=0.0,
                                key=f"claim1-{metric}", claim="NLL is best where the prior is weak"))
    for noise in study.noise_levels:
        for metric in METRICS:
            found.append(best_where(study, favourite="prob", regimes=("strong",), metric=metric, noise=noise,
                                    key=f"claim2-{metric}-noise{noise:g}", claim="−p is best where the prior is strong"))
    for noise in study.noise_levels:
        for metric in METRICS:
            found.append(near_best(study, label="deft", metric=metric, noise=noise, key=f"claim3-{metric}-noise{noise:g}"))
    found.append(beats_all(study, label="cayley", metric="mean_p", noise=0.0, key="cayley-best-mean_p",
                           claim="Cayley is the best objective in mean p at every level"))
    strongish = [x for x in study.levels if study.base_p[x] > 0.5]
    found.append(beats_all(study, label="prob", against=["nll"], metric="mean_p", noise=0.0, levels=strongish,
                           key="prob-passes-nll-mean_p", claim="−p passes NLL in mean p once base p > 0.5"))
    middle = study.in_regime("weak", "intermediate")
    found.append(beats_all(study, label="deft", against=[l for l in study.labels if l.startswith("dlog")],
                           metric="accuracy", noise=0.0, levels=middle, key="deft-beats-dlog-accuracy",
                           claim="DEFT beats every fixed deformed-log α at weak and intermediate priors"))
    if 0.2 in study.noise_levels:
        found.append(fixed_alpha_vs_deft(study, metric="mean_p", noise=0.2, key="alpha-vs-deft-mean_p-noise0.2"))
    return {"policy": "Holm over the comparisons each verdict rests on, family-wise level 0.05; raw 95% t "
                      "intervals and Holm-adjusted p shown", "near_margin": NEAR_MARGIN, "verdicts": found,
            "figures": figures_quoted(study),
            "levels": {str(x): {"base_mean_p": study.base_p[x], "regime": study.regime[x]} for x in study.levels}}


def summary(results: Sequence[dict], bases: Sequence[dict]) -> tuple[str, dict]:
    """(summary.json's text, the verdicts): the tables' numbers (analyze.report_of) and every verdict."""
    _, numbers = analyze.report_of(results, bases)
    found = verdicts(results, bases)
    numbers["verdicts"] = found
    return json.dumps(numbers, indent=1, default=float) + "\n", found


def by_id(found: dict) -> dict:
    return {v["id"]: v for v in found["verdicts"]}


# ------------------------------------------------------------------------------------------------ Markdown

def comparison_row(c: dict) -> str:
    margin = f" + {c['margin']:g}" if c["margin"] else ""
    adjusted = "–" if math.isnan(c["adjusted_half"]) else f"± {c['adjusted_half']:.3f}"
    half = "–" if math.isnan(c["half"]) else f"± {c['half']:.3f}"
    result = {1: "above 0", -1: "below 0", 0: "not resolved"}[c["resolved"]]
    return (f"| {c['level']} | {D[c['a']]} − {D[c['b']]}{margin} | {c['tested']:+.3f} {half} | {c['n']} | "
            f"{c['p']:.3g} | {c['p_holm']:.3g} | {adjusted} | {result} |")


def verdicts_markdown(found: dict) -> str:
    if found.get("skipped"):
        return f"# Continuum verdicts\n\nNo verdicts: {found['skipped']}.\n"
    lines = ["# Continuum verdicts (generated by experiments/continuum/verdicts.py)", "",
             (f"Policy: {found['policy']}. Each comparison: the per-seed paired difference (plus the margin of a "
              "non-inferiority test), its raw 95% t interval, the paired t test's p, Holm's adjusted p over the "
              "verdict's family, and the interval at the level Holm tests it at."), ""]
    for v in found["verdicts"]:
        lines += [f"## {v['id']}", "", v["text"], "",
                  "| level | comparison | difference, raw 95% CI | n | p | Holm p | adjusted CI | resolved |",
                  "|---|---|---|---|---|---|---|---|"] + [comparison_row(c) for c in v["family"]] + [""]
    return "\n".join(lines)


def blocks(found: dict, *, rerun: bool = False) -> dict[str, str]:
    """The generated prose blocks of the docs, by name (`rerun`: the results are the re-run with separated
    random streams, the grid before it kept beside them)."""
    v = by_id(found)
    f = found["figures"]
    sd = f["median_seed_sd_accuracy"]
    hw = f["cell_half_width_accuracy_noise0"]
    pv = f["paired_vs_nll"]
    note = ("These are the re-run of the grid with one random stream per purpose (480 runs); the grid before "
            "it (546 runs, colliding streams) is kept in `results/before-streams/`, and how much the change moved "
            "the numbers is stated below the tables.") if rerun else ("Status of these numbers: they are the committed `runs.csv` of the full grid, run before the "
            "random streams were separated (SFT seed s then drew the same start symbols as level-s "
            "pretraining, s = 1–4); the re-run with separate streams is pending (command in "
            "`experiments/continuum/results/README.md`), so how much the change moves them is not yet measured.")
    out = {}
    out["continuum-spread"] = (f"Median between-seed sd of a cell in character accuracy: {sd['0']:.3f} without "
                               f"noise, {sd.get('0.2', float('nan')):.3f} with 20% wrong labels. Across the "
                               f"{hw['cells']} cells without noise the 95% interval's half-width ranges "
                               f"{hw['min']:.3f}–{hw['max']:.3f} (median {hw['median']:.3f}).")
    out["continuum-multiplicity"] = (
        f"The tables above are descriptive: their ≈ marks a raw interval that includes zero. Of the "
        f"{pv['comparisons']} paired comparisons against NLL in them (both metrics, both noise levels) "
        f"{pv['resolved_raw']} exclude zero raw; with Holm's adjustment over all {pv['comparisons']}, "
        f"{pv['resolved_holm_over_all']} do. Every verdict below applies Holm over the comparisons it rests on "
        "(its family), quotes the raw interval and Holm's p, and says **holds** only when every comparison of "
        "the family is resolved in its direction; the full families with raw and adjusted intervals are in "
        "`results/verdicts.md`. " + note)
    out["continuum-mean-p"] = "\n\n".join(v[k]["text"] for k in (
        "cayley-best-mean_p", "prob-passes-nll-mean_p", "deft-beats-dlog-accuracy"))
    checks = f["identity_checks"]
    text = (f"−p leaves the eval NLL high where the prior is weak ({f['eval_nll_lowest_level']['prob']:.2f} vs "
            f"NLL's {f['eval_nll_lowest_level']['nll']:.2f} at level 0).")
    if "deft_eps0" in checks:
        text += (f" DEFT with ε = 0 and with the official ε = 1e-6 differ by at most "
                 f"{checks['deft_eps0']['max_abs_accuracy_difference']:.4f} in character accuracy over "
                 f"{checks['deft_eps0']['runs']} paired runs")
    if "dft" in checks:
        text += (f"; DFT and −p on the same seed by at most {checks['dft']['max_abs_accuracy_difference']:.4f} "
                 f"over {checks['dft']['runs']} runs (its gradient is −p's)")
    if checks:
        text += (". Both identities are now unit tests (tests/experiments/test_continuum.py) instead of grid columns; the "
                 "committed results still hold those columns.")
    out["continuum-checks"] = text
    out["continuum-noise"] = "\n\n".join(v[k]["text"] for k in (
        "claim3-accuracy-noise0.2", "claim3-mean_p-noise0.2", "alpha-vs-deft-mean_p-noise0.2",
        "claim2-accuracy-noise0.2", "claim2-mean_p-noise0.2") if k in v)
    out["continuum-claims"] = "\n\n".join(f"{i}. " + v[k]["text"] for i, k in enumerate((
        "claim1-accuracy", "claim1-mean_p", "claim2-accuracy-noise0", "claim2-mean_p-noise0",
        "claim3-accuracy-noise0", "claim3-mean_p-noise0"), start=1))
    ph = f["paired_half_width_accuracy_noise0"]
    out["continuum-against-smollm2"] = (
        f"With 5 seeds the cells' 95% intervals have half-widths {hw['min']:.3f}–{hw['max']:.3f} (median "
        f"{hw['median']:.3f}) in character accuracy without noise, and the paired differences against NLL "
        f"{ph['min']:.3f}–{ph['max']:.3f} (median {ph['median']:.3f}); the verdicts above say which orderings "
        "that resolves after Holm's adjustment.")
    statuses = {k: v[k]["status"] for k in v}
    out["readme-claims"] = (
        "The paper's claims here (each verdict names its metric; Holm over the comparisons it rests on): "
        f"NLL best where the prior is weak — {statuses['claim1-accuracy']} in accuracy, "
        f"{statuses['claim1-mean_p']} in mean p (NLL has the highest accuracy at "
        f"{levels_text(v['claim1-accuracy']['top_levels'])}"
        + (", so there is no weak-vs-strong contrast); " if any(
            found["levels"][str(x)]["regime"] == "strong" for x in v["claim1-accuracy"]["top_levels"]) else "); ")
        + f"−p best where it is strong — {statuses['claim2-accuracy-noise0']} in accuracy, "
        f"{statuses['claim2-mean_p-noise0']} in mean p; DEFT within {NEAR_MARGIN:g} of the best everywhere — "
        f"{statuses['claim3-accuracy-noise0']} in accuracy, {statuses['claim3-mean_p-noise0']} in mean p. "
        + ("These come from the re-run with separated random streams." if rerun else
           "These are the committed pre-fix results; the re-run with separated random streams is pending."))
    return out


# ------------------------------------------------------------------------------------------------ docs

def replace_blocks(text: str, generated: Mapping[str, str], *, keep: Sequence[str] = ()) -> tuple[str, list[str]]:
    """`text` with each generated block's body replaced; the names it held. Blocks whose name starts with
    one of `keep` belong to another generator and are left as they are; any other unknown name is an error."""
    found = []

    def body(match):
        name = match.group(1)
        if name.startswith(tuple(keep)):
            return match.group(0)
        found.append(name)
        if name not in generated:
            raise KeyError(f"generated block {name!r} in the docs is not one of {sorted(generated)}")
        return f"{BEGIN.format(name=name)}\n{generated[name]}\n{END}"

    # The body may be empty (markers just added): then END follows BEGIN's line directly.
    pattern = re.compile(r"<!-- BEGIN GENERATED: ([\w-]+) -->\n(?:.*?\n)??<!-- END GENERATED -->", re.DOTALL)
    return pattern.sub(body, text), found


# ------------------------------------------------------------------------------------------------ evidence

def evidence(results: Sequence[dict], bases: Sequence[dict]) -> dict:
    """Per level: base mean p and, per metric, each objective's mean ± half (n), the best objective, and
    the objectives it is resolved ahead of (Holm over its comparisons at that level)."""
    study = Study(results, bases)
    levels = []
    for x in study.levels:
        entry = {"level": x, "base_mean_p": study.base_p[x], "metrics": {}}
        for metric in METRICS:
            ranked = study.ranking(level=x, noise=0.0, metric=metric)
            best = ranked[0]
            family = stats.adjust([study.compare(best, other, level=x, noise=0.0, metric=metric)
                                   for other in ranked[1:]])
            entry["metrics"][metric] = {
                "objectives": {l: list(stats.interval(list(study.cell(level=x, noise=0.0, label=l, metric=metric)
                                                            .values())).as_tuple()) for l in ranked},
                "best": best, "ahead_of": [c.b for c in family if c.resolved > 0],
                "not_separated": [best] + [c.b for c in family if c.resolved <= 0]}
        levels.append(entry)
    return {"source": "experiments/continuum (no label noise; committed results; Holm over the best objective's "
                      "comparisons at each level)", "metrics": {k: v[1] for k, v in METRICS.items()}, "levels": levels}


def table_blocks(results: Sequence[dict], bases: Sequence[dict]) -> dict[str, str]:
    """The docs' tables, from analyze's table functions (those the results support)."""
    priors = analyze.prior_by_level(bases)
    dial = ["| level | target-map examples in pretraining | base mean p on the SFT data | base NLL | "
            "base eval char accuracy |", "|---|---|---|---|---|"]
    dial += [f"| {x} | {prior['target_examples']:,} | {prior['p'][0]:.3f} | {prior['nll'][0]:.2f} | "
             f"{prior['score'][0]:.3f} |" for x, prior in priors.items()]
    out = {"continuum-dial": "\n".join(dial),
           "continuum-accuracy": analyze.continuum_table(results, priors, noise=0.0),
           "continuum-paired": analyze.paired_table(results, priors, noise=0.0)}
    if all("dynamics" in r for r in results):
        out["continuum-alpha"] = ("DEFT's α (mean Σπ² of the SFT batch) and the batch's mean target p per step, "
                                  "noise 0, mean over seeds:\n\n" + analyze.alpha_table(results, priors))
    else:
        out["continuum-alpha"] = "(DEFT's α trajectory needs the per-run result.json files: not in these results.)"
    if all(b.get("wrong_labels") for b in bases):
        out["continuum-wrong-labels"] = analyze.wrong_label_table(bases, [r for r in results if r["noise"] > 0])
    else:
        out["continuum-wrong-labels"] = "(The wrong-label tables need the raw base.json and result.json files.)"
    labels = [l for l in analyze.labels_present(results) if l not in NOT_RANKED]
    compact = ["| level (base mean p) | " + " | ".join(D[l] for l in labels) + " |", "|---|" + "---|" * len(labels)]
    for x, prior in priors.items():
        means = {l: analyze.interval(list(analyze.cell_scores(results, x=x, noise=0.0, label=l).values()))
                 for l in labels}
        top = max(m[0] for m in means.values())
        compact.append(f"| {x} ({prior['p'][0]:.2f}) | " + " | ".join(
            (f"**{analyze.fmt(*means[l][:2])}**" if means[l][0] == top else analyze.fmt(*means[l][:2]))
            for l in labels) + " |")
    out["readme-accuracy"] = "\n".join(compact)
    return out


def before_after(old: tuple[Sequence[dict], Sequence[dict]], new: tuple[Sequence[dict], Sequence[dict]]) -> str:
    """How much the separated random streams moved the results: base mean p per level, the cell means
    (every objective, level, noise, metric both grids ran), and which verdicts changed status."""
    old_priors, new_priors = analyze.prior_by_level(old[1]), analyze.prior_by_level(new[1])
    levels = [x for x in new_priors if x in old_priors]
    shifts = {}
    for metric, (path, _) in METRICS.items():
        deltas = []
        for noise in sorted({r["noise"] for r in new[0]}):
            for label in {r["label"] for r in new[0]} - set(NOT_RANKED):
                for x in levels:
                    before = analyze.cell_scores(old[0], x=x, noise=noise, label=label, path=path)
                    after = analyze.cell_scores(new[0], x=x, noise=noise, label=label, path=path)
                    if before and after:
                        deltas.append(np.mean(list(after.values())) - np.mean(list(before.values())))
        shifts[metric] = np.abs(deltas)
    old_v, new_v = by_id(verdicts(*old)), by_id(verdicts(*new))
    changed = [f"{k} {old_v[k]['status']} → {new_v[k]['status']}" for k in new_v
               if k in old_v and old_v[k]["status"] != new_v[k]["status"]]
    return ("How much separating the random streams moved the results (the grid before, in "
            "`results/before-streams/`, against the re-run): base mean p per level "
            + ", ".join(f"{x}: {old_priors[x]['p'][0]:.3f} → {new_priors[x]['p'][0]:.3f}" for x in levels)
            + "; the mean of a cell (objective × level × noise) moved by a median of "
            + "; ".join(f"{np.median(v):.3f} (max {np.max(v):.3f}, {v.size} cells) in {METRICS[m][1]}"
                        for m, v in shifts.items())
            + ". Verdicts whose status changed: " + ("; ".join(changed) if changed else "none") + ".")


def expected_files(results_dir: pathlib.Path) -> tuple[dict[pathlib.Path, str], dict[str, str]]:
    """({path: the text it should hold}, the generated blocks) from the results in `results_dir`: its
    verdicts.md and summary.json, the probe's evidence, and the docs with their blocks regenerated."""
    results, bases, _ = analyze.load_study(results_dir)
    summary_text, found = summary(results, bases)
    before = results_dir / "before-streams"
    generated = {**blocks(found, rerun=(before / "runs.csv").is_file()), **table_blocks(results, bases)}
    if (before / "runs.csv").is_file():
        old_results, old_bases, _ = analyze.load_study(before)
        generated["continuum-streams"] = before_after((old_results, old_bases), (results, bases))
    files = {results_dir / "verdicts.md": verdicts_markdown(found), results_dir / "summary.json": summary_text,
             EVIDENCE: json.dumps(evidence(results, bases), indent=1, sort_keys=True) + "\n"}
    if (results_dir / "axes" / "raw" / "results.jsonl").is_file():  # the axes study (axes_verdicts.py)
        from experiments.continuum import axes_verdicts

        axes_files, axes_blocks = axes_verdicts.expected_files(results_dir / "axes")
        files.update(axes_files)
        generated.update(axes_blocks)
    for doc in DOCS:
        files[doc], names = replace_blocks(doc.read_text(), generated, keep=FOREIGN)
        missing = [name for name in generated if name.startswith("readme") == (doc.name == "README.md"
                                                                              and doc.parent == REPO_ROOT)
                   and name not in names]
        if missing:
            raise KeyError(f"{doc}: generated block(s) {missing} missing; add their markers")
    return files, generated


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="continuum-verdicts", description=__doc__.split("\n")[0])
    parser.add_argument("--results", default=str(REPO_ROOT / "experiments" / "continuum" / "results"))
    parser.add_argument("--write_docs", action="store_true", help="rewrite the generated blocks and evidence")
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated block or file differs")
    args = parser.parse_args(argv)
    results_dir = pathlib.Path(args.results)
    try:
        files, generated = expected_files(results_dir)
    except FileNotFoundError as error:
        print(error, file=sys.stderr)
        return 2
    stale = [path for path, text in files.items() if not path.is_file() or path.read_text() != text]
    if args.write_docs:
        for path in stale:
            path.write_text(files[path])
        print(f"continuum-verdicts: rewrote {', '.join(str(p) for p in stale) or 'nothing (all current)'}")
    elif args.check:
        if stale:
            print("continuum-verdicts: out of date: " + ", ".join(str(p) for p in stale)
                  + "; run python -m experiments.continuum.verdicts --write_docs", file=sys.stderr)
            return 1
        print("continuum-verdicts: every generated block and file is current")
    else:
        print("\n\n".join(f"[{name}]\n{text}" for name, text in generated.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
