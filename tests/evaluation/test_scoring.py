"""Scoring functions: Jaro-Winkler vs jellyfish, a textbook reference and textbook values, multiple choice, GSM8K/MATH500 on real rows."""
import decimal
import json
import random

import pytest

from deft_jax.data.tasks import last_boxed
from deft_jax.evaluation import scoring

# ----------------------------------------------------------------------------------------------------
# Jaro-Winkler / FigFont
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a, b, expected",
    [
        # Textbook values (Winkler 1990; Wikipedia "Jaro-Winkler distance").
        ("MARTHA", "MARHTA", 0.9611),
        ("DWAYNE", "DUANE", 0.8400),
        ("DIXON", "DICKSONX", 0.8133),
        ("CRATE", "TRACE", 0.7333),  # jaro 0.7333, no common prefix
        # 3 matched characters out of order -> t = 3 // 2 = 1 (strcmp95 integer halving), by hand:
        # m = 4, jaro = (4/6 + 4/7 + (4 - 1)/4) / 3; below 0.7, so no prefix boost.
        ("abcbbb", "bcacaba", (4 / 6 + 4 / 7 + 3 / 4) / 3),
        ("ABC", "ABC", 1.0),
        ("ABC", "XYZ", 0.0),
        ("", "", 1.0),
        ("", "A", 0.0),
        ("A", "", 0.0),
        ("martha", "MARTHA", 0.0),  # case-sensitive: no character matches
    ],
)
def test_jaro_winkler_textbook_values(a, b, expected):
    assert scoring.jaro_winkler(a, b) == pytest.approx(expected, abs=1e-4)
    assert scoring.jaro_winkler(b, a) == pytest.approx(expected, abs=1e-4)  # symmetric


def _reference_jaro_winkler(a: str, b: str, *, prefix_weight: float = 0.1) -> float:
    """Independent textbook Jaro-Winkler (Winkler 1990): matches within max(|a|,|b|)//2 - 1 positions,
    t = (out-of-order matches) // 2, jaro = (m/|a| + m/|b| + (m - t)/m) / 3, boost only when jaro > 0.7,
    common prefix capped at 4."""
    if not a and not b:
        return 1.0
    if not a or not b:
        return 0.0
    window = max(max(len(a), len(b)) // 2 - 1, 0)
    taken = [False] * len(b)
    a_matched = []
    for i, char in enumerate(a):
        for j in range(max(0, i - window), min(len(b), i + window + 1)):
            if not taken[j] and b[j] == char:
                taken[j] = True
                a_matched.append(char)
                break
    m = len(a_matched)
    if m == 0:
        return 0.0
    b_matched = [char for char, hit in zip(b, taken) if hit]
    t = sum(x != y for x, y in zip(a_matched, b_matched)) // 2
    jaro = (m / len(a) + m / len(b) + (m - t) / m) / 3
    if jaro <= 0.7:
        return jaro
    prefix = 0
    for x, y in zip(a[:4], b[:4]):
        if x != y:
            break
        prefix += 1
    return jaro + prefix * prefix_weight * (1 - jaro)


def _random_string_pairs(count: int = 3000):
    rng = random.Random(0)
    for _ in range(count):
        alphabet = rng.choice(["ab", "abc", "abcdef", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "aé€ "])
        a = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 9)))
        b = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 9)))
        yield a, b


def test_jaro_winkler_matches_the_textbook_reference_on_random_strings():
    for a, b in _random_string_pairs():
        assert scoring.jaro_winkler(a, b) == pytest.approx(_reference_jaro_winkler(a, b), abs=1e-12), (a, b)


def test_jaro_winkler_matches_jellyfish_on_random_strings():
    jellyfish = pytest.importorskip("jellyfish", reason="jellyfish is a second, independent JW implementation")
    for a, b in _random_string_pairs():
        if a and b:  # jellyfish returns 0 for two empty strings
            assert scoring.jaro_winkler(a, b) == pytest.approx(jellyfish.jaro_winkler_similarity(a, b), abs=1e-12), (a, b)


