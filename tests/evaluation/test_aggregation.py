"""n-sample aggregation: acc vs mean_acc vs pass@k on hand-checked cases; grouped means."""
import itertools
import math

import pytest

from deft_jax.evaluation import aggregation


def test_sample_metrics_hand_checked():
    # 3 problems, n = 4 samples each.
    scores = [
        [1, 0, 0, 1],  # c = 2
        [0, 1, 1, 1],  # c = 3, sample 0 wrong
        [0, 0, 0, 0],  # c = 0
    ]
    figures = aggregation.sample_metrics(scores)
    assert figures["acc"] == pytest.approx(1 / 3)           # only problem 0's sample 0 is right
    assert figures["mean_acc"] == pytest.approx((2 / 4 + 3 / 4 + 0) / 3)  # = 5/12
    # pass@1 = mean of c/n = mean_acc; pass@2 by hand: 1 - C(n-c,2)/C(4,2) = 1 - 1/6, 1 - 0/6, 0.
    assert figures["pass@1"] == pytest.approx(5 / 12)
    assert figures["pass@2"] == pytest.approx((5 / 6 + 1 + 0) / 3)
    # pass@4 = 1 when any sample is right.
    assert figures["pass@4"] == pytest.approx(2 / 3)
    assert set(figures) == {"acc", "mean_acc", "pass@1", "pass@2", "pass@4"}


def test_pass_at_k_equals_enumeration_over_k_subsets():
    """pass@k is the fraction of k-subsets of the n samples that contain a correct one."""
    samples = [1, 0, 0, 1, 0, 1, 0]
    n = len(samples)
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(samples, k))
        expected = sum(any(s) for s in subsets) / len(subsets)
        assert aggregation.pass_at_k(n=n, correct=sum(samples), k=k) == pytest.approx(expected, abs=1e-15)


def test_default_ks_and_partial_scores():
    assert aggregation.default_ks(16) == [1, 2, 4, 8, 16]
    assert aggregation.default_ks(1) == [1]
    assert aggregation.default_ks(6) == [1, 2, 4, 6]
    # Jaro-Winkler-like partial scores count in the means but are not "correct" for pass@k.
    figures = aggregation.sample_metrics([[0.5, 1.0]])
    assert figures["acc"] == 0.5 and figures["mean_acc"] == 0.75 and figures["pass@1"] == 0.5


def test_bad_inputs():
    with pytest.raises(ValueError, match="same number"):
        aggregation.sample_metrics([[1, 0], [1]])
    with pytest.raises(ValueError, match="k <= n"):
        aggregation.pass_at_k(n=4, correct=1, k=5)
    with pytest.raises(ValueError, match="no problems"):
        aggregation.sample_metrics([])


def test_mean_over_groups_is_unweighted_over_sources():
    values = [1, 1, 1, 0, 0]
    groups = ["MedQA", "MedQA", "MedQA", "PubMedQA", "MMLU"]
    mean, per_group = aggregation.mean_over_groups(values, groups=groups)
    assert per_group == {"MMLU": 0.0, "MedQA": 1.0, "PubMedQA": 0.0}
    assert mean == pytest.approx(1 / 3)  # not 3/5, the per-example mean
    assert aggregation.mean_of([{"a": 1.0, "b": 2.0}, {"a": 0.0}]) == {"a": 0.5}
    assert math.isclose(aggregation.mean_of([{"acc": 0.25}, {"acc": 0.75}])["acc"], 0.5)
