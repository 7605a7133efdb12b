"""On the CPU backend a checkpoint save waits for its write: orbax's host copy there is a view of the
state's own buffers, and a donated step running beside the write would hold a second state."""
import jax
import jax.numpy as jnp
import numpy as np
import psutil

from deft_jax.training import checkpointing

MIB = 2**20


def _state(*, mib):
    n = mib * MIB // 4
    return {"params": jnp.arange(n, dtype=jnp.float32), "mu": jnp.ones((n,), jnp.float32)}


def test_orbax_host_copy_on_cpu_is_a_view():
    """What the wait rests on: numpy's view of a CPU jax.Array shares its buffer (no copy)."""
    state = _state(mib=1)
    assert checkpointing.viewed_by_host_copy(state)
    assert np.shares_memory(np.asarray(state["params"]), np.asarray(state["params"]))
    assert not checkpointing.viewed_by_host_copy({"data": np.zeros(3)})  # nothing on a device


def test_cpu_save_has_finished_when_it_returns_and_the_next_step_adds_no_state(tmp_path):
    state = _state(mib=64)
    step = jax.jit(lambda s: jax.tree.map(lambda x: x * 0.5 + 1.0, s), donate_argnums=0)
    state = jax.block_until_ready(step(state))
    manager = checkpointing.make_manager(directory=tmp_path / "checkpoints", async_save=True)
    try:
        process = psutil.Process()
        checkpointing.save(manager, step=1, state=state, data_state={"cursor": 3}, wait=False)
        assert checkpointing.available_steps(tmp_path) == [1]  # written and final, not in flight
        before = process.memory_info().rss
        for _ in range(2):
            state = jax.block_until_ready(step(state))
        grown = process.memory_info().rss - before
        # A donated step over buffers still read by a write in flight would allocate all 128 MiB anew.
        assert grown < 64 * MIB, f"the step after the save grew the process by {grown / MIB:.0f} MiB"
    finally:
        manager.close()
    want = jax.device_get(state)
    assert np.isfinite(want["params"]).all()
