"""Training and evaluation batch iterators: seeded shuffle, multi-host sharding, exact resume.

The global example stream. Epoch e visits every example once in the order of grain's index shuffle
(`grain.MapDataset.range(n).shuffle(seed=s_e)`, s_e derived from (seed, e) by numpy's SeedSequence, so
seeds and epochs never alias); stream position g is example order_{g // n}[g % n]. Epochs follow each
other without a gap: the batch that crosses an epoch boundary takes the first examples of the next.

Global batches. Each step lays out a *global* batch of batch_size * process_count rows from the stream
(one example per row padded to a bucket length, or first-fit packed into rows of seq_len), and process
p materialises rows [p * batch_size, (p + 1) * batch_size). Every process computes the same layout (it
needs only example lengths), so
  - each process reads only its own rows' tokens, and together they hold the global batch;
  - all processes agree on the bucket length (shapes match for jax.make_array_from_process_local_data);
  - the state (one stream position) is the same on every process, and the global batches do not depend
    on process_count: a run restored on another number of hosts with the same global batch continues
    exactly.

State. `get_state()` returns a JSON-serialisable dict {"version", "cursor", "epoch", "fingerprint"};
a fresh iterator given it (make_train_iterator(..., state=...) or .set_state) yields exactly the batches
the saved one would have yielded next. The fingerprint (data hash, seed, global batch, row length,
packing, buckets) guards against restoring onto different data or settings.

Evaluation batches are in fixed order (no shuffle), padded, with "weights" (1.0 real row, 0.0 padding
row) and "example_index" (-1 for padding rows); every process gets the same number of batches.

grain provides the shuffle only. Its per-host pipeline (shard the examples by process, then `.batch` or
first-fit packing per host, with a per-host iterator state) would make each global batch depend on
process_count and change the example order of runs already saved; the global layout above, a pure
function of one stream position, is what keeps a resume on another number of hosts exact.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any, Iterator, Mapping, Sequence

import grain
import numpy as np

from deft_jax.data import packing as packing_lib
from deft_jax.data.config import row_length
from deft_jax.data.records import DataError, TokenizedExample

STATE_VERSION = 1


def epoch_seed(*, seed: int, epoch: int) -> int:
    """A 32-bit shuffle seed for (seed, epoch), by numpy's SeedSequence (no aliasing of seed + epoch)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint32)[0])


