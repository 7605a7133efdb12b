"""One Setup per config: `setup(config)` -> tokenizer, model config, mesh and rules, step spec, state
layout and the learning-rate schedule, in one frozen object.

Shapes first, then shardings, then weights: `state_layout` gives the abstract TrainState and its
NamedShardings without executing anything (it also works on devices that cannot run programs, such as
a TPU topology compiled for from a CPU); `Setup.initial_state` then places a fresh state on those
shardings. Used by the trainer, the evaluator, the compile tool, the probe, the suites, the benchmarks
and the experiments: none of them rebuilds this chain.

Owns: turning config fields into objects. Must not import: train, evaluate, sweep.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from deft_jax import sharding as sharding_lib
from deft_jax import errors
from deft_jax.model import decoder as model_lib
from deft_jax.model import presets, weights
from deft_jax.model import tokenizer as tokenizer_lib
from deft_jax.training import checkpointing
from deft_jax.training import config as config_lib
from deft_jax.training import metrics as metrics_lib
from deft_jax.training import step as step_lib

TINY_VOCAB_MULTIPLE = 8  # tiny models round the tokenizer's vocabulary up to this (shardable over tensor)


# ====================================================================================================
# Tokenizer and model.

def build_tokenizer(config) -> tokenizer_lib.Tokenizer:
    """config.tokenizer, or the model's own tokenizer when it is ''."""
    return tokenizer_lib.load_tokenizer(config.tokenizer or config.model.name)


def model_fields(config) -> dict[str, Any]:
    """ModelConfig fields that config.model sets on any architecture (dtypes, remat, scan, overrides)."""
    fields = dict(dtype=config.model.dtype, param_dtype=config.model.param_dtype, remat=config.model.remat,
                  remat_policy=config.model.remat_policy, scan_layers=config.model.scan_layers, scan_unroll=config.model.scan_unroll,
                  attention=config.model.attention, attention_block_q=config.model.attention_block_q,
                  attention_block_kv=config.model.attention_block_kv)
    overrides = config.model.overrides
    fields.update(overrides.to_dict() if hasattr(overrides, "to_dict") else dict(overrides))
    return fields


def architecture(config, *, tokenizer: tokenizer_lib.Tokenizer | None = None) -> model_lib.ModelConfig:
    """config.model.name's ModelConfig with config.model's fields, tensors unread: an architecture preset
    (deft_jax.presets), a checkpoint's config.json or GGUF header, or 'tiny' (ModelConfig.tiny with the
    tokenizer's vocabulary rounded up to a multiple of 8; the config's tokenizer when none is given)."""
    name = config.model.name
    if name == config_lib.TINY_MODEL:
        tokenizer = tokenizer or build_tokenizer(config)
        vocab = -(-tokenizer.vocab_size // TINY_VOCAB_MULTIPLE) * TINY_VOCAB_MULTIPLE
        return model_lib.ModelConfig.tiny(**{"vocab_size": vocab, **model_fields(config)})
    if presets.is_preset(name):
        return presets.model_config(name, **model_fields(config))
    return weights.load_model_config(name, **model_fields(config))


def build_model_config(config, *, tokenizer) -> model_lib.ModelConfig:
    """`architecture`, checked against the tokenizer the run uses (its ids must fit the vocabulary)."""
    model_config = architecture(config, tokenizer=tokenizer)
    if tokenizer.vocab_size > model_config.vocab_size:
        raise config_lib.ConfigError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary is "
            f"{model_config.vocab_size}; use the model's own tokenizer (config.tokenizer='').")
    return model_config


def pretrained_params(config, *, model_config: model_lib.ModelConfig, mesh: Mesh, rules) -> Any:
    """config.model.name's weights, placed tensor by tensor on the mesh, in model_config's layer layout."""
    if presets.is_preset(config.model.name):
        raise config_lib.ConfigError(
            f"config.model.name={config.model.name!r} is an architecture preset (no weights); set it to the "
            f"checkpoint's directory or .gguf file, or set config.model.init='random'.")
    loaded_config, params = weights.load_pretrained(config.model.name, mesh=mesh, rules=rules,
                                                    **model_fields(config))
    if loaded_config != model_config:
        raise ValueError(f"the loaded model config {loaded_config} differs from {model_config}")
    return params


