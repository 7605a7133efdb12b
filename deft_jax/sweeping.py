"""Sweeps: expand a config's `sweep()` into runs, train them one after another, evaluate, summarise.

    python -m deft_jax.sweep --config configs/deformed_log.py:smoke --workdir runs/alpha_sweep
    python -m deft_jax.sweep --config configs/deformed_log.py:runlocal --config.total_steps=48 --workdir DIR
    python -m deft_jax.sweep --config configs/deformed_log.py --workdir DIR --print_commands   # cluster
    python -m deft_jax.sweep --config configs/deformed_log.py --workdir DIR --summarize_only

Each point of `sweep()` (a dict of dotted config fields, e.g. {"objective.alpha": 0.5}) becomes one run in
<workdir>/<name>/ (name from the point, e.g. `alpha=0.5`), holding sweep_point.json (the point, the
command and the resolved config) and, once the trainer starts, its own config.json, checkpoints and
metrics. Runs train one after another as subprocesses (`python -m deft_jax.train`, so a crash or a kill
stops one run, not the sweep's record of the others; --in_process calls train.train_and_evaluate
instead); a run's result is read from its final.json. A run that finished gets a marker file, SWEEP_DONE.json, and is skipped when the sweep is
launched again; an interrupted run is resumed by the trainer from its latest checkpoint. Extra config
arguments and `--config.<field>=<value>` overrides apply to every run (the point's own fields win).

At the end every finished run is evaluated (deft_jax.evaluate; reports cached in <run>/eval/) and the
sweep writes summary.md, summary.csv (one row per run: the swept fields and the final metrics) and
summary.png (the metrics against the swept field).

On a multi-host slice every host runs the same command with --in_process (the config's `distributed`
section or $DEFT_COORDINATOR_ADDRESS asks for jax.distributed, as for the trainer), and the workdir is a
path all hosts share. The hosts step through the same runs in the same order: whether a run is done is
decided by process 0 and broadcast, each run trains as one multi-host job, and a barrier after its done
marker lets every host see it before the next run starts. Only process 0 writes point files, markers,
evaluation reports, summaries and plots.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from deft_jax import errors, plots, reporting
from deft_jax import sharding as sharding_lib
from deft_jax.evaluation import before_after
from deft_jax.evaluation import evaluator as evaluate
from deft_jax.training import checkpointing
from deft_jax.training import config as config_lib
from deft_jax.training import hosts as hosts_lib
from deft_jax.training import loop as train
from deft_jax.training import step as step_lib

DONE_MARKER = "SWEEP_DONE.json"
POINT_FILE = "sweep_point.json"
TRAIN_LOG = "train.log"
ERROR_FILE = "error.txt"  # the traceback of a run that failed in-process


class SweepError(errors.UserError):
    """Bad sweep input (config file, sweep points, workdir); the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Hosts:
    """The processes running one sweep together (one process: no collectives at all)."""

    index: int = 0
    count: int = 1

    @property
    def writer(self) -> bool:
        """Only process 0 writes files."""
        return self.index == 0

    def agree(self, flag: bool) -> bool:
        """Process 0's `flag`, on every process (so that all take the same branch)."""
        if self.count == 1:
            return flag
        return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))

    def barrier(self, name: str) -> None:
        """Wait until every process reached `name` (files written before it are then visible to all)."""
        if self.count > 1:
            multihost_utils.sync_global_devices(name)


SINGLE_HOST = Hosts()


def join_hosts(config) -> Hosts:
    """jax.distributed.initialize when the config or the environment asks for it; the resulting Hosts."""
    if not sharding_lib.maybe_initialize_distributed(config.distributed):
        return SINGLE_HOST
    return Hosts(index=jax.process_index(), count=jax.process_count())


# ====================================================================================================
# Points and runs.

def sweep_points(module, *, source: str = "the config file") -> list[dict[str, Any]]:
    """The validated list of points returned by `module.sweep()`."""
    if not hasattr(module, "sweep"):
        raise SweepError(f"{source} has no sweep() function; add one returning a list of "
                         f"{{'dotted.field': value}} dicts (see configs/deformed_log.py).")
    points = module.sweep()
    if not isinstance(points, (list, tuple)) or not points:
        raise SweepError(f"{source}: sweep() must return a non-empty list of dicts, got {points!r}")
    for index, point in enumerate(points):
        if not isinstance(point, Mapping) or not point or not all(isinstance(k, str) and k for k in point):
            raise SweepError(f"{source}: sweep() point {index} must be a non-empty dict of 'dotted.field': value, "
                             f"got {point!r}")
    return [dict(point) for point in points]


