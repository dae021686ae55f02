"""Checks every serving run makes on itself; a violation is a simulator bug.

``InvariantError`` is an internal error (not bad input): it names the invariant and
the numbers that broke it.
"""

from __future__ import annotations

import math


class InvariantError(RuntimeError):
    """A serving-simulation invariant does not hold (a bug, never bad input)."""


def require(ok: bool, message: str) -> None:
    """Raise InvariantError(message) unless ``ok``."""
    if not ok:
        raise InvariantError(message)


def relative_gap(a: float, b: float) -> float:
    """|a - b| / |b| (0 when both are 0, inf when only b is)."""
    if a == b:
        return 0.0
    if b == 0.0:
        return math.inf
    return abs(a - b) / abs(b)
