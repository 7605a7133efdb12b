"""Training: the pure train step and the loop.

    python -m deft_jax.train --config configs/deft.py:runlocal --workdir runs/deft_figfont
    python -m deft_jax.train --config configs/deformed_log.py:alpha=0.5 --config.optim.lr=1e-5 --workdir DIR

Data flows one way: config -> data pipeline -> global batch -> train step (model -> objective -> reduce
-> optax) -> metrics / checkpoints. The pieces, each a pure function:

  loss_fn(params, batch, ...)   model forward -> objectives (per token) -> objectives.reduce: returns the
                                objective's (sum, denominator) pair and the metric sums of one micro-batch.
  accumulate_gradients(...)     lax.scan over micro-batches, summing gradients of the sums, the sums and
                                the denominators; divides once ('exact'), or averages per-micro-batch
                                means as the official code ('mean_of_micro_means').
  train_step(state, batch)      AdamW on the accumulated gradient (lr from the step's cosine schedule,
                                global-norm clip), non-finite steps skipped and counted; -> (state, metrics).

The step is compiled once per batch shape with `jax.jit`, explicit in/out shardings and the state donated,
under a (data, fsdp, tensor) mesh; parameters and optimizer state are placed by logical-axis rules.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import logging
import math
import os
import pathlib
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from deft_jax import checkpointing
from deft_jax import metrics as metrics_lib
from deft_jax import model as model_lib
from deft_jax import objectives
from deft_jax import sharding as sharding_lib

logger = logging.getLogger(__name__)

ACCUMULATION_MODES = ("exact", "mean_of_micro_means")
SCHEDULES = ("cosine", "constant")
BATCH_KEYS = ("inputs", "targets", "loss_mask", "positions", "segment_ids")
DTYPES = ("float32", "bfloat16", "float16")
TINY_MODEL = "tiny"
TINY_VOCAB_MULTIPLE = 8  # tiny models round the tokenizer's vocabulary up to this (shardable over tensor)


# ====================================================================================================
# Train state.

@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes; a pytree (checkpointed whole)."""

    step: jax.Array  # int32 [], optimizer steps taken (skipped ones included, as the official scheduler)
    params: Any  # float32 (config.model.param_dtype) parameter tree
    opt_state: Any  # optax state (AdamW moments in the parameters' dtype)
    rng: jax.Array  # uint32 [2] raw PRNG key, split every step
    skipped_steps: jax.Array  # int32 [], steps whose loss or gradient norm was not finite


# ====================================================================================================
# Config validation (before anything is compiled).

def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value) -> bool:
    return (_is_int(value) or isinstance(value, (float, np.floating))) and math.isfinite(float(value))


def _int(low=None):
    def check(value):
        if not _is_int(value):
            return f"must be an int, got {value!r}"
        if low is not None and value < low:
            return f"must be >= {low}, got {value!r}"
        return None
    return check


def _number(low=None, high=None, *, low_open=False, high_open=False):
    def check(value):
        if not _is_number(value):
            return f"must be a finite number, got {value!r}"
        if low is not None and (value < low or (low_open and value == low)):
            return f"must be {'>' if low_open else '>='} {low}, got {value!r}"
        if high is not None and (value > high or (high_open and value == high)):
            return f"must be {'<' if high_open else '<='} {high}, got {value!r}"
        return None
    return check


def _one_of(*choices):
    def check(value):
        return None if value in choices else f"must be one of {choices}, got {value!r}"
    return check


def _bool(value):
    return None if isinstance(value, bool) else f"must be True or False, got {value!r}"


def _str(value):
    return None if isinstance(value, str) else f"must be a string, got {value!r}"


def _nonempty_str(value):
    return None if isinstance(value, str) and value else f"must be a non-empty string, got {value!r}"


def _mesh_size(value):
    if not _is_int(value) or not (value == -1 or value >= 1):
        return f"must be a positive int or -1 (all remaining devices), got {value!r}"
    return None


def _rules(value):
    try:
        sharding_lib.logical_rules(base_rules=(), overrides=value)
    except (ValueError, TypeError) as error:
        return str(error)
    return None


def _mapping(value):
    return None if isinstance(value, (Mapping, ml_collections.ConfigDict)) else f"must be a dict, got {value!r}"


LOSS_IMPLS = ("naive", "chunked")

# Every field the trainer reads (config.data and config.objective are validated by their owners).
CONFIG_FIELDS: dict[str, Any] = {
    "seed": _int(0),
    "model.name": _nonempty_str,
    "model.init": _one_of("pretrained", "random"),
    "model.dtype": _one_of(*DTYPES),
    "model.param_dtype": _one_of(*DTYPES),
    "model.remat": _bool,
    "model.scan_layers": _bool,
    "model.scan_unroll": _int(1),
    "model.overrides": _mapping,
    "tokenizer": _str,
    "loss.impl": _one_of(*LOSS_IMPLS),
    "loss.chunk_size": _int(1),
    "loss.normalization": _one_of(*objectives.NORMALIZATIONS),
    "loss.accumulation": _one_of(*ACCUMULATION_MODES),
    "batch_size": _int(1),
    "micro_batch_size": _int(0),
    "num_epochs": _number(0, low_open=True),
    "total_steps": _int(0),
    "optim.lr": _number(0),
    "optim.b1": _number(0, 1, high_open=True),
    "optim.b2": _number(0, 1, high_open=True),
    "optim.eps": _number(0, low_open=True),
    "optim.weight_decay": _number(0),
    "optim.schedule": _one_of(*SCHEDULES),
    "optim.warmup_ratio": _number(0, 1),
    "optim.min_lr_ratio": _number(0, 1),
    "optim.clip_norm": _number(0),
    "optim.skip_nonfinite": _bool,
    "mesh.data": _mesh_size,
    "mesh.fsdp": _mesh_size,
    "mesh.tensor": _mesh_size,
    "mesh.rules": _rules,
    "distributed.initialize": _bool,
    "distributed.coordinator_address": _str,
    "distributed.num_processes": _int(0),
    "distributed.process_id": _int(-1),
    "distributed.cpu_collectives": _one_of("gloo", "mpi", ""),
    "checkpoint.every_steps": _int(1),
    "checkpoint.keep": _int(1),
    "checkpoint.async_save": _bool,
    "eval.every_steps": _int(0),
    "eval.at_end": _bool,
    "eval.batch_size": _int(1),
    "log_every": _int(1),
    "progress": _one_of("auto", "bar", "lines", "off"),
    "peak_flops_per_device": _number(0),
    "tensorboard": _bool,
    "compilation_cache_dir": _str,
}
_OWNED_SECTIONS = ("data", "objective", "model.overrides")  # validated as a whole, not field by field


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if name in _OWNED_SECTIONS or not isinstance(value, (Mapping, ml_collections.ConfigDict)):
            out[name] = value
        else:
            out.update(_flatten(value, prefix=f"{name}."))
    return out


