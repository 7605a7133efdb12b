"""Continuous batching: the same samples as static batching and as one prompt at a time (seeded sampling with
top_p, rows of different lengths so slots are refilled, stop strings), under a mesh as unsharded, and the
per-row cache ends it rests on equal the shared-end cache row by row."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deft_jax import sharding as sharding_lib
from deft_jax.inference import continuous as C
from deft_jax.inference import sampler as S
from deft_jax.model import decoder as M
from deft_jax.model import tokenizer as tokenizer_lib

CONFIG = M.ModelConfig.tiny(vocab_size=264)
NEW_TOKENS = 24
SAMPLING = S.SamplingConfig(max_new_tokens=NEW_TOKENS, temperature=1.0, top_p=0.9)


@pytest.fixture(scope="module")
def params():
    return M.init_params(CONFIG, rng=jax.random.key(7))


@pytest.fixture(scope="module")
def tokenizer():
    return tokenizer_lib.byte_level_tokenizer()


def _requests(tokenizer):
    texts = ["What is 2+2?", "Name a colour", "x", "The quick brown fox jumps", "Seven"]
    return [S.Request(prompt_id=10 + i, tokens=tuple(tokenizer.encode(t))) for i, t in enumerate(texts)]


# Eight frequent-enough ids end rows at scattered lengths (each step stops a row with probability ~ 8/264).
STOPS = S.StopCriteria(token_ids=tuple(range(100, 108)))


def _run(params, tokenizer, requests, *, stops=STOPS, mesh=None, rules=(), timing=None, **options):
    options.setdefault("sampling", SAMPLING)
    batches = S.sample(params, CONFIG, requests, options=S.SamplerOptions(**options), stops=stops,
                       decode_text=tokenizer.decode, pad_id=tokenizer.pad_id, mesh=mesh, rules=rules,
                       progress=False, timing=timing)
    return {(s.prompt_id, s.sample_index): s for batch in batches for s in batch}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key].tokens, a[key].stop_reason, a[key].num_tokens, a[key].text) == \
            (b[key].tokens, b[key].stop_reason, b[key].num_tokens, b[key].text), key


def test_continuous_equals_static_and_one_prompt_at_a_time(params, tokenizer):
    requests = _requests(tokenizer)
    timing = S.Timing()
    continuous = _run(params, tokenizer, requests, n=3, slots=4, refill_rows=1, chunk_steps=5, kv_bucket=16,
                      seed=3, batching="continuous", timing=timing)
    static = _run(params, tokenizer, requests, n=3, max_rows=6, seed=3, batching="static")
    one_by_one = {}
    for request in reversed(requests):
        one_by_one.update(_run(params, tokenizer, [request], n=3, max_rows=3, seed=3, batching="static"))
    _assert_same(continuous, static)
    _assert_same(continuous, one_by_one)
    # The rows really had different lengths, and slots were refilled after their rows stopped (15 samples
    # through 4 slots), some of them mid-run; the samples of a prompt starting together shared a prefill.
    assert len({s.num_tokens for s in continuous.values()}) > 3
    assert {s.stop_reason for s in continuous.values()} == {S.STOP_TOKEN, S.LENGTH}
    assert timing.refilled_slots >= 15 - 4
    assert timing.prefills < 15
    # Per-row prefills (no sharing) and another slot count give the same samples too.
    _assert_same(continuous, _run(params, tokenizer, requests, n=3, slots=7, chunk_steps=3, seed=3,
                                  share_prefill=False, prefill_chunk=8))


def test_continuous_stop_strings(params, tokenizer):
    requests = _requests(tokenizer)
    free = _run(params, tokenizer, requests, n=2, seed=1, batching="static")
    # Two-character pieces of three rows' texts, matched in the decoded text between decode chunks.
    needles = tuple(dict.fromkeys(free[key].text[5:7] for key in [(10, 0), (12, 1), (14, 0)]
                                  if len(free[key].text) >= 7))
    assert needles
    stops = S.StopCriteria(token_ids=STOPS.token_ids, strings=needles)
    timing = S.Timing()
    continuous = _run(params, tokenizer, requests, n=2, slots=3, refill_rows=1, chunk_steps=2, seed=1,
                      stops=stops, timing=timing)
    static = _run(params, tokenizer, requests, n=2, max_rows=4, chunk_steps=2, seed=1, stops=stops,
                  batching="static")
    _assert_same(continuous, static)
    stopped = [s for s in continuous.values() if s.stop_reason == S.STOP_STRING]
    assert stopped and timing.refilled_slots > 0
    for s in stopped:
        assert not any(needle in s.text for needle in needles)
        assert any(needle in tokenizer.decode(list(s.tokens)) for needle in needles)


def test_continuous_under_mesh_equals_unsharded(params, tokenizer):
    requests = _requests(tokenizer)
    mesh = sharding_lib.make_mesh(data=2, fsdp=2, tensor=2)
    rules = M.DEFAULT_LOGICAL_RULES
    shardings = sharding_lib.logical_to_shardings(logical_axes=M.param_logical_axes(CONFIG), mesh=mesh, rules=rules)
    sharded_params = jax.device_put(params, shardings)
    assert C.slot_count(S.SamplerOptions(slots=5), mesh=mesh, rules=rules) == 8
    timing = S.Timing()
    sharded = _run(sharded_params, tokenizer, requests, n=3, slots=5, refill_rows=2, seed=2, mesh=mesh, rules=rules,
                   timing=timing)
    plain = _run(params, tokenizer, requests, n=3, slots=5, refill_rows=2, seed=2)
    _assert_same(sharded, plain)
    assert timing.refilled_slots > 0


def test_per_row_cache_ends_equal_one_row_at_a_time(params):
    """Two rows at different write indices (per-row 'end') equal each row decoded alone (scalar 'end')."""
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 250, size=n).tolist() for n in (5, 9)]
    alone = []
    for prompt in prompts:
        cache = M.init_cache(CONFIG, batch_size=1, max_len=32)
        _, cache = M.forward(params, CONFIG, jnp.asarray([prompt]), cache=cache)
        logits, cache = M.forward(params, CONFIG, jnp.asarray([[7, 8]]), cache=cache, kv_len=16)
        alone.append(np.asarray(logits[0]))
    cache = {**M.init_cache(CONFIG, batch_size=2, max_len=32), "end": jnp.zeros((2,), jnp.int32)}
    for row, prompt in enumerate(prompts):  # each row's prompt at the start of its own slot
        one = M.init_cache(CONFIG, batch_size=1, max_len=len(prompt))
        row_logits, one = M.forward(params, CONFIG, jnp.asarray([prompt]), cache=one)
        _, cache = C.insert_rows(jnp.zeros((2, CONFIG.vocab_size)), cache, row_logits[:, -1], one,
                                 jnp.asarray([row]), jnp.asarray([0]))
    assert cache["end"].tolist() == [5, 9]
    logits, cache = M.forward(params, CONFIG, jnp.asarray([[7, 8], [7, 8]]), cache=cache, kv_len=16)
    assert cache["end"].tolist() == [7, 11]
    for row in range(2):
        np.testing.assert_allclose(np.asarray(logits[row]), alone[row], rtol=1e-5, atol=1e-5)


def test_options_are_checked():
    with pytest.raises(S.SamplingError, match="batching='paged' must be one of"):
        S.SamplerOptions(batching="paged")
    with pytest.raises(S.SamplingError, match="slots=0 must be >= 1"):
        S.SamplerOptions(slots=0)
    assert C.refill_rows(S.SamplerOptions(), slots=64) == 8
    assert C.refill_rows(S.SamplerOptions(refill_rows=100), slots=4) == 4
