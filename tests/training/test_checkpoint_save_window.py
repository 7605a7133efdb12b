"""On CPU a state write has a bounded window of bytes in flight (tensorstore's buffers); the checkpoint it
writes is the same one an unbounded write gives."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deft_jax.training import checkpointing

MIB = 2**20


def _state():
    keys = jax.random.split(jax.random.key(0), 6)
    return {f"w{i}": jax.random.normal(k, (1024, 512 * (i % 3 + 1)), jnp.float32) for i, k in enumerate(keys)}


def test_window_is_the_cpu_floor_or_twice_the_largest_tensor():
    small = {"a": jax.ShapeDtypeStruct((10, 10), jnp.float32)}
    big = {"a": jax.ShapeDtypeStruct((4096, 65536), jnp.float32), "b": jax.ShapeDtypeStruct((3,), jnp.int32)}
    assert checkpointing.save_window_bytes(small, platform="cpu") == checkpointing.CPU_SAVE_WINDOW_BYTES
    assert checkpointing.save_window_bytes(big, platform="cpu") == 2 * 4096 * 65536 * 4
    assert checkpointing.save_window_bytes(big, platform="gpu") is None


@pytest.mark.parametrize("window", [None, 13 * MIB])
def test_windowed_save_restores_bit_for_bit(tmp_path, window):
    state = _state()  # tensors of 2, 4 and 6 MiB: a 13 MiB window holds two or three at a time
    manager = checkpointing.make_manager(directory=tmp_path / "checkpoints", save_window=window)
    try:
        checkpointing.save(manager, step=1, state=state, data_state={"cursor": 3}, wait=True)
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
        restored = checkpointing.restore(manager, target=target)
    finally:
        manager.close()
    restored_state = restored[0]
    for name, want in state.items():
        np.testing.assert_array_equal(np.asarray(restored_state[name]), np.asarray(want))

