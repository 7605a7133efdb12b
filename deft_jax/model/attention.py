"""Causal, packed, grouped-query attention with a choice of kernel: the XLA einsum, splash (TPU), cuDNN (GPU).

Every implementation computes, per kv head j and each of its G = H / Hkv query heads,

    out[i] = Σ_s softmax_s(q_i · k_s / sqrt(hd) + mask[i, s]) v_s,   softmax in float32,

where query i sees key s iff s <= i, segment_ids[i] == segment_ids[s] (packed examples never see each
other; 0 = padding) and, with a sliding window W, i - s < W.

  xla     the einsum softmax below: materialises the [B, H, T, S] scores (any platform, any shape).
  splash  `jax.experimental.pallas.ops.tpu.splash_attention`: blockwise (flash) attention that never
          materialises the scores; block sizes (block_q, block_kv) are multiples of 128, clamped to T
          rounded up to 128. A row whose length the blocks do not divide is padded at its end to
          T' = ceil(T / b) b, b = max(block_q, block_kv) (the blocks must divide one another), with
          segment id 0 and the output cut back to T:
          causality keeps every real query off the appended keys, so the first T outputs are exact.
          Under a mesh it runs in `shard_map` over the batch and head axes that the logical rules give
          the activations. `interpret=True` runs the same kernel on CPU in Pallas interpret mode (tests).
  cudnn   `jax.nn.dot_product_attention(implementation="cudnn")`: cuDNN's flash attention (GPU); packed
          segments enter as a [B, 1, T, T] boolean mask.
  auto    splash on TPU, cudnn on GPU, xla otherwise. The platform is the
          mesh's (an AOT compile for TPU topology devices picks splash on a CPU host).
"""
from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from deft_jax import errors

IMPLEMENTATIONS = ("auto", "xla", "splash", "cudnn")
SPLASH_LANES = 128  # splash blocks and sequence lengths are multiples of the TPU lane width
ACTIVATION_AXES = ("batch", "length", "act_heads", "head_dim")
KV_ACTIVATION_AXES = ("batch", "length", "act_kv_heads", "head_dim")


class AttentionError(errors.UserError):
    """An attention implementation that cannot run here (platform or shapes); the message says what to set."""


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
    """Static choice of kernel and its tiling (hashable)."""

    implementation: str = "auto"
    block_q: int = 512
    block_kv: int = 512
    interpret: bool = False  # splash only: Pallas interpret mode (runs on CPU)


# ----------------------------------------------------------------------------------------------------------
# The reference: masks and the XLA einsum.


def attention_mask(*, q_index, k_index, q_segment_ids, k_segment_ids, sliding_window) -> jax.Array:
    """[B, T, S] bool: k_index <= q_index, same segment, and q_index - k_index < window if windowed.
    q_index is [T] (every row's queries at the same indices) or [B, T] (per row)."""
    mask = k_index <= q_index[..., :, None]
    mask = mask & (q_segment_ids[:, :, None] == k_segment_ids[:, None, :])
    if sliding_window is not None:
        mask = mask & ((q_index[..., :, None] - k_index) < sliding_window)
    return mask


def grouped_query_attention(*, q, k, v, mask, heads_first: bool = False) -> jax.Array:
    """softmax(q k^T / sqrt(hd) masked) v with q [B,T,H,hd], mask [B,T,S] -> [B,T,H,hd]; k/v [B,S,Hkv,hd], or
    with `heads_first` the cache layout [B,Hkv,S,hd], which both contractions then read as stored (no
    per-step transpose of the cache).

    The G = H / Hkv query heads sharing a kv head are merged with the query positions into one dim
    M = G·T, so both products are plain batched matmuls over (B, Hkv) and their gradients contract over
    one dim (contracting over (G, T) separately made XLA:CPU transpose the scores' gradient).
    """
    batch, length, n_heads, head_dim = q.shape
    n_kv_heads = k.shape[1 if heads_first else 2]
    groups = n_heads // n_kv_heads
    if not heads_first:
        k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)  # [B, Hkv, S, hd]
    q = q.reshape(batch, length, n_kv_heads, groups, head_dim).transpose(0, 2, 3, 1, 4)
    q = q.reshape(batch, n_kv_heads, groups * length, head_dim)  # [B, Hkv, G·T, hd]
    scores = jnp.einsum("bkmd,bksd->bkms", q, k, preferred_element_type=jnp.float32) * (head_dim**-0.5)
    scores = scores.reshape(batch, n_kv_heads, groups, length, -1)
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(batch, n_kv_heads, groups * length, -1)
    out = jnp.einsum("bkms,bksd->bkmd", probs, v).reshape(batch, n_kv_heads, groups, length, head_dim)
    return out.transpose(0, 3, 1, 2, 4).reshape(batch, length, n_heads, head_dim)


def xla_attention(*, q, k, v, segment_ids, sliding_window) -> jax.Array:
    """Self-attention over one row of T tokens (keys = queries' positions) with the einsum softmax."""
    index = jnp.arange(q.shape[1])
    mask = attention_mask(q_index=index, k_index=index, q_segment_ids=segment_ids, k_segment_ids=segment_ids,
                          sliding_window=sliding_window)
    return grouped_query_attention(q=q, k=k, v=v, mask=mask)