def objective_spec(config) -> objectives.ObjectiveSpec:
    """The validated objective of `config.objective` ({name, **params}); ValueError names the field."""
    section = dict(config.objective)
    name = section.pop("name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"config.objective.name must name an objective ({', '.join(objectives.list_objectives())})"
                         f", got {name!r}")
    try:
        return objectives.parse_objective(name, **section)
    except ValueError as error:
        raise ValueError(f"config.objective: {error}") from None


def validate_config(config, *, check_devices: bool = True, num_devices: int | None = None) -> None:
    """Raise ValueError naming the first unknown, missing or out-of-range field (nothing is compiled).

    With check_devices, also the mesh against the devices and the batch sizes against the mesh.
    """
    from deft_jax import data as data_lib

    flat = _flatten(config)
    unknown = sorted(set(flat) - set(CONFIG_FIELDS) - set(_OWNED_SECTIONS))
    if unknown:
        raise ValueError(f"config.{unknown[0]} is not a known field (unknown: {unknown}); known fields: "
                         f"{sorted(CONFIG_FIELDS) + list(_OWNED_SECTIONS)}")
    missing = sorted(set(CONFIG_FIELDS) - set(flat))
    if missing:
        raise ValueError(f"config.{missing[0]} is missing (missing: {missing}); start from configs/base.py")
    for name, check in CONFIG_FIELDS.items():
        problem = check(flat[name])
        if problem:
            raise ValueError(f"config.{name} {problem}")
    data_lib.validate_data_config(config.data)
    objective_spec(config)  # validates the objective name and parameters
    known_model_fields = {f.name for f in dataclasses.fields(model_lib.ModelConfig)}
    bad = sorted(set(config.model.overrides.keys()) - known_model_fields)
    if bad:
        raise ValueError(f"config.model.overrides.{bad[0]} is not a ModelConfig field; fields: "
                         f"{sorted(known_model_fields)}")
    micro = config.micro_batch_size or config.batch_size
    if config.batch_size % micro:
        raise ValueError(f"config.batch_size={config.batch_size} is not a multiple of "
                         f"config.micro_batch_size={config.micro_batch_size}.")
    if config.model.name == TINY_MODEL and config.model.init != "random":
        raise ValueError("config.model.init must be 'random' for model.name='tiny' (it has no weights).")
    if config.model.name == TINY_MODEL and not config.tokenizer:
        raise ValueError("config.tokenizer: model 'tiny' has no tokenizer of its own; set tokenizer='byte' "
                         "or a tokenizer name/path.")
    if check_devices:
        num_devices = len(jax.devices()) if num_devices is None else num_devices
        sizes = sharding_lib.resolve_mesh_shape(data=config.mesh.data, fsdp=config.mesh.fsdp,
                                                tensor=config.mesh.tensor, num_devices=num_devices)
        check_batch_divisibility(config, data_parallel=sizes["data"] * sizes["fsdp"])


def check_batch_divisibility(config, *, data_parallel: int) -> None:
    """Each micro-batch must split evenly over the data-parallel shards (data x fsdp)."""
    micro = config.micro_batch_size or config.batch_size
    field = "micro_batch_size" if config.micro_batch_size else "batch_size"
    if micro % data_parallel:
        raise ValueError(
            f"config.{field}={micro} (rows per micro-batch) is not divisible by the data-parallel size "
            f"{data_parallel} (mesh data x fsdp); choose a multiple of {data_parallel}.")
    if config.eval.batch_size % data_parallel and (config.eval.at_end or config.eval.every_steps):
        raise ValueError(f"config.eval.batch_size={config.eval.batch_size} is not divisible by the "
                         f"data-parallel size {data_parallel} (mesh data x fsdp).")


# ====================================================================================================
# Tokenizer and model.

def build_tokenizer(config):
    from deft_jax.tokenizer import load_tokenizer

    return load_tokenizer(config.tokenizer or config.model.name)


def _model_fields(config) -> dict[str, Any]:
    fields = dict(dtype=config.model.dtype, param_dtype=config.model.param_dtype, remat=config.model.remat,
                  scan_layers=config.model.scan_layers, scan_unroll=config.model.scan_unroll)
    fields.update(config.model.overrides.to_dict() if hasattr(config.model.overrides, "to_dict")
                  else dict(config.model.overrides))
    return fields


def build_model_config(config, *, tokenizer, base: model_lib.ModelConfig | None = None) -> model_lib.ModelConfig:
    """The ModelConfig: `base` (the checkpoint's architecture, config.model's fields already applied) or
    ModelConfig.tiny with config.model's dtype / param_dtype / remat / scan_layers / overrides. Tiny models
    get the tokenizer's vocabulary rounded up to a multiple of 8."""
    if base is None:
        vocab = -(-tokenizer.vocab_size // TINY_VOCAB_MULTIPLE) * TINY_VOCAB_MULTIPLE
        model_config = model_lib.ModelConfig.tiny(**{"vocab_size": vocab, **_model_fields(config)})
    else:
        model_config = base
    if tokenizer.vocab_size > model_config.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary is "
                         f"{model_config.vocab_size}; use the model's own tokenizer (config.tokenizer='').")
    return model_config


