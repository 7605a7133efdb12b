"""Nothing lost, nothing silent in checkpoints: a damaged step is named and skipped, resume falls back to
the previous one, restores verify fingerprints, and non-finite parameters name the tensor."""

import shutil
import types
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from deft_jax.training import checkpointing
from deft_jax.training import setup as build
from deft_jax import sharding as sharding_lib
from tests.helpers.checkpoints import verify_step


def _state(seed):
    rng = np.random.default_rng(seed)
    return {"params": {"w": rng.standard_normal((64, 64)).astype(np.float32),
                       "b": rng.standard_normal(300).astype(np.float32)},
            "step": np.int32(seed)}


def _target():
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=sharding),
                        _state(0))


@pytest.fixture(scope="module")
def saved_once(tmp_path_factory):
    """Steps 2 and 4 of a small state (a 64×64 params matrix is the largest tensor), written by save()."""
    directory = tmp_path_factory.mktemp("saved") / "checkpoints"
    manager = checkpointing.make_manager(directory=directory, max_to_keep=3)
    states = {step: _state(step) for step in (2, 4)}
    for step, state in states.items():
        checkpointing.save(manager, step=step, state=jax.tree.map(jnp.asarray, state),
                           data_state={"cursor": step}, wait=True)
    manager.close()
    assert [verify_step(directory, step) for step in (2, 4)] == [3, 3]  # all tensors match
    return directory, states


@pytest.fixture
def saved(saved_once, tmp_path):
    """A private copy of `saved_once` (tests damage it)."""
    source, states = saved_once
    shutil.copytree(source, tmp_path / "checkpoints")
    return tmp_path / "checkpoints", states


def _largest_data_file(directory, step):
    files = (directory / str(step) / "state" / "ocdbt.process_0" / "d").iterdir()
    return max(files, key=lambda path: path.stat().st_size)


def _flip_middle(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CORRUPTIONS = {
    "data_file_bit_flip": lambda d: _flip_middle(_largest_data_file(d, 4)),
    "data_file_truncated": lambda d: _truncate(_largest_data_file(d, 4)),
    "metadata_deleted": lambda d: (d / "4" / "state" / "_METADATA").unlink(),
    "metadata_damaged": lambda d: _flip_middle(d / "4" / "state" / "_METADATA"),
    "manifest_deleted": lambda d: (d / "4" / "state" / "manifest.ocdbt").unlink(),
    "manifest_damaged": lambda d: _flip_middle(d / "4" / "state" / "manifest.ocdbt"),
}


def _assert_equal_trees(got, want):
    got, want = jax.tree.leaves(jax.device_get(got)), jax.tree.leaves(want)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert np.asarray(a).dtype == np.asarray(b).dtype and np.array_equal(a, b)


def test_orbax_alone_returns_other_numbers_for_a_flipped_data_file(saved):
    """The finding: without the checksums a bit flip in a data file restores silently to other values."""
    directory, states = saved
    _flip_middle(_largest_data_file(directory, 4))
    manager = checkpointing.make_manager(directory=directory, read_only=True, async_save=False)
    state, _, _ = checkpointing.restore(manager, target=_target(), step=4, verify=False)
    manager.close()
    assert not np.array_equal(np.asarray(state["params"]["w"]), states[4]["params"]["w"])
    with pytest.raises(checkpointing.CheckpointCorruptError, match=r"\(tensor params/w\): its bits differ"):
        verify_step(directory, 4)


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_damaged_step_is_named_and_resume_falls_back_to_the_previous_one(saved, corruption):
    directory, states = saved
    CORRUPTIONS[corruption](directory)

    with pytest.raises(checkpointing.CheckpointCorruptError) as info:
        verify_step(directory, 4)
    error = info.value
    assert error.step == 4 and str(error).startswith("checkpoint 4 is corrupt (") and "\n" not in str(error)
    assert str(directory / "4" / "state") in error.where
    if corruption.startswith(("metadata", "manifest")):
        assert error.where.endswith("_METADATA" if corruption.startswith("metadata") else "manifest.ocdbt")

    assert verify_step(directory, 2) == 3
    lines = []
    state, data_state, step, skipped = checkpointing.restore_latest_intact(directory, target=_target(),
                                                                           log=lines.append)
    assert (step, data_state) == (2, {"cursor": 2})
    assert skipped == lines == [f"{error}; falling back to step 2"]
    _assert_equal_trees(state, states[2])


@pytest.mark.parametrize("corruption", ["data_file_bit_flip", "manifest_damaged", "metadata_deleted"])
def test_evaluate_refuses_a_damaged_step_naming_it(saved, corruption):
    """Setup.restore_params (used by evaluate and export): the intact step 2 restores bit-equal, the
    damaged step 4 is refused with CheckpointCorruptError (before: NaN metrics, or AttributeError)."""

    directory, states = saved
    abstract = {name: jax.ShapeDtypeStruct(value.shape, value.dtype) for name, value in states[2]["params"].items()}
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    setup = types.SimpleNamespace(abstract_params=abstract, param_shardings=jax.tree.map(lambda _: sharding, abstract))
    workdir = directory.parent
    _assert_equal_trees(build.Setup.restore_params(setup, workdir=workdir, step=2), states[2]["params"])
    CORRUPTIONS[corruption](directory)
    with pytest.raises(checkpointing.CheckpointCorruptError, match=r"^checkpoint 4 is corrupt \("):
        build.Setup.restore_params(setup, workdir=workdir, step=4)


def test_a_restore_cast_to_another_dtype_is_not_called_corrupt(saved):
    directory, states = saved
    target = _target()
    target["params"] = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.bfloat16, sharding=x.sharding),
                                    target["params"])
    manager = checkpointing.make_manager(directory=directory, read_only=True, async_save=False)
    state, _, _ = checkpointing.restore(manager, target=target, step=4)
    manager.close()
    want = jax.tree.map(lambda x: np.asarray(x).astype(jnp.bfloat16), states[4]["params"])
    _assert_equal_trees(state["params"], want)


