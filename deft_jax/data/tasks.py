"""Tasks: FigFont and other reasoning-gym datasets generated locally, GSM8K / MATH / chat files, TFDS.

`load_examples(cfg, split=...)` is the entry point: it reads (or generates) the split, applies the
deterministic train/eval split and the size limits, adds the system prompt and, for the train split,
the label noise.

FigFont follows the paper's data script (luludus/DEFT data/data_process_figfont.py):
reasoning_gym.create_dataset('figlet_font', seed=42, min_word_len=2, max_word_len=5, space_letters=True),
train items 0-39,999, test items 40,000-44,999; the system prompt is the paper's; the user turn is the
item's question followed by '\\n', which makes the ChatML rendering byte-identical to the paper's
hard-coded Qwen prompt; the target is the upper-case word.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import re
from typing import Any, Mapping, Sequence

import numpy as np

from deft_jax.data import config as config_lib
from deft_jax.data import noise as noise_lib
from deft_jax.data import sources
from deft_jax.data.records import DataError, Example

FIGFONT_SYSTEM_PROMPT = (
    "You are an expert at decoding Figlet Font ASCII art. When given Figlet Font text, identify the word "
    "it represents and output only that without any explanations or additional text."
)
FIGFONT_DATASET = "figlet_font"
FIGFONT_DATASET_KWARGS = {"min_word_len": 2, "max_word_len": 5, "space_letters": True}
DEFAULT_RG_NUM_TRAIN = 40_000
DEFAULT_RG_NUM_EVAL = 5_000
TASK_SYSTEM_PROMPTS = {"figfont": FIGFONT_SYSTEM_PROMPT}
SPLITS = ("train", "eval")
_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


# ------------------------------------------------------------------------------------------------------
# reasoning-gym (FigFont included).


def check_reasoning_gym_task(name: str) -> str:
    """`name` if reasoning-gym registers it; else a DataError listing close matches."""
    from reasoning_gym.factory import DATASETS

    if name not in DATASETS:
        close = difflib.get_close_matches(name, sorted(DATASETS), n=5, cutoff=0.5)
        hint = f"close matches: {close}" if close else "no close match"
        raise DataError(
            f"unknown reasoning-gym task {name!r}; {hint}. All {len(DATASETS)} tasks are listed in "
            "reasoning_gym.factory.DATASETS."
        )
    return name


def reasoning_gym_name(task: str) -> str:
    """'figfont' -> 'figlet_font'; 'reasoning_gym:<name>' -> '<name>' (checked)."""
    if task == "figfont":
        return FIGFONT_DATASET
    if not task.startswith(config_lib.REASONING_GYM_PREFIX):
        raise DataError(f"task {task!r} is not a reasoning-gym task")
    return check_reasoning_gym_task(task[len(config_lib.REASONING_GYM_PREFIX):])


def _plain_dict(mapping) -> dict[str, Any]:
    """A ConfigDict / FrozenConfigDict / dict of scalars as a plain dict."""
    return {key: mapping[key] for key in mapping.keys()}


def dataset_kwargs(*, task: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The reasoning-gym dataset kwargs: FigFont's paper settings (for figfont) updated by `overrides`."""
    base = dict(FIGFONT_DATASET_KWARGS) if task == "figfont" else {}
    base.update(dict(overrides))
    return base


@functools.lru_cache(maxsize=16)
def _cached_dataset(name: str, seed: int, size: int, kwargs_json: str):
    import reasoning_gym

    kwargs = json.loads(kwargs_json)
    try:
        return reasoning_gym.create_dataset(name, seed=seed, size=size, **kwargs)
    except (TypeError, AssertionError, ValueError) as error:
        raise DataError(
            f"reasoning-gym dataset {name!r} rejected its settings (data.rg_kwargs={kwargs}, seed={seed}, "
            f"size={size}): {type(error).__name__}: {error}"
        ) from None


def reasoning_gym_dataset(*, name: str, seed: int, size: int, kwargs: Mapping[str, Any]):
    """reasoning_gym.create_dataset(name, seed=seed, size=size, **kwargs), cached."""
    return _cached_dataset(name, seed, size, json.dumps(dict(kwargs), sort_keys=True))


