"""Decoder properties that need no checkpoint: packing, KV cache, scan/remat layouts, logical axes, FLOPs."""
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deft_jax.model import decoder as M
from deft_jax.training import xla_options
from tests.helpers import models

# One compiled forward per (config, shapes): much faster than eager Linen on 2 cores.


@pytest.fixture(scope="module")
def tiny():
    config = M.ModelConfig.tiny()
    return config, M.init_params(config, rng=jax.random.key(0))


def _tokens(shape, seed=1, vocab=256):
    return jax.random.randint(jax.random.key(seed), shape, 0, vocab, dtype=jnp.int32)


def _right_pad(x, length):
    """Right padding is invisible to earlier positions under causal attention; one shape, one compile."""
    return jnp.pad(x, ((0, 0), (0, length - x.shape[1])))


@pytest.mark.parametrize("overrides", [{}, {"sliding_window": 3, "qk_norm": True, "qkv_bias": True}])
def test_packed_row_equals_each_example_alone(overrides):
    config = M.ModelConfig.tiny(**overrides)
    params = M.init_params(config, rng=jax.random.key(0))
    a, b = _tokens((1, 5), seed=2), _tokens((1, 4), seed=3)
    packed = jnp.concatenate([a, b, jnp.zeros((1, 2), jnp.int32)], axis=1)
    segment_ids = jnp.array([[1] * 5 + [2] * 4 + [0] * 2], jnp.int32)
    positions = jnp.array([list(range(5)) + list(range(4)) + [0, 0]], jnp.int32)
    logits = models.forward(params, config, packed, positions=positions, segment_ids=segment_ids)
    alone_a, alone_b = (models.forward(params, config, _right_pad(x, 11))[:, :x.shape[1]] for x in (a, b))
    np.testing.assert_allclose(logits[:, :5], alone_a, atol=1e-5)
    np.testing.assert_allclose(logits[:, 5:9], alone_b, atol=1e-5)
    assert np.isfinite(np.asarray(logits)).all()


def test_packing_without_segment_ids_would_leak(tiny):
    """Guard for the test above: without segment ids the second example does see the first."""
    config, params = tiny
    a, b = _tokens((1, 5), seed=2), _tokens((1, 4), seed=3)
    packed = jnp.concatenate([a, b], axis=1)
    positions = jnp.array([list(range(5)) + list(range(4))], jnp.int32)
    logits = models.forward(params, config, _right_pad(packed, 11), positions=_right_pad(positions, 11))
    alone_b = models.forward(params, config, _right_pad(b, 11))[:, :4]
    assert np.abs(np.asarray(logits[:, 5:9]) - np.asarray(alone_b)).max() > 1e-3


def test_sliding_window_changes_only_far_tokens(tiny):
    config, params = tiny
    config = config.replace(sliding_window=4)
    x = _tokens((2, 10))
    windowed = models.forward(params, config, x)
    full = models.forward(params, config.replace(sliding_window=None), x)
    np.testing.assert_allclose(windowed[:, :4], full[:, :4], atol=1e-6)
    assert np.abs(np.asarray(windowed[:, 4:] - full[:, 4:])).max() > 1e-4


@pytest.mark.parametrize("overrides", [{}, {"sliding_window": 3}, {"scan_layers": False}])
def test_kv_cache_chunks_equal_full_forward(overrides):
    config = M.ModelConfig.tiny(**overrides)
    params = M.init_params(config.replace(scan_layers=True), rng=jax.random.key(0))
    if not config.scan_layers:
        params = M.unstacked_params(params, config)
    x = _tokens((2, 9))
    full = models.forward(params, config, x)
    cache = M.init_cache(config, batch_size=2, max_len=16)
    pieces = []
    for start, stop in [(0, 3), (3, 6), (6, 9)]:  # equal chunks: one compiled cached call
        logits, cache = models.forward(params, config, x[:, start:stop], cache=cache)
        pieces.append(logits)
    np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, atol=1e-5)
    assert int(cache["end"]) == 9


def test_scan_remat_and_unscanned_layouts_agree(tiny):
    config, params = tiny
    x = _tokens((2, 7))
    reference = models.forward(params, config, x)
    remat = models.forward(params, config.replace(remat=True), x)
    unrolled = models.forward(params, config.replace(scan_unroll=config.n_layers + 1), x)
    unscanned_config = config.replace(scan_layers=False)
    unscanned = models.forward(M.unstacked_params(params, config), unscanned_config, x)
    np.testing.assert_allclose(remat, reference, atol=1e-6)
    np.testing.assert_allclose(unrolled, reference, atol=1e-6)
    np.testing.assert_allclose(unscanned, reference, atol=1e-6)
    restacked = M.stacked_params(M.unstacked_params(params, config), config)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: bool((a == b).all()), restacked, params))


def test_return_hidden_projects_to_logits(tiny):
    config, params = tiny
    x = _tokens((2, 6))
    hidden = models.forward(params, config, x, return_hidden=True)
    assert hidden.shape == (2, 6, config.d_model)
    np.testing.assert_allclose(hidden @ M.lm_head_weight(params, config), models.forward(params, config, x), atol=1e-5)


