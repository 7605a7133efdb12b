"""The records that flow through the data pipeline, and its error type.

Example          raw chat record: prompt turns + target response (+ reference for scoring).
TokenizedExample token ids of prompt + response + EOS and the prompt length (the loss mask's boundary).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from deft_jax import errors


class DataError(errors.UserError):
    """Bad input data or data config; the message says what, where (file:line, field) and what to do."""


@dataclasses.dataclass(frozen=True)
class Example:
    """One supervised chat example.

    messages:     the prompt turns, [{"role": "system"|"user"|"assistant", "content": str}, ...]; the
                  chat template renders them with the generation prompt. Never contains the target.
    response:     the target text (the last assistant turn); training supervises response + EOS.
    index:        the record's position in its source (file row, TFDS record, reasoning-gym item index);
                  stable under splitting, used for noise records and error messages.
    source:       where the record came from, for messages, e.g. "data/train.jsonl:12".
    task:         the data task that produced it ('figfont', 'gsm8k', 'reasoning_gym:number_sorting', ...).
    scoring_task: key of deft_jax.scoring.SCORERS ('figfont', 'gsm8k', 'math', 'reasoning_gym') or None.
    reference:    the answer generations are scored against (None when the task has none).
    entry:        the reasoning-gym item (question, answer, metadata) for its own score_answer, else None.
    corrupted:    True when label noise replaced the response (noise.py); the clean answer stays in
                  `reference`, so evaluation of a corrupted training example still uses the truth.
    """

    messages: tuple[Mapping[str, str], ...]
    response: str
    index: int
    source: str
    task: str
    scoring_task: str | None = None
    reference: str | None = None
    entry: Mapping[str, Any] | None = None
    corrupted: bool = False


@dataclasses.dataclass(frozen=True)
class TokenizedExample:
    """Token ids t = prompt ids + response ids + [EOS] (possibly truncated on the right).

    For the model: inputs = t[:-1], targets = t[1:], loss_mask[i] = 1 iff i + 1 >= prompt_length,
    i.e. the target is a response token or the EOS; no prompt token is ever supervised.
    """

    tokens: np.ndarray  # int32 [n]
    prompt_length: int
    index: int
    source: str

    @property
    def length(self) -> int:
        return int(self.tokens.shape[0])

    def loss_mask(self) -> np.ndarray:
        """float32 [n - 1]: 1.0 where targets = tokens[1:] is a response token or the EOS."""
        positions = np.arange(1, self.length)
        return (positions >= self.prompt_length).astype(np.float32)
