"""A kernel's cost: time and work, arrays over step shapes; costs add up."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Cost:
    """Time and work of one op (arrays over step shapes); ``+`` sums two costs."""

    seconds: np.ndarray
    fixed_s: np.ndarray
    memory_s: np.ndarray
    compute_s: np.ndarray
    flops: np.ndarray
    bytes: np.ndarray

    # spelled out, not a loop over the fields: a step sums a few dozen of these per
    # call, and the generator's overhead showed in the prediction benchmark
    def __add__(self, other: Cost) -> Cost:
        return Cost(self.seconds + other.seconds, self.fixed_s + other.fixed_s,
                    self.memory_s + other.memory_s, self.compute_s + other.compute_s,
                    self.flops + other.flops, self.bytes + other.bytes)

    def scaled(self, factor: float | np.ndarray) -> Cost:
        """This cost ``factor`` times over (e.g. once per layer; per shape for an
        array)."""
        return Cost(self.seconds * factor, self.fixed_s * factor, self.memory_s * factor,
                    self.compute_s * factor, self.flops * factor, self.bytes * factor)

    @staticmethod
    def zero(n: int = 1) -> Cost:
        z = np.zeros(n)
        return Cost(z, z, z, z, z, z)
