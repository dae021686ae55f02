"""How two concurrent demands on a GPU combine into one time."""

from __future__ import annotations

import numpy as np


def overlapped(a: np.ndarray | float, b: np.ndarray | float, exponent: float) -> np.ndarray:
    """The ``exponent``-norm of two non-negative times, (a^e + b^e)^(1/e): their sum at
    1, the longer one as the exponent grows (two streams or units that overlap more
    the higher it is). Computed from the longer one, so a large exponent neither
    underflows nor overflows. Raises nothing."""
    hi = np.maximum(a, b)
    lo = np.minimum(a, b)
    # (hi = 0 means lo = 0: the ratio is then 0, without a division by zero)
    ratio = lo / np.maximum(hi, 1e-300)
    return hi * (1.0 + ratio**exponent) ** (1.0 / exponent)
