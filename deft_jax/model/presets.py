"""Architecture presets: the published config.json values of the paper's base models (never weights).

A preset name stands for a model's architecture wherever a ModelConfig is needed without its weights:
ahead-of-time compilation (deft_jax.compile) and `config.model.init='random'` in the trainer. The values
are parsed by the same Hugging Face config reader as a checkpoint directory (weights.config_from_hf), so
a preset and the real checkpoint's config.json give the same ModelConfig. Real weights are still read
from a path (a Hugging Face directory or a .gguf file).

Names are lower case, with or without the hub organisation: 'llama-3.1-8b', 'meta-llama/Llama-3.1-8B',
'qwen2.5-math-1.5b', 'deepseek-math-7b-base', ...
"""
from __future__ import annotations

from deft_jax.model.decoder import ModelConfig
from deft_jax.model import ModelError

_LLAMA3_SCALING = {"rope_type": "llama3", "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192}

# name -> (hub id, config.json values that define the architecture).
_PRESETS: dict[str, tuple[str, dict]] = {
    "llama-3.1-8b": ("meta-llama/Llama-3.1-8B", {
        "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
        "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "rope_scaling": {**_LLAMA3_SCALING, "factor": 8.0}, "max_position_embeddings": 131072,
        "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
        "bos_token_id": 128000, "eos_token_id": 128001}),
    "llama-3.2-3b": ("meta-llama/Llama-3.2-3B", {
        "model_type": "llama", "vocab_size": 128256, "hidden_size": 3072, "intermediate_size": 8192,
        "num_hidden_layers": 28, "num_attention_heads": 24, "num_key_value_heads": 8, "head_dim": 128,
        "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "rope_scaling": {**_LLAMA3_SCALING, "factor": 32.0}, "max_position_embeddings": 131072,
        "tie_word_embeddings": True, "attention_bias": False, "mlp_bias": False,
        "bos_token_id": 128000, "eos_token_id": 128001}),
    "qwen2.5-math-1.5b": ("Qwen/Qwen2.5-Math-1.5B", {
        "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960,
        "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2, "hidden_act": "silu",
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 4096,
        "tie_word_embeddings": True, "use_sliding_window": False, "sliding_window": 4096,
        "max_window_layers": 21, "bos_token_id": 151643, "eos_token_id": 151643}),
    "qwen2.5-math-7b": ("Qwen/Qwen2.5-Math-7B", {
        "model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
        "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "hidden_act": "silu",
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 4096,
        "tie_word_embeddings": False, "use_sliding_window": False, "sliding_window": 4096,
        "max_window_layers": 28, "bos_token_id": 151643, "eos_token_id": 151643}),
    "qwen2.5-1.5b": ("Qwen/Qwen2.5-1.5B", {
        "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960,
        "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2, "hidden_act": "silu",
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 131072,
        "tie_word_embeddings": True, "use_sliding_window": False, "sliding_window": 131072,
        "max_window_layers": 21, "bos_token_id": 151643, "eos_token_id": 151643}),
    "qwen2.5-7b": ("Qwen/Qwen2.5-7B", {
        "model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
        "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "hidden_act": "silu",
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 131072,
        "tie_word_embeddings": False, "use_sliding_window": False, "sliding_window": 131072,
        "max_window_layers": 28, "bos_token_id": 151643, "eos_token_id": 151643}),
    "deepseek-math-7b-base": ("deepseek-ai/deepseek-math-7b-base", {
        "model_type": "llama", "vocab_size": 102400, "hidden_size": 4096, "intermediate_size": 11008,
        "num_hidden_layers": 30, "num_attention_heads": 32, "num_key_value_heads": 32, "hidden_act": "silu",
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 4096,
        "tie_word_embeddings": False, "attention_bias": False, "bos_token_id": 100000,
        "eos_token_id": 100001}),
}

def names() -> tuple[str, ...]:
    """The preset names, sorted."""
    return tuple(sorted(_PRESETS))


def canonical_name(name: str) -> str | None:
    """The preset name for `name` (case-insensitive, hub organisation optional), or None when it is none."""
    text = str(name).strip().lower()
    if text in _PRESETS:
        return text
    for key, (hub_id, _) in _PRESETS.items():
        if text == hub_id.lower() or text == hub_id.lower().split("/", 1)[1]:
            return key
    return None


def is_preset(name: str) -> bool:
    return canonical_name(name) is not None


def hub_id(name: str) -> str:
    return _PRESETS[_require(name)][0]


def hf_config(name: str) -> dict:
    """A copy of the preset's config.json values."""
    return dict(_PRESETS[_require(name)][1])


def model_config(name: str, **overrides) -> ModelConfig:
    """The ModelConfig of preset `name`, read by the checkpoint config parser; `overrides` are ModelConfig
    fields (dtype, param_dtype, remat, scan_layers, ...)."""
    from deft_jax.model import weights

    key = _require(name)
    return weights.config_from_hf(hf_config(key), source=f"preset {key!r}", **overrides)


def _require(name: str) -> str:
    key = canonical_name(name)
    if key is None:
        raise ModelError(f"{name!r} is not an architecture preset; presets: {', '.join(names())}")
    return key
