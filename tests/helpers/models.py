"""Compiled model calls for tests (no tests here): an eager `forward` dispatches and compiles every operation
on its own, which costs tens of seconds per call shape; one jitted program per shape costs one compile."""

import jax

from deft_jax.model import decoder as M

forward = jax.jit(M.forward, static_argnums=1, static_argnames=("return_hidden", "kv_len", "fresh_cache"))
