"""XLA compiler options for the project's jitted programs: `jax.jit(f, compiler_options=compiler_options())`.

XLA:CPU vectorises a sum along an array's minor axis (Σ_v over the vocabulary in the objectives'
statistics, RMSNorm's mean square, the gradient's global norm) only when it may reassociate the float
additions; otherwise the loop adds one element at a time, with one scalar exp per element where the
summand has one. `REASSOCIATE_CPU` allows exactly that: LLVM fast-math with infinities, NaNs, division and
library functions (exp, log, ...) honoured, so inf and NaN propagate as before and exp/log keep their
accuracy. What changes is the order of float additions (and fused multiply-adds): sums differ in the
last float32 bits, as between any two summation orders.

Other backends get no options (GPU and TPU reductions are parallel trees already).
"""
from __future__ import annotations

import types

import jax

__all__ = ["REASSOCIATE_CPU", "compiler_options"]

REASSOCIATE_CPU = types.MappingProxyType({
    "xla_cpu_enable_fast_math": True,
    "xla_cpu_fast_math_honor_infs": True,
    "xla_cpu_fast_math_honor_nans": True,
    "xla_cpu_fast_math_honor_division": True,
    "xla_cpu_fast_math_honor_functions": True,
})


def compiler_options(*, backend: str | None = None) -> dict[str, bool]:
    """The options for programs compiled for `backend` (default: JAX's default backend)."""
    backend = jax.default_backend() if backend is None else backend
    return dict(REASSOCIATE_CPU) if backend == "cpu" else {}
