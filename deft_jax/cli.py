"""One error path for every command-line tool: a user's mistake is one line and exit status 2.

    from deft_jax import cli

    def main(argv): ...                 # raises UserError (ConfigError, DataError, ... are UserErrors)

    if __name__ == "__main__":
        cli.run("generate", main)       # argparse tools (parser = cli.ArgumentParser(...))
        cli.run_absl("export", main)    # absl tools: flag errors become one line as well

What counts as the user's mistake (printed as `<tool>: error: <message>`, exit status 2): exactly
`errors.UserError` and its subclasses, raised by the project wherever it knows the cause (ConfigError,
DataError, CheckpointError, ModelError, MissingPathError ...), plus the flag errors of argparse and absl,
which `ArgumentParser` and `parse_absl_flags` turn into UserErrors. Anything else is a bug and keeps its
traceback: a ValueError from JAX or NumPy, a TypeError, an OSError the project did not check. A
multi-line message is joined into one line.
"""
from __future__ import annotations

import argparse
import functools
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from deft_jax.errors import UserError, did_you_mean, one_line  # noqa: F401 (re-exported for the mains)

USAGE_EXIT_CODE = 2


def is_user_error(error: BaseException) -> bool:
    """Whether `error` is a user's mistake (one line, exit 2) rather than a bug (traceback)."""
    return isinstance(error, UserError)


def error_line(tool: str, error: BaseException) -> str:
    """`<tool>: error: <message>` on one line (KeyError's quoting removed)."""
    message = error.args[0] if isinstance(error, KeyError) and error.args else error
    return f"{tool}: error: {one_line(str(message)) or type(error).__name__}"


def user_errors(tool: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: a user error raised by the wrapped main prints `<tool>: error: ...` and exits 2."""
    def decorate(main: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(main)
        def wrapped(*args, **kwargs):
            try:
                return main(*args, **kwargs)
            except UserError as error:
                print(error_line(tool, error), file=sys.stderr)
                raise SystemExit(USAGE_EXIT_CODE) from None
        return wrapped
    return decorate


def run(tool: str, main: Callable[[Sequence[str]], Any], argv: Sequence[str] | None = None) -> Any:
    """Call main(argv) under `user_errors(tool)`; returns what main returns."""
    return user_errors(tool)(main)(sys.argv[1:] if argv is None else list(argv))


def _innermost_message(error: BaseException) -> str:
    """The text of `error`, unwrapping the exception-in-an-exception of ml_collections' KeyError/AttributeError
    (whose str() is the repr of the inner message)."""
    while error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]
    return str(error.args[0]) if isinstance(error, (KeyError, AttributeError)) and error.args else str(error)


def _without_traceback(message: str) -> str:
    """A flag error that embeds a formatted traceback (ml_collections does) keeps its first and last lines."""
    if "Traceback (most recent call last)" not in message:
        return message
    lines = [line for line in message.splitlines() if line.strip()]
    return f"{lines[0]} {lines[-1].strip()}"


def parse_absl_flags(argv: Sequence[str], *, flag_values=None) -> list[str]:
    """absl flag parsing whose every failure is a UserError with a one-line message: an unknown, missing or
    ill-typed flag, an unknown ml_collections override (`--config.optim.lrr`: ml_collections suggests the
    nearest field), and a config file that fails to load (which ml_collections only reports on first use)."""
    from absl import flags

    flag_values = flags.FLAGS if flag_values is None else flag_values
    try:
        remaining = flag_values(list(argv))
    except flags.Error as error:
        raise UserError(_without_traceback(str(error))) from None
    except (AttributeError, KeyError, TypeError, ValueError) as error:  # raised while applying an override
        message = _innermost_message(error)
        names = re.findall(r"'([^']+)'", message)
        given = [arg.split("=", 1)[0] for arg in argv[1:] if arg.startswith("--")]
        flag = next((arg for arg in given if names and f".{names[0]}" in arg), None)
        if isinstance(error, (AttributeError, KeyError)):
            message = f"no such config field {message}"
        raise UserError(f"{flag}: {message}" if flag else message) from None
    for name in list(flag_values):
        value = flag_values[name].value
        if value is None or isinstance(value, (str, bytes, int, float, bool, list, tuple, dict)):
            continue
        try:
            getattr(value, "keys", None)  # a config file that failed to load raises on first access
        except OSError as error:
            reason = [line.strip() for line in str(error).splitlines() if line.strip()][-1]
            raise UserError(f"--{name}: cannot load the config file: {reason}") from None
    return remaining


def run_absl(tool: str, main: Callable[[Sequence[str]], Any]) -> None:
    """absl.app.run(main) with one error path: a flag the parser rejects (`parse_absl_flags`) and a user
    error raised by main both print `<tool>: error: <message>` and exit 2."""
    from absl import app

    def parse_flags(argv: list[str]) -> list[str]:
        try:
            return parse_absl_flags(argv)
        except UserError as error:
            print(error_line(tool, error), file=sys.stderr)
            raise SystemExit(USAGE_EXIT_CODE) from None

    app.run(user_errors(tool)(main), flags_parser=parse_flags)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors raise UserError (one line through `run`) instead of printing the
    usage block and exiting; --help still prints the help."""

    def error(self, message: str):
        raise UserError(message)
