"""JSON text parsed within bounds: a nesting depth, and only numbers a float holds.

Shared by every reader of a user's JSON (Hugging Face config.json, serving traces,
acceptance histograms, profiler traces, measured serving runs), so that a hostile or
broken file gets one ConfigError line (``file:line: invalid JSON: ...``) instead of a
RecursionError, a ValueError or a silent ``inf``.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from gpusim.errors import ConfigError, bad

MAX_DEPTH = 100     # nesting levels; real files use 3-4 (Python's parser stops near 1000)
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


class _BadNumber(ValueError):
    def __init__(self, token: str) -> None:
        super().__init__(token)
        self.token = token


def _constant(token: str) -> float:
    raise _BadNumber(token)


def _float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise _BadNumber(token)
    return value


def loads(text: str | bytes, source: str, line: int | None = None,
          what: str = "invalid JSON", check_depth: bool = True) -> Any:
    """Parse ``text`` (one document; ``line``: the file line it came from, for a JSON
    Lines record). Raises ConfigError ``source:line: <what>: reason`` for a syntax
    error, nesting deeper than MAX_DEPTH (``check_depth`` False: only what Python's
    parser cannot take, for large files such as profiler traces), ``NaN``/``Infinity``
    or a number beyond a float (``1e999``), an integer of over 4300 digits, or bytes
    that are not UTF-8."""
    if isinstance(text, str):
        text = text.removeprefix("\ufeff")  # a BOM, as every reader takes it
    try:
        data = json.loads(text, parse_constant=_constant, parse_float=_float)
    except json.JSONDecodeError as exc:
        at = line if line is not None else exc.lineno
        raise bad(source, f"{what}: {exc.msg}", line=at) from None
    except RecursionError:
        raise _too_deep(text, source, line, what) from None
    except _BadNumber as exc:
        at = line if line is not None else _line_of(text, exc.token)
        raise bad(source, f"{what}: {exc.token} is not a finite number", line=at) from None
    except UnicodeDecodeError:
        raise bad(source, "file is not UTF-8 text", line=line) from None
    except ValueError:  # an integer too long for int(): 4300 digits (CVE-2020-10735)
        raise bad(source, f"{what}: an integer of over 4300 digits", line=line) from None
    if check_depth and _deeper_than(data, MAX_DEPTH):
        raise _too_deep(text, source, line, what)
    return data


def _deeper_than(data: Any, limit: int) -> bool:
    """Whether ``data`` nests more than ``limit`` levels (iterative: never recurses)."""
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        node, depth = stack.pop()          # depth: containers around ``node``
        if isinstance(node, (dict, list)) and depth >= limit:
            return True
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return False


def _too_deep(text: str | bytes, source: str, line: int | None, what: str) -> ConfigError:
    at = line if line is not None else _deep_line(
        text if isinstance(text, str) else text.decode("utf-8", "replace"))
    return bad(source, f"{what}: nested deeper than {MAX_DEPTH} levels", line=at)


def _deep_line(text: str) -> int | None:
    """The line where nesting first exceeds MAX_DEPTH (strings skipped)."""
    depth = 0
    for m in _TOKENS.finditer(text):
        tok = m.group()
        if tok in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return text.count("\n", 0, m.start()) + 1
        elif tok in "]}":
            depth -= 1
    return None


def _line_of(text: str | bytes, token: str) -> int | None:
    s = text if isinstance(text, str) else text.decode("utf-8", "replace")
    at = s.find(token)
    return s.count("\n", 0, at) + 1 if at >= 0 else None
