"""Chat formatting, tokenization, the loss-mask boundary and the truncation policy.

For an Example with prompt turns M and target r (as the official DEFT/verl SFT dataset does):

    prompt_ids   = encode(apply_chat_template(M, add_generation_prompt=True))
    response_ids = encode(r) + [eos_id]
    tokens       = prompt_ids + response_ids,   prompt_length = len(prompt_ids)

The prompt and the response are tokenized separately, so the boundary is exact. Training supervises
every response token and the EOS, and no prompt token (records.TokenizedExample.loss_mask).

Truncation when len(tokens) > max_length (data.truncation):
    'error'    raise, naming the example and its length;
    'drop'     leave the example out;
    'truncate' keep tokens[:max_length] (right truncation: the end of the response and the EOS go);
               an example whose prompt alone fills max_length has nothing left to supervise and is
               dropped (counted separately).
The TruncationReport counts what each policy touched.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from deft_jax.data.config import TRUNCATION_POLICIES
from deft_jax.data.records import DataError, Example, TokenizedExample


class TokenizerLike(Protocol):
    """The part of deft_jax.tokenizer.Tokenizer the data pipeline uses."""

    eos_id: int
    pad_id: int

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]: ...

    def decode(self, ids, *, skip_special_tokens: bool = False) -> str: ...

    def apply_chat_template(self, messages: list[dict], *, add_generation_prompt: bool = True) -> str: ...


NAMED_OVER_LENGTH = 5  # over-length examples a report or an error names (the rest are counted)


@dataclasses.dataclass(frozen=True)
class TruncationReport:
    """What the truncation policy did to one split."""

    policy: str
    max_length: int
    num_examples: int  # examples in
    num_kept: int  # tokenized examples out
    num_over_length: int  # examples longer than max_length (before the policy)
    num_truncated: int  # 'truncate': shortened and kept
    num_dropped: int  # 'drop': left out; 'truncate': prompt alone >= max_length, left out
    longest: int  # longest example before the policy (tokens)
    over_length: tuple[str, ...] = ()  # the first NAMED_OVER_LENGTH over-length examples: "source (n tokens)"

    def summary(self) -> str:
        text = (f"truncation '{self.policy}' at max_length {self.max_length}: {self.num_over_length} of "
                f"{self.num_examples} examples over length (longest {self.longest}); "
                f"{self.num_truncated} truncated, {self.num_dropped} dropped, {self.num_kept} kept")
        if self.over_length:
            text += f"; over length: {named_list(self.over_length, total=self.num_over_length)}"
        return text


def named_list(names: Sequence[str], *, total: int) -> str:
    """'a, b, c' or 'a, b, c and 7 more' when `total` exceeds the names given."""
    more = f" and {total - len(names)} more" if total > len(names) else ""
    return ", ".join(names) + more


def prompt_text(example: Example, *, tokenizer: TokenizerLike) -> str:
    """The chat-templated prompt with the generation prompt (the assistant header) appended."""
    return tokenizer.apply_chat_template([dict(m) for m in example.messages], add_generation_prompt=True)


def encode_texts(texts: Sequence[str], *, tokenizer: TokenizerLike) -> list[list[int]]:
    """encode() of each text; uses the tokenizer's encode_batch (parallel in `tokenizers`) when it has one."""
    encode_batch = getattr(tokenizer, "encode_batch", None)
    if encode_batch is not None:
        return [list(ids) for ids in encode_batch(list(texts), add_special_tokens=False)]
    return [tokenizer.encode(text, add_special_tokens=False) for text in texts]


