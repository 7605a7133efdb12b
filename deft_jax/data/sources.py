"""Reading records from JSONL, Parquet and TFDS, and turning them into Examples by layout.

A *record* is one row of a source (a dict of fields) with its location. A *layout* says which fields
hold the prompt and the target:

    messages              a chat list [{"role", "content"}, ...]; the LAST assistant turn is the target,
                          the turns before it are the prompt (no turn may follow it);
    prompt / response     (and question / answer, problem / solution): one user turn and its target.

Field names are configurable (prompt_field/response_field or messages_field); when none is given the
layout is detected from the first record, in the order listed in LAYOUTS. Every error names the
location (file:line or TFDS split[index]) and the fields that were present.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

from deft_jax import chat, errors
from deft_jax.data.records import DataError, Example

# Detection order for records without configured field names: (prompt field, response field).
LAYOUTS: tuple[tuple[str, str], ...] = (("prompt", "response"), ("question", "answer"), ("problem", "solution"))
MESSAGES_FIELD = "messages"


@dataclasses.dataclass(frozen=True)
class Record:
    """One row of a source: its fields, 0-based position and a human-readable location."""

    fields: Mapping[str, Any]
    index: int
    source: str


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the prompt and target live: either messages_field, or prompt_field + response_field."""

    messages_field: str | None = None
    prompt_field: str | None = None
    response_field: str | None = None

    def describe(self) -> str:
        if self.messages_field:
            return f"messages layout (field {self.messages_field!r})"
        return f"{self.prompt_field}/{self.response_field} layout"


# ------------------------------------------------------------------------------------------------------
# Readers.


def _check_file(path: pathlib.Path) -> None:
    if not path.exists():
        raise errors.MissingPathError(f"data file {path} does not exist (check data.path / data.eval_path)")
    if not path.is_file():
        raise DataError(f"{path} is not a file")


