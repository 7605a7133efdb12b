"""Continuous batching: a fixed set of decode slots, each refilled with the next waiting sample as its row stops.

The engine's pieces are the static path's (deft_jax.inference.sampler: `prefill`, `decode_chunk`,
`sample_rows`); only the schedule differs. With S slots (`SamplerOptions.slots`, default max_rows):
  1. the work is a queue of (prompt, sample index) pairs: prompts shortest first, the n samples of a prompt
     one after the other;
  2. the cache holds S rows of max_len slots, one decode slot per row, each with its own write index (the
     cache's 'end' is a vector [S]); max_len = the longest padded prompt + max_new_tokens, rounded up to
     kv_bucket;
  3. free slots take the next pairs from the queue: their distinct prompts are prefilled together (the n
     samples of a prompt that start together share one prefill row), and each pair's prefilled row is
     written into its slot (`insert_rows`: the slot's keys/values [0, P), segment ids 1 on the prompt and 0
     after it, end P, its last-token logits);
  4. all slots decode together in chunks (`decode_chunk`), a chunk ending after chunk_steps steps or once
     `refill_rows` slots are free while pairs wait (all slots, once the queue is empty); between chunks the
     host checks stop strings, frees the slots of stopped rows and refills them (step 3).
A row's t-th token is drawn with fold_in(fold_in(fold_in(key(seed), prompt_id), sample_index), t), whatever
slot it runs in and whenever it starts, so the samples equal the static path's and one prompt at a time's.
Attention reads the first kv_len cache slots, kv_len covering the longest running row (rounded up to
kv_bucket): rows in a contiguous per-slot cache pay for the longest one's span.
"""
from __future__ import annotations

import collections
import functools
import math
import time
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from deft_jax.inference import sampler as sampler_lib
from deft_jax.inference.sampler import Request, Row, Sample, SamplerOptions, StopCriteria, Timing
from deft_jax.model import decoder as model_lib
from deft_jax.model.decoder import ModelConfig


