"""experiments/study_verdicts.py: the SmolLM2 studies' verdicts and quoted numbers on hand-made runs with known
answers (t(0.975, 2) = 4.303 for three seeds)."""
import math

import pytest

from experiments import study_verdicts as sv

T2 = 4.302652729911275  # t(0.975, 2)
D = sv.DEFORMED


def run(regime, objective, *, score, seed=0, noise=0.0, nll=4.0, mean_p=0.2, token_accuracy=0.3):
    return {"name": f"{regime}-{objective}-noise{noise:g}-seed{seed}", "regime": regime, "objective": objective,
            "noise": noise, "seed": seed, "score": score, "nll": nll, "mean_p": mean_p,
            "token_accuracy": token_accuracy, "supervised_tokens": 100,
            "steps": {"mean_alpha": [0.1, 0.2, 0.4, 0.6], "mean_p": [0.1, 0.2, 0.3, 0.4]}, "training_seconds": 200.0}


def base(regime, score, *, mean_p=0.1):
    return {"name": f"base-{regime}", "regime": regime, "objective": "base", "noise": 0.0, "seed": None,
            "score": score, "nll": 9.0, "mean_p": mean_p, "token_accuracy": 0.1, "supervised_tokens": 104}


def hand_made(*, nll_weak=(0.50, 0.51, 0.52), deft_weak=(0.40, 0.415, 0.41), nll_noisy=(0.40, 0.42, 0.41),
              deft_noisy=(0.39, 0.415, 0.40)):
    runs = [base("weak", 0.40), base("intermediate", 0.01), base("strong", 0.0, mean_p=0.66)]
    for seed, (n, d, nn, dn) in enumerate(zip(nll_weak, deft_weak, nll_noisy, deft_noisy)):
        runs += [run("weak", "nll", score=n, seed=seed, mean_p=0.25 + 0.125 * seed),
                 run("weak", "deft", score=d, seed=seed, mean_p=0.375 + 0.125 * seed),
                 run("weak", "nll", score=nn, seed=seed, noise=0.2), run("weak", "deft", score=dn, seed=seed, noise=0.2)]
    runs += [run("weak", "prob", score=0.15), run("weak", "dft", score=0.15), run("weak", "prob", score=0.07, noise=0.2),
             run("weak", "eaft", score=0.37), run("weak", "cayley", score=0.60), run("weak", D, score=0.36)]
    for regime in ("intermediate", "strong"):
        runs += [run(regime, o, score=0.1 + 0.01 * i, mean_p=0.5 + 0.01 * i)
                 for i, o in enumerate(("nll", "prob", "eaft", "cayley", "deft", D))]
    return runs


def findings(runs):
    return {v["claim"]: v for v in sv.weak_findings(runs)}


def test_a_paired_comparison_against_the_base_model_has_the_hand_computed_interval():
    c = sv.against(hand_made(), a="nll", b="base")
    assert c.values == pytest.approx((0.10, 0.11, 0.12))
    assert c.raw.mean == pytest.approx(0.11)
    assert c.raw.half == pytest.approx(T2 * 0.01 / math.sqrt(3))  # sd of (0.10, 0.11, 0.12) = 0.01
    assert sv.verdicts.signed(sv.stats.adjust([c])[0]).startswith("+0.110 ± 0.025 (Holm p ")


def test_nll_above_base_holds_when_resolved_and_is_unresolved_when_the_seeds_disagree():
    assert findings(hand_made())["NLL ≥ the base model"]["status"] == "holds"
    spread = hand_made(nll_weak=(0.30, 0.55, 0.50))  # differences −0.10, +0.15, +0.10: not resolved
    assert findings(spread)["NLL ≥ the base model"]["status"] == "unresolved"
    below = hand_made(nll_weak=(0.30, 0.31, 0.32))
    assert findings(below)["NLL ≥ the base model"]["status"] == "fails"


def test_a_one_seed_comparison_is_never_resolved():
    v = findings(hand_made())["−p falls below the base model"]
    (c,) = v["family"]
    assert c.raw.n == 1 and math.isnan(c.raw.half) and v["status"] == "unresolved"
    assert sv.verdicts.signed(c) == "-0.250 (1 seed)"


def test_deft_best_fails_when_nll_is_resolved_ahead_and_the_rest_are_one_seed():
    v = findings(hand_made())["DEFT best on the weak regime"]
    names = [c.b for c in v["family"]]
    assert names == ["nll", "prob", "eaft", "cayley", D]  # DFT is not a rival (−p's model)
    assert v["family"][0].resolved == -1 and all(c.resolved == 0 for c in v["family"][1:])
    assert v["status"] == "fails"
    # Holm over the five: the one testable comparison's p is multiplied by 5 (the others count as p = 1)
    assert v["family"][0].p_holm == pytest.approx(min(1.0, 5 * v["family"][0].p))


