"""The grids a serving step-time table is evaluated on (``serving.step_time``):
contexts spaced ~1.6% apart beyond a knee, chunk sizes dense up to one 128-token tile
and on each side of every tile edge after, and the linear-interpolation position of a
value on a grid. Pure functions of integers."""

from __future__ import annotations

import math
from bisect import bisect_right

CTX_GRID_KNEE_TOKENS = 2048   # context grid: spacing 32 tokens at 0, ~1.6% of ctx beyond
CTX_GRID_RATIO = 1.0 / 64.0
Q_DENSE_TOKENS = 128          # chunk grid: every q up to here, then 128k and 128k + 1


def context_grid(max_ctx_tokens: int) -> list[int]:
    """Integer contexts 0 .. max: spacing 32 near 0, growing ~1.6% per point."""
    pts = {0, max_ctx_tokens}
    i = 1
    while True:
        x = round(CTX_GRID_KNEE_TOKENS * math.expm1(i * math.log1p(CTX_GRID_RATIO)))
        if x >= max_ctx_tokens:
            break
        pts.add(x)
        i += 1
    return sorted(pts)


def chunk_grid(max_tokens: int) -> list[int]:
    """Chunk sizes 1..max: dense to 128, then each side of every 128-token tile edge."""
    pts = set(range(1, min(Q_DENSE_TOKENS, max_tokens) + 1))
    k = Q_DENSE_TOKENS
    while k <= max_tokens:
        pts.update((k, min(k + 1, max_tokens)))
        k += Q_DENSE_TOKENS
    pts.add(max_tokens)
    return sorted(pts)


def grid_position(grid: list[float], x: float) -> tuple[int, float]:
    """(i, f): ``x`` lies at ``grid[i] + f * (grid[i+1] - grid[i])``, the segment
    clamped to the grid's ends (f < 0 or > 1 extrapolates linearly)."""
    i = min(max(bisect_right(grid, x) - 1, 0), len(grid) - 2)
    return i, (x - grid[i]) / (grid[i + 1] - grid[i])