def test_logical_axes_match_params_and_untied_head():
    config = M.ModelConfig.tiny(tie_embeddings=False, qkv_bias=True, qk_norm=True)
    shapes, axes = M.abstract_params(config)
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(axes)
    assert axes == M.param_logical_axes(config)
    for shape, spec in zip(jax.tree_util.tree_leaves(shapes), jax.tree_util.tree_leaves(axes)):
        assert len(spec) == len(shape.shape)
    assert tuple(axes["lm_head"]) == ("embed", "vocab") and shapes["lm_head"].shape == (64, 256)
    assert tuple(axes["layers"]["attn"]["q_proj"]["kernel"]) == ("layers", "embed", "heads", "head_dim")
    assert shapes["layers"]["attn"]["k_proj"]["bias"].shape == (2, 2, 16)
    assert shapes["layers"]["attn"]["q_norm"]["scale"].shape == (2, 16)
    assert M.lm_head_weight(shapes, config) is shapes["lm_head"]
    assert M.count_params(shapes) == M.count_non_embedding_params(config) + 2 * config.vocab_size * config.d_model


def test_abstract_params_inside_an_active_mesh_and_rules():
    """Shapes come out unconstrained whatever context the caller is in (a trainer inside its mesh)."""
    config = M.ModelConfig.tiny()
    expected_shapes, expected_axes = M.abstract_params(config)
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    with jax.set_mesh(mesh), nn.logical_axis_rules((("embed", "data"), ("batch", "data"))):
        shapes, axes = M.abstract_params(config)
    assert axes == expected_axes
    assert jax.tree.map(lambda s: (s.shape, s.dtype), shapes) == jax.tree.map(lambda s: (s.shape, s.dtype),
                                                                               expected_shapes)
    assert all(isinstance(s, jax.ShapeDtypeStruct) for s in jax.tree_util.tree_leaves(shapes))


def test_bf16_params_and_compute():
    config = M.ModelConfig.tiny(param_dtype="bfloat16", dtype="bfloat16")
    params = M.init_params(config, rng=jax.random.key(0))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(params))
    logits = models.forward(params, config, _tokens((1, 4)))
    assert logits.dtype == jnp.float32 and np.isfinite(np.asarray(logits)).all()
    reference = models.forward(jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), params),
                          config.replace(param_dtype="float32", dtype="float32"), _tokens((1, 4)))
    np.testing.assert_allclose(logits, reference, atol=0.1)


def test_flops_per_token_formula():
    config = M.ModelConfig.tiny()
    # Count matmul weights by hand for the tiny config: q,o 64x64; k,v 64x32; 3 MLP 64x128; 2 norms.
    per_layer = 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64
    n = 2 * per_layer + 64
    assert M.count_non_embedding_params(config) == n
    assert M.flops_per_token(config, seq_len=10) == 6 * (n + 64 * 256) + 12 * 2 * 4 * 16 * 10


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="gpt2"):
        M.ModelConfig.tiny(model_type="gpt2")
    with pytest.raises(ValueError, match="multiple"):
        M.ModelConfig.tiny(n_heads=3, n_kv_heads=2)
    with pytest.raises(ValueError, match="yarn"):
        M.ModelConfig.tiny(rope_scaling={"rope_type": "yarn", "factor": 2.0})


def _large_transposes(hlo: str, *, min_elements: int) -> list[str]:
    """`transpose` instructions of the optimised HLO (fusion bodies included) with ≥ min_elements elements."""
    found = []
    for match in re.finditer(r"= [a-z0-9]+\[([\d,]*)\][^ ]* transpose\(", hlo):
        if math.prod(int(d) for d in match.group(1).split(",") if d) >= min_elements:
            found.append(match.group(0))
    return found


def test_layer_backward_transposes_no_activation_gradient():
    """A decoder layer's gradient contracts every projection and both attention products over one merged
    dim, so XLA:CPU transposes nothing activation-sized (contracting over [batch, length] or (group,
    position) separately made it transpose the MLP's and the scores' gradients in slow strided loops)."""
    config = M.ModelConfig.tiny(d_model=64, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=256)
    batch, length = 2, 64
    x = jax.random.normal(jax.random.key(0), (batch, length, config.d_model))
    positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
    segments = jnp.ones((batch, length), jnp.int32)
    layer = M.DecoderLayer(config)
    params = jax.jit(layer.init)(jax.random.key(1), (x, None), positions, segments, None, None)["params"]

    def loss(params, x):
        (out, _), _ = layer.apply({"params": params}, (x, None), positions, segments, None, None)
        return jnp.sum(out**2)

    hlo = jax.jit(jax.grad(loss, argnums=(0, 1)), compiler_options=xla_options.compiler_options()).lower(
        params, x).compile().as_text()
    # Activation gradients have ≥ tokens · d_ff elements (the MLP's) or B·H·T·T (the scores'); kernels
    # (d_model · d_ff) and per-head q/k/v/out rearrangements (tokens · H · hd) are smaller.
    smallest_activation = min(batch * length * config.d_ff, batch * config.n_heads * length * length)
    assert smallest_activation > max(config.d_model * config.d_ff, batch * length * config.n_heads * config.head_dim)
    assert _large_transposes(hlo, min_elements=smallest_activation) == []
