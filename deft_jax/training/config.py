"""The run config: one table of fields (default, check, doc), loading config files, overrides, validation.

    config = config_lib.load_config("configs/deft.py:epsilon=0,smoke")   # the file's get_config(arg)
    config = config_lib.apply_overrides(config, {"optim.lr": 1e-5})     # sweeps, tests
    config_lib.validate(config)                                           # once, after every override

`FIELDS` lists every field the trainer reads, with its default, its check and one line of doc;
`default_config()` builds the ConfigDict from it (configs/base.py starts there). Three sections are owned
by other modules and validated as a whole: `data` (deft_jax.data), `objective` (deft_jax.objectives) and
`model.overrides` (ModelConfig fields). A user error raises `ConfigError` naming the field (and, for a
misspelt one, the nearest known name).

Owns: the schema and its validation. Must not import: train, step, build, evaluate, sweep.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib.util
import math
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
import numpy as np

from deft_jax import data as data_lib
from deft_jax import errors, objectives
from deft_jax import sharding as sharding_lib
from deft_jax.model import attention as attention_lib
from deft_jax.model import decoder as model_lib
from deft_jax.training.step import ACCUMULATION_MODES, LOSS_IMPLS, SCHEDULES
from deft_jax.model import remat as remat_lib

TINY_MODEL = "tiny"
DTYPES = ("float32", "bfloat16", "float16")
PROGRESS_MODES = ("auto", "bar", "lines", "off")
OWNED_SECTIONS = ("data", "objective", "model.overrides")  # validated as a whole by their owners


class ConfigError(errors.UserError):
    """A bad config file, argument, override or field value; the message names the field."""


# ====================================================================================================
# Checks: each returns None when the value is fine, else what is wrong with it.

def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value) -> bool:
    return (_is_int(value) or isinstance(value, (float, np.floating))) and math.isfinite(float(value))


def integer(low: int | None = None) -> Callable[[Any], str | None]:
    def check(value):
        if not _is_int(value):
            return f"must be an int, got {value!r}"
        if low is not None and value < low:
            return f"must be >= {low}, got {value!r}"
        return None
    return check


def number(low=None, high=None, *, low_open=False, high_open=False) -> Callable[[Any], str | None]:
    def check(value):
        if not _is_number(value):
            return f"must be a finite number, got {value!r}"
        if low is not None and (value < low or (low_open and value == low)):
            return f"must be {'>' if low_open else '>='} {low}, got {value!r}"
        if high is not None and (value > high or (high_open and value == high)):
            return f"must be {'<' if high_open else '<='} {high}, got {value!r}"
        return None
    return check


def one_of(*choices) -> Callable[[Any], str | None]:
    def check(value):
        return None if value in choices else f"must be one of {choices}, got {value!r}"
    return check


def lane_multiple(value) -> str | None:
    """A splash block size: a positive multiple of the TPU lane width (128)."""
    if not _is_int(value) or value < 128 or value % 128:
        return f"must be a positive multiple of 128 (the TPU lane width), got {value!r}"
    return None


def boolean(value) -> str | None:
    return None if isinstance(value, bool) else f"must be True or False, got {value!r}"


def string(value) -> str | None:
    return None if isinstance(value, str) else f"must be a string, got {value!r}"


def nonempty_string(value) -> str | None:
    return None if isinstance(value, str) and value else f"must be a non-empty string, got {value!r}"


def mesh_size(value) -> str | None:
    if not _is_int(value) or not (value == -1 or value >= 1):
        return f"must be a positive int or -1 (all remaining devices), got {value!r}"
    return None


def logical_rules(value) -> str | None:
    try:
        sharding_lib.logical_rules(base_rules=(), overrides=value)
    except (ValueError, TypeError) as error:
        return str(error)
    return None


def mapping(value) -> str | None:
    return None if isinstance(value, (Mapping, ml_collections.ConfigDict)) else f"must be a dict, got {value!r}"


def data_section(value) -> str | None:
    """The data pipeline's own validation of config.data (its fields, defaults and ranges)."""
    try:
        data_lib.validate_data_config(value)
    except data_lib.DataError as error:
        return str(error).removeprefix("config.data")
    return None


# ====================================================================================================
# The schema.

@dataclasses.dataclass(frozen=True)
class Field:
    default: Any
    check: Callable[[Any], str | None]
    doc: str