def load_pretrained(config, *, mesh: Mesh, rules) -> tuple[model_lib.ModelConfig, Any]:
    """(architecture, params placed on the mesh) of config.model.name, via deft_jax.weights."""
    from deft_jax import presets, weights

    if presets.is_preset(config.model.name):
        raise ValueError(f"config.model.name={config.model.name!r} is an architecture preset (no weights); "
                         "set it to the checkpoint's directory or .gguf file, or set config.model.init='random'.")
    fields = _model_fields(config)
    return weights.load_pretrained(config.model.name, mesh=mesh, rules=rules, **fields)


def pretrained_architecture(config) -> model_lib.ModelConfig:
    """The checkpoint's (or architecture preset's) ModelConfig with config.model's fields (dtype, remat,
    scan...), tensors unread."""
    from deft_jax import presets, weights

    if presets.is_preset(config.model.name):
        return presets.model_config(config.model.name, **_model_fields(config))
    return weights.load_model_config(config.model.name, **_model_fields(config))


# ====================================================================================================
# Optimizer and schedule.

@dataclasses.dataclass(frozen=True)
class Schedule:
    """Learning-rate schedule settings (config.optim). The step receives them as float32 data, not
    as constants of the program, so runs that differ only in lr, length or warmup share a compilation."""

    lr: float
    total_steps: int
    warmup_ratio: float = 0.0
    kind: str = "cosine"  # 'cosine' | 'constant'
    min_lr_ratio: float = 0.0

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise ValueError(f"config.optim.schedule={self.kind!r} is not one of {SCHEDULES}.")

    @property
    def warmup_steps(self) -> int:
        return int(self.total_steps * self.warmup_ratio)

    def as_arrays(self) -> dict[str, np.ndarray]:
        values = {"lr": self.lr, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                  "min_lr_ratio": self.min_lr_ratio, "cosine": float(self.kind == "cosine")}
        return {key: np.float32(value) for key, value in values.items()}


def scheduled_learning_rate(step, schedule: Mapping[str, Any]):
    """lr · factor(step) for the 0-based optimizer step (the official / transformers schedule):

        warmup (step < W):  step / max(1, W)
        cosine:             max(0, r + (1 − r) · ½(1 + cos(π · (step − W) / max(1, T − W))))
        constant:           1
    with W = int(warmup_ratio · T), r = min_lr_ratio. Step 0 has lr 0 when W > 0, as in the official code.
    `schedule`: Schedule.as_arrays() (arrays or traced values).
    """
    step = jnp.asarray(step, jnp.float32)
    warmup, total = schedule["warmup_steps"], schedule["total_steps"]
    warm = step / jnp.maximum(1.0, warmup)
    progress = jnp.clip((step - warmup) / jnp.maximum(1.0, total - warmup), 0.0, 1.0)
    cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    ratio = schedule["min_lr_ratio"]
    decay = jnp.where(schedule["cosine"] > 0, jnp.maximum(0.0, ratio + (1.0 - ratio) * cosine), 1.0)
    return schedule["lr"] * jnp.where(step < warmup, warm, decay)


def learning_rate(step, *, lr: float, total_steps: int, warmup_ratio: float, schedule: str = "cosine",
                  min_lr_ratio: float = 0.0):
    """`scheduled_learning_rate` from plain settings."""
    arrays = Schedule(lr=lr, total_steps=total_steps, warmup_ratio=warmup_ratio, kind=schedule,
                      min_lr_ratio=min_lr_ratio).as_arrays()
    return scheduled_learning_rate(step, arrays)


@functools.lru_cache(maxsize=32)  # one object per setting: it is part of the (hashable) step spec
def make_optimizer(*, b1: float, b2: float, eps: float, weight_decay: float) -> optax.GradientTransformation:
    """AdamW direction without the learning rate (applied per step from the schedule):
    u = m̂ / (√v̂ + eps) + weight_decay · θ, on every parameter (torch.optim.AdamW as the official code)."""
    return optax.chain(optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
                       optax.add_decayed_weights(weight_decay))


# ====================================================================================================
# Loss path.

@dataclasses.dataclass(frozen=True)
class LossSpec:
    """Static description of the loss path (hashable: it selects the compiled program)."""

    model_config: model_lib.ModelConfig
    objective: objectives.ObjectiveSpec
    normalization: str = "token"
    impl: str = "naive"
    chunk_size: int = 2048


def objective_output(params, batch, *, loss: LossSpec) -> objectives.ObjectiveOutput:
    """Model forward, then the objective per token (config.loss.impl picks the path; no fallback)."""
    model_config = loss.model_config
    targets, mask = batch["targets"], batch["loss_mask"]
    forward = functools.partial(model_lib.forward, params, model_config, batch["inputs"],
                                positions=batch["positions"], segment_ids=batch["segment_ids"])
    if loss.impl == "naive":
        return objectives.compute(loss.objective, forward(), targets, mask)
    if loss.impl == "chunked":
        from deft_jax import fused

        hidden = forward(return_hidden=True)
        weight = model_lib.lm_head_weight(params, model_config).astype(hidden.dtype)
        return fused.compute_chunked(loss.objective, hidden, weight, targets, mask, chunk_size=loss.chunk_size)
    raise ValueError(f"config.loss.impl={loss.impl!r} is not one of {LOSS_IMPLS}.")


ALPHA_BINS = len(metrics_lib.ALPHA_HISTOGRAM_EDGES) - 1


def metric_sums(output: objectives.ObjectiveOutput, batch) -> dict[str, jax.Array]:
    """Additive per-micro-batch metric sums (means are taken once, after accumulation)."""
    mask = batch["loss_mask"]
    sums = {f"{name}_sum": pair[0] for name, pair in objectives.token_metrics(output, mask).items()}
    valid = mask != 0
    sums["supervised_tokens"] = jnp.sum(valid.astype(jnp.float32))
    sums["tokens"] = jnp.sum((batch["segment_ids"] != 0).astype(jnp.float32))
    if output.alpha is not None:
        bins = jnp.clip(jnp.floor(output.alpha * ALPHA_BINS), 0, ALPHA_BINS - 1).astype(jnp.int32)
        one_hot = jax.nn.one_hot(bins, ALPHA_BINS, dtype=jnp.float32) * valid[..., None]
        sums["alpha_histogram"] = jnp.sum(one_hot.reshape(-1, ALPHA_BINS), axis=0)
    return sums