def test_non_finite_params_are_an_error_naming_the_tensor(saved, tmp_path):
    directory, states = saved
    bad = _state(6)
    bad["params"]["b"][7] = np.nan
    manager = checkpointing.make_manager(directory=directory, max_to_keep=3)
    checkpointing.save(manager, step=6, state=jax.tree.map(jnp.asarray, bad), data_state={}, wait=True)
    with pytest.raises(checkpointing.CheckpointCorruptError, match=r"\(tensor params/b\): 1 non-finite value"):
        checkpointing.restore(manager, target=_target(), step=6)
    state, _, step, skipped = checkpointing.restore_latest_intact(manager, target=_target())
    manager.close()
    assert step == 4 and len(skipped) == 1 and "checkpoint 6 is corrupt" in skipped[0]
    _assert_equal_trees(state, states[4])


def test_no_intact_step_is_an_error_naming_each(saved):
    directory, _ = saved
    for step in (2, 4):
        (directory / str(step) / "state" / "_METADATA").unlink()
    with pytest.raises(checkpointing.NoIntactCheckpointError, match=r"step 4: .*_METADATA: file missing; "
                                                                     r"step 2: .*_METADATA: file missing"):
        checkpointing.restore_latest_intact(directory, target=_target())


def test_fingerprints_are_sharding_invariant_and_see_every_bit():
    rng = np.random.default_rng(0)
    host = {"w": rng.standard_normal((16, 24)).astype(np.float32),
            "h": rng.standard_normal((8, 6)).astype(jnp.bfloat16), "n": np.arange(12, dtype=np.int32)}
    mesh = sharding_lib.make_mesh(data=2, fsdp=2, tensor=2)
    spec = jax.sharding.PartitionSpec
    placed = {"w": jax.device_put(host["w"], jax.sharding.NamedSharding(mesh, spec("data", ("fsdp", "tensor")))),
              "h": jax.device_put(host["h"], jax.sharding.NamedSharding(mesh, spec(None, "tensor"))),
              "n": jax.device_put(host["n"], jax.sharding.NamedSharding(mesh, spec(("data", "fsdp"))))}
    reference = checkpointing.tensor_digests(host)
    assert checkpointing.tensor_digests(placed) == reference
    seen = {reference["w"][0]}
    bits = host["w"].view(np.uint32)
    for bit in range(32):  # each single flipped bit of one element gives a new fingerprint
        flipped = bits.copy()
        flipped[3, 5] ^= np.uint32(1 << bit)
        seen.add(checkpointing.tensor_digests({"w": flipped.view(np.float32)})["w"][0])
    swapped = host["w"].copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    seen.add(checkpointing.tensor_digests({"w": swapped})["w"][0])
    assert len(seen) == 34


@flax.struct.dataclass
class _TrainStateLike:
    step: jax.Array
    params: dict
    opt_state: tuple


def test_a_train_state_is_verified_by_name_with_or_without_its_target(tmp_path):
    """Dataclass / namedtuple fields (as TrainState and optax states have) and the plain dicts and lists of
    a restore without target give the same tensor names, so every checksum is found."""
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((8, 8)).astype(np.float32)}
    host = _TrainStateLike(step=np.int32(3), params=params, opt_state=(
        optax.ScaleByAdamState(count=np.int32(1), mu=jax.tree.map(np.ones_like, params),
                               nu=jax.tree.map(np.zeros_like, params)), optax.EmptyState()))
    manager = checkpointing.make_manager(directory=tmp_path, max_to_keep=2)
    checkpointing.save(manager, step=1, state=jax.tree.map(jnp.asarray, host), data_state={}, wait=True)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), host)
    restored, _, _ = checkpointing.restore(manager, target=target)
    manager.close()
    assert isinstance(restored, _TrainStateLike)
    _assert_equal_trees(restored, host)
    assert sorted(checkpointing.tensor_digests(host)) == ["opt_state/0/count", "opt_state/0/mu/w",
                                                          "opt_state/0/nu/w", "params/w", "step"]
    assert verify_step(tmp_path, 1) == 5
