"""Shared base config for every ablation (big_vision style: `get_config(arg)` + `sweep()` per file).

Defaults follow the paper (DESIGN §4): AdamW (0.9, 0.95), lr 5e-5, weight decay 0.01, cosine schedule
with 10% warmup, grad-norm clip 1.0, global batch 256, one epoch, bf16 compute with float32 params and
optimizer state, max length 800 (FigFont), every response token + EOS supervised.

Config arguments (after the file name, comma-separated, `key=value` or a bare flag for True):
    runlocal   the real SmolLM2-135M-Instruct on FigFont, shrunk to a few CPU minutes (README command)
    smoke      ModelConfig.tiny + a byte-level tokenizer on a short procedural task: seconds (tests)
    model=...  'smollm2-135m-instruct' (default), a .gguf file, a Hugging Face dir, or 'tiny'
    task=...   any data.task ('figfont', 'gsm8k', 'reasoning_gym:<name>', 'jsonl', ...)
    data_path=...  data.path for the file tasks (gsm8k, math, jsonl, parquet)
e.g. `--config configs/deformed_log.py:alpha=0.5,runlocal` then `--config.optim.lr=1e-5`.

The returned config is validated (deft_jax.train.validate_config: unknown objective, out-of-range value
or bad mesh -> ValueError naming the field) and locked, so a misspelt field fails when it is set.
"""
from __future__ import annotations

from typing import Any

import ml_collections

from deft_jax.data import default_data_config

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
            raise ValueError(f"config argument {key!r} is not known; known arguments: {sorted(spec)} "
                             f"(got {arg!r})")
        default = spec[key]
        if not has_value:
            if not isinstance(default, bool):
                raise ValueError(f"config argument {key!r} needs a value ({key}=...), got {arg!r}")
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
        raise ValueError(f"config argument {key}={raw!r}: expected a {type(default).__name__}") from None
    return raw


def get_base_config(arg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Every field the trainer reads, with the paper's defaults, shrunk by `arg.runlocal`/`arg.smoke`."""
    if arg.runlocal and arg.smoke:
        raise ValueError("config arguments 'runlocal' and 'smoke' exclude each other; pick one.")
    config = ml_collections.ConfigDict()
    config.seed = 0

    # Model: a known name, a .gguf file, a Hugging Face dir, or 'tiny' (ModelConfig.tiny, random init).
    config.model = ml_collections.ConfigDict()
    config.model.name = DEFAULT_MODEL
    config.model.init = "pretrained"  # 'pretrained' | 'random' (random weights of the same architecture)
    config.model.init_from = ""  # a run directory: start from its latest checkpoint's params (replaces init)
    config.model.dtype = "bfloat16"  # compute dtype; parameters and optimizer state stay param_dtype
    config.model.param_dtype = "float32"
    config.model.remat = False
    config.model.scan_layers = True
    # Layers per scan iteration (>= n_layers: fully unrolled; same numbers, longer compile). On the 2-core
    # CPU, full unrolling made the SmolLM2 train step faster (README, Results).
    config.model.scan_unroll = 1
    config.model.overrides = ml_collections.ConfigDict()  # other ModelConfig fields, e.g. d_model=128 (tiny)
    config.tokenizer = ""  # '' = the model's own tokenizer; 'byte' = byte-level (tiny models, tests)

    config.data = default_data_config()

    # Objective: its name and its parameters (set by each ablation file through set_objective).
    config.objective = ml_collections.ConfigDict({"name": "nll"})

    config.loss = ml_collections.ConfigDict()
    config.loss.impl = "naive"  # 'naive' (full logits) | 'chunked' (fused lm-head + objective, deft_jax.fused)
    config.loss.chunk_size = 2048  # tokens per chunk for impl='chunked'
    config.loss.normalization = "token"  # 'token' | 'sequence' | 'gate' (objectives.reduce)
    # 'exact': Σ sums / Σ denominators over micro-batches (one division);
    # 'mean_of_micro_means': the official code's mean over micro-batches of per-micro-batch means.
    config.loss.accumulation = "exact"

    config.batch_size = 256  # global rows per optimizer step (one example per row unless data.packing)
    config.micro_batch_size = 0  # global rows per micro-batch (gradient accumulation); 0 = batch_size
    config.num_epochs = 1.0
    config.total_steps = 0  # 0 = num_epochs x len(train set) / batch_size

    config.optim = ml_collections.ConfigDict()
    config.optim.lr = 5e-5
    config.optim.b1 = 0.9
    config.optim.b2 = 0.95
    config.optim.eps = 1e-8
    config.optim.weight_decay = 0.01
    config.optim.schedule = "cosine"  # 'cosine' | 'constant' (both after linear warmup)
    config.optim.warmup_ratio = 0.1
    config.optim.min_lr_ratio = 0.0  # cosine ends at lr x min_lr_ratio
    config.optim.clip_norm = 1.0  # global grad-norm clip; 0 disables
    config.optim.skip_nonfinite = True  # a step with a non-finite loss or grad norm leaves params unchanged

    # Mesh: the product must equal the number of devices; one size may be -1 (all remaining devices).
    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1
    config.mesh.fsdp = 1
    config.mesh.tensor = 1
    config.mesh.rules = ()  # ((logical_name, mesh_axis or None), ...) overriding model.DEFAULT_LOGICAL_RULES

    # Multi-host: jax.distributed.initialize when initialize=True or $DEFT_COORDINATOR_ADDRESS is set.
    config.distributed = ml_collections.ConfigDict()
    config.distributed.initialize = False
    config.distributed.coordinator_address = ""
    config.distributed.num_processes = 0  # 0 = from the environment / cluster auto-detection
    config.distributed.process_id = -1
    config.distributed.cpu_collectives = "gloo"

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every_steps = 500
    config.checkpoint.keep = 3
    config.checkpoint.async_save = True

    config.eval = ml_collections.ConfigDict()
    config.eval.every_steps = 0  # 0 = only at the end (if at_end)
    config.eval.at_end = True
    config.eval.batch_size = 64  # global rows per eval batch

    config.log_every = 10  # steps between metric writes (norms are computed every step)
    config.progress = "auto"  # 'auto' (bar on a terminal, lines otherwise) | 'bar' | 'lines' | 'off'
    config.peak_flops_per_device = 0.0  # for MFU; 0 = deft_jax.metrics table by device kind
    config.tensorboard = True
    # Persistent XLA compilation cache ('' = off): restarts (resume after preemption) skip compiling.
    config.compilation_cache_dir = ""

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
    config.data.num_train = 128
    config.data.num_eval = 16
    config.data.max_length = 256  # FigFont: median 161 SmolLM2 tokens, ~14% longer (dropped and counted)
    config.data.seq_len = 256
    config.data.truncation = "drop"
    config.data.bucket_lengths = ()  # one row length: the step compiles once
    config.batch_size = 4
    config.micro_batch_size = 2
    config.total_steps = 20
    config.optim.lr = 1e-4
    config.checkpoint.every_steps = 10
    config.eval.every_steps = 10
    config.eval.batch_size = 8
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
    from deft_jax.train import validate_config  # deferred: importing the trainer pulls in JAX

    validate_config(config, check_devices=False)
    config.lock()
    return config
