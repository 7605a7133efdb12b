"""Turn local files (JSONL / Parquet in any supported layout) into an array_record TFDS dataset.

    python -m deft_jax.data.tfds_builder --name my_data --data_dir ~/tfds \\
        --split train=data/train.jsonl --split test=data/test.jsonl [--task gsm8k] [--prompt_field q ...]

writes <data_dir>/deft_sft_files/my_data/1.0.0/ (array_record shards + dataset_info.json), readable
without TensorFlow and without this package:

    tfds.data_source("deft_sft_files/my_data", data_dir="~/tfds", split="train")

and by the pipeline with data.task='tfds', data.tfds_name='deft_sft_files/my_data',
data.tfds_data_dir='~/tfds'. Each record is a chat:
    messages      Sequence({role, content}): the prompt turns, then the target as the final assistant turn
    reference     Text, the answer used for scoring ('' when none)
    scoring_task  Text, e.g. 'gsm8k' ('' when none)
    index, source the row's position and location in the original file
Examples keep the file order (shuffling is the loader's job). System prompts are not stored: the data
config adds them when reading, exactly as for the files.
"""
from __future__ import annotations

import argparse
import pathlib
import re
from typing import Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from deft_jax.data import tasks
from deft_jax.data.config import default_data_config
from deft_jax.data.records import DataError, Example

BUILDER_NAME = "deft_sft_files"
VERSION = "1.0.0"
_CONFIG_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def example_to_record(example: Example) -> dict:
    """The TFDS record of one example (the target becomes the final assistant turn)."""
    messages = [dict(m) for m in example.messages] + [{"role": "assistant", "content": example.response}]
    return {
        "messages": messages,
        "reference": example.reference or "",
        "scoring_task": example.scoring_task or "",
        "index": example.index,
        "source": example.source,
    }


class DeftSftFiles(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Chat SFT examples read from local files; one BuilderConfig (= dataset name) per user dataset.

    Not registered with TFDS: reading goes through the files' own metadata (read-only builder), so a
    dataset built here opens with plain tensorflow_datasets.
    """

    VERSION = tfds.core.Version(VERSION)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        """None: no checksums file to look up. (TFDS 4.9.10's own lookup for a builder defined inside a
        package imports `importlib_resources`, which it does not declare as a dependency.)"""
        return None

    def __init__(self, *, split_examples: Mapping[str, Sequence[Example]], **kwargs):
        self._split_examples = split_examples
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Chat SFT examples from local files (deft_jax.data.tfds_builder).",
            features=tfds.features.FeaturesDict({
                "messages": tfds.features.Sequence(
                    {"role": tfds.features.Text(), "content": tfds.features.Text()}
                ),
                "reference": tfds.features.Text(),
                "scoring_task": tfds.features.Text(),
                "index": np.int64,
                "source": tfds.features.Text(),
            }),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(examples) for split, examples in self._split_examples.items()}

    def _generate_examples(self, examples):
        for position, example in enumerate(examples):
            yield position, example_to_record(example)


def build_tfds_dataset(
    *,
    name: str,
    data_dir: str | pathlib.Path,
    split_files: Mapping[str, str | pathlib.Path],
    cfg=None,
) -> str:
    """Build the array_record dataset `deft_sft_files/<name>` in data_dir; returns that TFDS name.

    split_files: {split name: JSONL or Parquet file}. cfg: a data config giving task ('jsonl',
    'parquet', 'gsm8k', 'math') and field names (default: default_data_config() with task 'jsonl',
    i.e. layout detection). An existing build of the same name and version is an error (delete it first).
    """
    if not _CONFIG_NAME.match(name):
        raise DataError(f"dataset name {name!r} must match {_CONFIG_NAME.pattern} (lower case, digits, underscores)")
    if not split_files:
        raise DataError("split_files is empty; give at least one {split: file}")
    if cfg is None:
        cfg = default_data_config()
        cfg.task = "jsonl"
    if cfg.task not in ("jsonl", "parquet", "gsm8k", "math"):
        raise DataError(f"config.data.task must be a file task to build from files, got {cfg.task!r}")
    data_dir = pathlib.Path(data_dir).expanduser()
    target = data_dir / BUILDER_NAME / name / VERSION
    if target.exists():
        raise DataError(f"{target} already exists; delete it to rebuild")
    split_examples = {split: tasks.file_examples(str(path), cfg=cfg) for split, path in split_files.items()}
    config = tfds.core.BuilderConfig(name=name, version=VERSION,
                                     description=f"built from {dict((k, str(v)) for k, v in split_files.items())}")
    builder = DeftSftFiles(split_examples=split_examples, config=config, data_dir=str(data_dir),
                           file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return f"{BUILDER_NAME}/{name}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True, help="dataset (builder config) name, e.g. my_data")
    parser.add_argument("--data_dir", required=True, help="TFDS data_dir to write into")
    parser.add_argument("--split", action="append", required=True, metavar="SPLIT=FILE",
                        help="a split and its JSONL/Parquet file; repeat for several splits")
    parser.add_argument("--task", default="jsonl", choices=("jsonl", "parquet", "gsm8k", "math"))
    for field in ("prompt_field", "response_field", "messages_field", "reference_field"):
        parser.add_argument(f"--{field}", default="", help="field name ('' = detect)")
    args = parser.parse_args(argv)
    split_files = {}
    for item in args.split:
        split, sep, path = item.partition("=")
        if not sep or not split or not path:
            parser.error(f"--split expects SPLIT=FILE, got {item!r}")
        split_files[split] = path
    cfg = default_data_config()
    cfg.task = args.task
    for field in ("prompt_field", "response_field", "messages_field", "reference_field"):
        cfg[field] = getattr(args, field)
    name = build_tfds_dataset(name=args.name, data_dir=args.data_dir, split_files=split_files, cfg=cfg)
    print(f"built {name} in {args.data_dir}: read with tfds.data_source({name!r}, data_dir={args.data_dir!r}, "
          f"split=...) or data.task='tfds', data.tfds_name={name!r}")


if __name__ == "__main__":
    main()
