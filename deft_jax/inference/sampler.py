"""The generation engine: prefill a batch of prompts into a KV cache, then decode n samples per prompt.

Every generation of the project goes through here (the generate CLI, the evaluator, the benchmark suites,
the experiments). For a batch of prompts (similar lengths, left-padded to a shared bucket):
  1. prefill the P prompts once, filling a KV cache of P rows (`prefill`; with `prefill_chunk` c, c prompt
     tokens at a time, so its temporaries are bounded for any prompt length);
  2. repeat each cache row n times (P*n rows: sample j of prompt i is row i*n + j);
  3. decode all rows together in chunks of `chunk_steps` single-token steps (`decode_chunk`, a jitted
     lax.while_loop that also ends as soon as every row has stopped), attending only over the cache slots
     written so far (rounded up to `kv_bucket`);
  4. between chunks, decode each row's new text on the host and stop rows whose text contains a stop
     string; a row also stops at a stop token id or after max_new_tokens tokens.

Sampling: p ∝ softmax(logits / T), restricted to the smallest set of tokens whose probability mass reaches
top_p (the nucleus, always keeping the most likely token); T = 0 is greedy argmax.

Randomness: sample j of prompt i draws its t-th token with key fold_in(fold_in(fold_in(key(seed), i), j), t),
so a row's tokens do not depend on which other rows share its batch, on the batch size, or on whether its
prompt was prefilled once or per row (`share_prefill=False`, the per-row reference path).

Parameters and cache follow the mesh: rows are split over the batch axes (('data', 'fsdp')), kv heads over
'tensor', under the given logical rules.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from deft_jax import errors
from deft_jax.model import decoder as model_lib
from deft_jax.model.decoder import ModelConfig


class SamplingError(errors.UserError):
    """A sampling setting or prompt out of range (max_new_tokens, temperature, top_p, n, chunk sizes, empty prompts)."""


def to_host(x: jax.Array) -> np.ndarray:
    """The whole value of `x` on this host: also for an array whose rows live on other processes' devices
    (generation under a multi-host mesh), gathered with `multihost_utils.process_allgather`."""
    if x.is_fully_addressable or x.is_fully_replicated:
        return np.array(x) if x.is_fully_addressable else np.array(x.addressable_data(0))
    from jax.experimental import multihost_utils

    return np.array(multihost_utils.process_allgather(x, tiled=True))


PROMPT_BUCKET = 32  # prompt lengths are padded up to a multiple of this, to limit recompilation

# The reference's stop strings for math sampling; the model's EOS is added to them.
DEFAULT_STOP_STRINGS = ("</s>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>")

STOP_TOKEN = "stop_token"      # a stop token id was emitted
STOP_STRING = "stop_string"    # the decoded text contains a stop string
LENGTH = "length"              # max_new_tokens reached


@dataclasses.dataclass(frozen=True)
class Request:
    """One prompt to continue n times; `prompt_id` keys its randomness (stable across batching)."""

    prompt_id: int
    tokens: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Sample:
    prompt_id: int
    sample_index: int
    tokens: tuple[int, ...]   # new tokens, the stop token excluded (after a stop string: up to the end of
                              # the chunk in which it appeared)
    text: str                 # decoded, special tokens skipped, cut before any stop string
    stop_reason: str          # STOP_TOKEN, STOP_STRING or LENGTH
    num_tokens: int           # tokens generated, stop token included (what was paid for)


@dataclasses.dataclass(frozen=True)
class StopCriteria:
    """Token ids that end a row on device, and strings that end it when they appear in its text."""

    token_ids: tuple[int, ...]
    strings: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.token_ids:
            raise ValueError("stop criteria need at least one stop token id (the model's EOS)")


def stop_criteria(tokenizer, *, stop_strings: Sequence[str] = DEFAULT_STOP_STRINGS,
                  extra_token_ids: Sequence[int] = ()) -> StopCriteria:
    """The tokenizer's EOS plus `stop_strings`: a string that is one token of the vocabulary stops on device
    as that id; the others are matched in the decoded text."""
    ids = [tokenizer.eos_id, *extra_token_ids]
    texts = []
    for text in stop_strings:
        token_id = tokenizer.token_to_id(text)
        if token_id is not None:
            ids.append(token_id)
        else:
            texts.append(text)
    return StopCriteria(token_ids=tuple(dict.fromkeys(int(i) for i in ids)), strings=tuple(texts))


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """temperature 0 = greedy; top_p in (0, 1] keeps the nucleus of that probability mass."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise SamplingError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise SamplingError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise SamplingError(f"top_p must be in (0, 1], got {self.top_p}")


