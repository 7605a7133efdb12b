"""The session's compilation cache (tests/conftest.py) reaches the subprocesses the tests start, and is really hit."""

import os
import secrets
import subprocess
import sys
import pytest


@pytest.mark.slow
def test_subprocesses_share_the_sessions_compilation_cache_and_hit_it():
    """Two fresh processes compile the same program: the first writes the cache, the second only reads."""
    cache = os.environ["JAX_COMPILATION_CACHE_DIR"]
    unique = secrets.randbits(24)  # a program no earlier session has cached
    program = f"""
import jax, jax.numpy as jnp
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
assert jax.config.jax_compilation_cache_dir == {cache!r}, jax.config.jax_compilation_cache_dir
jax.jit(lambda x: jnp.sin(x) + {unique})(jnp.arange(3.0)).block_until_ready()
print(events.count("/jax/compilation_cache/compile_requests_use_cache"), events.count("/jax/compilation_cache/cache_hits"))
"""
    runs = [subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
            for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], [r.stderr[-2000:] for r in runs]
    (requests, first_hits), (again, second_hits) = [map(int, r.stdout.split()) for r in runs]
    assert requests == again > 0 and first_hits == 0  # every program went through the cache, compiled
    assert second_hits == requests  # ... and was read back by the second process
