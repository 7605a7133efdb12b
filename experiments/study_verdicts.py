"""The SmolLM2 studies' tables, numbers and verdicts, from their raw results (experiments/study.py --json).

    blocks(study=..., gates_step0=..., gates_trained=...)   # {generated block name: Markdown}

Every number the studies' prose quotes is computed here from the committed raw files, and every verdict on
one of the paper's claims rests on a stated family of paired comparisons (experiments/continuum/stats.py):

    paired difference   d_s = a_s − b_s over the seeds s both runs have (same data order and wrong labels)
    interval            mean(d) ± t(0.975, n − 1) · sd(d) / √n   (raw 95% t interval; none for n = 1)
    Holm                over the comparisons of the verdict's family; "holds" needs every one resolved in the
                        claim's direction at family-wise level 0.05 (stats.verdict)

A comparison of one seed has no interval and is never resolved, so a claim resting on one-seed runs is
"unresolved" whatever its point estimate; the text then gives the estimate as one seed's. The paper's
numbers (Llama-3.1-8B, read off its overview figure) are shown beside ours as the paper's.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

from experiments import study as study_lib
from experiments.continuum import stats, verdicts

DEFORMED = f"deformed_log(α={study_lib.DEFORMED_ALPHA:g})"
NAMES = {"nll": "NLL", "prob": "−p", "dft": "DFT", "eaft": "EAFT", "cayley": "Cayley", "deft": "DEFT",
         DEFORMED: f"the deformed log (α = {study_lib.DEFORMED_ALPHA:g})", "base": "the base model"}
RANKED = ("nll", "prob", "eaft", "cayley", "deft", DEFORMED)  # DFT trains −p's model (its gradient is −p's)
# The paper's weak regime (FigFont, Jaro-Winkler × 100) and DEFT's dynamics, read off its figures.
PAPER_WEAK = {"base": "30.17", "prob": "14.26", "nll": "33.40", "cayley": "36.95", "eaft": "42.71", "deft": "46.34"}
PAPER_INTERMEDIATE_RANGE = (49.8, 52.0)
PAPER_ALPHA = {"strong": "≈ 0.93", "intermediate": "≈ 0.85", "weak": "a rise from ≈ 0 to 0.42"}
PAPER_MEAN_P = {"strong": 0.84, "intermediate": 0.73, "weak": 0.53}
NOISE = 0.2
# noise_gates.py --workdir runs (experiments/README.md "Label noise"): (task, objective) -> the run's directory
TRAINED_RUNS = {("gsm8k", "nll"): "runs/gsm8k_noise/nll", ("gsm8k", "deft"): "runs/gsm8k_noise/deft",
                ("figfont", "nll"): "runs/study/weak-nll-noise0.2-seed0",
                ("figfont", "prob"): "runs/study/weak-prob-noise0.2-seed0",
                ("figfont", "deft"): "runs/study/weak-deft-noise0.2-seed0"}


# ------------------------------------------------------------------------------------------------ data

def runs_of(figures: Mapping) -> list[dict]:
    """Every run (and base model) of the studies' raw figures, once each (the studies share runs)."""
    found: dict[str, dict] = {}
    for entry in figures["studies"].values():
        for run in entry["runs"]:
            found.setdefault(run["name"], run)
    return list(found.values())


def per_seed(runs: Sequence[dict], *, regime: str, objective: str, noise: float = 0.0,
             metric: str = "score") -> dict[int, float]:
    """{seed: metric} of one (regime, objective, noise) cell, finished runs only."""
    return {r["seed"]: r[metric] for r in runs if r["regime"] == regime and r["objective"] == objective
            and r["noise"] == noise and r["seed"] is not None and r.get(metric) is not None}


def base_value(runs: Sequence[dict], *, regime: str, metric: str = "score") -> float:
    (value,) = [r[metric] for r in runs if r["regime"] == regime and r["objective"] == "base"]
    return value


def seed0(runs: Sequence[dict], *, regime: str, objective: str, noise: float = 0.0, metric: str = "score") -> float:
    return per_seed(runs, regime=regime, objective=objective, noise=noise, metric=metric)[0]