def reasoning_gym_items(*, name: str, seed: int, start: int, count: int, kwargs: Mapping[str, Any]) -> list[dict]:
    """Items start .. start+count-1 of the dataset (items are generated per index from seed + index)."""
    dataset = reasoning_gym_dataset(name=name, seed=seed, size=start + count, kwargs=kwargs)
    return [dataset[index] for index in range(start, start + count)]


def figfont_words(kwargs: Mapping[str, Any], *, seed: int) -> list[str]:
    """FigFont's word list in its configured length range (the pool label noise draws from)."""
    dataset = reasoning_gym_dataset(name=FIGFONT_DATASET, seed=seed, size=1, kwargs=kwargs)
    return list(dataset.words)


def reasoning_gym_examples(*, task: str, seed: int, start: int, count: int, kwargs: Mapping[str, Any]) -> list[Example]:
    """Examples from reasoning-gym items: user turn = question, target = answer, entry = the item."""
    name = reasoning_gym_name(task)
    examples = []
    for offset, item in enumerate(reasoning_gym_items(name=name, seed=seed, start=start, count=count, kwargs=kwargs)):
        index = start + offset
        answer = str(item["answer"])
        where = f"reasoning_gym {name} seed={seed} item {index}"
        if not answer.strip():
            raise DataError(f"{where}: empty answer")
        if task == "figfont":
            question, scoring, entry = item["question"] + "\n", "figfont", None
        else:
            question, scoring, entry = item["question"], "reasoning_gym", item
        examples.append(
            Example(
                messages=({"role": "user", "content": question},),
                response=answer,
                index=index,
                source=where,
                task=task,
                scoring_task=scoring,
                reference=answer,
                entry=entry,
            )
        )
    return examples


def reasoning_gym_ranges(cfg) -> dict[str, tuple[int, int]]:
    """{'train': (start, count), 'eval': (start, count)}; the two item ranges must not overlap."""
    num_train = DEFAULT_RG_NUM_TRAIN if cfg.num_train is None else cfg.num_train
    num_eval = DEFAULT_RG_NUM_EVAL if cfg.num_eval is None else cfg.num_eval
    train = (cfg.rg_train_start, num_train)
    evaluation = (cfg.rg_eval_start, num_eval)
    if train[0] < evaluation[0] + evaluation[1] and evaluation[0] < train[0] + train[1]:
        raise DataError(
            f"config.data: train items [{train[0]}, {train[0] + train[1]}) overlap eval items "
            f"[{evaluation[0]}, {evaluation[0] + evaluation[1]}); move data.rg_eval_start or shrink "
            "data.num_train / data.num_eval"
        )
    return {"train": train, "eval": evaluation}


# ------------------------------------------------------------------------------------------------------
# GSM8K, MATH and generic files.


def gsm8k_reference(record: sources.Record, response: str) -> str:
    """N of the answer's final `#### N` line."""
    match = noise_lib.GSM8K_FINAL_ANSWER.search(response.rstrip().split("\n")[-1])
    if match is None:
        raise DataError(f"{record.source}: GSM8K answer has no final '#### N' line")
    return match["number"]


def last_boxed(text: str) -> str | None:
    """The answer in the last \\boxed or \\fbox of `text`, read as the MATH, Qwen2.5-Math and math-verify
    graders read it; None when there is none.

      \\boxed{...}  the text between the brace and its matching brace (nested braces kept). Every { and }
                    counts, escaped \\{ \\} included, as those graders count them (a \\{...\\} set is
                    balanced, so it stays whole). Whitespace may precede the brace: \\boxed {3}.
      \\boxed 5     (no brace, old MATH style) the text up to the next $ (or the end), stripped.

    None also when the last box's brace never closes (a generation cut off inside it), and for commands
    that only start like one (\\boxedx)."""
    commands = list(_BOX_COMMAND.finditer(text))
    if not commands:
        return None
    rest = text[commands[-1].end():]
    content = rest.lstrip()
    if not content.startswith("{"):
        answer = content.split("$", 1)[0].strip()
        return answer or None
    depth = 0
    for position, char in enumerate(content):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0:
            return content[1:position]
    return None