# ====================================================================================================
# Mesh, rules, state layout.

def build_mesh(config, *, devices: Sequence[Any] | None = None, fallback: bool = False) -> Mesh:
    """config.mesh over `devices` (default all). With `fallback`, a mesh that does not fit the devices
    present becomes pure data parallelism over all of them (said on stderr): evaluation on other hardware."""
    devices = list(jax.devices() if devices is None else devices)
    try:
        return sharding_lib.mesh_from_config(config.mesh, devices=devices)
    except ValueError as error:
        if not fallback:
            raise config_lib.ConfigError(f"config.mesh: {error}") from None
        print(f"the run's mesh does not fit the {len(devices)} device(s) present ({error}); using data "
              f"parallelism over all of them.", file=sys.stderr)
        return sharding_lib.make_mesh(data=-1, fsdp=1, tensor=1, devices=devices)


def build_rules(config) -> tuple:
    """The model's default logical-axis rules with config.mesh.rules applied."""
    return sharding_lib.logical_rules(base_rules=model_lib.DEFAULT_LOGICAL_RULES, overrides=config.mesh.rules)


def build_optimizer(config):
    return step_lib.make_optimizer(b1=config.optim.b1, b2=config.optim.b2, eps=config.optim.eps,
                                   weight_decay=config.optim.weight_decay)


def build_loss_spec(config, *, model_config: model_lib.ModelConfig) -> step_lib.LossSpec:
    return step_lib.LossSpec(model_config=model_config, objective=config_lib.objective_spec(config),
                             normalization=config.loss.normalization, impl=config.loss.impl,
                             chunk_size=config.loss.chunk_size)


def build_step_spec(config, *, model_config: model_lib.ModelConfig) -> step_lib.StepSpec:
    return step_lib.StepSpec(
        loss=build_loss_spec(config, model_config=model_config), optimizer=build_optimizer(config),
        clip_norm=float(config.optim.clip_norm),
        num_micro_batches=config.batch_size // (config.micro_batch_size or config.batch_size),
        accumulation=config.loss.accumulation, skip_nonfinite=config.optim.skip_nonfinite)


@functools.lru_cache(maxsize=32)
def state_layout(model_config: model_lib.ModelConfig, optimizer, mesh: Mesh,
                 rules) -> tuple[step_lib.TrainState, step_lib.TrainState]:
    """(abstract TrainState, TrainState of NamedShardings): optimizer moments shard like their params.
    Executes nothing (jax.eval_shape and tree maps only)."""
    abstract_params, shardings = model_lib.param_layout(model_config, mesh=mesh, rules=rules)
    abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
    replicated = sharding_lib.replicated(mesh)
    opt_shardings = sharding_lib.optimizer_state_shardings(optimizer, abstract_opt, param_shardings=shardings,
                                                           other=replicated)
    scalar = jax.ShapeDtypeStruct((), jnp.int32)
    abstract = step_lib.TrainState(step=scalar, params=abstract_params, opt_state=abstract_opt,
                                   rng=jax.ShapeDtypeStruct((2,), jnp.uint32), skipped_steps=scalar)
    state_shardings = step_lib.TrainState(step=replicated, params=shardings, opt_state=opt_shardings,
                                          rng=replicated, skipped_steps=replicated)
    return abstract, state_shardings


@dataclasses.dataclass(frozen=True, eq=False)
class CountedStep:
    """A jitted train step that counts its compiled programs (`compilations`: one per new batch shape)."""

    jitted: Any
    counter: metrics_lib.ProgramCounter

    def __call__(self, state, batch, schedule):
        with self.counter.counting():
            return self.jitted(state, batch, schedule)

    def lower(self, *args, **kwargs):
        return self.jitted.lower(*args, **kwargs)

    def compile(self, state, batch, schedule) -> None:
        """Compile the program for these arguments now (counted); the next call runs it."""
        with self.counter.counting():
            self.jitted.lower(state, batch, schedule).compile()

    @property
    def compilations(self) -> int:
        return self.counter.count


