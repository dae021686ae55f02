"""A request trace as the serving simulator replays it (``gpusim.io.trace`` reads one
from a file)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Trace:
    """A trace's columns as arrays (one entry per request, in arrival order)."""

    source: str
    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray

    def __len__(self) -> int:
        return len(self.arrival_s)
