"""Batching: first-fit packing (exact through the model), buckets, determinism, resume, multi-host shares."""
import json

import numpy as np
import pytest

from deft_jax.data import (
    BATCH_KEYS,
    DataError,
    TokenizedExample,
    make_train_iterator,
    packing_efficiency,
)
from deft_jax.data.packing import first_fit_placements


def synthetic_examples(lengths, *, prompt_lengths=None, vocab=250, seed=0):
    rng = np.random.default_rng(seed)
    prompt_lengths = prompt_lengths or [max(1, n // 2) for n in lengths]
    return [
        TokenizedExample(tokens=rng.integers(3, vocab, size=n).astype(np.int32), prompt_length=p, index=i,
                         source=f"synthetic {i}")
        for i, (n, p) in enumerate(zip(lengths, prompt_lengths))
    ]


def take(iterator, count):
    return [next(iterator) for _ in range(count)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert sorted(x) == sorted(y)
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_first_fit_placements_by_hand():
    # rows of 8: 5 -> row 0 (3 left), 4 -> row 1 (4 left), 3 -> row 0 at 5, 2 -> row 1 at 4; 3 fits nowhere.
    assert first_fit_placements([5, 4, 3, 2, 3, 1], num_rows=2, row_length=8) == [(0, 0), (1, 0), (0, 5), (1, 4)]
    assert first_fit_placements([8, 1], num_rows=1, row_length=8) == [(0, 0)]
    with pytest.raises(DataError, match="raise data.seq_len"):
        first_fit_placements([9], num_rows=2, row_length=8)


def test_packed_rows_segments_positions_and_mask():
    examples = synthetic_examples([6, 4, 9, 3, 5, 7], prompt_lengths=[2, 1, 5, 1, 4, 3])
    batch = next(make_train_iterator(examples, batch_size=2, seq_len=12, seed=0, packing=True))
    assert set(batch) == set(BATCH_KEYS)
    by_tokens = {tuple(e.tokens[:-1]): e for e in examples}
    seen = 0
    for row in range(2):
        segments = batch["segment_ids"][row]
        ids = [s for s in np.unique(segments) if s > 0]
        assert ids == list(range(1, len(ids) + 1))
        for segment in ids:
            where = np.flatnonzero(segments == segment)
            assert np.all(np.diff(where) == 1)  # contiguous
            np.testing.assert_array_equal(batch["positions"][row, where], np.arange(len(where)))  # restart at 0
            example = by_tokens[tuple(batch["inputs"][row, where])]
            np.testing.assert_array_equal(batch["targets"][row, where], example.tokens[1:])
            # supervised targets: tokens[prompt_length:] (response + EOS), never a prompt token
            np.testing.assert_array_equal(batch["targets"][row, where][batch["loss_mask"][row, where] == 1],
                                          example.tokens[example.prompt_length:])
            seen += 1
        pad = segments == 0
        assert np.all(batch["loss_mask"][row, pad] == 0) and np.all(batch["positions"][row, pad] == 0)
    assert seen >= 3 and packing_efficiency(batch) == np.mean(batch["segment_ids"] > 0)


def test_packing_gives_the_same_log_probs_as_one_example_per_row():
    import jax
    import jax.numpy as jnp

    from deft_jax.model.decoder import Decoder, ModelConfig, init_params

    config = ModelConfig.tiny()
    params = init_params(config, rng=jax.random.PRNGKey(0))
    examples = synthetic_examples([9, 5, 12, 7, 4, 10], vocab=config.vocab_size, seed=1)
    packed = next(make_train_iterator(examples, batch_size=2, seq_len=24, seed=3, packing=True))
    single = next(make_train_iterator(examples, batch_size=len(examples), seq_len=24, seed=3, packing=False))
    assert (packed["segment_ids"].max(axis=1) >= 2).all()  # really packed

    @jax.jit
    def token_log_probs(batch):
        logits = Decoder(config).apply({"params": params}, batch["inputs"], positions=batch["positions"],
                                       segment_ids=batch["segment_ids"])
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        return jnp.take_along_axis(log_probs, batch["targets"][..., None], axis=-1)[..., 0]

    def per_example(batch):
        values = np.asarray(token_log_probs(batch))
        out = {}
        for row in range(batch["inputs"].shape[0]):
            for segment in set(batch["segment_ids"][row].tolist()) - {0}:
                where = batch["segment_ids"][row] == segment
                out[tuple(batch["inputs"][row, where])] = values[row, where]
        return out

    packed_lp, single_lp = per_example(packed), per_example(single)
    assert set(packed_lp) <= set(single_lp) and len(packed_lp) >= 4
    for key, value in packed_lp.items():
        assert np.all(np.isfinite(value))
        np.testing.assert_allclose(value, single_lp[key], rtol=1e-5, atol=1e-5)


def test_padded_batches_use_the_smallest_bucket():
    examples = synthetic_examples([10, 20, 40, 70])
    lengths = {tuple(e.tokens[:-1]): e.length - 1 for e in examples}
    iterator = make_train_iterator(examples, batch_size=1, seq_len=128, seed=0, packing=False, buckets=(16, 32, 64))
    for batch in take(iterator, 8):
        slots = int((batch["segment_ids"][0] > 0).sum())
        assert slots in lengths.values()
        assert batch["inputs"].shape[1] == min(b for b in (16, 32, 64, 128) if b >= slots)


@pytest.mark.parametrize("packing", [False, True])
def test_same_seed_same_batches_and_exact_resume(packing):
    examples = synthetic_examples(list(np.random.default_rng(7).integers(4, 30, size=23)))
    kwargs = dict(batch_size=3, seq_len=40, packing=packing, buckets=(16, 32))
    reference = take(make_train_iterator(examples, seed=11, **kwargs), 20)  # several epochs
    assert_batches_equal(reference, take(make_train_iterator(examples, seed=11, **kwargs), 20))
    other = take(make_train_iterator(examples, seed=12, **kwargs), 20)
    assert any(not np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(reference, other))
    for stop in (1, 7, 13):
        interrupted = make_train_iterator(examples, seed=11, **kwargs)
        take(interrupted, stop)
        state = json.loads(json.dumps(interrupted.get_state()))
        resumed = make_train_iterator(examples, seed=11, state=state, **kwargs)
        assert_batches_equal(take(resumed, 20 - stop), reference[stop:])
    restored = make_train_iterator(examples, seed=11, **kwargs)
    restored.set_state(state)
    assert_batches_equal(take(restored, 20 - stop), reference[stop:])
    with pytest.raises(DataError, match="seed: saved 11 vs now 12"):
        make_train_iterator(examples, seed=12, state=state, **kwargs)


def test_every_example_once_per_epoch_and_reshuffled():
    examples = synthetic_examples([5] * 12)
    first_token = {int(e.tokens[0]): e.index for e in examples}
    assert len(first_token) == 12
    iterator = make_train_iterator(examples, batch_size=4, seq_len=8, seed=0, packing=False)
    order = [first_token[int(t)] for batch in take(iterator, 6) for t in batch["inputs"][:, 0]]
    assert sorted(order[:12]) == sorted(order[12:]) == list(range(12))
    assert order[:12] != order[12:] and order[:12] != list(range(12))
    assert iterator.get_state()["epoch"] == 2


@pytest.mark.parametrize("packing", [False, True])
def test_process_shares_form_the_single_process_global_batch(packing):
    examples = synthetic_examples(list(np.random.default_rng(3).integers(4, 30, size=31)))
    kwargs = dict(seq_len=40, seed=5, packing=packing, buckets=(16, 32))
    whole = take(make_train_iterator(examples, batch_size=4, **kwargs), 10)
    shares = [make_train_iterator(examples, batch_size=2, process_index=p, process_count=2, **kwargs)
              for p in range(2)]
    per_process = [take(s, 10) for s in shares]
    for step in range(10):
        a, b = per_process[0][step], per_process[1][step]
        assert a["inputs"].shape == b["inputs"].shape  # processes agree on the row length
        for key in BATCH_KEYS:
            np.testing.assert_array_equal(np.concatenate([a[key], b[key]]), whole[step][key])
    assert shares[0].get_state() == shares[1].get_state()
    # A state saved by one process restores onto two (same global batch): they continue the same stream.
    single = make_train_iterator(examples, batch_size=4, **kwargs)
    take(single, 3)
    state = single.get_state()
    resumed = [make_train_iterator(examples, batch_size=2, process_index=p, process_count=2, state=state, **kwargs)
               for p in range(2)]
    for step, (a, b) in enumerate(zip(take(resumed[0], 4), take(resumed[1], 4))):
        np.testing.assert_array_equal(np.concatenate([a["inputs"], b["inputs"]]), whole[3 + step]["inputs"])
    with pytest.raises(DataError, match="process_index"):
        make_train_iterator(examples, batch_size=2, process_index=2, process_count=2, **kwargs)


def test_iterator_from_config_uses_the_data_fields():
    from deft_jax.data import default_data_config, train_iterator_from_config

    examples = synthetic_examples(list(np.random.default_rng(2).integers(4, 30, size=15)))
    cfg = default_data_config()
    cfg.max_length, cfg.packing, cfg.shuffle_seed = 32, True, 9
    expected = take(make_train_iterator(examples, batch_size=2, seq_len=32, seed=9, packing=True), 4)
    assert_batches_equal(take(train_iterator_from_config(examples, cfg=cfg, batch_size=2), 4), expected)
    cfg.packing, cfg.seq_len, cfg.bucket_lengths = False, 40, (8, 16)
    expected = take(make_train_iterator(examples, batch_size=2, seq_len=40, seed=9, packing=False,
                                        buckets=(8, 16)), 4)
    assert_batches_equal(take(train_iterator_from_config(examples, cfg=cfg, batch_size=2), 4), expected)


def test_examples_longer_than_a_row_are_rejected():
    with pytest.raises(DataError, match="synthetic 1: 30 tokens need 29 slots"):
        make_train_iterator(synthetic_examples([10, 30]), batch_size=2, seq_len=16, seed=0, packing=True)