def loss_fn(params, batch, *, loss: LossSpec) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One micro-batch: (objective sum, {'denominator', metric sums}); mean = sum / denominator.

    Returned as a (sum, denominator) pair, never pre-divided, so micro-batches, packing and hosts
    combine exactly (objectives.reduce's named normalisation picks the denominator).
    """
    output = objective_output(params, batch, loss=loss)
    total, denominator = objectives.reduce_output(output, normalization=loss.normalization,
                                                  segment_ids=batch["segment_ids"])
    return total, {"denominator": denominator, **metric_sums(output, batch)}


def split_micro_batches(batch: Mapping[str, jax.Array], *, num: int, mesh: Mesh | None = None):
    """[B, ...] -> [num, B/num, ...], micro-batch m = rows m, m + num, m + 2·num, ... (strided, so that
    every micro-batch spans every data shard of a batch split in contiguous blocks over devices)."""
    def split(x):
        rows = x.shape[0]
        x = x.reshape(rows // num, num, *x.shape[1:]).swapaxes(0, 1)
        if mesh is not None:
            spec = PartitionSpec(None, sharding_lib.BATCH_AXES, *([None] * (x.ndim - 2)))
            x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
        return x
    return {key: split(value) for key, value in batch.items()}


def accumulate_gradients(params, batch, *, loss: LossSpec, num_micro_batches: int,
                         accumulation: str = "exact", mesh: Mesh | None = None):
    """(loss, grads, sums) over `num_micro_batches` micro-batches of `batch`.

    exact:                loss = Σ_m sum_m / Σ_m den_m,   grads = Σ_m ∇sum_m / Σ_m den_m
    mean_of_micro_means:  loss = (1/M) Σ_m sum_m / den_m, grads = (1/M) Σ_m ∇sum_m / den_m  (official)
    Denominators carry no gradient (token counts, kept counts or stop-gradient gates).
    """
    if accumulation not in ACCUMULATION_MODES:
        raise ValueError(f"config.loss.accumulation={accumulation!r} is not one of {ACCUMULATION_MODES}.")
    grad_fn = jax.value_and_grad(functools.partial(loss_fn, loss=loss), has_aux=True)

    def one(micro):
        (total, aux), grads = grad_fn(params, micro)
        denominator = aux.pop("denominator")
        if accumulation == "mean_of_micro_means":
            scale = objectives.safe_divide(jnp.float32(1.0), denominator)
            grads = jax.tree.map(lambda g: g * scale, grads)
            total, denominator = total * scale, jnp.float32(1.0)
        return grads, total, denominator, aux

    if num_micro_batches == 1:
        grads, total, denominator, sums = one(batch)
    else:
        micro = split_micro_batches(batch, num=num_micro_batches, mesh=mesh)

        def body(carry, micro_batch):
            out = one(micro_batch)
            return jax.tree.map(jnp.add, carry, out), None

        first = jax.tree.map(lambda x: x[0], micro)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(one, first))
        (grads, total, denominator, sums), _ = jax.lax.scan(body, zeros, micro)
    if accumulation == "mean_of_micro_means":
        denominator = jnp.float32(num_micro_batches)
    grads = jax.tree.map(lambda g: objectives.safe_divide(g, denominator), grads)
    return objectives.safe_divide(total, denominator), grads, sums


# ====================================================================================================
# The train step.

@dataclasses.dataclass(frozen=True)
class StepSpec:
    """Static settings of the train step (hashable: together with the mesh they select the program)."""

    loss: LossSpec
    optimizer: Any  # optax.GradientTransformation (AdamW direction, no lr)
    clip_norm: float = 1.0
    num_micro_batches: int = 1
    accumulation: str = "exact"
    skip_nonfinite: bool = True


def _mean(total, count):
    return objectives.safe_divide(total, count)


def global_norm(tree) -> jax.Array:
    """sqrt(Σ x²) over every leaf, in float32."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def train_step(state: TrainState, batch, schedule, *, spec: StepSpec, mesh: Mesh | None = None):
    """(state, global batch, schedule arrays) -> (new state, metrics). Pure; jit it with
    `compile_train_step`; `bind_schedule` turns it into the (state, batch) -> (state, metrics) step."""
    loss, grads, sums = accumulate_gradients(state.params, batch, loss=spec.loss,
                                             num_micro_batches=spec.num_micro_batches,
                                             accumulation=spec.accumulation, mesh=mesh)
    grad_norm = global_norm(grads)
    if spec.clip_norm > 0:  # optax.clip_by_global_norm: g · min(1, c / ‖g‖)
        scale = jnp.where(grad_norm > spec.clip_norm, spec.clip_norm / grad_norm, 1.0)
        grads = jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)
    lr = scheduled_learning_rate(state.step, schedule)
    direction, opt_state = spec.optimizer.update(grads, state.opt_state, state.params)
    params = jax.tree.map(lambda p, u: (p - lr * u).astype(p.dtype), state.params, direction)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if spec.skip_nonfinite:  # as the official code: no optimizer step, the schedule still advances
        params = jax.tree.map(lambda new, old: jnp.where(finite, new, old), params, state.params)
        opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), opt_state, state.opt_state)
    rng, _ = jax.random.split(state.rng)
    skipped = state.skipped_steps + (~finite).astype(jnp.int32)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng,
                              skipped_steps=skipped)
    count = sums["supervised_tokens"]
    metrics = {
        "train/loss": loss,
        "train/nll": _mean(sums["nll_sum"], count),
        "train/mean_p": _mean(sums["p_sum"], count),
        "train/mean_gate": _mean(sums["gate_sum"], count),
        "train/mean_entropy": _mean(sums["entropy_sum"], count),
        "train/mean_collision": _mean(sums["collision_sum"], count),
        "train/kept_fraction": _mean(sums["kept_fraction_sum"], count),
        "train/supervised_tokens": count,
        "train/tokens": sums["tokens"],
        "optim/grad_norm": grad_norm,
        "optim/param_norm": global_norm(params),
        "optim/lr": lr,
        "optim/skipped_steps": skipped,
        "optim/finite": finite.astype(jnp.float32),
    }
    if "alpha_sum" in sums:
        metrics["train/mean_alpha"] = _mean(sums["alpha_sum"], count)
        metrics["train/alpha_histogram"] = sums["alpha_histogram"]
    if "topk_entropy_sum" in sums:
        metrics["train/mean_topk_entropy"] = _mean(sums["topk_entropy_sum"], count)
    return new_state, metrics


