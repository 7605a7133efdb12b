"""Nothing silent in the data: dropped examples name their file and lines, and token ids outside the model's
vocabulary name the example."""

import dataclasses
import json
import numpy as np
import pytest


def _jsonl_examples(path, rows, **fields):
    from deft_jax.data import default_data_config, load_examples

    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    cfg = default_data_config()
    cfg.task, cfg.path = "jsonl", str(path)
    for name, value in fields.items():
        cfg[name] = value
    return load_examples(cfg, split="train"), cfg


def test_dropping_every_example_names_the_file_and_lines(tmp_path, tiny_tokenizer):
    from deft_jax.data import DataError, tokenize_examples

    path = tmp_path / "long.jsonl"
    examples, cfg = _jsonl_examples(path, [{"prompt": "long " * (40 + i), "response": "ok"} for i in range(8)],
                                    max_length=32, truncation="drop")
    with pytest.raises(DataError) as info:
        tokenize_examples(examples, tokenizer=tiny_tokenizer, cfg=cfg)
    message = str(info.value)
    assert "no example left after truncation 'drop' at max_length 32" in message and "\n" not in message
    assert all(f"{path}:{line} (" in message for line in range(1, 6)) and f"{path}:6 (" not in message
    assert "and 3 more" in message and "'jsonl'" in message


def test_the_report_names_the_first_dropped_examples(tmp_path, tiny_tokenizer):
    from deft_jax.data import tokenize_examples

    path = tmp_path / "mixed.jsonl"
    rows = [{"prompt": "long " * 60 if i in (2, 5) else "short", "response": "ok"} for i in range(7)]
    examples, cfg = _jsonl_examples(path, rows, max_length=32, truncation="drop")
    kept, report = tokenize_examples(examples, tokenizer=tiny_tokenizer, cfg=cfg)
    assert len(kept) == 5 and report.num_dropped == 2
    assert [name.split(" (")[0] for name in report.over_length] == [f"{path}:3", f"{path}:6"]
    assert f"over length: {path}:3 (" in report.summary() and "more" not in report.summary()


def test_token_ids_outside_the_model_vocabulary_are_rejected_naming_the_example(tmp_path, tiny_tokenizer):
    from deft_jax.data import DataError, check_token_range, tokenize_examples

    path = tmp_path / "d.jsonl"
    examples, cfg = _jsonl_examples(path, [{"prompt": "the quick brown fox", "response": "THE QUICK"},
                                           {"prompt": "0123456789", "response": "9"}])
    tokenizer = tiny_tokenizer
    kept, _ = tokenize_examples(examples, tokenizer=tokenizer, cfg=cfg, vocab_size=tokenizer.vocab_size)
    largest = max(int(example.tokens.max()) for example in kept)
    check_token_range(kept, vocab_size=largest + 1)  # every id inside: no error
    with pytest.raises(DataError, match=rf"outside \[0, {largest}\).*{path}:\d \(id {largest} at token \d+\)"):
        tokenize_examples(examples, tokenizer=tokenizer, cfg=cfg, vocab_size=largest)
    negative = [dataclasses.replace(kept[0], tokens=np.concatenate([kept[0].tokens, [-1]]).astype(np.int32))]
    with pytest.raises(DataError, match=rf"{path}:1 \(id -1 at token {kept[0].length}\)"):
        check_token_range(negative, vocab_size=largest + 1)