def read_jsonl(path: str | pathlib.Path) -> list[Record]:
    """One JSON object per line (UTF-8, blank lines skipped); errors name file and 1-based line."""
    path = pathlib.Path(path)
    _check_file(path)
    records = []
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            where = f"{path}:{line_number}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(
                    f"{where}: not valid UTF-8 ({error.reason} at byte {error.start} of the line); "
                    "re-encode the file as UTF-8"
                ) from None
            if line_number == 1:
                text = text.removeprefix("\ufeff")
            if not text.strip():
                continue
            try:
                fields = json.loads(text)
            except json.JSONDecodeError as error:
                raise DataError(f"{where}: malformed JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(fields, dict):
                raise DataError(f"{where}: each line must be a JSON object, got {type(fields).__name__}")
            records.append(Record(fields=fields, index=len(records), source=where))
    if not records:
        raise DataError(f"{path}: no records (the file is empty)")
    return records


def read_parquet(path: str | pathlib.Path) -> list[Record]:
    """All rows of a Parquet file as dicts; errors name file and 0-based row."""
    import pyarrow.parquet as pq

    path = pathlib.Path(path)
    _check_file(path)
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as error:  # pyarrow raises several types for unreadable files
        raise DataError(f"{path}: cannot be read as Parquet ({type(error).__name__}: {error})") from None
    if not rows:
        raise DataError(f"{path}: no records (the table is empty)")
    return [Record(fields=row, index=i, source=f"{path} row {i}") for i, row in enumerate(rows)]


def read_file(path: str | pathlib.Path, *, file_format: str | None = None) -> list[Record]:
    """Read JSONL or Parquet; the format is `file_format` ('jsonl'|'parquet') or the file's suffix."""
    path = pathlib.Path(path)
    if file_format is None:
        file_format = "parquet" if path.suffix == ".parquet" else "jsonl"
    if file_format == "jsonl":
        return read_jsonl(path)
    if file_format == "parquet":
        return read_parquet(path)
    raise DataError(f"unknown file format {file_format!r} for {path}; expected 'jsonl' or 'parquet'")


def _decode_tfds_value(value: Any, *, where: str, field: str) -> Any:
    """TFDS data sources return Text as bytes and Sequence(dict) as a dict of lists; make them plain."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{where}: field {field!r} is not valid UTF-8 text") from None
    if isinstance(value, np.ndarray):
        return [_decode_tfds_value(v, where=where, field=field) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_decode_tfds_value(v, where=where, field=field) for v in value]
    if isinstance(value, Mapping):
        decoded = {k: _decode_tfds_value(v, where=where, field=f"{field}.{k}") for k, v in value.items()}
        columns = list(decoded.values())
        if columns and all(isinstance(c, list) for c in columns):  # Sequence({...}) -> list of dicts
            lengths = {len(c) for c in columns}
            if len(lengths) != 1:
                raise DataError(f"{where}: field {field!r} has sub-fields of different lengths {lengths}")
            return [dict(zip(decoded, row)) for row in zip(*columns)]
        return decoded
    return value


def read_tfds(*, name: str, data_dir: str | None, split: str) -> list[Record]:
    """All records of a TFDS split through `tfds.data_source` (array_record; TensorFlow not needed)."""
    import tensorflow_datasets as tfds

    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir or None, try_gcs=False)
    except Exception as error:
        raise DataError(
            f"cannot open TFDS dataset {name!r} split {split!r} in data_dir {data_dir!r} "
            f"({type(error).__name__}: {error}); build it first (python -m deft_jax.data.tfds_builder) "
            "or check data.tfds_name / data.tfds_data_dir / the split name"
        ) from None
    records = []
    for i in range(len(source)):
        where = f"tfds {name} {split}[{i}]"
        raw = source[i]
        fields = {k: _decode_tfds_value(v, where=where, field=k) for k, v in raw.items()}
        records.append(Record(fields=fields, index=i, source=where))
    if not records:
        raise DataError(f"TFDS dataset {name!r} split {split!r} has no records")
    return records


# ------------------------------------------------------------------------------------------------------
# Layouts.


def resolve_layout(
    first: Record, *, prompt_field: str = "", response_field: str = "", messages_field: str = ""
) -> Layout:
    """The configured layout, else the first of messages / LAYOUTS whose fields the first record has."""
    if messages_field and (prompt_field or response_field):
        raise DataError("set either data.messages_field or data.prompt_field/response_field, not both")
    if bool(prompt_field) != bool(response_field):
        raise DataError(
            f"data.prompt_field={prompt_field!r} and data.response_field={response_field!r}: set both or neither"
        )
    if messages_field:
        return Layout(messages_field=messages_field)
    if prompt_field:
        return Layout(prompt_field=prompt_field, response_field=response_field)
    present = set(first.fields)
    if MESSAGES_FIELD in present:
        return Layout(messages_field=MESSAGES_FIELD)
    for prompt, response in LAYOUTS:
        if prompt in present and response in present:
            return Layout(prompt_field=prompt, response_field=response)
    known = [MESSAGES_FIELD] + [f"{p}/{r}" for p, r in LAYOUTS]
    raise DataError(
        f"{first.source}: no known layout; fields present: {sorted(present)}; known layouts: {known}. "
        "Set data.prompt_field and data.response_field (or data.messages_field) to name yours."
    )


def _field(record: Record, name: str, *, layout: Layout) -> Any:
    if name not in record.fields:
        raise DataError(
            f"{record.source}: missing field {name!r} ({layout.describe()}); "
            f"fields present: {sorted(record.fields)}"
        )
    return record.fields[name]


def _text_field(record: Record, name: str, *, layout: Layout) -> str:
    value = _field(record, name, layout=layout)
    if not isinstance(value, str):
        raise DataError(f"{record.source}: field {name!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{record.source}: field {name!r} is empty; every example needs a non-empty {name}")
    return value


def prompt_and_response(record: Record, *, layout: Layout) -> tuple[tuple[dict[str, str], ...], str]:
    """(prompt turns, target text) of one record under `layout`."""
    if layout.prompt_field:
        prompt = _text_field(record, layout.prompt_field, layout=layout)
        response = _text_field(record, layout.response_field, layout=layout)
        return ({"role": "user", "content": prompt},), response
    messages = chat.validate_messages(_field(record, layout.messages_field, layout=layout), where=record.source,
                                      roles=chat.ROLES, error=DataError)
    assistant_turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not assistant_turns:
        raise DataError(f"{record.source}: messages have no assistant turn to use as the target")
    last = assistant_turns[-1]
    if last != len(messages) - 1:
        raise DataError(
            f"{record.source}: {len(messages) - 1 - last} message(s) follow the last assistant turn; the "
            "target must be the final turn (drop the trailing turns from the data)"
        )
    if not any(m["role"] == "user" for m in messages[:last]):
        raise DataError(f"{record.source}: messages have no user turn before the target assistant turn")
    response = messages[last]["content"]
    if not response.strip():
        raise DataError(f"{record.source}: the target (last assistant turn) is empty")
    return messages[:last], response


def records_to_examples(
    records: Sequence[Record],
    *,
    task: str,
    layout: Layout,
    scoring_task: str | None = None,
    reference_fn=None,
) -> list[Example]:
    """Examples from records; `reference_fn(record, response) -> str | None` supplies the reference."""
    examples = []
    for record in records:
        messages, response = prompt_and_response(record, layout=layout)
        reference = response if reference_fn is None else reference_fn(record, response)
        examples.append(
            Example(
                messages=messages,
                response=response,
                index=record.index,
                source=record.source,
                task=task,
                scoring_task=scoring_task,
                reference=reference,
            )
        )
    return examples

