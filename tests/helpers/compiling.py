"""How the suite compiles (no tests here; imports no jax at module level, so conftest.py can read it
before jax starts).

The suite compiles with XLA CPU's older loop emitters (TEST_XLA_FLAGS): its tiny programs compile faster
(docs/testing.md has the figures), and a few reductions round differently. Two programs that a
test compares bit for bit (or to a few ulps) are compiled as users' are, with `compile_as_users`."""

TEST_XLA_FLAGS = "--xla_cpu_use_fusion_emitters=false"

USER_CPU_COMPILER_OPTIONS = {"xla_cpu_use_fusion_emitters": True}  # XLA's default on CPU


def compile_as_users(fn, *args, **jit_kwargs):
    """jax.jit(fn, **jit_kwargs) compiled for `args` with XLA CPU's default emitters (the compiled program
    takes arguments of the same shapes)."""
    import jax

    return jax.jit(fn, **jit_kwargs).lower(*args).compile(compiler_options=USER_CPU_COMPILER_OPTIONS)
