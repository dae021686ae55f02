"""Old option spellings, kept for a release as hidden aliases of the convention's names.

The command line is rewritten before Typer parses it (``--target`` -> ``--model`` in
``spec``), so the aliases never show in ``--help``; an error message then names the
option as the user spelled it (``translate``).
"""

from __future__ import annotations

import re
from contextvars import ContextVar

# per command: old spelling -> the convention's name (README "Command-line conventions")
ALIASES: dict[str, dict[str, str]] = {
    "spec": {"--target": "--model"},
    "spec-sweep": {"--target": "--model", "--md": "--report", "--out-csv": "--out"},
    "serve": {"--spec-draft": "--draft", "--spec-k": "--k",
              "--spec-acceptance": "--acceptance"},
    "validate": {"--data-dir": "--data", "--points": "--out"},
    "spec-validate": {"--data-dir": "--data", "--points": "--out"},
    "plan": {"--scenario": "--traffic"},
    "collectives-validate": {"--data-dir": "--data"},
}

# (command, the old spellings the user typed) of the run in progress
_CURRENT: ContextVar[tuple[str, frozenset[str]]] = ContextVar(
    "aliases", default=("", frozenset()))


def _command(argv: list[str]) -> str:
    return next((a for a in argv if not a.startswith("-")), "")


def rewrite(argv: list[str]) -> list[str]:
    """``argv`` with each old spelling of its command replaced by the convention's name
    (``--old VALUE`` and ``--old=VALUE``; nothing after ``--``). Remembers which old
    spellings were typed, for ``translate``. Raises nothing."""
    command = _command(argv)
    table = ALIASES.get(command, {})
    out: list[str] = []
    used: set[str] = set()
    rest = False
    for arg in argv:
        name, eq, value = arg.partition("=")
        if not rest and name in table:
            used.add(name)
            arg = table[name] + eq + value
        rest = rest or arg == "--"
        out.append(arg)
    _CURRENT.set((command, frozenset(used)))
    return out


def _swap(text: str, old: str, new: str) -> str:
    return re.sub(rf"(?<![\w-]){re.escape(old)}(?![\w-])", new, text)


def translate(message: str) -> str:
    """``message`` naming each aliased option as the user spelled it: the old spelling
    where they typed it, the convention's name otherwise."""
    command, used = _CURRENT.get()
    for old, new in ALIASES.get(command, {}).items():
        message = _swap(message, new, old) if old in used else _swap(message, old, new)
    return message
