"""Data sources and tasks: layouts, clear errors on bad input, FigFont vs reasoning-gym, splits, TFDS."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from deft_jax.data import (
    DataError,
    default_data_config,
    load_examples,
    tokenize_examples,
    validate_data_config,
)

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Red."},
    {"role": "user", "content": "Another one?"},
    {"role": "assistant", "content": "Blue."},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def file_config(path, *, task="jsonl", **fields):
    cfg = default_data_config()
    cfg.task = task
    cfg.path = str(path)
    for name, value in fields.items():
        cfg[name] = value
    return cfg


@pytest.mark.parametrize(
    "row, prompt, response",
    [
        ({"prompt": "P1", "response": "R1"}, "P1", "R1"),
        ({"question": "Q1", "answer": "A1", "idx": 3}, "Q1", "A1"),
        ({"problem": "X1", "solution": "S1"}, "X1", "S1"),
    ],
)
def test_prompt_response_layouts_are_detected(tmp_path, row, prompt, response):
    path = write_jsonl(tmp_path / "d.jsonl", [row])
    (example,) = load_examples(file_config(path), split="train")
    assert example.messages == ({"role": "user", "content": prompt},)
    assert example.response == response
    assert example.source == f"{path}:1"


def test_messages_layout_last_assistant_turn_is_the_target(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CHAT}])
    (example,) = load_examples(file_config(path), split="train")
    assert example.response == "Blue."
    assert list(example.messages) == CHAT[:-1]


def test_configured_field_names_and_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([{"q": "one?", "a": "1"}, {"q": "two?", "a": "2"}]), path)
    examples = load_examples(file_config(path, task="parquet", prompt_field="q", response_field="a"), split="train")
    assert [(e.messages[0]["content"], e.response) for e in examples] == [("one?", "1"), ("two?", "2")]
    chat_path = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist([{"conv": CHAT}]), chat_path)
    (example,) = load_examples(file_config(chat_path, task="parquet", messages_field="conv"), split="train")
    assert example.response == "Blue." and list(example.messages) == CHAT[:-1]


def test_system_prompt_from_config_and_conflict(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "P", "response": "R"}])
    (example,) = load_examples(file_config(path, system_prompt="SYS"), split="train")
    assert example.messages == ({"role": "system", "content": "SYS"}, {"role": "user", "content": "P"})
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CHAT}])
    with pytest.raises(DataError, match="own system turn"):
        load_examples(file_config(chat, system_prompt="SYS"), split="train")


# ------------------------------------------------------------------------------------------ bad input


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a", "response": \n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:2: malformed JSON"):
        load_examples(file_config(path), split="train")


def test_missing_field_names_field_and_fields_present(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}, {"question": "q", "reply": "a"}])
    with pytest.raises(DataError) as error:
        load_examples(file_config(path), split="train")
    message = str(error.value)
    assert f"{path}:2" in message and "'answer'" in message and "['question', 'reply']" in message


def test_unknown_layout_lists_fields(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"input": "q", "output": "a"}])
    with pytest.raises(DataError, match=r"fields present: \['input', 'output'\].*prompt_field"):
        load_examples(file_config(path), split="train")


@pytest.mark.parametrize("response", ["", "   \n"])
def test_empty_response_is_an_error(tmp_path, response):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "response": "r"}, {"prompt": "p", "response": response}])
    with pytest.raises(DataError, match=rf"{path}:2: field 'response' is empty"):
        load_examples(file_config(path), split="train")
    chat = write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                            {"role": "assistant", "content": response}]}])
    with pytest.raises(DataError, match="target .* is empty"):
        load_examples(file_config(chat), split="train")


def test_non_utf8_file_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    latin1_line = '{"prompt": "café", "response": "x"}\n'.encode("latin-1")
    path.write_bytes(b'{"prompt": "ok", "response": "ok"}\n' + latin1_line)
    with pytest.raises(DataError, match=rf"{path}:2: not valid UTF-8"):
        load_examples(file_config(path), split="train")


def test_messages_errors(tmp_path):
    trailing = write_jsonl(tmp_path / "t.jsonl", [{"messages": CHAT + [{"role": "user", "content": "more"}]}])
    with pytest.raises(DataError, match="follow the last assistant turn"):
        load_examples(file_config(trailing), split="train")
    bad_role = write_jsonl(tmp_path / "r.jsonl", [{"messages": [{"role": "human", "content": "x"}]}])
    with pytest.raises(DataError, match="role 'human'"):
        load_examples(file_config(bad_role), split="train")


def test_sequence_longer_than_max_length_under_error_policy(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "short", "response": "ok"},
                                              {"prompt": "long " * 200, "response": "ok"}])
    cfg = file_config(path, max_length=64, truncation="error")
    examples = load_examples(cfg, split="train")
    with pytest.raises(DataError, match=rf"{path}:2: \d+ tokens .* exceed data.max_length=64"):
        tokenize_examples(examples, tokenizer=tiny_tokenizer, cfg=cfg)


def test_unknown_reasoning_gym_task_lists_close_matches():
    cfg = default_data_config()
    cfg.task = "reasoning_gym:figlet_fnt"
    with pytest.raises(DataError, match=r"unknown reasoning-gym task 'figlet_fnt'; close matches: \['figlet_font'"):
        load_examples(cfg, split="train")


def test_missing_file_and_config_errors_name_the_field(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_examples(file_config(tmp_path / "nope.jsonl"), split="train")
    cfg = default_data_config()
    cfg.truncation = "left"
    with pytest.raises(DataError, match="config.data.truncation"):
        validate_data_config(cfg)
    cfg = default_data_config()
    cfg.task = "gsm8k"
    with pytest.raises(DataError, match="config.data.path.*data_path=<file>"):
        validate_data_config(cfg)
    cfg = default_data_config()
    cfg.noise_fraction = 0.1
    cfg.task = "math"
    cfg.path = "x.jsonl"
    with pytest.raises(DataError, match="config.data.noise_fraction"):
        validate_data_config(cfg)


# ------------------------------------------------------------------------------------------ tasks


def test_figfont_matches_reasoning_gym_and_ranges_do_not_overlap():
    import reasoning_gym

    # The paper's own construction (luludus/DEFT data/data_process_figfont.py).
    reference = reasoning_gym.create_dataset("figlet_font", size=10, seed=42, min_word_len=2, max_word_len=5,
                                             space_letters=True)
    cfg = default_data_config()
    cfg.num_train, cfg.num_eval = 3, 3
    train, evaluation = load_examples(cfg, split="train"), load_examples(cfg, split="eval")
    assert [e.index for e in train] == [0, 1, 2] and [e.index for e in evaluation] == [40000, 40001, 40002]
    for example in train + evaluation:
        item = reference[example.index]
        assert example.response == item["answer"] == example.reference
        assert example.messages[-1] == {"role": "user", "content": item["question"] + "\n"}
        assert example.messages[0]["content"].startswith("You are an expert at decoding Figlet Font ASCII art.")
        assert 2 <= len(example.response) <= 5 and example.response.isupper()
        assert example.scoring_task == "figfont"
    cfg.num_train = 40001  # items 0..40000 would reach into the eval range
    with pytest.raises(DataError, match=r"overlap eval items \[40000, 40003\)"):
        load_examples(cfg, split="train")


def test_other_reasoning_gym_task_by_name():
    import reasoning_gym

    cfg = default_data_config()
    cfg.task = "reasoning_gym:number_sorting"
    cfg.rg_seed, cfg.num_train, cfg.num_eval, cfg.rg_eval_start = 7, 2, 2, 100
    reference = reasoning_gym.create_dataset("number_sorting", size=200, seed=7)
    for split in ("train", "eval"):
        for example in load_examples(cfg, split=split):
            item = reference[example.index]
            assert example.response == item["answer"] and example.messages == (
                {"role": "user", "content": item["question"]},)
            assert example.scoring_task == "reasoning_gym" and example.entry["answer"] == item["answer"]


def test_gsm8k_file_deterministic_split_and_references(shared_data_dir):
    path = shared_data_dir / "gsm8k_test.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    cfg = file_config(path, task="gsm8k", eval_fraction=0.1, split_seed=3)
    train, evaluation = load_examples(cfg, split="train"), load_examples(cfg, split="eval")
    train_ids, eval_ids = [e.index for e in train], [e.index for e in evaluation]
    assert len(eval_ids) == round(0.1 * len(rows)) and len(train_ids) + len(eval_ids) == len(rows)
    assert not set(train_ids) & set(eval_ids)
    assert train_ids == sorted(train_ids) and eval_ids == sorted(eval_ids)  # file order kept
    assert [e.index for e in load_examples(cfg, split="eval")] == eval_ids  # deterministic
    cfg.split_seed = 4
    assert [e.index for e in load_examples(cfg, split="eval")] != eval_ids
    for example in evaluation:
        row = rows[example.index]
        assert example.messages[-1]["content"] == row["question"] and example.response == row["answer"]
        assert example.reference == row["answer"].split("####")[-1].strip()
        assert example.scoring_task == "gsm8k"


def test_math_file_references(shared_data_dir):
    path = shared_data_dir / "math500_test.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    cfg = file_config(path, task="math", num_train=50)
    examples = load_examples(cfg, split="train")
    assert [e.reference for e in examples] == [row["answer"] for row in rows[:50]]
    assert [e.response for e in examples] == [row["solution"] for row in rows[:50]]
    with pytest.raises(DataError, match="num_train=5000 but the split has only 500"):
        load_examples(file_config(path, task="math", num_train=5000), split="train")


def test_math_boxed_fallback():
    from deft_jax.data.tasks import last_boxed

    assert last_boxed(r"so \boxed{1} then \boxed{\frac{1}{2}} done") == r"\frac{1}{2}"
    assert last_boxed("no box") is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("\\boxed{1} then \\boxed{\\{x \\mid x>0\\}}", "\\{x \\mid x>0\\}"),  # last, escaped braces
        ("\\boxed{a_{1}^{2}}", "a_{1}^{2}"),  # nested braces
        ("\\fbox{7}", "7"),
        ("$\\boxed 5$", "5"),
        ("\\boxed {3}", "3"),
        ("answer \\boxed{\\frac{1}{2", None),  # cut off inside the box
        ("no box here", None),
        ("\\boxedx{3}", None),  # a different command
        # Where the two extractors this one replaces disagreed:
        ("first \\boxed{3}, then $\\boxed 5$.", "5"),  # \boxed 5 is a box (the data side skipped it for 3)
        ("$\\boxed 12$", "12"),  # no brace: up to the next $
        ("\\boxed5", "5"),
        ("x \\boxed{x \\right\\}} y", "x \\right\\"),  # escaped braces count, as the graders count them
        ("\\boxed{\\left\\{ 1 \\right.}", None),  # so an unmatched \{ leaves the box open
        ("\\boxed{}", ""),
        ("\\boxed $", None),
    ],
)
def test_last_boxed(text, expected):
    from deft_jax.data.tasks import last_boxed

    assert last_boxed(text) == expected


@pytest.mark.parametrize("text", [
    "so $\\boxed{\\frac{1}{2}}$.", "\\boxed{a_{1}^{2}}", "\\fbox{7}", "\\boxed {3}",
    "\\boxed{\\{1, 2\\} \\cup \\{3\\}}", "x \\boxed{x \\right\\}} y", "\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}",
])
def test_last_boxed_reads_a_braced_box_as_math_verify_does(text):
    from latex2sympy2_extended.math_normalization import extract_boxed_content

    from deft_jax.data.tasks import last_boxed

    assert last_boxed(text) == extract_boxed_content(text, mode="last")


# ------------------------------------------------------------------------------------------ TFDS


def test_tfds_build_and_read_back_formats_identically(tmp_path, shared_data_dir, tiny_tokenizer):
    import tensorflow_datasets as tfds

    from deft_jax.data.tfds_builder import build_tfds_dataset

    gsm8k = shared_data_dir / "gsm8k_test.jsonl"
    rows = [json.loads(line) for line in gsm8k.read_text(encoding="utf-8").splitlines()[:12]]
    train_file = write_jsonl(tmp_path / "train.jsonl", rows[:8])
    test_file = write_jsonl(tmp_path / "test.jsonl", rows[8:])
    direct = file_config(train_file, task="gsm8k", eval_path=str(test_file), max_length=4096)
    name = build_tfds_dataset(name="gsm8k_small", data_dir=tmp_path / "tfds",
                              split_files={"train": train_file, "test": test_file}, cfg=direct)
    assert name == "deft_sft_files/gsm8k_small"

    raw = tfds.data_source(name, data_dir=str(tmp_path / "tfds"), split="test")
    assert len(raw) == 4 and raw[0]["messages"]["content"][-1].decode() == rows[8]["answer"]

    via_tfds = default_data_config()
    via_tfds.task, via_tfds.tfds_name, via_tfds.tfds_data_dir = "tfds", name, str(tmp_path / "tfds")
    via_tfds.max_length = 4096
    tokenizer = tiny_tokenizer
    for split in ("train", "eval"):
        a = load_examples(direct, split=split)
        b = load_examples(via_tfds, split=split)
        assert [(e.messages, e.response, e.index, e.reference, e.scoring_task) for e in a] == [
            (e.messages, e.response, e.index, e.reference, e.scoring_task) for e in b]
        tokens_a, _ = tokenize_examples(a, tokenizer=tokenizer, cfg=direct)
        tokens_b, _ = tokenize_examples(b, tokenizer=tokenizer, cfg=via_tfds)
        for x, y in zip(tokens_a, tokens_b, strict=True):
            np.testing.assert_array_equal(x.tokens, y.tokens)
            assert x.prompt_length == y.prompt_length
    with pytest.raises(DataError, match="already exists"):
        build_tfds_dataset(name="gsm8k_small", data_dir=tmp_path / "tfds", split_files={"train": train_file},
                           cfg=direct)
    missing = default_data_config()
    missing.task, missing.tfds_name, missing.tfds_data_dir = "tfds", "deft_sft_files/nope", str(tmp_path / "tfds")
    with pytest.raises(DataError, match="cannot open TFDS dataset 'deft_sft_files/nope'"):
        load_examples(missing, split="train")
