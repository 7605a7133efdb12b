"""The train step's norm, clip and skip are optax's, with the numerics of the hand-written step they replaced,
and a checkpoint written before the change restores into today's state layout."""
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deft_jax import objectives
from deft_jax.model import decoder as model_lib
from deft_jax.training import checkpointing
from deft_jax.training import step as step_lib
from tests.helpers.compiling import compile_as_users

MODEL = model_lib.ModelConfig.tiny(vocab_size=64)
OPTIMIZER = step_lib.make_optimizer(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.01)
SCHEDULE = step_lib.Schedule(lr=1e-3, total_steps=10, warmup_ratio=0.0).as_arrays()
FIXTURE = pathlib.Path(__file__).parents[1] / "fixtures" / "checkpoint_before_optax_skip"


def _batch(*, rows=2, length=8, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, MODEL.vocab_size, size=(rows, length + 1)).astype(np.int32)
    return {"inputs": tokens[:, :-1].copy(), "targets": tokens[:, 1:].copy(),
            "loss_mask": np.ones((rows, length), np.float32),
            "positions": np.tile(np.arange(length, dtype=np.int32), (rows, 1)),
            "segment_ids": np.ones((rows, length), np.int32)}


def _spec(*, clip_norm, objective="deft"):
    loss = step_lib.LossSpec(model_config=MODEL, objective=objectives.parse_objective(objective))
    return step_lib.StepSpec(loss=loss, optimizer=OPTIMIZER, clip_norm=clip_norm)


def _reference_step(state, batch, *, spec, clip_scale):
    """The hand-written step as it was: norm in float32, g · scale, where-select of the skip."""
    loss, grads, _ = step_lib.accumulate_gradients(state.params, batch, loss=spec.loss, num_micro_batches=1)
    norm = jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(grads)))
    if spec.clip_norm > 0:
        grads = clip_scale(grads, norm, spec.clip_norm)
    lr = step_lib.scheduled_learning_rate(state.step, SCHEDULE)
    direction, opt_state = spec.optimizer.update(grads, state.opt_state, state.params)
    params = jax.tree.map(lambda p, u: (p - lr * u).astype(p.dtype), state.params, direction)
    finite = jnp.isfinite(loss) & jnp.isfinite(norm)
    params = jax.tree.map(lambda new, old: jnp.where(finite, new, old), params, state.params)
    opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), opt_state, state.opt_state)
    return params, opt_state, norm, finite


def _old_clip(grads, norm, clip):  # g · (c / ‖g‖) when ‖g‖ > c
    scale = jnp.where(norm > clip, clip / norm, 1.0)
    return jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)


def _optax_formula_clip(grads, norm, clip):  # (g / ‖g‖) · c when ‖g‖ >= c
    return jax.tree.map(lambda g: jnp.where(norm < clip, g, (g / norm) * clip), grads)


_COMPILED_STEPS = {}  # clip -> the project's train step, compiled once (the two clipped comparisons share it)


def _run_both(*, clip_norm, clip_scale, batch):
    """Both steps compiled as users' are: their results are compared bit for bit."""
    spec = _spec(clip_norm=clip_norm)
    state = step_lib.new_state(model_lib.init_params(MODEL, rng=jax.random.PRNGKey(0)), optimizer=OPTIMIZER, seed=0)
    if clip_norm not in _COMPILED_STEPS:
        _COMPILED_STEPS[clip_norm] = compile_as_users(
            lambda s, b: step_lib.train_step(s, b, SCHEDULE, spec=spec), state, batch)
    new, metrics = _COMPILED_STEPS[clip_norm](state, batch)
    want = compile_as_users(lambda s, b: _reference_step(s, b, spec=spec, clip_scale=clip_scale), state, batch)(
        state, batch)
    return state, new, metrics, want


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def test_unclipped_step_is_bit_identical_to_the_hand_written_step():
    _, new, metrics, (params, opt_state, norm, finite) = _run_both(clip_norm=1e6, clip_scale=_old_clip,
                                                                   batch=_batch())
    assert float(metrics["optim/grad_norm"]) == float(norm) and bool(finite)
    for got, want in zip(_leaves((new.params, new.opt_state)), _leaves((params, opt_state))):
        assert got.dtype == want.dtype and np.array_equal(got, want)