def _name_part(value: Any) -> str:
    text = repr(value) if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def run_names(points: Sequence[Mapping[str, Any]]) -> list[str]:
    """A directory name per point from its fields' last components and values, e.g. 'alpha=0.5'
    (full dotted names when the short ones collide); distinct points give distinct names."""
    for use_full_keys in (False, True):
        names = [",".join(f"{key if use_full_keys else key.split('.')[-1]}={_name_part(value)}"
                          for key, value in point.items()) for point in points]
        if len(set(names)) == len(names):
            return names
    duplicates = sorted({name for name in names if names.count(name) > 1})
    raise SweepError(f"sweep() has repeated points: {duplicates}; every point must differ.")


def apply_point(config, point: Mapping[str, Any]):
    """A validated copy of `config` with the point's fields set (they must exist)."""
    try:
        return config_lib.apply_overrides(config, point)
    except ValueError as error:
        raise SweepError(f"sweep point {dict(point)}: {error}") from None


def flag_value(value: Any) -> str:
    """A value as `--config.<field>=<text>` expects it (ml_collections config_flags parsing)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return repr(tuple(value))
    return repr(value)


def override_flags(overrides: Mapping[str, Any]) -> list[str]:
    return [f"--config.{key}={flag_value(value)}" for key, value in overrides.items()]


def absolute_config_arg(config_arg: str) -> str:
    """'configs/x.py:arg' with the file made absolute (commands run from any directory)."""
    file_part, colon, arg = config_arg.partition(":")
    return str(pathlib.Path(file_part).resolve()) + colon + arg


def train_command(*, config_arg: str, overrides: Mapping[str, Any], point: Mapping[str, Any],
                  run_dir: pathlib.Path, python: str = sys.executable) -> list[str]:
    """`python -m deft_jax.train` for one run: the user's overrides, then the point's (the point wins)."""
    return [python, "-m", "deft_jax.train", f"--config={absolute_config_arg(config_arg)}",
            *override_flags(overrides), *override_flags(point), f"--workdir={run_dir}"]


@dataclasses.dataclass
class SweepRun:
    name: str
    point: dict[str, Any]
    workdir: pathlib.Path
    config: Any  # the resolved ConfigDict
    command: list[str]

    @property
    def done_marker(self) -> pathlib.Path:
        return self.workdir / DONE_MARKER

    def is_done(self) -> bool:
        return self.done_marker.is_file()

    def shell_command(self, *, python: str | None = None) -> str:
        """The command as one shell line (`python` replaces the interpreter path when given)."""
        command = list(self.command)
        if python:
            command[0] = python
        return shlex.join(command)

    def resolved_config_json(self) -> dict[str, Any]:
        return json.loads(self.config.to_json_best_effort())


def plan_runs(*, config, config_arg: str, overrides: Mapping[str, Any], workdir: str | os.PathLike,
              points: Sequence[Mapping[str, Any]]) -> list[SweepRun]:
    """One SweepRun per point (resolved and validated before anything runs)."""
    workdir = pathlib.Path(workdir).absolute()
    runs = []
    for name, point in zip(run_names(points), points):
        run_dir = workdir / name
        runs.append(SweepRun(name=name, point=dict(point), workdir=run_dir, config=apply_point(config, point),
                             command=train_command(config_arg=config_arg, overrides=overrides, point=point,
                                                   run_dir=run_dir)))
    return runs


def check_same_config(run: SweepRun) -> None:
    """Raise SweepError when <run>/sweep_point.json holds another resolved config than this sweep's
    (changed overrides or config file): a finished run would otherwise be skipped, and an interrupted
    one resumed, under settings it was not trained with."""
    path = run.workdir / POINT_FILE
    if not path.is_file():
        return
    stored = json.loads(path.read_text()).get("config")
    current = run.resolved_config_json()
    changed = sorted(name for name in _changed_fields(stored or {}, current)
                     if not _added_at_its_default(name, stored=stored or {}, current=current))
    if changed:
        raise SweepError(f"run {run.workdir} was started with another config (fields differing: {changed[:10]}); "
                         f"use a new --workdir for the changed sweep, or delete {run.workdir} to retrain it.")


def _lookup(tree: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _added_at_its_default(name: str, *, stored: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    """A field the project added after the run was started (absent from its stored config) that this sweep
    leaves at its default: the run was trained with that behaviour, so it is the same config."""
    if name not in config_lib.FIELDS or _lookup(stored, name)[0]:
        return False
    default = json.loads(json.dumps(config_lib.FIELDS[name].default))
    return _lookup(current, name) == (True, default)


def _changed_fields(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> set[str]:
    changed = set()
    for key in set(a) | set(b):
        x, y = a.get(key), b.get(key)
        if isinstance(x, Mapping) and isinstance(y, Mapping):
            changed |= _changed_fields(x, y, prefix=f"{prefix}{key}.")
        elif x != y:
            changed.add(f"{prefix}{key}")
    return changed


def write_run_files(run: SweepRun) -> None:
    """<run>/sweep_point.json: the point, the command and the resolved config."""
    run.workdir.mkdir(parents=True, exist_ok=True)
    reporting.write_json(run.workdir / POINT_FILE, {"name": run.name, "point": run.point, "command": run.shell_command(),
                                           "config": run.resolved_config_json()})


def write_commands(runs: Sequence[SweepRun], *, path: str | os.PathLike | None) -> str:
    """One shell command per run (for a cluster scheduler; interpreter `python`), written to `path` when given."""
    text = "".join(run.shell_command(python="python") + "\n" for run in runs)
    if path:
        pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(path).write_text(text)
    return text


# ====================================================================================================
# Running.

class _Forwarder:
    """Forwards SIGTERM/SIGINT to the running trainer subprocess (which checkpoints and exits)."""

    def __init__(self):
        self.child: subprocess.Popen | None = None
        self.stopping = False
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass

    def _handle(self, signum, frame):
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)

    def restore(self):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def train_subprocess(run: SweepRun, *, forwarder: _Forwarder) -> tuple[bool, str]:
    """Run the trainer for `run` (output appended to <run>/train.log); (finished, message)."""
    log_path = run.workdir / TRAIN_LOG
    start_offset = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as log:
        log.write(f"\n$ {run.shell_command()}\n".encode())
        log.flush()
        forwarder.child = subprocess.Popen(run.command, stdout=log, stderr=subprocess.STDOUT)
        code = forwarder.child.wait()
        forwarder.child = None
    with open(log_path, "rb") as log:
        log.seek(start_offset)
        text = log.read().decode(errors="replace")
    final = train.read_final(run.workdir)
    if code not in (0, train.EXIT_PREEMPTED):
        tail = "\n    ".join(text.strip().splitlines()[-8:])
        return False, f"the trainer exited with status {code}; see {log_path}. Last lines:\n    {tail}"
    if final is None:
        return False, f"the trainer wrote no {train.FINAL_FILE}; see {log_path}"
    if code == train.EXIT_PREEMPTED or final.get("preempted"):
        return False, f"stopped at step {final.get('step')} (preempted); launch the sweep again to resume"
    return True, f"finished at step {final.get('step')}"


def train_in_process(run: SweepRun) -> tuple[bool, str]:
    final = train.train_and_evaluate(run.config, run.workdir)
    if final.get("preempted"):
        return False, f"stopped at step {final.get('step')} (preempted); launch the sweep again to resume"
    return True, f"finished at step {final.get('step')}"


def record_failure(run: SweepRun, *, error: BaseException, write: bool) -> str:
    """The one-line status of a run whose in-process training raised `error`; the traceback goes to
    <run>/error.txt (written by process 0 when `write`)."""
    path = run.workdir / ERROR_FILE
    if write:
        run.workdir.mkdir(parents=True, exist_ok=True)
        reporting.write_text(path, "".join(traceback.format_exception(error)))
    kind = "" if isinstance(error, errors.UserError) else f"{type(error).__name__}: "
    return f"{kind}{errors.one_line(str(error))} (traceback in {path})"


def mark_done(run: SweepRun, *, message: str, steps: Sequence[int] | None = None) -> None:
    """Write the run's done marker (`steps`: its checkpoint steps, read here when not given)."""
    steps = checkpointing.available_steps(run.workdir) if steps is None else steps
    reporting.write_json(run.done_marker, {"name": run.name, "point": run.point, "final_step": steps[-1] if steps else None,
                                  "finished": time.time(), "message": message})


