"""Checkpoint loading and export, checked against transformers (torch, float32) as the independent reference."""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from deft_jax.model import decoder as M  # noqa: E402
from deft_jax.model import weights as W  # noqa: E402
from tests.helpers import models


VOCAB = 96
TINY = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6)
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 16}

CASES = {
    # name: (config class, extra config kwargs, save_pretrained kwargs)
    "llama_tied_sharded": ("LlamaConfig", dict(tie_word_embeddings=True, rope_theta=500.0), dict(max_shard_size="40KB")),
    "llama_untied_llama3_rope": ("LlamaConfig", dict(tie_word_embeddings=False, head_dim=32,
                                                     rope_scaling=dict(LLAMA3_SCALING)), {}),
    "qwen2_bias": ("Qwen2Config", dict(tie_word_embeddings=False), {}),
    "qwen3_qk_norm": ("Qwen3Config", dict(tie_word_embeddings=True, head_dim=24), {}),
    "mistral_sliding_window": ("MistralConfig", dict(tie_word_embeddings=False, sliding_window=5), {}),
}


def _make_hf(directory: pathlib.Path, case: str, seed: int = 0):
    """Random transformers model saved to `directory`; biases and norm scales randomised too (not 0/1)."""
    cls_name, extra, save_kwargs = CASES[case]
    torch.manual_seed(seed)
    config = getattr(transformers, cls_name)(**TINY, **extra)
    config._attn_implementation = "eager"
    model = getattr(transformers, cls_name.replace("Config", "ForCausalLM"))(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if "norm" in name else 0.0))
    model.save_pretrained(directory, **save_kwargs)
    return model


def _torch_logits(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(ids.astype(np.int64))).logits.float().numpy()


@pytest.fixture(scope="module")
def token_ids():
    return np.random.default_rng(0).integers(0, VOCAB, size=(2, 12)).astype(np.int32)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llama")
    model = _make_hf(directory, "llama_tied_sharded")
    return directory, model


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(case, tmp_path, token_ids):
    model = _make_hf(tmp_path, case)
    config, params = W.load_hf_dir(tmp_path)
    ours = np.asarray(models.forward(params, config, jnp.asarray(token_ids)))
    reference = _torch_logits(model, token_ids)
    diff = np.abs(ours - reference).max()
    print(f"[parity] {case}: max |logits - transformers| = {diff:.2e}")
    assert diff <= 1e-4
    if case == "llama_tied_sharded":
        assert len(list(tmp_path.glob("*.safetensors"))) > 1, "the checkpoint should be multi-file"
        assert config.tie_embeddings and "lm_head" not in params
    if case == "llama_untied_llama3_rope":  # guard: the scaling matters at these positions
        plain = models.forward(params, config.replace(rope_scaling=None), jnp.asarray(token_ids))
        assert np.abs(np.asarray(plain) - reference).max() > 1e-3
    if case == "mistral_sliding_window":
        assert config.sliding_window == 5
        unwindowed = models.forward(params, config.replace(sliding_window=None), jnp.asarray(token_ids))
        assert np.abs(np.asarray(unwindowed) - reference).max() > 1e-3


def test_load_onto_mesh_places_params_by_logical_axes(llama_dir, token_ids):
    directory, model = llama_dir
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
    config, params = W.load_hf_dir(directory, mesh=mesh, rules=M.DEFAULT_LOGICAL_RULES)
    gate = params["layers"]["mlp"]["gate_proj"]["kernel"]  # [L, D, F]: ('layers', 'embed', 'mlp')
    assert gate.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert gate.addressable_shards[0].data.shape == (2, 32, 64)
    embedding = params["embedding"]  # ('vocab', 'embed') -> ('tensor', 'fsdp')
    assert embedding.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    q = params["layers"]["attn"]["q_proj"]["kernel"]
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    with jax.set_mesh(mesh), nn_rules(M.DEFAULT_LOGICAL_RULES):
        logits = models.forward(params, config, jnp.asarray(token_ids))
    assert np.abs(np.asarray(logits) - _torch_logits(model, token_ids)).max() <= 1e-4


def nn_rules(rules):
    import flax.linen as nn
    return nn.logical_axis_rules(rules)


