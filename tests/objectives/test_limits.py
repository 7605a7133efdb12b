"""The numerics corners stay finite: the scaled NLL at a target logit of minus infinity is its limit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest


@pytest.mark.parametrize("name", ["dft", "eaft"])
def test_scaled_nll_at_a_minus_infinite_target_logit_is_its_limit(name):
    """s·(−log p) with s = p (DFT) at log p = −inf is 0·∞; its limit (log p → −inf) is 0 with zero gradient,
    which is what a very negative finite logit (p underflows to 0) gives. EAFT's s = H̃^β > 0 keeps +inf."""
    from deft_jax import objectives

    rng = np.random.default_rng(0)
    finite = jnp.asarray(rng.standard_normal((3, 7)).astype(np.float32))
    targets, mask = jnp.asarray([2, 4, 0]), jnp.asarray([1.0, 1.0, 1.0])
    far = finite.at[0, 2].set(-1e4)
    infinite = finite.at[0, 2].set(-jnp.inf)

    @jax.jit
    def loss_and_grad(logits):
        def total(logits):
            output = objectives.compute(name, logits, targets, mask)
            return jnp.sum(output.loss), output.loss
        return jax.value_and_grad(total, has_aux=True)(logits)

    (_, loss_far), grad_far = loss_and_grad(far)
    (_, loss_inf), grad_inf = loss_and_grad(infinite)
    assert np.array_equal(np.asarray(loss_inf)[1:], np.asarray(loss_far)[1:])
    assert np.all(np.isfinite(grad_inf)) and np.array_equal(np.asarray(grad_inf), np.asarray(grad_far))
    if name == "dft":
        assert float(loss_inf[0]) == float(loss_far[0]) == 0.0
    else:
        assert float(loss_inf[0]) == np.inf
