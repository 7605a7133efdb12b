"""Per-token outputs into (sum, denominator) pairs with a named normalisation, and the metric sums.

    reduce(loss, mask, gate, segment_ids, normalization)  token | sequence | gate means as (Σ, den)
    token_metrics(output, mask)                            (Σ, count) of nll, p, gate, α, H, C, ...
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from deft_jax.objectives.compute import ObjectiveOutput
from deft_jax.objectives.statistics import check_mask, float_mask, stats_dtype

NORMALIZATIONS = ("token", "sequence", "gate")


def safe_divide(total, denominator):
    """total / denominator, 0 where denominator == 0 (no NaN for an all-masked batch). For the token
    normalisation this equals the official Σ(loss·mask)/(Σmask + 1e-8) in float32."""
    positive = denominator > 0
    return jnp.where(positive, total / jnp.where(positive, denominator, 1.0), 0.0)


def _segment_index(segment_ids):
    """Row-local index of each contiguous run of equal segment id (0, 1, ... per row)."""
    starts = jnp.concatenate(
        [jnp.ones_like(segment_ids[..., :1], dtype=bool), segment_ids[..., 1:] != segment_ids[..., :-1]],
        axis=-1,
    )
    return jnp.cumsum(starts.astype(jnp.int32), axis=-1) - 1


def _sequence_sums(*, loss, mask_f, segment_ids):
    length = loss.shape[-1]
    rows = int(np.prod(loss.shape[:-1], dtype=np.int64))
    loss2, mask2 = loss.reshape(rows, length), mask_f.reshape(rows, length)
    if segment_ids is None:
        return jnp.sum(loss2, axis=-1), jnp.sum(mask2, axis=-1)
    segment_ids = segment_ids.reshape(rows, length)
    in_segment = segment_ids != 0
    ids = (_segment_index(segment_ids) + length * jnp.arange(rows)[:, None]).reshape(-1)
    sums = jax.ops.segment_sum(jnp.where(in_segment, loss2, 0.0).reshape(-1), ids, num_segments=rows * length)
    counts = jax.ops.segment_sum(jnp.where(in_segment, mask2, 0.0).reshape(-1), ids,
                                 num_segments=rows * length)
    return sums, counts


def reduce(*, loss, mask, gate=None, segment_ids=None, normalization: str = "token"):
    """(sum, denominator) of per-token `loss` over tokens with mask != 0; mean = safe_divide(sum, den).

    Pass mask = output.kept (threshold objectives count kept tokens only, as the official code).

    normalization:
      "token"     Σ loss / Σ mask: token mean over valid tokens (official default, per micro-batch).
      "sequence"  each sequence's token mean, averaged over sequences: sum = Σ_seq mean_seq,
                  denominator = number of non-empty sequences. A sequence is a row of the last axis,
                  or, with `segment_ids` (same shape, 0 = padding), each contiguous run of one segment
                  id within a row (packed examples).
      "gate"      Σ loss / Σ gate (needs `gate`, the output's stop-gradient gate). The gradient becomes
                  Σ gate·(π − e_y) / Σ gate: a gate-weighted average of the per-token NLL gradients
                  (the same gradient as Σ sg(gate)·NLL / Σ sg(gate)). Compared with "token" it divides
                  the update by the mean gate, so the effective learning rate no longer shrinks when the
                  gates are small (e.g. −p or DEFT on low-p tokens); only the direction keeps the
                  gating. The value itself is not a mean of anything: log the raw NLL instead.
    Denominators are float32 scalars; an all-masked batch gives (0, 0).
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    loss, mask = jnp.asarray(loss), jnp.asarray(mask)
    if mask.shape != loss.shape:
        raise ValueError(f"mask must have the loss's shape {loss.shape}, got {mask.shape}")
    dtype = stats_dtype(loss.dtype)
    loss = loss.astype(dtype)
    mask_f, valid = float_mask(mask, dtype=dtype)
    loss = jnp.where(valid, loss, 0.0)

    if normalization == "token":
        return jnp.sum(loss), jnp.sum(mask_f)
    if normalization == "gate":
        if gate is None:
            raise ValueError('normalization="gate" needs gate= (ObjectiveOutput.gate)')
        gate = jnp.asarray(gate)
        if gate.shape != loss.shape:
            raise ValueError(f"gate must have the loss's shape {loss.shape}, got {gate.shape}")
        return jnp.sum(loss), jnp.sum(jnp.where(valid, jax.lax.stop_gradient(gate).astype(dtype), 0.0))
    # "sequence"
    if loss.ndim < 1:
        raise ValueError('normalization="sequence" needs per-token loss of shape [..., T]')
    if segment_ids is not None:
        segment_ids = jnp.asarray(segment_ids)
        if segment_ids.shape != loss.shape:
            raise ValueError(f"segment_ids must have the loss's shape {loss.shape}, got {segment_ids.shape}")
        if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
            raise ValueError(f"segment_ids must be integers (0 = padding), got {segment_ids.dtype}")
    sums, counts = _sequence_sums(loss=loss, mask_f=mask_f, segment_ids=segment_ids)
    nonempty = counts > 0
    return jnp.sum(safe_divide(sums, counts)), jnp.sum(nonempty.astype(dtype))


def reduce_output(output: ObjectiveOutput, *, normalization: str = "token", segment_ids=None):
    """`reduce` applied to an ObjectiveOutput (mask = kept, gate = gate)."""
    return reduce(loss=output.loss, mask=output.kept, gate=output.gate, segment_ids=segment_ids,
                  normalization=normalization)


def token_metrics(output: ObjectiveOutput, mask) -> dict[str, tuple[jax.Array, jax.Array]]:
    """(sum, count) pairs over valid tokens (mask != 0) for logging means: nll (raw −log p), p, gate,
    entropy, collision, kept_fraction, and alpha / topk_entropy when the objective has them."""
    mask = jnp.asarray(mask)
    check_mask(mask, shape=output.loss.shape)
    valid = mask != 0
    dtype = output.loss.dtype
    count = jnp.sum(valid.astype(dtype))

    def pair(values):
        return jnp.sum(jnp.where(valid, jax.lax.stop_gradient(values), 0.0)), count

    metrics = {
        "nll": pair(output.nll),
        "p": pair(output.p),
        "gate": pair(output.gate),
        "entropy": pair(output.entropy),
        "collision": pair(output.collision),
        "kept_fraction": pair((output.kept != 0).astype(dtype)),
    }
    if output.alpha is not None:
        metrics["alpha"] = pair(output.alpha)
    if output.topk_entropy is not None:
        metrics["topk_entropy"] = pair(output.topk_entropy)
    return metrics
