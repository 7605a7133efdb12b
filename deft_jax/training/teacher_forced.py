"""The one teacher-forced evaluation path: the trainer's periodic eval, `deft_jax.evaluate`, the probe.

Over the supervised tokens (response + EOS) of a tokenized split, in fixed order (one example per row,
zero-weight padding rows in the last global batch), every process feeds its own block of rows of each
global batch (`sharding.process_rows`), the step's `eval_sums` are added over every batch, then divided
once: token means over all N supervised tokens, e.g. nll = Σ −log p / N, loss = Σ sum / Σ den
(`step.eval_means`). The result does not depend on the number of processes.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from deft_jax import data as data_lib
from deft_jax import sharding as sharding_lib
from deft_jax.training import setup as setup_lib
from deft_jax.training import step as step_lib


def global_rows(setup: setup_lib.Setup, *, requested: int | None = None) -> int:
    """Rows per global eval batch: `requested` (default config.eval.batch_size) rounded up to a multiple
    of the data-parallel size (the extra rows are zero-weight padding)."""
    shards = sharding_lib.data_parallel_size(setup.mesh)
    requested = requested or setup.config.eval.batch_size
    return -(-requested // shards) * shards


def local_batches(setup: setup_lib.Setup, tokenized: Sequence[Any], *, rows: int) -> list[dict]:
    """This process's rows of each global eval batch of `rows` rows (all of them on one process)."""
    config = setup.config
    block, blocks = sharding_lib.process_rows(setup.mesh, global_rows=rows)
    return data_lib.make_eval_batches(list(tokenized), batch_size=rows // blocks,
                                      seq_len=data_lib.row_length(config.data),
                                      buckets=tuple(config.data.bucket_lengths), process_index=block,
                                      process_count=blocks, pad_id=setup.tokenizer.pad_id)


def eval_means(setup: setup_lib.Setup, params, tokenized: Sequence[Any], *,
               batch_size: int | None = None) -> dict[str, float]:
    """step.eval_means of `params` over `tokenized` (global batches of `global_rows(batch_size)` rows)."""
    rows = global_rows(setup, requested=batch_size)
    batches = local_batches(setup, tokenized, rows=rows)
    with sharding_lib.mesh_context(setup.mesh, setup.rules):
        totals = step_lib.eval_totals(params, batches, loss=setup.loss, mesh=setup.mesh, global_rows=rows)
    return step_lib.eval_means(totals)
