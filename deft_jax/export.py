"""Export a training run's parameters as a Hugging Face directory (config.json, safetensors, tokenizer).

    python -m deft_jax.export --workdir DIR --out HF_DIR            # the latest checkpoint
    python -m deft_jax.export --workdir DIR --step 500 --out HF_DIR --dtype bfloat16

The params of <workdir>/checkpoints/<step> are restored (as deft_jax.evaluate does: onto the devices
present, shapes checked against the run's config.json) and written by weights.export_hf with the run's
tokenizer (Tokenizer.save_hf), so `transformers.AutoModelForCausalLM.from_pretrained(HF_DIR)` and
`AutoTokenizer.from_pretrained(HF_DIR)` load them.
"""
from __future__ import annotations

import pathlib
import sys
from collections.abc import Sequence
from typing import Any

from deft_jax import cli, errors
from deft_jax.model import weights
from deft_jax.training import checkpointing
from deft_jax.training import setup as build

EXPORT_DTYPES = ("float32", "bfloat16", "float16")


def export_run(*, workdir: str | pathlib.Path, out_dir: str | pathlib.Path, step: int | str | None = None,
               dtype: str | None = None, devices: Sequence[Any] | None = None) -> tuple[pathlib.Path, int]:
    """Write checkpoint `step` (default the latest) of the run in `workdir` to `out_dir`; (out_dir, step)."""
    if dtype is not None and dtype not in EXPORT_DTYPES:
        raise cli.UserError(f"--dtype={dtype!r}{cli.did_you_mean(dtype, EXPORT_DTYPES)}: expected one of "
                            f"{EXPORT_DTYPES} (default: the run's param_dtype).")
    out_dir = pathlib.Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise errors.PathExistsError(f"--out={str(out_dir)!r} is a file; give a directory for the Hugging Face files.")
    if (out_dir / "checkpoints").is_dir() or (out_dir / "metrics.jsonl").exists():
        raise cli.UserError(f"--out={str(out_dir)!r} looks like a training workdir; export into a new directory.")
    config = build.load_run_config(workdir)
    (selected,) = checkpointing.resolve_steps(workdir=workdir, requested=step)
    setup = build.setup(config, devices=devices, mesh_fallback=True)
    params = setup.restore_params(workdir=workdir, step=selected)
    weights.export_hf(params, setup.model_config, setup.tokenizer, out_dir, dtype=dtype)
    return out_dir, selected


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("workdir", None, "A training run's workdir (config.json + checkpoints/).")
    flags.DEFINE_string("out", None, "Output Hugging Face directory.")
    flags.DEFINE_string("step", None, "Checkpoint step (default: the latest).")
    flags.DEFINE_string("dtype", None, f"Tensor dtype of the export, one of {EXPORT_DTYPES} (default: param_dtype).")
    flags.mark_flags_as_required(["workdir", "out"])


def main(argv: Sequence[str]) -> None:
    from absl import flags

    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments {list(argv[1:])}")
    FLAGS = flags.FLAGS
    out_dir, step = export_run(workdir=FLAGS.workdir, out_dir=FLAGS.out, step=FLAGS.step, dtype=FLAGS.dtype)
    print(f"exported step {step} of {FLAGS.workdir} to {out_dir} (load with "
          f"transformers.AutoModelForCausalLM.from_pretrained({str(out_dir)!r}))", file=sys.stderr)


if __name__ == "__main__":
    _define_flags()
    cli.run_absl("export", main)