BATCHING = ("continuous", "static")


@dataclasses.dataclass(frozen=True)
class SamplerOptions:
    """How to sample: n per prompt, the decoding (temperature 0 = greedy), the batching."""

    n: int = 1
    sampling: SamplingConfig = SamplingConfig()
    seed: int = 0
    max_rows: int = 64          # rows (prompts x n) decoded together at most
    chunk_steps: int = 64       # decode steps per compiled call between host-side stop-string checks
    kv_bucket: int = 256        # attended cache length is rounded up to a multiple of this
    prompt_bucket: int = PROMPT_BUCKET
    share_prefill: bool = True  # False: every sample row prefills its own copy of the prompt (reference path)
    prefill_chunk: int | None = None  # prefill the prompts this many tokens at a time (None: in one pass)
    batching: str = "continuous"  # `sample`: 'continuous' (decode slots refilled as rows stop) | 'static'
    slots: int | None = None    # continuous: decode slots (rows decoded together); None = max_rows
    refill_rows: int | None = None  # continuous: a decode chunk ends once this many slots are free while
                                    # prompts wait (None: max(1, slots // 8))

    def __post_init__(self):
        if self.n < 1:
            raise SamplingError(f"n={self.n}: the number of samples per prompt must be >= 1")
        for name in ("max_rows", "chunk_steps", "kv_bucket", "prompt_bucket"):
            if getattr(self, name) < 1:
                raise SamplingError(f"{name}={getattr(self, name)} must be >= 1")
        if self.prefill_chunk is not None and self.prefill_chunk < 1:
            raise SamplingError(f"prefill_chunk={self.prefill_chunk} must be >= 1 (or None: one pass)")
        if self.batching not in BATCHING:
            raise SamplingError(f"batching={self.batching!r} must be one of {BATCHING}")
        for name in ("slots", "refill_rows"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise SamplingError(f"{name}={getattr(self, name)} must be >= 1 (or None: the default)")


# ----------------------------------------------------------------------------------------------------------
# Batching.


def length_batches(requests: Sequence[Request], *, n: int, max_rows: int, bucket: int) -> list[list[Request]]:
    """Requests grouped by prompt length bucket (ceil(len / bucket)), shortest first, at most
    max(1, max_rows // n) prompts per batch."""
    per_batch = max(1, max_rows // n)
    by_bucket: dict[int, list[Request]] = {}
    for request in sorted(requests, key=lambda r: (len(r.tokens), r.prompt_id)):
        if not request.tokens:
            raise SamplingError(f"prompt {request.prompt_id} is empty: every prompt needs at least one token")
        by_bucket.setdefault(-(-len(request.tokens) // bucket), []).append(request)
    return [group[i:i + per_batch] for _, group in sorted(by_bucket.items()) for i in range(0, len(group), per_batch)]


def left_pad(prompts: Sequence[Sequence[int]], *, pad_id: int, bucket: int = PROMPT_BUCKET):
    """(tokens, positions, segment_ids) int32 [B, P]: prompts right-aligned, P a multiple of `bucket`;
    positions count from 0 at each prompt's first token; padding has segment 0 (never attended to)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise SamplingError("every prompt needs at least one token")
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


def cache_length(*, prompt_len: int, max_new_tokens: int, kv_bucket: int) -> int:
    """Cache slots of a batch: prompt_len + max_new_tokens rounded up to a multiple of kv_bucket."""
    return -(-(prompt_len + max_new_tokens) // kv_bucket) * kv_bucket


def row_keys(*, seed: int, prompt_ids: Sequence[int], sample_indices: Sequence[int]) -> jax.Array:
    """Per-row keys fold_in(fold_in(key(seed), prompt_id), sample_index)."""
    base = jax.random.key(seed)
    prompts = jnp.asarray(prompt_ids, jnp.uint32)
    samples = jnp.asarray(sample_indices, jnp.uint32)
    return jax.vmap(lambda p, s: jax.random.fold_in(jax.random.fold_in(base, p), s))(prompts, samples)


# ----------------------------------------------------------------------------------------------------------
# Compiled pieces.


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


def sample_rows(logits: jax.Array, *, keys: jax.Array, temperature: float, top_p: float) -> jax.Array:
    """int32 [R]: argmax when temperature == 0, else row r draws from softmax(logits_r / T) restricted to its
    top-p nucleus with its own key keys[r] (so a row's draw ignores the other rows)."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    tempered = logits.astype(jnp.float32) / temperature
    if top_p < 1.0:
        tempered = top_p_filter(tempered, top_p=top_p)
    return jax.vmap(lambda key, row: jax.random.categorical(key, row))(keys, tempered).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("config", "max_len", "chunk"))
def prefill(params, tokens, positions, segment_ids, *, config: ModelConfig, max_len: int, chunk: int | None = None):
    """Fill a fresh cache of max_len slots with the prompts [B, P]; returns (last-token logits [B, V], cache).

    chunk: prefill c tokens at a time (P a multiple of c), each chunk written into the cache and attending
    over it (a lax.scan), so attention's temporaries are [B, H, c, max_len] whatever P is; None (or c >= P):
    the whole prompt in one pass ([B, H, P, P])."""
    batch, length = tokens.shape
    cache = model_lib.init_cache(config, batch_size=batch, max_len=max_len)
    if chunk is None or chunk >= length:
        hidden, cache = model_lib.forward(params, config, tokens, positions=positions, segment_ids=segment_ids,
                                          return_hidden=True, cache=cache, fresh_cache=True)
        return model_lib.logits_from_hidden(hidden[:, -1], params=params, config=config), cache
    if chunk < 1 or length % chunk:
        raise ValueError(f"prefill chunk={chunk} must be >= 1 and divide the padded prompt length {length}")

    def chunks(x):  # [B, P] -> [P / c, B, c]
        return x.reshape(batch, length // chunk, chunk).swapaxes(0, 1)

    def step(cache, part):
        tokens, positions, segment_ids = part
        hidden, cache = model_lib.forward(params, config, tokens, positions=positions, segment_ids=segment_ids,
                                          return_hidden=True, cache=cache)
        return cache, hidden[:, -1]

    cache, last = jax.lax.scan(step, cache, (chunks(tokens), chunks(positions), chunks(segment_ids)))
    return model_lib.logits_from_hidden(last[-1], params=params, config=config), cache


@functools.partial(jax.jit, static_argnames=("repeats",))
def repeat_rows(logits, cache, *, repeats: int):
    """Each prompt row of the logits and the cache repeated `repeats` times (row i*repeats + j)."""
    def repeat(x, axis):
        return jnp.repeat(x, repeats, axis=axis)

    return repeat(logits, 0), {"k": repeat(cache["k"], 1), "v": repeat(cache["v"], 1),
                               "segment_ids": repeat(cache["segment_ids"], 0), "end": cache["end"]}


@functools.partial(jax.jit, static_argnames=("config", "steps", "kv_len", "stop_ids", "pad_id", "temperature",
                                             "top_p"), donate_argnames=("cache",))
def decode_chunk(params, logits, cache, positions, done, keys, drawn, max_new_tokens, free_target, *,
                 config: ModelConfig, steps: int, kv_len: int, stop_ids: tuple[int, ...], pad_id: int,
                 temperature: float, top_p: float):
    """Up to `steps` decode steps of every row, ending early once at least `free_target` rows are done
    (free_target = R: once all are).

    drawn [R]: tokens row r has drawn before this call; its t-th token (t = drawn_r + i) uses
    fold_in(keys[r], t), and the row is done after its stop token or its max_new_tokens-th token.
    Attention reads only the first kv_len cache slots. With per-row cache ends (continuous batching) a done
    row's end stays put, so a row never writes past its prompt + max_new_tokens slots. Returns (tokens
    [R, steps], pad_id where not produced, logits, cache, positions, done, steps taken)."""
    rows = logits.shape[0]
    stop = jnp.asarray(stop_ids, jnp.int32)
    drawn = jnp.broadcast_to(drawn, (rows,))

    def cond(state):
        i, _, _, _, done, _ = state
        return (i < steps) & (jnp.sum(done) < free_target)

    def body(state):
        i, logits, cache, positions, done, out = state
        step_keys = jax.vmap(jax.random.fold_in)(keys, drawn + i)
        token = sample_rows(logits, keys=step_keys, temperature=temperature, top_p=top_p)
        token = jnp.where(done, pad_id, token)
        out = out.at[:, i].set(token)
        done = done | jnp.isin(token, stop) | (drawn + i + 1 >= max_new_tokens)
        end = cache["end"]
        hidden, cache = model_lib.forward(params, config, token[:, None], positions=positions[:, None],
                                          segment_ids=jnp.ones((rows, 1), jnp.int32), return_hidden=True,
                                          cache=cache, kv_len=kv_len)
        if end.ndim:  # per-row ends: a done row keeps its end
            cache = {**cache, "end": jnp.where(done, end, cache["end"])}
        logits = model_lib.logits_from_hidden(hidden[:, 0], params=params, config=config)
        return i + 1, logits, cache, positions + 1, done, out

    state = (jnp.zeros((), jnp.int32), logits, cache, positions, done, jnp.full((rows, steps), pad_id, jnp.int32))
    taken, logits, cache, positions, done, out = jax.lax.while_loop(cond, body, state)
    return out, logits, cache, positions, done, taken


# ----------------------------------------------------------------------------------------------------------
# Host side.


def _cut_at_stop_string(text: str, strings: Sequence[str]) -> tuple[str, bool]:
    cuts = [text.index(s) for s in strings if s in text]
    return (text[:min(cuts)], True) if cuts else (text, False)


@dataclasses.dataclass
class Row:
    """A sample being decoded: its tokens so far and, once it stopped, why (and its text if cut)."""

    prompt_id: int
    sample_index: int
    tokens: list[int] = dataclasses.field(default_factory=list)
    stop_reason: str | None = None
    text: str = ""


def extend_row(row: Row, new: Sequence[int], *, stops: StopCriteria, decode_text) -> bool:
    """Append one decode chunk's tokens to `row`, cut before a stop token (stop_reason STOP_TOKEN); then, if
    the row has stop strings and is still running, match them in its decoded text (STOP_STRING, text cut
    before the first). True iff a stop string stopped it (the device does not know yet)."""
    hits = [i for i, t in enumerate(new) if t in stops.token_ids]
    if hits:
        row.tokens += list(new[:hits[0]])
        row.stop_reason = STOP_TOKEN
    else:
        row.tokens += list(new)
    if stops.strings and row.stop_reason is None:
        text, cut = _cut_at_stop_string(decode_text(row.tokens), stops.strings)
        if cut:
            row.stop_reason, row.text = STOP_STRING, text
            return True
    return False


def finished_sample(row: Row, *, decode_text) -> Sample:
    """The Sample of a row that stopped (no stop_reason: it ran to max_new_tokens)."""
    reason = row.stop_reason or LENGTH
    text = row.text if reason == STOP_STRING else decode_text(row.tokens)
    return Sample(prompt_id=row.prompt_id, sample_index=row.sample_index, tokens=tuple(row.tokens), text=text,
                  stop_reason=reason, num_tokens=len(row.tokens) + (reason == STOP_TOKEN))


def place(tree, mesh, spec_fn):
    """Every leaf of `tree` put on the mesh with the PartitionSpec spec_fn(leaf)."""
    from jax.sharding import NamedSharding

    return jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, spec_fn(x))), tree)


def cache_spec(mesh, rules):
    """PartitionSpec of each cache leaf: rows over the batch axes, kv heads over the tensor axis."""
    from jax.sharding import PartitionSpec

    mapping = dict(rules)
    batch, heads = mapping.get("batch"), mapping.get("act_kv_heads")

    def spec(x):
        if x.ndim == 5:      # k, v [L, R, Hkv, S, hd]
            return PartitionSpec(None, batch, heads, None, None)
        if x.ndim == 2:      # segment_ids [R, S], logits [R, V]
            return PartitionSpec(batch, None)
        if x.ndim == 1:      # per-row vectors
            return PartitionSpec(batch)
        return PartitionSpec()
    return spec


def rows_multiple(mesh, rules) -> int:
    """How many ways the rows are split (the product of the mesh axes of logical 'batch'); 1 without a mesh."""
    if mesh is None:
        return 1
    batch = dict(rules).get("batch")
    axes = (batch,) if isinstance(batch, str) else tuple(batch or ())
    return int(np.prod([mesh.shape[a] for a in axes])) if axes else 1


@contextlib.contextmanager
def mesh_rules(mesh, rules):
    """The mesh and logical axis rules the model's activation constraints resolve against (none: no-op)."""
    if mesh is None:
        yield
        return
    import flax.linen as nn

    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


@dataclasses.dataclass
class Timing:
    """Wall-clock seconds spent in prefill (repeat and placement included) and in decoding, accumulated
    over the batches of the calls it is passed to (the first calls include compilation); with continuous
    batching also the prefill calls and the slots refilled after their previous row stopped."""

    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    prefills: int = 0
    refilled_slots: int = 0


def sample_batch(params, config: ModelConfig, requests: Sequence[Request], *, options: SamplerOptions,
                 stops: StopCriteria, decode_text: Callable[[Sequence[int]], str] | None, pad_id: int, mesh=None,
                 rules=(), on_step: Callable[[int], None] | None = None, timing: Timing | None = None) -> list[Sample]:
    """All n samples of each request (one batch; see the module docstring). Sample order: request order,
    then sample index. decode_text turns a row's tokens into its text (None: texts are empty; then there
    may be no stop strings)."""
    decode_text = text_decoder(decode_text, stops=stops)
    with mesh_rules(mesh, rules):
        return _sample_batch(params, config, requests, options=options, stops=stops, decode_text=decode_text,
                             pad_id=pad_id, mesh=mesh, rules=rules, on_step=on_step,
                             timing=Timing() if timing is None else timing)


def _no_text(tokens: Sequence[int]) -> str:
    return ""


def text_decoder(decode_text: Callable[[Sequence[int]], str] | None, *, stops: StopCriteria):
    """decode_text, or (None, allowed only without stop strings) a decoder giving every row empty text."""
    if decode_text is None:
        if stops.strings:
            raise ValueError(f"stop strings {stops.strings} need decode_text (the rows' text is matched)")
        return _no_text
    return decode_text


def _sample_batch(params, config, requests, *, options, stops, decode_text, pad_id, mesh, rules, on_step, timing):
    n, sampling = options.n, options.sampling
    rows = [Row(r.prompt_id, j) for r in requests for j in range(n)]
    prompt_tokens = [list(r.tokens) for r in requests]
    if not options.share_prefill:
        prompt_tokens = [t for t in prompt_tokens for _ in range(n)]
    # Rows are split over the data-parallel devices: pad the prefill with copies of the last prompt until
    # the row count divides evenly (padding rows start as done and are dropped).
    multiple = rows_multiple(mesh, rules)
    repeats = n if options.share_prefill else 1
    padded_prompts = len(prompt_tokens)
    while padded_prompts * repeats % multiple:
        padded_prompts += 1
    prompt_tokens = prompt_tokens + [prompt_tokens[-1]] * (padded_prompts - len(prompt_tokens))
    bucket = options.prompt_bucket if options.prefill_chunk is None else math.lcm(options.prompt_bucket,
                                                                                   options.prefill_chunk)
    tokens, positions, segment_ids = left_pad(prompt_tokens, pad_id=pad_id, bucket=bucket)
    prompt_len = tokens.shape[1]
    max_len = cache_length(prompt_len=prompt_len, max_new_tokens=sampling.max_new_tokens, kv_bucket=options.kv_bucket)
    total_rows = padded_prompts * repeats

    if config.scan_layers is False:
        params = model_lib.stacked_params(params, config)
        config = config.replace(scan_layers=True)
    started = time.perf_counter()
    logits, cache = prefill(params, tokens, positions, segment_ids, config=config, max_len=max_len,
                            chunk=options.prefill_chunk)
    timing.prefills += 1
    if repeats > 1:
        logits, cache = repeat_rows(logits, cache, repeats=repeats)
    if mesh is not None:
        logits, cache = place((logits, cache), mesh, cache_spec(mesh, rules))
    jax.block_until_ready(logits)
    timing.prefill_seconds += time.perf_counter() - started
    started = time.perf_counter()
    lengths = [len(t) for t in prompt_tokens]
    next_positions = np.repeat(np.asarray(lengths, np.int32), repeats)
    prompt_ids = [row.prompt_id for row in rows] + [rows[-1].prompt_id] * (total_rows - len(rows))
    sample_ids = [row.sample_index for row in rows] + [rows[-1].sample_index] * (total_rows - len(rows))
    keys = row_keys(seed=options.seed, prompt_ids=prompt_ids, sample_indices=sample_ids)
    done = np.zeros((total_rows,), bool)
    done[len(rows):] = True  # padding rows never decode
    positions_dev = jnp.asarray(next_positions)
    step = 0
    stop_ids = tuple(sorted(stops.token_ids))
    while step < sampling.max_new_tokens and not done.all():
        steps = min(options.chunk_steps, sampling.max_new_tokens)
        kv_len = min(max_len, -(-(prompt_len + step + steps) // options.kv_bucket) * options.kv_bucket)
        out, logits, cache, positions_dev, done_dev, taken = decode_chunk(
            params, logits, cache, positions_dev, jnp.asarray(done), keys, jnp.int32(step),
            jnp.int32(sampling.max_new_tokens), jnp.int32(total_rows), config=config, steps=steps, kv_len=kv_len,
            stop_ids=stop_ids, pad_id=pad_id, temperature=float(sampling.temperature), top_p=float(sampling.top_p))
        out, taken, device_done = to_host(out), int(to_host(taken)), to_host(done_dev)
        for index, row in enumerate(rows):
            if done[index]:
                continue
            if extend_row(row, out[index, :taken].tolist(), stops=stops, decode_text=decode_text):
                device_done[index] = True
        done = device_done.copy()
        done[len(rows):] = True
        step += taken
        if on_step is not None:
            on_step(taken)
    samples = [finished_sample(row, decode_text=decode_text) for row in rows]
    timing.decode_seconds += time.perf_counter() - started
    return samples


def generate(params, config: ModelConfig, prompts: Sequence[Sequence[int]], *, stops: StopCriteria,
             pad_id: int, options: SamplerOptions = SamplerOptions(),
             decode_text: Callable[[Sequence[int]], str] | None = None, mesh=None, rules=(),
             timing: Timing | None = None) -> list[Sample]:
    """The n samples of each prompt (token ids), all prompts in one batch: sample_batch with prompt_id = the
    prompt's index. Order: prompt order, then sample index."""
    requests = [Request(prompt_id=index, tokens=tuple(int(t) for t in prompt)) for index, prompt in enumerate(prompts)]
    return sample_batch(params, config, requests, options=options, stops=stops, decode_text=decode_text,
                        pad_id=pad_id, mesh=mesh, rules=rules, timing=timing)


def sample(params, config: ModelConfig, requests: Sequence[Request], *, options: SamplerOptions,
           stops: StopCriteria, decode_text: Callable[[Sequence[int]], str] | None, pad_id: int, mesh=None,
           rules=(), progress: bool = True, description: str = "sampling",
           timing: Timing | None = None) -> Iterator[list[Sample]]:
    """Yield samples as they are done, n per request, with a tqdm bar over the decoded tokens' upper bound
    (rows x max_new_tokens) and its ETA. options.batching 'static': each length batch's samples (see
    sample_batch); 'continuous': after each decode chunk, the samples of every request whose n samples are
    all done (deft_jax.inference.continuous). Both give the same samples."""
    from tqdm import tqdm

    total = len(requests) * options.n * options.sampling.max_new_tokens
    with tqdm(total=total, desc=description, unit="tok", disable=not progress, dynamic_ncols=True) as bar:
        if options.batching == "continuous":
            from deft_jax.inference import continuous  # the scheduler built on this module's pieces

            for done in continuous.sample_continuous(params, config, requests, options=options, stops=stops,
                                                     decode_text=decode_text, pad_id=pad_id, mesh=mesh, rules=rules,
                                                     on_tokens=bar.update, timing=timing):
                yield done
            bar.update(total - bar.n)  # rows that stopped early free the rest of their budget
            return
        batches = length_batches(requests, n=options.n, max_rows=options.max_rows, bucket=options.prompt_bucket)
        for batch in batches:
            budget = len(batch) * options.n * options.sampling.max_new_tokens
            paid = [0]

            def on_step(taken, rows=len(batch) * options.n):
                paid[0] += taken * rows
                bar.update(taken * rows)

            yield sample_batch(params, config, batch, options=options, stops=stops, decode_text=decode_text,
                               pad_id=pad_id, mesh=mesh, rules=rules, on_step=on_step, timing=timing)
            bar.update(budget - paid[0])  # rows that stopped early free the rest of their budget
