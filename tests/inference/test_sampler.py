"""The shared-prefill sampler: greedy equals full recomputation, seeded sampling is independent of
prefill sharing and batching, stop tokens and stop strings, sharded equals unsharded, kv_len attention."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deft_jax.model import decoder as M
from deft_jax.inference import sampler as S
from deft_jax import sharding as sharding_lib
from deft_jax.model import tokenizer as tokenizer_lib
from tests.helpers import models
from tests.inference.test_generation import greedy_by_recomputation

CONFIG = M.ModelConfig.tiny(vocab_size=264)  # the byte tokenizer's 259 ids, padded to split over 8 devices
NEVER = 264  # a stop id outside the vocabulary: rows run to max_new_tokens
NEW_TOKENS = 9


@pytest.fixture(scope="module")
def params():
    return M.init_params(CONFIG, rng=jax.random.key(7))


@pytest.fixture(scope="module")
def tokenizer():
    return tokenizer_lib.byte_level_tokenizer()


def _requests(tokenizer):
    texts = ["What is 2+2?", "Name a colour", "x", "The quick brown fox jumps"]
    return [S.Request(prompt_id=10 + i, tokens=tuple(tokenizer.encode(t))) for i, t in enumerate(texts)]


def _run(params, tokenizer, requests, *, stops=None, mesh=None, rules=(), **options):
    options.setdefault("sampling", S.SamplingConfig(max_new_tokens=NEW_TOKENS))
    stops = stops or S.StopCriteria(token_ids=(NEVER,))
    batches = S.sample(params, CONFIG, requests, options=S.SamplerOptions(**options), stops=stops,
                       decode_text=tokenizer.decode, pad_id=tokenizer.pad_id, mesh=mesh, rules=rules,
                       progress=False)
    return {(s.prompt_id, s.sample_index): s for batch in batches for s in batch}


def test_greedy_equals_full_recomputation(params, tokenizer):
    requests = _requests(tokenizer)
    reference = greedy_by_recomputation(params, CONFIG, [list(r.tokens) for r in requests], steps=NEW_TOKENS)
    got = _run(params, tokenizer, requests, n=3, max_rows=12, chunk_steps=4, kv_bucket=16)  # 3 chunks, kv_len 48 then 64
    for request, tokens in zip(requests, reference):
        for j in range(3):
            sample = got[(request.prompt_id, j)]
            assert list(sample.tokens) == tokens
            assert sample.stop_reason == S.LENGTH and sample.num_tokens == NEW_TOKENS
            assert sample.text == tokenizer.decode(tokens)


def test_seeded_sampling_is_independent_of_prefill_sharing_and_batching(params, tokenizer):
    requests = _requests(tokenizer)
    sampling = S.SamplingConfig(max_new_tokens=NEW_TOKENS, temperature=1.0, top_p=0.95)
    shared = _run(params, tokenizer, requests, n=4, max_rows=16, sampling=sampling, seed=3)
    per_row = _run(params, tokenizer, requests, n=4, max_rows=4, sampling=sampling, seed=3, share_prefill=False)
    one_by_one = {}
    for request in reversed(requests):
        one_by_one.update(_run(params, tokenizer, [request], n=4, max_rows=4, sampling=sampling, seed=3))
    assert shared.keys() == per_row.keys() == one_by_one.keys()
    for key in shared:
        assert shared[key].tokens == per_row[key].tokens == one_by_one[key].tokens, key
    # Samples of one prompt differ from each other (their keys differ), and another seed changes them.
    assert len({shared[(10, j)].tokens for j in range(4)}) > 1
    other_seed = _run(params, tokenizer, requests, n=4, max_rows=16, sampling=sampling, seed=4)
    assert any(other_seed[key].tokens != shared[key].tokens for key in shared)


def test_stop_token_and_stop_string(params, tokenizer):
    requests = _requests(tokenizer)[:2]
    free = _run(params, tokenizer, requests, n=1)
    row = free[(10, 0)]
    # Stop token: the 4th token of row 0 (really produced there).
    stop_id = row.tokens[3]
    got = _run(params, tokenizer, requests, n=1, stops=S.StopCriteria(token_ids=(stop_id,)))
    cut = list(row.tokens).index(stop_id)
    assert list(got[(10, 0)].tokens) == list(row.tokens[:cut])
    assert got[(10, 0)].stop_reason == S.STOP_TOKEN and got[(10, 0)].num_tokens == cut + 1
    # Stop string: two characters of row 1's text, matched in the decoded text between chunks.
    text = free[(11, 0)].text
    needle = text[4:6]
    got = _run(params, tokenizer, requests, n=1, chunk_steps=2,
               stops=S.StopCriteria(token_ids=(NEVER,), strings=(needle,)))
    assert got[(11, 0)].stop_reason == S.STOP_STRING
    assert got[(11, 0)].text == text[:text.index(needle)]
    assert got[(11, 0)].num_tokens < NEW_TOKENS


def test_stop_criteria_from_tokenizer(tokenizer):
    stops = S.stop_criteria(tokenizer)
    # <|im_end|> (the EOS) and <|endoftext|> are single tokens of the byte tokenizer; the rest are text.
    assert stops.token_ids == (tokenizer.eos_id, tokenizer.token_to_id("<|endoftext|>"))
    assert stops.strings == ("</s>", "<|eot_id|>", "<|end_of_text|>")


def test_sharded_equals_unsharded(params, tokenizer):
    requests = _requests(tokenizer)
    mesh = sharding_lib.make_mesh(data=2, fsdp=2, tensor=2)
    rules = M.DEFAULT_LOGICAL_RULES
    sampling = S.SamplingConfig(max_new_tokens=NEW_TOKENS, temperature=1.0)
    plain = _run(params, tokenizer, requests, n=3, max_rows=12, sampling=sampling)
    shardings = sharding_lib.logical_to_shardings(logical_axes=M.param_logical_axes(CONFIG), mesh=mesh, rules=rules)
    sharded_params = jax.device_put(params, shardings)
    sharded = _run(sharded_params, tokenizer, requests, n=3, max_rows=12, sampling=sampling, mesh=mesh, rules=rules)
    assert sharded_params["embedding"].sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    for key in plain:
        assert plain[key].tokens == sharded[key].tokens, key


def test_kv_len_attention_equals_full_cache(params):
    tokens = jnp.asarray(np.random.default_rng(0).integers(3, 250, size=(2, 5)), jnp.int32)
    cache = M.init_cache(CONFIG, batch_size=2, max_len=64)
    full, _ = models.forward(params, CONFIG, tokens, cache=cache)
    cache = M.init_cache(CONFIG, batch_size=2, max_len=64)
    short, _ = models.forward(params, CONFIG, tokens, cache=cache, kv_len=8)
    np.testing.assert_allclose(np.asarray(short), np.asarray(full), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="kv_len"):
        models.forward(params, CONFIG, tokens, cache=M.init_cache(CONFIG, batch_size=2, max_len=64), kv_len=65)


def test_length_batches_group_by_bucket_and_bound_rows():
    requests = [S.Request(i, tuple(range(1, length + 1))) for i, length in enumerate([5, 40, 3, 33, 31, 70])]
    batches = S.length_batches(requests, n=4, max_rows=8, bucket=32)
    assert [[r.prompt_id for r in b] for b in batches] == [[2, 0], [4], [3, 1], [5]]
    with pytest.raises(ValueError, match="n=0"):
        S.SamplerOptions(n=0)


@pytest.mark.parametrize("overrides", [{}, {"sliding_window": 6}])
def test_chunked_prefill_equals_one_shot(overrides):
    config = M.ModelConfig.tiny(vocab_size=264, **overrides)
    params = M.init_params(config, rng=jax.random.key(5))
    rng = np.random.default_rng(2)
    prompts = [rng.integers(3, 250, size=n).tolist() for n in (5, 29, 13)]
    tokens, positions, segment_ids = S.left_pad(prompts, pad_id=0, bucket=32)
    logits, cache = S.prefill(params, tokens, positions, segment_ids, config=config, max_len=48)
    for chunk in (8, 16):  # 4 and 2 chunks of the 32-token bucket
        chunked_logits, chunked = S.prefill(params, tokens, positions, segment_ids, config=config, max_len=48,
                                            chunk=chunk)
        np.testing.assert_allclose(np.asarray(chunked_logits), np.asarray(logits), rtol=1e-5, atol=1e-5)
        for key in ("k", "v"):
            np.testing.assert_allclose(np.asarray(chunked[key]), np.asarray(cache[key]), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(chunked["segment_ids"]), np.asarray(cache["segment_ids"]))
        assert int(chunked["end"]) == int(cache["end"]) == 32
    with pytest.raises(ValueError, match="chunk=12 must be >= 1 and divide"):
        S.prefill(params, tokens, positions, segment_ids, config=config, max_len=48, chunk=12)


def test_chunked_prefill_samples_equal_one_shot(params, tokenizer):
    requests = _requests(tokenizer)
    sampling = S.SamplingConfig(max_new_tokens=NEW_TOKENS, temperature=1.0)
    one_shot = _run(params, tokenizer, requests, n=2, max_rows=8, sampling=sampling, seed=1)
    chunked = _run(params, tokenizer, requests, n=2, max_rows=8, sampling=sampling, seed=1, prefill_chunk=8)
    assert chunked.keys() == one_shot.keys()
    for key in one_shot:
        assert chunked[key].tokens == one_shot[key].tokens, key
    with pytest.raises(ValueError, match="prefill_chunk=0"):
        S.SamplerOptions(prefill_chunk=0)