def eval_step(params, batch, *, loss: LossSpec):
    """Sums over one evaluation batch (rows weighted by batch['weights']): objective, NLL, p, tokens."""
    batch = dict(batch)
    batch["loss_mask"] = batch["loss_mask"] * batch.pop("weights")[:, None]
    output = objective_output(params, batch, loss=loss)
    total, denominator = objectives.reduce_output(output, normalization=loss.normalization,
                                                  segment_ids=batch["segment_ids"])
    sums = metric_sums(output, batch)
    return {"loss_sum": total, "denominator": denominator, "nll_sum": sums["nll_sum"], "p_sum": sums["p_sum"],
            "supervised_tokens": sums["supervised_tokens"]}


# ====================================================================================================
# Shapes -> shardings -> state.

def param_shardings(model_config: model_lib.ModelConfig, *, mesh: Mesh, rules) -> tuple[Any, Any]:
    """(abstract params, NamedSharding tree) from the model's logical axes; checks divisibility."""
    abstract, logical = model_lib.abstract_params(model_config)
    shardings = sharding_lib.logical_to_shardings(logical_axes=logical, mesh=mesh, rules=rules)
    sharding_lib.check_divisible(abstract_tree=abstract, shardings=shardings, what="parameter")
    return abstract, shardings


def abstract_train_state(model_config, *, optimizer, mesh: Mesh, rules) -> tuple[TrainState, TrainState]:
    """(abstract TrainState, TrainState of NamedShardings): optimizer moments shard like their params."""
    abstract_params, shardings = param_shardings(model_config, mesh=mesh, rules=rules)
    abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
    replicated = sharding_lib.replicated(mesh)
    opt_shardings = sharding_lib.optimizer_state_shardings(abstract_opt, abstract_params=abstract_params,
                                                           param_shardings=shardings, other=replicated)
    scalar = jax.ShapeDtypeStruct((), jnp.int32)
    abstract = TrainState(step=scalar, params=abstract_params, opt_state=abstract_opt,
                          rng=jax.ShapeDtypeStruct((2,), jnp.uint32), skipped_steps=scalar)
    state_shardings = TrainState(step=replicated, params=shardings, opt_state=opt_shardings, rng=replicated,
                                 skipped_steps=replicated)
    return abstract, state_shardings


def _new_state(params, *, optimizer, seed: int) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                      rng=jax.random.PRNGKey(seed), skipped_steps=jnp.zeros((), jnp.int32))


def init_train_state(*, model_config, optimizer, seed: int, state_shardings: TrainState,
                     params=None) -> TrainState:
    """A fresh state placed on `state_shardings` by jit(out_shardings): random params from `seed`
    (params=None) or the given (already sharded) params, whose buffers are donated."""
    if params is None:
        def init(rng):
            params = model_lib.init_params(model_config, rng=jax.random.fold_in(rng, 1))
            return _new_state(params, optimizer=optimizer, seed=seed)
        return jax.jit(init, out_shardings=state_shardings)(jax.random.PRNGKey(seed))
    init = functools.partial(_new_state, optimizer=optimizer, seed=seed)
    return jax.jit(init, in_shardings=(state_shardings.params,), out_shardings=state_shardings,
                   donate_argnums=0)(params)


def compile_train_step(*, spec: StepSpec, mesh: Mesh, state_shardings: TrainState):
    """jax.jit(train_step) with explicit shardings, the state donated. Call it under `mesh_context`."""
    step = functools.partial(train_step, spec=spec, mesh=mesh)
    replicated = sharding_lib.replicated(mesh)
    return jax.jit(step, in_shardings=(state_shardings, sharding_lib.batch_sharding(mesh), replicated),
                   out_shardings=(state_shardings, replicated), donate_argnums=0)


def bind_schedule(compiled_step, schedule: Schedule):
    """The (state, batch) -> (state, metrics) step of one run: `compiled_step` with its schedule."""
    arrays = schedule.as_arrays()

    def step(state, batch):
        return compiled_step(state, batch, arrays)
    step.compiled = compiled_step
    return step


# Cached per (static spec, mesh, rules): repeated runs in one process (resume, sweeps, tests) reuse the
# traced and compiled functions instead of compiling them again.

@functools.lru_cache(maxsize=32)
def state_layout(model_config, optimizer, mesh: Mesh, rules) -> tuple[TrainState, TrainState]:
    return abstract_train_state(model_config, optimizer=optimizer, mesh=mesh, rules=rules)


@functools.lru_cache(maxsize=32)
def jitted_train_step(spec: StepSpec, mesh: Mesh, rules):
    _, shardings = state_layout(spec.loss.model_config, spec.optimizer, mesh, rules)
    return compile_train_step(spec=spec, mesh=mesh, state_shardings=shardings)


@functools.lru_cache(maxsize=32)
def jitted_eval_step(loss: LossSpec, mesh: Mesh):
    return jax.jit(functools.partial(eval_step, loss=loss), out_shardings=sharding_lib.replicated(mesh))


@functools.lru_cache(maxsize=32)
def _jitted_random_init(model_config, optimizer, mesh: Mesh, rules):
    _, shardings = state_layout(model_config, optimizer, mesh, rules)

    def init(seed):
        rng = jax.random.PRNGKey(seed)
        params = model_lib.init_params(model_config, rng=jax.random.fold_in(rng, 1))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                          rng=rng, skipped_steps=jnp.zeros((), jnp.int32))
    return jax.jit(init, out_shardings=shardings)


class mesh_context:  # noqa: N801 (a context manager used like a function)
    """`with jax.set_mesh(mesh), nn.logical_axis_rules(rules)`: activation constraints use the rules."""

    def __init__(self, mesh: Mesh, rules):
        self._mesh, self._rules = mesh, rules
        self._stack = []

    def __enter__(self):
        for context in (jax.set_mesh(self._mesh), nn.logical_axis_rules(self._rules)):
            context.__enter__()
            self._stack.append(context)
        return self

    def __exit__(self, *exc):
        while self._stack:
            self._stack.pop().__exit__(*exc)
        return False


