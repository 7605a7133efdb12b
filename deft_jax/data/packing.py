"""Batch assembly: padding to bucket lengths and first-fit packing (pure numpy functions).

An example with tokens t[0..n-1] occupies n - 1 slots of a row: inputs t[:-1], targets t[1:] (shifted
per example, so no target crosses into the next example), loss_mask from its prompt length, positions
0..n-2 and one segment id (1, 2, ... within the row). Empty slots are padding: segment id 0, position
0, loss_mask 0, input/target `pad_id`. The model attends only within a segment and applies RoPE at
the per-segment positions, so a packed row computes exactly what separate rows would.

First-fit packing: consecutive examples go, in order, into the first of the batch's rows with room;
the batch is complete at the first example that fits in no row (it opens the next batch). Because a
batch never holds back an example, a batch is a pure function of where it starts in the example
stream: resuming needs only that position.
"""
from __future__ import annotations

import bisect
from typing import Iterable, Sequence

import numpy as np

from deft_jax.data.records import DataError, TokenizedExample

BATCH_KEYS = ("inputs", "targets", "loss_mask", "positions", "segment_ids")


def slots(example: TokenizedExample) -> int:
    """Row slots an example needs: n - 1 (inputs = tokens[:-1])."""
    return example.length - 1


def first_fit_placements(lengths: Iterable[int], *, num_rows: int, row_length: int) -> list[tuple[int, int]]:
    """(row, offset) of consecutive items placed first-fit; stops at the first item that fits nowhere."""
    free = np.full(num_rows, row_length, dtype=np.int64)
    placements = []
    for length in lengths:
        if length > row_length:
            raise DataError(f"an example needs {length} slots but rows hold {row_length}; raise data.seq_len")
        fits = free >= length
        if not fits.any():
            break
        row = int(np.argmax(fits))  # the first row with room
        placements.append((row, row_length - int(free[row])))
        free[row] -= length
    return placements


def choose_bucket(length: int, *, buckets: Sequence[int]) -> int:
    """The smallest bucket >= length (buckets sorted ascending)."""
    position = bisect.bisect_left(buckets, length)
    if position == len(buckets):
        raise DataError(f"a row needs {length} slots but the largest bucket is {buckets[-1]}")
    return buckets[position]


def row_buckets(*, seq_len: int, bucket_lengths: Sequence[int] = ()) -> tuple[int, ...]:
    """Sorted row lengths to pad to: the bucket lengths below seq_len, and seq_len itself."""
    return tuple(sorted({b for b in bucket_lengths if b < seq_len} | {seq_len}))


def assemble_batch(
    examples: Sequence[TokenizedExample],
    placements: Sequence[tuple[int, int]],
    *,
    batch_size: int,
    seq_len: int,
    pad_id: int = 0,
) -> dict[str, np.ndarray]:
    """The [batch_size, seq_len] batch with examples[i] written at placements[i] = (row, offset)."""
    batch = {
        "inputs": np.full((batch_size, seq_len), pad_id, dtype=np.int32),
        "targets": np.full((batch_size, seq_len), pad_id, dtype=np.int32),
        "loss_mask": np.zeros((batch_size, seq_len), dtype=np.float32),
        "positions": np.zeros((batch_size, seq_len), dtype=np.int32),
        "segment_ids": np.zeros((batch_size, seq_len), dtype=np.int32),
    }
    segments_in_row = np.zeros(batch_size, dtype=np.int32)
    for example, (row, offset) in zip(examples, placements, strict=True):
        length = slots(example)
        end = offset + length
        if end > seq_len:
            raise DataError(f"{example.source}: needs {length} slots at offset {offset}, row holds {seq_len}")
        segments_in_row[row] += 1
        batch["inputs"][row, offset:end] = example.tokens[:-1]
        batch["targets"][row, offset:end] = example.tokens[1:]
        batch["loss_mask"][row, offset:end] = example.loss_mask()
        batch["positions"][row, offset:end] = np.arange(length, dtype=np.int32)
        batch["segment_ids"][row, offset:end] = segments_in_row[row]
    return batch


def packing_efficiency(batch: dict[str, np.ndarray]) -> float:
    """Fraction of non-padding slots: mean(segment_ids > 0)."""
    return float(np.mean(batch["segment_ids"] > 0))
