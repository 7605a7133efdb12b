"""Llama-family decoder (Llama, SmolLM2, Mistral, Qwen2/2.5, Qwen3) in Flax Linen, as Hugging Face defines it.

Block (pre-norm):  h = x + Attn(RMSNorm(x));  y = h + W_down(silu(W_gate RMSNorm(h)) * W_up RMSNorm(h)).
RMSNorm(x) = w * x / sqrt(mean(x^2) + eps), computed in float32.
RoPE is HF's rotate-half form: x' = x*cos(p*f) + rotate_half(x)*sin(p*f), f_i = theta^(-2i/head_dim)
(optionally rescaled by the Llama-3 rule). Attention is grouped-query: kv head j serves query heads
j*G .. j*G+G-1 with G = n_heads / n_kv_heads; softmax in float32, scale 1/sqrt(head_dim).
`attention` picks the kernel (deft_jax.model.attention: the XLA einsum, splash on TPU, cuDNN on GPU;
'auto' by platform); cached decoding always uses the einsum. `remat_policy` names what the backward pass
keeps of each layer (deft_jax.model.remat; the projections carry checkpoint names).

Masking: query i sees key j iff j <= i (by index in the row), segment_ids equal (packed examples never see
each other; 0 = padding), and, with a sliding window W, i - j < W. Positions (RoPE) are given separately so
they can restart at 0 in every packed segment.

Parameter tree (scan_layers=True stacks every per-layer tensor on a leading 'layers' axis):
  embedding [V, D]                         ('vocab', 'embed')
  layers/attn_norm/scale [L, D]            ('layers', 'norm')
  layers/attn/{q,k,v}_proj/kernel [L, D, H|Hkv, hd]  ('layers', 'embed', 'heads'|'kv_heads', 'head_dim')
  layers/attn/{q,k,v}_proj/bias [L, H|Hkv, hd]       (qkv_bias only: Qwen2)
  layers/attn/{q,k}_norm/scale [L, hd]     (qk_norm only: Qwen3)
  layers/attn/o_proj/kernel [L, H, hd, D]  ('layers', 'heads', 'head_dim', 'embed')
  layers/mlp_norm/scale [L, D]
  layers/mlp/{gate,up}_proj/kernel [L, D, F] ('layers', 'embed', 'mlp');  down_proj/kernel [L, F, D]
  final_norm/scale [D]
  lm_head [D, V]                           ('embed', 'vocab')  (untied embeddings only)
With scan_layers=False the layers are 'layers_0', 'layers_1', ... without the leading axis.

KV-cache decoding (functional, see `init_cache`): the cache is a dict
  {'k', 'v': [L, B, Hkv, S, hd] (compute dtype), 'segment_ids': [B, S] int32, 'end': int32 scalar or [B]}.
An 'end' of shape [B] gives every row its own write index (continuous batching: each row of the cache is a
decode slot holding its own sequence).
Heads come before positions so that attention reads the cache as stored (no per-step transposed copy).
`Decoder(...)(inputs, positions=..., segment_ids=..., cache=cache, kv_len=None)` writes the T new keys/values
at indices end .. end+T-1 of every row, attends over the cache (its first kv_len slots when given, which
must hold every written slot) with the same mask rules (key index as above), and returns (logits, new_cache) with end advanced by T.
`fresh_cache=True` promises an empty cache (end 0, a prefill): the new tokens then attend to each other with the `attention` kernel. Left-pad prompts of unequal length with
segment id 0 so every row writes at the same index; the sliding-window rule stays exact because each row's
real tokens are contiguous.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from deft_jax import sharding as sharding_lib
from deft_jax.model import ModelError
from deft_jax.model import attention as attention_lib
from deft_jax.model import remat as remat_lib
from deft_jax.model.attention import attention_mask, grouped_query_attention  # noqa: F401 (public here too)

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")

# Logical axis -> mesh axis, for a mesh with axes ('data', 'fsdp', 'tensor') (MaxText-style rules).
DEFAULT_LOGICAL_RULES = (
    # Parameters.
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    # Activations.
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture and numerics of a Llama-family decoder (field names follow the contract)."""

    model_type: str = "llama"
    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 16
    d_ff: int = 128
    rope_theta: float = 10000.0
    rope_scaling: Any = None  # None or a Llama-3 dict (rope_type='llama3', factor, low/high_freq_factor, ...)
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = True
    qkv_bias: bool = False
    qk_norm: bool = False
    sliding_window: int | None = None
    max_position_embeddings: int = 2048
    param_dtype: str = "float32"
    dtype: str = "float32"
    remat: bool = False  # the old switch: True = remat_policy 'full'
    remat_policy: str = ""  # deft_jax.model.remat.POLICIES; '' follows remat
    attention: str = "auto"  # auto | xla | splash | cudnn (deft_jax.model.attention); cached decoding uses xla
    attention_block_q: int = 512  # splash query block (clamped to the row length)
    attention_block_kv: int = 512  # splash key/value block
    attention_interpret: bool = False  # splash in Pallas interpret mode (runs on CPU; tests)
    scan_layers: bool = True
    scan_unroll: int = 1  # layers per nn.scan iteration; >= n_layers unrolls fully (same numbers)

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ModelError(f"model_type {self.model_type!r} is not supported; expected one of {SUPPORTED_MODEL_TYPES}")
        if self.scan_unroll < 1:
            raise ModelError(f"scan_unroll={self.scan_unroll} must be >= 1 (layers per scan iteration)")
        if self.n_heads % self.n_kv_heads:
            raise ModelError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
        if self.rope_scaling is not None:
            scaling = dict(self.rope_scaling)
            kind = scaling.get("rope_type", scaling.get("type"))
            if kind not in ("llama3", "default"):
                raise ModelError(f"rope_scaling type {kind!r} is not supported (only 'llama3'): {self.rope_scaling}")
            kept = {"rope_type": kind}
            if kind == "llama3":
                missing = [k for k in LLAMA3_ROPE_KEYS if k not in scaling]
                if missing:
                    raise ModelError(f"llama3 rope_scaling {scaling} lacks {missing}")
                kept.update({k: scaling[k] for k in LLAMA3_ROPE_KEYS})
            # A sorted tuple of the relevant keys: hashable (jit static argument) and comparable.
            object.__setattr__(self, "rope_scaling", None if kind == "default" else tuple(sorted(kept.items())))
        remat_lib.resolve_name(remat=self.remat, remat_policy=self.remat_policy)
        if self.attention not in attention_lib.IMPLEMENTATIONS:
            raise ValueError(f"attention={self.attention!r}: expected one of {attention_lib.IMPLEMENTATIONS}")
        for name in ("attention_block_q", "attention_block_kv"):
            if getattr(self, name) < attention_lib.SPLASH_LANES or getattr(self, name) % attention_lib.SPLASH_LANES:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive multiple of "
                                 f"{attention_lib.SPLASH_LANES}")
        for name in ("param_dtype", "dtype"):
            if getattr(self, name) not in ("float32", "bfloat16", "float16"):
                raise ModelError(f"{name}={getattr(self, name)!r}: expected 'float32', 'bfloat16' or 'float16'")

    @classmethod
    def tiny(cls, **overrides) -> "ModelConfig":
        """A 2-layer, d=64 model for tests: V=256, 4 heads, 2 kv heads, head_dim 16, d_ff 128."""
        return cls(**overrides)

    @property
    def remat_name(self) -> str:
        """The rematerialisation policy in force (remat_policy, or 'full'/'none' from remat)."""
        return remat_lib.resolve_name(remat=self.remat, remat_policy=self.remat_policy)

    @property
    def attention_spec(self) -> attention_lib.AttentionSpec:
        return attention_lib.AttentionSpec(implementation=self.attention, block_q=self.attention_block_q,
                                           block_kv=self.attention_block_kv, interpret=self.attention_interpret)

    @property
    def rope_scaling_dict(self) -> dict | None:
        return None if self.rope_scaling is None else dict(self.rope_scaling)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------------------------------------
