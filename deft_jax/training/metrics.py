"""Metric writers (TensorBoard event files + JSON lines, process 0 only), progress display, throughput/MFU.

Scalars are written under the names the train step returns (e.g. 'train/loss', 'train/nll'); the
alpha histogram is written as a TensorBoard histogram from bucket counts, and its counts go into the
JSON line as a list.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

# Peak dense bf16 FLOP/s per TPU chip (one JAX device), from the vendors' data sheets; the compile tool's
# chip table takes its figures from here.
TPU_PEAK_FLOPS = {"v4": 275e12, "v5e": 197e12, "v5p": 459e12, "v6e": 918e12}
# Peak dense FLOP/s per device assumed for MFU when config.peak_flops_per_device is 0 (auto), by the
# prefix of jax's device_kind. The CPU figure is float32 per core (an AVX-512 FMA core at ~3 GHz); a CPU
# device spans the cores this process may use, shared among its local CPU devices.
PEAK_FLOPS_BY_DEVICE_KIND = {
    "TPU v4": TPU_PEAK_FLOPS["v4"],
    "TPU v5 lite": TPU_PEAK_FLOPS["v5e"],
    "TPU v5e": TPU_PEAK_FLOPS["v5e"],
    "TPU v5p": TPU_PEAK_FLOPS["v5p"],
    "TPU v6 lite": TPU_PEAK_FLOPS["v6e"],
    "TPU v6e": TPU_PEAK_FLOPS["v6e"],
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
    "cpu": 100e9,  # per core
}


def assumed_peak_flops_per_device(*, configured: float, device_kind: str) -> float:
    """The configured peak FLOP/s per device, or the table's value for this device kind (0 if unknown)."""
    if configured and configured > 0:
        return float(configured)
    for kind, peak in PEAK_FLOPS_BY_DEVICE_KIND.items():
        if device_kind.lower().startswith(kind.lower()):
            if kind == "cpu":
                cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
                return peak * cores / max(jax.local_device_count(), 1)
            return peak
    return 0.0


def model_flops_utilization(*, flops_per_token: float, tokens_per_second: float, num_devices: int,
                            peak_flops_per_device: float) -> float:
    """MFU = (model FLOPs per token x tokens/s) / (peak FLOP/s per device x devices); NaN when unknown."""
    peak = peak_flops_per_device * num_devices
    return flops_per_token * tokens_per_second / peak if peak > 0 else float("nan")