def test_jaro_winkler_boost_threshold_and_prefix_cap():
    # "AB" vs "AC": jaro = 2/3 <= 0.7, so no prefix boost.
    assert scoring.jaro_winkler("AB", "AC") == pytest.approx(2 / 3)
    # Prefix capped at 4: "ABCDEFX" vs "ABCDEFY" has jaro (6/7 + 6/7 + 1)/3 and a 6-long common prefix.
    jaro = (6 / 7 + 6 / 7 + 1) / 3
    assert scoring.jaro_winkler("ABCDEFX", "ABCDEFY") == pytest.approx(jaro + 4 * 0.1 * (1 - jaro))
    assert scoring.jaro_winkler("ABCDEFX", "ABCDEFY", prefix_weight=0.2) == pytest.approx(jaro + 4 * 0.2 * (1 - jaro))
    with pytest.raises(ValueError, match="prefix_weight"):
        scoring.jaro_winkler("a", "b", prefix_weight=0.3)
    with pytest.raises(TypeError):
        scoring.jaro_winkler("a", None)


def test_figfont_metrics_exact_case_insensitive_and_jaro_winkler():
    assert scoring.figfont_metrics(prediction=" USNIC\n", reference="USNIC") == {
        "exact_match": 1.0, "case_insensitive": 1.0, "jaro_winkler": 1.0}
    assert scoring.figfont_metrics(prediction="usnic", reference="USNIC") == {
        "exact_match": 0.0, "case_insensitive": 1.0, "jaro_winkler": 1.0}
    metrics = scoring.figfont_metrics(prediction="Martha", reference="MARHTA")
    assert metrics["exact_match"] == metrics["case_insensitive"] == 0.0
    assert metrics["jaro_winkler"] == pytest.approx(0.9611, abs=1e-4)


# Realistic endings of medical answers (fine-tuned chat models, base models, greedy short answers).
MULTIPLE_CHOICE_CASES = [
    ("The patient presents with classic signs of hypothyroidism.\n\nThe answer is (C).", "C"),
    ("Answer: B", "B"),
    ("**Answer:** D. Metformin", "D"),
    ("Based on the findings, the most likely diagnosis is Addison disease.\n\nThe correct answer is "
     "**B. Primary adrenal insufficiency**.", "B"),
    ("Let me reason. Option A is too aggressive. Option B ignores the renal function. The best choice "
     "would be (D).", "D"),
    ("## Final Answer\n\\boxed{A}", "A"),
    ("Thus the drug of choice is aspirin, so the final answer is $\\boxed{\\text{E}}$.", "E"),
    ("\\boxed{C. Ceftriaxone}", "C"),
    ("C. Hypertension\n\nExplanation: elevated blood pressure readings on three visits ...", "C"),
    ("**C.** Hypertension is the diagnosis.", "C"),
    ("(B) is correct because the lesion is in the left hemisphere.", "B"),
    ("A 45-year-old man with chest pain most likely has an MI. The answer is D", "D"),
    ("I think it is \\boxed{B} at first, but on reflection the answer is C.", "B"),  # boxed wins
    ("Aspirin is the drug of choice in this setting.", None),  # no letter: 'A' of Aspirin is a word
    ("Answer: Aspirin", None),
    ("The answer is \\boxed{Z}", None),  # not an option letter; no fallback phrase either
]


@pytest.mark.parametrize("text, expected", MULTIPLE_CHOICE_CASES)
def test_extract_choice_letter_on_realistic_outputs(text, expected):
    assert scoring.extract_choice_letter(text, letters="ABCDE") == expected


def test_multiple_choice_score():
    assert scoring.multiple_choice_score(prediction="The answer is (C).", reference="C") == 1.0
    assert scoring.multiple_choice_score(prediction="The answer is (C).", reference="(c)") == 1.0
    assert scoring.multiple_choice_score(prediction="The answer is (C).", reference="B") == 0.0
    assert scoring.multiple_choice_score(prediction="I don't know", reference="B") == 0.0
    assert scoring.score("multiple_choice", prediction="Answer: A", reference="A") == 1.0
    with pytest.raises(ValueError, match="option letters"):
        scoring.multiple_choice_score(prediction="A", reference="Aspirin")


def test_figfont_score_lowercases_and_strips():
    assert scoring.figfont_score(prediction="  usnic\n", reference="USNIC") == 1.0
    assert scoring.figfont_score(prediction="Martha", reference="MARHTA ") == pytest.approx(0.9611, abs=1e-4)
    assert scoring.figfont_score(prediction="", reference="HI") == 0.0
    assert scoring.figfont_score(prediction="ZQ", reference="HI") == 0.0


