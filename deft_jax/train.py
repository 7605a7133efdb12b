"""Training: set a run up, loop over steps with periodic actions, and the CLI.

The command line of `deft_jax.training.loop`: flags in, one library call. One process of a multi-process
job runs under `training.hosts.supervise` (a lost peer: one line, exit 75); the supervisor loads no JAX,
so the library is imported inside `main`.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

from deft_jax import cli
from deft_jax.training import hosts

# ====================================================================================================
# CLI.

def main(argv: Sequence[str]) -> None:
    from absl import flags
    from absl import logging as absl_logging

    import jax

    from deft_jax.evaluation import before_after
    from deft_jax.training import config as config_lib
    from deft_jax.training import host_memory
    from deft_jax.training.loop import EXIT_PREEMPTED, train_and_evaluate

    del argv
    FLAGS = flags.FLAGS
    if not FLAGS["verbosity"].present:  # orbax and JAX log a lot at INFO; --verbosity=0 brings it back
        absl_logging.set_verbosity(absl_logging.WARNING)
    if FLAGS.workdir is None:
        raise config_lib.ConfigError("--workdir is required")
    timeout = FLAGS.config.distributed.get("heartbeat_timeout_seconds", 100)
    with hosts.waiting_for_verdict(heartbeat_timeout_seconds=timeout):
        final = train_and_evaluate(FLAGS.config, FLAGS.workdir)
    if final["preempted"]:
        sys.exit(EXIT_PREEMPTED)
    if FLAGS.config.eval.report_prompts:
        del final  # frees the training state before two models are evaluated
        host_memory.release_freed_heap()
        report = before_after.compare(FLAGS.config, workdir=FLAGS.workdir,
                                      num_prompts=FLAGS.config.eval.report_prompts)
        if jax.process_index() == 0:
            print(before_after.markdown(report), flush=True)


def _define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/deft.py:runlocal.",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and config.json.")
    flags.mark_flags_as_required(["config", "workdir"])


if __name__ == "__main__":
    hosts.supervise("train")
    _define_flags()
    cli.run_absl("train", main)
