"""The data config (`config.data`): its fields, defaults and validation.

Every field is read by the pipeline; `validate_data_config` raises a DataError naming the field.
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from deft_jax.data.records import DataError

FILE_TASKS = ("jsonl", "parquet", "gsm8k", "math")
NAMED_TASKS = ("figfont", "tfds") + FILE_TASKS
REASONING_GYM_PREFIX = "reasoning_gym:"
TRUNCATION_POLICIES = ("drop", "truncate", "error")
DEFAULT_BUCKET_LENGTHS = (128, 256, 512, 1024, 2048, 4096)


def default_data_config() -> ml_collections.ConfigDict:
    """Defaults: the paper's FigFont task (reasoning-gym figlet_font, seed 42, items 0-39,999 / 40,000-...)."""
    cfg = ml_collections.ConfigDict()
    # What to read. task: 'figfont' | 'reasoning_gym:<name>' | 'jsonl' | 'parquet' | 'gsm8k' | 'math' | 'tfds'.
    cfg.task = "figfont"
    cfg.path = ""  # file tasks: the training file (or the single file that eval_fraction splits)
    cfg.eval_path = ""  # file tasks: a separate evaluation file (else eval_fraction splits `path`)
    cfg.tfds_name = ""  # tfds: dataset name, e.g. 'deft_sft_files/my_data' (built by data/tfds_builder.py)
    cfg.tfds_data_dir = ""  # tfds: the data_dir holding it
    cfg.train_split = "train"  # tfds split names (TFDS slicing such as 'train[:90%]' works)
    cfg.eval_split = "test"
    # Field names; '' = detect (messages, prompt/response, question/answer, problem/solution).
    cfg.prompt_field = ""
    cfg.response_field = ""
    cfg.messages_field = ""
    cfg.reference_field = ""  # the answer used for scoring; '' = the task's own rule
    # Chat formatting. None = the task default (FigFont: the paper's prompt; others: none);
    # '' = no system turn (the model's template may add its own default).
    cfg.system_prompt = config_dict.placeholder(str)
    # reasoning-gym tasks (figfont included): generator seed, item ranges and dataset kwargs.
    cfg.rg_seed = 42
    cfg.rg_train_start = 0
    cfg.rg_eval_start = 40_000
    cfg.rg_kwargs = ml_collections.ConfigDict()  # figfont defaults: min_word_len 2, max_word_len 5, space_letters
    # Sizes: None = everything (reasoning-gym: 40,000 train / 5,000 eval items, as the paper).
    cfg.num_train = config_dict.placeholder(int)
    cfg.num_eval = config_dict.placeholder(int)
    # Deterministic train/eval split of a single-split source (0 = no split).
    cfg.eval_fraction = 0.0
    cfg.split_seed = 0
    # Lengths, truncation, batching.
    cfg.max_length = 800  # tokens of prompt + response + EOS (paper: 800 FigFont, 3072 math)
    # 'drop' | 'truncate' (right) | 'error'; the TruncationReport counts what it touched. 'drop' by default:
    # with SmolLM2's tokenizer 216 of the 40,000 FigFont train items (0.5%) exceed 800 tokens.
    cfg.truncation = "drop"
    cfg.seq_len = config_dict.placeholder(int)  # row length of a batch; None = max_length
    cfg.packing = False  # True: first-fit pack several examples per row (segment ids, per-segment positions)
    cfg.bucket_lengths = DEFAULT_BUCKET_LENGTHS  # unpacked rows pad to the smallest of these (<= seq_len) or seq_len
    cfg.shuffle_seed = 0
    # Label noise for robustness experiments (train split only; figfont and gsm8k).
    cfg.noise_fraction = 0.0
    cfg.noise_seed = 0
    return cfg


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise DataError(f"config.data.{field}: {message}")


def validate_data_config(cfg: ml_collections.ConfigDict) -> None:
    """Raise DataError naming the first invalid field; unknown or missing fields are errors too."""
    expected = set(default_data_config().keys())
    present = set(cfg.keys())
    unknown, missing = sorted(present - expected), sorted(expected - present)
    if unknown:
        raise DataError(f"config.data has unknown field(s) {unknown}; known fields: {sorted(expected)}")
    if missing:
        raise DataError(f"config.data is missing field(s) {missing}; start from default_data_config()")
    task = cfg.task
    _require(
        task in NAMED_TASKS or (isinstance(task, str) and task.startswith(REASONING_GYM_PREFIX)
                                and len(task) > len(REASONING_GYM_PREFIX)),
        "task", f"{task!r} is not one of {NAMED_TASKS} or 'reasoning_gym:<name>'",
    )
    if task in FILE_TASKS:
        _require(bool(cfg.path), "path", f"task {task!r} reads a file; set data.path (on the command line "
                 f"--config.data.path=<file>, or data_path=<file> in the config argument)")
        _require(not (cfg.eval_path and cfg.eval_fraction > 0), "eval_fraction",
                 "set either data.eval_path (a separate eval file) or data.eval_fraction (split data.path), not both")
    if task == "tfds":
        _require(bool(cfg.tfds_name), "tfds_name", "task 'tfds' needs a dataset name")
    _require(0.0 <= cfg.eval_fraction < 1.0, "eval_fraction", f"must lie in [0, 1), got {cfg.eval_fraction}")
    for field in ("num_train", "num_eval"):
        value = cfg[field]
        _require(value is None or (isinstance(value, int) and value > 0), field,
                 f"must be None (all) or a positive int, got {value!r}")
    for field in ("rg_train_start", "rg_eval_start"):
        _require(isinstance(cfg[field], int) and cfg[field] >= 0, field, f"must be an int >= 0, got {cfg[field]!r}")
    _require(isinstance(cfg.max_length, int) and cfg.max_length >= 2, "max_length",
             f"must be an int >= 2, got {cfg.max_length!r}")
    _require(cfg.truncation in TRUNCATION_POLICIES, "truncation",
             f"{cfg.truncation!r} is not one of {TRUNCATION_POLICIES}")
    _require(cfg.seq_len is None or (isinstance(cfg.seq_len, int) and cfg.seq_len >= cfg.max_length - 1),
             "seq_len", f"must be None or >= max_length - 1 = {cfg.max_length - 1} (an example of max_length "
             f"tokens has max_length - 1 inputs), got {cfg.seq_len!r}")
    buckets = tuple(cfg.bucket_lengths)
    _require(all(isinstance(b, int) and b > 0 for b in buckets), "bucket_lengths",
             f"must be positive ints, got {buckets}")
    _require(0.0 <= cfg.noise_fraction <= 1.0, "noise_fraction", f"must lie in [0, 1], got {cfg.noise_fraction}")
    _require(cfg.noise_fraction == 0.0 or task in ("figfont", "gsm8k"), "noise_fraction",
             f"label noise is defined for tasks 'figfont' and 'gsm8k', not {task!r}")
    _require(cfg.system_prompt is None or isinstance(cfg.system_prompt, str), "system_prompt",
             f"must be None (task default) or a string, got {type(cfg.system_prompt).__name__}")


def row_length(cfg: ml_collections.ConfigDict) -> int:
    """The length T of a batch row: data.seq_len, or max_length when unset."""
    return cfg.max_length if cfg.seq_len is None else cfg.seq_len
