"""The chunked lm-head + objective path equals the naive path (values and gradients) for every objective,
unsharded and with the vocabulary sharded over a mesh axis; its memory does not grow with N·V."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from deft_jax.training import step as step_lib
from deft_jax.objectives import fused
from deft_jax import objectives

OBJECTIVE_CASES = [
    ("nll", {}), ("prob", {}), ("deformed_log", {"alpha": 0.5}), ("tsallis", {"q": 0.25}),
    ("only_top_p", {"tau": 0.02}), ("only_bottom_p", {"tau": 0.02}), ("only_top_logp", {"tau": 0.02}),
    ("only_bottom_logp", {"tau": 0.02}), ("dft", {}), ("eaft", {}), ("cayley", {}), ("deft", {}),
    ("deft", {"epsilon": 0.0}),
]
assert {name for name, _ in OBJECTIVE_CASES} == set(objectives.list_objectives())


def _problem(*, n_rows=3, length=7, d=16, vocab=97, seed=0):
    rng = np.random.default_rng(seed)
    hidden = jnp.asarray(rng.normal(size=(n_rows, length, d)), jnp.float32)
    # Scaled so that p spans a wide range (some confident tokens, some near-uniform ones).
    weight = jnp.asarray(rng.normal(size=(d, vocab)) * 0.8, jnp.float32)
    targets = jnp.asarray(rng.integers(0, vocab, size=(n_rows, length)), jnp.int32)
    # Make a third of the targets the argmax so p is large there.
    argmax = jnp.argmax(fused.lm_head_logits(hidden, weight), axis=-1).astype(jnp.int32)
    targets = jnp.where(jnp.asarray(rng.random((n_rows, length)) < 0.33), argmax, targets)
    mask = jnp.asarray(rng.random((n_rows, length)) < 0.8, jnp.float32)
    return hidden, weight, targets, mask


def _mean_loss(compute_fn, name, params, normalization="token"):
    def loss(hidden, weight, targets, mask):
        out = compute_fn(name, hidden, weight, targets, mask, **params)
        total, denom = objectives.reduce_output(out, normalization=normalization)
        return objectives.safe_divide(total, denom), out
    return loss


def _rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


CHUNKED_CASES = [(name, params, 8) for name, params in OBJECTIVE_CASES] + [
    ("deft", {}, 4), ("deft", {}, 64), ("cayley", {}, 64)]  # 21 tokens: padded last chunk; one chunk


@pytest.mark.parametrize("name,params,chunk_size", CHUNKED_CASES, ids=lambda x: str(x))
def test_chunked_equals_naive(name, params, chunk_size):
    hidden, weight, targets, mask = _problem()
    naive = jax.jit(jax.value_and_grad(_mean_loss(fused.compute_naive, name, params), argnums=(0, 1),
                                       has_aux=True))
    chunked = jax.jit(jax.value_and_grad(
        _mean_loss(lambda *a, **k: fused.compute_chunked(*a, chunk_size=chunk_size, **k), name, params),
        argnums=(0, 1), has_aux=True))
    (v_naive, out_naive), (gh_naive, gw_naive) = naive(hidden, weight, targets, mask)
    (v_chunk, out_chunk), (gh_chunk, gw_chunk) = chunked(hidden, weight, targets, mask)
    assert np.abs(np.asarray(gw_naive)).max() > 0  # the comparison is not vacuous
    assert _rel_err(v_chunk, v_naive) <= 1e-5
    assert _rel_err(out_chunk.loss, out_naive.loss) <= 1e-5
    assert _rel_err(out_chunk.gate, out_naive.gate) <= 1e-5
    assert _rel_err(gh_chunk, gh_naive) <= 1e-5
    assert _rel_err(gw_chunk, gw_naive) <= 1e-5


@pytest.mark.parametrize("normalization", ["sequence", "gate"])
def test_chunked_equals_naive_other_normalizations(normalization):
    hidden, weight, targets, mask = _problem(seed=3)
    for name, params in [("deft", {}), ("cayley", {})]:
        grads = []
        for fn in (fused.compute_naive, lambda *a, **k: fused.compute_chunked(*a, chunk_size=5, **k)):
            grads.append(jax.grad(_mean_loss(fn, name, params, normalization), argnums=(0, 1),
                                  has_aux=True)(hidden, weight, targets, mask)[0])
        for a, b in zip(grads[1], grads[0]):
            assert _rel_err(a, b) <= 1e-5


def test_bf16_hidden_and_weight_match_naive():
    hidden, weight, targets, mask = _problem(seed=4)
    hidden, weight = hidden.astype(jnp.bfloat16), weight.astype(jnp.bfloat16)
    naive = jax.grad(_mean_loss(fused.compute_naive, "deft", {}), argnums=(0, 1), has_aux=True)
    chunked = jax.grad(_mean_loss(lambda *a, **k: fused.compute_chunked(*a, chunk_size=8, **k), "deft", {}),
                       argnums=(0, 1), has_aux=True)
    for a, b in zip(chunked(hidden, weight, targets, mask)[0], naive(hidden, weight, targets, mask)[0]):
        assert a.dtype == jnp.bfloat16
        assert _rel_err(a.astype(jnp.float32), b.astype(jnp.float32)) <= 2e-2  # bf16 output rounding


@pytest.mark.parametrize("name,params", [("deft", {}), ("eaft", {}), ("cayley", {}), ("nll", {})])
def test_vocab_sharded_equals_unsharded(name, params):
    """Weight sharded [D, V/8] over an 8-device 'tensor' axis; statistics reduce across devices."""
    devices = jax.devices()
    assert len(devices) == 8, "conftest sets 8 fake CPU devices"
    mesh = jax.make_mesh((1, 8), ("data", "tensor"), devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,) * 2)
    hidden, weight, targets, mask = _problem(vocab=128, seed=5)
    loss = _mean_loss(lambda *a, **k: fused.compute_chunked(
        *a, chunk_size=8, vocab_sharding=NamedSharding(mesh, P(None, "tensor")), **k), name, params)
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True),
                   in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P(None, "tensor")),
                                 NamedSharding(mesh, P()), NamedSharding(mesh, P())))
    (value, _), (g_hidden, g_weight) = step(hidden, weight, targets, mask)
    assert g_weight.sharding.spec == P(None, "tensor") or g_weight.sharding.is_fully_replicated is False
    (ref_value, _), (ref_h, ref_w) = jax.value_and_grad(
        _mean_loss(fused.compute_naive, name, params), argnums=(0, 1), has_aux=True)(hidden, weight, targets, mask)
    assert _rel_err(value, ref_value) <= 1e-5
    assert _rel_err(g_hidden, ref_h) <= 1e-5
    assert _rel_err(g_weight, ref_w) <= 1e-5


def _temp_bytes(fn, *args):
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_chunked_memory_grows_with_chunk_not_tokens():
    """XLA's own accounting: the naive path's temporaries grow like N·V; the chunked path's like c·V."""
    d, vocab, chunk = 32, 4096, 64

    def grad_fn(compute_fn):
        return jax.grad(_mean_loss(compute_fn, "deft", {}), argnums=(0, 1), has_aux=True)

    chunked = grad_fn(lambda *a, **k: fused.compute_chunked(*a, chunk_size=chunk, **k))
    naive = grad_fn(fused.compute_naive)
    sizes = {}
    for n in (512, 2048):
        args = (jnp.zeros((n, d)), jnp.zeros((d, vocab)), jnp.zeros((n,), jnp.int32), jnp.ones((n,)))
        sizes[n] = (_temp_bytes(chunked, *args), _temp_bytes(naive, *args))
    logits_bytes = 4 * vocab  # one float32 logits row
    # Naive: 1536 extra tokens cost at least one [N, V] float32 block each.
    assert sizes[2048][1] - sizes[512][1] >= 1536 * logits_bytes
    # Chunked: 1536 extra tokens cost far less than one logits row each (only O(N·D) activations).
    assert sizes[2048][0] - sizes[512][0] < 0.1 * 1536 * logits_bytes
    assert sizes[2048][0] < 0.25 * sizes[2048][1]