def test_bf16_params(llama_dir, token_ids):
    directory, model = llama_dir
    config, params = W.load_hf_dir(directory, param_dtype="bfloat16")
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(params))
    logits = np.asarray(models.forward(params, config, jnp.asarray(token_ids)))
    assert np.abs(logits - _torch_logits(model, token_ids)).max() < 0.05


# ---------------------------------------------------------------------------------------------------- GGUF


def _write_gguf(path: pathlib.Path, hf_model, *, arch: str, quant_ffn: bool = True, truncate_to: int | None = None):
    """Write `hf_model` as llama.cpp would: llama q/k rows permuted, F16 norms, Q8_0 ffn matrices."""
    config = hf_model.config
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in hf_model.state_dict().items()}
    writer = gguf.GGUFWriter(str(path), arch=arch)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    reverse = {}
    for rule in W.HF_NAME_MAP:
        gguf_rule = next(g for g in W.GGUF_NAME_MAP if g.target == rule.target)
        for i in range(config.num_hidden_layers) if rule.per_layer else [None]:
            reverse[rule.name(i)] = gguf_rule.name(i)
    for hf_name, array in sd.items():
        if hf_name not in reverse or (hf_name == "lm_head.weight" and config.tie_word_embeddings):
            continue
        name = reverse[hf_name]
        if arch == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):
            n_head = config.num_attention_heads if "attn_q" in name else config.num_key_value_heads
            # llama.cpp convert_hf_to_gguf.LlamaModel.permute, written out independently of W.
            array = array.reshape(n_head, 2, array.shape[0] // n_head // 2, *array.shape[1:]).swapaxes(1, 2)
            array = array.reshape(sd[hf_name].shape)
        if "norm" in name:
            writer.add_tensor(name, array.astype(np.float16))
        elif quant_ffn and ".ffn_" in name:
            writer.add_tensor(name, gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if truncate_to is not None:
        data = path.read_bytes()
        path.write_bytes(data[:truncate_to])


def test_gguf_matches_safetensors(llama_dir, tmp_path):
    directory, model = llama_dir
    path = tmp_path / "tiny.gguf"
    _write_gguf(path, model, arch="llama")
    config_hf, params_hf = W.load_hf_dir(directory)
    config_gguf, params_gguf = W.load_gguf(path)
    assert config_gguf == config_hf.replace(max_position_embeddings=config_gguf.max_position_embeddings)
    # Architecture only (no tensors read), with overrides, from either format:
    assert W.load_model_config(directory, scan_unroll=3) == config_hf.replace(scan_unroll=3)
    assert W.load_model_config(path) == config_gguf
    flat_hf = dict(jax.tree_util.tree_flatten_with_path(params_hf)[0])
    flat_gguf = dict(jax.tree_util.tree_flatten_with_path(params_gguf)[0])
    assert flat_hf.keys() == flat_gguf.keys()
    for key, value in flat_hf.items():
        name = jax.tree_util.keystr(key)
        expected, got = np.asarray(value), np.asarray(flat_gguf[key])
        if "['mlp']" in name:  # Q8_0: per 32-block scale = max|x|/127, error <= scale/2
            assert np.abs(got - expected).max() <= np.abs(expected).max() / 127 * 0.51 + 1e-6, name
        elif "norm" in name:  # F16
            np.testing.assert_allclose(got, expected, rtol=1e-3, err_msg=name)
        else:  # F32, incl. the un-permuted q/k
            np.testing.assert_array_equal(got, expected, err_msg=name)


def test_gguf_qwen2_is_not_unpermuted(tmp_path, token_ids):
    model = _make_hf(tmp_path / "hf", "qwen2_bias")
    path = tmp_path / "qwen2.gguf"
    _write_gguf(path, model, arch="qwen2", quant_ffn=False)
    config, params = W.load_gguf(path)
    assert config.model_type == "qwen2" and config.qkv_bias and not config.tie_embeddings
    logits = np.asarray(models.forward(params, config, jnp.asarray(token_ids)))
    assert np.abs(logits - _torch_logits(model, token_ids)).max() <= 2e-3  # F16 norms


# -------------------------------------------------------------------------------------------------- export


def _tiny_tokenizer():
    import tokenizers

    from deft_jax.model.tokenizer import Tokenizer

    vocab = {f"t{i}": i for i in range(VOCAB - 2)}
    vocab.update({"<s>": VOCAB - 2, "</s>": VOCAB - 1})
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="t0"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    backend.add_special_tokens(["<s>", "</s>"])
    return Tokenizer(backend=backend, eos_token="</s>", bos_token="<s>")


@pytest.mark.parametrize("case", ["llama_untied_llama3_rope", "qwen3_qk_norm"])
def test_export_round_trip_through_transformers(case, tmp_path, token_ids):
    _make_hf(tmp_path / "src", case)
    config, params = W.load_hf_dir(tmp_path / "src")
    # "Fine-tune": perturb every parameter so the export cannot just echo the source files.
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree_util.tree_unflatten(
        treedef, [x + 0.01 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    out = W.export_hf(params, config, _tiny_tokenizer(), tmp_path / "out", max_shard_bytes=60_000)
    assert (out / "model.safetensors.index.json").exists() and (out / "tokenizer.json").exists()
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    reference = _torch_logits(reloaded, token_ids)
    ours = np.asarray(models.forward(params, config, jnp.asarray(token_ids)))
    diff = np.abs(ours - reference).max()
    print(f"[parity] export round trip {case}: max diff = {diff:.2e}")
    assert diff <= 1e-4
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok.eos_token == "</s>" and tok.convert_tokens_to_ids("t5") == 5
    config_again, params_again = W.load_hf_dir(out)
    assert config_again == config
    jax.tree_util.tree_map(np.testing.assert_array_equal, params_again, params)


def test_config_round_trip():
    config = M.ModelConfig.tiny(model_type="mistral", sliding_window=7, tie_embeddings=False,
                                rope_scaling=dict(LLAMA3_SCALING))
    assert W.config_from_hf(W.config_to_hf(config)) == config


# ----------------------------------------------------------------------------------------------- bad input


def test_missing_directory_and_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        W.load_hf_dir(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="config.json"):
        W.load_hf_dir(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        W.load_gguf(tmp_path / "missing.gguf")


def test_missing_shard_is_named(llama_dir, tmp_path):
    directory, _ = llama_dir
    for f in directory.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    shard = sorted(tmp_path.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=shard.name):
        W.load_hf_dir(tmp_path)


def test_unsupported_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 10}))
    with pytest.raises(ValueError, match=r"config\.json.*'gpt2'.*llama"):
        W.load_hf_dir(tmp_path)


def test_wrong_tensor_shape_names_file_tensor_and_expectation(llama_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    directory, _ = llama_dir
    for f in directory.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    name = "model.layers.1.mlp.up_proj.weight"
    file = tmp_path / index["weight_map"][name]
    tensors = load_file(str(file))
    tensors[name] = tensors[name][:, :10]
    save_file(tensors, str(file))
    with pytest.raises(ValueError, match=rf"{file.name}.*{name}.*\(128, 10\).*expected \(128, 64\)"):
        W.load_hf_dir(tmp_path)


def test_truncated_gguf(llama_dir, tmp_path):
    _, model = llama_dir
    full = tmp_path / "full.gguf"
    _write_gguf(full, model, arch="llama")
    size = full.stat().st_size
    for cut in (size - 1000, 200):
        path = tmp_path / f"cut{cut}.gguf"
        path.write_bytes(full.read_bytes()[:cut])
        with pytest.raises(ValueError, match=rf"cut{cut}\.gguf.*(truncated|not a readable)"):
            W.load_gguf(path)


def test_unknown_tensor_is_rejected(llama_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    directory, _ = llama_dir
    (tmp_path / "config.json").write_bytes((directory / "config.json").read_bytes())
    tensors = {}
    for f in directory.glob("*.safetensors"):
        tensors.update(load_file(str(f)))
    tensors["model.layers.0.self_attn.q_proj.bias"] = np.zeros(64, np.float32)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model\.safetensors.*q_proj\.bias.*qkv_bias=False"):
        W.load_hf_dir(tmp_path)
