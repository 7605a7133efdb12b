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
    assert json.loads((tmp_path / "probe.json").read_text())["recommended_objective"] == "deft"
    assert "Regime:" in (tmp_path / "probe.md").read_text()
    assert (tmp_path / "probe_scatter.png").read_bytes()[:4] == b"\x89PNG"