def to_host_scalars(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Device metrics -> Python floats (lists for vector metrics such as histogram counts)."""
    host = jax.device_get(dict(metrics))
    out = {}
    for name, value in host.items():
        value = np.asarray(value)
        out[name] = float(value) if value.ndim == 0 else value.tolist()
    return out


class MetricWriter:
    """Writes scalars and histograms to <workdir>/tensorboard (tensorboardX) and <workdir>/metrics.jsonl.

    Only the process with `enabled=True` (process 0) writes; others accept calls and do nothing.
    """

    def __init__(self, *, workdir: str | pathlib.Path, enabled: bool, tensorboard: bool = True,
                 resume_step: int | None = None):
        """`resume_step`: the checkpoint step a run resumes from; records of later steps (written before a
        kill, and about to be replayed) are dropped from metrics.jsonl so every step keeps one line."""
        self.enabled = enabled
        self._tb = None
        self._jsonl = None
        if not enabled:
            return
        workdir = pathlib.Path(workdir)
        self.jsonl_path = workdir / "metrics.jsonl"
        self.tensorboard_dir = workdir / "tensorboard"
        if self.jsonl_path.exists():
            drop_records_after(self.jsonl_path, step=0 if resume_step is None else resume_step)
        self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")
        if tensorboard:
            self._tb = tensorboard_writer(logdir=self.tensorboard_dir)

    def write(self, *, step: int, scalars: Mapping[str, Any],
              histograms: Mapping[str, tuple[list[float], list[float]]] | None = None) -> None:
        """`scalars`: name -> float (lists go to JSON only); `histograms`: name -> (edges, counts)."""
        if not self.enabled:
            return
        record = {"step": int(step), "time": time.time()}
        for name, value in scalars.items():
            record[name] = value if isinstance(value, list) else _json_float(value)
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is None:
            return
        for name, value in scalars.items():
            if not isinstance(value, list) and math.isfinite(value):
                self._tb.add_scalar(name, value, global_step=int(step))
        for name, (edges, counts) in (histograms or {}).items():
            _add_histogram(self._tb, name=name, edges=edges, counts=counts, step=int(step))

    def write_text(self, *, step: int, name: str, text: str) -> None:
        if self.enabled and self._tb is not None:
            self._tb.add_text(name, text, global_step=int(step))

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def tensorboard_writer(*, logdir: str | pathlib.Path, flush_secs: int = 30):
    """tensorboardX's SummaryWriter for `logdir`, imported without PyTorch.

    tensorboardX imports torch when it is installed (only to accept torch tensors, which the trainer never
    passes): ~0.2 GiB of resident memory for the whole run. Its first import here sees torch as absent; a
    later `import torch` elsewhere works as usual.
    """
    with _hidden_module("torch"):
        from tensorboardX import SummaryWriter
    return SummaryWriter(logdir=str(logdir), flush_secs=flush_secs)


@contextlib.contextmanager
def _hidden_module(name: str):
    """Within the block `import <name>` raises ImportError, unless <name> is imported already."""
    if name in sys.modules:
        yield
        return
    sys.modules[name] = None  # the import system's marker for "not importable"
    try:
        yield
    finally:
        if name in sys.modules and sys.modules[name] is None:
            del sys.modules[name]


def read_records(workdir: str | pathlib.Path) -> list[dict[str, Any]]:
    """The records MetricWriter wrote to <workdir>/metrics.jsonl, one dict per line ([] when there is none)."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def drop_records_after(path: pathlib.Path, *, step: int) -> int:
    """Rewrite the JSON-lines file `path` without records whose 'step' exceeds `step` (atomically);
    returns how many were dropped."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if not line.strip() or json.loads(line).get("step", 0) <= step]
    if len(kept) != len(lines):
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text("".join(kept), encoding="utf-8")
        temporary.replace(path)
    return len(lines) - len(kept)


def _json_float(value: Any) -> Any:
    value = float(value)
    return value if math.isfinite(value) else str(value)


def _add_histogram(writer, *, name: str, edges, counts, step: int) -> None:
    counts = np.asarray(counts, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return
    centres = np.concatenate([(edges[:-1] + edges[1:]) / 2, edges[-1:]])[: len(counts)]
    writer.add_histogram_raw(
        name, min=float(edges[0]), max=float(edges[-1]), num=int(total),
        sum=float((centres * counts).sum()), sum_squares=float((centres ** 2 * counts).sum()),
        bucket_limits=[float(x) for x in np.concatenate([edges[1:], [np.inf]])[: len(counts)]],
        bucket_counts=[float(c) for c in counts], global_step=step)


class Progress:
    """Console progress: a tqdm bar (rate, ETA, loss) on a terminal, else one line per logged step."""

    def __init__(self, *, total: int, initial: int, enabled: bool, mode: str = "auto"):
        if mode not in ("auto", "bar", "lines", "off"):
            raise ValueError(f"config.progress={mode!r}: expected 'auto', 'bar', 'lines' or 'off'.")
        self.enabled = enabled and mode != "off"
        use_bar = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
        self._bar = None
        self._first = None
        self.total = total
        if self.enabled and use_bar:
            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr)

    def update(self, *, step: int, scalars: Mapping[str, Any] | None = None) -> None:
        """Advance to `step`; `scalars` (when given) are shown (bar) or printed (lines)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            if scalars:
                self._bar.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in _shown(scalars).items()})
            return
        if self._first is None:  # rates start after the first step (which includes compilation)
            self._first = (step, time.perf_counter())
        if scalars:
            first_step, first_time = self._first
            elapsed = time.perf_counter() - first_time
            shown = " ".join(f"{k.split('/')[-1]}={v:.4g}" for k, v in _shown(scalars).items())
            parts = [f"step {step}/{self.total}"]
            if elapsed > 0 and step > first_step:  # a rate exists from the second step on
                rate = (step - first_step) / elapsed
                parts += [f"{rate:.2f} steps/s", f"ETA {tqdm.format_interval((self.total - step) / rate)}"]
            print(" | ".join(parts + [shown]), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


_SHOWN = ("train/loss", "train/nll", "train/mean_p", "train/mean_alpha", "perf/tokens_per_second")


def _shown(scalars: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(scalars[k]) for k in _SHOWN if k in scalars and not isinstance(scalars[k], list)}


# ====================================================================================================
# Compilations, through JAX's public monitoring events.

LOWERING_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"  # one per program JAX lowers (a jit miss)


class ProgramCounter:
    """How many programs one jitted function has had lowered (one per new signature, whether or not the
    persistent compilation cache then holds the compiled code): jax.monitoring reports each lowering as
    LOWERING_EVENT with fun_name 'jit(<name>)'; those reported while `counting()` is active are counted."""

    _active = threading.local()
    _registered = False

    def __init__(self, *, fun_name: str):
        self.fun_name = f"jit({fun_name})"
        self.count = 0
        if not ProgramCounter._registered:
            jax.monitoring.register_event_duration_secs_listener(ProgramCounter._listen)
            ProgramCounter._registered = True

    @staticmethod
    def _listen(event: str, duration: float, **kwargs) -> None:
        del duration
        counter = getattr(ProgramCounter._active, "counter", None)
        if event == LOWERING_EVENT and counter is not None and kwargs.get("fun_name") == counter.fun_name:
            counter.count += 1

    @contextlib.contextmanager
    def counting(self):
        previous = getattr(ProgramCounter._active, "counter", None)
        ProgramCounter._active.counter = self
        try:
            yield self
        finally:
            ProgramCounter._active.counter = previous
