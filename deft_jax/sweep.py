"""Sweeps: expand a config's `sweep()` into runs, train them one after another, evaluate, summarise.

The command line of `deft_jax.sweeping`: flags in, one library call. One process of a multi-process
sweep runs under `training.hosts.supervise` (a lost peer: one line, exit 75; the relaunch resumes); the
supervisor loads no JAX, so the library is imported inside the functions.
"""
from __future__ import annotations

import pathlib
import sys
from collections.abc import Sequence

from deft_jax import cli
from deft_jax.training import hosts as hosts_lib

# ====================================================================================================
# CLI.

def _define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config file with a sweep(), e.g. configs/deformed_log.py:smoke; "
                                    "--config.<field>=<value> overrides apply to every run.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Sweep directory (one sub-directory per run).")
    flags.DEFINE_bool("print_commands", False, "Print one training command per run (for a cluster) and exit.")
    flags.DEFINE_string("commands_file", None, "Write one training command per run to this file and exit.")
    flags.DEFINE_bool("summarize_only", False, "Do not train: evaluate the finished runs and write the summary.")
    flags.DEFINE_bool("in_process", False, "Train in this process (train.train_and_evaluate), not subprocesses "
                      "(required on several hosts).")
    flags.DEFINE_bool("evaluate", True, "Evaluate finished runs and write the summary at the end.")
    flags.DEFINE_integer("num_eval", None, "Evaluate the first N eval examples of each run (default all).")
    flags.DEFINE_integer("max_new_tokens", None, "Generation length for evaluation (default per task).")
    flags.DEFINE_bool("generate", True, "Score greedy generations in the evaluation.")
    flags.DEFINE_bool("base", False, "Also evaluate the base model (the runs' step-0 weights) once and put its "
                      "row first in the summary.")
    flags.mark_flags_as_required(["config", "workdir"])


def main(argv: Sequence[str]) -> None:
    from absl import flags
    from ml_collections import config_flags

    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments {list(argv[1:])}")
    FLAGS = flags.FLAGS
    if not FLAGS["verbosity"].present:  # orbax logs every restore at INFO; --verbosity=0 brings it back
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.WARNING)
    config_arg = config_flags.get_config_filename(FLAGS["config"])
    overrides = config_flags.get_override_values(FLAGS["config"])
    workdir = pathlib.Path(FLAGS.workdir).absolute()
    timeout = FLAGS.config.distributed.get("heartbeat_timeout_seconds", 100)
    with hosts_lib.waiting_for_verdict(heartbeat_timeout_seconds=timeout):
        _sweep(FLAGS, config_arg=config_arg, overrides=overrides, workdir=workdir)


def _sweep(FLAGS, *, config_arg: str, overrides, workdir: pathlib.Path) -> None:  # noqa: N803 (absl's name)
    from deft_jax import reporting
    from deft_jax.evaluation import evaluator as evaluate
    from deft_jax.sweeping import (
        SweepError,
        base_row,
        check_same_config,
        evaluate_base,
        evaluate_finished,
        join_hosts,
        override_flags,
        plan_runs,
        run_all,
        summary_rows,
        sweep_points,
        unfinished,
        write_commands,
        write_run_files,
        write_summary,
    )
    from deft_jax.training import config as config_lib

    hosts = join_hosts(FLAGS.config)
    say = (lambda m: print(m, flush=True)) if hosts.writer else (lambda m: None)
    module = config_lib.load_config_module(config_arg.partition(":")[0])
    points = sweep_points(module, source=config_arg.partition(":")[0])
    runs = plan_runs(config=FLAGS.config, config_arg=config_arg, overrides=overrides, workdir=workdir,
                     points=points)
    for run in runs:
        check_same_config(run)
    if FLAGS.print_commands or FLAGS.commands_file:
        for run in runs:
            write_run_files(run)
        text = write_commands(runs, path=FLAGS.commands_file)
        if FLAGS.print_commands:
            print(text, end="")
        if FLAGS.commands_file:
            print(f"wrote {len(runs)} commands to {FLAGS.commands_file}; afterwards run this sweep again "
                  f"with --summarize_only", file=sys.stderr)
        return
    if hosts.count > 1 and not (FLAGS.in_process or FLAGS.summarize_only):
        raise SweepError(f"this sweep runs on {hosts.count} processes: add --in_process (each run then "
                         "trains as one multi-host job)")
    if hosts.writer:
        workdir.mkdir(parents=True, exist_ok=True)
        reporting.write_json(workdir / "sweep.json", {"config": config_arg, "overrides": overrides,
                                                      "runs": [{"name": r.name, "point": r.point} for r in runs]})
    say(f"sweep: {len(runs)} runs of {config_arg} in {workdir}: {[run.name for run in runs]}"
        + (f" (process {hosts.index} of {hosts.count})" if hosts.count > 1 else ""))
    statuses = {} if FLAGS.summarize_only else run_all(runs, in_process=FLAGS.in_process, log=say, hosts=hosts)
    if FLAGS.evaluate:
        options = evaluate.EvalOptions(num_eval=FLAGS.num_eval, max_new_tokens=FLAGS.max_new_tokens,
                                       generate=FLAGS.generate)
        results = evaluate_finished(runs, options=options, include_unmarked=FLAGS.summarize_only, log=say,
                                    hosts=hosts)
        base = evaluate_base(runs[0], workdir=workdir, options=options, log=say, hosts=hosts) if FLAGS.base else None
        if hosts.writer:
            rows = summary_rows(runs, results=results, statuses=statuses)
            if base is not None:
                rows.insert(0, base_row(base, swept=list(runs[0].point)))
            paths = write_summary(rows, workdir=workdir, title=f"{config_arg} {override_flags(overrides)}".strip())
            print(reporting.markdown_table(rows))
            for path in paths:
                print(f"wrote {path}")
    left = unfinished(statuses)
    if left:  # with or without the evaluation: a failed run is not a finished sweep
        raise SystemExit(f"sweep: {len(left)} run(s) did not finish: {left}; launch the same command "
                         f"again to resume them.")


if __name__ == "__main__":
    hosts_lib.supervise("sweep")
    _define_flags()
    cli.run_absl("sweep", main)
