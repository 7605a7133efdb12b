"""The project's user-error family: libraries raise these, the CLI formats them as one line.

`UserError` is bad input from the person running a tool (a config value, a path, a data line, a
checkpoint); its message says what was wrong, where, and what to do. Subclasses name the area
(ConfigError, DataError, CheckpointError, ModelError, ...; each defined beside its code), and the ones here
keep a built-in type as well (MissingPathError is a FileNotFoundError, UnsupportedError a
NotImplementedError). The CLI prints exactly the UserErrors as one line; anything else is a bug and keeps
its traceback. Imports nothing of the project.
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


# A path the user gave that is missing, in the way or not writable, and an input asking for what the project
# does not support: user errors that stay the built-in types callers already catch.

class MissingPathError(UserError, FileNotFoundError):
    """A file or directory the user named does not exist (or is not what it should be)."""


class PathExistsError(UserError, FileExistsError):
    """A path the user named as an output is in the way."""


class NotWritableError(UserError, PermissionError):
    """A directory the user named cannot be written."""


class UnsupportedError(UserError, NotImplementedError):
    """An input (a file, a setting) asks for something the project does not support."""