def test_bad_input_errors():
    hidden, weight, targets, mask = _problem()
    with pytest.raises(ValueError, match="chunk_size"):
        fused.compute_chunked("nll", hidden, weight, targets, mask, chunk_size=0)
    with pytest.raises(ValueError, match="d_model"):
        fused.compute_chunked("nll", hidden, weight.T, targets, mask)
    with pytest.raises(ValueError, match="targets must have shape"):
        fused.compute_chunked("nll", hidden, weight, targets[:, :3], mask)
    with pytest.raises(ValueError, match="unknown objective"):
        fused.compute_chunked("nope", hidden, weight, targets, mask)


@pytest.mark.parametrize("name,params", [("deft", {})])
def test_trainer_loss_chunked_equals_naive(name, params):
    """Through the trainer's own loss path (tiny decoder, packed-style batch): same sum, denominator,
    metrics and parameter gradients with config.loss.impl = 'chunked' as with 'naive'."""
    from deft_jax.model import decoder as model_lib

    config = model_lib.ModelConfig.tiny()
    model_params = model_lib.init_params(config, rng=jax.random.PRNGKey(0))
    rng = np.random.default_rng(7)
    batch = {
        "inputs": jnp.asarray(rng.integers(0, config.vocab_size, (2, 12)), jnp.int32),
        "targets": jnp.asarray(rng.integers(0, config.vocab_size, (2, 12)), jnp.int32),
        "loss_mask": jnp.asarray(rng.random((2, 12)) < 0.7, jnp.float32),
        "positions": jnp.asarray(np.tile(np.r_[np.arange(5), np.arange(7)], (2, 1)), jnp.int32),
        "segment_ids": jnp.asarray(np.tile(np.r_[np.ones(5), 2 * np.ones(7)], (2, 1)), jnp.int32),
    }
    spec = objectives.parse_objective(name, **params)
    results = {}
    for impl in ("naive", "chunked"):
        loss = step_lib.LossSpec(model_config=config, objective=spec, impl=impl, chunk_size=5)
        (total, aux), grads = jax.jit(jax.value_and_grad(
            lambda p, b: step_lib.loss_fn(p, b, loss=loss), has_aux=True))(model_params, batch)
        results[impl] = (total, aux, grads)
    (t_n, aux_n, g_n), (t_c, aux_c, g_c) = results["naive"], results["chunked"]
    assert _rel_err(t_c, t_n) <= 1e-5
    for key in aux_n:
        np.testing.assert_allclose(np.asarray(aux_c[key]), np.asarray(aux_n[key]), rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(g_c), jax.tree.leaves(g_n)):
        assert _rel_err(a, b) <= 1e-4  # accumulated through the whole decoder in float32
