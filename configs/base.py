"""Shared base config for every ablation (big_vision style: `get_config(arg)` + `sweep()` per file).

Defaults follow the paper: AdamW (0.9, 0.95), lr 5e-5, weight decay 0.01, cosine schedule
with 10% warmup, grad-norm clip 1.0, global batch 256, one epoch, bf16 compute with float32 params and
optimizer state, max length 800 (FigFont), every response token + EOS supervised.

Config arguments (after the file name, comma-separated, `key=value` or a bare flag for True):
    runlocal   the real SmolLM2-135M-Instruct on FigFont, shrunk to a few CPU minutes (README command)
    smoke      ModelConfig.tiny + a byte-level tokenizer on a short procedural task: seconds (tests)
    model=...  'smollm2-135m-instruct' (default), a .gguf file, a Hugging Face dir, or 'tiny'
    task=...   any data.task ('figfont', 'gsm8k', 'reasoning_gym:<name>', 'jsonl', ...)
    data_path=...  data.path for the file tasks (gsm8k, math, jsonl, parquet)
e.g. `--config configs/deformed_log.py:alpha=0.5,runlocal` then `--config.optim.lr=1e-5`.

The returned config is validated (deft_jax.config.validate: unknown objective, out-of-range value
or bad mesh -> ValueError naming the field) and locked, so a misspelt field fails when it is set.
"""
from __future__ import annotations

from typing import Any

import ml_collections

from deft_jax.training import config as config_lib

DEFAULT_MODEL = "smollm2-135m-instruct"
COMMON_ARGS = dict(runlocal=False, smoke=False, model="", task="", data_path="")


def parse_arg(arg: str | None, **spec: Any) -> ml_collections.ConfigDict:
    """Parse 'key=value,flag,...' into a ConfigDict typed like the defaults in `spec` (big_vision).

    A bare key sets a bool to True. An unknown key or a value of the wrong type raises ValueError.
    """
    spec = {**COMMON_ARGS, **spec}
    result = ml_collections.ConfigDict(spec)
    for item in filter(None, (arg or "").split(",")):
        key, has_value, raw = item.partition("=")
        key = key.strip()
        if key not in spec:
            raise config_lib.ConfigError(f"config argument {key!r} is not known; known arguments: {sorted(spec)} "
                             f"(got {arg!r})")
        default = spec[key]
        if not has_value:
            if not isinstance(default, bool):
                raise config_lib.ConfigError(f"config argument {key!r} needs a value ({key}=...), got {arg!r}")
            result[key] = True
            continue
        result[key] = _cast(key=key, raw=raw.strip(), default=default)
    return result


def _cast(*, key: str, raw: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise config_lib.ConfigError(f"config argument {key}={raw!r}: expected a {type(default).__name__}") from None
    return raw


def get_base_config(arg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Every field the trainer reads, with the paper's defaults, shrunk by `arg.runlocal`/`arg.smoke`."""
    if arg.runlocal and arg.smoke:
        raise config_lib.ConfigError("config arguments 'runlocal' and 'smoke' exclude each other; pick one.")
    config = config_lib.default_config()  # every field, with the paper's defaults (deft_jax.config.FIELDS)
    if arg.smoke:
        _shrink_smoke(config)
    elif arg.runlocal:
        _shrink_runlocal(config)
    if arg.model:
        config.model.name = arg.model
    if arg.task:
        config.data.task = arg.task
    if arg.data_path:
        config.data.path = arg.data_path
    return config


def _shrink_runlocal(config: ml_collections.ConfigDict) -> None:
    """The real SmolLM2-135M-Instruct on FigFont for a few minutes on a laptop CPU."""
    config.model.dtype = "float32"  # bf16 matmuls are slow on CPUs
    config.model.remat = True  # layer activations recomputed in the backward pass: -1.1 GiB peak memory
    config.data.num_train = 128
    config.data.num_eval = 32  # held-out FigFont prompts (test items 40,000+)
    config.data.max_length = 256  # FigFont: median 161 SmolLM2 tokens, ~14% longer (dropped and counted)
    config.data.seq_len = 256
    config.data.truncation = "drop"
    config.data.bucket_lengths = ()  # one row length: the step compiles once
    config.data.packing = True  # ~1.5 examples per 256-token row: 12 steps see about the examples 20 unpacked ones did
    config.batch_size = 4
    config.micro_batch_size = 4  # one micro-batch: no gradient accumulator (the same exact-mean loss)
    config.loss.impl = "chunked"  # the lm head and the objective over token chunks: no [tokens, V] logits
    config.loss.chunk_size = 256  # one row of logits at a time (50 MiB instead of 200 per 1024 tokens)
    config.total_steps = 12
    config.optim.lr = 1e-4
    config.checkpoint.every_steps = 6
    # No eval inside the run: the train command's closing table scores the base and the fine-tuned model
    # (teacher-forced mean p included) on the same held-out prompts, and a sweep evaluates every run.
    config.eval.every_steps = 0
    config.eval.at_end = False
    config.eval.batch_size = 8
    config.eval.report_prompts = 32  # the train command ends with base vs fine-tuned on these
    config.log_every = 1


def _shrink_smoke(config: ml_collections.ConfigDict) -> None:
    """ModelConfig.tiny + byte-level tokenizer on short arithmetic prompts: seconds, no real model."""
    config.model.name = "tiny"
    config.model.init = "random"
    config.model.dtype = "float32"
    config.tokenizer = "byte"
    config.data.task = "reasoning_gym:basic_arithmetic"
    config.data.num_train = 16
    config.data.num_eval = 8
    config.data.max_length = 96
    config.data.seq_len = 96
    config.data.truncation = "drop"
    config.data.bucket_lengths = ()
    config.batch_size = 16  # 2 micro-batches of 8: divisible by up to 8 data-parallel devices
    config.micro_batch_size = 8
    config.total_steps = 2
    config.optim.lr = 1e-3
    config.checkpoint.every_steps = 1000
    config.eval.at_end = False
    config.eval.batch_size = 8
    config.log_every = 1
    config.progress = "off"


def set_objective(config: ml_collections.ConfigDict, name: str, **params: Any) -> ml_collections.ConfigDict:
    """config.objective = {name, **params} (params as given; validated with the whole config)."""
    config.objective = ml_collections.ConfigDict({"name": name, **params})
    return config


def objective_config(arg: str | None, name: str, **param_defaults: Any) -> ml_collections.ConfigDict:
    """The whole config of one ablation: `arg` may set the objective's parameters and the common args."""
    parsed = parse_arg(arg, **param_defaults)
    config = get_base_config(parsed)
    set_objective(config, name, **{key: parsed[key] for key in param_defaults})
    return finalize(config)


def finalize(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Validate (naming any bad field) and lock, so later typos fail where they are set."""
    config_lib.validate(config)
    config.lock()
    return config