# Pure functions.


def rope_inverse_frequencies(config: ModelConfig) -> np.ndarray:
    """f_i = theta^(-2i/head_dim), i < head_dim/2, then the Llama-3 rescaling if configured (float32, as HF)."""
    exponents = np.arange(0, config.head_dim, 2, dtype=np.int64).astype(np.float32) / config.head_dim
    inv_freq = (1.0 / (np.float32(config.rope_theta) ** exponents)).astype(np.float32)
    scaling = config.rope_scaling_dict
    if scaling is None:
        return inv_freq
    factor = scaling["factor"]
    low_freq_factor = scaling["low_freq_factor"]
    high_freq_factor = scaling["high_freq_factor"]
    old_context = scaling["original_max_position_embeddings"]
    low_freq_wavelen = old_context / low_freq_factor
    high_freq_wavelen = old_context / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


def apply_rope(x: jax.Array, *, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotate-half RoPE on x [B, T, H, hd] at positions [B, T]; angles in float32."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]  # [B, T, hd/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin).astype(x.dtype)


def rms_norm(x: jax.Array, *, scale: jax.Array, eps: float) -> jax.Array:
    """scale * x / sqrt(mean(x^2) + eps), normalised in float32, result in x's dtype (as HF)."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return scale.astype(x.dtype) * normed.astype(x.dtype)


def project_to_vocab(hidden: jax.Array, *, embedding=None, lm_head=None) -> jax.Array:
    """float32 logits [..., V] = hidden @ lm_head [D, V], or hidden @ embedding[V, D]^T when tied (contracted
    in place: no transposed copy of the embedding is materialised, which matters inside a decode loop).
    The leading dims are flattened into one, so the weight's gradient contracts over a single token dim
    (as `Projection`: no transposed copy of the [tokens, V] logits' gradient)."""
    lead, width = hidden.shape[:-1], hidden.shape[-1]
    flat = hidden.reshape(-1, width)
    if lm_head is not None:
        logits = jnp.einsum("td,dv->tv", flat, lm_head.astype(hidden.dtype), preferred_element_type=jnp.float32)
    else:
        logits = jnp.einsum("td,vd->tv", flat, embedding.astype(hidden.dtype), preferred_element_type=jnp.float32)
    return logits.reshape(*lead, logits.shape[-1])


def logits_from_hidden(hidden: jax.Array, *, params: dict, config: "ModelConfig") -> jax.Array:
    """The Decoder's output projection applied to hidden states [..., D] (e.g. the last position only)."""
    return project_to_vocab(hidden, embedding=params["embedding"],
                            lm_head=None if config.tie_embeddings else params["lm_head"])


# ----------------------------------------------------------------------------------------------------------
# Modules.


def _param(module: nn.Module, name: str, shape, axes, init):
    dtype = jnp.dtype(module.config.param_dtype)
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


_kernel_init = nn.initializers.normal(stddev=0.02)


class RMSNorm(nn.Module):
    config: ModelConfig
    axis_name: str = "norm"

    @nn.compact
    def __call__(self, x):
        scale = _param(self, "scale", (x.shape[-1],), (self.axis_name,), nn.initializers.ones)
        return rms_norm(x, scale=scale, eps=self.config.rms_norm_eps)


class Projection(nn.Module):
    """y[..., out] = x[..., in] · kernel[in, out] (+ bias), the kernel cast to the compute dtype.

    `in_rank` trailing dims of x contract with the kernel's leading `in_rank` dims. Both sides are
    flattened to one [tokens, in] × [in, out] matmul: its backward then contracts over a single token
    dim, which XLA:CPU runs as a plain matmul (contracting over [batch, length] separately made it
    transpose the activations' gradient in a slow strided loop, a third of the MLP's backward).
    """

    config: ModelConfig
    kernel_shape: tuple
    kernel_axes: tuple
    in_rank: int = 1
    bias_shape: tuple | None = None
    bias_axes: tuple | None = None
    tag: str | None = None  # checkpoint_name of the output (what a remat policy may save)

    @nn.compact
    def __call__(self, x):
        dtype = jnp.dtype(self.config.dtype)
        kernel = _param(self, "kernel", self.kernel_shape, self.kernel_axes, _kernel_init)
        in_shape, out_shape = self.kernel_shape[:self.in_rank], self.kernel_shape[self.in_rank:]
        fan_in, fan_out = math.prod(in_shape), math.prod(out_shape)
        tokens = x.shape[:x.ndim - self.in_rank]
        y = x.astype(dtype).reshape(-1, fan_in) @ kernel.astype(dtype).reshape(fan_in, fan_out)
        y = y.reshape(*tokens, *out_shape)
        if self.bias_shape is not None:
            y = y + _param(self, "bias", self.bias_shape, self.bias_axes, nn.initializers.zeros).astype(dtype)
        return y if self.tag is None else checkpoint_name(y, self.tag)


class Attention(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x, *, positions, segment_ids, layer_cache, kv_segment_ids, cache_end, kv_len=None,
                 fresh_cache=False):
        c = self.config
        d, h, hkv, hd = c.d_model, c.n_heads, c.n_kv_heads, c.head_dim

        def proj(name, n, axis):
            bias = dict(bias_shape=(n, hd), bias_axes=(axis, "head_dim")) if c.qkv_bias else {}
            tag = {"q_proj": "query_proj", "k_proj": "key_proj", "v_proj": "value_proj"}[name]
            return Projection(c, (d, n, hd), ("embed", axis, "head_dim"), name=name, tag=tag, **bias)(x)

        q, k, v = proj("q_proj", h, "heads"), proj("k_proj", hkv, "kv_heads"), proj("v_proj", hkv, "kv_heads")
        if c.qk_norm:
            q = RMSNorm(c, axis_name="head_dim", name="q_norm")(q)
            k = RMSNorm(c, axis_name="head_dim", name="k_norm")(k)
        inv_freq = rope_inverse_frequencies(c)
        q = apply_rope(q, positions=positions, inv_freq=inv_freq)
        k = apply_rope(k, positions=positions, inv_freq=inv_freq)
        q = nn.with_logical_constraint(q, ("batch", "length", "act_heads", "head_dim"))
        k = nn.with_logical_constraint(k, ("batch", "length", "act_kv_heads", "head_dim"))

        length = x.shape[1]
        if layer_cache is None:
            new_cache = None
            # Initialising only needs shapes: the einsum, whatever the platform.
            spec = attention_lib.AttentionSpec("xla") if self.is_initializing() else c.attention_spec
            out = attention_lib.self_attention(q=q, k=k, v=v, segment_ids=segment_ids,
                                               sliding_window=c.sliding_window, spec=spec)
        else:
            # The whole [L, B, Hkv, S, hd] cache travels in the carry and only the new slots are written,
            # so XLA updates it in place (no per-step copy of the cache).
            all_k, all_v, layer = layer_cache  # [L, B, Hkv, S, hd]
            fresh_k, fresh_v = k, v
            new_k = jnp.swapaxes(k, 1, 2)[None].astype(all_k.dtype)
            new_v = jnp.swapaxes(v, 1, 2)[None].astype(all_v.dtype)
            if jnp.ndim(cache_end) == 0:
                all_k = jax.lax.dynamic_update_slice(all_k, new_k, (layer, 0, 0, cache_end, 0))
                all_v = jax.lax.dynamic_update_slice(all_v, new_v, (layer, 0, 0, cache_end, 0))
                q_index = cache_end + jnp.arange(length)
            else:  # per-row ends [B]: row b writes its T new slots at end_b .. end_b + T - 1
                rows, q_index = _row_slots(cache_end, length)
                all_k = all_k.at[layer, rows, :, q_index].set(fresh_k.astype(all_k.dtype))  # [B, T, Hkv, hd]
                all_v = all_v.at[layer, rows, :, q_index].set(fresh_v.astype(all_v.dtype))
            # Read only the first kv_len slots (all of them when None): the caller guarantees that every
            # slot written so far lies below kv_len, so attention costs what has been written, not max_len.
            kv_len_read = all_k.shape[3] if kv_len is None else kv_len
            k = jax.lax.dynamic_slice_in_dim(all_k, layer, 1, axis=0)[0, :, :, :kv_len_read].astype(q.dtype)
            v = jax.lax.dynamic_slice_in_dim(all_v, layer, 1, axis=0)[0, :, :, :kv_len_read].astype(q.dtype)
            mask = attention_mask(q_index=q_index, k_index=jnp.arange(kv_len_read),
                                  q_segment_ids=segment_ids, k_segment_ids=kv_segment_ids[:, :kv_len_read],
                                  sliding_window=c.sliding_window)
            new_cache = (all_k, all_v, layer + 1)
            if fresh_cache:  # a prefill: the new tokens see only each other, so the chosen kernel applies
                out = attention_lib.self_attention(q=q, k=fresh_k, v=fresh_v, segment_ids=segment_ids,
                                                   sliding_window=c.sliding_window, spec=c.attention_spec)
            else:
                out = grouped_query_attention(q=q, k=k, v=v, mask=mask, heads_first=True)
        out = nn.with_logical_constraint(out, ("batch", "length", "act_heads", "head_dim"))
        out = Projection(c, (h, hd, d), ("heads", "head_dim", "embed"), in_rank=2, name="o_proj",
                         tag="out_proj")(out)
        return out, new_cache


def _row_slots(cache_end: jax.Array, length: int) -> tuple[jax.Array, jax.Array]:
    """(row index [B, 1], cache slot [B, T] = end_b + t) of T new tokens per row with per-row ends."""
    return jnp.arange(cache_end.shape[0])[:, None], cache_end[:, None] + jnp.arange(length)


class MLP(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        gate = Projection(c, (c.d_model, c.d_ff), ("embed", "mlp"), name="gate_proj", tag="mlp_gate")(x)
        up = Projection(c, (c.d_model, c.d_ff), ("embed", "mlp"), name="up_proj", tag="mlp_up")(x)
        hidden = nn.with_logical_constraint(nn.silu(gate) * up, ("batch", "length", "act_mlp"))
        return Projection(c, (c.d_ff, c.d_model), ("mlp", "embed"), name="down_proj", tag="mlp_down")(hidden)


class DecoderLayer(nn.Module):
    """One pre-norm block; signature (carry, *broadcast) -> (carry, None) so it can be nn.scan-ed.

    carry = (x, cache) with cache None or (k [L,B,Hkv,S,hd], v, index of this layer)."""

    config: ModelConfig
    kv_len: int | None = None  # cached decoding: attend over the first kv_len cache slots only
    fresh_cache: bool = False  # the cache holds nothing yet (a prefill from end 0)

    @nn.compact
    def __call__(self, carry, positions, segment_ids, kv_segment_ids, cache_end):
        x, layer_cache = carry
        c = self.config
        attn_out, new_cache = Attention(c, name="attn")(
            RMSNorm(c, name="attn_norm")(x), positions=positions, segment_ids=segment_ids,
            layer_cache=layer_cache, kv_segment_ids=kv_segment_ids, cache_end=cache_end, kv_len=self.kv_len,
            fresh_cache=self.fresh_cache)
        x = x + attn_out
        x = x + MLP(c, name="mlp")(RMSNorm(c, name="mlp_norm")(x))
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
        return (x, new_cache), None


class Decoder(nn.Module):
    """Token ids [B, T] -> float32 logits [B, T, V] (or final normed hidden states [B, T, D])."""

    config: ModelConfig

    @nn.compact
    def __call__(self, inputs, *, positions=None, segment_ids=None, return_hidden=False, cache=None, kv_len=None,
                 fresh_cache=False):
        c = self.config
        if kv_len is not None and cache is not None and not 0 < kv_len <= cache["k"].shape[3]:
            raise ValueError(f"kv_len={kv_len} must lie in [1, {cache['k'].shape[3]}] (the cache length)")
        batch, length = inputs.shape
        if positions is None:  # arange, continuing from the cache end when decoding
            start = jnp.zeros((), jnp.int32) if cache is None else cache["end"]
            positions = jnp.broadcast_to(start[..., None] + jnp.arange(length, dtype=jnp.int32), (batch, length))
        if segment_ids is None:
            segment_ids = jnp.ones((batch, length), jnp.int32)
        embedding = _param(self, "embedding", (c.vocab_size, c.d_model), ("vocab", "embed"), _kernel_init)
        x = jnp.take(embedding, inputs, axis=0).astype(jnp.dtype(c.dtype))
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))

        if cache is None:
            layer_cache, kv_segment_ids, cache_end = None, None, None
        else:
            cache_end = cache["end"]
            if jnp.ndim(cache_end) == 0:
                kv_segment_ids = jax.lax.dynamic_update_slice(cache["segment_ids"], segment_ids.astype(jnp.int32),
                                                              (0, cache_end))
            else:
                kv_segment_ids = cache["segment_ids"].at[_row_slots(cache_end, length)].set(
                    segment_ids.astype(jnp.int32))
            layer_cache = (cache["k"], cache["v"], jnp.zeros((), jnp.int32))

        layer_cls = DecoderLayer
        if c.remat_name != "none":  # deft_jax.model.remat: which intermediates the backward keeps
            layer_cls = nn.remat(layer_cls, prevent_cse=not c.scan_layers, policy=remat_lib.policy(c.remat_name))
        if c.scan_layers:
            stack = nn.scan(layer_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                            length=c.n_layers, unroll=min(c.scan_unroll, c.n_layers),
                            metadata_params={nn.PARTITION_NAME: "layers"})
            layers = stack(c, kv_len, fresh_cache, name="layers")
            (x, layer_cache), _ = layers((x, layer_cache), positions, segment_ids, kv_segment_ids, cache_end)
        else:
            for i in range(c.n_layers):
                (x, layer_cache), _ = layer_cls(c, kv_len, fresh_cache, name=f"layers_{i}")(
                    (x, layer_cache), positions, segment_ids, kv_segment_ids, cache_end)

        hidden = RMSNorm(c, name="final_norm")(x)
        if return_hidden:
            out = hidden
        else:
            head = None if c.tie_embeddings else _param(self, "lm_head", (c.d_model, c.vocab_size),
                                                        ("embed", "vocab"), _kernel_init)
            out = project_to_vocab(hidden, embedding=embedding, lm_head=head)
            out = nn.with_logical_constraint(out, ("batch", "length", "act_vocab"))
        if cache is None:
            return out
        new_cache = {"k": layer_cache[0], "v": layer_cache[1], "segment_ids": kv_segment_ids,
                     "end": cache_end + length}
        return out, new_cache


# ----------------------------------------------------------------------------------------------------------
# Helpers around the parameter tree.


def _dummy_inputs():
    return jnp.zeros((1, 1), jnp.int32)


def init_params(config: ModelConfig, *, rng) -> dict:
    """Random parameters (N(0, 0.02) kernels, unit norms, zero biases) as a plain (unboxed) dict."""
    boxed = jax.jit(Decoder(config).init)(rng, _dummy_inputs())["params"]
    return nn.unbox(boxed)


def abstract_params(config: ModelConfig):
    """(ShapeDtypeStruct tree, logical-axes tree) without allocating anything, in any mesh or rules context."""
    with nn.logical_axis_rules(()):  # the caller's rules would constrain init's activations: shapes need none
        boxed = jax.eval_shape(lambda: Decoder(config).init(jax.random.key(0), _dummy_inputs())["params"])
        return nn.unbox(boxed), nn.get_partition_spec(boxed)


def param_layout(config: ModelConfig, *, mesh, rules) -> tuple[Any, Any]:
    """(abstract params, NamedSharding tree) from the logical axes and `rules`; executes nothing.

    Raises ValueError naming the parameter when a dimension does not split over its mesh axes."""
    shapes, logical = abstract_params(config)
    shardings = sharding_lib.logical_to_shardings(logical_axes=logical, mesh=mesh, rules=rules)
    sharding_lib.check_divisible(abstract_tree=shapes, shardings=shardings, what="parameter")
    return shapes, shardings


def param_logical_axes(config: ModelConfig):
    """Tree matching the params: a PartitionSpec (a tuple) of logical axis names per parameter."""
    return abstract_params(config)[1]


def lm_head_weight(params: dict, config: ModelConfig) -> jax.Array:
    """[D, V] output projection: embedding.T when tied, else params['lm_head']."""
    return params["embedding"].T if config.tie_embeddings else params["lm_head"]


def count_params(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


def count_non_embedding_params(config: ModelConfig) -> int:
    """Parameters in the layers and the final norm (no embedding, no lm_head)."""
    c = config
    attn = c.d_model * c.head_dim * (2 * c.n_heads + 2 * c.n_kv_heads)
    if c.qkv_bias:
        attn += c.head_dim * (c.n_heads + 2 * c.n_kv_heads)
    if c.qk_norm:
        attn += 2 * c.head_dim
    per_layer = attn + 3 * c.d_model * c.d_ff + 2 * c.d_model
    return c.n_layers * per_layer + c.d_model


def flops_per_token(config: ModelConfig, *, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward):

        6 * (N_nonembedding + D*V)  +  12 * L * n_heads * head_dim * S_eff

    N_nonembedding counts the layer matmuls (the D*V term is the lm-head matmul; the embedding lookup is
    free); the attention term is QK^T and PV (2 matmuls x 2 FLOPs x 3 for fwd+bwd) over S_eff =
    min(seq_len, sliding_window) keys, without halving for causality (the PaLM convention).
    """
    c = config
    window = seq_len if c.sliding_window is None else min(seq_len, c.sliding_window)
    dense = 6 * (count_non_embedding_params(c) + c.d_model * c.vocab_size)
    return float(dense + 12 * c.n_layers * c.n_heads * c.head_dim * window)


def stack_layers(layer_trees: list) -> dict:
    """[tree of layer 0, tree of layer 1, ...] -> one tree with a leading layers axis."""
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *layer_trees)


def unstacked_params(params: dict, config: ModelConfig) -> dict:
    """Scanned params ('layers' stacked) -> unscanned layout ('layers_0', 'layers_1', ...)."""
    out = {k: v for k, v in params.items() if k != "layers"}
    for i in range(config.n_layers):
        out[f"layers_{i}"] = jax.tree_util.tree_map(lambda x, i=i: x[i], params["layers"])
    return out


def stacked_params(params: dict, config: ModelConfig) -> dict:
    """Unscanned params ('layers_i') -> scanned layout (one 'layers' tree, leading axis L)."""
    out = {k: v for k, v in params.items() if not k.startswith("layers_")}
    out["layers"] = stack_layers([params[f"layers_{i}"] for i in range(config.n_layers)])
    return out


def init_cache(config: ModelConfig, *, batch_size: int, max_len: int) -> dict:
    """Empty KV cache: k, v zeros [L, B, Hkv, max_len, hd] in the compute dtype, segment_ids 0, end 0."""
    shape = (config.n_layers, batch_size, config.n_kv_heads, max_len, config.head_dim)
    dtype = jnp.dtype(config.dtype)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
            "segment_ids": jnp.zeros((batch_size, max_len), jnp.int32), "end": jnp.zeros((), jnp.int32)}


def forward(params: dict, config: ModelConfig, inputs, **kwargs):
    """Decoder(config).apply({'params': params}, inputs, **kwargs)."""
    return Decoder(config).apply({"params": params}, inputs, **kwargs)
