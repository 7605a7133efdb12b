"""The continuum's statistics on hand-made 5-seed data with answers worked out by hand: the t interval
(t(0.975, 4) = 2.776, the textbook value), the paired t test (the closed-form t CDF for 4 degrees of
freedom), Holm's adjustment (a worked example) and the verdict rule, including ties, n = 1 and
identical columns."""
import math

import pytest

from experiments.continuum import stats

T_975_4 = 2.776  # Student's t, 0.975 quantile, 4 degrees of freedom (printed tables)


def two_sided_p_df4(t: float) -> float:
    """2·(1 − F(|t|)) with F the closed-form CDF of Student's t with 4 degrees of freedom."""
    t = abs(t)
    s = t / math.sqrt(1 + t * t / 4)
    return 2 * (1 - (0.5 + 3 / 8 * s * (1 - t * t / (12 * (1 + t * t / 4)))))


def test_interval_on_five_seeds_matches_the_textbook_t_value():
    got = stats.interval([1, 2, 3, 4, 5])
    sd = math.sqrt(sum((v - 3) ** 2 for v in (1, 2, 3, 4, 5)) / 4)  # 1.5811
    assert got.n == 5 and got.mean == 3
    assert got.half == pytest.approx(T_975_4 * sd / math.sqrt(5), rel=2e-4)  # 1.963
    assert stats.t_quantile(n=5) == pytest.approx(T_975_4, abs=5e-4)


def test_interval_degenerate_cases():
    one = stats.interval([0.7])
    assert one.n == 1 and one.mean == 0.7 and math.isnan(one.half)
    empty = stats.interval([])
    assert empty.n == 0 and math.isnan(empty.mean) and math.isnan(empty.half)
    tie = stats.interval([0.25] * 5)
    assert tie.mean == 0.25 and tie.half == 0.0


def test_paired_difference_uses_the_common_seeds_only():
    mine = {0: 0.5, 1: 0.6, 2: 0.7, 3: 0.8, 4: 0.9, 7: 5.0}
    theirs = {0: 0.4, 1: 0.4, 2: 0.4, 3: 0.4, 4: 0.4, 9: -5.0}
    got = stats.paired_difference(mine, theirs)  # differences 0.1, 0.2, 0.3, 0.4, 0.5
    assert got.n == 5 and got.mean == pytest.approx(0.3)
    assert got.half == pytest.approx(T_975_4 * math.sqrt(0.025) / math.sqrt(5), rel=2e-4)
    # Identical columns: every difference zero, a tie with a zero-width interval and p = 1.
    same = stats.paired_difference(mine, mine)
    assert (same.mean, same.half, same.n) == (0.0, 0.0, 6)
    assert stats.paired_p(stats.differences(mine, mine)) == 1.0
    # One common seed: no interval.
    one = stats.paired_difference({0: 1.0, 1: 2.0}, {1: 1.5})
    assert one.n == 1 and one.mean == 0.5 and math.isnan(one.half)


def test_paired_p_matches_the_closed_form_t_distribution():
    values = [0.1, 0.2, 0.3, 0.4, 0.5]
    t = 0.3 / (math.sqrt(0.025) / math.sqrt(5))  # 4.243
    assert stats.paired_p(values) == pytest.approx(two_sided_p_df4(t), rel=1e-9)  # 0.0132
    assert stats.paired_p([-v for v in values]) == pytest.approx(two_sided_p_df4(t), rel=1e-9)
    assert stats.paired_p([0.05, -0.05, 0.1, -0.1, 0.0]) == pytest.approx(1.0)
    assert stats.paired_p([0.02] * 5) == 0.0  # the same non-zero difference on every seed
    assert math.isnan(stats.paired_p([0.3]))


def test_holm_worked_example():
    # sorted 0.005 (×4 = 0.02), 0.01 (×3 = 0.03), 0.03 (×2 = 0.06), 0.04 (×1 = 0.04 → 0.06, monotone)
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm_levels([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.05 / 3, 0.05, 0.025, 0.0125])
    assert stats.holm([0.5, float("nan")]) == pytest.approx([1.0, 1.0])  # NaN counts as 1, m stays 2
    assert stats.holm([0.3]) == [0.3]


def make(values, *, a="x", b="y", level=0, expect=1):
    return stats.Comparison(a=a, b=b, metric="m", level=level, noise=0.0, expect=expect, values=tuple(values))


def test_holm_can_unresolve_what_the_raw_interval_resolves():
    clear = make([0.1, 0.2, 0.3, 0.4, 0.5])  # p = 0.0132
    border = make([0.01, 0.08, 0.02, 0.06, 0.03])  # p ≈ 0.025, raw interval excludes zero
    noise = make([0.05, -0.05, 0.1, -0.1, 0.0])  # p = 1
    assert border.raw.mean - border.raw.half > 0
    adjusted = stats.adjust([clear, border, noise])
    assert adjusted[0].p_holm == pytest.approx(3 * two_sided_p_df4(4.2426), rel=1e-3)  # 0.0397 < 0.05
    assert adjusted[1].p_holm == pytest.approx(2 * border.p) and adjusted[1].p_holm > 0.05
    assert [c.resolved for c in adjusted] == [1, 0, 0]
    # The adjusted interval is the t interval at the comparison's Holm level (0.05/3 for the smallest p).
    assert adjusted[0].adjusted_half == pytest.approx(stats.interval(clear.values, level=0.05 / 3).half)
    assert adjusted[0].adjusted_half > clear.raw.half


def test_verdict_rules():
    up, down, tie = [0.1, 0.2, 0.3, 0.4, 0.5], [-0.5, -0.4, -0.3, -0.2, -0.1], [0.0] * 5
    assert stats.verdict(stats.adjust([make(up), make(up, level=1)])) == "holds"
    assert stats.verdict(stats.adjust([make(up), make(tie, level=1)])) == "unresolved"  # a tie is not support
    assert stats.verdict(stats.adjust([make(down), make(down, level=1)])) == "fails"
    assert stats.verdict(stats.adjust([make(down, expect=-1), make(down, level=1, expect=-1)])) == "holds"
    assert stats.verdict(stats.adjust([make(up), make(down, level=1)])) == "mixed"
    assert stats.verdict(stats.adjust([make([0.3])])) == "unresolved"  # n = 1 never resolves
    assert stats.verdict([]) == "unresolved"
    # A non-inferiority margin: a − b = −0.02 on every seed is within 0.05, not within 0.01.
    mine, theirs = {s: 0.5 for s in range(5)}, {s: 0.52 + 0.001 * s for s in range(5)}
    within = stats.comparison(a="x", b="y", metric="m", level=0, noise=0.0, mine=mine, theirs=theirs, margin=0.05)
    outside = stats.comparison(a="x", b="y", metric="m", level=0, noise=0.0, mine=mine, theirs=theirs, margin=0.01)
    assert stats.verdict(stats.adjust([within])) == "holds"
    assert stats.verdict(stats.adjust([outside])) == "fails"
    assert within.to_json()["difference"] == pytest.approx(-0.022)