# ----------------------------------------------------------------------------------------------------
# GSM8K
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("First 3 + 4 = 7, then 7 * 2 = 14.\n#### 14", "14"),
        ("#### 5 is what I wrote, but 99 appears later", "5"),  # #### wins over the last number
        ("I think 12 and 13. The answer is 42. Check: 42 - 30 = 12", "42"),  # "answer is" beats last number
        ("Steps 1, 2.\nFinal answer: 7 apples, not 8", "7"),
        ("The final answer is $\\boxed{9}$. (Earlier I had 3.)", "9"),
        ("We get 10 then 11, so \\boxed{12} and some 13 after", "12"),  # boxed beats the last number
        ("We get 10 then 11, then 12", "12"),  # last number
        ("She pays $1,234.50 in total.", "1234.5"),
        ("That is 3.50 dollars", "3.5"),
        ("The answer is -$5.", "-5"),
        ("The change is \u22127", "-7"),  # unicode minus
        ("A 25% discount", "25"),
        ("It costs $.50", "0.5"),
        ("Pages 3-4", "4"),  # a hyphen between numbers is not a minus sign
        ("1,2345 widgets", "2345"),  # not a thousands separator
        ("He ends with 18.", "18"),  # trailing period
        ("Answer: 0.0", "0"),
        ("no numbers at all", None),
    ],
)
def test_extract_final_number(text, expected):
    assert scoring.extract_final_number(text) == expected


def test_gsm8k_score_exact_match_after_normalisation():
    assert scoring.gsm8k_score(prediction="so she makes $18.00 a day", reference="18") == 1.0
    assert scoring.gsm8k_score(prediction="#### 1,000", reference="1000") == 1.0
    assert scoring.gsm8k_score(prediction="The answer is 3.5", reference="3.50") == 1.0
    assert scoring.gsm8k_score(prediction="The answer is 17", reference="18") == 0.0
    assert scoring.gsm8k_score(prediction="I don't know", reference="18") == 0.0
    assert scoring.gsm8k_score(prediction="#### 18", reference="Working... \n#### 18") == 1.0
    with pytest.raises(ValueError, match="neither a number"):
        scoring.gsm8k_score(prediction="18", reference="eighteen")
    with pytest.raises(ValueError, match="####"):
        scoring.extract_gsm8k_reference("no final line 18")


def _read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_gsm8k_reference_and_self_score_on_every_row(shared_data_dir):
    rows = _read_jsonl(shared_data_dir / "gsm8k_test.jsonl")
    assert len(rows) == 1319
    references = []
    for line, row in enumerate(rows, start=1):
        reference = scoring.extract_gsm8k_reference(row["answer"])
        # Independent parse: the text after the last "####", commas removed.
        independent = decimal.Decimal(row["answer"].rsplit("####", 1)[1].strip().replace(",", ""))
        assert decimal.Decimal(reference) == independent, f"gsm8k_test.jsonl line {line}"
        assert scoring.gsm8k_score(prediction=row["answer"], reference=reference) == 1.0, line
        references.append(reference)
    # A row's answer scored against a different row's (different) reference is 0.
    for line, (row, other) in enumerate(zip(rows, references[1:]), start=1):
        if other != references[line - 1]:
            assert scoring.gsm8k_score(prediction=row["answer"], reference=other) == 0.0, line


def test_gsm8k_last_number_fallback_on_real_solutions(shared_data_dir):
    """The worked solutions without their '####' line: last-number extraction recovers most answers."""
    rows = _read_jsonl(shared_data_dir / "gsm8k_test.jsonl")
    hits = sum(
        scoring.gsm8k_score(prediction=row["answer"].rsplit("####", 1)[0], reference=row["answer"])
        for row in rows
    )
    assert hits / len(rows) > 0.95  # measured 1283/1319; misses end with e.g. "... in the 40 minutes"


# ----------------------------------------------------------------------------------------------------
# MATH
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prediction, reference",
    [
        ("The answer is $\\boxed{0.5}$", "\\frac{1}{2}"),
        ("$\\boxed{\\dfrac{1}{2}}$", "\\frac12"),
        ("\\boxed{\\sqrt{8}}", "2\\sqrt{2}"),
        ("\\boxed{[1, 3)}", "[1,3)"),
        ("\\boxed{(-\\infty, 2] \\cup [3, \\infty)}", "(-\\infty,2]\\cup[3,\\infty)"),
        ("\\boxed{x = 3}", "3"),
        ("\\boxed{2,1}", "1,2"),
        ("First \\boxed{4}, corrected: \\boxed{5}", "5"),  # the last box is the answer
        ("\\fbox{7}", "7"),
        ("so the final answer is $7$.", "7"),  # no box: math-verify's own extraction
    ],
)
def test_math_score_equivalent(prediction, reference):
    assert scoring.math_score(prediction=prediction, reference=reference) == 1.0


