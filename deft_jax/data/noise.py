"""Label-noise injection for robustness experiments: corrupt a seeded fraction of training targets.

- FigFont: the answer word becomes another random word from the task's word list (same length range,
  never the original word).
- GSM8K: the final `#### N` line gets a wrong number N + d, d drawn uniformly from ±[1, max(5, |N|//2)]
  (the reasoning above it is left as it is).

round(fraction * n) examples are chosen without replacement by numpy's default_rng(seed); the clean
answer stays in Example.reference (so evaluation is unaffected) and Example.corrupted is set. The
NoiseReport lists the corrupted Example.index values (sorted) for the run's records.
"""
from __future__ import annotations

import dataclasses
import decimal
import re
from typing import Sequence

import numpy as np

from deft_jax.data.records import DataError, Example

GSM8K_FINAL_ANSWER = re.compile(r"####[ \t]*(?P<number>-?[\d,]*\.?\d+)[ \t]*$")
NOISE_TASKS = ("figfont", "gsm8k")


@dataclasses.dataclass(frozen=True)
class NoiseReport:
    fraction: float
    seed: int
    num_examples: int
    corrupted_indices: tuple[int, ...]  # Example.index of every corrupted example, sorted

    def summary(self) -> str:
        return (f"label noise: {len(self.corrupted_indices)} of {self.num_examples} targets corrupted "
                f"(fraction {self.fraction}, seed {self.seed})")


def wrong_gsm8k_answer(response: str, *, rng: np.random.Generator, where: str) -> str:
    """The response with its final `#### N` replaced by a different number."""
    lines = response.rstrip("\n").split("\n")
    match = GSM8K_FINAL_ANSWER.search(lines[-1])
    if match is None:
        raise DataError(f"{where}: the GSM8K answer does not end with a '#### N' line; cannot corrupt it")
    true_value = decimal.Decimal(match["number"].replace(",", ""))
    bound = max(5, int(abs(true_value)) // 2)
    offset = int(rng.integers(1, bound + 1)) * (1 if rng.random() < 0.5 else -1)
    wrong = true_value + offset
    lines[-1] = lines[-1][: match.start("number")] + str(wrong) + lines[-1][match.end("number"):]
    return "\n".join(lines)


def wrong_figfont_answer(word: str, *, rng: np.random.Generator, words: Sequence[str]) -> str:
    """Another word from `words` (upper-cased), never `word` itself."""
    while True:
        candidate = words[int(rng.integers(len(words)))].upper()
        if candidate != word.upper():
            return candidate


def inject_label_noise(
    examples: Sequence[Example],
    *,
    fraction: float,
    seed: int,
    task: str,
    figfont_words: Sequence[str] | None = None,
) -> tuple[list[Example], NoiseReport]:
    """Corrupt round(fraction * len(examples)) targets; returns new examples and the report."""
    if task not in NOISE_TASKS:
        raise DataError(f"label noise is defined for tasks {NOISE_TASKS}, not {task!r}")
    if not 0.0 <= fraction <= 1.0:
        raise DataError(f"noise fraction must lie in [0, 1], got {fraction}")
    if task == "figfont" and (not figfont_words or len(set(w.upper() for w in figfont_words)) < 2):
        raise DataError("figfont label noise needs a word list with at least two distinct words")
    rng = np.random.default_rng(seed)
    count = int(round(fraction * len(examples)))
    chosen = set(rng.choice(len(examples), size=count, replace=False).tolist()) if count else set()
    noisy = []
    for position, example in enumerate(examples):
        if position not in chosen:
            noisy.append(example)
            continue
        if task == "figfont":
            response = wrong_figfont_answer(example.response, rng=rng, words=figfont_words)
        else:
            response = wrong_gsm8k_answer(example.response, rng=rng, where=example.source)
        noisy.append(dataclasses.replace(example, response=response, corrupted=True))
    report = NoiseReport(
        fraction=fraction,
        seed=seed,
        num_examples=len(examples),
        corrupted_indices=tuple(sorted(examples[p].index for p in chosen)),
    )
    return noisy, report


def corrupted_indices(examples: Sequence[Example]) -> list[int]:
    """Example.index of every corrupted example (to save beside the run)."""
    return [example.index for example in examples if example.corrupted]