FINISHED_STATUSES = ("done", "skipped (done)")


def unfinished(statuses: Mapping[str, str]) -> list[str]:
    """The runs of run_all's {name: status} that did not finish (failed, interrupted): the sweep exits 1 on any."""
    return [name for name, status in statuses.items() if status not in FINISHED_STATUSES]


def run_all(runs: Sequence[SweepRun], *, in_process: bool = False, log=print,
            hosts: Hosts = SINGLE_HOST) -> dict[str, str]:
    """Train every unfinished run in order; returns {name: status} ('done', 'skipped (done)', 'failed: ...',
    'interrupted: ...'). Stops early when the sweep itself is asked to stop (SIGTERM/SIGINT). With several
    `hosts` (in_process only) all of them train each run together and only process 0 writes."""
    if hosts.count > 1 and not in_process:
        raise SweepError(f"a sweep over {hosts.count} processes trains each run as one multi-host job: add "
                         "--in_process")
    statuses: dict[str, str] = {}
    forwarder = _Forwarder()
    try:
        for run in runs:
            check_same_config(run)
        for index, run in enumerate(runs, start=1):
            prefix = f"[{index}/{len(runs)}] {run.name}"
            if hosts.agree(run.is_done()):
                statuses[run.name] = "skipped (done)"
                log(f"{prefix}: already finished, skipping ({run.done_marker})")
                continue
            if forwarder.stopping:
                statuses[run.name] = "not started (sweep stopped)"
                continue
            if hosts.writer:
                write_run_files(run)
            resuming = (run.workdir / "checkpoints").is_dir() and any((run.workdir / "checkpoints").iterdir())
            log(f"{prefix}: {'resuming' if resuming else 'training'} in {run.workdir}")
            hosts.barrier(f"sweep: {run.workdir} start")  # the hosts' first collectives then meet in time
            started = time.perf_counter()
            try:
                finished, message = (train_in_process(run) if in_process
                                     else train_subprocess(run, forwarder=forwarder))
            except Exception as error:  # noqa: BLE001 (a failed run is recorded; a lost host ends the sweep)
                if not in_process or hosts_lib.is_peer_failure(error):
                    raise
                finished, message = False, record_failure(run, error=error, write=hosts.writer)
                hosts.barrier(f"sweep: {run.workdir} failed")  # every host goes on to the next run together
            elapsed = time.perf_counter() - started
            if finished:
                steps = checkpointing.available_steps(run.workdir)  # every host: orbax synchronises the hosts
                if hosts.writer:
                    mark_done(run, message=message, steps=steps)
                hosts.barrier(f"sweep: {run.workdir} done")
                statuses[run.name] = "done"
                log(f"{prefix}: {message} ({elapsed:.0f}s)")
            else:
                statuses[run.name] = ("interrupted: " if forwarder.stopping else "failed: ") + message
                log(f"{prefix}: {statuses[run.name]}")
    finally:
        forwarder.restore()
    return statuses


