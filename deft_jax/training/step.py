"""The pure train and eval steps: forward -> objective -> (sum, denominator) -> optax. No I/O.

    forward_objective(params, batch, loss=...)   model forward, then the objective per token (naive logits
                                                 or the chunked fused lm-head; config.loss.impl, no fallback)
    loss_fn(params, batch, loss=...)             one micro-batch: (objective sum, {denominator, metric sums})
    accumulate_gradients(...)                    lax.scan over micro-batches, summing gradients, sums and
                                                 denominators; divides once ('exact') or averages the
                                                 per-micro-batch means as the official code does
    train_step(state, batch, schedule, spec=...) AdamW on the accumulated gradient (lr from the schedule,
                                                 passed as data), optax's global-norm clip, non-finite
                                                 steps skipped
    eval_sums(params, batch, loss=...)           additive sums of one eval batch; `eval_totals` runs the
                                                 batches and `metric_means` turns sums into means

Owns: TrainState, Schedule, the optimizer, LossSpec / StepSpec, the metric names. Must not import: config,
build, train, evaluate, checkpointing (it sees arrays and static specs only).
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from deft_jax import objectives
from deft_jax import sharding as sharding_lib
from deft_jax.data import BATCH_KEYS
from deft_jax.model import decoder as model_lib
from deft_jax.objectives import fused
from deft_jax.training import xla_options

SCHEDULES = ("cosine", "constant")
ACCUMULATION_MODES = ("exact", "mean_of_micro_means")
LOSS_IMPLS = ("naive", "chunked")
ALPHA_HISTOGRAM_EDGES = tuple(float(x) for x in np.linspace(0.0, 1.0, 11))  # last bucket holds alpha >= 1
ALPHA_BINS = len(ALPHA_HISTOGRAM_EDGES) - 1
# Mean name -> the sum it divides by the supervised-token count (present when the objective has it).
MEAN_OF_SUM = {"nll": "nll_sum", "token_accuracy": "correct_sum", "mean_p": "p_sum", "mean_gate": "gate_sum",
               "mean_alpha": "alpha_sum", "mean_entropy": "entropy_sum", "mean_collision": "collision_sum",
               "kept_fraction": "kept_fraction_sum", "mean_topk_entropy": "topk_entropy_sum"}
# The teacher-forced metrics that evaluation reports and sweep summaries tabulate.
TEACHER_FORCED_METRICS = ("nll", "token_accuracy", "mean_p", "mean_gate", "mean_alpha", "mean_entropy", "loss")


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes; a pytree (checkpointed whole)."""

    step: jax.Array  # int32 [], optimizer steps taken (skipped ones included, as the official scheduler)
    params: Any  # parameter tree (config.model.param_dtype)
    opt_state: Any  # optax state (AdamW moments in the parameters' dtype)
    rng: jax.Array  # uint32 [2] raw PRNG key, split every step
    skipped_steps: jax.Array  # int32 [], steps whose loss or gradient norm was not finite


def new_state(params, *, optimizer, seed: int) -> TrainState:
    """Step 0 of a run with `params`: fresh optimizer moments, the PRNG key of `seed`."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                      rng=jax.random.PRNGKey(seed), skipped_steps=jnp.zeros((), jnp.int32))


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


def forward_logits(params, batch, *, model_config: model_lib.ModelConfig, return_hidden: bool = False):
    """The model on a batch's inputs, positions and segments: logits [B, T, V] (or final hidden states)."""
    return model_lib.forward(params, model_config, batch["inputs"], positions=batch["positions"],
                             segment_ids=batch["segment_ids"], return_hidden=return_hidden)