def epoch_order(*, num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of range(num_examples) visited in `epoch` (grain's index shuffle)."""
    shuffled = grain.MapDataset.range(num_examples).shuffle(seed=epoch_seed(seed=seed, epoch=epoch))
    return np.fromiter((shuffled[i] for i in range(num_examples)), dtype=np.int64, count=num_examples)


def data_fingerprint(examples: Sequence[TokenizedExample]) -> str:
    """SHA-1 over every example's tokens and prompt length (16 hex digits)."""
    digest = hashlib.sha1()
    for example in examples:
        digest.update(np.int64(example.prompt_length).tobytes())
        digest.update(np.ascontiguousarray(example.tokens, dtype=np.int32).tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:16]


def _check_process(*, process_index: int, process_count: int) -> None:
    if not (isinstance(process_count, int) and process_count >= 1):
        raise DataError(f"process_count must be an int >= 1, got {process_count!r}")
    if not (isinstance(process_index, int) and 0 <= process_index < process_count):
        raise DataError(f"process_index must lie in [0, {process_count}), got {process_index!r}")


def _check_fits(examples: Sequence[TokenizedExample], *, seq_len: int) -> None:
    for example in examples:
        if packing_lib.slots(example) > seq_len:
            raise DataError(
                f"{example.source}: {example.length} tokens need {example.length - 1} slots but rows hold "
                f"seq_len={seq_len}; set seq_len >= max_length - 1"
            )
        if example.length < 2:
            raise DataError(f"{example.source}: an example needs at least 2 tokens, has {example.length}")


class TrainIterator:
    """Infinite iterator of {inputs, targets, loss_mask, positions, segment_ids} batches of this process.

    batch_size: this process's rows (global batch = batch_size * process_count). seq_len: row length
    (packed rows; the largest bucket of unpacked rows). buckets: other row lengths for unpacked batches.
    state: a dict from get_state() to continue from. See the module docstring for the batch convention.
    """

    def __init__(
        self,
        tokenized: Sequence[TokenizedExample],
        *,
        batch_size: int,
        seq_len: int,
        seed: int,
        packing: bool,
        buckets: Sequence[int] = (),
        process_index: int = 0,
        process_count: int = 1,
        pad_id: int = 0,
        state: Mapping[str, Any] | None = None,
    ):
        _check_process(process_index=process_index, process_count=process_count)
        if not tokenized:
            raise DataError("make_train_iterator: no examples")
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise DataError(f"batch_size must be an int >= 1, got {batch_size!r}")
        _check_fits(tokenized, seq_len=seq_len)
        self._examples = list(tokenized)
        self._slots = np.array([packing_lib.slots(e) for e in self._examples], dtype=np.int64)
        self._batch_size = batch_size
        self._seq_len = seq_len
        self._seed = int(seed)
        self._packing = bool(packing)
        self._buckets = packing_lib.row_buckets(seq_len=seq_len, bucket_lengths=buckets)
        self._process_index = process_index
        self._process_count = process_count
        self._pad_id = pad_id
        self._orders: dict[int, np.ndarray] = {}
        self._cursor = 0
        self._fingerprint = {
            "data": data_fingerprint(self._examples),
            "num_examples": len(self._examples),
            "seed": self._seed,
            "global_batch_size": batch_size * process_count,
            "seq_len": seq_len,
            "packing": self._packing,
            "buckets": list(self._buckets) if not self._packing else [],
        }
        if state is not None:
            self.set_state(state)

    # -- the global stream --------------------------------------------------------------------------------

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
            self._orders[epoch] = epoch_order(num_examples=len(self._examples), seed=self._seed, epoch=epoch)
        return self._orders[epoch]

    def _example_id(self, position: int) -> int:
        epoch, offset = divmod(position, len(self._examples))
        return int(self._order(epoch)[offset])

    @property
    def epoch(self) -> int:
        """The epoch of the next example to be read."""
        return self._cursor // len(self._examples)

    # -- batches --------------------------------------------------------------------------------------------

    def _local(self, ids: Sequence[int], placements: Sequence[tuple[int, int]]):
        """This process's examples and (row, offset) placements out of a global layout."""
        first = self._process_index * self._batch_size
        examples, local = [], []
        for example_id, (row, offset) in zip(ids, placements):
            if first <= row < first + self._batch_size:
                examples.append(self._examples[example_id])
                local.append((row - first, offset))
        return examples, local

    def _next_packed(self) -> tuple[dict[str, np.ndarray], int]:
        ids_stream = (self._example_id(self._cursor + i) for i in itertools.count())
        ids: list[int] = []

        def lengths():
            for example_id in ids_stream:
                ids.append(example_id)
                yield int(self._slots[example_id])

        placements = packing_lib.first_fit_placements(
            lengths(), num_rows=self._batch_size * self._process_count, row_length=self._seq_len
        )
        ids = ids[: len(placements)]
        examples, local = self._local(ids, placements)
        batch = packing_lib.assemble_batch(examples, local, batch_size=self._batch_size, seq_len=self._seq_len,
                                           pad_id=self._pad_id)
        return batch, len(placements)

    def _next_padded(self) -> tuple[dict[str, np.ndarray], int]:
        global_rows = self._batch_size * self._process_count
        ids = [self._example_id(self._cursor + i) for i in range(global_rows)]
        row_len = packing_lib.choose_bucket(int(self._slots[ids].max()), buckets=self._buckets)
        placements = [(row, 0) for row in range(global_rows)]
        examples, local = self._local(ids, placements)
        batch = packing_lib.assemble_batch(examples, local, batch_size=self._batch_size, seq_len=row_len,
                                           pad_id=self._pad_id)
        return batch, global_rows

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch, consumed = self._next_packed() if self._packing else self._next_padded()
        self._cursor += consumed
        return batch

    # -- checkpointable state --------------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable state; the same on every process."""
        return {"version": STATE_VERSION, "cursor": self._cursor, "epoch": self.epoch,
                "fingerprint": dict(self._fingerprint)}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Continue from a state saved by get_state() (possibly after a JSON round trip)."""
        state = json.loads(json.dumps(state))
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise DataError(f"iterator state must be a dict with version {STATE_VERSION}, got {state!r:.200}")
        saved = state.get("fingerprint", {})
        mismatched = {k: (saved.get(k), v) for k, v in self._fingerprint.items() if saved.get(k) != v}
        if mismatched:
            details = ", ".join(f"{k}: saved {s!r} vs now {n!r}" for k, (s, n) in mismatched.items())
            raise DataError(f"cannot restore the data iterator: it was saved for other data or settings ({details})")
        cursor = state.get("cursor")
        if not (isinstance(cursor, int) and cursor >= 0):
            raise DataError(f"iterator state has an invalid cursor {cursor!r}")
        self._cursor = cursor


# The public factory name the trainer and tests use: the class itself (one signature, documented above).
make_train_iterator = TrainIterator


def train_iterator_from_config(
    tokenized: Sequence[TokenizedExample],
    *,
    cfg,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    pad_id: int = 0,
    state: Mapping[str, Any] | None = None,
) -> TrainIterator:
    """make_train_iterator with seq_len, packing, buckets and seed from the data config."""
    return make_train_iterator(tokenized, batch_size=batch_size, seq_len=row_length(cfg), seed=cfg.shuffle_seed,
                               packing=cfg.packing, buckets=tuple(cfg.bucket_lengths),
                               process_index=process_index, process_count=process_count, pad_id=pad_id,
                               state=state)


def make_eval_batches(
    tokenized: Sequence[TokenizedExample],
    *,
    batch_size: int,
    seq_len: int,
    buckets: Sequence[int] = (),
    process_index: int = 0,
    process_count: int = 1,
    pad_id: int = 0,
) -> list[dict[str, np.ndarray]]:
    """Fixed-order padded batches of this process: one example per row, plus 'weights' [B] float32
    (1.0 for a real row, 0.0 for padding rows of the last batch) and 'example_index' [B] int32
    (TokenizedExample.index, -1 for padding). Global batch k holds examples [k*B*P, (k+1)*B*P); process p
    takes rows [p*B, (p+1)*B); all processes get ceil(n / (B*P)) batches and agree on each row length.
    """
    _check_process(process_index=process_index, process_count=process_count)
    if not tokenized:
        raise DataError("make_eval_batches: no examples")
    _check_fits(tokenized, seq_len=seq_len)
    row_buckets = packing_lib.row_buckets(seq_len=seq_len, bucket_lengths=buckets)
    global_rows = batch_size * process_count
    batches = []
    for start in range(0, len(tokenized), global_rows):
        global_chunk = tokenized[start:start + global_rows]
        row_len = packing_lib.choose_bucket(max(packing_lib.slots(e) for e in global_chunk), buckets=row_buckets)
        mine = global_chunk[process_index * batch_size:(process_index + 1) * batch_size]
        batch = packing_lib.assemble_batch(mine, [(row, 0) for row in range(len(mine))], batch_size=batch_size,
                                           seq_len=row_len, pad_id=pad_id)
        batch["weights"] = (np.arange(batch_size) < len(mine)).astype(np.float32)
        batch["example_index"] = np.full(batch_size, -1, dtype=np.int32)
        batch["example_index"][: len(mine)] = [e.index for e in mine]
        batches.append(batch)
    return batches