# ====================================================================================================
# Evaluation and summary.

def evaluate_finished(runs: Sequence[SweepRun], *, options, include_unmarked: bool = False,
                      log=print, hosts: Hosts = SINGLE_HOST) -> dict[str, dict[str, Any] | None]:
    """{name: evaluation result of the run's latest checkpoint} for finished runs (None otherwise).

    Finished = the sweep's done marker; with `include_unmarked` (runs trained elsewhere, e.g. from
    --print_commands on a cluster) any run with a checkpoint. A report already written for that step
    (<run>/eval/step_<N>.json) is reused.
    """
    results: dict[str, dict[str, Any] | None] = {}
    for run in runs:
        steps = checkpointing.available_steps(run.workdir) if run.workdir.is_dir() else []
        if not steps or not (run.is_done() or include_unmarked):
            results[run.name] = None
            continue
        cached = run.workdir / "eval" / f"{reporting.report_name(steps[-1])}.json"
        if hosts.agree(cached.is_file()):
            results[run.name] = json.loads(cached.read_text()) if hosts.writer else {}
            log(f"{run.name}: evaluation of step {steps[-1]} already in {cached}")
            continue
        log(f"{run.name}: evaluating step {steps[-1]}")
        results[run.name] = evaluate.evaluate_run(workdir=run.workdir, steps=steps[-1], options=options,
                                                  write=hosts.writer)[0]
        hosts.barrier(f"sweep: {run.workdir} evaluated")
    return results


