"""Which objective for my data? The base model's prior on a dataset, measured by teacher forcing.

The command line of `deft_jax.evaluation.probe`: flags in, one library call.
"""
from __future__ import annotations

from collections.abc import Sequence

from deft_jax import cli
from deft_jax.evaluation.probe import markdown, probe_config


def _define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config whose model and data to probe, e.g. configs/nll.py "
                                    "(overrides: --config.data.task=gsm8k --config.data.path=...).", lock_config=True)
    flags.DEFINE_integer("num", 64, "Training examples to probe.")
    flags.DEFINE_string("out_dir", "probe", "Where probe.json, probe.md and probe_scatter.png go.")


def main(argv: Sequence[str]) -> None:
    from absl import flags

    FLAGS = flags.FLAGS
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments {list(argv[1:])}")
    if FLAGS.config is None:
        raise cli.UserError("pass --config (e.g. configs/nll.py with --config.data.* naming the dataset)")
    summary = probe_config(FLAGS.config, num=FLAGS.num, out_dir=FLAGS.out_dir)
    print(markdown(summary, title=summary["title"]))
    print(f"wrote {FLAGS.out_dir}/probe.json, probe.md, probe_scatter.png")


if __name__ == "__main__":
    _define_flags()
    cli.run_absl("probe", main)