def encode_examples(examples: Sequence[Example], *, tokenizer: TokenizerLike) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids + [EOS]) of each example; prompt and response are encoded separately."""
    prompts = encode_texts([prompt_text(e, tokenizer=tokenizer) for e in examples], tokenizer=tokenizer)
    responses = encode_texts([e.response for e in examples], tokenizer=tokenizer)
    for example, prompt_ids in zip(examples, prompts):
        if not prompt_ids:
            raise DataError(f"{example.source}: the chat-templated prompt encodes to no tokens")
    return [(p, r + [tokenizer.eos_id]) for p, r in zip(prompts, responses)]


def check_token_range(examples: Sequence[TokenizedExample], *, vocab_size: int, source: str = "data") -> None:
    """Every token id of `examples` (inputs and targets alike) lies in [0, vocab_size), the model's
    vocabulary; otherwise DataError naming the first few offending examples. Out of range, a target would
    be NaN for some objectives and silently dropped by others, and an input would embed garbage."""
    bad, count, largest = [], 0, None
    for example in examples:
        outside = (example.tokens < 0) | (example.tokens >= vocab_size)
        if outside.any():
            count += 1
            position = int(np.argmax(outside))
            value = int(example.tokens[position])
            largest = value if largest is None else max(largest, value)
            if len(bad) < NAMED_OVER_LENGTH:
                bad.append(f"{example.source} (id {value} at token {position})")
    if count:
        raise DataError(
            f"{source}: {count} example(s) hold token ids outside [0, {vocab_size}), the model's vocabulary: "
            f"{named_list(bad, total=count)}; the tokenizer does not match the model (use the model's own "
            f"tokenizer, or a model whose vocab_size exceeds {largest})"
        )


def tokenize_examples(
    examples: Sequence[Example], *, tokenizer: TokenizerLike, cfg, vocab_size: int | None = None
) -> tuple[list[TokenizedExample], TruncationReport]:
    """Tokenize, then apply data.truncation at data.max_length; returns the kept examples and a report.

    With `vocab_size` (the model's), every token id is checked to lie in [0, vocab_size) (check_token_range).
    """
    max_length, policy = cfg.max_length, cfg.truncation
    if policy not in TRUNCATION_POLICIES:
        raise DataError(f"config.data.truncation: {policy!r} is not one of {TRUNCATION_POLICIES}")
    kept, over_length, truncated, dropped, longest = [], 0, 0, 0, 0
    named = []
    for example, (prompt_ids, response_ids) in zip(examples, encode_examples(examples, tokenizer=tokenizer)):
        tokens = np.asarray(prompt_ids + response_ids, dtype=np.int32)
        longest = max(longest, tokens.shape[0])
        if tokens.shape[0] > max_length:
            over_length += 1
            if policy == "error":
                raise DataError(
                    f"{example.source}: {tokens.shape[0]} tokens (prompt {len(prompt_ids)} + response "
                    f"{len(response_ids)}) exceed data.max_length={max_length}; raise max_length or set "
                    "data.truncation to 'drop' or 'truncate'"
                )
            if len(named) < NAMED_OVER_LENGTH:
                named.append(f"{example.source} ({tokens.shape[0]} tokens)")
            if policy == "drop" or len(prompt_ids) >= max_length:
                dropped += 1
                continue
            tokens = tokens[:max_length]
            truncated += 1
        kept.append(TokenizedExample(tokens=tokens, prompt_length=len(prompt_ids), index=example.index,
                                     source=example.source))
    if not kept:
        tasks = sorted({example.task for example in examples})
        why = ("every example is longer than max_length" if policy == "drop"
               else "every example's prompt alone fills max_length")
        raise DataError(
            f"no example left after truncation '{policy}' at max_length {max_length}: {why} "
            f"({len(examples)} examples of {', '.join(repr(t) for t in tasks)}, longest {longest} tokens), "
            f"e.g. {named_list(named, total=over_length)}; raise data.max_length"
            + (" or set data.truncation='truncate'" if policy == "drop" else "")
        )
    report = TruncationReport(policy=policy, max_length=max_length, num_examples=len(examples),
                              num_kept=len(kept), num_over_length=over_length, num_truncated=truncated,
                              num_dropped=dropped, longest=longest, over_length=tuple(named))
    if vocab_size is not None:
        tasks = sorted({example.task for example in examples})
        check_token_range(kept, vocab_size=vocab_size, source=f"data of {', '.join(repr(t) for t in tasks)}")
    return kept, report


@dataclasses.dataclass(frozen=True)
class GenerationPrompt:
    """What generation-based evaluation needs for one example."""

    prompt_ids: np.ndarray  # int32, chat template with the generation prompt
    reference: str | None
    scoring_task: str | None
    entry: Mapping[str, Any] | None
    index: int
    source: str


def make_generation_prompts(examples: Sequence[Example], *, tokenizer: TokenizerLike) -> list[GenerationPrompt]:
    """Prompt token ids (generation prompt appended) with the reference and scoring task of each example."""
    prompts = []
    texts = [prompt_text(example, tokenizer=tokenizer) for example in examples]
    for example, ids in zip(examples, encode_texts(texts, tokenizer=tokenizer)):
        prompts.append(GenerationPrompt(prompt_ids=np.asarray(ids, dtype=np.int32), reference=example.reference,
                                        scoring_task=example.scoring_task, entry=example.entry,
                                        index=example.index, source=example.source))
    return prompts
