"""Memory-safe lm-head + objective: per-token statistics from hidden states without [tokens, vocab] logits.

Every objective in `deft_jax.objectives` is "a stop-gradient gate times the NLL gradient": its value and
gate are functions of per-token statistics (`TokenStats`), and only log p carries gradient. So the lm-head
and the objective fuse into one custom VJP over token chunks:

  forward   for each chunk of c tokens: z = h W (float32, [c, V]); keep lse, z_y, log p, logsumexp(2z)
            (→ Σπ²), H and, for EAFT, the top-k entropy; the [c, V] block is dropped.
  objective `objective_from_stats` on the [N] statistics (Cayley's batch mean of p is available here
            without another pass: the statistics of every token exist before any gate is formed).
  backward  for each chunk: recompute z = h W, π = exp(z − lse) and, with g the cotangent of log p,
            ∂/∂z = g · (e_y − π);  dh = (∂/∂z) Wᵀ,  dW += hᵀ (∂/∂z).

Peak memory grows with the chunk size c (a [c, V] float32 block plus the [D, V] float32 weight gradient),
not with the number of tokens. Cost: one extra h W matmul per chunk (the backward's recompute).

With the weight's vocabulary axis sharded over a mesh axis (e.g. 'tensor'), the same code runs sharded:
`jax.jit` partitions each chunk's [c, V] block along V and the reductions over V (max, logsumexp, Σπ²,
entropy, top-k) become cross-device reductions of [c]-sized partial results — the full logits never
exist on any single device. Pass `vocab_sharding` to pin the block's layout.

Only `TokenStats.log_p` is differentiable through this path; the other statistics are returned under
stop_gradient (every objective treats them as constants, as the official code detaches them).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from deft_jax import objectives

__all__ = ["chunked_token_stats", "compute_chunked", "compute_naive", "lm_head_logits"]


def lm_head_logits(hidden, weight):
    """z = h W in float32 (the naive path): hidden [..., D], weight [D, V] -> [..., V]."""
    return jnp.einsum("...d,dv->...v", hidden, weight, preferred_element_type=jnp.float32)


def _check_inputs(*, hidden, weight, targets, chunk_size):
    if hidden.ndim < 1 or weight.ndim != 2:
        raise ValueError(f"hidden must be [..., D] and weight [D, V]; got hidden {hidden.shape}, "
                         f"weight {weight.shape}")
    if hidden.shape[-1] != weight.shape[0]:
        raise ValueError(f"hidden's last axis ({hidden.shape[-1]}) must equal weight's first axis "
                         f"(d_model, {weight.shape[0]}); weight is [D, V] (transpose an embedding [V, D])")
    if targets.shape != hidden.shape[:-1]:
        raise ValueError(f"targets must have shape hidden.shape[:-1] = {hidden.shape[:-1]}, got {targets.shape}")
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        raise ValueError(f"targets must be integer token ids, got {targets.dtype}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int (tokens per chunk), got {chunk_size!r}")


def _constrain(x, sharding):
    return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


def _chunks(x, *, chunk_size):
    """[N, ...] -> [N_chunks, chunk_size, ...], zero-padded at the end."""
    pad = (-x.shape[0]) % chunk_size
    if pad:
        x = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)], axis=0)
    return x.reshape((-1, chunk_size) + x.shape[1:])


def _unchunk(x, *, n):
    return x.reshape((-1,) + x.shape[2:])[:n]


def _stats_forward(hidden, weight, targets, *, chunk_size, topk, vocab_sharding):
    """Flat inputs hidden [N, D], targets [N] -> TokenStats with [N] fields, chunk by chunk."""
    n = hidden.shape[0]

    def one_chunk(_, chunk):
        h, t = chunk
        z = _constrain(lm_head_logits(h, weight), vocab_sharding)
        return None, objectives.token_stats(z, t, topk=topk)

    _, stats = jax.lax.scan(one_chunk, None, (_chunks(hidden, chunk_size=chunk_size),
                                              _chunks(targets, chunk_size=chunk_size)))
    return jax.tree.map(functools.partial(_unchunk, n=n), stats)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _fused_stats(hidden, weight, targets, chunk_size, topk, vocab_sharding):
    return _stats_forward(hidden, weight, targets, chunk_size=chunk_size, topk=topk,
                          vocab_sharding=vocab_sharding)


def _fused_stats_fwd(hidden, weight, targets, chunk_size, topk, vocab_sharding):
    stats = _stats_forward(hidden, weight, targets, chunk_size=chunk_size, topk=topk,
                           vocab_sharding=vocab_sharding)
    return stats, (hidden, weight, targets, stats.logsumexp)


def _fused_stats_bwd(chunk_size, topk, vocab_sharding, residuals, stats_cotangent):
    del topk
    hidden, weight, targets, logsumexp = residuals
    n = hidden.shape[0]
    vocab = weight.shape[1]
    # Only log p is differentiable (the wrapper stops the gradient of every other statistic).
    g_log_p = stats_cotangent.log_p.astype(jnp.float32)

    def one_chunk(d_weight, chunk):
        h, t, lse, g = chunk
        z = _constrain(lm_head_logits(h, weight), vocab_sharding)
        probs = jnp.exp(z - lse[:, None])
        onehot = (jnp.arange(vocab, dtype=t.dtype)[None, :] == t[:, None]).astype(jnp.float32)
        d_z = _constrain(g[:, None] * (onehot - probs), vocab_sharding)
        d_h = jnp.einsum("cv,dv->cd", d_z, weight, preferred_element_type=jnp.float32)
        d_weight = d_weight + jnp.einsum("cd,cv->dv", h, d_z, preferred_element_type=jnp.float32)
        return d_weight, d_h.astype(hidden.dtype)

    chunked = tuple(_chunks(x, chunk_size=chunk_size) for x in (hidden, targets, logsumexp, g_log_p))
    d_weight, d_hidden = jax.lax.scan(one_chunk, jnp.zeros(weight.shape, jnp.float32), chunked)
    return _unchunk(d_hidden, n=n), d_weight.astype(weight.dtype), None


_fused_stats.defvjp(_fused_stats_fwd, _fused_stats_bwd)


def chunked_token_stats(hidden, weight, targets, *, chunk_size: int = 1024, topk: int | None = None,
                        vocab_sharding=None) -> objectives.TokenStats:
    """`objectives.token_stats(hidden @ weight, targets, topk=topk)` without materialising the logits.

    hidden [..., D] (any float dtype), weight [D, V], int targets [...]; statistics in float32, shaped
    like targets. Gradient flows to hidden and weight through `log_p` only (a custom VJP that recomputes
    each chunk's logits); every other field is stop-gradient. `vocab_sharding`: optional sharding for
    the [chunk, V] logits block (e.g. NamedSharding(mesh, P(None, 'tensor'))) under jit.
    """
    hidden, weight, targets = jnp.asarray(hidden), jnp.asarray(weight), jnp.asarray(targets)
    _check_inputs(hidden=hidden, weight=weight, targets=targets, chunk_size=chunk_size)
    objectives.check_topk(topk)  # same validation and message as the naive path
    batch_shape = targets.shape
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_targets = targets.reshape(-1)
    # A chunk larger than the input would only add padded rows: clip it to the number of tokens.
    chunk_size = max(1, min(chunk_size, flat_targets.shape[0]))
    stats = _fused_stats(flat_hidden, weight, flat_targets, chunk_size, topk, vocab_sharding)
    stats = jax.tree.map(lambda x: x.reshape(batch_shape), stats)
    frozen = jax.lax.stop_gradient(stats)
    return frozen.replace(log_p=stats.log_p)


def chunked_max_logit(hidden, weight, *, chunk_size: int):
    """max_v (h W)_v per token, [...] float32, without the [tokens, V] logits (chunks of `chunk_size`)."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    n = flat.shape[0]
    chunk_size = max(1, min(chunk_size, n))
    padded = -(-n // chunk_size) * chunk_size
    flat = jnp.pad(flat, ((0, padded - n), (0, 0))).reshape(-1, chunk_size, flat.shape[-1])
    maxima = jax.lax.map(lambda h: jnp.max(jnp.einsum("cd,dv->cv", h, weight,
                                                      preferred_element_type=jnp.float32), axis=-1), flat)
    return maxima.reshape(-1)[:n].reshape(hidden.shape[:-1])


def compute_chunked(name, hidden, weight, targets, mask, *, chunk_size: int = 1024, vocab_sharding=None,
                    **params) -> objectives.ObjectiveOutput:
    """The fused path: `objectives.compute(name, hidden @ weight, targets, mask, **params)` with the
    same values and gradients (w.r.t. hidden and weight), memory O(chunk_size · V) instead of O(N · V)."""
    spec = objectives.parse_objective(name, **params)
    stats = chunked_token_stats(hidden, weight, targets, chunk_size=chunk_size,
                                topk=objectives.required_topk(spec), vocab_sharding=vocab_sharding)
    return objectives.objective_from_stats(spec, stats, mask)


def compute_naive(name, hidden, weight, targets, mask, **params) -> objectives.ObjectiveOutput:
    """The reference path: full float32 logits, then `objectives.compute`."""
    return objectives.compute(name, lm_head_logits(hidden, weight), targets, mask, **params)