def math_reference(record: sources.Record, response: str) -> str:
    """The record's `answer` field, else the last \\boxed{} of the solution."""
    answer = record.fields.get("answer")
    if isinstance(answer, str) and answer.strip():
        return answer
    boxed = last_boxed(response)
    if boxed is None:
        raise DataError(f"{record.source}: MATH record has no 'answer' field and no \\boxed{{}} in its solution")
    return boxed


def _field_reference(field: str):
    def reference(record: sources.Record, response: str) -> str:
        if field not in record.fields:
            raise DataError(
                f"{record.source}: missing reference field {field!r} (data.reference_field); "
                f"fields present: {sorted(record.fields)}"
            )
        return str(record.fields[field])

    return reference


def _task_reading_rules(cfg) -> dict[str, Any]:
    """Layout defaults, scoring task and reference rule of a file/TFDS task."""
    prompt_field, response_field = cfg.prompt_field, cfg.response_field
    if cfg.task == "gsm8k":
        rules = {"scoring_task": "gsm8k", "reference_fn": gsm8k_reference, "layout": ("question", "answer")}
    elif cfg.task == "math":
        rules = {"scoring_task": "math", "reference_fn": math_reference, "layout": ("problem", "solution")}
    else:
        rules = {"scoring_task": None, "reference_fn": None, "layout": None}
    if rules["layout"] and not (prompt_field or response_field or cfg.messages_field):
        prompt_field, response_field = rules["layout"]
    if cfg.reference_field:
        rules["reference_fn"] = _field_reference(cfg.reference_field)
    rules.update(prompt_field=prompt_field, response_field=response_field, messages_field=cfg.messages_field)
    return rules


def examples_from_records(records: Sequence[sources.Record], *, cfg, task: str | None = None) -> list[Example]:
    """Examples from file/TFDS records under the config's layout and the task's reference rule."""
    rules = _task_reading_rules(cfg)
    layout = sources.resolve_layout(
        records[0],
        prompt_field=rules["prompt_field"],
        response_field=rules["response_field"],
        messages_field=rules["messages_field"],
    )
    return sources.records_to_examples(
        records,
        task=task or cfg.task,
        layout=layout,
        scoring_task=rules["scoring_task"],
        reference_fn=rules["reference_fn"],
    )


def file_examples(path: str, *, cfg) -> list[Example]:
    """Examples of one JSONL/Parquet file ('jsonl' and 'parquet' force the format; else by suffix)."""
    file_format = cfg.task if cfg.task in ("jsonl", "parquet") else None
    return examples_from_records(sources.read_file(path, file_format=file_format), cfg=cfg)


# Fields written by data/tfds_builder.py beside `messages`; when present they are carried over.
BUILDER_FIELDS = ("reference", "scoring_task", "index", "source")


def tfds_examples(*, cfg, split: str) -> list[Example]:
    """Examples of a TFDS split; records built by tfds_builder keep their index, source and reference."""
    records = sources.read_tfds(name=cfg.tfds_name, data_dir=cfg.tfds_data_dir, split=split)
    examples = examples_from_records(records, cfg=cfg)
    if not all(field in records[0].fields for field in BUILDER_FIELDS):
        return examples
    restored = []
    for record, example in zip(records, examples):
        fields = record.fields
        restored.append(
            dataclasses.replace(
                example,
                index=int(fields["index"]),
                source=f"{record.source} (from {fields['source']})",
                reference=fields["reference"] or None,
                scoring_task=fields["scoring_task"] or None,
            )
        )
    return restored


# ------------------------------------------------------------------------------------------------------
# Splits, sizes, system prompt.


def deterministic_split(examples: Sequence[Example], *, eval_fraction: float, seed: int) -> dict[str, list[Example]]:
    """Split one source into train/eval: round(n * eval_fraction) rows chosen by default_rng(seed).

    Each split keeps the source order. The same (n, eval_fraction, seed) always gives the same split.
    """
    n = len(examples)
    num_eval = int(round(n * eval_fraction))
    if not 0 < num_eval < n:
        raise DataError(
            f"config.data.eval_fraction={eval_fraction} of {n} examples gives {num_eval} eval examples; "
            "it must leave at least one example in each split"
        )
    is_eval = np.zeros(n, dtype=bool)
    is_eval[np.random.default_rng(seed).permutation(n)[:num_eval]] = True
    return {
        "train": [e for e, flag in zip(examples, is_eval) if not flag],
        "eval": [e for e, flag in zip(examples, is_eval) if flag],
    }