FIELDS: dict[str, Field] = {
    "seed": Field(0, integer(0), "model init, optimizer and (by default) nothing else"),
    "model.name": Field("smollm2-135m-instruct", nonempty_string,
                        "a known name, an architecture preset, a .gguf file, a Hugging Face dir, or 'tiny'"),
    "model.init": Field("pretrained", one_of("pretrained", "random"),
                        "'pretrained' weights or 'random' weights of the same architecture"),
    "model.init_from": Field("", string, "a training run's workdir: start from its latest checkpoint's params "
                             "(a fresh optimizer state; replaces model.init)"),
    "model.dtype": Field("bfloat16", one_of(*DTYPES), "compute dtype"),
    "model.param_dtype": Field("float32", one_of(*DTYPES), "parameters and optimizer state"),
    "model.remat": Field(False, boolean, "rematerialise each layer in the backward pass (= remat_policy 'full')"),
    "model.remat_policy": Field("", one_of("", *remat_lib.POLICIES),
                                "what the backward keeps of each layer (deft_jax.model.remat); '' follows remat"),
    "model.attention": Field("auto", one_of(*attention_lib.IMPLEMENTATIONS),
                             "'auto' (splash on TPU, cudnn on GPU, else xla) | 'xla' einsum | 'splash' | 'cudnn'"),
    "model.attention_block_q": Field(512, lane_multiple, "splash query block (clamped to the row length)"),
    "model.attention_block_kv": Field(512, lane_multiple, "splash key/value block (clamped to the row length)"),
    "model.scan_layers": Field(True, boolean, "layers under nn.scan"),
    "model.scan_unroll": Field(1, integer(1), "layers per scan iteration (>= n_layers: fully unrolled)"),
    "model.overrides": Field(ml_collections.ConfigDict(), mapping,
                             "other ModelConfig fields, e.g. d_model=128 (tiny models)"),
    "tokenizer": Field("", string, "'' = the model's own; 'byte' = byte-level (tiny models, tests)"),
    "data": Field(None, data_section, "the data pipeline's section (deft_jax.data.default_data_config())"),
    "objective": Field(ml_collections.ConfigDict({"name": "nll"}), mapping,
                       "{name, **params}: the objective and its parameters (deft_jax.objectives)"),
    "loss.impl": Field("naive", one_of(*LOSS_IMPLS),
                       "'naive' (full logits) | 'chunked' (fused lm-head + objective)"),
    "loss.chunk_size": Field(2048, integer(1), "tokens per chunk for impl='chunked'"),
    "loss.normalization": Field("token", one_of(*objectives.NORMALIZATIONS), "'token' | 'sequence' | 'gate'"),
    "loss.accumulation": Field("exact", one_of(*ACCUMULATION_MODES),
                               "'exact' (Σ sums / Σ denominators) | 'mean_of_micro_means' (official)"),
    "batch_size": Field(256, integer(1), "global rows per optimizer step"),
    "micro_batch_size": Field(0, integer(0), "global rows per micro-batch (accumulation); 0 = batch_size"),
    "num_epochs": Field(1.0, number(0, low_open=True), "epochs over the train split"),
    "total_steps": Field(0, integer(0), "0 = num_epochs x len(train split) / batch_size"),
    "optim.lr": Field(5e-5, number(0), "peak learning rate"),
    "optim.b1": Field(0.9, number(0, 1, high_open=True), "AdamW β1"),
    "optim.b2": Field(0.95, number(0, 1, high_open=True), "AdamW β2"),
    "optim.eps": Field(1e-8, number(0, low_open=True), "AdamW ε"),
    "optim.weight_decay": Field(0.01, number(0), "decoupled weight decay on every parameter"),
    "optim.schedule": Field("cosine", one_of(*SCHEDULES), "'cosine' | 'constant', both after linear warmup"),
    "optim.warmup_ratio": Field(0.1, number(0, 1), "warmup steps = int(ratio x total_steps)"),
    "optim.min_lr_ratio": Field(0.0, number(0, 1), "cosine ends at lr x min_lr_ratio"),
    "optim.clip_norm": Field(1.0, number(0), "global grad-norm clip; 0 disables"),
    "optim.skip_nonfinite": Field(True, boolean, "a non-finite loss or grad norm leaves params unchanged"),
    "mesh.data": Field(-1, mesh_size, "data-parallel size; -1 = all remaining devices"),
    "mesh.fsdp": Field(1, mesh_size, "fully sharded data-parallel size"),
    "mesh.tensor": Field(1, mesh_size, "tensor-parallel size"),
    "mesh.rules": Field((), logical_rules, "((logical name, mesh axis or None), ...) over the defaults"),
    "distributed.initialize": Field(False, boolean,
                                    "jax.distributed.initialize (also when $DEFT_COORDINATOR_ADDRESS is set)"),
    "distributed.coordinator_address": Field("", string, "host:port of process 0"),
    "distributed.num_processes": Field(0, integer(0), "0 = from the environment"),
    "distributed.process_id": Field(-1, integer(-1), "-1 = from the environment"),
    "distributed.cpu_collectives": Field("gloo", one_of("gloo", "mpi", ""), "CPU collectives implementation"),
    "distributed.heartbeat_timeout_seconds": Field(
        60, integer(1), "a process silent this long counts as lost: every process then ends, exit 75"),
    "distributed.initialization_timeout_seconds": Field(
        300, integer(1), "how long the processes wait for each other at start"),
    "distributed.shutdown_timeout_seconds": Field(
        60, integer(1), "how long a finished process waits for the others at exit"),
    "checkpoint.every_steps": Field(500, integer(1), "steps between checkpoints"),
    "checkpoint.keep": Field(3, integer(1), "checkpoints kept"),
    "checkpoint.async_save": Field(True, boolean, "write checkpoints in the background"),
    "eval.every_steps": Field(0, integer(0), "steps between evals; 0 = only at the end (if at_end)"),
    "eval.at_end": Field(True, boolean, "evaluate after the last step"),
    "eval.batch_size": Field(64, integer(1), "global rows per eval batch"),
    "eval.batching": Field("continuous", one_of("continuous", "static"),
                           "suite sampling: 'continuous' (decode slots refilled as rows stop) | 'static' "
                           "(length batches decoded until their longest row stops); the same samples"),
    "eval.report_prompts": Field(0, integer(0), "after training, the train command scores the base and the "
                                 "fine-tuned model on the first N held-out prompts and prints the table "
                                 "(0 = off; at most data.num_eval)"),
    "log_every": Field(10, integer(1), "steps between metric writes"),
    "progress": Field("auto", one_of(*PROGRESS_MODES),
                      "'auto' (bar on a terminal, lines otherwise) | 'bar' | 'lines' | 'off'"),
    "peak_flops_per_device": Field(0.0, number(0), "for MFU; 0 = by device kind"),
    "tensorboard": Field(True, boolean, "also write TensorBoard event files"),
    "compilation_cache_dir": Field("", string, "persistent XLA compilation cache ('' = off)"),
}