def forward_objective(params, batch, *, loss: LossSpec, with_accuracy: bool = False):
    """(ObjectiveOutput per token, argmax hits or None): the model forward, then the objective.

    impl 'naive' materialises the [tokens, V] logits; 'chunked' fuses the lm-head with the objective
    (deft_jax.fused). With `with_accuracy`, hits = [argmax_v z_v = y] per token (chunked: z_y ≥ max_v z_v).
    """
    model_config = loss.model_config
    targets, mask = batch["targets"], batch["loss_mask"]
    forward = functools.partial(forward_logits, params, batch, model_config=model_config)
    if loss.impl == "naive":
        logits = forward()
        output = objectives.compute(loss.objective, logits, targets, mask)
        hits = jnp.argmax(logits, axis=-1) == targets if with_accuracy else None
        return output, hits
    if loss.impl == "chunked":
        hidden = forward(return_hidden=True)
        weight = model_lib.lm_head_weight(params, model_config).astype(hidden.dtype)
        stats = fused.chunked_token_stats(hidden, weight, targets, chunk_size=loss.chunk_size,
                                          topk=objectives.required_topk(loss.objective))
        output = objectives.objective_from_stats(loss.objective, stats, mask)
        hits = None
        if with_accuracy:
            hits = stats.target_logit >= fused.chunked_max_logit(hidden, weight, chunk_size=loss.chunk_size)
        return output, hits
    raise ValueError(f"config.loss.impl={loss.impl!r} is not one of {LOSS_IMPLS}.")


def metric_sums(output: objectives.ObjectiveOutput, batch, *, hits=None) -> dict[str, jax.Array]:
    """Additive per-batch metric sums (means are taken once, after accumulation, by `metric_means`)."""
    mask = batch["loss_mask"]
    sums = {f"{name}_sum": pair[0] for name, pair in objectives.token_metrics(output, mask).items()}
    valid = mask != 0
    sums["supervised_tokens"] = jnp.sum(valid.astype(jnp.float32))
    sums["tokens"] = jnp.sum((batch["segment_ids"] != 0).astype(jnp.float32))
    if hits is not None:
        sums["correct_sum"] = jnp.sum(jnp.where(valid, hits, False).astype(jnp.float32))
    if output.alpha is not None:
        bins = jnp.clip(jnp.floor(output.alpha * ALPHA_BINS), 0, ALPHA_BINS - 1).astype(jnp.int32)
        one_hot = jax.nn.one_hot(bins, ALPHA_BINS, dtype=jnp.float32) * valid[..., None]
        sums["alpha_histogram"] = jnp.sum(one_hot.reshape(-1, ALPHA_BINS), axis=0)
    return sums


def metric_means(sums: Mapping[str, Any]) -> dict[str, Any]:
    """Token means Σ/N over the supervised tokens for every sum present, and loss = Σ loss / Σ denominator."""
    count = sums["supervised_tokens"]
    means = {name: objectives.safe_divide(sums[key], count) for name, key in MEAN_OF_SUM.items() if key in sums}
    if "loss_sum" in sums:
        means["loss"] = objectives.safe_divide(sums["loss_sum"], sums["denominator"])
    return means


