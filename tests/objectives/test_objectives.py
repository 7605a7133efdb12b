"""Objective family: gates vs autodiff and finite differences, limits, parity with an independent NumPy
re-implementation of the official PyTorch formulas (luludus/DEFT `objective_trans`), numerical abuse, bad input, reductions."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deft_jax import objectives as obj

# Every canonical objective with representative parameters.
CASES = [
    ("nll", {}),
    ("prob", {}),
    ("deformed_log", {"alpha": 0.5}),
    ("tsallis", {"q": 0.3}),
    ("only_top_p", {"tau": 0.2}),
    ("only_bottom_p", {"tau": 0.2}),
    ("only_top_logp", {"tau": 0.1}),
    ("only_bottom_logp", {"tau": 0.1}),
    ("dft", {}),
    ("eaft", {}),
    ("cayley", {}),
    ("deft", {}),
]
CASE_IDS = [name for name, _ in CASES]


BATCH = (4, 8)  # one batch shape everywhere: eager op compilations are cached per shape


def random_batch(*, seed, shape=BATCH, vocab=11, scale=3.0, mask_fraction=0.25):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=shape + (vocab,)) * scale).astype(np.float32)
    targets = rng.integers(0, vocab, size=shape).astype(np.int32)
    mask = (rng.random(shape) >= mask_fraction).astype(np.float32)
    mask.reshape(-1)[0] = 1.0
    return logits, targets, mask


# --------------------------------------------------------------------------------------------------
# Independent NumPy reference (float64), written from the official trainer's formulas.
# --------------------------------------------------------------------------------------------------


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def np_topk_entropy(z, k):
    k = min(k, z.shape[-1])
    if k == 1:
        return np.zeros(z.shape[:-1])
    top = np.sort(np.asarray(z, np.float64), axis=-1)[..., -k:]
    log_q = np_log_softmax(top)
    return -(np.exp(log_q) * log_q).sum(-1) / np.log(k)


def np_reference(official, logits, targets, mask):
    """(loss·loss_mask, loss_mask, gate) following the official `objective_trans` branches."""
    log_probs = np_log_softmax(logits)
    log_p = np.take_along_axis(log_probs, targets[..., None].astype(np.int64), -1)[..., 0]
    p = np.exp(log_p)
    loss_mask = np.asarray(mask, np.float64).copy()
    if official in ("original", "logp"):
        loss, gate = -log_p, np.ones_like(p)
    elif official == "p":
        loss, gate = 1 - p, p
    elif official.startswith("GeneralFamily-"):
        a = float(official.split("-")[1])
        loss, gate = -(np.exp(a * log_p) - 1) / a, p**a
    elif official.startswith(("OnlyTopP-", "OnlyBottomP-", "OnlyTopLogP-", "OnlyBottomLogP-")):
        prefix, threshold = official.split("-")
        threshold = float(threshold)
        keep = p >= threshold if prefix.startswith("OnlyTop") else p <= threshold
        loss_mask = loss_mask * keep
        if "LogP" in prefix:
            loss, gate = -log_p, np.ones_like(p)
        else:
            loss, gate = 1 - p, p
    elif official == "DEFT":
        alpha = (np.exp(log_probs) ** 2).sum(-1)
        loss = -(np.exp(alpha * log_p) - 1) / (alpha + 1e-6)
        gate = p**alpha * alpha / (alpha + 1e-6)
    elif official == "Cayley_Trans":
        valid = loss_mask.astype(bool)
        p_mean = p[valid].mean() if valid.sum() > 0 else 0.0
        floor = 0.5 * p_mean
        dist = 1.0 - p + 1e-8
        local = (1.0 - dist) / (1.0 + dist + 1e-8)
        alpha = np.clip(floor + (1.0 - floor) * local, 0.001, 1.0)
        loss = -(np.exp(alpha * log_p) - 1) / (alpha + 1e-8)
        gate = p**alpha * alpha / (alpha + 1e-8)
    # Not in the official repository: DFT (p·(−log p)) and EAFT (H̃^β·(−log p)), from their papers.
    elif official == "dft":
        loss, gate = p * -log_p, p
    elif official.startswith("eaft"):
        weight = np_topk_entropy(logits, 20)
        loss, gate = weight * -log_p, weight
    else:
        raise AssertionError(official)
    return loss * loss_mask, loss_mask, gate * loss_mask


OFFICIAL_CASES = [
    ("original", "nll", {}),
    ("logp", "nll", {}),
    ("p", "prob", {}),
    ("GeneralFamily-0.5", "deformed_log", {"alpha": 0.5}),
    ("GeneralFamily-1.5", "deformed_log", {"alpha": 1.5}),
    ("OnlyTopP-0.2", "only_top_p", {"tau": 0.2}),
    ("OnlyBottomP-0.2", "only_bottom_p", {"tau": 0.2}),
    ("OnlyTopLogP-0.1", "only_top_logp", {"tau": 0.1}),
    ("OnlyBottomLogP-0.1", "only_bottom_logp", {"tau": 0.1}),
    ("Cayley_Trans", "cayley", {}),
    ("DEFT", "deft", {}),
    ("dft", "dft", {}),
    ("eaft", "eaft", {}),
]

WORST_RELATIVE_ERROR = {}


def assert_relative(actual, expected, *, rtol, atol, key):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    error = np.abs(actual - expected)
    np.testing.assert_array_less(error, atol + rtol * np.abs(expected) + 1e-300, err_msg=key)
    significant = np.abs(expected) > 1e-4
    if significant.any():
        worst = float((error[significant] / np.abs(expected[significant])).max())
        WORST_RELATIVE_ERROR[key] = max(worst, WORST_RELATIVE_ERROR.get(key, 0.0))


@pytest.mark.parametrize("official, name, params", OFFICIAL_CASES, ids=[c[0] for c in OFFICIAL_CASES])
def test_parity_with_numpy_reference(official, name, params):
    for seed, vocab in [(0, 11), (1, 2), (2, 11)]:
        logits, targets, mask = random_batch(seed=seed, vocab=vocab)
        ref_loss, ref_kept, ref_gate = np_reference(official, logits, targets, mask)
        out = obj.compute(official if official not in ("dft", "eaft") else name, logits, targets, mask)
        by_name = obj.compute(name, logits, targets, mask, **params)
        np.testing.assert_array_equal(np.asarray(out.loss), np.asarray(by_name.loss))
        if obj.OBJECTIVES[name].thresholded:
            log_p = np.take_along_axis(np_log_softmax(logits), targets[..., None], -1)[..., 0]
            away = np.abs(np.exp(log_p) - params["tau"]) > 1e-5  # float32 vs float64 p at the boundary
            np.testing.assert_array_equal(np.asarray(out.kept)[away], ref_kept[away])
            assert 0 < ref_kept.sum() < mask.sum() or vocab == 2
        else:
            np.testing.assert_array_equal(np.asarray(out.kept), ref_kept)
        key = f"{official}"
        assert_relative(out.loss, ref_loss, rtol=1e-5, atol=1e-8, key=key + " loss")
        assert_relative(out.gate, ref_gate, rtol=1e-5, atol=1e-8, key=key + " gate")
        # Official per-micro-batch normalisation: Σ(loss·mask)/(Σmask + 1e-8), kept tokens only.
        total, denominator = obj.reduce_output(out)
        official_mean = ref_loss.sum() / (ref_kept.sum() + 1e-8)
        assert_relative(obj.safe_divide(total, denominator), official_mean, rtol=2e-5, atol=1e-6,
                        key=key + " mean")


def test_parity_worst_relative_error_is_small():
    """Runs after the parity cases (same module order): the worst relative error over all of them."""
    assert WORST_RELATIVE_ERROR, "parity tests did not run"
    worst = max(WORST_RELATIVE_ERROR.values())
    print(f"worst relative error vs NumPy reference: {worst:.3g} ({max(WORST_RELATIVE_ERROR, key=WORST_RELATIVE_ERROR.get)})")
    assert worst < 1e-5


def synthetic_stats(*, p, collision):
    """TokenStats for given p and C (no logits needed): the objectives read only these fields."""
    log_p = jnp.log(jnp.asarray(p, jnp.float32))
    zeros = jnp.zeros_like(log_p)
    return obj.TokenStats(logsumexp=zeros, target_logit=log_p, log_p=log_p, lse2=zeros,
                          collision=jnp.asarray(collision, jnp.float32), entropy=zeros)


def test_deft_epsilon_matters_near_uniform_and_epsilon_zero_is_exact():
    # Near-uniform over V = 64: C ≈ 1/64; the official 1e-6 shrinks the gate by C/(C + 1e-6).
    logits, targets, mask = random_batch(seed=3, vocab=64, scale=0.05, mask_fraction=0.0)
    ref_loss, _, ref_gate = np_reference("DEFT", logits, targets, mask)
    official = obj.compute("DEFT", logits, targets, mask)
    exact = obj.compute("deft", logits, targets, mask, epsilon=0.0)
    assert_relative(official.gate, ref_gate, rtol=2e-6, atol=0, key="DEFT near-uniform gate")
    assert_relative(official.loss, ref_loss, rtol=2e-6, atol=0, key="DEFT near-uniform loss")
    log_p = np.take_along_axis(np_log_softmax(logits), targets[..., None], -1)[..., 0]
    c = (np.exp(np_log_softmax(logits)) ** 2).sum(-1)
    assert_relative(exact.loss, (1 - np.exp(c * log_p)) / c, rtol=2e-6, atol=0, key="deft eps=0 loss")
    assert_relative(exact.gate, np.exp(c * log_p), rtol=2e-6, atol=0, key="deft eps=0 gate")
    shrink = np.asarray(official.gate, np.float64) / np.asarray(exact.gate, np.float64)
    np.testing.assert_allclose(shrink, c / (c + 1e-6), rtol=1e-6)
    assert shrink.max() < 1 - 3e-5
    # A uniform prediction over Qwen's V = 151,936 gives C = 1/V ≈ 6.6e-6, where the
    # official ε shrinks the gate by ~13%; ε = 0 keeps the exact p^C.
    vocab = 151_936
    stats = synthetic_stats(p=[1 / vocab], collision=[1 / vocab])
    official_gate = float(obj.objective_from_stats("DEFT", stats, [1.0]).gate[0])
    exact_gate = float(obj.objective_from_stats("deft", stats, [1.0], epsilon=0.0).gate[0])
    assert exact_gate == pytest.approx((1 / vocab) ** (1 / vocab), rel=1e-6)
    assert official_gate / exact_gate == pytest.approx(1 / (1 + 1e-6 * vocab), rel=1e-5)
    assert 0.86 < official_gate / exact_gate < 0.88


def test_cayley_floor_clamp_and_batch_coupling():
    logits, targets, mask = random_batch(seed=4, vocab=11, scale=1.0, mask_fraction=0.0)
    # Target logits from -12 to 8: p from ~1e-6 to ~0.99.
    rows = np.arange(BATCH[0])[:, None]
    cols = np.arange(BATCH[1])[None, :]
    logits[rows, cols, targets] = np.linspace(-12.0, 8.0, BATCH[0] * BATCH[1]).reshape(BATCH)
    out = obj.compute("Cayley_Trans", logits, targets, mask)
    ref_loss, _, ref_gate = np_reference("Cayley_Trans", logits, targets, mask)
    assert_relative(out.loss, ref_loss, rtol=2e-6, atol=0, key="cayley loss")
    assert_relative(out.gate, ref_gate, rtol=2e-6, atol=0, key="cayley gate")

    def expected_alpha(p, valid):
        floor = 0.5 * p[valid].mean()
        return np.clip(floor + (1 - floor) * p / (2 - p), 1e-3, 1.0)

    log_p = -np.asarray(out.nll, np.float64)  # float32 log p is accurate; float32 p near 1 is not
    p = np.exp(log_p)
    alpha = expected_alpha(p, mask != 0)
    np.testing.assert_allclose(np.asarray(out.alpha), alpha, rtol=1e-5)
    # The 1e-8 in α* + 1e-8 is visible where α* is small; ε = 0 drops it (exact p/(2 − p) too).
    exact = obj.compute("cayley", logits, targets, mask, epsilon=0.0)
    np.testing.assert_allclose(np.asarray(exact.loss), -np.expm1(alpha * log_p) / alpha, rtol=2e-6)
    # The floor couples the tokens of one call: masking the confident half lowers everyone's α*.
    half = mask.copy()
    half[p > 0.5] = 0
    lower = obj.compute("cayley", logits, targets, half)
    valid = half != 0
    np.testing.assert_allclose(np.asarray(lower.alpha)[valid], expected_alpha(p, valid)[valid], rtol=1e-5)
    assert np.all(np.asarray(lower.alpha)[valid] < np.asarray(out.alpha)[valid])
    # Only very unlikely targets valid: the floor is tiny and the 0.001 clamp binds.
    unlikely = (p < 1e-4).astype(np.float32)
    assert unlikely.sum() >= 3
    clamped = obj.compute("cayley", logits, targets, unlikely)
    np.testing.assert_allclose(np.asarray(clamped.alpha)[unlikely != 0], 1e-3, rtol=1e-6)
    ref_loss, _, _ = np_reference("Cayley_Trans", logits, targets, unlikely)
    assert_relative(clamped.loss, ref_loss, rtol=2e-6, atol=0, key="cayley clamped loss")
    no_eps = obj.compute("cayley", logits, targets, unlikely, epsilon=0.0)
    ratio = np.asarray(clamped.loss, np.float64)[unlikely != 0] / np.asarray(no_eps.loss, np.float64)[unlikely != 0]
    np.testing.assert_allclose(ratio, 1e-3 / (1e-3 + 1e-8), rtol=3e-6)


# --------------------------------------------------------------------------------------------------
# Gates: autodiff in float32, finite differences in float64.
# --------------------------------------------------------------------------------------------------


def softmax_minus_onehot(logits, targets):
    probs = jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1)
    return probs - jax.nn.one_hot(targets, logits.shape[-1], dtype=probs.dtype)


@pytest.mark.parametrize("name, params", CASES, ids=CASE_IDS)
def test_autodiff_gradient_equals_gate_times_error(name, params):
    for seed, vocab in [(5, 2), (6, 11)]:
        logits, targets, mask = random_batch(seed=seed, vocab=vocab)

        def total(z):
            return jnp.sum(obj.compute(name, z, targets, mask, **params).loss)

        grad = jax.grad(total)(jnp.asarray(logits))
        out = obj.compute(name, logits, targets, mask, **params)
        expected = np.asarray(out.gate)[..., None] * np.asarray(softmax_minus_onehot(logits, targets))
        # atol: π_y − 1 for π_y ≈ 1 carries float32's absolute rounding (~6e-8 × gate) either way.
        np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-5, atol=1e-7)
        assert np.all(np.asarray(out.gate)[mask == 0] == 0)
        assert np.all(np.asarray(out.loss)[mask == 0] == 0)


@pytest.mark.parametrize("name, params", CASES, ids=CASE_IDS)
def test_gate_matches_finite_differences_in_float64(name, params):
    """With the objective's detached coefficients frozen at z0, the directional derivative of Σ loss
    (central differences, float64) equals Σ gate·(π − e_y)·v."""
    logits, targets, mask = random_batch(seed=8, vocab=11, scale=1.5)
    direction = np.random.default_rng(9).normal(size=logits.shape)
    with jax.enable_x64(True):
        z0 = jnp.asarray(logits, jnp.float64)
        spec = obj.parse_objective(name, **params)
        topk = obj.required_topk(spec)
        stats0 = obj.token_stats(z0, targets, topk=topk)
        assert stats0.log_p.dtype == jnp.float64
        frozen = obj.detached_coefficients(spec, stats0, mask)

        def total(z):
            stats = obj.token_stats(z, targets, topk=topk)
            return jnp.sum(obj.objective_from_stats(spec, stats, mask, coefficients=frozen).loss)

        step = 1e-5
        v = jnp.asarray(direction)
        numeric = (total(z0 + step * v) - total(z0 - step * v)) / (2 * step)
        out = obj.objective_from_stats(spec, stats0, mask)
        probs = jax.nn.softmax(z0, axis=-1)
        error = probs - jax.nn.one_hot(targets, logits.shape[-1], dtype=jnp.float64)
        analytic = jnp.sum(out.gate[..., None] * error * v)
        np.testing.assert_allclose(float(numeric), float(analytic), rtol=1e-7, atol=1e-10)
        # The autodiff gradient in float64 agrees too (catches a gate that is right only by luck).
        grad = jax.grad(total)(z0)
        np.testing.assert_allclose(np.asarray(grad), np.asarray(out.gate[..., None] * error), rtol=1e-12,
                                   atol=1e-14)


# --------------------------------------------------------------------------------------------------
# Limits and aliases.
# --------------------------------------------------------------------------------------------------


def grad_of(name, logits, targets, mask, **params):
    return np.asarray(jax.grad(lambda z: jnp.sum(obj.compute(name, z, targets, mask, **params).loss))(
        jnp.asarray(logits)))


def test_deformed_log_alpha_to_zero_is_nll():
    logits, targets, mask = random_batch(seed=10, vocab=11)
    nll = obj.compute("nll", logits, targets, mask)
    exact_zero = obj.compute("deformed_log", logits, targets, mask, alpha=0.0)
    np.testing.assert_array_equal(np.asarray(exact_zero.loss), np.asarray(nll.loss))
    np.testing.assert_array_equal(grad_of("deformed_log", logits, targets, mask, alpha=0.0),
                                  grad_of("nll", logits, targets, mask))
    tiny = obj.compute("deformed_log", logits, targets, mask, alpha=1e-7)
    np.testing.assert_allclose(np.asarray(tiny.loss), np.asarray(nll.loss), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad_of("deformed_log", logits, targets, mask, alpha=1e-7),
                               grad_of("nll", logits, targets, mask), rtol=1e-5, atol=1e-7)
    # DEFT with ε = 0 and Cayley with ε = 0 use the same stable form.
    assert np.isfinite(np.asarray(obj.compute("deft", logits, targets, mask, epsilon=0.0).loss)).all()


def test_alpha_one_has_the_gradient_of_prob_and_dft_and_tsallis_matches():
    logits, targets, mask = random_batch(seed=11, vocab=11)
    reference = grad_of("prob", logits, targets, mask)
    np.testing.assert_allclose(grad_of("deformed_log", logits, targets, mask, alpha=1.0), reference,
                               rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(grad_of("dft", logits, targets, mask), reference, rtol=1e-6, atol=1e-8)
    # DFT's logged value differs from −p's: sg(p)·(−log p) vs 1 − p.
    dft, prob = obj.compute("dft", logits, targets, mask), obj.compute("prob", logits, targets, mask)
    assert not np.allclose(np.asarray(dft.loss), np.asarray(prob.loss))
    for alpha in (0.25, 0.7, 2.0):
        tsallis = obj.compute("tsallis", logits, targets, mask, q=1 - alpha)
        deformed = obj.compute("deformed_log", logits, targets, mask, alpha=alpha)
        np.testing.assert_allclose(np.asarray(tsallis.loss), np.asarray(deformed.loss), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(tsallis.gate), np.asarray(deformed.gate), rtol=1e-6)


def test_alias_strings_parse_to_canonical_specs():
    parse = obj.parse_objective
    assert parse("original") == parse("logp") == parse("nll")
    assert parse("p") == parse("prob")
    assert parse("GeneralFamily-0.5") == parse("deformed_log", alpha=0.5)
    assert parse("GeneralFamily-1e-3") == parse("deformed_log", alpha=1e-3)
    assert parse("OnlyTopP-0.3") == parse("only_top_p", tau=0.3)
    assert parse("OnlyBottomP-0.3") == parse("only_bottom_p", tau=0.3)
    assert parse("OnlyTopLogP-0.3") == parse("only_top_logp", tau=0.3)
    assert parse("OnlyBottomLogP-0.3") == parse("only_bottom_logp", tau=0.3)
    assert parse("Cayley_Trans") == parse("cayley", epsilon=1e-8, floor_scale=0.5, alpha_min=1e-3)
    assert parse("DEFT") == parse("deft", epsilon=1e-6)
    assert parse("DEFT", epsilon=0.0).kwargs == {"epsilon": 0.0}
    assert parse("eaft").kwargs == {"k": 20, "power": 1.0}
    assert str(parse("GeneralFamily-0.5")) == "deformed_log(alpha=0.5)"
    spec = parse("deft")
    assert parse(spec, epsilon=0.0) == parse("deft", epsilon=0.0)
    assert hash(spec) == hash(parse("DEFT"))
    assert set(obj.list_objectives()) == {name for name, _ in CASES}
    assert obj.required_topk(parse("eaft", k=7)) == 7 and obj.required_topk(spec) is None


# --------------------------------------------------------------------------------------------------
# Statistics.
# --------------------------------------------------------------------------------------------------


def test_token_stats_match_numpy_including_topk_entropy():
    for vocab, k in [(2, 20), (11, 20), (64, 20), (11, 1), (11, 3)]:
        logits, targets, _ = random_batch(seed=12 + vocab, vocab=vocab)
        stats = obj.token_stats(logits, targets, topk=k)
        log_probs = np_log_softmax(logits)
        probs = np.exp(log_probs)
        z = logits.astype(np.float64)
        m = z.max(-1)
        lse = m + np.log(np.exp(z - m[..., None]).sum(-1))
        np.testing.assert_allclose(np.asarray(stats.logsumexp), lse, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(stats.lse2), 2 * m + np.log(np.exp(2 * (z - m[..., None])).sum(-1)),
                                   rtol=1e-6)
        np.testing.assert_allclose(np.asarray(stats.collision), (probs**2).sum(-1), rtol=2e-6)
        np.testing.assert_allclose(np.asarray(stats.entropy), -(probs * log_probs).sum(-1), rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(stats.topk_entropy), np_topk_entropy(logits, k), rtol=2e-5,
                                   atol=1e-6)
        assert stats.topk == k and stats.log_p.dtype == jnp.float32
    assert obj.token_stats(logits, targets).topk_entropy is None


# --------------------------------------------------------------------------------------------------
# Numerical abuse.
# --------------------------------------------------------------------------------------------------


def all_finite(out):
    return all(np.isfinite(np.asarray(leaf, np.float64)).all() for leaf in jax.tree.leaves(out))


@pytest.mark.parametrize("name, params", CASES, ids=CASE_IDS)
def test_numerical_abuse_stays_finite(name, params):
    vocab = 11
    rng = np.random.default_rng(13)
    huge = (rng.choice([-1e4, 1e4], size=BATCH + (vocab,))).astype(np.float32)
    targets = rng.integers(0, vocab, size=BATCH).astype(np.int32)
    mask = np.ones(BATCH, np.float32)
    # A target whose p underflows to 0 (log p = −2e4 − log 10) and a one-hot prediction (p = 1, C = 1).
    huge[0, 0, :] = 1e4
    huge[0, 0, targets[0, 0]] = -1e4
    huge[0, 1, :] = -1e4
    huge[0, 1, targets[0, 1]] = 1e4
    # A fully masked row with out-of-range (ignored, -100) targets.
    targets[1, :] = -100
    mask[1, :] = 0
    for logits in (huge, huge.astype(jnp.bfloat16)):
        out = obj.compute(name, logits, targets, mask, **params)
        assert all_finite(out), name
        assert out.loss.dtype == jnp.float32
        grad = jax.grad(lambda z: jnp.sum(obj.compute(name, z, targets, mask, **params).loss))(jnp.asarray(logits))
        assert np.isfinite(np.asarray(grad, np.float32)).all()
        gap = float(np.float32(logits[0, 0, targets[0, 0] - 1]) - np.float32(logits[0, 0, targets[0, 0]]))
        assert float(out.p[0, 0]) == 0.0 and float(out.nll[0, 0]) == pytest.approx(gap + np.log(vocab - 1))
        assert float(out.p[0, 1]) == 1.0 and float(out.collision[0, 1]) == 1.0 and float(out.entropy[0, 1]) == 0.0
        assert np.all(np.asarray(out.loss)[1] == 0) and np.all(np.asarray(grad, np.float32)[1] == 0)
    # All-masked batch: loss 0 and a zero denominator for every normalisation, no NaN.
    out = obj.compute(name, huge, targets, np.zeros_like(mask), **params)
    assert all_finite(out) and float(jnp.sum(out.loss)) == 0.0
    for normalization in obj.NORMALIZATIONS:
        total, denominator = obj.reduce_output(out, normalization=normalization)
        assert float(total) == 0.0 and float(denominator) == 0.0
        assert float(obj.safe_divide(total, denominator)) == 0.0


def test_bf16_logits_give_float32_statistics_of_the_rounded_values():
    logits, targets, mask = random_batch(seed=14, vocab=11)
    low = jnp.asarray(logits, jnp.bfloat16)
    out_bf16 = obj.compute("deft", low, targets, mask)
    out_f32 = obj.compute("deft", np.asarray(low, np.float32), targets, mask)
    assert out_bf16.loss.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out_bf16.loss), np.asarray(out_f32.loss))


# --------------------------------------------------------------------------------------------------
# Bad input.
# --------------------------------------------------------------------------------------------------


def test_unknown_name_lists_valid_names_and_aliases():
    with pytest.raises(ValueError) as info:
        obj.parse_objective("focal")
    message = str(info.value)
    for name in obj.list_objectives():
        assert name in message
    for alias in ("original", "logp", "GeneralFamily-<alpha>", "OnlyTopP-<tau>", "OnlyBottomLogP-<tau>",
                  "Cayley_Trans", "DEFT"):
        assert alias in message
    with pytest.raises(ValueError, match="needs its alpha in the name"):
        obj.parse_objective("GeneralFamily")
    with pytest.raises(ValueError, match="not a number"):
        obj.parse_objective("OnlyTopP-high")


@pytest.mark.parametrize("name, params, pattern", [
    ("only_top_p", {"tau": 1.5}, "'tau' must be <= 1"),
    ("OnlyBottomP-1.5", {}, "'tau' must be <= 1"),
    ("only_bottom_logp", {"tau": -0.1}, "'tau' must be >= 0"),
    ("deformed_log", {"alpha": -0.5}, "'alpha' must be >= 0.*diverge"),
    ("tsallis", {"q": 1.5}, "'q' must be <= 1"),
    ("eaft", {"k": 0}, "'k' must be >= 1"),
    ("eaft", {"k": 2.5}, "'k' must be an integer"),
    ("eaft", {"power": -1.0}, "'power' must be >= 0"),
    ("deft", {"epsilon": -1e-6}, "'epsilon' must be >= 0"),
    ("deft", {"epsilon": float("nan")}, "'epsilon' must be finite"),
    ("cayley", {"alpha_min": 0.9, "alpha_max": 0.5}, "alpha_min"),
    ("deformed_log", {}, "needs parameter 'alpha'"),
    ("nll", {"alpha": 0.5}, "unknown parameter"),
    ("GeneralFamily-0.5", {"alpha": 0.3}, "do not also pass alpha"),
    ("prob", {"tau": True}, "unknown parameter"),
    ("only_top_p", {"tau": "0.5"}, "must be a number"),
])
def test_out_of_range_parameters_raise(name, params, pattern):
    with pytest.raises(ValueError, match=pattern):
        obj.parse_objective(name, **params)


def test_shape_and_dtype_mismatches_name_the_argument():
    logits, targets, mask = random_batch(seed=15)
    cases = [
        ((logits.astype(np.int32), targets, mask), "logits must have a floating dtype"),
        ((logits, targets.astype(np.float32), mask), "targets must have an integer dtype"),
        ((logits, targets[:, :-1], mask), "targets must have shape"),
        ((logits, targets, mask[:, :-1]), "mask must have the targets' shape"),
        ((logits, targets, mask.astype(np.complex64)), "mask must be bool"),
    ]
    for args, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            obj.compute("nll", *args)
    bad_targets = targets.copy()
    bad_targets[0, 0] = logits.shape[-1]
    with pytest.raises(ValueError, match=r"targets: 1 unmasked target\(s\) outside"):
        obj.compute("nll", logits, bad_targets, mask)
    stats = obj.token_stats(logits, targets)
    with pytest.raises(ValueError, match="token_stats\\(..., topk=20\\)"):
        obj.objective_from_stats("eaft", stats, mask)
    with pytest.raises(ValueError, match="topk must be"):
        obj.token_stats(logits, targets, topk=0)
    # Under jit the range check cannot run: an unmasked out-of-range target is NaN, never a fallback.
    jitted = jax.jit(functools.partial(obj.compute, "nll"))
    assert np.isnan(np.asarray(jitted(logits, bad_targets, mask).loss)[0, 0])
    with pytest.raises(ValueError, match="static Python numbers"):
        jax.jit(lambda a: obj.compute("deformed_log", logits, targets, mask, alpha=a))(0.5)


# --------------------------------------------------------------------------------------------------
# Reductions, metrics, jit and pytrees.
# --------------------------------------------------------------------------------------------------


def np_sequence_mean_pair(loss, mask, segment_ids=None):
    total, count = 0.0, 0
    for row in range(loss.shape[0]):
        ids = np.ones(loss.shape[1], int) if segment_ids is None else segment_ids[row]
        start = 0
        for t in range(1, loss.shape[1] + 1):
            if t == loss.shape[1] or ids[t] != ids[start]:
                if ids[start] != 0 and mask[row, start:t].sum() > 0:
                    total += loss[row, start:t].sum() / mask[row, start:t].sum()
                    count += 1
                start = t
    return total, count


def test_reduce_normalisations_match_numpy():
    logits, targets, mask = random_batch(seed=16, vocab=11)
    mask[2, :] = 0  # an empty sequence is not counted
    mask[3, :] = 1
    out = obj.compute("deformed_log", logits, targets, mask, alpha=0.5)
    loss = np.asarray(out.loss, np.float64)
    total, denominator = obj.reduce(loss=out.loss, mask=out.kept)
    np.testing.assert_allclose([float(total), float(denominator)], [loss.sum(), mask.sum()], rtol=1e-6)

    total, denominator = obj.reduce(loss=out.loss, mask=out.kept, normalization="sequence")
    np.testing.assert_allclose([float(total), float(denominator)], np_sequence_mean_pair(loss, mask), rtol=1e-6)
    assert float(denominator) == 3

    segment_ids = np.array([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 2, 2, 2, 2], [1, 1, 2, 2, 0, 0, 0, 0],
                            [5, 5, 5, 5, 5, 5, 5, 5]])
    mask[0, 5] = 0  # segment 3 of row 0 becomes empty
    out = obj.compute("deformed_log", logits, targets, mask, alpha=0.5)
    loss = np.asarray(out.loss, np.float64)
    total, denominator = obj.reduce_output(out, normalization="sequence", segment_ids=segment_ids)
    np.testing.assert_allclose([float(total), float(denominator)],
                               np_sequence_mean_pair(loss, mask, segment_ids), rtol=1e-6)
    assert float(denominator) == 5

    total, denominator = obj.reduce_output(out, normalization="gate")
    np.testing.assert_allclose([float(total), float(denominator)],
                               [loss.sum(), np.asarray(out.gate, np.float64).sum()], rtol=1e-6)

    with pytest.raises(ValueError, match="normalization must be one of"):
        obj.reduce(loss=out.loss, mask=out.kept, normalization="mean")
    with pytest.raises(ValueError, match="needs gate="):
        obj.reduce(loss=out.loss, mask=out.kept, normalization="gate")
    with pytest.raises(ValueError, match="segment_ids must have"):
        obj.reduce(loss=out.loss, mask=out.kept, normalization="sequence", segment_ids=segment_ids[:, :3])


def test_gate_normalisation_gives_a_gate_weighted_average_of_nll_gradients():
    logits, targets, mask = random_batch(seed=17, vocab=11)

    def gate_normalised(z):
        out = obj.compute("deft", z, targets, mask)
        return obj.safe_divide(*obj.reduce_output(out, normalization="gate"))

    grad = np.asarray(jax.grad(gate_normalised)(jnp.asarray(logits)))
    gate = np.asarray(obj.compute("deft", logits, targets, mask).gate, np.float64)
    error = np.asarray(softmax_minus_onehot(logits, targets), np.float64)
    np.testing.assert_allclose(grad, gate[..., None] * error / gate.sum(), rtol=1e-5, atol=1e-8)
    # vs the token mean the update is divided by the mean gate: larger when gates are small.
    token_grad = np.asarray(jax.grad(lambda z: obj.safe_divide(*obj.reduce_output(obj.compute("deft", z, targets, mask))))(
        jnp.asarray(logits)))
    np.testing.assert_allclose(grad * (gate.sum() / mask.sum()), token_grad, rtol=1e-5, atol=1e-8)


def test_threshold_token_mean_counts_kept_tokens_only():
    logits, targets, mask = random_batch(seed=18, vocab=11)
    out = obj.compute("OnlyTopP-0.3", logits, targets, mask)
    kept = np.asarray(out.kept)
    assert 0 < kept.sum() < mask.sum()
    _, denominator = obj.reduce_output(out)
    assert float(denominator) == kept.sum()
    metrics = obj.token_metrics(out, mask)
    frac_sum, frac_count = metrics["kept_fraction"]
    assert float(frac_sum) == kept.sum() and float(frac_count) == mask.sum()


def test_token_metrics_are_sums_and_counts_over_valid_tokens():
    logits, targets, mask = random_batch(seed=19, vocab=11)
    out = obj.compute("eaft", logits, targets, mask)
    metrics = obj.token_metrics(out, mask)
    log_p = np.take_along_axis(np_log_softmax(logits), targets[..., None], -1)[..., 0]
    valid = mask != 0
    expected = {
        "nll": -log_p, "p": np.exp(log_p), "entropy": -(np.exp(np_log_softmax(logits)) * np_log_softmax(logits)).sum(-1),
        "topk_entropy": np_topk_entropy(logits, 20), "gate": np_topk_entropy(logits, 20),
    }
    for key, values in expected.items():
        total, count = metrics[key]
        assert float(count) == valid.sum()
        np.testing.assert_allclose(float(total), values[valid].sum(), rtol=1e-5)
    assert "alpha" not in metrics
    assert "alpha" in obj.token_metrics(obj.compute("deft", logits, targets, mask), mask)


def test_jit_with_static_name_matches_eager_and_output_is_a_pytree():
    logits, targets, mask = random_batch(seed=20, vocab=11)
    for name, params in [("cayley", {}), ("eaft", {"k": 4}), ("OnlyBottomP-0.5", {})]:
        eager = obj.compute(name, logits, targets, mask, **params)
        jitted = jax.jit(functools.partial(obj.compute, name, **params))(logits, targets, mask)
        assert isinstance(jitted, obj.ObjectiveOutput)
        for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    spec = obj.parse_objective("deft")
    stats = obj.token_stats(logits, targets)
    out = jax.jit(obj.objective_from_stats, static_argnums=0)(spec, stats, mask)
    assert len(jax.tree.leaves(out)) == 8  # loss gate nll p kept entropy collision alpha


def test_topk_entropy_compiles_to_a_top_k_not_a_full_vocabulary_sort():
    """XLA:CPU turned top_k + a slice of its values into a sort of all V logits (EAFT's step 30x slower)."""
    logits = jnp.zeros((2, 3, 4096), jnp.float32)
    targets = jnp.zeros((2, 3), jnp.int32)
    mask = jnp.ones((2, 3), jnp.float32)

    def loss(z):
        return obj.reduce_output(obj.compute("eaft", z, targets, mask))[0]

    hlo = jax.jit(jax.value_and_grad(loss)).lower(logits).compile().as_text()
    assert " sort(" not in hlo
