"""Scoring of generated answers, one function per task, as the paper scores each task.

- FigFont: Jaro-Winkler similarity of the lower-cased, stripped prediction and reference (rapidfuzz);
  `figfont_metrics` adds exact and case-insensitive match.
- GSM8K: exact match of the final number (the `#### N` line, "the answer is N", \\boxed{N}, else the
  last number), after normalisation (commas, `$`, `%`, trailing zeros: 3.50 == 3.5).
- MATH: the last \\boxed{...} (or \\fbox{...}, "\\boxed 5") of the prediction, read by the same
  `deft_jax.data.tasks.last_boxed` that reads training references, checked for mathematical equivalence
  with the reference answer by the maintained `math-verify` package (parse + verify).
- Medical multiple choice: the option letter of the last \\boxed{} or of the last option-letter phrase
  ("the answer is (C)", "Answer: C", "**C.**", a response that starts with "C."), equal to the reference.
- reasoning-gym tasks: the dataset's own `score_answer(answer, entry)`.

All scores are floats in [0, 1]. `score(task, prediction=..., reference=..., entry=...)` dispatches by
task name through `SCORERS`. Pure Python: no JAX computation.
"""
from __future__ import annotations

import decimal
import functools
import re
from typing import Any, Callable, Mapping

from deft_jax.data.tasks import last_boxed

# ----------------------------------------------------------------------------------------------------
# Jaro-Winkler (FigFont)
# ----------------------------------------------------------------------------------------------------


def jaro_winkler(a: str, b: str, *, prefix_weight: float = 0.1) -> float:
    """Jaro-Winkler similarity (rapidfuzz): jw = jaro + l * prefix_weight * (1 - jaro), case-sensitive.

    l = length of the common prefix, at most 4; as in Winkler's definition the boost applies only when
    jaro > 0.7. Both empty -> 1.0, one empty -> 0.0. Examples: MARTHA/MARHTA 0.9611, DWAYNE/DUANE 0.84.
    """
    from rapidfuzz.distance import JaroWinkler

    if not isinstance(a, str) or not isinstance(b, str):
        raise TypeError(f"jaro_winkler expects two str, got {type(a).__name__} and {type(b).__name__}")
    if not 0.0 <= prefix_weight <= 0.25:
        raise ValueError(f"prefix_weight must lie in [0, 0.25] (prefix <= 4) to keep the score <= 1, got "
                         f"{prefix_weight}")
    return float(JaroWinkler.similarity(a, b, prefix_weight=prefix_weight))


def figfont_score(*, prediction: str, reference: str) -> float:
    """FigFont score: Jaro-Winkler similarity of prediction.strip().lower() and reference.strip().lower()."""
    return jaro_winkler(prediction.strip().lower(), reference.strip().lower())


def figfont_metrics(*, prediction: str, reference: str) -> dict[str, float]:
    """The paper's three FigFont figures for one answer:

    exact_match        prediction.strip() == reference.strip()
    case_insensitive   the same after lower()
    jaro_winkler       figfont_score (lowercased, stripped; prefix weight 0.1, prefix <= 4)
    """
    predicted, expected = prediction.strip(), reference.strip()
    return {"exact_match": float(predicted == expected),
            "case_insensitive": float(predicted.lower() == expected.lower()),
            "jaro_winkler": figfont_score(prediction=prediction, reference=reference)}


# ----------------------------------------------------------------------------------------------------
# GSM8K
# ----------------------------------------------------------------------------------------------------

# A number as written in answers: optional sign and `$`, thousands separators (1,234), decimals (3.50,
# .5). Not preceded by a letter/digit so that "3-4" reads as 3 and 4, not 3 and -4.
_NUMBER = (
    r"(?<![\w])(?P<sign>[-\u2212]?)\s?\\?\$?\s?"
    r"(?P<digits>(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)"
)
_NUMBER_RE = re.compile(_NUMBER)
_HASHES_RE = re.compile(r"####\s*" + _NUMBER)
_ANSWER_IS_RE = re.compile(
    r"answer\s*(?:is|:)\s*:?\s*(?:\*\*|\\\(|\\\[|\$|\\boxed\{|\\text\{|\s)*" + _NUMBER, re.IGNORECASE
)


def normalize_number(text: str) -> str:
    """Canonical form of a written number: no commas, `$`, `%` or spaces; "-0" -> "0"; 3.50 -> "3.5".

    Raises ValueError when `text` is not a single number.
    """
    cleaned = re.sub(r"[,\s$%\\]", "", text.replace("\u2212", "-")).rstrip(".")
    try:
        value = decimal.Decimal(cleaned)
    except decimal.InvalidOperation:
        raise ValueError(f"not a number: {text!r}") from None
    if not value.is_finite():
        raise ValueError(f"not a finite number: {text!r}")
    canonical = format(value.normalize(), "f")
    return "0" if canonical in ("-0", "0") else canonical


