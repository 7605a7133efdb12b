"""The probe's measured ambiguity: near-top token counts against a NumPy reference."""
import numpy as np

from deft_jax.evaluation import probe


def test_near_top_counts_tokens_within_the_ratio_of_the_top_one():
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(3, 7, 11)) * 2).astype(np.float32)
    targets = rng.integers(0, 11, size=(3, 7))
    found = {k: np.asarray(v) for k, v in probe.token_statistics(logits, targets).items()}
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    expected = (probs >= probe.NEAR_TOP_RATIO * probs.max(-1, keepdims=True)).sum(-1)
    np.testing.assert_array_equal(found["near_top"], expected)
    np.testing.assert_allclose(found["p"], np.take_along_axis(probs, targets[..., None], -1)[..., 0], rtol=1e-5)
    # Two equally likely tokens are both near the top; a token at a fifth of the top one is not.
    two = np.log(np.array([[0.45, 0.45, 0.1]], np.float32))
    fifth = np.log(np.array([[0.8, 0.16, 0.04]], np.float32))
    assert np.asarray(probe.token_statistics(two, np.array([0]))["near_top"]).tolist() == [2.0]
    assert np.asarray(probe.token_statistics(fifth, np.array([0]))["near_top"]).tolist() == [1.0]


def test_ambiguity_is_the_fraction_of_tokens_with_several_near_top_tokens():
    assert probe.ambiguity(np.array([1, 2, 1, 3])) == 0.5
    assert probe.ambiguity(np.array([1, 1])) == 0.0
    assert np.isnan(probe.ambiguity(np.array([])))
