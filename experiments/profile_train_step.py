"""Where a train step's time goes at SmolLM2-135M shapes: forward, forward + backward, optimizer, batch
transfer, the whole step, and the float32 matmul ceiling, each with and without the project's XLA options.

    python experiments/profile_train_step.py --objective deft --impl chunked --repeats 3 [--json PATH]

Every phase is its own jitted program on the same random-init state and random batch as
experiments/bench_train.py (4 x 256 tokens, the second half of each row supervised):
  forward      the loss and its metric sums (`step_lib.loss_fn`)
  fwd+bwd      loss and gradients (`step_lib.accumulate_gradients`)
  optimizer    global norm, clipping, AdamW, the update and the non-finite skip, given gradients
  transfer     host batch -> device arrays (`sharding.put_batch`)
  step         the trainer's whole step (its compiled program: state donated, carried between calls)
  matmuls      only the step's matmuls (every layer's projections and the lm-head, forward and the two
               backward products), as one program: the time a step made of nothing else would take.
Phases are timed in interleaved rounds (median), each call after `--warm` untimed ones; the machine
may be shared: read the ratios.

With `--ops` it then traces one call of the trainer's step with jax.profiler (XLA:CPU's per-thunk
trace events on) and splits the traced time by kind of compiled op: matmuls, scan bookkeeping (the
slices and zero-filled buffers of the layer scan), selects (the optimizer's non-finite skip, masks),
copies and transposes, reductions, other element-wise loops. Event times on the worker threads overlap,
so the kinds add up to more than the wall time: read the shares.
"""
from __future__ import annotations

import argparse
import collections
import functools
import pathlib
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from deft_jax.training import setup as build  # noqa: E402
from deft_jax.training import xla_options  # noqa: E402
from deft_jax.training import config as config_lib  # noqa: E402
from deft_jax import data as data_lib  # noqa: E402
from deft_jax.model import decoder as model_lib  # noqa: E402
from deft_jax import sharding as sharding_lib  # noqa: E402
from deft_jax.training import step as step_lib  # noqa: E402
from deft_jax.model import weights  # noqa: E402
from experiments.bench_train import objective_spec, random_batch  # noqa: E402
from experiments import raw  # noqa: E402


def optimizer_phase(state, grads, schedule, *, spec):
    """The train step after the gradients (step_lib.apply_gradients, metrics left out)."""
    params, opt_state, *_ = step_lib.apply_gradients(state, grads, schedule, spec=spec)
    return params, opt_state


