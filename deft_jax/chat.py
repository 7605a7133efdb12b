"""Chat turns: the one check of a message list, shared by the data pipeline and the chat templates.

A message list is a non-empty sequence of {"role": str, "content": str} mappings. The data pipeline
also restricts the roles (ROLES) and names the record; a chat template accepts any role (it may raise
on one it does not know). Imports nothing of the project.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

ROLES = ("system", "user", "assistant")


def validate_messages(messages: Any, *, where: str = "messages", roles: Sequence[str] | None = None,
                      error: type[Exception] = ValueError) -> tuple[dict[str, str], ...]:
    """A tuple copy of `messages` after checking it (raises `error`, its message starting with `where`):
    a non-empty list or tuple of mappings, each with a string 'role' (one of `roles` unless None) and a
    string 'content'."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise error(f"{where}: messages must be a non-empty list of {{role, content}} dicts, got {messages!r:.200}")
    checked = []
    for number, turn in enumerate(messages):
        if not isinstance(turn, Mapping) or "role" not in turn or "content" not in turn:
            fields = sorted(turn) if isinstance(turn, Mapping) else type(turn).__name__
            raise error(f"{where}: message {number} must have 'role' and 'content' fields, found {fields}")
        role, content = turn["role"], turn["content"]
        if not isinstance(role, str) or (roles is not None and role not in roles):
            expected = f"one of {tuple(roles)}" if roles is not None else "a string"
            raise error(f"{where}: message {number} has role {role!r}; expected {expected}")
        if not isinstance(content, str):
            raise error(f"{where}: message {number} (role {role!r}) content must be a string, got "
                        f"{type(content).__name__}")
        checked.append({"role": role, "content": content})
    return tuple(checked)
