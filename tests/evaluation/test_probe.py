"""The prior probe: token statistics vs a numpy reference, its mean p and entropy vs evaluation's
teacher-forced metrics on the same data, the regime thresholds, and its reports."""
import json

import jax.numpy as jnp
import numpy as np
import pytest

from deft_jax.training import setup as build
from deft_jax.evaluation import probe


def test_token_statistics_match_numpy():
    logits = np.random.default_rng(0).normal(size=(2, 3, 11)).astype(np.float32) * 3
    targets = np.array([[0, 5, 10], [3, 3, 7]])
    got = {k: np.asarray(v) for k, v in probe.token_statistics(jnp.asarray(logits), jnp.asarray(targets)).items()}
    pi = np.exp(logits - logits.max(-1, keepdims=True))
    pi /= pi.sum(-1, keepdims=True)
    np.testing.assert_allclose(got["p"], np.take_along_axis(pi, targets[..., None], -1)[..., 0], rtol=1e-5)
    np.testing.assert_allclose(got["alpha"], (pi ** 2).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(got["entropy"], -(pi * np.log(pi)).sum(-1), rtol=1e-5)


def test_regimes_and_thresholds():
    assert probe.STRONG_THRESHOLD == pytest.approx(0.785) and probe.WEAK_THRESHOLD == pytest.approx(0.365)
    assert [probe.regime(p) for p in (0.84, 0.785, 0.73, 0.365, 0.36, 0.007)] == [
        "strong", "strong", "intermediate", "intermediate", "weak", "weak"]


def test_probe_agrees_with_evaluation_and_writes_reports(tmp_path):
    from configs import nll
    from deft_jax import data as data_lib
    from deft_jax.evaluation import evaluator as evaluate

    config = nll.get_config("smoke")
    summary = probe.probe_config(config, num=6, out_dir=tmp_path)
    setup = build.setup(config, mesh_fallback=True)
    examples = data_lib.load_examples(config.data, split="train")[:6]
    tokenized, _ = data_lib.tokenize_examples(list(examples), tokenizer=setup.tokenizer, cfg=config.data)
    reference = evaluate.teacher_forced_metrics(setup, setup.initial_params(), tokenized)
    assert summary["p"]["mean"] == pytest.approx(reference["mean_p"], rel=1e-4)
    assert summary["entropy"]["mean"] == pytest.approx(reference["mean_entropy"], rel=1e-4)
    assert summary["tokens"] == reference["supervised_tokens"]
    assert summary["regime"] == probe.regime(summary["p"]["mean"])
    written = json.loads((tmp_path / "probe.json").read_text())
    advice = probe.recommend(summary["p"]["mean"])
    assert written["recommended_objective"] == advice["objective"]
    assert written["recommendation"]["accuracy"]["reason"] == advice["reason"]
    assert written["paper"] == probe.PAPER_CLAIMS[summary["regime"]]
    assert "Regime:" in (tmp_path / "probe.md").read_text()
    assert (tmp_path / "probe_scatter.png").read_bytes()[:4] == b"\x89PNG"


def synthetic_evidence():
    """Weak level (p 0.2): NLL resolved ahead of all; mid (p 0.5): NLL and EAFT not separated; strong
    (p 0.9): −p resolved ahead of all."""
    def cell(scores, best, ahead):
        return {"objectives": {k: [v, 0.01, 5] for k, v in scores.items()}, "best": best, "ahead_of": ahead,
                "not_separated": [best] + [k for k in scores if k != best and k not in ahead]}

    three = ("nll", "eaft", "prob")
    return {"source": "synthetic", "levels": [
        {"level": 0, "base_mean_p": 0.2, "metrics": {"accuracy": cell(dict(zip(three, (0.6, 0.4, 0.1))), "nll",
                                                                      ["eaft", "prob"])}},
        {"level": 1, "base_mean_p": 0.5, "metrics": {"accuracy": cell(dict(zip(three, (0.7, 0.69, 0.3))), "nll",
                                                                      ["prob"])}},
        {"level": 2, "base_mean_p": 0.9, "metrics": {"accuracy": cell(dict(zip(three, (0.8, 0.7, 0.95))), "prob",
                                                                      ["nll", "eaft"])}}]}


def test_recommendation_follows_the_evidence_and_changes_with_the_prior():
    evidence = synthetic_evidence()
    got = {p: probe.recommend(p, evidence=evidence) for p in (0.05, 0.2, 0.35, 0.5, 0.7, 0.9, 0.99)}
    assert [got[p]["objective"] for p in got] == ["nll", "nll", None, None, None, "prob", "prob"]
    assert got[0.05]["outside_range"] and got[0.05]["levels"] == [0]
    assert got[0.35]["levels"] == [0, 1] and got[0.35]["not_separated"] == ["eaft", "nll"]
    assert got[0.35]["behind"] == ["prob"]  # behind the best at both bracketing levels
    assert got[0.7]["levels"] == [1, 2] and "does not separate" in got[0.7]["reason"]
    assert got[0.9]["levels"] == [2] and not got[0.9]["outside_range"]
    # The committed evidence: the rule runs on it and names levels that bracket the prior.
    real = probe.recommend(0.3)
    assert all(level in (1, 2) for level in real["levels"])
    with pytest.raises(ValueError, match="no levels"):
        probe.recommend(0.3, evidence={"levels": []})
