"""Small report writers shared by evaluation, sweeps, the trainer and experiments.

    write_json(path, payload)        atomically (a temporary file in the same folder, then renamed):
                                     a reader never sees half a file; non-finite floats become null
    markdown_table(rows)             one Markdown table, columns in order of first appearance

Owns: file formats of reports. Must not import other deft_jax modules.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any


def json_safe(value: Any) -> Any:
    """`value` with non-finite floats as None and tuples as lists (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
    """Write `text` to `path` atomically (temporary file + rename); creates the folder."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    temporary.write_text(text)
    temporary.replace(path)
    return path


def write_json(path: str | os.PathLike, payload: Any) -> pathlib.Path:
    """`payload` as indented, key-sorted strict JSON, written atomically."""
    return write_text(path, json.dumps(json_safe(payload), indent=2, sort_keys=True) + "\n")


def format_cell(value: Any) -> str:
    """A table cell: floats to 4 decimals, None / NaN as '–', '|' escaped."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: Sequence[Mapping[str, Any]], *, columns: Sequence[str] | None = None) -> str:
    """A Markdown table of `rows` (dicts); `columns` default: every key, in order of first appearance."""
    columns = list(columns) if columns is not None else list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_cell(row.get(column)) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


BASE_NAME = "base"


def report_name(step: int | None) -> str:
    """'base' for the model before fine-tuning (step None), else 'step_<N>': a report's file or folder name."""
    return BASE_NAME if step is None else f"step_{step}"
