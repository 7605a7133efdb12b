"""The project's user-error family: libraries raise these, the CLI formats them as one line.

`UserError` is bad input from the person running a tool (a config value, a path, a data line, a
checkpoint); its message says what was wrong, where, and what to do. Subclasses name the area
(ConfigError, DataError, CheckpointError, ...). Imports nothing of the project.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(ValueError):
    """Bad input from the person running a tool; the message says what, where, and what to do."""


def did_you_mean(name: str, choices: Iterable[str], *, n: int = 1) -> str:
    """' (did you mean 'x'?)' naming the closest of `choices` to `name` (difflib ratio >= 0.6), or ''."""
    matches = difflib.get_close_matches(str(name), [str(c) for c in choices], n=n, cutoff=0.6)
    if not matches:
        return ""
    return f" (did you mean {' or '.join(repr(m) for m in matches)}?)"


def one_line(message: str) -> str:
    """`message` with its lines stripped and joined by '; ' (error output is a single line)."""
    lines = [line.strip() for line in str(message).splitlines()]
    return "; ".join(line for line in lines if line)
