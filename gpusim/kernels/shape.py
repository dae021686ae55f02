"""A step's shape: (batch, ctx, q) per step, as arrays, checked once where it enters.

``batch`` sequences each with ``ctx`` tokens cached and ``q`` new ones. What each mode
allows (decode: q = 1; prefill: ctx = 0) and the per-mode defaults of the command line
(``default_q``, ``default_ctx``) live here, so every caller agrees.
"""

from __future__ import annotations

import numpy as np

from gpusim.errors import FieldError
from gpusim.specs.enums import Mode, parse

# new tokens per sequence when a caller gives none: a decode step has one; a verify
# pass of speculative decoding a few (k = 3 drafts + 1); a prefill a typical prompt
DEFAULT_Q: dict[Mode, int] = {Mode.DECODE: 1, Mode.VERIFY: 4, Mode.PREFILL: 512, Mode.TREE: 4}


def default_q(mode: Mode, q: int | None) -> int:
    """``q`` if given, else the mode's default new tokens per sequence."""
    return DEFAULT_Q[mode] if q is None else q


def default_ctx(mode: Mode, ctx: int | None, fallback: int = 1024) -> int:
    """``ctx`` if given, else ``fallback`` tokens cached (0 for a prefill: it starts
    from an empty cache)."""
    if ctx is not None:
        return ctx
    return 0 if mode == Mode.PREFILL else fallback


def as_arrays(batch: object, ctx: object, q: object) -> tuple[np.ndarray, ...]:
    """(batch, ctx, q) as float64 arrays of one common length."""
    b, c, qq = (np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (batch, ctx, q))
    b, c, qq = np.broadcast_arrays(b, c, qq)
    return b, c, qq


def check_shape(mode: str, batch: np.ndarray, ctx: np.ndarray, q: np.ndarray) -> Mode:
    """The mode as a ``Mode``; raises FieldError naming the first bad value of a step
    shape (``batch=0 must be an integer >= 1``)."""
    m = parse(Mode, mode, "mode")
    for name, arr, low in (("batch", batch, 1), ("q", q, 1), ("ctx", ctx, 0)):
        bad = ~np.isfinite(arr) | (arr < low) | (arr != np.round(arr))
        if bad.any():
            raise FieldError(name, f"{name}={arr[bad][0]:g} must be an integer >= {low}")
    if m == Mode.DECODE and (q != 1).any():
        raise FieldError("q", f"q={q[q != 1][0]:g} must be 1 for decode")
    if m == Mode.PREFILL and (ctx != 0).any():
        raise FieldError("ctx", f"ctx={ctx[ctx != 0][0]:g} must be 0 for prefill "
                         "(prefill with a cached prefix is a verify-shaped step)")
    return m