def _match_to_number(match: re.Match) -> str:
    return normalize_number(match.group("sign") + match.group("digits"))


def extract_gsm8k_reference(answer_text: str) -> str:
    """The normalised number on the `#### N` line of a GSM8K `answer` field (the last one if several)."""
    matches = list(_HASHES_RE.finditer(answer_text))
    if not matches:
        raise ValueError(
            f"GSM8K answer has no '#### <number>' line: {answer_text[-200:]!r}; pass the dataset's "
            "`answer` field (worked solution ending in '#### N')"
        )
    return _match_to_number(matches[-1])


def extract_final_number(text: str) -> str | None:
    """The final numeric answer of a model's response, normalised (see `normalize_number`), or None.

    Preference order: the last `#### N`; else the last "answer is N" / "answer: N" (also "the final
    answer is $N$"); else the first number inside the last \\boxed{...}; else the last number anywhere.
    """
    for pattern in (_HASHES_RE, _ANSWER_IS_RE):
        matches = list(pattern.finditer(text))
        if matches:
            return _match_to_number(matches[-1])
    boxed = last_boxed(text)
    if boxed is not None:
        match = _NUMBER_RE.search(boxed)
        if match:
            return _match_to_number(match)
    matches = list(_NUMBER_RE.finditer(text))
    return _match_to_number(matches[-1]) if matches else None


def gsm8k_score(*, prediction: str, reference: str) -> float:
    """1.0 if the prediction's final number equals the reference number after normalisation, else 0.0.

    `reference` is the final number ("18", "1,234") or a full GSM8K answer ending in `#### N`.
    """
    if "####" in reference:
        reference_number = extract_gsm8k_reference(reference)
    else:
        try:
            reference_number = normalize_number(reference)
        except ValueError:
            raise ValueError(
                f"GSM8K reference {reference!r} is neither a number nor an answer with a '#### N' line"
            ) from None
    predicted = extract_final_number(prediction)
    if predicted is None:
        return 0.0
    return float(decimal.Decimal(predicted) == decimal.Decimal(reference_number))


# ----------------------------------------------------------------------------------------------------
# MATH
# ----------------------------------------------------------------------------------------------------

def math_score(*, prediction: str, reference: str) -> float:
    """1.0 if math-verify finds the prediction's answer equivalent to the reference answer, else 0.0.

    The prediction's answer is its last \\boxed{...}/\\fbox{...}; without one, math-verify's own
    extraction runs over the whole text (its "final answer is" anchors, then the last LaTeX/plain
    expression). `reference` is the bare answer (MATH500's `answer` field, e.g. "\\frac{14}{3}").
    math-verify enforces its timeouts with signals, so call this from the main thread.
    """
    import math_verify  # local import: sympy is slow to import and only MATH needs it

    gold = math_verify.parse("\\boxed{" + reference + "}")
    if not gold:
        raise ValueError(f"math-verify could not parse the MATH reference answer {reference!r}")
    boxed = last_boxed(prediction)
    predicted = math_verify.parse("\\boxed{" + boxed + "}" if boxed is not None else prediction)
    if not predicted:
        return 0.0
    return float(math_verify.verify(gold, predicted))


# ----------------------------------------------------------------------------------------------------
# Medical multiple choice
# ----------------------------------------------------------------------------------------------------

DEFAULT_OPTION_LETTERS = "ABCDEFGHIJ"


def _letter_patterns(letters: str) -> list[re.Pattern]:
    """Option-letter phrases, most explicit first; each captures the letter in group 'letter'."""
    letter = rf"(?P<letter>[{letters}])"
    after = r"(?![A-Za-z0-9])"  # "A" in "Aspirin" or "A1c" is no option letter
    phrase = r"\**\s*(?:(?i:is|would be|should be|=)\s*)?[:\-]?\s*(?:\*\*|\$|\\text\{|\s)*\(?\[?"
    return [
        # "the answer is (C)", "Answer: C", "final answer: **C. Aspirin**"
        re.compile(r"(?i:answer)" + phrase + letter + after),
        # "the correct option is C", "best choice would be (B)", "Option C"
        re.compile(r"(?i:option|choice)" + phrase + letter + after),
        # "**C.**", "**C)**", "**(C)**", "**C. Aspirin**", "**C**"
        re.compile(r"\*\*\s*\(?" + letter + r"(?:[.):]|\)?\*\*)"),
        # "(C) is correct", "C is the correct answer", "C is correct"
        re.compile(r"\(?" + letter + r"\)?\s+is\s+(?i:the\s+)?(?i:correct|right|best)" + after),
    ]