@functools.lru_cache(maxsize=32)
def jitted_train_step(spec: step_lib.StepSpec, mesh: Mesh, rules) -> CountedStep:
    """step_lib.compile_train_step for (spec, mesh, rules), cached: runs in one process share it (and its
    count of compiled programs)."""
    _, shardings = state_layout(spec.loss.model_config, spec.optimizer, mesh, rules)
    jitted = step_lib.compile_train_step(spec=spec, mesh=mesh, state_shardings=shardings)
    return CountedStep(jitted=jitted, counter=metrics_lib.ProgramCounter(fun_name=step_lib.train_step.__name__))


# ====================================================================================================
# Initial parameters and state.

@functools.lru_cache(maxsize=32)
def _jitted_random_params(model_config: model_lib.ModelConfig, mesh: Mesh, rules):
    _, shardings = model_lib.param_layout(model_config, mesh=mesh, rules=rules)

    def init(seed):
        return model_lib.init_params(model_config, rng=jax.random.fold_in(jax.random.PRNGKey(seed), 1))
    return jax.jit(init, out_shardings=shardings)


def random_params(model_config: model_lib.ModelConfig, *, seed: int, mesh: Mesh, rules) -> Any:
    """Random parameters of `seed` (key fold_in(PRNGKey(seed), 1)), created sharded on the mesh."""
    return _jitted_random_params(model_config, mesh, rules)(jnp.uint32(seed))


def initial_params(config, *, model_config: model_lib.ModelConfig, mesh: Mesh, rules) -> Any:
    """The run's step-0 parameters: another run's latest params (config.model.init_from), pretrained weights
    (config.model.init='pretrained') or random ones from config.seed. The evaluator's base model is exactly
    these."""
    if config.model.init_from:
        steps = checkpointing.available_steps(config.model.init_from)
        if not steps:
            raise config_lib.ConfigError(f"config.model.init_from={config.model.init_from!r} holds no checkpoint; "
                                         f"give the --workdir of a run that has saved one.")
        abstract, shardings = model_lib.param_layout(model_config, mesh=mesh, rules=rules)
        return checkpointing.restore_params(workdir=config.model.init_from, step=steps[-1],
                                            abstract_params=abstract, shardings=shardings)
    if config.model.init == "random":
        return random_params(model_config, seed=config.seed, mesh=mesh, rules=rules)
    return pretrained_params(config, model_config=model_config, mesh=mesh, rules=rules)


def init_state(config, *, model_config: model_lib.ModelConfig, optimizer, mesh: Mesh,
               rules) -> step_lib.TrainState:
    """A fresh TrainState on the state layout's shardings (the initial params' buffers are donated)."""
    _, state_shardings = state_layout(model_config, optimizer, mesh, rules)
    params = initial_params(config, model_config=model_config, mesh=mesh, rules=rules)
    init = functools.partial(step_lib.new_state, optimizer=optimizer, seed=config.seed)
    return jax.jit(init, in_shardings=(state_shardings.params,), out_shardings=state_shardings,
                   donate_argnums=0)(params)


# ====================================================================================================
# A trained run's model, for evaluation and export.

