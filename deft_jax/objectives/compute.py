"""Stage 2: the objective's value, gate and diagnostics from the statistics (ObjectiveOutput), and
`compute`, which runs both stages on logits."""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from deft_jax.objectives.gates import Coefficients, deformed_value_and_gate
from deft_jax.objectives.registry import ObjectiveSpec, parse_objective, required_topk
from deft_jax.objectives.statistics import (TokenStats, check_logits_targets, check_mask, float_mask, is_traced,
                                            token_stats)


@flax.struct.dataclass
class ObjectiveOutput:
    """Per-token outputs (targets' shape, float32; every field is 0 where mask is 0).

    loss   objective value × kept weight; differentiable: ∇_logits Σ loss = gate · (π − e_y)
    gate   stop-gradient per-token weight of the NLL gradient (includes the kept weight)
    nll    raw −log p (log it beside every objective), p = target probability
    kept   mask × threshold indicator (= mask for non-threshold objectives); the token-mean denominator
    alpha  the deformed-log exponent (nll 0, prob 1, deformed/tsallis, cayley α*, deft C); None for
           the scaled-NLL objectives (dft, eaft)
    entropy, collision, topk_entropy (None unless computed): the statistics, for metrics and plots
    """

    loss: jax.Array
    gate: jax.Array
    nll: jax.Array
    p: jax.Array
    kept: jax.Array
    entropy: jax.Array
    collision: jax.Array
    alpha: jax.Array | None = None
    topk_entropy: jax.Array | None = None


def _resolve(name_or_spec, params) -> ObjectiveSpec:
    if isinstance(name_or_spec, ObjectiveSpec) and not params:
        return parse_objective(name_or_spec)  # re-validates hand-built specs
    return parse_objective(name_or_spec, **params)


def _check_stats_for(spec: ObjectiveSpec, stats: TokenStats) -> None:
    needed_topk = required_topk(spec)
    if needed_topk is not None and (stats.topk_entropy is None or stats.topk != needed_topk):
        raise ValueError(f"objective {spec} needs the top-{needed_topk} entropy: compute the statistics "
                         f"with token_stats(..., topk={needed_topk}) (got topk={stats.topk})")


def detached_coefficients(name_or_spec, stats: TokenStats, mask, **params) -> Coefficients:
    """The objective's detached per-token coefficients (α or scale, kept) for these statistics."""
    return _coefficients_of(_resolve(name_or_spec, params), stats, mask)


def _coefficients_of(spec: ObjectiveSpec, stats: TokenStats, mask) -> Coefficients:
    _check_stats_for(spec, stats)
    dtype = stats.log_p.dtype
    mask = jnp.asarray(mask)
    check_mask(mask, shape=stats.log_p.shape)
    mask_f, valid = float_mask(mask, dtype=dtype)
    frozen = jax.lax.stop_gradient(stats)
    log_p = jnp.where(valid, frozen.log_p, 0.0)
    result = spec.objective.coefficients(stats=frozen, p=jnp.exp(log_p), valid=valid, mask=mask_f,
                                         params=spec.kwargs)
    return jax.lax.stop_gradient(result)


def objective_from_stats(name_or_spec, stats: TokenStats, mask, *, coefficients: Coefficients | None = None,
                         **params) -> ObjectiveOutput:
    """Objective value, gate and diagnostics from `TokenStats` and a mask (bool/int/float weights).

    Only `stats.log_p` carries gradient; every coefficient is stop-gradient, as in the official code.
    `coefficients` (optional) replaces the computed ones, e.g. to freeze them for finite differences.
    Masked tokens (mask == 0) get 0 in every field whatever their target (even out of range); an
    unmasked out-of-range target gives NaN (never a silent fallback).
    """
    return _objective_of(_resolve(name_or_spec, params), stats, mask, coefficients=coefficients)


def _objective_of(spec: ObjectiveSpec, stats: TokenStats, mask, *, coefficients: Coefficients | None
                  ) -> ObjectiveOutput:
    objective = spec.objective
    _check_stats_for(spec, stats)
    mask = jnp.asarray(mask)
    check_mask(mask, shape=stats.log_p.shape)
    dtype = stats.log_p.dtype
    mask_f, valid = float_mask(mask, dtype=dtype)
    if coefficients is None:
        coefficients = _coefficients_of(spec, stats, mask)
    coefficients = jax.lax.stop_gradient(coefficients)

    log_p = jnp.where(valid, stats.log_p, 0.0)
    if coefficients.scale is not None:  # s·(−log p) → 0 as s → 0, also at log p = −inf (DFT: s = p = 0)
        scale = coefficients.scale
        value, gate = jnp.where(scale == 0, 0.0, scale * (-log_p)), scale
    else:
        epsilon = spec.kwargs[objective.epsilon_param] if objective.epsilon_param else 0.0
        value, gate = deformed_value_and_gate(log_p=log_p, alpha=coefficients.alpha, epsilon=epsilon)

    kept = coefficients.kept.astype(dtype)
    weighted = kept != 0

    def on_valid(x):
        return None if x is None else jnp.where(valid, x, 0.0)

    p = jnp.exp(log_p)
    return ObjectiveOutput(
        loss=jnp.where(weighted, value * kept, 0.0),
        gate=jax.lax.stop_gradient(jnp.where(weighted, gate * kept, 0.0)),
        nll=jax.lax.stop_gradient(on_valid(-log_p)),
        p=jax.lax.stop_gradient(on_valid(p)),
        kept=kept,
        entropy=jax.lax.stop_gradient(on_valid(stats.entropy)),
        collision=jax.lax.stop_gradient(on_valid(stats.collision)),
        alpha=on_valid(coefficients.alpha),
        topk_entropy=jax.lax.stop_gradient(on_valid(stats.topk_entropy)),
    )


def _check_target_range(targets, mask, *, vocab) -> None:
    """Eager-only check (skipped under jit, where an unmasked bad target shows up as NaN)."""
    if is_traced(targets) or is_traced(mask):
        return
    if not (getattr(targets, "is_fully_addressable", True) and getattr(mask, "is_fully_addressable", True)):
        return  # multi-host global arrays: not readable here; a bad target still shows up as NaN
    targets_np, valid = np.asarray(targets), np.asarray(mask) != 0
    bad = valid & ((targets_np < 0) | (targets_np >= vocab))
    if bad.any():
        positions = [tuple(int(i) for i in index) for index in np.argwhere(bad)[:5]]
        raise ValueError(f"targets: {int(bad.sum())} unmasked target(s) outside [0, {vocab}), e.g. "
                         f"{targets_np[bad][:5].tolist()} at positions {positions}; set mask to 0 there "
                         f"(ignored tokens such as -100) or fix the data")


def compute(name, logits, targets, mask, **params) -> ObjectiveOutput:
    """Per-token objective `name` (canonical or official alias) of `logits` [..., V] (any float dtype,
    statistics in float32), int `targets` [...] and `mask` [...] (0 = ignored), with the objective's
    keyword parameters. = objective_from_stats(name, token_stats(logits, targets), mask).
    jit-able with `name` and `params` static.
    """
    spec = _resolve(name, params)
    logits, targets, mask = jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask)
    check_logits_targets(logits, targets)
    check_mask(mask, shape=targets.shape)
    _check_target_range(targets, mask, vocab=logits.shape[-1])
    stats = token_stats(logits, targets, topk=required_topk(spec))
    return _objective_of(spec, stats, mask, coefficients=None)
