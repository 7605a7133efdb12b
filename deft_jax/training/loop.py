"""Training: set a run up, loop over steps with periodic actions, and the CLI.

    python -m deft_jax.train --config configs/deft.py:runlocal --workdir runs/deft_figfont
    python -m deft_jax.train --config configs/deformed_log.py:alpha=0.5 --config.optim.lr=1e-5 --workdir DIR

Data flows one way: config -> data pipeline -> global batch -> `step.train_step` (model -> objective ->
reduce -> optax) -> metrics / checkpoints. The loop itself only feeds batches; everything periodic is an
action with its own schedule: throughput and MFU, metric writing and the progress display, checkpoints,
the periodic eval and preemption. A run writes <workdir>/config.json (only once its checkpoint restored, so
a refused resume never replaces the run's record), metrics.jsonl, tensorboard/, checkpoints/ and, at the
end, final.json (the last metrics, `preempted` and the step), which sweeps read.

Exit codes of the CLI: 0 finished, 2 a user error (one line on stderr), 75 (EX_TEMPFAIL) preempted by
SIGTERM with a checkpoint saved: run the same command again to resume.

Owns: the loop and the run's files. Must not be imported by library modules (only by entry points).
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from deft_jax import data as data_lib
from deft_jax import errors
from deft_jax import reporting
from deft_jax import sharding as sharding_lib
from deft_jax.model import decoder as model_lib
from deft_jax.training import checkpointing
from deft_jax.training import host_memory
from deft_jax.training import config as config_lib
from deft_jax.training import hosts
from deft_jax.training import metrics as metrics_lib
from deft_jax.training import setup as build
from deft_jax.training import step as step_lib
from deft_jax.training import teacher_forced

logger = logging.getLogger(__name__)

FINAL_FILE = "final.json"
CONFIG_FILE = "config.json"
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: try again (resume)


# ====================================================================================================
# Setting a run up.

def prepare_workdir(workdir: str | os.PathLike) -> pathlib.Path:
    """Create `workdir` and check that it is writable (clear error before anything is compiled)."""
    path = pathlib.Path(workdir).expanduser().absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_probe_{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise errors.NotWritableError(f"workdir {str(path)!r} is not writable ({error.strerror or error}); choose "
                              f"another --workdir.") from None
    return path


def tokenized_split(setup: build.Setup, *, split: str) -> list:
    """config.data's `split`, tokenized with the setup's tokenizer (the summary said on stderr)."""
    examples, report = data_lib.tokenize_examples(data_lib.load_examples(setup.config.data, split=split),
                                                  tokenizer=setup.tokenizer, cfg=setup.config.data,
                                                  vocab_size=setup.model_config.vocab_size)
    _log(f"{split} data: {report.summary()}")
    return examples


def save_config(config, *, workdir: pathlib.Path) -> None:
    """Process 0 writes the resolved config to <workdir>/config.json (warning when it changed)."""
    if jax.process_index() != 0:
        return
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    path = workdir / CONFIG_FILE
    if path.exists() and path.read_text() != text:
        logger.warning("%s differs from the config of this run; overwriting it (resuming with changed "
                       "settings)", path)
    reporting.write_text(path, text)


# ====================================================================================================
# Periodic actions.

def due(step: int, *, every: int, last: bool) -> bool:
    """True at every `every`-th step (never when every = 0) and at the last step."""
    return last or (every > 0 and step % every == 0)


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


class Throughput:
    """Tokens/s, steps/s and MFU over the steps since the last report; the first step of a call (compile
    included) is reported apart as perf/first_step_seconds and never counted in a rate."""

    def __init__(self, *, model_config, num_devices: int, peak_flops_per_device: float):
        self.model_config, self.num_devices, self.peak = model_config, num_devices, peak_flops_per_device
        self.first_step_seconds = None
        self._start, self._tokens, self._steps = None, 0, 0

    def after_step(self, *, started: float, metrics, batch_shape: tuple[int, int]) -> None:
        if self.first_step_seconds is None:
            jax.block_until_ready(metrics)
            self.first_step_seconds = time.perf_counter() - started
            self.reset()
        else:
            self._tokens += batch_shape[0] * batch_shape[1]
            self._steps += 1

    def reset(self) -> None:
        self._start, self._tokens, self._steps = time.perf_counter(), 0, 0

    def report(self, *, row_length: int) -> dict[str, float]:
        scalars = {"perf/first_step_seconds": self.first_step_seconds}
        if self._steps:
            elapsed = time.perf_counter() - self._start
            tokens_per_second = self._tokens / elapsed
            scalars["perf/steps_per_second"] = self._steps / elapsed
            scalars["perf/tokens_per_second"] = tokens_per_second
            scalars["perf/mfu"] = metrics_lib.model_flops_utilization(
                flops_per_token=model_lib.flops_per_token(self.model_config, seq_len=row_length),
                tokens_per_second=tokens_per_second, num_devices=self.num_devices,
                peak_flops_per_device=self.peak)
        self.reset()
        return scalars


# ====================================================================================================
# The loop.

def restore_or_start(setup: build.Setup, manager, *,
                     workdir: pathlib.Path) -> tuple[step_lib.TrainState, dict | None, int | None]:
    """(state, data-iterator state or None, restored step or None): the newest intact checkpoint of the
    workdir restored onto the setup's shardings (a corrupt newer one is said in one line and set aside),
    else a fresh state. A checkpoint of another parameter layout is refused before anything is read."""
    latest = manager.latest_step()
    if latest is None:
        return setup.initial_state(), None, None  # (outside the mesh context: weights are placed per tensor)
    problems = checkpointing.shape_differences(
        stored=checkpointing.param_shapes(workdir=workdir, step=latest), expected=setup.abstract_params)
    if problems:
        raise config_lib.ConfigError(
            f"checkpoint {manager.directory}/{latest} holds other parameters than this config builds "
            f"({len(problems)} differ, e.g. {problems[0]}): resume with the run's own settings "
            f"({workdir / CONFIG_FILE}) or train in a new --workdir.")
    target = setup.state_target
    start = time.perf_counter()
    state, data_state, step, skipped = checkpointing.restore_latest_intact(manager, target=target, log=_log)
    if skipped:
        for corrupt in sorted(s for s in manager.all_steps() if s > step):
            checkpointing.set_aside(manager.directory, corrupt)
        manager.reload()
    _log(f"resumed from {manager.directory}/{step} ({time.perf_counter() - start:.2f}s)")
    return state, data_state, step


def train_and_evaluate(config, workdir, *, devices: Sequence[Any] | None = None,
                       stop_after: int | None = None) -> dict[str, Any]:
    """Train `config` in `workdir` (resuming from its latest checkpoint); returns the final metrics, with
    'step', 'preempted' and 'state', and writes them (without the state) to <workdir>/final.json.

    `devices`: a subset of jax.devices() for the mesh (default all). `stop_after`: stop (with a
    checkpoint) after this many steps of this call, as a preemption would (tests, benchmarks).
    """
    sharding_lib.maybe_initialize_distributed(config.distributed)
    if config.compilation_cache_dir:
        enable_compilation_cache(config.compilation_cache_dir)
    setup = build.setup(config, devices=devices)
    config, mesh = setup.config, setup.mesh
    workdir = prepare_workdir(workdir)
    train_examples = tokenized_split(setup, split="train")
    eval_examples = (tokenized_split(setup, split="eval") if config.eval.at_end or config.eval.every_steps
                     else [])
    total_steps = setup.total_steps(num_train_examples=len(train_examples))
    is_main = jax.process_index() == 0
    # On CPU the write cannot overlap the next step without a second state (checkpointing.save): write
    # synchronously there, with a bounded window of bytes in flight (tensorstore's buffers).
    platform = mesh.devices.flat[0].platform
    manager = checkpointing.make_manager(directory=checkpointing.checkpoint_dir(workdir),
                                         max_to_keep=config.checkpoint.keep,
                                         async_save=config.checkpoint.async_save and platform != "cpu",
                                         save_window=checkpointing.save_window_bytes(
                                             setup.abstract_state, platform=platform))
    hosts.announce_checkpoints(manager.directory)  # a supervisor names its last complete step if a host is lost
    preemption = PreemptionFlag()
    writer = None
    try:
        state, data_state, restored = restore_or_start(setup, manager, workdir=workdir)
        save_config(config, workdir=workdir)  # only now: a refused resume leaves the run's record alone
        writer = metrics_lib.MetricWriter(workdir=workdir, enabled=is_main, tensorboard=config.tensorboard,
                                          resume_step=restored)
        step = int(jax.device_get(state.step))
        with sharding_lib.mesh_context(mesh, setup.rules):
            block, blocks = sharding_lib.process_rows(mesh, global_rows=config.batch_size)
            iterator = data_lib.train_iterator_from_config(
                train_examples, cfg=config.data, batch_size=config.batch_size // blocks,
                process_index=block, process_count=blocks, pad_id=setup.tokenizer.pad_id, state=data_state)
            compiled_step = setup.train_step()
            schedule = setup.schedule(total_steps=total_steps).as_arrays()
            peak = metrics_lib.assumed_peak_flops_per_device(
                configured=config.peak_flops_per_device, device_kind=mesh.devices.flat[0].device_kind)
            _log(f"deft_jax: {setup.loss.objective} on {config.model.name} "
                 f"({model_lib.count_params(setup.abstract_params) / 1e6:.1f}M params), task "
                 f"{config.data.task}, {len(train_examples)} train examples, {total_steps} steps of "
                 f"{config.batch_size} rows; mesh {dict(mesh.shape)} on {mesh.devices.size} "
                 f"{jax.default_backend()} device(s); MFU assumes {peak:.3g} FLOP/s per device; workdir {workdir}")
            progress = metrics_lib.Progress(total=total_steps, initial=step, enabled=is_main,
                                            mode=config.progress)
            throughput = Throughput(model_config=setup.model_config, num_devices=mesh.devices.size,
                                    peak_flops_per_device=peak)
            final: dict[str, Any] = {}
            steps_this_call, save_seconds, preempted = 0, [], False
            while step < total_steps:
                batch = sharding_lib.put_batch(next(iterator), mesh=mesh, global_rows=config.batch_size,
                                               keys=data_lib.BATCH_KEYS)
                if steps_this_call == 0 and jax.process_count() > 1:
                    # Compile first (it takes longer on some hosts), then meet: the first step starts together.
                    compiled_step.compile(state, batch, schedule)
                    sharding_lib.meet("train: first step", timeout_seconds=config.distributed.get(
                        "initialization_timeout_seconds", sharding_lib.DEFAULT_INITIALIZATION_TIMEOUT))
                started = time.perf_counter()
                state, step_metrics = compiled_step(state, batch, schedule)
                step += 1
                steps_this_call += 1
                throughput.after_step(started=started, metrics=step_metrics, batch_shape=batch["inputs"].shape)
                if steps_this_call == 1:
                    host_memory.release_freed_heap()  # the compiler's heap
                last = step == total_steps
                if due(step, every=config.log_every, last=last):
                    scalars = metrics_lib.to_host_scalars(step_metrics)
                    scalars.update(throughput.report(row_length=batch["inputs"].shape[1]))
                    scalars["perf/compilations"] = float(compiled_step.compilations)
                    histogram = scalars.get("train/alpha_histogram")
                    histograms = ({"train/alpha": (list(step_lib.ALPHA_HISTOGRAM_EDGES), histogram)}
                                  if histogram is not None else None)
                    writer.write(step=step, scalars=scalars, histograms=histograms)
                    progress.update(step=step, scalars=scalars)
                    final.update(scalars)
                else:
                    progress.update(step=step)
                stop = preemption.agreed() or (stop_after is not None and steps_this_call >= stop_after)
                if due(step, every=config.checkpoint.every_steps, last=last) or stop:
                    save_seconds.append(checkpointing.save(manager, step=step, state=state,
                                                           data_state=iterator.get_state(), wait=stop))
                    host_memory.release_freed_heap()  # the write's buffers, before the eval adds its own
                if eval_examples and ((config.eval.every_steps and step % config.eval.every_steps == 0)
                                          or (last and config.eval.at_end)):
                    eval_scalars = {f"eval/{name}": value for name, value in
                                    teacher_forced.eval_means(setup, state.params, eval_examples).items()}
                    host_memory.release_freed_heap()  # the eval program's compile and batches
                    writer.write(step=step, scalars=eval_scalars)
                    final.update(eval_scalars)
                    _log("step {}: {}".format(step, ", ".join(f"{k}={v:.4g}" for k, v in eval_scalars.items())))
                    throughput.reset()
                if stop and not last:
                    preempted = True
                    _log(f"stopped at step {step} of {total_steps} (checkpoint saved); run the same command "
                         f"again to resume")
                    break
            progress.close()
            manager.wait_until_finished()
            final.update(step=step, preempted=preempted,
                         skipped_steps=int(jax.device_get(state.skipped_steps)),
                         compilations=compiled_step.compilations, checkpoint_save_seconds=save_seconds)
            if is_main:
                reporting.write_json(workdir / FINAL_FILE, {k: v for k, v in final.items() if k != "state"})
            final["state"] = state
            if not preempted:
                _log(f"done at step {step}: checkpoints in {manager.directory}, metrics in "
                     f"{workdir / 'metrics.jsonl'} and {workdir / 'tensorboard'}, config in {workdir / CONFIG_FILE}")
            return final
    finally:
        preemption.restore()
        if writer is not None:
            writer.close()
        manager.close()


def read_final(workdir: str | os.PathLike) -> dict[str, Any] | None:
    """<workdir>/final.json written by a run's last call, or None when there is none."""
    path = pathlib.Path(workdir) / FINAL_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def enable_compilation_cache(directory: str) -> None:
    """JAX's persistent compilation cache in `directory` (every compiled program is cached)."""
    directory = str(pathlib.Path(directory).expanduser().absolute())
    if jax.config.jax_compilation_cache_dir != directory:
        jax.config.update("jax_compilation_cache_dir", directory)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _log(message: str) -> None:
    """Process 0's console report (stderr)."""
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)