def test_identical_columns_tie_and_a_constant_gap_resolves():
    tie = hand_made(deft_weak=(0.50, 0.51, 0.52))
    (c,) = findings(tie)["DEFT's mean p above NLL's"]["family"]
    score = sv.against(tie, a="deft", b="nll")
    assert score.values == (0.0, 0.0, 0.0) and score.p == 1.0 and score.raw.half == 0.0
    # mean p: DEFT is 0.125 above NLL on every seed (exact in binary): a constant non-zero difference, p = 0
    assert c.values == (0.125, 0.125, 0.125) and c.p == 0.0 and c.resolved == 1


def test_robustness_is_the_difference_of_the_noise_effects():
    runs = hand_made()
    c = sv.robustness(runs)
    # NLL's changes: −0.10, −0.09, −0.11; DEFT's: −0.01, 0.00, −0.01
    assert c.values == pytest.approx((0.09, 0.09, 0.10))
    # resolved for (the noise effect, Holm p 2 × 0.0013) and against (DEFT below NLL at 20%: −0.008, p ≈ 0.04)
    assert findings(runs)["DEFT more robust to 20% label noise than NLL"]["status"] == "mixed"
    table = sv.change_table(runs)
    assert "| NLL | 0.500 → 0.400 | 0.510 → 0.420 | 0.520 → 0.410 | -0.100 ± 0.010 |" in table
    assert "| −p | 0.150 → 0.070 |  |  | -0.080 |" in table


def test_blocks_quote_the_numbers_they_rest_on():
    runs = hand_made()
    study = {"studies": {name: {"rows": [], "runs": runs, "title": name} for name in ("continuum", "seeds", "noise")}}
    gates = {"rows": [{"task": "gsm8k", "objective": "nll", "gradient_share": 0.008},
                      {"task": "gsm8k", "objective": "deft", "gradient_share": 0.002}]}
    text = sv.paper_bullets(runs, gates_step0=gates, gates_trained=None)
    assert "0.25 of NLL's gradient share" in text
    assert "DEFT best on the weak regime (score): fails" in text
    assert "trained the identical model" in text
    assert "Cayley 0.600, NLL 0.500" in text  # seed 0 ordered by score 


def gate_row(task, objective, *, model=None, share, p_wrong=0.02, p_twin=0.8):
    row = {"task": task, "objective": objective, "gradient_share": share, "token_share": 0.004, "tokens": 1000,
           "wrong_tokens": 4, "mean_p_wrong": p_wrong, "mean_p_twin": p_twin, "mean_alpha_wrong": 0.7,
           "mean_gate_wrong": 0.1, "grad_wrong_over_twin": 2.0}
    return row if model is None else {"model": model, **row}


def test_step0_gate_text_gives_each_share_relative_to_nlls():
    rows = [gate_row(task, o, share=s) for task in ("gsm8k", "figfont")
            for o, s in (("nll", 0.008), ("prob", 0.0004), ("deft", 0.002))]
    text = sv.step0_gates_text({"rows": rows})
    assert "NLL hands those tokens 2.0× their token share" in text  # 0.008 / 0.004
    assert "they get 0.25 of NLL's share, 0.50 of their token share" in text  # 0.002 / 0.008, 0.002 / 0.004
    assert "−p 0.05, DEFT 0.25" in text


def test_trained_gate_text_compares_each_run_with_the_base_model():
    runs = sv.TRAINED_RUNS
    rows = [gate_row("gsm8k", "nll", model="base", share=0.008, p_wrong=0.016, p_twin=0.76),
            gate_row("gsm8k", "deft", model="base", share=0.0016, p_wrong=0.016, p_twin=0.76),
            gate_row("gsm8k", "nll", model=runs[("gsm8k", "nll")], share=0.01, p_wrong=0.041, p_twin=0.913),
            gate_row("gsm8k", "deft", model=runs[("gsm8k", "nll")], share=0.004, p_wrong=0.041, p_twin=0.913),
            gate_row("gsm8k", "nll", model=runs[("gsm8k", "deft")], share=0.01, p_wrong=0.042, p_twin=0.974),
            gate_row("gsm8k", "deft", model=runs[("gsm8k", "deft")], share=0.003, p_wrong=0.042, p_twin=0.974),
            gate_row("figfont", "nll", model="base", share=0.1, p_wrong=0.0044, p_twin=0.0107),
            gate_row("figfont", "nll", model=runs[("figfont", "nll")], share=0.1, p_wrong=0.025, p_twin=0.0128)]
    text = sv.trained_gates_text(gates_step0={"rows": []}, gates_trained={"rows": rows})
    assert "went 0.016 → 0.041 under NLL and → 0.042 under DEFT" in text
    assert "0.20 of NLL's gradient share (on the trained DEFT model: 0.30)" in text
    assert "went 0.760 → 0.913 (NLL) and 0.974 (DEFT)" in text
    assert "0.0044 → 0.0250 (NLL); the right words' 0.0107 → 0.0128 (NLL)" in text  # only the runs measured
