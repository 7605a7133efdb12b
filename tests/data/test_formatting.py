"""Chat formatting, the loss mask (real SmolLM2 tokenizer), truncation policies and label noise."""
import dataclasses
import re

import numpy as np
import pytest

from deft_jax.data import (
    DataError,
    Example,
    default_data_config,
    inject_label_noise,
    load_examples,
    make_eval_batches,
    make_generation_prompts,
    make_train_iterator,
    tokenize_examples,
)

# The official FigFont prompt for ChatML models (luludus/DEFT data/data_process_figfont.py, QWEN_PROMPT).
OFFICIAL_FIGFONT_CHATML = (
    "<|im_start|>system\nYou are an expert at decoding Figlet Font ASCII art. When given Figlet Font text, "
    "identify the word it represents and output only that without any explanations or additional text."
    "<|im_end|>\n<|im_start|>user\n{prompt}\n<|im_end|>\n<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def smollm2():
    from deft_jax.model.tokenizer import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


def chat_example(response="Blue, then 42 — and café.\nDone!"):
    messages = (
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Red."},
        {"role": "user", "content": "Another one, with a number?"},
    )
    return Example(messages=messages, response=response, index=0, source="test:1", task="jsonl")


def test_supervised_tokens_decode_to_response_plus_eos(smollm2):
    cfg = default_data_config()
    example = chat_example()
    (tokenized,), report = tokenize_examples([example], tokenizer=smollm2, cfg=cfg)
    assert report.num_kept == 1 and report.num_over_length == 0
    batch = next(make_train_iterator([tokenized], batch_size=1, seq_len=cfg.max_length, seed=0, packing=False))
    mask = batch["loss_mask"][0] == 1.0
    supervised = batch["targets"][0][mask]
    assert smollm2.decode(supervised) == example.response + "<|im_end|>"
    assert supervised[-1] == smollm2.eos_id
    # Everything before the first supervised target is the chat-templated prompt, and nothing else.
    first = int(np.argmax(mask))
    prompt = np.concatenate([batch["inputs"][0][:1], batch["targets"][0][:first]])
    assert smollm2.decode(prompt) == smollm2.apply_chat_template([dict(m) for m in example.messages])
    assert smollm2.decode(prompt).endswith("<|im_start|>assistant\n")
    assert mask.sum() == batch["segment_ids"][0].sum() - first  # one contiguous supervised span to the end


def test_figfont_prompt_is_the_papers_chatml_prompt(smollm2):
    cfg = default_data_config()
    cfg.num_train, cfg.num_eval = 2, 1
    import reasoning_gym

    reference = reasoning_gym.create_dataset("figlet_font", size=10, seed=42, min_word_len=2, max_word_len=5,
                                             space_letters=True)
    for example in load_examples(cfg, split="train"):
        rendered = smollm2.apply_chat_template([dict(m) for m in example.messages], add_generation_prompt=True)
        assert rendered == OFFICIAL_FIGFONT_CHATML.format(prompt=reference[example.index]["question"])
    prompts = make_generation_prompts(load_examples(cfg, split="eval"), tokenizer=smollm2)
    assert smollm2.decode(prompts[0].prompt_ids) == OFFICIAL_FIGFONT_CHATML.format(
        prompt=reference[40000]["question"])
    assert prompts[0].reference == reference[40000]["answer"] and prompts[0].scoring_task == "figfont"


def test_truncation_policies_and_report(tiny_tokenizer):
    tokenizer = tiny_tokenizer
    examples = [
        Example(messages=({"role": "user", "content": "hi"},), response="short", index=0, source="s:1", task="x"),
        Example(messages=({"role": "user", "content": "hi"},), response="long answer " * 20, index=1,
                source="s:2", task="x"),
        Example(messages=({"role": "user", "content": "the prompt " * 40},), response="r", index=2,
                source="s:3", task="x"),
    ]
    prompt_lengths = [len(tokenizer.encode(tokenizer.apply_chat_template([dict(m) for m in e.messages])))
                      for e in examples]
    lengths = [p + len(tokenizer.encode(e.response)) + 1 for p, e in zip(prompt_lengths, examples)]
    max_length = 40
    assert lengths[0] <= max_length < lengths[1] and prompt_lengths[1] < max_length <= prompt_lengths[2]
    cfg = default_data_config()
    cfg.max_length = max_length

    cfg.truncation = "drop"
    kept, report = tokenize_examples(examples, tokenizer=tokenizer, cfg=cfg)
    assert [k.index for k in kept] == [0]
    assert (report.num_over_length, report.num_dropped, report.num_truncated, report.longest) == (2, 2, 0, max(lengths))

    cfg.truncation = "truncate"
    kept, report = tokenize_examples(examples, tokenizer=tokenizer, cfg=cfg)
    assert [k.index for k in kept] == [0, 1]  # example 2's prompt alone fills max_length: nothing to supervise
    assert (report.num_over_length, report.num_truncated, report.num_dropped) == (2, 1, 1)
    full = tokenizer.encode(tokenizer.apply_chat_template([dict(m) for m in examples[1].messages])) + \
        tokenizer.encode(examples[1].response)
    np.testing.assert_array_equal(kept[1].tokens, full[:max_length])
    assert kept[1].loss_mask().sum() == max_length - prompt_lengths[1]

    cfg.truncation = "error"
    with pytest.raises(DataError, match="s:2: .* exceed data.max_length=40"):
        tokenize_examples(examples, tokenizer=tokenizer, cfg=cfg)


def test_eval_batches_fixed_order_weights_and_sharding(tiny_tokenizer):
    tokenizer = tiny_tokenizer
    examples = [Example(messages=({"role": "user", "content": f"q{i}"},), response="a" * (i + 1), index=100 + i,
                        source=f"s:{i}", task="x") for i in range(7)]
    cfg = default_data_config()
    tokenized, _ = tokenize_examples(examples, tokenizer=tokenizer, cfg=cfg)
    single = make_eval_batches(tokenized, batch_size=4, seq_len=64)
    assert len(single) == 2
    np.testing.assert_array_equal(single[1]["weights"], [1, 1, 1, 0])
    np.testing.assert_array_equal(np.concatenate([b["example_index"] for b in single]),
                                  [100, 101, 102, 103, 104, 105, 106, -1])
    assert single[1]["loss_mask"][3].sum() == 0 and single[1]["segment_ids"][3].sum() == 0
    shards = [make_eval_batches(tokenized, batch_size=2, seq_len=64, process_index=p, process_count=2)
              for p in range(2)]
    assert len(shards[0]) == len(shards[1]) == 2
    for step in range(2):
        for key in ("inputs", "loss_mask", "example_index", "weights"):
            np.testing.assert_array_equal(
                np.concatenate([shards[0][step][key], shards[1][step][key]]), single[step][key])


# ------------------------------------------------------------------------------------------ label noise


def test_figfont_label_noise():
    cfg = default_data_config()
    cfg.num_train, cfg.num_eval = 40, 1
    clean = load_examples(cfg, split="train")
    cfg.noise_fraction, cfg.noise_seed = 0.25, 5
    noisy = load_examples(cfg, split="train")
    changed = [n.index for c, n in zip(clean, noisy) if c.response != n.response]
    assert len(changed) == 10
    assert changed == [n.index for n in noisy if n.corrupted]
    from deft_jax.data.tasks import FIGFONT_DATASET_KWARGS, figfont_words

    words = {w.upper() for w in figfont_words(FIGFONT_DATASET_KWARGS, seed=42)}
    for c, n in zip(clean, noisy):
        assert n.reference == c.reference == c.response  # the truth stays for evaluation
        if n.corrupted:
            assert n.response in words and 2 <= len(n.response) <= 5 and n.response.isupper()
    assert [n.response for n in load_examples(cfg, split="train")] == [n.response for n in noisy]  # seeded
    cfg.noise_seed = 6
    assert [n.index for n in load_examples(cfg, split="train") if n.corrupted] != changed


def test_gsm8k_label_noise(shared_data_dir):
    cfg = default_data_config()
    cfg.task, cfg.path, cfg.num_train = "gsm8k", str(shared_data_dir / "gsm8k_test.jsonl"), 200
    clean = load_examples(cfg, split="train")
    noisy, report = inject_label_noise(clean, fraction=0.5, seed=1, task="gsm8k")
    assert len(report.corrupted_indices) == 100
    assert sorted(n.index for n in noisy if n.corrupted) == list(report.corrupted_indices)
    for c, n in zip(clean, noisy):
        if not n.corrupted:
            assert n == c
            continue
        clean_lines, noisy_lines = c.response.split("\n"), n.response.split("\n")
        assert clean_lines[:-1] == noisy_lines[:-1]  # the reasoning is untouched
        clean_number = float(c.response.split("####")[-1].replace(",", ""))
        noisy_number = float(re.fullmatch(r"#### (-?[\d.]+)", noisy_lines[-1])[1])
        assert noisy_number != clean_number and n.reference == c.reference
    with pytest.raises(DataError, match="'#### N'"):
        inject_label_noise([dataclasses.replace(clean[0], response="no final line")], fraction=1.0, seed=0,
                           task="gsm8k")