def extract_choice_letter(text: str, *, letters: str = DEFAULT_OPTION_LETTERS) -> str | None:
    """The option letter a response chose, or None.

    Order: the last \\boxed{...} whose content starts with a letter ("C", "(C)", "C. Aspirin",
    "\\text{C}"); else the last option-letter phrase (answer/option/choice is C, **C.**, "C is correct");
    else a response that starts with the letter ("C", "C. Aspirin ...", "(C) ..."). Letters outside
    `letters` (the options present) never count.
    """
    boxed = last_boxed(text)
    if boxed is not None:
        content = re.sub(r"\\text(?:bf)?\{([^}]*)\}", r"\1", boxed).strip()
        match = re.match(rf"\(?(?P<letter>[{letters}])\)?(?![A-Za-z0-9])", content)
        if match:
            return match.group("letter")
    for pattern in _letter_patterns(letters):
        matches = list(pattern.finditer(text))
        if matches:
            return matches[-1].group("letter")
    match = re.match(rf"\s*\(?(?P<letter>[{letters}])(?:[.):]|\)|\s*$)", text)
    return match.group("letter") if match else None


def multiple_choice_score(*, prediction: str, reference: str, letters: str = DEFAULT_OPTION_LETTERS) -> float:
    """1.0 if the response's option letter (extract_choice_letter) equals `reference` (a letter), else 0.0."""
    expected = reference.strip().strip("()").upper()
    if len(expected) != 1 or expected not in letters:
        raise ValueError(f"multiple-choice reference {reference!r} is not one of the option letters {letters!r}")
    return float(extract_choice_letter(prediction, letters=letters) == expected)


# ----------------------------------------------------------------------------------------------------
# reasoning-gym
# ----------------------------------------------------------------------------------------------------


@functools.cache
def _reasoning_gym_scorer(task_name: str) -> Callable[[str | None, dict], float]:
    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    if task_name not in DATASETS:
        raise ValueError(
            f"unknown reasoning-gym task {task_name!r}; registered tasks include "
            f"{sorted(DATASETS)[:20]} ... ({len(DATASETS)} in all)"
        )
    return reasoning_gym.get_score_answer_fn(task_name)


def reasoning_gym_score(*, task_name: str, prediction: str, entry: Mapping[str, Any]) -> float:
    """The reasoning-gym dataset's own score_answer(prediction.strip(), entry), in [0, 1].

    `entry` is the dataset item (dict with "question", "answer", "metadata"); its
    metadata["source_dataset"], when present, must equal `task_name`.
    """
    if not isinstance(entry, Mapping) or "answer" not in entry:
        raise ValueError(
            f"reasoning-gym entry for {task_name!r} must be the dataset item (a dict with 'answer'), "
            f"got {type(entry).__name__}"
        )
    source = entry.get("metadata", {}).get("source_dataset")
    if source is not None and source != task_name:
        raise ValueError(f"entry comes from reasoning-gym task {source!r}, not {task_name!r}")
    return float(_reasoning_gym_scorer(task_name)(prediction.strip(), dict(entry)))


def _reasoning_gym_adapter(*, prediction: str, reference: str | None, entry: Mapping | None) -> float:
    if entry is None:
        raise ValueError("task 'reasoning_gym' needs entry= (the reasoning-gym dataset item)")
    if reference is not None and reference != entry.get("answer"):
        raise ValueError(
            f"reference {reference!r} differs from entry['answer'] {entry.get('answer')!r}; "
            "pass the entry's own answer or reference=None"
        )
    task_name = entry.get("metadata", {}).get("source_dataset")
    if task_name is None:
        raise ValueError("reasoning-gym entry has no metadata['source_dataset'] naming its task")
    return reasoning_gym_score(task_name=task_name, prediction=prediction, entry=entry)


# ----------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------

# Every scorer takes (*, prediction, reference, entry) and returns a float in [0, 1]; `entry` is used by
# reasoning_gym only.
SCORERS: dict[str, Callable[..., float]] = {
    "figfont": lambda *, prediction, reference, entry=None: figfont_score(
        prediction=prediction, reference=reference
    ),
    "gsm8k": lambda *, prediction, reference, entry=None: gsm8k_score(
        prediction=prediction, reference=reference
    ),
    "math": lambda *, prediction, reference, entry=None: math_score(
        prediction=prediction, reference=reference
    ),
    "multiple_choice": lambda *, prediction, reference, entry=None: multiple_choice_score(
        prediction=prediction, reference=reference
    ),
    "reasoning_gym": _reasoning_gym_adapter,
}


def score(task: str, *, prediction: str, reference: str | None, entry: Mapping | None = None) -> float:
    """Score one generated answer for `task` (a key of SCORERS) in [0, 1]."""
    if task not in SCORERS:
        raise ValueError(f"unknown scoring task {task!r}; valid tasks: {sorted(SCORERS)}")
    if task != "reasoning_gym" and reference is None:
        raise ValueError(f"task {task!r} needs a reference answer")
    return SCORERS[task](prediction=prediction, reference=reference, entry=entry)