def loss_fn(params, batch, *, loss: LossSpec) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One micro-batch: (objective sum, {'denominator', metric sums}); mean = sum / denominator.

    Returned as a (sum, denominator) pair, never pre-divided, so micro-batches, packing and hosts
    combine exactly (objectives.reduce's named normalisation picks the denominator).
    """
    output, _ = forward_objective(params, batch, loss=loss)
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
            return jax.tree.map(jnp.add, carry, one(micro_batch)), None

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


def global_norm(tree) -> jax.Array:
    """sqrt(Σ x²) over every leaf, in float32 (optax.tree.norm of the float32 leaves)."""
    return optax.tree.norm(optax.tree.cast(tree, jnp.float32))


def clip_by_global_norm(grads, *, max_norm: float):
    """optax.clip_by_global_norm(max_norm)'s update, bit for bit: g if ‖g‖ < c, else (g / ‖g‖) · c.

    Written as g / d · f with the scalars (d, f) = (1, 1) or (‖g‖, c): one expression of g, so that XLA
    fuses it into its readers instead of keeping g and g / ‖g‖ side by side (optax's per-element select
    between the two), and x / 1 · 1 = x exactly."""
    g_norm = optax.tree.norm(grads)
    trigger = g_norm < max_norm
    denominator = jnp.where(trigger, 1.0, g_norm)
    factor = jnp.where(trigger, 1.0, max_norm)
    return jax.tree.map(lambda g: (g / denominator.astype(g.dtype)) * factor.astype(g.dtype), grads)


def apply_gradients(state: TrainState, grads, schedule, *, spec: StepSpec, loss=0.0):
    """(params, opt_state, ‖g‖, lr, finite, ‖θ‖): the optimizer half of `train_step`.

    g ← g · min(1, c / ‖g‖) (`clip_by_global_norm`, as optax's), θ ← θ − lr · AdamW(g). When the loss or ‖g‖ is
    not finite and spec.skip_nonfinite, params and moments stay as they were (a select per leaf). The
    loss is part of the test because a NaN loss can come with a finite gradient (a target outside the
    vocabulary: the gather's NaN never reaches the gradient), which optax.apply_if_finite, testing the
    update alone, would apply.
    """
    grad_norm = global_norm(grads)
    if spec.clip_norm > 0:
        grads = clip_by_global_norm(grads, max_norm=spec.clip_norm)
    lr = scheduled_learning_rate(state.step, schedule)
    # The parameters and the moments are two passes over the same AdamW update, both in place over the
    # donated buffers: the parameter pass reads the old moments through an optimization barrier (so that
    # XLA does not merge the two passes and keep the new moments as temporaries, 2 x the parameters'
    # bytes), and each moment pass runs after its parameter's pass (`written`: always True, a sum of
    # squares is never < 0, NaN included, but it depends on that parameter). Without that order XLA
    # would keep a copy of the old moments for the whole step.
    old_moments = jax.lax.optimization_barrier(state.opt_state)
    direction, _ = spec.optimizer.update(grads, old_moments, state.params)
    params = jax.tree.map(lambda p, u: (p - lr * u).astype(p.dtype), state.params, direction)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if spec.skip_nonfinite:  # as the official code: no optimizer step, the schedule still advances
        params = optax.tree.where(finite, params, state.params)
    squares = jax.tree.map(lambda p: jnp.sum(jnp.square(p.astype(jnp.float32))), params)
    written = jax.tree.map(lambda square: ~(square < 0), squares)
    keep = jax.tree.map(lambda w: finite & w, written) if spec.skip_nonfinite else written
    _, opt_state = spec.optimizer.update(grads, state.opt_state, state.params)
    opt_state = moments_after_params(opt_state, state.opt_state, keep=keep)
    param_norm = jnp.sqrt(sum(jax.tree.leaves(squares)))
    return params, opt_state, grad_norm, lr, finite, param_norm


def moments_after_params(new_state, old_state, *, keep):
    """`new_state` where the flag of its parameter in `keep` (a params-shaped tree of bools) is True, else
    `old_state`, leaf by leaf: every params-shaped subtree of the optimizer state (AdamW's μ and ν) takes
    its parameter's flag; the other leaves (the step count) take the conjunction of all flags."""
    structure = jax.tree.structure(keep)
    every = functools.reduce(jnp.logical_and, jax.tree.leaves(keep))

    def select(new, old):
        if jax.tree.structure(new) == structure:
            return jax.tree.map(jnp.where, keep, new, old)
        return jax.tree.map(lambda n, o: jnp.where(every, n, o), new, old)

    is_params_like = lambda node: jax.tree.structure(node) == structure  # noqa: E731
    return jax.tree.map(select, new_state, old_state, is_leaf=is_params_like)


def train_step(state: TrainState, batch, schedule, *, spec: StepSpec, mesh: Mesh | None = None):
    """(state, global batch, schedule arrays) -> (new state, metrics). Pure; `compile_train_step` jits it.
    The accumulated gradient goes through `apply_gradients`; a skipped step is counted, and the step
    counter (hence the schedule) advances either way."""
    loss, grads, sums = accumulate_gradients(state.params, batch, loss=spec.loss,
                                             num_micro_batches=spec.num_micro_batches,
                                             accumulation=spec.accumulation, mesh=mesh)
    params, opt_state, grad_norm, lr, finite, param_norm = apply_gradients(state, grads, schedule,
                                                                           spec=spec, loss=loss)
    rng, _ = jax.random.split(state.rng)
    skipped = state.skipped_steps + (~finite).astype(jnp.int32)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng,
                              skipped_steps=skipped)
    metrics = {f"train/{name}": value for name, value in metric_means(sums).items()}
    metrics.update({
        "train/loss": loss,
        "train/supervised_tokens": sums["supervised_tokens"],
        "train/tokens": sums["tokens"],
        "optim/grad_norm": grad_norm,
        "optim/param_norm": param_norm,
        "optim/lr": lr,
        "optim/skipped_steps": skipped,
        "optim/finite": finite.astype(jnp.float32),
    })
    if "alpha_histogram" in sums:
        metrics["train/alpha_histogram"] = sums["alpha_histogram"]
    return new_state, metrics


def compile_train_step(*, spec: StepSpec, mesh: Mesh, state_shardings: TrainState,
                       compiler_options: Mapping[str, Any] | None = None):
    """jax.jit(train_step) with explicit shardings, the state donated. Call it under `sharding.mesh_context`;
    call the result as step(state, batch, schedule.as_arrays()). `compiler_options`: default the project's
    XLA options for the mesh's platform (xla_options.compiler_options)."""
    if compiler_options is None:
        compiler_options = xla_options.compiler_options(backend=mesh.devices.flat[0].platform)
    step = functools.partial(train_step, spec=spec, mesh=mesh)
    replicated = sharding_lib.replicated(mesh)
    return jax.jit(step, in_shardings=(state_shardings, sharding_lib.batch_sharding(mesh), replicated),
                   out_shardings=(state_shardings, replicated), donate_argnums=0,
                   compiler_options=dict(compiler_options))


# ====================================================================================================
# Evaluation (teacher forcing): the trainer's periodic eval, `deft_jax.evaluate` and the figures.

def eval_sums(params, batch, *, loss: LossSpec) -> dict[str, jax.Array]:
    """Additive sums of one eval batch, rows weighted by batch['weights']: objective (loss_sum,
    denominator), every metric sum of `metric_sums` and the argmax hit count (correct_sum)."""
    batch = dict(batch)
    batch["loss_mask"] = batch["loss_mask"] * batch.pop("weights")[:, None]
    output, hits = forward_objective(params, batch, loss=loss, with_accuracy=True)
    total, denominator = objectives.reduce_output(output, normalization=loss.normalization,
                                                  segment_ids=batch["segment_ids"])
    sums = metric_sums(output, batch, hits=hits)
    sums.pop("alpha_histogram", None)
    return {"loss_sum": total, "denominator": denominator, **sums}


@functools.lru_cache(maxsize=32)
def jitted_eval_sums(loss: LossSpec, mesh: Mesh):
    """eval_sums compiled once per (loss spec, mesh) and batch shape, reused across runs and steps."""
    return jax.jit(functools.partial(eval_sums, loss=loss), out_shardings=sharding_lib.replicated(mesh),
                   compiler_options=xla_options.compiler_options(backend=mesh.devices.flat[0].platform))


def eval_totals(params, batches: Iterable[Mapping[str, np.ndarray]], *, loss: LossSpec, mesh: Mesh,
                global_rows: int) -> dict[str, float]:
    """Σ eval_sums over `batches` (this process's rows of each global batch of `global_rows`), on the host."""
    fn = jitted_eval_sums(loss, mesh)
    totals = None
    for batch in batches:
        arrays = sharding_lib.put_batch(batch, mesh=mesh, global_rows=global_rows,
                                        keys=BATCH_KEYS + ("weights",))
        sums = fn(params, arrays)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    if totals is None:
        raise ValueError("no eval batch: the eval split is empty")
    return {key: float(value) for key, value in jax.device_get(totals).items()}


def eval_means(totals: Mapping[str, float]) -> dict[str, float]:
    """metric_means of host totals as floats (NaN where nothing was counted), plus supervised_tokens."""
    means = {}
    for name, value in metric_means(totals).items():
        den = totals["denominator"] if name == "loss" else totals["supervised_tokens"]
        means[name] = float(value) if den else float("nan")
    means["supervised_tokens"] = totals["supervised_tokens"]
    return means
