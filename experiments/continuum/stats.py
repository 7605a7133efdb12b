"""The statistics behind every ± and every verdict of the continuum study.

    interval(x)          mean ± t(1 − a/2, n − 1) · sd / √n          (sd with ddof 1; a = 0.05: 95%)
    paired t test        t = mean(d) / (sd(d) / √n), two-sided p from Student's t, n − 1 degrees of freedom,
                         d = the per-seed differences (same pretrained model, data, order and wrong labels)
    Holm (1979)          over the m comparisons of one family, sorted by p: p_(1) ≤ … ≤ p_(m);
                         adjusted p_(i) = max_{j ≤ i} min(1, (m − j + 1) · p_(j))
    resolved             adjusted p < a: the family-wise error rate of the family is at most a
    adjusted interval    the t interval at level a / (m − i + 1), the level Holm tests comparison i at

Degenerate cases: n = 0 gives NaN everywhere; n = 1 has no interval (half-width NaN) and p = NaN, which
Holm counts as 1 (never resolved, still one of the m); identical differences on every seed have sd 0:
p = 1 (half-width 0) when they are all zero (a tie), p = 0 when they are all the same non-zero value.

A verdict on a claim rests on a family of comparisons, each with the sign the claim expects:
    holds       every comparison resolved in the expected direction
    fails       none resolved in the expected direction and at least one resolved against it
    mixed       some resolved each way
    unresolved  none resolved against, not every one resolved for (or no comparison at all)
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats as scipy_stats

LEVEL = 0.05
STATUSES = ("holds", "fails", "mixed", "unresolved")


@dataclasses.dataclass(frozen=True)
class Interval:
    """mean ± half (the t interval at confidence 1 − level) over n values."""

    mean: float
    half: float
    n: int

    def as_tuple(self) -> tuple[float, float, int]:
        return self.mean, self.half, self.n


def t_quantile(*, n: int, level: float = LEVEL) -> float:
    """t(1 − level/2, n − 1)."""
    return float(scipy_stats.t.ppf(1 - level / 2, n - 1))


def interval(values: Sequence[float], *, level: float = LEVEL) -> Interval:
    """The t interval of the mean of `values` at confidence 1 − level (half-width NaN for n < 2)."""
    values = np.asarray(values, dtype=float)
    n = int(values.size)
    if n == 0:
        return Interval(float("nan"), float("nan"), 0)
    if n == 1:
        return Interval(float(values[0]), float("nan"), 1)
    half = t_quantile(n=n, level=level) * float(values.std(ddof=1)) / math.sqrt(n)
    return Interval(float(values.mean()), half, n)


def differences(mine: Mapping[int, float], theirs: Mapping[int, float]) -> list[float]:
    """mine[s] − theirs[s] over the seeds s both have, in seed order."""
    return [float(mine[s]) - float(theirs[s]) for s in sorted(set(mine) & set(theirs))]


def paired_difference(mine: Mapping[int, float], theirs: Mapping[int, float], *,
                      level: float = LEVEL) -> Interval:
    """The t interval of mine − theirs over the seeds both have."""
    return interval(differences(mine, theirs), level=level)


def paired_p(values: Sequence[float]) -> float:
    """Two-sided p of the one-sample t test of mean(values) = 0 (the degenerate cases of the module
    docstring: NaN for n < 2; 1 for all-zero, 0 for a constant non-zero difference)."""
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return float("nan")
    if np.all(values == values[0]):
        return 1.0 if values[0] == 0 else 0.0
    return float(scipy_stats.ttest_1samp(values, 0.0).pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order (NaN counted as 1)."""
    p = np.array([1.0 if math.isnan(v) else float(v) for v in p_values])
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()


def holm_levels(p_values: Sequence[float], *, level: float = LEVEL) -> list[float]:
    """The level a / (m − i + 1) at which Holm tests each comparison (i its rank by p), in input order."""
    p = np.array([1.0 if math.isnan(v) else float(v) for v in p_values])
    m = p.size
    levels = np.empty(m)
    for rank, index in enumerate(np.argsort(p, kind="stable")):
        levels[index] = level / (m - rank)
    return levels.tolist()


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One paired comparison a verdict rests on: `a` − `b` (+ margin) in `metric` at (level, noise), the
    sign the claim expects, its raw interval and p, and (after `adjust`) Holm's p and interval."""

    a: str
    b: str
    metric: str
    level: int
    noise: float
    expect: int
    values: tuple[float, ...]
    margin: float = 0.0
    p_holm: float = float("nan")
    adjusted_half: float = float("nan")

    @property
    def raw(self) -> Interval:
        return interval(self.values)

    @property
    def p(self) -> float:
        return paired_p(self.values)

    @property
    def resolved(self) -> int:
        """+1 / −1: resolved (Holm) with the difference above / below zero; 0: not resolved."""
        if math.isnan(self.p_holm) or self.p_holm >= LEVEL:
            return 0
        return 1 if self.raw.mean > 0 else -1

    def to_json(self) -> dict:
        raw = self.raw
        return {"a": self.a, "b": self.b, "metric": self.metric, "level": self.level, "noise": self.noise,
                "margin": self.margin, "expect": self.expect, "n": raw.n,
                "difference": raw.mean - self.margin, "tested": raw.mean, "half": raw.half, "p": self.p,
                "p_holm": self.p_holm, "adjusted_half": self.adjusted_half, "resolved": self.resolved}


def comparison(*, a: str, b: str, metric: str, level: int, noise: float, mine: Mapping[int, float],
               theirs: Mapping[int, float], expect: int = 1, margin: float = 0.0) -> Comparison:
    """`a` − `b` + margin per seed (margin > 0: a non-inferiority test, a − b > −margin)."""
    return Comparison(a=a, b=b, metric=metric, level=level, noise=noise, expect=expect, margin=margin,
                      values=tuple(d + margin for d in differences(mine, theirs)))


def adjust(family: Sequence[Comparison], *, level: float = LEVEL) -> list[Comparison]:
    """The family with Holm's adjusted p and the interval at each comparison's Holm level."""
    p_values = [c.p for c in family]
    adjusted = holm(p_values)
    levels = holm_levels(p_values, level=level)
    return [dataclasses.replace(c, p_holm=q, adjusted_half=interval(c.values, level=lv).half)
            for c, q, lv in zip(family, adjusted, levels)]


def verdict(family: Sequence[Comparison]) -> str:
    """'holds' / 'fails' / 'mixed' / 'unresolved' (module docstring) of an adjusted family."""
    signs = [c.resolved * c.expect for c in family]
    supported, against = sum(s > 0 for s in signs), sum(s < 0 for s in signs)
    if family and supported == len(family):
        return "holds"
    if against and supported:
        return "mixed"
    if against:
        return "fails"
    return "unresolved"