def summary_rows(runs: Sequence[SweepRun], *, results: Mapping[str, Mapping[str, Any] | None],
                 statuses: Mapping[str, str]) -> list[dict[str, Any]]:
    """One row per run: name, status, the swept fields, the evaluated step and the final metrics."""
    rows = []
    for run in runs:
        result = results.get(run.name) or {}
        status = statuses.get(run.name) or ("done" if run.is_done() else
                                            f"checkpoint at step {result['step']} (no done marker)" if result
                                            else "unfinished")
        rows.append({"run": run.name, "status": status, **run.point, "step": result.get("step"),
                     **result_cells(result)})
    return rows


def result_cells(result: Mapping[str, Any]) -> dict[str, Any]:
    """A summary row's metric cells of one evaluation: score, scoring task, the task's generation
    figures and the teacher-forced metrics (None where absent)."""
    teacher = result.get("teacher_forced") or {}
    generation = result.get("generation") or {}
    return {"score": generation.get("score"), "scoring_task": generation.get("scoring_task"),
            **task_figures(result), **{metric: teacher.get(metric) for metric in step_lib.TEACHER_FORCED_METRICS}}


FIGURE_COLUMNS = ("exact_match", "case_insensitive", "jaro_winkler")


def task_figures(result: Mapping[str, Any]) -> dict[str, float]:
    """The task's generation figures beyond its score (FigFont: exact_match, case_insensitive,
    jaro_winkler), recomputed from the evaluation's saved generations; {} without generations."""
    generation = result.get("generation") or {}
    if not result.get("predictions") or "scoring_task" not in generation:
        return {}
    figures = before_after.figures_from_generations(result["predictions"], scoring_task=generation["scoring_task"])
    return {} if list(figures) == ["score"] else figures


def evaluate_base(run: SweepRun, *, workdir: pathlib.Path, options, log=print,
                  hosts: Hosts = SINGLE_HOST) -> dict[str, Any]:
    """The base model (the runs' shared step-0 weights) evaluated once, with `run`'s config; the report
    goes to <workdir>/base/ and is reused when already there."""
    out_dir = workdir / "base"
    cached = out_dir / f"{reporting.report_name(None)}.json"
    if hosts.agree(cached.is_file()):
        log(f"base model: evaluation already in {cached}")
        return json.loads(cached.read_text()) if hosts.writer else {}
    log("base model: evaluating")
    result = evaluate.evaluate_run(config=run.config, base=True, out_dir=out_dir, options=options,
                                   write=hosts.writer)[0]
    hosts.barrier("sweep: base model evaluated")
    return result


def base_row(result: Mapping[str, Any], *, swept: Sequence[str]) -> dict[str, Any]:
    """The summary row of the base model (its swept fields empty)."""
    return {"run": "base (no fine-tuning)", "status": "base", **{key: None for key in swept}, "step": 0,
            **result_cells(result)}


def _csv_cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def write_summary(rows: Sequence[Mapping[str, Any]], *, workdir: pathlib.Path, title: str) -> list[pathlib.Path]:
    """summary.md and summary.csv (and summary.png, see plots.sweep_summary) in `workdir`."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(workdir / "summary.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({column: _csv_cell(row.get(column)) for column in columns})
    reporting.write_text(workdir / "summary.md", f"# Sweep: {title}\n\n{reporting.markdown_table(rows)}\n")
    paths = [workdir / "summary.md", workdir / "summary.csv"]
    swept = [key for key in rows[0] if key not in ("run", "status", "step", "score", "scoring_task")
             and key not in step_lib.TEACHER_FORCED_METRICS and key not in FIGURE_COLUMNS] if rows else []
    plot = plots.sweep_summary(rows, swept=swept, path=workdir / "summary.png", title=title)
    return paths + ([plot] if plot else [])