def take(examples: Sequence[Example], *, count: int | None, field: str) -> list[Example]:
    """The first `count` examples (all when None); asking for more than there are is an error."""
    if count is None:
        return list(examples)
    if count > len(examples):
        raise DataError(f"config.data.{field}={count} but the split has only {len(examples)} examples")
    return list(examples[:count])


def resolve_system_prompt(cfg) -> str | None:
    """data.system_prompt ('' = none), else the task default (FigFont: the paper's), else None."""
    if cfg.system_prompt is not None:
        return cfg.system_prompt or None
    return TASK_SYSTEM_PROMPTS.get(cfg.task)


def with_system_prompt(examples: Sequence[Example], *, system_prompt: str | None) -> list[Example]:
    """Prepend a system turn; an example that already has one is an error (no silent override)."""
    if system_prompt is None:
        return list(examples)
    out = []
    for example in examples:
        if example.messages and example.messages[0]["role"] == "system":
            raise DataError(
                f"{example.source}: the example has its own system turn and config.data.system_prompt also "
                "gives one; set data.system_prompt=None to keep the data's, or remove it from the data"
            )
        system = {"role": "system", "content": system_prompt}
        out.append(dataclasses.replace(example, messages=(system,) + tuple(example.messages)))
    return out


def _split_source(cfg, *, split: str) -> list[Example]:
    """The examples of `split` before size limits, system prompt and noise."""
    if cfg.task in config_lib.FILE_TASKS:
        if cfg.eval_fraction > 0:
            parts = deterministic_split(file_examples(cfg.path, cfg=cfg), eval_fraction=cfg.eval_fraction,
                                        seed=cfg.split_seed)
            return parts[split]
        if split == "train":
            return file_examples(cfg.path, cfg=cfg)
        if not cfg.eval_path:
            raise DataError(
                f"config.data: task {cfg.task!r} has no eval source; set data.eval_path or data.eval_fraction"
            )
        return file_examples(cfg.eval_path, cfg=cfg)
    if cfg.task == "tfds":
        if cfg.eval_fraction > 0:
            parts = deterministic_split(tfds_examples(cfg=cfg, split=cfg.train_split),
                                        eval_fraction=cfg.eval_fraction, seed=cfg.split_seed)
            return parts[split]
        return tfds_examples(cfg=cfg, split=cfg.train_split if split == "train" else cfg.eval_split)
    raise AssertionError(cfg.task)


def load_examples(cfg, *, split: str) -> list[Example]:
    """The Examples of `split` ('train' | 'eval') described by the data config `cfg` (config.data)."""
    config_lib.validate_data_config(cfg)
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}")
    task = cfg.task
    if task == "figfont" or task.startswith(config_lib.REASONING_GYM_PREFIX):
        start, count = reasoning_gym_ranges(cfg)[split]
        kwargs = dataset_kwargs(task=task, overrides=_plain_dict(cfg.rg_kwargs))
        examples = reasoning_gym_examples(task=task, seed=cfg.rg_seed, start=start, count=count, kwargs=kwargs)
    else:
        examples = take(_split_source(cfg, split=split), count=cfg.num_train if split == "train" else cfg.num_eval,
                        field="num_train" if split == "train" else "num_eval")
    examples = with_system_prompt(examples, system_prompt=resolve_system_prompt(cfg))
    if split == "train" and cfg.noise_fraction > 0:
        words = None
        if task == "figfont":
            words = figfont_words(dataset_kwargs(task=task, overrides=_plain_dict(cfg.rg_kwargs)), seed=cfg.rg_seed)
        examples, _ = noise_lib.inject_label_noise(
            examples, fraction=cfg.noise_fraction, seed=cfg.noise_seed, task=task, figfont_words=words
        )
    return examples