def test_clipped_step_is_optax_formula_exactly_and_the_old_one_to_rounding():
    before, new, metrics, (params, opt_state, norm, _) = _run_both(clip_norm=1e-3,
                                                                   clip_scale=_optax_formula_clip, batch=_batch())
    assert float(norm) > 1e-3  # the clip is active
    for got, want in zip(_leaves((new.params, new.opt_state)), _leaves((params, opt_state))):
        assert np.array_equal(got, want)
    _, _, _, (_, old_opt_state, _, _) = _run_both(clip_norm=1e-3, clip_scale=_old_clip, batch=_batch())
    # Adam's moments hold the clipped gradient: (g / ‖g‖) · c and g · (c / ‖g‖) differ by rounding only.
    for got, old in zip(_leaves(new.opt_state[0].mu), _leaves(old_opt_state[0].mu)):
        np.testing.assert_allclose(got, old, rtol=1e-6, atol=0)
    gradients = jax.jit(lambda p, b: step_lib.accumulate_gradients(p, b, loss=_spec(clip_norm=0).loss,
                                                                   num_micro_batches=1)[1])
    unclipped_mu = 0.1 * np.concatenate([g.ravel() for g in _leaves(gradients(before.params, _batch()))])
    clipped_mu = np.concatenate([m.ravel() for m in _leaves(new.opt_state[0].mu)])
    np.testing.assert_allclose(clipped_mu, unclipped_mu * (1e-3 / float(norm)), rtol=1e-4, atol=1e-12)


def test_a_nan_loss_with_a_finite_gradient_is_skipped():
    """A target outside the vocabulary gives a NaN loss whose gradient is finite (optax.apply_if_finite,
    which looks at the update alone, would apply it): the step keeps params and moments and counts it."""
    bad = _batch()
    bad["targets"][0, 3] = MODEL.vocab_size
    spec = _spec(clip_norm=1.0, objective="nll")
    state = step_lib.new_state(model_lib.init_params(MODEL, rng=jax.random.PRNGKey(0)), optimizer=OPTIMIZER, seed=0)
    _, grads, _ = jax.jit(lambda p, b: step_lib.accumulate_gradients(p, b, loss=spec.loss,
                                                                     num_micro_batches=1))(state.params, bad)
    assert all(np.isfinite(g).all() for g in _leaves(grads))
    new, metrics = jax.jit(lambda s, b: step_lib.train_step(s, b, SCHEDULE, spec=spec))(state, bad)
    assert np.isnan(float(metrics["train/loss"])) and float(metrics["optim/finite"]) == 0
    assert int(new.skipped_steps) == 1 and int(new.step) == 1
    for got, want in zip(_leaves((new.params, new.opt_state)), _leaves((state.params, state.opt_state))):
        assert np.array_equal(got, want)


def _fixture_tree(seed):
    rng = np.random.default_rng(seed)
    return {"dense": {"kernel": rng.standard_normal((3, 4)).astype(np.float32),
                      "bias": rng.standard_normal((4,)).astype(np.float32)},
            "embedding": rng.standard_normal((5, 3)).astype(np.float32)}


def test_a_checkpoint_written_before_restores_into_todays_state(tmp_path):
    """tests/fixtures/checkpoint_before_optax_skip was saved by the hand-written step's code: params
    _fixture_tree(0), Adam mu _fixture_tree(1), nu |_fixture_tree(2)|, count 5, step 5, 1 skipped step."""
    shutil.copytree(FIXTURE, tmp_path / "checkpoints")
    params = _fixture_tree(0)
    abstract = jax.eval_shape(lambda p: step_lib.new_state(p, optimizer=OPTIMIZER, seed=0), params)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract)
    manager = checkpointing.make_manager(directory=tmp_path / "checkpoints", read_only=True, async_save=False)
    try:
        state, data_state, step = checkpointing.restore(manager, target=target)
    finally:
        manager.close()
    assert step == 5 and data_state == {"cursor": 40, "epoch": 2}
    assert int(state.step) == 5 and int(state.skipped_steps) == 1 and int(state.opt_state[0].count) == 5
    expected = [params, _fixture_tree(1), jax.tree.map(np.abs, _fixture_tree(2))]
    for got, want in zip([state.params, state.opt_state[0].mu, state.opt_state[0].nu], expected):
        for a, b in zip(_leaves(got), _leaves(want)):
            assert np.array_equal(a, b)
    assert jax.tree.structure(state) == jax.tree.structure(abstract)  # today's layout, nothing left over


@pytest.mark.parametrize("tree", [{"a": np.float32([3.0, 4.0])}, {"a": jnp.bfloat16([3.0, 4.0]), "b": np.ones(3)}])
def test_global_norm_is_float32(tree):
    leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]
    want = np.sqrt(sum(np.sum(x * x) for x in leaves))
    got = step_lib.global_norm(tree)
    assert got.dtype == jnp.float32 and float(got) == pytest.approx(want, rel=1e-7)