# ====================================================================================================
# The loop.

class PreemptionFlag:
    """Set by SIGTERM (and SIGINT when asked); the loop saves a checkpoint and exits at the next step."""

    def __init__(self, *, signals=(signal.SIGTERM,)):
        self.requested = False
        self._previous = {}
        for sig in signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handler, no preemption support
                pass

    def _handle(self, signum, frame):
        logger.warning("signal %d: saving a checkpoint and exiting after this step", signum)
        self.requested = True

    def agreed(self) -> bool:
        """True when any process was asked to stop (all processes then stop at the same step)."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.array([self.requested]))))

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def prepare_workdir(workdir: str | os.PathLike) -> pathlib.Path:
    """Create `workdir` and check that it is writable (clear error before anything is compiled)."""
    path = pathlib.Path(workdir).expanduser().absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_probe_{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise PermissionError(f"workdir {str(path)!r} is not writable ({error.strerror or error}); choose "
                              f"another --workdir.") from None
    return path


def save_config(config, *, workdir: pathlib.Path) -> None:
    """Process 0 writes the resolved config to <workdir>/config.json (warning when it changed)."""
    if jax.process_index() != 0:
        return
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    path = workdir / "config.json"
    if path.exists() and path.read_text() != text:
        logger.warning("%s differs from the config of this run; overwriting it (resuming with changed "
                       "settings)", path)
    path.write_text(text)


def total_train_steps(config, *, num_examples: int) -> int:
    if config.total_steps:
        return int(config.total_steps)
    rows_per_step = config.batch_size
    return max(1, int(math.ceil(config.num_epochs * num_examples / rows_per_step)))


def _process_rows(mesh: Mesh, *, global_rows: int) -> tuple[int, int]:
    """(block index, block count): this process feeds rows [i·R/n, (i+1)·R/n) of each global batch.

    With the mesh's devices ordered by process, each process's devices hold one contiguous block of
    rows; the data iterator is then asked for that block (its process_index / process_count).
    """
    if jax.process_count() == 1:
        return 0, 1
    index_map = sharding_lib.batch_sharding(mesh).addressable_devices_indices_map((global_rows, 1))
    blocks = sorted({(s[0].start or 0, global_rows if s[0].stop is None else s[0].stop) for s in index_map.values()})
    lo, hi = blocks[0][0], blocks[-1][1]
    contiguous = all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    rows = hi - lo
    if not contiguous or global_rows % rows or lo % rows:
        raise ValueError(f"process {jax.process_index()} holds batch rows {blocks}, not one aligned contiguous "
                         f"block; order the mesh devices by process.")
    return lo // rows, global_rows // rows


def _put_batch(local: Mapping[str, np.ndarray], *, mesh: Mesh, global_rows: int) -> dict[str, jax.Array]:
    local = {key: local[key] for key in BATCH_KEYS}
    if jax.process_count() == 1:
        return {key: jax.device_put(value, sharding_lib.batch_sharding(mesh)) for key, value in local.items()}
    return sharding_lib.global_batch(local, mesh=mesh, global_batch_size=global_rows)


@dataclasses.dataclass
class Run:
    """What `setup_run` builds: everything the loop needs (also handy for tests and benchmarks)."""

    config: Any
    workdir: pathlib.Path
    mesh: Mesh
    rules: Any
    tokenizer: Any
    model_config: model_lib.ModelConfig
    spec: StepSpec
    schedule: Schedule
    flops_per_token: float  # at the configured row length (data.seq_len or max_length)
    abstract_state: TrainState
    state_shardings: TrainState
    train_examples: list
    eval_examples: list
    total_steps: int


def setup_run(config, workdir, *, devices: Sequence[Any] | None = None) -> Run:
    """Validate, build mesh, tokenizer, model config, data and the step's static spec (no compile)."""
    from deft_jax import data as data_lib

    config = copy.deepcopy(config)
    num_devices = len(devices) if devices is not None else None
    validate_config(config, check_devices=True, num_devices=num_devices)
    workdir = prepare_workdir(workdir)
    mesh = sharding_lib.mesh_from_config(config.mesh, devices=devices)
    rules = sharding_lib.logical_rules(base_rules=model_lib.DEFAULT_LOGICAL_RULES, overrides=config.mesh.rules)
    data_parallel = sharding_lib.data_parallel_size(mesh)
    check_batch_divisibility(config, data_parallel=data_parallel)

    tokenizer = build_tokenizer(config)
    if config.model.name == TINY_MODEL:
        model_config = build_model_config(config, tokenizer=tokenizer)
    else:
        model_config = build_model_config(config, tokenizer=tokenizer, base=pretrained_architecture(config))

    train_examples, report = data_lib.tokenize_examples(data_lib.load_examples(config.data, split="train"),
                                                        tokenizer=tokenizer, cfg=config.data)
    _log(jax.process_index() == 0, f"train data: {report.summary()}")
    eval_examples = []
    if config.eval.at_end or config.eval.every_steps:
        eval_examples, eval_report = data_lib.tokenize_examples(
            data_lib.load_examples(config.data, split="eval"), tokenizer=tokenizer, cfg=config.data)
        _log(jax.process_index() == 0, f"eval data: {eval_report.summary()}")
    total_steps = total_train_steps(config, num_examples=len(train_examples))

    spec = objective_spec(config)
    optimizer = make_optimizer(b1=config.optim.b1, b2=config.optim.b2, eps=config.optim.eps,
                               weight_decay=config.optim.weight_decay)
    seq_len = data_lib.row_length(config.data)
    step_spec = StepSpec(
        loss=LossSpec(model_config=model_config, objective=spec, normalization=config.loss.normalization,
                      impl=config.loss.impl, chunk_size=config.loss.chunk_size),
        optimizer=optimizer, clip_norm=float(config.optim.clip_norm),
        num_micro_batches=config.batch_size // (config.micro_batch_size or config.batch_size),
        accumulation=config.loss.accumulation, skip_nonfinite=config.optim.skip_nonfinite)
    schedule = Schedule(lr=float(config.optim.lr), total_steps=total_steps,
                        warmup_ratio=float(config.optim.warmup_ratio), kind=config.optim.schedule,
                        min_lr_ratio=float(config.optim.min_lr_ratio))
    abstract_state, state_shardings = state_layout(model_config, optimizer, mesh, rules)
    return Run(config=config, workdir=workdir, mesh=mesh, rules=rules, tokenizer=tokenizer,
               model_config=model_config, spec=step_spec, schedule=schedule,
               flops_per_token=model_lib.flops_per_token(model_config, seq_len=seq_len),
               abstract_state=abstract_state,
               state_shardings=state_shardings, train_examples=train_examples, eval_examples=eval_examples,
               total_steps=total_steps)


