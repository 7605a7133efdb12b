"""Aggregation of per-sample scores into benchmark figures (pure Python, no JAX).

With n samples per problem and scores s[i][j] in [0, 1] (problem i, sample j):

    acc       = mean_i s[i][0]                      (sample 0 only, as the reference prints it)
    mean_acc  = mean_i mean_j s[i][j]               (avg@n)
    pass@k    = mean_i (1 - C(n - c_i, k) / C(n, k))  with c_i = #{j : s[i][j] = 1}
                (the unbiased estimator of the probability that at least one of k samples is correct)

Grouped figures (the medical suite): the mean within each group (source), then the unweighted mean over
the groups.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def pass_at_k(*, n: int, correct: int, k: int) -> float:
    """1 - C(n - c, k) / C(n, k), computed exactly with integers and divided once."""
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n, got k={k}, n={n}")
    if not 0 <= correct <= n:
        raise ValueError(f"correct={correct} must lie in [0, n={n}]")
    return 1.0 - math.comb(n - correct, k) / math.comb(n, k)


def default_ks(n: int) -> list[int]:
    """The k reported for n samples: powers of two below n, and n itself (n = 16: 1, 2, 4, 8, 16)."""
    ks = [1 << i for i in range(n.bit_length()) if (1 << i) < n]
    return ks + [n]


def sample_metrics(scores: Sequence[Sequence[float]], *, ks: Sequence[int] | None = None) -> dict[str, float]:
    """acc, mean_acc and pass@k (see the module docstring) of scores[problem][sample]; every problem
    needs the same number of samples n >= 1. pass@k counts a sample as correct when its score is 1."""
    if not scores:
        raise ValueError("no problems to aggregate")
    n = len(scores[0])
    if n < 1 or any(len(row) != n for row in scores):
        raise ValueError(f"every problem needs the same number (>= 1) of samples; got {sorted({len(r) for r in scores})}")
    ks = default_ks(n) if ks is None else list(ks)
    problems = len(scores)
    figures = {"acc": math.fsum(row[0] for row in scores) / problems,
               "mean_acc": math.fsum(math.fsum(row) / n for row in scores) / problems}
    for k in ks:
        figures[f"pass@{k}"] = math.fsum(pass_at_k(n=n, correct=sum(1 for s in row if s == 1.0), k=k)
                                         for row in scores) / problems
    return figures


def mean_over_groups(values: Sequence[float], *, groups: Sequence[str]) -> tuple[float, dict[str, float]]:
    """(unweighted mean over groups of the per-group means, {group: mean}) — groups in sorted order."""
    if len(values) != len(groups):
        raise ValueError(f"{len(values)} values for {len(groups)} group labels")
    if not values:
        raise ValueError("no values to aggregate")
    members: dict[str, list[float]] = {}
    for value, group in zip(values, groups):
        members.setdefault(str(group), []).append(value)
    per_group = {group: math.fsum(members[group]) / len(members[group]) for group in sorted(members)}
    return math.fsum(per_group.values()) / len(per_group), per_group


def mean_of(figures: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The mean of each figure present in every mapping (the suite mean over benchmarks)."""
    if not figures:
        return {}
    shared = [key for key in figures[0] if all(key in f for f in figures[1:])]
    return {key: math.fsum(f[key] for f in figures) / len(figures) for key in shared}