def load_run_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The resolved config the trainer saved as <workdir>/config.json, validated (not device-checked)."""
    workdir = pathlib.Path(workdir)
    if not workdir.is_dir():
        raise errors.MissingPathError(f"workdir {str(workdir)!r} does not exist; pass the --workdir of a training run.")
    path = workdir / "config.json"
    if not path.is_file():
        raise errors.MissingPathError(f"{path} not found: {workdir} is not a training run's workdir (the trainer "
                                f"writes config.json there once it has started).")
    try:
        config = config_lib.with_later_fields(ml_collections.ConfigDict(json.loads(path.read_text())))
    except json.JSONDecodeError as error:
        raise config_lib.ConfigError(f"{path}: invalid JSON at line {error.lineno}: {error.msg}") from None
    try:
        config_lib.validate(config)
    except ValueError as error:
        raise config_lib.ConfigError(f"{path}: {error}") from None
    return config


@dataclasses.dataclass(frozen=True, eq=False)
class Setup:
    """A config's run, per config and without arrays: everything the trainer, the evaluator, the compile
    tool, the probe and the experiments build from a config (per-run things such as the workdir and the
    data stay with their callers). Built by `setup`."""

    config: Any  # the validated config (a copy: later edits of the caller's config do not reach it)
    tokenizer: tokenizer_lib.Tokenizer | None  # None when built with load_tokenizer=False
    model_config: model_lib.ModelConfig
    mesh: Mesh
    rules: Any
    spec: step_lib.StepSpec  # the train step's static settings: loss spec, optimizer, micro-batches, ...
    abstract_state: step_lib.TrainState  # ShapeDtypeStructs
    state_shardings: step_lib.TrainState  # NamedShardings (optimizer moments shard like their params)

    @property
    def loss(self) -> step_lib.LossSpec:
        return self.spec.loss

    @property
    def abstract_params(self) -> Any:
        return self.abstract_state.params

    @property
    def param_shardings(self) -> Any:
        return self.state_shardings.params

    @property
    def state_target(self) -> step_lib.TrainState:
        """The abstract state carrying its shardings (a restore target, the compile tool's arguments)."""
        return sharding_lib.with_shardings(self.abstract_state, self.state_shardings)

    def total_steps(self, *, num_train_examples: int) -> int:
        """config.total_steps, else ceil(num_epochs · examples / batch_size) (at least 1)."""
        config = self.config
        if config.total_steps:
            return int(config.total_steps)
        return max(1, int(math.ceil(config.num_epochs * num_train_examples / config.batch_size)))

    def schedule(self, *, total_steps: int) -> step_lib.Schedule:
        """The learning-rate schedule of config.optim over `total_steps` (see `total_steps`)."""
        optim = self.config.optim
        return step_lib.Schedule(lr=float(optim.lr), total_steps=int(total_steps),
                                 warmup_ratio=float(optim.warmup_ratio), kind=optim.schedule,
                                 min_lr_ratio=float(optim.min_lr_ratio))

    def train_step(self):
        """The jitted train step (cached per spec, mesh and rules); call it under `sharding.mesh_context`."""
        return jitted_train_step(self.spec, self.mesh, self.rules)

    def initial_params(self) -> Any:
        """The run's step-0 parameters (`initial_params`): also the evaluator's base model."""
        return initial_params(self.config, model_config=self.model_config, mesh=self.mesh, rules=self.rules)

    def initial_state(self) -> step_lib.TrainState:
        """A fresh TrainState on the state shardings (`init_state`)."""
        return init_state(self.config, model_config=self.model_config, optimizer=self.spec.optimizer,
                          mesh=self.mesh, rules=self.rules)

    def restore_params(self, *, workdir: str | pathlib.Path, step: int) -> Any:
        """The params of checkpoint `step` of the run in `workdir`, on this mesh."""
        return checkpointing.restore_params(workdir=workdir, step=step, abstract_params=self.abstract_params,
                                            shardings=self.param_shardings)


def setup(config, *, devices: Sequence[Any] | None = None, mesh_fallback: bool = False,
          load_tokenizer: bool = True) -> Setup:
    """Validate a copy of `config`, then build tokenizer, model config, mesh, rules, step spec and state
    layout. Executes nothing on the devices (jax.eval_shape and tree maps only), so `devices` may be a
    described TPU topology.

    `devices`: default all of jax.devices(). `mesh_fallback`: a config.mesh that does not fit the devices
    becomes data parallelism over all of them (evaluation on other hardware; the batch sizes are then not
    checked against the mesh). `load_tokenizer=False`: no tokenizer (Setup.tokenizer is None) and no check
    of its vocabulary against the model's: the architecture alone, as the compile tool needs it.
    """
    config = copy.deepcopy(config)
    devices = list(jax.devices() if devices is None else devices)
    config_lib.validate(config, num_devices=None if mesh_fallback else len(devices))
    mesh = build_mesh(config, devices=devices, fallback=mesh_fallback)
    rules = build_rules(config)
    tokenizer = build_tokenizer(config) if load_tokenizer else None
    model_config = (build_model_config(config, tokenizer=tokenizer) if load_tokenizer
                    else architecture(config))
    spec = build_step_spec(config, model_config=model_config)
    abstract_state, state_shardings = state_layout(model_config, spec.optimizer, mesh, rules)
    return Setup(config=config, tokenizer=tokenizer, model_config=model_config, mesh=mesh, rules=rules, spec=spec,
                 abstract_state=abstract_state, state_shardings=state_shardings)
