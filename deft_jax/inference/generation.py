"""Batched generation with a KV cache under jax.jit: greedy or temperature / top-p sampling.

Prompts of unequal length are left-padded (segment id 0, never attended to by real tokens) to a bucketed
length, so every row writes the cache at the same index. Two compiled functions do all the work:
  prefill: one forward over the prompts, filling the cache, returning the last hidden state;
  decode:  a lax.while_loop of single-token steps that stops when every row has emitted a stop token
           or max_new_tokens tokens.
Sampling: p ∝ softmax(logits / T), restricted to the smallest set of tokens whose probability mass reaches
top_p (the nucleus, always keeping the most likely token); T = 0 is greedy argmax.

CLI:  python -m deft_jax.generate --model smollm2-135m-instruct --prompt "What is 2+2?"
Chat formatting is on by default when the checkpoint carries its own chat template (instruct models);
--no-chat feeds the raw prompt.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from deft_jax.model import decoder as model_lib
from deft_jax.model.decoder import ModelConfig

PROMPT_BUCKET = 32  # prompt lengths are padded up to a multiple of this, to limit recompilation


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """temperature 0 = greedy; top_p in (0, 1] keeps the nucleus of that probability mass."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclasses.dataclass
class Generation:
    tokens: list[list[int]]       # new tokens per row, the stop token excluded
    stopped: list[bool]           # True where the row emitted a stop token (False: hit max_new_tokens)
    prompt_tokens: int            # sum of prompt lengths (no padding)
    generated_tokens: int         # sum of len(tokens) (+1 per stopped row for its stop token)
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0