# ----------------------------------------------------------------------------------------------------------
# Choosing.


def current_platform() -> str:
    """The platform of the mesh in context ('tpu' for topology devices on a CPU host), else the default."""
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and getattr(mesh, "abstract_device", None) is not None:
        return mesh.abstract_device.platform
    return jax.default_backend()


@dataclasses.dataclass(frozen=True)
class SplashTiling:
    """How splash tiles a row: blocks, the padded length T' and the (query, key) blocks it computes."""

    seq_len: int
    padded_len: int
    block_q: int
    block_kv: int
    visible_blocks: int  # blocks with at least one visible (query, key) pair: the ones the kernel computes

    @property
    def block_fraction(self) -> float:
        """visible blocks x block_q x block_kv / T^2: the share of the full T x T scores the kernel computes."""
        return self.visible_blocks * self.block_q * self.block_kv / self.seq_len**2


def splash_tiling(*, seq_len: int, spec: AttentionSpec, sliding_window: int | None = None) -> SplashTiling:
    """Blocks clamped to T rounded up to 128; T' = T rounded up to max(block_q, block_kv); block (i, j) is
    computed iff some query in i sees some key in j: j bkv <= (i + 1) bq - 1 and, with a window W,
    i bq - ((j + 1) bkv - 1) < W."""
    lanes = -(-seq_len // SPLASH_LANES) * SPLASH_LANES
    block_q, block_kv = min(spec.block_q, lanes), min(spec.block_kv, lanes)
    multiple = max(block_q, block_kv)  # the blocks divide one another (splash_problem)
    padded = -(-seq_len // multiple) * multiple
    i = np.arange(padded // block_q)[:, None]
    j = np.arange(padded // block_kv)[None, :]
    visible = j * block_kv <= (i + 1) * block_q - 1
    if sliding_window is not None:
        visible &= i * block_q - ((j + 1) * block_kv - 1) < sliding_window
    return SplashTiling(seq_len=seq_len, padded_len=padded, block_q=block_q, block_kv=block_kv,
                        visible_blocks=int(visible.sum()))


def splash_problem(*, seq_len: int, spec: AttentionSpec) -> str | None:
    """Why splash cannot tile rows of seq_len tokens with spec's blocks, or None: blocks must be multiples
    of 128 and (clamped to T rounded up to 128) divide one another, so that padding stays under a block."""
    for name in ("block_q", "block_kv"):
        block = getattr(spec, name)
        if block < SPLASH_LANES or block % SPLASH_LANES:
            return f"{name}={block} must be a positive multiple of {SPLASH_LANES}"
    lanes = -(-seq_len // SPLASH_LANES) * SPLASH_LANES
    small, large = sorted((min(spec.block_q, lanes), min(spec.block_kv, lanes)))
    if large % small:
        return (f"block_q={spec.block_q} and block_kv={spec.block_kv} (as {min(spec.block_q, lanes)}, "
                f"{min(spec.block_kv, lanes)} for {seq_len} tokens) must divide one another")
    return None


def resolve(spec: AttentionSpec, *, platform: str, seq_len: int) -> str:
    """The implementation that runs: spec's, or for 'auto' splash on TPU (padding a row the blocks do not
    divide), cudnn on GPU, else xla. An explicit choice that cannot run raises AttentionError naming
    config.model.attention."""
    name = spec.implementation
    if name not in IMPLEMENTATIONS:
        raise AttentionError(f"config.model.attention={name!r} must be one of {IMPLEMENTATIONS}")
    if name == "auto":
        if platform == "tpu" and splash_problem(seq_len=seq_len, spec=spec) is None:
            return "splash"
        return "cudnn" if platform == "gpu" else "xla"
    if name == "splash":
        if platform != "tpu" and not spec.interpret:
            raise AttentionError(f"config.model.attention='splash' needs a TPU (this program is for {platform!r});"
                                 f" set model.attention='auto' or 'xla'")
        problem = splash_problem(seq_len=seq_len, spec=spec)
        if problem:
            raise AttentionError(f"config.model.attention='splash': {problem}; change "
                                 f"model.attention_block_q/_kv")
    if name == "cudnn" and platform != "gpu":
        raise AttentionError(f"config.model.attention='cudnn' needs a GPU (this program is for {platform!r}); "
                             f"set model.attention='auto' or 'xla'")
    return name


# ----------------------------------------------------------------------------------------------------------
# Kernels.


def cudnn_attention(*, q, k, v, segment_ids, sliding_window, implementation: str = "cudnn") -> jax.Array:
    """jax.nn.dot_product_attention: causal, a left window of W - 1 keys, segments as a boolean mask.
    (`implementation='xla'` runs the same call on any platform, for tests.)"""
    mask = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]  # [B, 1, T, T]
    window = None if sliding_window is None else (sliding_window - 1, 0)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, local_window_size=window,
                                        implementation=implementation)


def _splash_kernel(*, n_heads: int, seq_len: int, sliding_window, spec: AttentionSpec):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel_lib
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib

    shape = (seq_len, seq_len)
    if sliding_window is None:
        head_mask = mask_lib.CausalMask(shape=shape)
    else:  # key s visible from query i iff i - (W - 1) <= s <= i
        head_mask = mask_lib.LocalMask(shape=shape, window_size=(sliding_window - 1, 0), offset=0)
    tiling = splash_tiling(seq_len=seq_len, spec=spec)
    block_q, block_kv = tiling.block_q, tiling.block_kv
    blocks = kernel_lib.BlockSizes(block_q=block_q, block_kv=block_kv, block_kv_compute=block_kv,
                                   block_q_dkv=block_q, block_kv_dkv=block_kv, block_kv_dkv_compute=block_kv,
                                   block_q_dq=block_q, block_kv_dq=block_kv)
    return kernel_lib.make_splash_mha(mask_lib.MultiHeadMask([head_mask] * n_heads), block_sizes=blocks,
                                      head_shards=1, q_seq_shards=1, interpret=spec.interpret), kernel_lib


def _splash_local(q, k, v, segment_ids, *, sliding_window, spec: AttentionSpec):
    """splash on unsharded (or per-shard) arrays q [B,T,H,hd], k/v [B,T,Hkv,hd], segment_ids [B,T]."""
    length, n_heads, head_dim = q.shape[1:]
    kernel, kernel_lib = _splash_kernel(n_heads=n_heads, seq_len=length, sliding_window=sliding_window, spec=spec)
    heads_major = functools.partial(jnp.swapaxes, axis1=1, axis2=2)  # [B, H, T, hd], the kernel's layout
    q = heads_major(q * jnp.asarray(head_dim**-0.5, q.dtype))
    ids = segment_ids.astype(jnp.int32)

    def row(q_row, k_row, v_row, ids_row):
        return kernel(q_row, k_row, v_row, segment_ids=kernel_lib.SegmentIds(q=ids_row, kv=ids_row))

    return jnp.swapaxes(jax.vmap(row)(q, heads_major(k), heads_major(v), ids), 1, 2)


def _mesh_spec(logical_axes, shape, mesh) -> PartitionSpec:
    """The rules' PartitionSpec for `logical_axes`, with the mesh axes a dimension does not divide dropped."""
    spec = nn.logical_to_mesh_axes(logical_axes)
    kept = []
    for size, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        names = tuple(a for a in names if a in mesh.shape)
        ways = int(np.prod([mesh.shape[a] for a in names])) if names else 1
        kept.append(names if names and size % ways == 0 else None)
    return PartitionSpec(*kept)


def splash_attention(*, q, k, v, segment_ids, sliding_window, spec: AttentionSpec) -> jax.Array:
    """Splash attention; under a mesh in shard_map over the batch and head axes of the logical rules. A row
    the blocks do not divide is padded to T' (segment id 0) and the output cut back to T."""
    length = q.shape[1]
    padded = splash_tiling(seq_len=length, spec=spec).padded_len
    if padded != length:
        pad = lambda x: jnp.pad(x, [(0, 0), (0, padded - length)] + [(0, 0)] * (x.ndim - 2))
        out = splash_attention(q=pad(q), k=pad(k), v=pad(v), segment_ids=pad(segment_ids),
                               sliding_window=sliding_window, spec=spec)
        return out[:, :length]
    local = functools.partial(_splash_local, sliding_window=sliding_window, spec=spec)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return local(q, k, v, segment_ids)
    q_spec = _mesh_spec(ACTIVATION_AXES, q.shape, mesh)
    kv_spec = _mesh_spec(KV_ACTIVATION_AXES, k.shape, mesh)
    if q_spec[2] != kv_spec[2]:  # both head dims split the same way, or neither
        q_spec = PartitionSpec(q_spec[0], None, None, None)
        kv_spec = PartitionSpec(q_spec[0], None, None, None)
    if q_spec[0] != kv_spec[0]:
        kv_spec = PartitionSpec(q_spec[0], *kv_spec[1:])
    ids_spec = PartitionSpec(q_spec[0], None)
    return jax.shard_map(local, in_specs=(q_spec, kv_spec, kv_spec, ids_spec), out_specs=q_spec,
                         check_vma=False)(q, k, v, segment_ids)


def self_attention(*, q, k, v, segment_ids, sliding_window, spec: AttentionSpec) -> jax.Array:
    """Causal self-attention of q [B,T,H,hd] over k, v [B,T,Hkv,hd] with spec's kernel -> [B,T,H,hd]."""
    name = resolve(spec, platform=current_platform(), seq_len=q.shape[1])
    if name == "splash":
        return splash_attention(q=q, k=k, v=v, segment_ids=segment_ids, sliding_window=sliding_window, spec=spec)
    if name == "cudnn":
        return cudnn_attention(q=q, k=k, v=v, segment_ids=segment_ids, sliding_window=sliding_window)
    return xla_attention(q=q, k=k, v=v, segment_ids=segment_ids, sliding_window=sliding_window)