def matmul_shapes(config, *, tokens: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of every forward matmul of one step: per layer q, k, v, o, gate, up, down; then the
    lm-head (attention's scores and values are left out: 2·T²·d per row, small at these lengths)."""
    d, heads, kv, hd, ff = config.d_model, config.n_heads, config.n_kv_heads, config.head_dim, config.d_ff
    layer = [(tokens, d, heads * hd), (tokens, d, kv * hd), (tokens, d, kv * hd), (tokens, heads * hd, d),
             (tokens, d, ff), (tokens, d, ff), (tokens, ff, d)]
    return layer * config.n_layers + [(tokens, d, config.vocab_size)]


def matmul_program(shapes):
    """Forward z = x w, then dx = dz wᵀ and dw = xᵀ dz for every shape: 3 matmuls each, float32."""
    def run(operands):
        outputs = []
        for x, w in operands:
            z = x @ w
            outputs += [jnp.sum(z), jnp.sum(z @ w.T), jnp.sum(x.T @ z)]  # sums: no slice pushed into a dot
        return jnp.stack(outputs)
    operands = [(jnp.ones((m, k), jnp.float32) * 1e-3, jnp.ones((k, n), jnp.float32) * 1e-3) for m, k, n in shapes]
    return run, operands


def trainer_step(state, arrays, schedule, *, spec, mesh, rules, options):
    """step() -> metrics: the trainer's compiled step (explicit shardings, the state donated and carried
    from call to call, as in training) on its own copy of `state`."""
    _, shardings = build.state_layout(spec.loss.model_config, spec.optimizer, mesh, rules)
    compiled = step_lib.compile_train_step(spec=spec, mesh=mesh, state_shardings=shardings,
                                           compiler_options=options)
    box = [jax.tree.map(jnp.copy, state)]

    def step():
        box[0], metrics = compiled(box[0], arrays, schedule)
        return metrics

    return step


OP_KINDS = (  # (kind, substrings of XLA:CPU's op names), first match wins
    ("matmuls", ("ynn_fusion", "xnn_fusion", "onednn", "dot")),
    ("scan buffers zero-filled", ("wrapped_broadcast",)),
    ("scan slices", ("dynamic-slice", "dynamic-update-slice")),
    ("selects", ("select",)),
    ("copies and transposes", ("copy", "transpose")),
    ("reductions", ("reduce",)),
)
NOT_OPS = ("ThunkExecutor", "SlinkyThreadPool", "$")  # runtime bookkeeping and Python frames


def op_kind(name: str) -> str:
    for kind, parts in OP_KINDS:
        if any(part in name for part in parts):
            return kind
    return "other element-wise"


def op_breakdown(fn) -> dict[str, float]:
    """Seconds per op kind (OP_KINDS) of one traced call fn() of a compiled program."""
    with tempfile.TemporaryDirectory() as directory:
        jax.profiler.start_trace(directory)
        jax.block_until_ready(fn())
        jax.profiler.stop_trace()
        paths = sorted(pathlib.Path(directory).rglob("*.xplane.pb"))
        data = jax.profiler.ProfileData.from_file(str(paths[-1]))
    seconds = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                if not event.name.startswith(NOT_OPS):
                    seconds[op_kind(event.name)] += event.duration_ns / 1e9
    return dict(seconds)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objective", default="deft")
    parser.add_argument("--impl", default="chunked", choices=step_lib.LOSS_IMPLS)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--scan_unroll", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--xla", default="project,default", help="comma-separated from project, default")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="compute dtype (the matmuls row is float32 regardless)")
    parser.add_argument("--warm", type=int, default=1, help="untimed calls before each timed one")
    parser.add_argument("--ops", action="store_true", help="also split one traced step by kind of compiled op")
    parser.add_argument("--json", default="", help="also write every round, the settings and the machine here")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats={args.repeats}: must be >= 1 (timed rounds)")
    if args.warm < 0:
        parser.error(f"--warm={args.warm}: must be >= 0 (untimed calls before each timed one)")

    config = config_lib.load_config(f"{REPO_ROOT}/configs/nll.py")
    with config.unlocked():
        config.model.scan_unroll = args.scan_unroll
        config.model.dtype = args.dtype
        config.model.init = "random"
    model_config = weights.load_model_config(config.model.name, **build.model_fields(config))
    mesh = sharding_lib.make_mesh(data=-1)
    rules = model_lib.DEFAULT_LOGICAL_RULES
    batch = random_batch(batch=args.batch, seq=args.seq, vocab=model_config.vocab_size)
    optimizer = step_lib.make_optimizer(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.01)
    loss = step_lib.LossSpec(model_config=model_config, objective=objective_spec(args.objective), impl=args.impl)
    spec = step_lib.StepSpec(loss=loss, optimizer=optimizer)
    schedule = step_lib.Schedule(lr=5e-5, total_steps=1000).as_arrays()
    tokens = args.batch * args.seq

    state = build.init_state(config, model_config=model_config, optimizer=optimizer, mesh=mesh, rules=rules)
    put = functools.partial(sharding_lib.put_batch, batch, mesh=mesh, global_rows=args.batch, keys=data_lib.BATCH_KEYS)
    with sharding_lib.mesh_context(mesh, rules):
        arrays = put()
        grads = jax.tree.map(jnp.zeros_like, state.params)
        matmuls, operands = matmul_program(matmul_shapes(model_config, tokens=tokens))
        phases = {}
        for xla in args.xla.split(","):
            options = xla_options.compiler_options() if xla == "project" else {}

            def jit(fn, options=options):
                return jax.jit(fn, compiler_options=options)

            phases[("forward", xla)] = functools.partial(jit(functools.partial(step_lib.loss_fn, loss=loss)),
                                                         state.params, arrays)
            phases[("fwd+bwd", xla)] = functools.partial(jit(functools.partial(
                step_lib.accumulate_gradients, loss=loss, num_micro_batches=1)), state.params, arrays)
            phases[("optimizer", xla)] = functools.partial(jit(functools.partial(optimizer_phase, spec=spec)),
                                                           state, grads, schedule)
            phases[("step", xla)] = trainer_step(state, arrays, schedule, spec=spec, mesh=mesh, rules=rules,
                                                 options=options)
            phases[("matmuls", xla)] = functools.partial(jit(matmuls), operands)
        phases[("transfer", "-")] = put
        times = {key: [] for key in phases}
        first = {}
        for key, fn in phases.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            first[key] = time.perf_counter() - start
            print(f"  {key}: compile + first {time.perf_counter() - start:.1f} s", flush=True)
        for round_index in range(args.repeats):
            for key, fn in phases.items():
                for _ in range(args.warm):  # untimed: the first call after another phase pages its memory in
                    jax.block_until_ready(fn())
                start = time.perf_counter()
                jax.block_until_ready(fn())
                times[key].append(time.perf_counter() - start)
            print(f"  round {round_index + 1}: " + ", ".join(f"{k[0]}/{k[1]} {v[-1]:.2f}" for k, v in times.items()),
                  flush=True)

    flops = sum(2 * m * k * n for m, k, n in matmul_shapes(model_config, tokens=tokens)) * 3
    print(f"\n{args.objective} {args.impl}, {args.batch} x {args.seq} tokens, compute {args.dtype}, "
          f"scan_unroll {args.scan_unroll}; "
          f"matmul FLOPs per step (fwd + 2 bwd products, attention excluded) {flops / 1e12:.2f} T\n")
    print("| phase | " + " | ".join(f"s ({x})" for x in args.xla.split(",")) + " |")
    print("|---|" + "---|" * len(args.xla.split(",")))
    for phase in ("forward", "fwd+bwd", "optimizer", "step", "matmuls", "transfer"):
        cells = []
        for xla in args.xla.split(",") if phase != "transfer" else ["-"]:
            value = statistics.median(times[(phase, xla)])
            cells.append(f"{value:.3f}" + (f" ({flops / value / 1e9:.0f} GFLOP/s)" if phase == "matmuls" else ""))
        print(f"| {phase} | " + " | ".join(cells) + " |")

    if args.ops:
        options = dict(xla_options.compiler_options(), xla_cpu_enable_xprof_traceme=True)
        traced = trainer_step(state, arrays, schedule, spec=spec, mesh=mesh, rules=rules, options=options)
        with sharding_lib.mesh_context(mesh, rules):
            for _ in range(1 + args.warm):  # compile, then page the step's memory in
                jax.block_until_ready(traced())
            seconds = op_breakdown(traced)
        total = sum(seconds.values())
        print("\n| op kind (one traced step, project options) | s | share |\n|---|---|---|")
        for kind, value in sorted(seconds.items(), key=lambda item: -item[1]):
            print(f"| {kind} | {value:.2f} | {value / total:.0%} |")
    figures = {"matmul_flops_per_step": flops, "tokens": tokens,
               "phases": [{"phase": phase, "xla": xla, "first_s": first[(phase, xla)], "rounds": times[(phase, xla)]}
                          for phase, xla in times],
               "op_seconds": seconds if args.ops else None}
    if args.json:
        raw.write(args.json, raw.record(script="profile_train_step", settings=vars(args), figures=figures))
    return figures


if __name__ == "__main__":
    main()