def initial_state(run: Run) -> TrainState:
    """Fresh state: pretrained weights (config.model.init='pretrained') or random ones from the seed."""
    config = run.config
    if config.model.init == "random":
        init = _jitted_random_init(run.model_config, run.spec.optimizer, run.mesh, run.rules)
        return init(jnp.uint32(config.seed))
    model_config, params = load_pretrained(config, mesh=run.mesh, rules=run.rules)
    if model_config != run.model_config:
        raise ValueError(f"the loaded model config {model_config} differs from {run.model_config}")
    return init_train_state(model_config=run.model_config, optimizer=run.spec.optimizer, seed=config.seed,
                            state_shardings=run.state_shardings, params=params)


def _eval_sums(run: Run, params, *, eval_fn) -> dict[str, float]:
    from deft_jax import data as data_lib

    config = run.config
    block, blocks = _process_rows(run.mesh, global_rows=config.eval.batch_size)
    batches = data_lib.make_eval_batches(run.eval_examples, batch_size=config.eval.batch_size // blocks,
                                         seq_len=data_lib.row_length(config.data),
                                         buckets=tuple(config.data.bucket_lengths), process_index=block,
                                         process_count=blocks, pad_id=run.tokenizer.pad_id)
    totals = None
    for batch in batches:
        arrays = {key: batch[key] for key in BATCH_KEYS + ("weights",)}
        if jax.process_count() == 1:
            arrays = {k: jax.device_put(v, sharding_lib.batch_sharding(run.mesh, ndim=v.ndim))
                      for k, v in arrays.items()}
        else:
            arrays = sharding_lib.global_batch(arrays, mesh=run.mesh, global_batch_size=config.eval.batch_size)
        sums = eval_fn(params, arrays)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = metrics_lib.to_host_scalars(totals)
    count = totals["supervised_tokens"]
    return {"eval/loss": totals["loss_sum"] / totals["denominator"] if totals["denominator"] else float("nan"),
            "eval/nll": totals["nll_sum"] / count if count else float("nan"),
            "eval/mean_p": totals["p_sum"] / count if count else float("nan"),
            "eval/supervised_tokens": count}


