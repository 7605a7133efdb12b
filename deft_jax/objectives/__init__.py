"""Token-level SFT objectives (NLL ... DEFT) as pure functions: statistics, objectives, gates, reductions.

Notation per target position: logits z ∈ R^V, π = softmax(z), target y, p = π_y, NLL = −log p,
H = −Σ π log π, collision probability C = Σ_v π_v² (= exp(−Rényi-2 entropy)).

Every objective here is "a stop-gradient gate times the NLL gradient":

    ∇_z loss = gate · (π − e_y),   gate = −∂loss/∂log p with the objective's coefficients held constant.

The computation has two stages so that a chunked / fused lm-head path can reuse the second one:

1. `token_stats(logits, targets, topk=None) -> TokenStats`: per-token float32 statistics (logsumexp,
   target logit, log p, logsumexp(2z), C, H and optionally the normalised top-k entropy).
2. `objective_from_stats(name, stats, mask, **params) -> ObjectiveOutput`: the objective's value, its
   gate and the diagnostics, from the statistics alone (plus batch-level reductions such as Cayley's
   mean p over the valid tokens of the call).

The registry (`OBJECTIVES`), loss per token and gate:

    nll                  −log p                                        1
    prob                 1 − p                                         p
    deformed_log (α)     (1 − p^α)/α   (α → 0: −log p)                 p^α
    tsallis (q)          (1 − p^(1−q))/(1 − q) = −ln_q p               p^(1−q)
    only_{top,bottom}_p  (1 − p)·1[p ≥ τ] / 1[p ≤ τ]                   p·1[·]
    only_{top,bottom}_logp  −log p·1[p ≥ τ] / 1[p ≤ τ]                 1[·]
    dft                  sg(p)·(−log p)                                p
    eaft (k, β)          sg(H̃)^β·(−log p), H̃ = top-k entropy / log k   H̃^β
    cayley               (1 − p^α*)/(α* + ε), α* = clamp(f + (1 − f)(1 − r)/(1 + r), 0.001, 1),
                         r = 1 − p, f = 0.5·mean p                      p^α*·α*/(α* + ε)
    deft (ε)             (1 − p^α)/(α + ε), α = sg(Σπ²)                 p^α·α/(α + ε)

`compute(name, logits, targets, mask, **params)` runs both. `reduce(...)` turns per-token losses into a
(sum, denominator) pair with a named normalisation. Objectives are chosen by name from `OBJECTIVES`;
the official PyTorch strings (luludus/DEFT `objective_trans`) are accepted as aliases with their exact
meaning, epsilons included (see `parse_objective`).

Batch coupling: `cayley` (its floor f = 0.5 · mean p over the valid tokens passed in ONE call) and the
threshold objectives under token-mean normalisation (their denominator counts kept tokens only) depend
on which tokens share a call: call once per micro-batch to reproduce the official numbers.

The package owns the objectives and nothing else (it imports nothing of the project):
    statistics   stage 1, TokenStats and token_stats, the input checks
    gates        the deformed-log value / gate (custom JVP), Cayley's α*, Coefficients
    registry     Param, the Objective rows (OBJECTIVES), aliases, parse_objective, required_topk
    compute      stage 2, ObjectiveOutput, objective_from_stats, compute
    reductions   reduce / reduce_output (normalisations), safe_divide, token_metrics
    fused        the chunked lm-head path (statistics without materialising the logits)
See docs/objectives.md for adding an objective.
"""

from __future__ import annotations

from deft_jax.objectives.compute import ObjectiveOutput, compute, detached_coefficients, objective_from_stats
from deft_jax.objectives.gates import Coefficients, cayley_alpha, deformed_value_and_gate
from deft_jax.objectives.reductions import NORMALIZATIONS, reduce, reduce_output, safe_divide, token_metrics
from deft_jax.objectives.registry import (ALIASES, NUMBERED_ALIASES, OBJECTIVES, Objective, ObjectiveSpec, Param,
                                          list_aliases, list_objectives, parse_objective, required_topk)
from deft_jax.objectives.statistics import TokenStats, check_topk, token_stats

__all__ = [
    "TokenStats",
    "Coefficients",
    "ObjectiveOutput",
    "Param",
    "Objective",
    "ObjectiveSpec",
    "OBJECTIVES",
    "ALIASES",
    "NUMBERED_ALIASES",
    "NORMALIZATIONS",
    "list_objectives",
    "list_aliases",
    "parse_objective",
    "required_topk",
    "token_stats",
    "check_topk",
    "detached_coefficients",
    "objective_from_stats",
    "compute",
    "reduce",
    "reduce_output",
    "safe_divide",
    "token_metrics",
    "deformed_value_and_gate",
    "cayley_alpha",
]
