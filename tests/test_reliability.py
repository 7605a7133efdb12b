"""Nothing lost, nothing silent: damaged checkpoints are named and skipped, bad inputs name their file and
field, over-long examples name themselves, and the numerics corners stay finite."""
import dataclasses
import json
import re
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
from deft_jax import cli
from deft_jax import sharding as sharding_lib
from helpers.checkpoints import verify_step

# ------------------------------------------------------------------------------------------ checkpoints


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


# ------------------------------------------------------------------------------------------------- data


def _jsonl_examples(path, rows, **fields):
    from deft_jax.data import default_data_config, load_examples

    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    cfg = default_data_config()
    cfg.task, cfg.path = "jsonl", str(path)
    for name, value in fields.items():
        cfg[name] = value
    return load_examples(cfg, split="train"), cfg


def test_dropping_every_example_names_the_file_and_lines(tmp_path, tiny_tokenizer):
    from deft_jax.data import DataError, tokenize_examples

    path = tmp_path / "long.jsonl"
    examples, cfg = _jsonl_examples(path, [{"prompt": "long " * (40 + i), "response": "ok"} for i in range(8)],
                                    max_length=32, truncation="drop")
    with pytest.raises(DataError) as info:
        tokenize_examples(examples, tokenizer=tiny_tokenizer, cfg=cfg)
    message = str(info.value)
    assert "no example left after truncation 'drop' at max_length 32" in message and "\n" not in message
    assert all(f"{path}:{line} (" in message for line in range(1, 6)) and f"{path}:6 (" not in message
    assert "and 3 more" in message and "'jsonl'" in message


def test_the_report_names_the_first_dropped_examples(tmp_path, tiny_tokenizer):
    from deft_jax.data import tokenize_examples

    path = tmp_path / "mixed.jsonl"
    rows = [{"prompt": "long " * 60 if i in (2, 5) else "short", "response": "ok"} for i in range(7)]
    examples, cfg = _jsonl_examples(path, rows, max_length=32, truncation="drop")
    kept, report = tokenize_examples(examples, tokenizer=tiny_tokenizer, cfg=cfg)
    assert len(kept) == 5 and report.num_dropped == 2
    assert [name.split(" (")[0] for name in report.over_length] == [f"{path}:3", f"{path}:6"]
    assert f"over length: {path}:3 (" in report.summary() and "more" not in report.summary()


def test_token_ids_outside_the_model_vocabulary_are_rejected_naming_the_example(tmp_path, tiny_tokenizer):
    from deft_jax.data import DataError, check_token_range, tokenize_examples

    path = tmp_path / "d.jsonl"
    examples, cfg = _jsonl_examples(path, [{"prompt": "the quick brown fox", "response": "THE QUICK"},
                                           {"prompt": "0123456789", "response": "9"}])
    tokenizer = tiny_tokenizer
    kept, _ = tokenize_examples(examples, tokenizer=tokenizer, cfg=cfg, vocab_size=tokenizer.vocab_size)
    largest = max(int(example.tokens.max()) for example in kept)
    check_token_range(kept, vocab_size=largest + 1)  # every id inside: no error
    with pytest.raises(DataError, match=rf"outside \[0, {largest}\).*{path}:\d \(id {largest} at token \d+\)"):
        tokenize_examples(examples, tokenizer=tokenizer, cfg=cfg, vocab_size=largest)
    negative = [dataclasses.replace(kept[0], tokens=np.concatenate([kept[0].tokens, [-1]]).astype(np.int32))]
    with pytest.raises(DataError, match=rf"{path}:1 \(id -1 at token {kept[0].length}\)"):
        check_token_range(negative, vocab_size=largest + 1)


# ---------------------------------------------------------------------------------------------- loading


def _tiny_gguf(path):
    """A GGUF with a byte-level BPE vocabulary and one 64×64 tensor after it."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(["<s>", "</s>", "a", "b", "ab"] + [f"t{i}" for i in range(200)])
    writer.add_token_merges(["a b"])
    writer.add_token_types([3, 3] + [1] * 203)
    writer.add_eos_token_id(1)
    writer.add_tensor("token_embd.weight", np.ones((64, 64), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("keep", [0.2, 0.6, 0.97], ids=["in_metadata", "in_vocabulary", "in_tensor_data"])
def test_a_truncated_gguf_names_the_file_in_the_tokenizer_and_the_cli(tmp_path, capsys, keep):
    from deft_jax import generate as generate_cli
    from deft_jax.model import tokenizer as tokenizer_lib

    whole = _tiny_gguf(tmp_path / "whole.gguf")
    assert tokenizer_lib.Tokenizer.from_gguf(whole).eos_id == 1
    data = whole.read_bytes()
    path = tmp_path / "model.gguf"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match=rf"^{path}: .*truncated"):
        tokenizer_lib.Tokenizer.from_gguf(path)
    with pytest.raises(SystemExit) as info:
        cli.run("generate", generate_cli.main, ["--prompt", "hi", "--model", str(path)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and err.startswith(f"generate: error: {path}: ")


@pytest.mark.parametrize("change, expected", [
    ({"num_attention_heads": None}, "required field 'num_attention_heads' is missing"),
    ({"hidden_size": "128"}, "field 'hidden_size' must be a positive integer, got the string '128'"),
    ({"num_hidden_layers": 2.5}, "field 'num_hidden_layers' must be a positive integer, got 2.5"),
    ({"rms_norm_eps": "1e-6"}, "field 'rms_norm_eps' must be a positive number, got the string '1e-6'"),
], ids=["missing_heads", "string_hidden_size", "float_layers", "string_eps"])
def test_hf_config_errors_name_the_file_and_the_field(tmp_path, change, expected):
    from deft_jax.model import decoder as model_lib
    from deft_jax.model import weights

    settings = weights.config_to_hf(model_lib.ModelConfig.tiny(vocab_size=264), bos_id=0, eos_id=1)
    (tmp_path / "config.json").write_text(json.dumps(settings))
    assert weights.load_model_config(tmp_path).d_model == settings["hidden_size"]
    for key, value in change.items():
        if value is None:
            del settings[key]
        else:
            settings[key] = value
    (tmp_path / "config.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'config.json'}: {re.escape(expected)}$"):
        weights.load_model_config(tmp_path)


# --------------------------------------------------------------------------------------------- numerics


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
