"""The deformed-log value and its gate (custom JVP), Cayley's α*, and the detached Coefficients.

    deformed_value_and_gate(log_p, alpha, epsilon)  (1 − p^α)/(α + ε), gate p^α · α/(α + ε)
    cayley_alpha(p, batch_mean_p, ...)              α* = clamp(f + (1 − f)(1 − r)/(1 + r), α_min, α_max)
"""
from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp


def deformed_value_and_gate(*, log_p, alpha, epsilon=0.0):
    """Deformed-log loss (1 − p^α)/(α + ε) = −expm1(α log p)/(α + ε) and its gate p^α · α/(α + ε).

    α is a constant (stop-gradient) per token. With α + ε = 0 the value is the α → 0 limit −log p
    and the gate is 1 (exact NLL). d value / d log p = −gate, so ∇_z value = gate · (π − e_y).
    The value's derivative is defined as exactly −gate (custom JVP): autodiff of expm1 would form
    exp(x) as expm1(x) + 1, which loses all relative precision of small gates. α gets no tangent.
    """
    alpha = jnp.asarray(alpha, log_p.dtype)
    value = _deformed_value(log_p, alpha, float(epsilon))
    return value, jax.lax.stop_gradient(_deformed_raw(log_p, alpha, float(epsilon))[1])


def _deformed_raw(log_p, alpha, epsilon):
    denom = alpha + epsilon
    limit = denom == 0
    safe_denom = jnp.where(limit, 1.0, denom)
    exponent = jnp.where(alpha == 0, 0.0, alpha * log_p)  # avoids 0·(−inf)
    value = jnp.where(limit, -log_p, -jnp.expm1(exponent) / safe_denom)
    gate = jnp.exp(exponent) * jnp.where(limit, 1.0, alpha / safe_denom)
    return value, gate


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _deformed_value(log_p, alpha, epsilon):
    return _deformed_raw(log_p, alpha, epsilon)[0]


@_deformed_value.defjvp
def _deformed_value_jvp(epsilon, primals, tangents):
    log_p, alpha = primals
    log_p_dot, _ = tangents  # α is a detached coefficient: no tangent by design
    value, gate = _deformed_raw(log_p, alpha, epsilon)
    return value, -gate * log_p_dot


def cayley_alpha(*, p, batch_mean_p, epsilon=1e-8, floor_scale=0.5, alpha_min=1e-3, alpha_max=1.0):
    """Cayley focus α* = clamp(f + (1 − f)·(1 − r)/(1 + r), alpha_min, alpha_max), f = floor_scale·mean p.

    r = 1 − p. With epsilon > 0 the official op order is kept: r = (1 − p) + ε and the ratio is
    (1 − r)/(1 + r + ε). With epsilon = 0 the ratio is the exact p/(2 − p).
    """
    floor = floor_scale * batch_mean_p
    if epsilon == 0:
        local = p / (2.0 - p)
    else:
        distance = (1.0 - p) + epsilon
        local = (1.0 - distance) / (1.0 + distance + epsilon)
    return jnp.clip(floor + (1.0 - floor) * local, alpha_min, alpha_max)


@flax.struct.dataclass
class Coefficients:
    """Per-token quantities the gradient treats as constants (the official code's `.detach()`).

    kept  mask × threshold indicator (float); = mask for non-threshold objectives.
    alpha deformed-log exponent: loss (1 − p^α)/(α + ε), gate p^α·α/(α + ε) (nll: α = 0, prob: α = 1).
    scale scaled-NLL weight s: loss s·(−log p), gate s (dft: s = p, eaft: s = H̃^β).
    Exactly one of alpha and scale is set.
    """

    kept: jax.Array
    alpha: jax.Array | None = None
    scale: jax.Array | None = None