def train_and_evaluate(config, workdir, *, devices: Sequence[Any] | None = None,
                       stop_after: int | None = None) -> dict[str, Any]:
    """Train `config` in `workdir` (resuming from its latest checkpoint); returns the final metrics.

    `devices`: a subset of jax.devices() for the mesh (default all). `stop_after`: stop (with a
    checkpoint) after this many steps of this call, as a preemption would (tests, benchmarks).
    """
    from deft_jax import data as data_lib

    sharding_lib.maybe_initialize_distributed(config.distributed)
    if config.compilation_cache_dir:
        enable_compilation_cache(config.compilation_cache_dir)
    run = setup_run(config, workdir, devices=devices)
    config, workdir, mesh = run.config, run.workdir, run.mesh
    is_main = jax.process_index() == 0
    save_config(config, workdir=workdir)

    manager = checkpointing.make_manager(directory=checkpointing.checkpoint_dir(workdir),
                                         max_to_keep=config.checkpoint.keep,
                                         async_save=config.checkpoint.async_save)
    writer = metrics_lib.MetricWriter(workdir=workdir, enabled=is_main, tensorboard=config.tensorboard)
    preemption = PreemptionFlag()
    try:
        latest = manager.latest_step()
        data_state = None
        if latest is not None:
            target = sharding_lib.with_shardings(run.abstract_state, run.state_shardings)
            start = time.perf_counter()
            state, data_state, _ = checkpointing.restore(manager, target=target, step=latest)
            _log(is_main, f"resumed from {manager.directory}/{latest} ({time.perf_counter() - start:.2f}s)")
        else:
            state = initial_state(run)  # (outside the mesh context: weights are placed tensor by tensor)
        step = int(jax.device_get(state.step))
        with mesh_context(mesh, run.rules):
            block, blocks = _process_rows(mesh, global_rows=config.batch_size)
            iterator = data_lib.train_iterator_from_config(
                run.train_examples, cfg=config.data, batch_size=config.batch_size // blocks,
                process_index=block, process_count=blocks, pad_id=run.tokenizer.pad_id, state=data_state)
            compiled_step = jitted_train_step(run.spec, mesh, run.rules)
            train_fn = bind_schedule(compiled_step, run.schedule)
            eval_fn = jitted_eval_step(run.spec.loss, mesh)
            peak = metrics_lib.assumed_peak_flops_per_device(
                configured=config.peak_flops_per_device, device_kind=mesh.devices.flat[0].device_kind)
            _log(is_main, f"deft_jax: {run.spec.loss.objective} on {config.model.name} "
                          f"({model_lib.count_params(run.abstract_state.params) / 1e6:.1f}M params), task "
                          f"{config.data.task}, {len(run.train_examples)} train examples, {run.total_steps} "
                          f"steps of {config.batch_size} rows; mesh {dict(mesh.shape)} on {mesh.devices.size} "
                          f"{jax.default_backend()} device(s); MFU assumes {peak:.3g} FLOP/s per device; "
                          f"workdir {workdir}")
            progress = metrics_lib.Progress(total=run.total_steps, initial=step, enabled=is_main,
                                            mode=config.progress)
            final: dict[str, Any] = {}
            window_start, window_tokens, window_steps, first_step_seconds = None, 0, 0, None
            steps_this_call = 0
            save_seconds = []
            while step < run.total_steps:
                local = next(iterator)
                batch = _put_batch(local, mesh=mesh, global_rows=config.batch_size)
                started = time.perf_counter()
                state, step_metrics = train_fn(state, batch)
                step += 1
                steps_this_call += 1
                row_length = batch["inputs"].shape[1]
                positions = batch["inputs"].shape[0] * row_length
                if first_step_seconds is None:  # compile + first step; excluded from throughput
                    jax.block_until_ready(step_metrics)
                    first_step_seconds = time.perf_counter() - started
                    window_start = time.perf_counter()
                else:
                    window_tokens += positions
                    window_steps += 1
                last = step == run.total_steps
                if step % config.log_every == 0 or last:
                    scalars = metrics_lib.to_host_scalars(step_metrics)
                    histogram = scalars.pop("train/alpha_histogram", None)
                    elapsed = time.perf_counter() - window_start
                    if window_steps:
                        tokens_per_second = window_tokens / elapsed
                        scalars["perf/steps_per_second"] = window_steps / elapsed
                        scalars["perf/tokens_per_second"] = tokens_per_second
                        scalars["perf/mfu"] = metrics_lib.model_flops_utilization(
                            flops_per_token=model_lib.flops_per_token(run.model_config, seq_len=row_length),
                            tokens_per_second=tokens_per_second,
                            num_devices=mesh.devices.size, peak_flops_per_device=peak)
                    scalars["perf/first_step_seconds"] = first_step_seconds
                    scalars["perf/compilations"] = float(compiled_step._cache_size())
                    histograms = ({"train/alpha": (list(metrics_lib.ALPHA_HISTOGRAM_EDGES), histogram)}
                                  if histogram is not None else None)
                    if histogram is not None:
                        scalars["train/alpha_histogram"] = histogram
                    writer.write(step=step, scalars=scalars, histograms=histograms)
                    progress.update(step=step, scalars=scalars)
                    final.update(scalars)
                    window_start, window_tokens, window_steps = time.perf_counter(), 0, 0
                else:
                    progress.update(step=step)
                stop = preemption.agreed() or (stop_after is not None and steps_this_call >= stop_after)
                if step % config.checkpoint.every_steps == 0 or last or stop:
                    save_seconds.append(checkpointing.save(manager, step=step, state=state,
                                                           data_state=iterator.get_state(), wait=stop))
                if run.eval_examples and ((config.eval.every_steps and step % config.eval.every_steps == 0)
                                          or (last and config.eval.at_end)):
                    eval_scalars = _eval_sums(run, state.params, eval_fn=eval_fn)
                    writer.write(step=step, scalars=eval_scalars)
                    final.update(eval_scalars)
                    _log(is_main, "step {}: {}".format(step, ", ".join(
                        f"{k}={v:.4g}" for k, v in eval_scalars.items())))
                    window_start, window_tokens, window_steps = time.perf_counter(), 0, 0
                if stop:
                    final["preempted"] = True
                    _log(is_main, f"stopped at step {step} (checkpoint saved); re-run the same command to resume")
                    break
            progress.close()
            manager.wait_until_finished()
            final["step"] = step
            final["skipped_steps"] = int(jax.device_get(state.skipped_steps))
            final["compilations"] = compiled_step._cache_size()
            final["checkpoint_save_seconds"] = save_seconds
            final["state"] = state
            _log(is_main, f"done at step {step}: checkpoints in {manager.directory}, metrics in "
                          f"{workdir / 'metrics.jsonl'} and {workdir / 'tensorboard'}, config in "
                          f"{workdir / 'config.json'}")
            return final
    finally:
        preemption.restore()
        writer.close()
        manager.close()


def enable_compilation_cache(directory: str) -> None:
    """JAX's persistent compilation cache in `directory` (every compiled program is cached)."""
    directory = str(pathlib.Path(directory).expanduser().absolute())
    if jax.config.jax_compilation_cache_dir != directory:
        jax.config.update("jax_compilation_cache_dir", directory)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# ====================================================================================================
# Config files.

def load_config_module(path: str | os.PathLike):
    """Import a config file (configs/<name>.py) as a module, as ml_collections' config_flags does."""
    import importlib.util

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} not found")
    # A name unique per file, so two config files with one stem never share a module.
    module_spec = importlib.util.spec_from_file_location(f"deft_config_{abs(hash(str(path.resolve())))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def load_config(spec: str) -> ml_collections.ConfigDict:
    """'configs/deformed_log.py:alpha=0.5,smoke' -> the file's get_config('alpha=0.5,smoke')."""
    path, _, arg = str(spec).partition(":")
    return load_config_module(path).get_config(arg or None)


def apply_overrides(config, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A copy of `config` with dotted-key overrides ({'objective.alpha': 0.1}, as sweep() returns);
    an unknown key raises (the config is locked), then the result is validated."""
    config = copy.deepcopy(config)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        try:
            node[leaf] = value
        except (AttributeError, KeyError, TypeError) as error:
            raise ValueError(f"override config.{key}={value!r}: {error}") from None
    validate_config(config, check_devices=False)
    return config


def _log(enabled: bool, message: str) -> None:
    """Process 0's console report (stderr)."""
    if enabled:
        print(message, file=sys.stderr, flush=True)


# ====================================================================================================
# CLI.

def main(argv: Sequence[str]) -> None:
    from absl import flags

    from absl import logging as absl_logging

    del argv
    FLAGS = flags.FLAGS
    if not FLAGS["verbosity"].present:  # orbax and JAX log a lot at INFO; --verbosity=0 brings it back
        absl_logging.set_verbosity(absl_logging.WARNING)
    if FLAGS.workdir is None:
        raise ValueError("--workdir is required")
    final = train_and_evaluate(FLAGS.config, FLAGS.workdir)
    shown = {k: v for k, v in final.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if jax.process_index() == 0:
        print(json.dumps({"final": shown}, sort_keys=True), flush=True)


def _define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/deft.py:runlocal.",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and config.json.")
    flags.mark_flags_as_required(["config", "workdir"])


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