@pytest.mark.parametrize(
    "prediction, reference",
    [
        ("\\boxed{(1, 3)}", "[1,3)"),
        ("\\boxed{0.51}", "\\frac{1}{2}"),
        ("\\boxed{3.14}", "\\pi"),
        ("\\boxed{3}", "2"),
        ("\\boxed{5} then \\boxed{4}", "5"),
        ("\\boxed{}", "5"),
        ("I could not solve it.", "5"),
        ("", "5"),
    ],
)
def test_math_score_not_equivalent(prediction, reference):
    assert scoring.math_score(prediction=prediction, reference=reference) == 0.0


def test_math500_solutions_score_against_their_answers(shared_data_dir):
    rows = _read_jsonl(shared_data_dir / "math500_test.jsonl")
    assert len(rows) == 500
    # Independent check of last_boxed: the dataset's `answer` is the last box of its `solution`.
    boxed_mismatch = [i for i, r in enumerate(rows) if last_boxed(r["solution"]) != r["answer"]]
    assert not boxed_mismatch, boxed_mismatch
    failures = [
        (i, r["answer"])
        for i, r in enumerate(rows)
        if scoring.math_score(prediction=r["solution"], reference=r["answer"]) != 1.0
    ]
    assert not failures, f"{len(failures)}/500 MATH500 solutions fail their own answer: {failures}"
    # ... and a solution scored against another problem's (different) answer is not equivalent.
    wrong = sum(
        scoring.math_score(prediction=r["solution"], reference=other["answer"])
        for r, other in zip(rows[:100], rows[1:101])
        # "x=5" vs "5" is equivalent for math-verify (an assignment compares by its value).
        if r["answer"] != other["answer"] and "=" not in r["answer"] + other["answer"]
    )
    assert wrong == 0.0


# ----------------------------------------------------------------------------------------------------
# reasoning-gym
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task_name", ["basic_arithmetic", "letter_counting"])
def test_reasoning_gym_score_delegates_to_dataset(task_name):
    import reasoning_gym

    dataset = reasoning_gym.create_dataset(task_name, size=5, seed=3)
    for entry in dataset:
        own = scoring.reasoning_gym_score(task_name=task_name, prediction=entry["answer"], entry=entry)
        assert own == 1.0
        padded = f" {entry['answer']}\n"
        assert scoring.reasoning_gym_score(task_name=task_name, prediction=padded, entry=entry) == 1.0
        wrong = str(int(entry["answer"]) + 1)
        assert scoring.reasoning_gym_score(task_name=task_name, prediction=wrong, entry=entry) < 1.0
        assert scoring.score("reasoning_gym", prediction=entry["answer"], reference=None, entry=entry) == 1.0


def test_reasoning_gym_score_rejects_mismatched_inputs():
    import reasoning_gym

    entry = reasoning_gym.create_dataset("basic_arithmetic", size=1, seed=3)[0]
    with pytest.raises(ValueError, match="not 'letter_counting'"):
        scoring.reasoning_gym_score(task_name="letter_counting", prediction="1", entry=entry)
    with pytest.raises(ValueError, match="unknown reasoning-gym task"):
        scoring.reasoning_gym_score(task_name="no_such_task", prediction="1", entry={"answer": "1"})
    with pytest.raises(ValueError, match="dataset item"):
        scoring.reasoning_gym_score(task_name="basic_arithmetic", prediction="1", entry="1")
    with pytest.raises(ValueError, match="differs from entry"):
        scoring.score("reasoning_gym", prediction="1", reference="not the answer", entry=entry)
    with pytest.raises(ValueError, match="needs entry"):
        scoring.score("reasoning_gym", prediction="1", reference="1")


# ----------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------


def test_registry_dispatch_and_unknown_task():
    assert set(scoring.SCORERS) == {"figfont", "gsm8k", "math", "multiple_choice", "reasoning_gym"}
    figfont = scoring.score("figfont", prediction="martha", reference="MARHTA")
    assert figfont == pytest.approx(0.9611, abs=1e-4)
    assert scoring.score("gsm8k", prediction="#### 18", reference="18") == 1.0
    assert scoring.score("math", prediction="\\boxed{0.5}", reference="\\frac{1}{2}") == 1.0
    with pytest.raises(ValueError, match=r"unknown scoring task 'mmlu'.*figfont.*gsm8k.*math.*reasoning_gym"):
        scoring.score("mmlu", prediction="a", reference="a")
    with pytest.raises(ValueError, match="needs a reference"):
        scoring.score("gsm8k", prediction="18", reference=None)