def left_pad(prompts: Sequence[Sequence[int]], *, pad_id: int, bucket: int = PROMPT_BUCKET):
    """(tokens, positions, segment_ids) int32 [B, P]: prompts right-aligned, P a multiple of `bucket`;
    positions count from 0 at each prompt's first token; padding has segment 0."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    longest = max(len(p) for p in prompts)
    length = -(-longest // bucket) * bucket
    tokens = np.full((len(prompts), length), pad_id, np.int32)
    positions = np.zeros((len(prompts), length), np.int32)
    segment_ids = np.zeros((len(prompts), length), np.int32)
    for row, prompt in enumerate(prompts):
        n = len(prompt)
        tokens[row, length - n:] = prompt
        positions[row, length - n:] = np.arange(n)
        segment_ids[row, length - n:] = 1
    return tokens, positions, segment_ids


def top_p_filter(logits: jax.Array, *, top_p: float) -> jax.Array:
    """Logits [..., V] with every token outside the top-p nucleus set to -inf.

    A token is kept iff the probability mass of the tokens strictly more likely than it is < top_p
    (so the most likely token is always kept, and the kept mass is the smallest reaching top_p)."""
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    kept = mass_before < top_p
    threshold = jnp.min(jnp.where(kept, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits >= threshold, logits, -jnp.inf)


def sample_tokens(logits: jax.Array, *, rng, temperature, top_p) -> jax.Array:
    """int32 [B] from logits [B, V]: argmax when temperature == 0, else a draw from the tempered nucleus.

    temperature and top_p may be traced scalars (one compiled decode serves every sampling setting)."""
    def greedy(_):
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def sampled(_):
        tempered = logits.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)
        filtered = jax.lax.cond(top_p >= 1.0, lambda x: x, lambda x: top_p_filter(x, top_p=top_p), tempered)
        return jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)

    return jax.lax.cond(temperature == 0.0, greedy, sampled, None)


def _project_last(params, config: ModelConfig, hidden):
    return model_lib.logits_from_hidden(hidden, params=params, config=config)


@functools.partial(jax.jit, static_argnames=("config", "max_len"))
def prefill(params, tokens, positions, segment_ids, *, config: ModelConfig, max_len: int):
    """Fill a fresh cache of max_len slots with the prompts; returns (last-token logits [B, V], cache)."""
    cache = model_lib.init_cache(config, batch_size=tokens.shape[0], max_len=max_len)
    hidden, cache = model_lib.forward(params, config, tokens, positions=positions, segment_ids=segment_ids,
                                      return_hidden=True, cache=cache, fresh_cache=True)
    return _project_last(params, config, hidden[:, -1]), cache


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "stop_ids", "pad_id"))
def decode(params, logits, cache, next_positions, rng, temperature, top_p, *, config: ModelConfig,
           max_new_tokens: int, stop_ids: tuple[int, ...], pad_id: int):
    """Sample up to max_new_tokens tokens per row, one cached forward per step, in a lax.while_loop that
    ends once every row has produced a stop token. Returns (tokens [B, N] (pad_id after a stop), steps)."""
    batch = logits.shape[0]
    n = max_new_tokens
    stop = jnp.asarray(stop_ids, jnp.int32)

    def cond(state):
        step, _, _, _, done, _, _ = state
        return (step < n) & ~jnp.all(done)

    def body(state):
        step, logits, cache, positions, done, out, rng = state
        rng, key = jax.random.split(rng)
        token = sample_tokens(logits, rng=key, temperature=temperature, top_p=top_p)
        token = jnp.where(done, pad_id, token)
        out = out.at[:, step].set(token)
        done = done | jnp.isin(token, stop)
        hidden, cache = model_lib.forward(params, config, token[:, None], positions=positions[:, None],
                                          segment_ids=jnp.ones((batch, 1), jnp.int32), return_hidden=True,
                                          cache=cache)
        return step + 1, _project_last(params, config, hidden[:, 0]), cache, positions + 1, done, out, rng

    state = (jnp.zeros((), jnp.int32), logits, cache, next_positions, jnp.zeros((batch,), bool),
             jnp.full((batch, n), pad_id, jnp.int32), rng)
    step, _, _, _, _, out, _ = jax.lax.while_loop(cond, body, state)
    return out, step


def generate(params, config: ModelConfig, prompts: Sequence[Sequence[int]], *, stop_ids: Sequence[int],
             sampling: SamplingConfig = SamplingConfig(), pad_id: int = 0, rng=None) -> Generation:
    """Continue each prompt (a list of token ids) until a stop token or sampling.max_new_tokens."""
    if not stop_ids:
        raise ValueError("stop_ids is empty: pass the tokenizer's eos id (generation would never stop early)")
    if config.scan_layers is False:
        params = model_lib.stacked_params(params, config)
        config = config.replace(scan_layers=True)
    tokens, positions, segment_ids = left_pad(prompts, pad_id=pad_id)
    max_len = tokens.shape[1] + sampling.max_new_tokens
    rng = jax.random.key(0) if rng is None else rng

    start = time.perf_counter()
    logits, cache = prefill(params, tokens, positions, segment_ids, config=config, max_len=max_len)
    logits.block_until_ready()
    middle = time.perf_counter()
    next_positions = jnp.asarray([len(p) for p in prompts], jnp.int32)
    out, _ = decode(params, logits, cache, next_positions, rng, jnp.float32(sampling.temperature),
                    jnp.float32(sampling.top_p), config=config, max_new_tokens=sampling.max_new_tokens,
                    stop_ids=tuple(int(s) for s in stop_ids), pad_id=pad_id)
    out = np.asarray(out)
    end = time.perf_counter()

    rows, stopped = [], []
    for row in out.tolist():
        hits = [i for i, t in enumerate(row) if t in set(stop_ids)]
        rows.append(row[:hits[0]] if hits else row)
        stopped.append(bool(hits))
    return Generation(tokens=rows, stopped=stopped, prompt_tokens=sum(len(p) for p in prompts),
                      generated_tokens=sum(len(r) for r in rows) + sum(stopped),
                      prefill_seconds=middle - start, decode_seconds=end - middle)


# ----------------------------------------------------------------------------------------------------- CLI


def format_prompt(tokenizer, text: str, *, chat: bool, system: str | None = None) -> str:
    """The text fed to the model: the checkpoint's chat template around `text` when chat, else `text`."""
    if not chat:
        return text
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True)


def chat_by_default(tokenizer) -> bool:
    """Instruct checkpoints carry a chat template; base models (and the ChatML fallback) get raw text."""
    return getattr(tokenizer, "chat_template_source", None) == "checkpoint"