# Fields added after runs were saved with config.json: a saved config without them takes the default.
LATER_FIELDS = ("model.attention", "model.attention_block_q", "model.attention_block_kv", "model.remat_policy",
                "eval.batching")


def with_later_fields(config) -> ml_collections.ConfigDict:
    """A copy of a saved config with every missing LATER_FIELDS entry set to its default (old runs load)."""
    config = copy.deepcopy(config)
    for name in LATER_FIELDS:
        *parents, leaf = name.split(".")
        node = config
        for parent in parents:
            if parent not in node:
                node[parent] = ml_collections.ConfigDict()
            node = node[parent]
        if leaf not in node:
            node[leaf] = copy.deepcopy(FIELDS[name].default)
    return config


def default_config() -> ml_collections.ConfigDict:
    """Every field with its default (data: deft_jax.data.default_data_config())."""
    config = ml_collections.ConfigDict()
    for name, field in FIELDS.items():
        *parents, leaf = name.split(".")
        node = config
        for parent in parents:
            if parent not in node:
                node[parent] = ml_collections.ConfigDict()
            node = node[parent]
        node[leaf] = copy.deepcopy(field.default)
    config.data = data_lib.default_data_config()
    return config


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if name in OWNED_SECTIONS or not isinstance(value, (Mapping, ml_collections.ConfigDict)):
            out[name] = value
        else:
            out.update(_flatten(value, prefix=f"{name}."))
    return out


# ====================================================================================================
# Validation (once, after every override; nothing is compiled).

def objective_spec(config) -> objectives.ObjectiveSpec:
    """The validated objective of `config.objective` ({name, **params})."""
    section = dict(config.objective)
    name = section.pop("name", None)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"config.objective.name must name an objective "
                          f"({', '.join(objectives.list_objectives())}), got {name!r}")
    try:
        return objectives.parse_objective(name, **section)
    except ValueError as error:
        raise ConfigError(f"config.objective: {error}") from None


