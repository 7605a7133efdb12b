"""Checkpoints: bit-exact round trip, restore onto other meshes / device counts, keep-N, partial writes."""
import json
import shutil

import jax
import numpy as np
import pytest

from deft_jax.training import step as step_lib
from deft_jax.training import setup as build
from deft_jax.training import checkpointing
from deft_jax.model import decoder as model_lib
from deft_jax import sharding as sharding_lib
from tests.helpers.checkpoints import latest_restorable_step

MODEL = model_lib.ModelConfig.tiny(vocab_size=264)
OPTIMIZER = step_lib.make_optimizer(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.01)
RULES = model_lib.DEFAULT_LOGICAL_RULES


def _target(mesh):
    abstract, shardings = build.state_layout(MODEL, OPTIMIZER, mesh, RULES)
    return sharding_lib.with_shardings(abstract, shardings), shardings


def _random_state(*, seed=0):
    """A TrainState-shaped tree with random values in every leaf (moments and counters included)."""
    mesh = sharding_lib.make_mesh(data=8, fsdp=1, tensor=1)
    abstract, _ = build.state_layout(MODEL, OPTIMIZER, mesh, RULES)
    rng = np.random.default_rng(seed)

    def leaf(shape_dtype):
        if np.issubdtype(shape_dtype.dtype, np.floating):
            return rng.standard_normal(shape_dtype.shape).astype(shape_dtype.dtype)
        return rng.integers(0, 1000, size=shape_dtype.shape).astype(shape_dtype.dtype)
    return jax.tree.map(leaf, abstract)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A random state placed on a (data=2, fsdp=2, tensor=2) mesh, saved at step 7."""
    mesh = sharding_lib.make_mesh(data=2, fsdp=2, tensor=2)
    _, shardings = _target(mesh)
    host = _random_state().replace(step=np.int32(7), skipped_steps=np.int32(2))
    state = jax.device_put(host, shardings)
    assert state.params["embedding"].sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    directory = tmp_path_factory.mktemp("ckpt") / "checkpoints"
    manager = checkpointing.make_manager(directory=directory, max_to_keep=3)
    checkpointing.save(manager, step=7, state=state, data_state={"cursor": 112, "epoch": 0}, wait=True)
    manager.close()
    return directory, host


@pytest.mark.parametrize("mesh_sizes, devices", [
    (dict(data=2, fsdp=2, tensor=2), 8),
    (dict(data=4, fsdp=2, tensor=1), 8),
    (dict(data=1, fsdp=1, tensor=2), 2),
    (dict(data=1, fsdp=1, tensor=1), 1),
], ids=["same_mesh", "data4_fsdp2", "two_devices_tensor2", "one_device"])
def test_restore_onto_other_meshes_is_bit_exact(saved, mesh_sizes, devices):
    directory, host = saved
    mesh = sharding_lib.make_mesh(**mesh_sizes, devices=jax.devices()[:devices])
    target, shardings = _target(mesh)
    manager = checkpointing.make_manager(directory=directory, read_only=True)
    state, data_state, step = checkpointing.restore(manager, target=target)
    manager.close()
    assert step == 7 and data_state == {"cursor": 112, "epoch": 0}
    assert int(state.step) == 7 and int(state.skipped_steps) == 2
    restored = jax.tree.leaves(jax.device_get(state))
    original = [np.asarray(x) for x in jax.tree.leaves(host)]
    assert len(restored) == len(original)
    for got, want in zip(restored, original):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    for array, sharding in zip(jax.tree.leaves(state), jax.tree.leaves(shardings)):
        assert array.sharding.is_equivalent_to(sharding, array.ndim)


def test_keeps_the_last_n_and_resumes_from_the_latest(tmp_path, saved):
    _, host = saved
    mesh = sharding_lib.make_mesh(data=1, fsdp=1, tensor=1, devices=jax.devices()[:1])
    target, shardings = _target(mesh)
    state = jax.device_put(host, shardings)
    manager = checkpointing.make_manager(directory=tmp_path, max_to_keep=2)
    for step in (1, 2, 3, 4):
        checkpointing.save(manager, step=step, state=state, data_state={"cursor": step})
    manager.wait_until_finished()
    assert manager.all_steps() == [3, 4]
    manager.close()
    reopened = checkpointing.make_manager(directory=tmp_path)
    _, data_state, step = checkpointing.restore(reopened, target=target)
    assert (step, data_state) == (4, {"cursor": 4})
    reopened.close()


def test_a_write_killed_midway_leaves_the_previous_checkpoint_restorable(tmp_path, saved):
    """What a SIGKILL during an async write leaves behind: a temporary directory never renamed."""
    source, _ = saved
    shutil.copytree(source, tmp_path, dirs_exist_ok=True)
    partial = tmp_path / "9.orbax-checkpoint-tmp-1234567"
    shutil.copytree(tmp_path / "7", partial)
    for path in sorted(p for p in partial.rglob("*") if p.is_file())[::2]:
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # half-written files
    mesh = sharding_lib.make_mesh(data=8, fsdp=1, tensor=1)
    target, _ = _target(mesh)
    assert latest_restorable_step(directory=tmp_path, target=target) == 7
    manager = checkpointing.make_manager(directory=tmp_path)  # a writer cleans the partial write up
    assert manager.latest_step() == 7
    manager.close()
    assert not partial.exists()


def test_restore_without_a_checkpoint_is_a_clear_error(tmp_path):
    mesh = sharding_lib.make_mesh(data=8, fsdp=1, tensor=1)
    target, _ = _target(mesh)
    manager = checkpointing.make_manager(directory=tmp_path)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        checkpointing.restore(manager, target=target)
    manager.close()


def test_data_iterator_state_is_json(saved):
    directory, _ = saved
    files = [p for p in (directory / "7" / checkpointing.DATA_ITEM).iterdir() if p.is_file()]
    contents = [json.loads(p.read_text()) for p in files if p.suffix in ("", ".json")]
    assert {"cursor": 112, "epoch": 0} in contents


def test_a_read_only_manager_logs_no_warning(tmp_path, saved, caplog):
    """Evaluation opens checkpoints read-only; orbax's three warnings about it (save interval, max_to_keep,
    "directory is read only") are what we asked for and would clutter every evaluation's output."""
    directory, _ = saved
    with caplog.at_level("WARNING"):
        manager = checkpointing.make_manager(directory=directory, read_only=True, async_save=False)
    assert manager.all_steps() == [7]
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == []
