"""The engine's generation: KV-cache decoding vs full recomputation, stopping, sampling, the CLI, and the real
default model."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deft_jax.inference import sampler as S
from deft_jax import generate as generate_cli
from deft_jax.model import decoder as M
from tests.helpers import models


# One batch shape for all tiny-model tests, so the compiled prefill/decode are reused across tests.
PROMPT_LENGTHS = (3, 9, 1)
STEPS = 7


def _prompts(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 254, size=n).tolist() for n in PROMPT_LENGTHS]


def greedy_by_recomputation(params, config, prompts, *, steps):
    """Reference: every step re-runs the full forward over prompt + generated tokens (no cache, no padding
    on the left: rows are right-padded, which causal attention makes invisible to the read position)."""
    total = max(len(p) for p in prompts) + steps
    seqs = [list(p) for p in prompts]
    for _ in range(steps):
        buffer = np.zeros((len(seqs), total), np.int32)
        for row, seq in enumerate(seqs):
            buffer[row, :len(seq)] = seq
        logits = np.asarray(models.forward(params, config, jnp.asarray(buffer)))
        for row, seq in enumerate(seqs):
            seq.append(int(logits[row, len(seq) - 1].argmax()))
    return [seq[len(p):] for seq, p in zip(seqs, prompts)]


def _generate(params, config, prompts, *, stop_ids, sampling, seed=0, **options):
    """The engine's samples (one per prompt, in order) of one left-padded batch."""
    return S.generate(params, config, prompts, stops=S.StopCriteria(token_ids=tuple(stop_ids)), pad_id=0,
                      options=S.SamplerOptions(sampling=sampling, seed=seed, **options))


@pytest.mark.parametrize("overrides", [{}, {"sliding_window": 4, "qkv_bias": True, "tie_embeddings": False}])
def test_cached_greedy_equals_recomputation_and_stops_at_eos(overrides):
    config = M.ModelConfig.tiny(**overrides)
    params = M.init_params(config, rng=jax.random.key(3))
    prompts, steps = _prompts(), STEPS
    reference = greedy_by_recomputation(params, config, prompts, steps=steps)

    never = [t for t in range(256) if all(t not in r for r in reference)][0]
    result = _generate(params, config, prompts, stop_ids=[never], sampling=S.SamplingConfig(max_new_tokens=steps))
    assert [list(s.tokens) for s in result] == reference
    assert [s.stop_reason == S.STOP_TOKEN for s in result] == [False, False, False]

    # Stop at the 4th token of row 0 (a token chosen from the reference, so it is really produced there).
    stop = reference[0][3]
    result = _generate(params, config, prompts, stop_ids=[stop], sampling=S.SamplingConfig(max_new_tokens=steps))
    for row, ref in enumerate(reference):
        expected = ref[:ref.index(stop)] if stop in ref else ref
        assert list(result[row].tokens) == expected
        assert (result[row].stop_reason == S.STOP_TOKEN) == (stop in ref)


def _top_p_reference(logits, top_p):
    order = np.argsort(-logits, kind="stable")
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    kept, mass = [], 0.0
    for index in order:
        kept.append(index)
        mass += probs[index]
        if mass >= top_p:
            break
    out = np.full_like(logits, -np.inf)
    out[kept] = logits[kept]
    return out


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.999])
def test_top_p_filter_matches_reference(top_p):
    logits = np.random.default_rng(1).normal(size=(3, 50)).astype(np.float32) * 2
    got = np.asarray(S.top_p_filter(jnp.asarray(logits), top_p=top_p))
    for row in range(3):
        np.testing.assert_array_equal(got[row], _top_p_reference(logits[row], top_p))


def test_sampling_frequencies():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = jnp.broadcast_to(jnp.log(jnp.asarray(probs, jnp.float32)), (20000, 4))
    draws = np.asarray(S.sample_rows(logits, keys=jax.random.split(jax.random.key(0), 20000), temperature=1.0,
                                     top_p=0.75))
    freq = np.bincount(draws, minlength=4) / draws.size
    np.testing.assert_allclose(freq, [0.5 / 0.8, 0.3 / 0.8, 0, 0], atol=0.015)  # nucleus {0, 1}
    draws = np.asarray(S.sample_rows(logits, keys=jax.random.split(jax.random.key(1), 20000), temperature=2.0,
                                     top_p=1.0))
    tempered = probs ** 0.5 / (probs ** 0.5).sum()
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / draws.size, tempered, atol=0.015)


def test_sampling_runs_batched_and_tiny_nucleus_is_greedy():
    config = M.ModelConfig.tiny()
    params = M.init_params(config, rng=jax.random.key(3))
    prompts = _prompts()

    def run(seed, **sampling):
        return [s.tokens for s in _generate(params, config, prompts, stop_ids=[255], seed=seed,
                                            sampling=S.SamplingConfig(max_new_tokens=STEPS, **sampling))]

    greedy = greedy_by_recomputation(params, config, prompts, steps=STEPS)
    greedy = [tuple(row[:row.index(255)] if 255 in row else row) for row in greedy]
    assert run(7, temperature=1.0, top_p=1e-6) == greedy
    a, b = run(1, temperature=1.5), run(2, temperature=1.5)
    assert a != b  # different seeds differ (256-way draws, 21 tokens)
    assert a == run(1, temperature=1.5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="top_p"):
        S.SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        S.SamplingConfig(max_new_tokens=0)
    with pytest.raises(ValueError, match="at least one token"):
        S.left_pad([[1], []], pad_id=0)


def test_cli_on_an_exported_tiny_model(tmp_path, capsys):
    import tokenizers

    from deft_jax.model import weights as W
    from deft_jax.model.tokenizer import Tokenizer

    vocab = {f"w{i}": i for i in range(254)}
    vocab.update({"<s>": 254, "</s>": 255})
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w0"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    backend.decoder = tokenizers.decoders.WordPiece()
    backend.add_special_tokens(["<s>", "</s>"])
    tokenizer = Tokenizer(backend=backend, eos_token="</s>", bos_token="<s>")
    config = M.ModelConfig.tiny()
    params = M.init_params(config, rng=jax.random.key(3))
    W.export_hf(params, config, tokenizer, tmp_path)

    prompts = _prompts(seed=1)
    texts = generate_cli.main(["--model", str(tmp_path), "--no-chat", "--max-new-tokens", str(STEPS)]
                   + [arg for p in prompts for arg in ("--prompt", " ".join(f"w{t}" for t in p))])
    expected = greedy_by_recomputation(params, config, prompts, steps=STEPS)
    assert texts == [tokenizer.decode(row[:row.index(255)] if 255 in row else row) for row in expected]
    assert capsys.readouterr().out.startswith("### " + " ".join(f"w{t}" for t in prompts[0]) + "\n")


# ------------------------------------------------------------------------------------------ real default


@pytest.fixture(scope="module")
def smollm2():
    from deft_jax.model import tokenizer as tokenizer_lib
    from deft_jax.model import weights as W

    config, params = W.load_pretrained("smollm2-135m-instruct")
    return config, params, tokenizer_lib.load_tokenizer("smollm2-135m-instruct")


def test_smollm2_default_says_paris(smollm2):
    config, params, tokenizer = smollm2
    assert (config.n_layers, config.d_model, config.n_heads, config.n_kv_heads) == (30, 576, 9, 3)
    prompt = tokenizer.encode("The capital of France is")
    (result,) = _generate(params, config, [prompt], stop_ids=[tokenizer.eos_id],
                          sampling=S.SamplingConfig(max_new_tokens=3))
    assert tokenizer.decode(list(result.tokens)).startswith(" Paris")