def slot_count(options: SamplerOptions, *, mesh=None, rules=()) -> int:
    """Decode slots: options.slots (default max_rows), rounded up to a multiple of the row split."""
    multiple = sampler_lib.rows_multiple(mesh, rules)
    return -(-(options.slots or options.max_rows) // multiple) * multiple


def refill_rows(options: SamplerOptions, *, slots: int) -> int:
    """Free slots that end a decode chunk while samples wait: options.refill_rows, default max(1, slots // 8)."""
    return min(slots, options.refill_rows or max(1, slots // 8))


def prompt_bucket(options: SamplerOptions) -> int:
    """Prompt lengths are padded to a multiple of this (prompt_bucket, and of prefill_chunk when set)."""
    if options.prefill_chunk is None:
        return options.prompt_bucket
    return math.lcm(options.prompt_bucket, options.prefill_chunk)


def _power_of_two(count: int) -> int:
    return 1 << max(0, count - 1).bit_length()


@functools.partial(jax.jit, donate_argnames=("logits", "cache"))
def insert_rows(logits, cache, new_logits, new_cache, slots, sources):
    """Prefilled rows `sources` (logits [p, V], a cache of P slots) written into decode slots `slots` of
    (logits [S, V], cache with per-row ends): keys/values at [0, P), segment ids (0 from P on), end P.
    A slot listed twice must take the same source (padding repeats the last pair)."""
    length = new_cache["k"].shape[3]
    segment_ids = jnp.zeros((slots.shape[0], cache["segment_ids"].shape[1]), jnp.int32)
    segment_ids = segment_ids.at[:, :length].set(new_cache["segment_ids"][sources])
    return logits.at[slots].set(new_logits[sources]), {
        "k": cache["k"].at[:, slots, :, :length].set(new_cache["k"][:, sources]),
        "v": cache["v"].at[:, slots, :, :length].set(new_cache["v"][:, sources]),
        "segment_ids": cache["segment_ids"].at[slots].set(segment_ids),
        "end": cache["end"].at[slots].set(length)}


def work_queue(requests: Sequence[Request], *, n: int) -> list[tuple[Request, int]]:
    """(request, sample index) pairs: requests shortest first (ties by prompt_id), n samples each."""
    for request in requests:
        if not request.tokens:
            raise sampler_lib.SamplingError(f"prompt {request.prompt_id} is empty: every prompt needs at least "
                                            f"one token")
    ordered = sorted(requests, key=lambda r: (len(r.tokens), r.prompt_id))
    return [(request, j) for request in ordered for j in range(n)]


class _Slots:
    """Host-side state of the S decode slots (what the device arrays must agree with)."""

    def __init__(self, count: int):
        self.rows: list[Row | None] = [None] * count
        self.done = np.ones((count,), bool)      # free (never filled, or its row stopped)
        self.drawn = np.zeros((count,), np.int32)  # tokens the slot's row has drawn
        self.positions = np.zeros((count,), np.int32)  # the next token's position (prompt length + drawn)
        self.ends = np.zeros((count,), np.int64)   # the slot's next cache write index
        self.prompt_ids = np.zeros((count,), np.int64)
        self.sample_ids = np.zeros((count,), np.int64)
        self.used = np.zeros((count,), bool)


def sample_continuous(params, config: ModelConfig, requests: Sequence[Request], *, options: SamplerOptions,
                      stops: StopCriteria, decode_text: Callable[[Sequence[int]], str] | None, pad_id: int,
                      mesh=None, rules=(), on_tokens: Callable[[int], None] | None = None,
                      timing: Timing | None = None) -> Iterator[list[Sample]]:
    """Yield, after each decode chunk, the samples of every prompt whose n samples are now all done (ordered
    by sample index); see the module docstring. on_tokens(k): k more tokens were decoded."""
    decode_text = sampler_lib.text_decoder(decode_text, stops=stops)
    timing = Timing() if timing is None else timing
    with sampler_lib.mesh_rules(mesh, rules):
        yield from _run(params, config, requests, options=options, stops=stops, decode_text=decode_text,
                        pad_id=pad_id, mesh=mesh, rules=rules, on_tokens=on_tokens, timing=timing)


def _run(params, config, requests, *, options, stops, decode_text, pad_id, mesh, rules, on_tokens, timing):
    n, sampling = options.n, options.sampling
    pending = collections.deque(work_queue(requests, n=n))
    if not pending:
        return
    count = slot_count(options, mesh=mesh, rules=rules)
    refill_target = refill_rows(options, slots=count)
    bucket = prompt_bucket(options)
    longest = -(-max(len(r.tokens) for r, _ in pending) // bucket) * bucket
    max_len = sampler_lib.cache_length(prompt_len=longest, max_new_tokens=sampling.max_new_tokens,
                                       kv_bucket=options.kv_bucket)
    if config.scan_layers is False:
        params = model_lib.stacked_params(params, config)
        config = config.replace(scan_layers=True)
    cache = {**model_lib.init_cache(config, batch_size=count, max_len=max_len),
             "end": jnp.zeros((count,), jnp.int32)}
    logits = jnp.zeros((count, config.vocab_size), jnp.float32)
    placement = (lambda tree: tree) if mesh is None else functools.partial(
        sampler_lib.place, mesh=mesh, spec_fn=sampler_lib.cache_spec(mesh, rules))
    logits, cache = placement((logits, cache))
    slots = _Slots(count)
    finished: dict[int, list[Sample]] = collections.defaultdict(list)
    stop_ids = tuple(sorted(stops.token_ids))
    steps = min(options.chunk_steps, sampling.max_new_tokens)

    def refill():
        nonlocal logits, cache
        free = np.flatnonzero(slots.done)[:len(pending)]
        taken = [pending.popleft() for _ in free]
        prompts, sources = [], []
        for request, _ in taken:  # the samples of a prompt that start together share its prefill row
            if not options.share_prefill or not prompts or prompts[-1] is not request:
                prompts.append(request)
            sources.append(len(prompts) - 1)
        token_lists = [list(r.tokens) for r in prompts]
        token_lists += [token_lists[-1]] * (_power_of_two(len(token_lists)) - len(token_lists))
        tokens, positions, segment_ids = sampler_lib.left_pad(token_lists, pad_id=pad_id, bucket=bucket)
        started = time.perf_counter()
        new_logits, new_cache = sampler_lib.prefill(params, tokens, positions, segment_ids, config=config,
                                                    max_len=tokens.shape[1], chunk=options.prefill_chunk)
        width = _power_of_two(len(free))
        pad = width - len(free)
        logits, cache = insert_rows(logits, cache, new_logits, new_cache,
                                    jnp.asarray(np.concatenate([free, free[-1:].repeat(pad)]), jnp.int32),
                                    jnp.asarray(sources + sources[-1:] * pad, jnp.int32))
        logits, cache = placement((logits, cache))
        jax.block_until_ready(logits)
        timing.prefill_seconds += time.perf_counter() - started
        timing.prefills += 1
        timing.refilled_slots += int(slots.used[free].sum())
        for slot, (request, j) in zip(free, taken):
            slots.rows[slot] = Row(request.prompt_id, j)
            slots.done[slot], slots.used[slot] = False, True
            slots.drawn[slot], slots.positions[slot] = 0, len(request.tokens)
            slots.ends[slot] = tokens.shape[1]
            slots.prompt_ids[slot], slots.sample_ids[slot] = request.prompt_id, j

    while True:
        if pending and slots.done.sum() >= (refill_target if slots.used.any() else 1):
            refill()
        if slots.done.all():
            break
        live = np.flatnonzero(~slots.done)
        free_target = count - len(live) + refill_target if pending else count
        kv_len = min(max_len, -(-(int(slots.ends[live].max()) + steps) // options.kv_bucket) * options.kv_bucket)
        keys = sampler_lib.row_keys(seed=options.seed, prompt_ids=slots.prompt_ids.tolist(),
                                    sample_indices=slots.sample_ids.tolist())
        started = time.perf_counter()
        out, logits, cache, _, done_dev, taken = sampler_lib.decode_chunk(
            params, logits, cache, jnp.asarray(slots.positions), jnp.asarray(slots.done), keys,
            jnp.asarray(slots.drawn), jnp.int32(sampling.max_new_tokens), jnp.int32(free_target), config=config,
            steps=steps, kv_len=kv_len, stop_ids=stop_ids, pad_id=pad_id, temperature=float(sampling.temperature),
            top_p=float(sampling.top_p))
        out, taken, device_done = sampler_lib.to_host(out), int(sampler_lib.to_host(taken)), \
            sampler_lib.to_host(done_dev)
        timing.decode_seconds += time.perf_counter() - started
        decoded, complete = 0, []
        for slot in live:
            row = slots.rows[slot]
            new = min(taken, sampling.max_new_tokens - int(slots.drawn[slot]))
            by_string = sampler_lib.extend_row(row, out[slot, :new].tolist(), stops=stops, decode_text=decode_text)
            decoded += new
            slots.drawn[slot] += new
            slots.positions[slot] += new
            slots.ends[slot] += new
            if by_string or device_done[slot]:
                slots.done[slot] = True
                finished[row.prompt_id].append(sampler_lib.finished_sample(row, decode_text=decode_text))
                if len(finished[row.prompt_id]) == n:
                    complete.append(sorted(finished.pop(row.prompt_id), key=lambda s: s.sample_index))
        if on_tokens is not None:
            on_tokens(decoded)
        if complete:
            yield [s for group in complete for s in group]
