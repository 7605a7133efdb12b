"""Evaluation: restore a run's checkpoint (or the base model) and score its task on the eval split.

The command line of `deft_jax.evaluation.evaluator`: flags in, one library call.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from deft_jax import cli, reporting
from deft_jax.evaluation import suites
from deft_jax.evaluation.evaluator import (
    DEFAULT_MAX_NEW_TOKENS,
    EvalOptions,
    EvaluationError,
    evaluate_run,
    summary_row,
)

# ====================================================================================================
# CLI.

def _define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config file for --base without a workdir, e.g. "
                                    "configs/nll.py:runlocal (overrides: --config.data.num_eval=50).",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "A training run's workdir (config.json + checkpoints/).")
    flags.DEFINE_string("step", None, "Checkpoint step to evaluate: a number, 'latest' (default) or 'all'.")
    flags.DEFINE_bool("base", False, "Evaluate the run's model before fine-tuning (pretrained or initial weights).")
    flags.DEFINE_string("out_dir", None, "Where to write step_<N>.json/.md (default <workdir>/eval).")
    flags.DEFINE_integer("num_eval", None, "Evaluate the first N examples of the eval split (default all).")
    flags.DEFINE_integer("max_new_tokens", None, f"Generation length (default per task: {DEFAULT_MAX_NEW_TOKENS}).")
    flags.DEFINE_integer("batch_size", None, "Rows per teacher-forced batch (default config.eval.batch_size).")
    flags.DEFINE_integer("generation_batch_size", None, "Prompts per generation batch (default config.eval.batch_size).")
    flags.DEFINE_bool("generate", True, "Score greedy generations (--nogenerate: teacher-forced metrics only).")
    flags.DEFINE_bool("teacher_forced", True, "Teacher-forced metrics (--noteacher_forced: generation only).")
    flags.DEFINE_string("suite", None, "Score a benchmark suite instead of the run's eval split: math, medical "
                        "or figfont (deft_jax.suites).")
    flags.DEFINE_list("benchmarks", None, "With --suite: these benchmarks only (default all), e.g. math500,aime24.")
    flags.DEFINE_string("data_dir", None, "With --suite: the folder holding the benchmark files.")
    flags.DEFINE_integer("n", None, "With --suite: samples per problem of sampled benchmarks (math: 16).")
    flags.DEFINE_integer("seed", None, "With --suite: sampling seed (default the benchmark's, 0).")
    flags.DEFINE_string("template", None, "With --suite: prompt template by name (default the benchmark's).")
    flags.DEFINE_enum("batching", None, ["continuous", "static"], "With --suite: how rows are batched for "
                      "sampling (default config.eval.batching, 'continuous'); both give the same samples.")
    flags.DEFINE_bool("rescore", False, "With --suite: recompute the report from saved generations (no model).")


def print_table(results: Sequence[Mapping[str, Any]]) -> None:
    print(reporting.markdown_table([summary_row(result) for result in results]))
    for result in results:
        for path in result.get("reports", []):
            print(f"wrote {path}")


def _suite_main(FLAGS) -> None:
    """--suite: deft_jax.suites.evaluate_run_suite with the flags; prints each suite's Markdown table."""
    if FLAGS.suite is None:
        raise EvaluationError("--rescore needs --suite (the suite whose saved generations to rescore)")
    if FLAGS.config is not None and FLAGS.workdir is not None:
        raise EvaluationError("pass either --workdir or --config with --base, not both.")
    reports = suites.evaluate_run_suite(
        suite=FLAGS.suite, benchmarks=FLAGS.benchmarks, workdir=FLAGS.workdir, config=FLAGS.config,
        step=FLAGS.step, base=FLAGS.base, data_dir=FLAGS.data_dir, out_dir=FLAGS.out_dir, n=FLAGS.n,
        num_eval=FLAGS.num_eval, max_new_tokens=FLAGS.max_new_tokens, seed=FLAGS.seed, template=FLAGS.template,
        rescore=FLAGS.rescore, max_rows=FLAGS.generation_batch_size or 64, batching=FLAGS.batching)
    for report in reports:
        print(suites.markdown_report(report))


def main(argv: Sequence[str]) -> None:
    from absl import flags

    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments {list(argv[1:])}")
    FLAGS = flags.FLAGS
    if FLAGS.suite is not None or FLAGS.rescore:
        _suite_main(FLAGS)
        return
    options = EvalOptions(num_eval=FLAGS.num_eval, max_new_tokens=FLAGS.max_new_tokens, batch_size=FLAGS.batch_size,
                          generation_batch_size=FLAGS.generation_batch_size, generate=FLAGS.generate,
                          teacher_forced=FLAGS.teacher_forced)
    if FLAGS.config is not None and FLAGS.workdir is not None:
        raise EvaluationError("pass either --workdir (the run's own config.json is used) or --config with "
                              "--base, not both.")
    results = evaluate_run(workdir=FLAGS.workdir, config=FLAGS.config, steps=FLAGS.step, base=FLAGS.base,
                           out_dir=FLAGS.out_dir, options=options)
    print_table(results)


if __name__ == "__main__":
    _define_flags()
    cli.run_absl("evaluate", main)
