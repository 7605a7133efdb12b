"""Ahead-of-time compilation for a TPU slice, on a machine without one: will this config fit, and what

The command line of `deft_jax.aot.programs`: flags in, one library call.
"""
from __future__ import annotations

import os

# Targets are described, never attached: JAX's default backend stays the CPU.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import sys  # noqa: E402
from collections.abc import Sequence

from deft_jax import cli, reporting
from deft_jax.aot import estimate as estimate_lib
from deft_jax.aot.programs import (
    PROGRAMS,
    GenerationShape,
    compile_report,
    default_generation,
    format_report,
)


def _define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/paper/llama_3_1_8b.py:regime=figfont.",
                                    lock_config=True)
    flags.DEFINE_string("topology", None, "TPU slice (v5p-32, v4-32, v5e-16, v6e-16) or JAX topology (v5p:2x2x4).")
    flags.DEFINE_list("programs", list(PROGRAMS), f"Programs to compile, from {PROGRAMS} ('' = none: the "
                      "analytic state sizes and costs only, in seconds).")
    flags.DEFINE_integer("generate_batch_size", None, "Prompts per generation batch (default config.eval.batch_size).")
    flags.DEFINE_integer("prompt_len", None, "Prompt length for generation (default the row length).")
    flags.DEFINE_integer("max_new_tokens", None, "New tokens for generation (default: the evaluator's, per task).")
    flags.DEFINE_integer("slots", None, "Decode slots (rows decoded together, continuous batching) for the decode "
                         "program (default --generate_batch_size); rounded up to a multiple of data x fsdp.")
    flags.DEFINE_integer("prefill_chunk", None, "Prefill the prompts this many tokens at a time (default one pass).")
    flags.DEFINE_float("mean_sample_tokens", estimate_lib.DEFAULT_MEAN_SAMPLE_TOKENS,
                       "With the decode program: the assumed mean new tokens per sample for the chip-hours of "
                       "the math avg@16 evaluation.")
    flags.DEFINE_boolean("estimate", True, "With the train program: also the TPU compiler's estimate of the step "
                         "time and MFU (compiles 1- and 2-layer loop-free variants: 4 more compiles); with the "
                         "decode program: of the decode step (2 more compiles).")
    flags.DEFINE_boolean("estimate_only", False, "Only the compiler's estimate of the train step (its four 1- and "
                         "2-layer loop-free compiles), not the programs themselves: no memory figures.")
    flags.DEFINE_string("json", None, "Also write the report as JSON to this file.")
    flags.mark_flags_as_required(["config", "topology"])


def main(argv: Sequence[str]) -> None:
    from absl import flags
    from absl import logging as absl_logging

    del argv
    FLAGS = flags.FLAGS
    absl_logging.set_verbosity(absl_logging.ERROR)
    default = default_generation(FLAGS.config)
    generation = GenerationShape(batch_size=FLAGS.generate_batch_size or default.batch_size,
                                 prompt_len=FLAGS.prompt_len or default.prompt_len,
                                 max_new_tokens=FLAGS.max_new_tokens or default.max_new_tokens,
                                 slots=FLAGS.slots, prefill_chunk=FLAGS.prefill_chunk)
    programs = () if FLAGS.estimate_only else FLAGS.programs
    result = compile_report(FLAGS.config, topology=FLAGS.topology, programs=programs, generation=generation)
    if FLAGS.estimate_only or (FLAGS.estimate and "train" in programs):
        result = estimate_lib.add_to_report(FLAGS.config, result)
    if "decode" in result["programs"]:
        result = estimate_lib.add_evaluation_to_report(FLAGS.config, result, mean_sample_tokens=FLAGS.mean_sample_tokens,
                                                       compiler=FLAGS.estimate)
    print(format_report(result))
    if "estimate" in result:
        print(estimate_lib.format_estimate(result))
    if "evaluation" in result:
        print(estimate_lib.format_evaluation(result))
    if FLAGS.json:
        reporting.write_json(FLAGS.json, result)
    if result["problems"]:
        for problem in result["problems"]:
            print(f"compile: error: {problem}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    _define_flags()
    cli.run_absl("compile", main)