def plateau(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, min, max) over the second half of a per-step series."""
    tail = list(values[len(values) // 2:])
    return statistics.fmean(tail), min(tail), max(tail)


# ------------------------------------------------------------------------------------------------ comparisons

def against(runs: Sequence[dict], *, a: str, b: str, regime: str = "weak", noise: float = 0.0, metric: str = "score",
            expect: int = 1) -> stats.Comparison:
    """a − b per seed (b = 'base': the base model's one value, the same for every seed)."""
    mine = per_seed(runs, regime=regime, objective=a, noise=noise, metric=metric)
    theirs = ({s: base_value(runs, regime=regime, metric=metric) for s in mine} if b == "base" else
              per_seed(runs, regime=regime, objective=b, noise=noise, metric=metric))
    return stats.comparison(a=a, b=b, metric=metric, level=0, noise=noise, mine=mine, theirs=theirs, expect=expect)


def noise_effect(runs: Sequence[dict], objective: str, *, metric: str = "score") -> dict[int, float]:
    """{seed: score at 20% noise − score at 0%} (the two runs of a seed share the data order)."""
    clean = per_seed(runs, regime="weak", objective=objective, metric=metric)
    noisy = per_seed(runs, regime="weak", objective=objective, noise=NOISE, metric=metric)
    return {s: noisy[s] - clean[s] for s in sorted(set(clean) & set(noisy))}


def robustness(runs: Sequence[dict]) -> stats.Comparison:
    """DEFT's change under noise − NLL's, per seed (a difference of differences)."""
    return stats.comparison(a="deft", b="nll", metric="score change under noise", level=0, noise=NOISE,
                            mine=noise_effect(runs, "deft"), theirs=noise_effect(runs, "nll"))


def verdict(*, claim: str, metric: str, family: Sequence[stats.Comparison]) -> dict:
    adjusted = stats.adjust(family)
    return {"claim": claim, "metric": metric, "status": stats.verdict(adjusted), "family": adjusted}


def mean_interval(values: Sequence[float]) -> str:
    """'0.330 ± 0.219 (95% t, 3 seeds)'."""
    i = stats.interval(list(values))
    return f"{i.mean:.3f}" + ("" if math.isnan(i.half) else f" ± {i.half:.3f} (95% t, {i.n} seeds)")


# ------------------------------------------------------------------------------------------------ Markdown

def comparisons_table(found: Sequence[dict]) -> str:
    lines = ["| claim | metric | comparison | difference, raw 95% t | n | p | Holm p | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for v in found:
        for c in v["family"]:
            raw = c.raw
            half = "(1 seed)" if math.isnan(raw.half) else f"± {raw.half:.3f}"
            p = "–" if math.isnan(c.p) else f"{c.p:.3g}"
            b = "base" if c.b == "base" else NAMES[c.b]
            lines.append(f"| {v['claim']} | {c.metric} | {NAMES[c.a]} − {b} | "
                         f"{raw.mean:+.3f} {half} | {raw.n} | {p} | {c.p_holm:.3g} | {v['status']} |")
    return "\n".join(lines)


def change_table(runs: Sequence[dict]) -> str:
    """Per seed, the score at 0% → 20% noise, and the mean change (± sd over seeds)."""
    seeds = sorted({r["seed"] for r in runs if r["noise"] == NOISE and r["seed"] is not None})
    lines = ["| objective | " + " | ".join(f"seed {s}" for s in seeds) + " | mean change (± sd) |",
             "|---|" + "---|" * (len(seeds) + 1)]
    for objective in ("nll", "deft", "prob"):
        clean = per_seed(runs, regime="weak", objective=objective)
        noisy = per_seed(runs, regime="weak", objective=objective, noise=NOISE)
        changes = list(noise_effect(runs, objective).values())
        if not changes:
            continue
        cells = [f"{clean[s]:.3f} → {noisy[s]:.3f}" if s in clean and s in noisy else "" for s in seeds]
        spread = f" ± {statistics.stdev(changes):.3f}" if len(changes) > 1 else ""
        lines.append(f"| {NAMES[objective]} | " + " | ".join(cells) + f" | {statistics.fmean(changes):+.3f}{spread} |")
    return "\n".join(lines)


def weak_findings(runs: Sequence[dict]) -> list[dict]:
    """The paper's weak-regime claims, each a verdict on its family of comparisons."""
    others = [o for o in RANKED if o != "deft" and per_seed(runs, regime="weak", objective=o)]
    return [
        verdict(claim="−p falls below the base model", metric="score",
                family=[against(runs, a="prob", b="base", expect=-1)]),
        verdict(claim="NLL ≥ the base model", metric="score", family=[against(runs, a="nll", b="base")]),
        verdict(claim="DEFT best on the weak regime", metric="score",
                family=[against(runs, a="deft", b=o) for o in others]),
        verdict(claim="DEFT's mean p above NLL's", metric="mean_p",
                family=[against(runs, a="deft", b="nll", metric="mean_p")]),
        verdict(claim="DEFT more robust to 20% label noise than NLL", metric="score",
                family=[robustness(runs), against(runs, a="deft", b="nll", noise=NOISE)]),
    ]


def seeds_text(runs: Sequence[dict]) -> str:
    nll, deft = (per_seed(runs, regime="weak", objective=o) for o in ("nll", "deft"))
    sds = [statistics.stdev(v.values()) for v in (nll, deft) if len(v) > 1]
    score = against(runs, a="deft", b="nll")
    mean_p = stats.adjust([against(runs, a="deft", b="nll", metric="mean_p")])[0]
    accuracy = stats.adjust([against(runs, a="deft", b="nll", metric="token_accuracy")])[0]
    s0 = [seed0(runs, regime="weak", objective=o) for o in RANKED if o != "prob"]
    gaps = [abs(a - b) for i, a in enumerate(s0) for b in s0[i + 1:]]
    return (f"Between seeds the Jaro-Winkler score has a standard deviation of {min(sds):.3f}–{max(sds):.3f}; "
            f"{sum(g < min(sds) for g in gaps)} of the {len(gaps)} gaps between the seed-0 scores of "
            + ", ".join(NAMES[o] for o in RANKED if o != "prob") + " are smaller. Paired by seed, DEFT − NLL is "
            f"{verdicts.signed(stats.adjust([score])[0])} in score, {verdicts.signed(mean_p)} in teacher-forced "
            f"mean p and {verdicts.signed(accuracy)} in token accuracy.")


def noise_text(runs: Sequence[dict]) -> str:
    nll, deft = (list(noise_effect(runs, o).values()) for o in ("nll", "deft"))
    prob = noise_effect(runs, "prob")
    found = weak_findings(runs)[-1]
    diff, at_noise = found["family"]
    lines = [f"- Mean change of the score from 0% to 20% noise: NLL {mean_interval(nll)}, DEFT "
             f"{mean_interval(deft)}" + (f", −p {next(iter(prob.values())):+.3f} (seed 0)" if prob else "") + ".",
             f"- DEFT's change minus NLL's, per seed: {verdicts.signed(diff)}; DEFT − NLL at 20% noise: "
             f"{verdicts.signed(at_noise)}. The claim that DEFT is the more robust is **{found['status']}** "
             f"(Holm over these two)."]
    return "\n".join(lines)


def paper_bullets(runs: Sequence[dict], *, gates_step0: Mapping, gates_trained: Mapping | None) -> str:
    """'Against the paper': one bullet per claim, each with its metric, numbers and verdict."""
    found = {v["claim"]: v for v in weak_findings(runs)}
    weak_base = base_value(runs, regime="weak")
    s0 = {o: seed0(runs, regime="weak", objective=o) for o in RANKED}
    nll3 = list(per_seed(runs, regime="weak", objective="nll").values())
    order = sorted((o for o in RANKED if o != "prob"), key=lambda o: -s0[o])
    dft_same = all(seed0(runs, regime="weak", objective="dft", metric=m) == seed0(runs, regime="weak",
                                                                                  objective="prob", metric=m)
                   for m in ("score",) + study_lib.TEACHER_FORCED)
    out = []
    v = found["−p falls below the base model"]
    out.append(f"- **−p below the base model on the weak regime (score): {v['status']} — one seed, "
               f"{s0['prob']:.3f} against the base's {weak_base:.3f}** (paper {PAPER_WEAK['prob']} vs "
               f"{PAPER_WEAK['base']} JW). DFT, whose gradient is −p's, "
               + ("trained the identical model (every column equal)." if dft_same else
                  "did **not** train the identical model: its columns differ from −p's.")
               + f" −p's teacher-forced NLL is {seed0(runs, regime='weak', objective='prob', metric='nll'):.2f} "
               f"(NLL's {seed0(runs, regime='weak', objective='nll', metric='nll'):.2f}) while its mean p is "
               f"{seed0(runs, regime='weak', objective='prob', metric='mean_p'):.3f}: it sharpens the tokens it "
               "already gives some probability and leaves the rest confidently wrong.")
    v = found["NLL ≥ the base model"]
    out.append(f"- **NLL ≥ the base model on the weak regime (score): {v['status']}.** Over "
               f"{len(nll3)} seeds NLL scores {mean_interval(nll3)} against the base's {weak_base:.3f} (paper "
               f"{PAPER_WEAK['nll']} vs {PAPER_WEAK['base']}); seed 0 alone has {s0['nll']:.3f}. NLL − base: "
               f"{verdicts.signed(v['family'][0])}.")
    v = found["DEFT best on the weak regime"]
    out.append(f"- **DEFT best on the weak regime (score): {v['status']}.** The paper has DEFT {PAPER_WEAK['deft']} > "
               f"EAFT {PAPER_WEAK['eaft']} > Cayley {PAPER_WEAK['cayley']} > NLL {PAPER_WEAK['nll']}. Ours, seed 0: "
               + ", ".join(f"{NAMES[o]} {s0[o]:.3f}" for o in order)
               + f". Only NLL has the seeds to test against: DEFT − NLL {verdicts.signed(v['family'][0])}; the "
               "others are one-seed comparisons, never resolved.")
    v = found["DEFT's mean p above NLL's"]
    out.append(f"- **DEFT's teacher-forced mean p above NLL's on the weak regime (mean p): {v['status']}.** DEFT − "
               f"NLL {verdicts.signed(v['family'][0])}.")
    for regime in ("intermediate", "strong"):
        present = [o for o in RANKED if per_seed(runs, regime=regime, objective=o)]
        scores = {o: seed0(runs, regime=regime, objective=o) for o in present}
        mean_p = {o: seed0(runs, regime=regime, objective=o, metric="mean_p") for o in present}
        by_p = sorted(present, key=lambda o: -mean_p[o])
        line = (f"- **{regime.capitalize()} ({'word_sorting' if regime == 'intermediate' else 'number_sorting'}), "
                f"one seed: no verdict.** Score from the base's {base_value(runs, regime=regime):.3f} to "
                + (f"{min(scores.values()):.3f} for every objective; " if min(scores.values()) == max(scores.values())
                   else f"{min(scores.values()):.3f}–{max(scores.values()):.3f} (highest "
                        f"{NAMES[max(scores, key=scores.get)]}); ")
                + f"teacher-forced mean p {min(mean_p.values()):.3f}–{max(mean_p.values()):.3f}, in order "
                + ", ".join(f"{NAMES[o]} {mean_p[o]:.3f}" for o in by_p) + ".")
        if regime == "intermediate":
            line += (f" The paper's intermediate regime (medical) also has small gaps: {PAPER_INTERMEDIATE_RANGE[0]}–"
                     f"{PAPER_INTERMEDIATE_RANGE[1]} for every objective.")
        else:
            line += (f" The exact-match score gives no partial credit, so this regime separates objectives only by "
                     f"the teacher-forced columns; our strong regime (base mean p "
                     f"{base_value(runs, regime='strong', metric='mean_p'):.2f}) is weaker than the paper's "
                     f"({PAPER_MEAN_P['strong']}).")
        out.append(line)
    v = found["DEFT more robust to 20% label noise than NLL"]
    gates = {(r["task"], r["objective"]): r for r in gates_step0["rows"]}
    share = gates[("gsm8k", "deft")]["gradient_share"] / gates[("gsm8k", "nll")]["gradient_share"]
    line = (f"- **DEFT more robust to noisy supervision (score): {v['status']}.** With 20% of FigFont's answers "
            f"corrupted, DEFT's change minus NLL's is {verdicts.signed(v['family'][0])}. On GSM8K, where the model "
            f"knows the answer, DEFT's gate gives the wrong final numbers {share:.2f} of NLL's gradient share at "
            "step 0, as the paper argues")
    if gates_trained is not None:
        trained = {(r["model"], r["task"]): r for r in gates_trained["rows"] if r["objective"] == "nll"}
        p = {name: trained[(model, "gsm8k")]["mean_p_wrong"] for name, model in
             (("base", "base"), ("nll", "runs/gsm8k_noise/nll"), ("deft", "runs/gsm8k_noise/deft"))}
        line += (f"; after one epoch on the noisy set the wrong numbers' mean p went {p['base']:.3f} → "
                 f"{p['deft']:.3f} under DEFT and → {p['nll']:.3f} under NLL (one run each)")
    out.append(line + " (experiments/README.md, \"Label noise\").")
    deft_runs = {r["regime"]: r for r in runs if r["objective"] == "deft" and r["noise"] == 0 and r["seed"] == 0}
    if all((deft_runs[regime].get("steps") or {}).get("mean_alpha") for regime in study_lib.REGIMES):
        alpha = {regime: plateau(deft_runs[regime]["steps"]["mean_alpha"]) for regime in study_lib.REGIMES}
        mean_p = {regime: plateau(deft_runs[regime]["steps"]["mean_p"])[0] for regime in study_lib.REGIMES}
        first = deft_runs["weak"]["steps"]["mean_alpha"][0]
        out.append("- **DEFT's dynamics (seed 0; mean over the second half of the steps, min–max).** Mean α = Σπ² "
                   + ", ".join(f"{regime} {a[0]:.2f} ({a[1]:.2f}–{a[2]:.2f})" for regime, a in
                               ((r, alpha[r]) for r in ("strong", "intermediate", "weak")))
                   + f", the weak one rising from {first:.2f}; the paper's: " + ", ".join(
                       f"{r} {PAPER_ALPHA[r]}" for r in ("strong", "intermediate", "weak"))
                   + ". Mean target p per step: " + ", ".join(f"{r} {mean_p[r]:.2f}" for r in ("strong", "intermediate",
                                                                                               "weak"))
                   + ", against the paper's " + ", ".join(f"{PAPER_MEAN_P[r]}" for r in ("strong", "intermediate",
                                                                                       "weak")) + ".")
    tokens = {regime: next(r["supervised_tokens"] for r in runs if r["regime"] == regime and r["objective"] == "base")
              for regime in study_lib.REGIMES}
    out.append("- **What limits these conclusions.** 16 steps of 96 examples per regime; 3 seeds for NLL and DEFT "
               "on FigFont and one for the rest; 32 eval examples per regime (the teacher-forced columns average "
               + ", ".join(f"{int(tokens[r]):,} ({r})" for r in study_lib.REGIMES) + " supervised tokens and are "
               "steadier than the scores); a 135M model whose strongest scoreable task has base mean p "
               f"{base_value(runs, regime='strong', metric='mean_p'):.2f}. Read the one-seed score gaps as "
               "\"not separable at this size\", not as a ranking.")
    return "\n".join(out)


def step0_gates_text(gates_step0: Mapping) -> str:
    """What the base model's gates do to the corrupted answers (noise_gates.py at step 0), per task."""
    row = {(r["task"], r["objective"]): r for r in gates_step0["rows"]}

    def of_nll(task, objective):
        return row[(task, objective)]["gradient_share"] / row[(task, "nll")]["gradient_share"]
    g, f = row[("gsm8k", "deft")], row[("figfont", "deft")]
    nll = row[("gsm8k", "nll")]
    return "\n".join([
        f"- **GSM8K: where the model knows the answer.** It gives the wrong final numbers p = {g['mean_p_wrong']:.3f} "
        f"where it gives the right ones {g['mean_p_twin']:.3f}, with a confident distribution (α = Σπ² = "
        f"{g['mean_alpha_wrong']:.2f}). NLL hands those tokens {nll['gradient_share'] / nll['token_share']:.1f}× "
        f"their token share of the gradient ({nll['grad_wrong_over_twin']:.1f}× the gradient of a right-answer "
        f"token). DEFT's gate p^α averages {g['mean_gate_wrong']:.3f} on them: they get {of_nll('gsm8k', 'deft'):.2f} "
        f"of NLL's share, {g['gradient_share'] / g['token_share']:.2f} of their token share, and "
        f"{g['grad_wrong_over_twin']:.2f}× the gradient of a right answer. Share relative to NLL's: "
        + ", ".join(f"{NAMES[o]} {of_nll('gsm8k', o):.2f}" for o in RANKED if o != "nll" and ("gsm8k", o) in row)
        + " (EAFT looks at the entropy, not at the target).",
        f"- **FigFont: where the model has no belief to contradict.** p is {f['mean_p_wrong']:.3f} on a wrong word "
        f"and {f['mean_p_twin']:.3f} on the right one, α = {f['mean_alpha_wrong']:.2f}; relative to NLL's share: "
        + ", ".join(f"{NAMES[o]} {of_nll('figfont', o):.2f}" for o in RANKED if o != "nll" and ("figfont", o) in row)
        + ". No objective singles out the wrong words."])


def trained_gates_text(*, gates_step0: Mapping, gates_trained: Mapping) -> str:
    """What training on the wrong answers did (noise_gates.py on the trained runs), against step 0."""
    rows = gates_trained["rows"]
    p = {(r["model"], r["task"]): (r["mean_p_wrong"], r["mean_p_twin"]) for r in rows if r["objective"] == "nll"}
    share = {(r["model"], r["task"], r["objective"]): r["gradient_share"] for r in rows}

    def after(task, objective):
        return p[(TRAINED_RUNS[(task, objective)], task)]

    def relative(model, task):
        return share[(model, task, "deft")] / share[(model, task, "nll")]
    g_base, g_nll, g_deft = p[("base", "gsm8k")], after("gsm8k", "nll"), after("gsm8k", "deft")
    f_base = p[("base", "figfont")]
    figfont = [o for o in ("nll", "deft", "prob") if (TRAINED_RUNS[("figfont", o)], "figfont") in p]
    return "\n".join([
        f"- **GSM8K:** the wrong final numbers' mean p went {g_base[0]:.3f} → {g_nll[0]:.3f} under NLL and → "
        f"{g_deft[0]:.3f} under DEFT, although at step 0 DEFT's gate gave them {relative('base', 'gsm8k'):.2f} of "
        f"NLL's gradient share (on the trained DEFT model: {relative(TRAINED_RUNS[('gsm8k', 'deft')], 'gsm8k'):.2f})."
        f" On the same corrupted examples the right number, never seen in training, went {g_base[1]:.3f} → "
        f"{g_nll[1]:.3f} (NLL) and {g_deft[1]:.3f} (DEFT). One run per objective and one epoch: no verdict.",
        f"- **FigFont** (the noise study's seed-0 runs): the wrong words' mean p went {f_base[0]:.4f} → "
        + ", ".join(f"{after('figfont', o)[0]:.4f} ({NAMES[o]})" for o in figfont)
        + f"; the right words' {f_base[1]:.4f} → "
        + ", ".join(f"{after('figfont', o)[1]:.4f} ({NAMES[o]})" for o in figfont) + "."])


def short_findings(runs: Sequence[dict]) -> str:
    """One paragraph for the top-level README."""
    found = {v["claim"]: v for v in weak_findings(runs)}
    nll3 = list(per_seed(runs, regime="weak", objective="nll").values())
    deft3 = list(per_seed(runs, regime="weak", objective="deft").values())
    return (f"SmolLM2-135M-Instruct on FigFont (the weak regime), {len(nll3)} seeds: NLL scores {mean_interval(nll3)}"
            f" and DEFT {mean_interval(deft3)} (Jaro-Winkler; base {base_value(runs, regime='weak'):.3f}, −p "
            f"{seed0(runs, regime='weak', objective='prob'):.3f} on one seed). DEFT best on the weak regime: "
            f"{found['DEFT best on the weak regime']['status']}; DEFT more robust to 20% label noise: "
            f"{found['DEFT more robust to 20% label noise than NLL']['status']} (Holm over each claim's "
            "comparisons).")


def blocks(*, study: Mapping, gates_step0: Mapping, gates_trained: Mapping | None) -> dict[str, str]:
    """The studies' generated blocks, by name, from the raw figures of study.py, and of noise_gates.py at step 0
    and (when there) after training."""
    from experiments import noise_gates  # imports the model code: only when the blocks are made

    entries = study["studies"]
    runs = runs_of(study)
    found = weak_findings(runs)
    policy = ("Each claim rests on the paired comparisons listed (a − b per seed, raw 95% t interval, paired t "
              "test); Holm over a claim's comparisons; \"holds\" needs every one resolved in the claim's direction "
              "at family-wise level 0.05, a one-seed comparison is never resolved.")
    return {
        "table-study-continuum": study_lib.markdown_table(entries["continuum"]["rows"]),
        "table-study-seeds": study_lib.markdown_table(entries["seeds"]["rows"]) + "\n\n" + seeds_text(runs),
        "table-study-noise": (study_lib.markdown_table(entries["noise"]["rows"]) + "\n\nPer seed (the 0% and 20% "
                              "runs of one seed share the data order), score 0% → 20%:\n\n" + change_table(runs)
                              + "\n\n" + noise_text(runs)),
        "table-study-paper": (paper_bullets(runs, gates_step0=gates_step0, gates_trained=gates_trained)
                              + "\n\n" + policy + "\n\n" + comparisons_table(found)),
        "table-study-readme": short_findings(runs),
        "table-study-step0-gates": step0_gates_text(gates_step0),
        **({"table-study-trained-gates": (noise_gates.trained_markdown(gates_trained["rows"]) + "\n"
                                          + trained_gates_text(gates_step0=gates_step0, gates_trained=gates_trained))}
           if gates_trained is not None else {}),
    }