def validate(config, *, num_devices: int | None = None) -> None:
    """Raise ConfigError naming the first unknown, missing or out-of-range field.

    With `num_devices`, also the mesh against that many devices and the batch sizes against the mesh.
    """
    flat = _flatten(config)
    unknown = sorted(set(flat) - set(FIELDS))
    if unknown:
        raise ConfigError(f"config.{unknown[0]} is not a known field{errors.did_you_mean(unknown[0], FIELDS)}")
    missing = sorted(set(FIELDS) - set(flat))
    if missing:
        raise ConfigError(f"config.{missing[0]} is missing (missing: {missing}); start from configs/base.py")
    for name, field in FIELDS.items():
        problem = field.check(flat[name])
        if problem:
            raise ConfigError(f"config.{name}{'' if problem.startswith(('.', ' ')) else ' '}{problem}")
    objective_spec(config)
    known_model_fields = {f.name for f in dataclasses.fields(model_lib.ModelConfig)}
    bad = sorted(set(config.model.overrides.keys()) - known_model_fields)
    if bad:
        raise ConfigError(f"config.model.overrides.{bad[0]} is not a ModelConfig field"
                          f"{errors.did_you_mean(bad[0], known_model_fields)}")
    if config.model.remat and config.model.remat_policy == "none":
        raise ConfigError("config.model.remat=True contradicts config.model.remat_policy='none'; "
                          "set remat=False or another policy")
    micro = config.micro_batch_size or config.batch_size
    if config.batch_size % micro:
        raise ConfigError(f"config.batch_size={config.batch_size} is not a multiple of "
                          f"config.micro_batch_size={config.micro_batch_size}.")
    if config.eval.report_prompts and config.data.num_eval is not None and \
            config.eval.report_prompts > config.data.num_eval:
        raise ConfigError(f"config.eval.report_prompts={config.eval.report_prompts} is more than the eval split "
                          f"(config.data.num_eval={config.data.num_eval}); raise data.num_eval or lower it.")
    if config.model.name == TINY_MODEL and config.model.init != "random":
        raise ConfigError("config.model.init must be 'random' for model.name='tiny' (it has no weights).")
    if config.model.name == TINY_MODEL and not config.tokenizer:
        raise ConfigError("config.tokenizer: model 'tiny' has no tokenizer of its own; set tokenizer='byte' "
                          "or a tokenizer name/path.")
    if num_devices is not None:
        try:
            sizes = sharding_lib.resolve_mesh_shape(data=config.mesh.data, fsdp=config.mesh.fsdp,
                                                    tensor=config.mesh.tensor, num_devices=num_devices)
        except ValueError as error:
            raise ConfigError(f"config.mesh: {error}") from None
        check_batch_divisibility(config, data_parallel=sizes["data"] * sizes["fsdp"])


def check_batch_divisibility(config, *, data_parallel: int) -> None:
    """Each micro-batch (and eval batch) must split evenly over the data-parallel shards (data x fsdp)."""
    micro = config.micro_batch_size or config.batch_size
    field = "micro_batch_size" if config.micro_batch_size else "batch_size"
    if micro % data_parallel:
        raise ConfigError(
            f"config.{field}={micro} (rows per micro-batch) is not divisible by the data-parallel size "
            f"{data_parallel} (mesh data x fsdp); choose a multiple of {data_parallel}.")
    if config.eval.batch_size % data_parallel and (config.eval.at_end or config.eval.every_steps):
        raise ConfigError(f"config.eval.batch_size={config.eval.batch_size} is not divisible by the "
                          f"data-parallel size {data_parallel} (mesh data x fsdp).")


# ====================================================================================================
# Config files and overrides.

def load_config_module(path: str | pathlib.Path):
    """Import a config file (configs/<name>.py) as a module, as ml_collections' config_flags does."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found")
    # A name unique per file, so two config files with one stem never share a module.
    module_spec = importlib.util.spec_from_file_location(f"deft_config_{abs(hash(str(path.resolve())))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def load_config(spec: str) -> ml_collections.ConfigDict:
    """'configs/deformed_log.py:alpha=0.5,smoke' -> the file's get_config('alpha=0.5,smoke')."""
    path, _, arg = str(spec).partition(":")
    return load_config_module(path).get_config(arg or None)


def get_field(config, dotted: str) -> Any:
    """config['a']['b'] for 'a.b'; ConfigError naming the missing part."""
    node = config
    for i, part in enumerate(dotted.split(".")):
        if not isinstance(node, (Mapping, ml_collections.ConfigDict)) or part not in node:
            known = list(node.keys()) if isinstance(node, (Mapping, ml_collections.ConfigDict)) else []
            where = ".".join(dotted.split(".")[:i + 1])
            raise ConfigError(f"config.{where} is not a known field{errors.did_you_mean(part, known)}")
        node = node[part]
    return node


def apply_overrides(config, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A validated copy of `config` with dotted-key overrides ({'objective.alpha': 0.1}, as sweep() returns).

    An unknown key raises ConfigError with the nearest known name."""
    config = copy.deepcopy(config)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = get_field(config, ".".join(parents)) if parents else config
        if leaf not in node:
            raise ConfigError(f"override config.{key}={value!r}: {leaf!r} is not a known field"
                              f"{errors.did_you_mean(leaf, list(node.keys()))}")
        try:
            node[leaf] = value
        except (AttributeError, KeyError, TypeError) as error:
            raise ConfigError(f"override config.{key}={value!r}: {error}") from None
    validate(config)
    return config
