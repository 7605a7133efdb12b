"""Attention kernels against the einsum reference: splash (Pallas interpret mode on CPU) and the cuDNN call.

Tolerances (float32, T = 256, blocks of 128): the kernels sum the same products in another order (online
softmax over key blocks), so forward outputs differ by a few float32 ulps of O(1) values (measured
~4e-7; bound 1e-5). Gradients carry the backward's blockwise re-computation of the softmax and its
sums over T = 256 keys and queries (measured ~1e-5 on gradients of size ~1; bound 2e-4 relative to
their largest entry). A masking error (a segment, the causal edge or the window off by one) moves
outputs by O(1e-1): orders of magnitude above both bounds.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from deft_jax import sharding as sharding_lib
from deft_jax.model import attention as attention_lib
from deft_jax.model import decoder as model_lib
from deft_jax.training import config as config_lib

T, HD = 256, 16
SPLASH = attention_lib.AttentionSpec(implementation="splash", block_q=128, block_kv=128, interpret=True)
CASES = {  # name: (query heads, kv heads, packed, sliding window)
    "causal": (1, 1, False, None),
    "packed": (2, 2, True, None),
    "gqa": (2, 1, True, None),
    "window": (2, 1, True, 96),
}


def _inputs(n_heads, n_kv_heads, packed, batch=1, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.normal(size=(batch, T, h, HD)), jnp.float32)
               for h in (n_heads, n_kv_heads, n_kv_heads))
    row = [1] * 100 + [2] * 120 + [0] * 36 if packed else [1] * T  # two examples, then padding
    return q, k, v, jnp.asarray([row] * batch, jnp.int32)


def _loss(fn, cotangent):
    return lambda q, k, v: jnp.sum(fn(q, k, v) * cotangent)


@pytest.mark.parametrize("case", list(CASES))
def test_splash_matches_the_einsum_forward_and_gradients(case):
    n_heads, n_kv_heads, packed, window = CASES[case]
    q, k, v, ids = _inputs(n_heads, n_kv_heads, packed)
    xla = lambda q, k, v: attention_lib.xla_attention(q=q, k=k, v=v, segment_ids=ids, sliding_window=window)
    splash = lambda q, k, v: attention_lib.splash_attention(q=q, k=k, v=v, segment_ids=ids,
                                                            sliding_window=window, spec=SPLASH)
    np.testing.assert_allclose(splash(q, k, v), xla(q, k, v), atol=1e-5)
    cotangent = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)
    want = jax.grad(_loss(xla, cotangent), argnums=(0, 1, 2))(q, k, v)
    got = jax.grad(_loss(splash, cotangent), argnums=(0, 1, 2))(q, k, v)
    for name, g, w in zip("qkv", got, want):
        scale = float(jnp.abs(w).max())
        np.testing.assert_allclose(g, w, atol=2e-4 * scale, err_msg=f"d{name}")


@pytest.mark.parametrize("length, window", [(200, None), (200, 96)])
def test_splash_pads_a_row_the_blocks_do_not_divide(length, window):
    """T = 200 (not a multiple of 128): padded to 256 with segment 0, cut back; same as the einsum on T."""
    q, k, v, ids = (a[:, :length] for a in _inputs(2, 1, True))  # segments 1 (100), 2 (100): no padding
    xla = lambda q, k, v: attention_lib.xla_attention(q=q, k=k, v=v, segment_ids=ids, sliding_window=window)
    splash = lambda q, k, v: attention_lib.splash_attention(q=q, k=k, v=v, segment_ids=ids,
                                                            sliding_window=window, spec=SPLASH)
    assert splash(q, k, v).shape == q.shape
    np.testing.assert_allclose(splash(q, k, v), xla(q, k, v), atol=1e-5)
    cotangent = jnp.asarray(np.random.default_rng(2).normal(size=q.shape), jnp.float32)
    want = jax.grad(_loss(xla, cotangent), argnums=(0, 1, 2))(q, k, v)
    got = jax.grad(_loss(splash, cotangent), argnums=(0, 1, 2))(q, k, v)
    for name, g, w in zip("qkv", got, want):
        np.testing.assert_allclose(g, w, atol=2e-4 * float(jnp.abs(w).max()), err_msg=f"d{name}")


@pytest.mark.parametrize("length, block, window, padded, visible", [
    (3072, 512, None, 3072, 21),  # 6 x 6 blocks, the causal triangle with its diagonal
    (800, 512, None, 1024, 3),    # clamped to 512, padded to 1024: 2 x 2 blocks, 3 computed
    (200, 512, None, 256, 1),     # clamped to 256 (200 rounded up to 128)
    (1024, 128, 128, 1024, 15),   # window 128: the diagonal and the one below it (8 + 7)
])
def test_splash_tiling_counts_padding_and_the_blocks_it_computes(length, block, window, padded, visible):
    spec = attention_lib.AttentionSpec("splash", block_q=block, block_kv=block)
    tiling = attention_lib.splash_tiling(seq_len=length, spec=spec, sliding_window=window)
    assert (tiling.padded_len, tiling.visible_blocks) == (padded, visible)
    # Brute force over (query, key) pairs of the padded row: a block is computed iff some pair is visible.
    b = tiling.block_q
    q_idx, k_idx = np.arange(padded)[:, None], np.arange(padded)[None, :]
    pairs = (k_idx <= q_idx) & (True if window is None else (q_idx - k_idx < window))
    blocks = pairs.reshape(padded // b, b, padded // b, b).any(axis=(1, 3))
    assert blocks.sum() == visible


def test_the_reference_masks_what_it_should():
    """The einsum itself against a per-query NumPy loop (the reference the kernels are held to)."""
    q, k, v, ids = _inputs(2, 1, True)
    window = 96
    out = np.asarray(attention_lib.xla_attention(q=q, k=k, v=v, segment_ids=ids, sliding_window=window))
    q, k, v, ids = (np.asarray(a, np.float64) for a in (q, k, v, ids))
    for i in (0, 99, 100, 150, 219, 230, 255):
        keys = [s for s in range(i + 1) if ids[0, s] == ids[0, i] and i - s < window]
        for h in range(2):
            logits = k[0, keys, 0] @ q[0, i, h] / np.sqrt(HD)
            p = np.exp(logits - logits.max())
            np.testing.assert_allclose(out[0, i, h], (p / p.sum()) @ v[0, keys, 0], atol=1e-5)


@pytest.mark.parametrize("case", ["packed", "window"])
def test_the_cudnn_call_masks_like_the_einsum(case):
    """The exact jax.nn.dot_product_attention call the cudnn path makes, run by its XLA implementation."""
    n_heads, n_kv_heads, packed, window = CASES[case]
    q, k, v, ids = _inputs(n_heads, n_kv_heads, packed, batch=2)
    got = attention_lib.cudnn_attention(q=q, k=k, v=v, segment_ids=ids, sliding_window=window,
                                        implementation="xla")
    want = attention_lib.xla_attention(q=q, k=k, v=v, segment_ids=ids, sliding_window=window)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_splash_in_shard_map_over_a_mesh_equals_unsharded():
    """Under a (data=2, tensor=2) mesh splash runs per shard (batch and heads split); same numbers."""
    q, k, v, ids = _inputs(2, 2, True, batch=2)
    mesh = Mesh(np.array(jax.devices()[:4]).reshape(2, 1, 2), ("data", "fsdp", "tensor"))
    fn = jax.jit(lambda q, k, v, ids: attention_lib.self_attention(q=q, k=k, v=v, segment_ids=ids,
                                                                   sliding_window=None, spec=SPLASH))
    with sharding_lib.mesh_context(mesh, model_lib.DEFAULT_LOGICAL_RULES):
        sharded = fn(q, k, v, ids)
        assert "shard_map" in str(fn.trace(q, k, v, ids).jaxpr)
    want = attention_lib.xla_attention(q=q, k=k, v=v, segment_ids=ids, sliding_window=None)
    np.testing.assert_allclose(sharded, want, atol=1e-5)


def test_decoder_with_splash_equals_decoder_with_xla():
    config = model_lib.ModelConfig.tiny(n_layers=1, attention="xla")
    params = model_lib.init_params(config, rng=jax.random.key(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (1, 128)), jnp.int32)
    ids = jnp.asarray([[1] * 70 + [2] * 58], jnp.int32)
    splash = config.replace(attention="splash", attention_block_q=128, attention_block_kv=128,
                            attention_interpret=True)
    want = model_lib.forward(params, config, tokens, segment_ids=ids)
    np.testing.assert_allclose(model_lib.forward(params, splash, tokens, segment_ids=ids), want, atol=1e-5)


def test_a_prefill_uses_the_kernel_and_fills_the_cache_as_the_einsum_does():
    """Left-padded prompts into a fresh cache: splash (fresh_cache) gives the einsum-over-cache's logits
    and the same cache."""
    config = model_lib.ModelConfig.tiny(n_layers=1, attention="splash", attention_block_q=128,
                                        attention_block_kv=128, attention_interpret=True)
    params = model_lib.init_params(config, rng=jax.random.key(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 128)), jnp.int32)
    ids = jnp.asarray([[0] * 28 + [1] * 100, [1] * 128], jnp.int32)
    positions = jnp.maximum(jnp.cumsum(ids, axis=1) - 1, 0)
    cache = model_lib.init_cache(config, batch_size=2, max_len=160)
    run = lambda fresh: model_lib.forward(params, config, tokens, positions=positions, segment_ids=ids,
                                          cache=cache, fresh_cache=fresh)
    (got, got_cache), (want, want_cache) = run(True), run(False)
    real = np.asarray(ids, bool)
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=1e-5)
    for key in ("k", "v"):  # the same projections, compiled in another program: float32 rounding apart
        np.testing.assert_allclose(got_cache[key], want_cache[key], atol=1e-6)
    for key in ("segment_ids", "end"):
        np.testing.assert_array_equal(got_cache[key], want_cache[key])


@pytest.mark.parametrize("implementation, platform, seq_len, chosen", [
    ("auto", "tpu", 256, "splash"), ("auto", "tpu", 800, "splash"), ("auto", "gpu", 200, "cudnn"),
    ("auto", "cpu", 256, "xla"), ("xla", "tpu", 256, "xla"), ("splash", "tpu", 1024, "splash"),
    ("splash", "tpu", 200, "splash")])
def test_auto_chooses_by_platform_and_shape(implementation, platform, seq_len, chosen):
    spec = attention_lib.AttentionSpec(implementation=implementation)
    assert attention_lib.resolve(spec, platform=platform, seq_len=seq_len) == chosen


@pytest.mark.parametrize("spec, platform, seq_len, message", [
    (attention_lib.AttentionSpec("splash"), "cpu", 256, "needs a TPU"),
    (attention_lib.AttentionSpec("cudnn"), "tpu", 256, "needs a GPU"),
    (attention_lib.AttentionSpec("splash", block_q=384), "tpu", 1024, "must divide one another"),
    (attention_lib.AttentionSpec("splash", block_q=100), "tpu", 1024, "block_q=100 must be a positive multiple"),
])
def test_an_explicit_choice_that_cannot_run_is_a_one_line_error(spec, platform, seq_len, message):
    with pytest.raises(attention_lib.AttentionError, match=message) as error:
        attention_lib.resolve(spec, platform=platform, seq_len=seq_len)
    assert "\n" not in str(error.value) and "model.attention" in str(error.value)


@pytest.mark.parametrize("field, value, message", [
    ("model.attention", "flash", "must be one of"), ("model.attention_block_q", 100, "must be a positive multiple of 128"),
    ("model.attention_block_kv", 0, "must be a positive multiple of 128")])
def test_attention_config_fields_are_validated(field, value, message):
    config = config_lib.default_config()
    with pytest.raises(config_lib.ConfigError, match=f"config.{field} {message}"):
        config_lib.apply_overrides(config, {field: value})


def test_a_saved_config_without_the_attention_fields_still_loads():
    config = config_lib.default_config()
    del config.model["attention"]
    with pytest.raises(config_lib.ConfigError, match="model.attention is missing"):
        config_lib.validate(config)
    restored = config_lib.with_later_fields(config)
    config_lib.validate(restored)
    assert restored.model.attention == "auto"


def test_auto_picks_splash_when_lowering_for_tpu_topology_devices():
    """An AOT lowering for a v5p topology on this CPU host emits the Pallas TPU kernel (a Mosaic call)."""
    pytest.importorskip("libtpu")
    from deft_jax.aot import programs as compile_lib

    devices = compile_lib.topology_devices(compile_lib.parse_topology("v5p:2x2x1"))
    mesh = Mesh(np.array(devices).reshape(4, 1, 1), ("data", "fsdp", "tensor"))
    spec = attention_lib.AttentionSpec()
    shape = jax.ShapeDtypeStruct((4, 256, 2, 128), jnp.bfloat16)
    ids = jax.ShapeDtypeStruct((4, 256), jnp.int32)
    fn = jax.jit(lambda q, k, v, ids: attention_lib.self_attention(q=q, k=k, v=v, segment_ids=ids,
                                                                   sliding_window=None, spec=spec))
    with sharding_lib.mesh_context(mesh, model_lib.DEFAULT_LOGICAL_RULES):
        text = fn.lower(shape, shape, shape, ids).as_text()
    assert "tpu_custom_call" in text
    with nn.logical_axis_rules(()):
        cpu_text = fn.lower(shape, shape, shape, ids).as_text()
    assert "tpu_custom_call" not in cpu_text
