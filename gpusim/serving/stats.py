"""Streaming statistics whose memory does not grow with run length.

* ``LogHistogram``: quantiles of non-negative values from fixed log-spaced buckets
  (DDSketch-style). Every quantile it reports is within ``relative_accuracy`` of a
  true sample quantile; count, sum (so the mean), min and max are exact.
* ``TimeSeries``: time-weighted means (and maxima) of a few channels over a bounded
  number of equal-width time buckets; when the run outgrows them, neighbouring buckets
  merge and the width doubles, so a run of any length keeps at most ``max_points``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


class LogHistogram:
    """Counts of values in buckets (g^(i-1), g^i] with g = (1 + a) / (1 - a).

    A bucket's representative value ``2 g^i / (g + 1)`` is within relative error ``a``
    of every value in it. Values at or below ``min_value`` count as zero (absolute
    accuracy ``min_value``); values above ``max_value`` land in the top bucket, whose
    quantiles are clamped to the exact maximum. Raises ValueError for bad parameters
    and for negative or non-finite samples.
    """

    __slots__ = ("_counts", "_gamma", "_inv_log_gamma", "_offset", "count", "max",
                 "min", "min_value", "relative_accuracy", "sum", "zero_count")

    def __init__(self, relative_accuracy: float = 0.005, min_value: float = 1e-7,
                 max_value: float = 1e7) -> None:
        if not 0.0 < relative_accuracy < 0.5:
            raise ValueError(f"relative_accuracy(={relative_accuracy}) must be in (0, 0.5)")
        if not 0.0 < min_value < max_value:
            raise ValueError(f"need 0 < min_value(={min_value}) < max_value(={max_value})")
        self.relative_accuracy = relative_accuracy
        self.min_value = min_value
        self._gamma = (1.0 + relative_accuracy) / (1.0 - relative_accuracy)
        self._inv_log_gamma = 1.0 / math.log(self._gamma)
        self._offset = math.ceil(math.log(min_value) * self._inv_log_gamma)
        top = math.ceil(math.log(max_value) * self._inv_log_gamma)
        self._counts = [0] * (top - self._offset + 1)
        self.zero_count = 0
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, value: float, weight: int = 1) -> None:
        """Record ``value`` ``weight`` times."""
        if not value >= 0.0 or value == math.inf:
            raise ValueError(f"value(={value}) must be finite and >= 0")
        self.add_positive(value, weight)

    def add_positive(self, value: float, weight: int = 1) -> None:
        """``add`` without the argument check, for values known to be finite and >= 0
        (the hot path)."""
        self.count += weight
        self.sum += value * weight
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        if value <= self.min_value:
            self.zero_count += weight
            return
        i = math.ceil(math.log(value) * self._inv_log_gamma) - self._offset
        counts = self._counts
        if i >= len(counts):
            i = len(counts) - 1
        elif i < 0:
            i = 0
        counts[i] += weight

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else math.nan

    def _value(self, index: int) -> float:
        return 2.0 * self._gamma ** (index + self._offset) / (self._gamma + 1.0)

    def quantile(self, q: float) -> float:
        """The q-quantile (smallest v with at least q of the samples <= v); nan if empty."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q(={q}) must be in [0, 1]")
        if self.count == 0:
            return math.nan
        rank = max(1, math.ceil(q * self.count))
        seen = self.zero_count
        if seen >= rank:
            return 0.0 if self.min <= self.min_value else self.min
        for i, c in enumerate(self._counts):
            seen += c
            if seen >= rank:
                return min(max(self._value(i), self.min), self.max)
        return self.max

    def cdf(self, max_points: int = 200) -> list[tuple[float, float]]:
        """(value, fraction of samples <= value) at up to ``max_points`` bucket edges."""
        if self.count == 0:
            return []
        points: list[tuple[float, float]] = []
        seen = self.zero_count
        if seen:
            points.append((0.0, seen / self.count))
        for i, c in enumerate(self._counts):
            if c:
                seen += c
                points.append((min(self._value(i), self.max), seen / self.count))
        if len(points) > max_points:
            last = len(points) - 1
            keep = sorted({round(k * last / (max_points - 1)) for k in range(max_points)})
            points = [points[i] for i in keep]
        return points

    def summary(self, quantiles: Sequence[float] = (0.5, 0.9, 0.99)) -> dict[str, float]:
        """count, mean, the quantiles (as p50, p90, ...), min and max."""
        out: dict[str, float] = {"count": float(self.count), "mean": self.mean}
        for q in quantiles:
            out[f"p{q * 100:g}"] = self.quantile(q)
        out["min"] = self.min if self.count else math.nan
        out["max"] = self.max if self.count else math.nan
        return out


class TimeSeries:
    """Time-weighted mean and max of ``channels`` values over bounded time buckets.

    ``add(t0, t1, values)`` says the channels held ``values`` over [t0, t1); spans must
    come in time order. Memory: ``max_points`` buckets per channel, whatever the length.
    Raises ValueError for bad parameters or a span that goes back in time.
    """

    __slots__ = ("_area", "_covered", "_max", "_n", "channels", "max_points", "width_s")

    def __init__(self, channels: Sequence[str], max_points: int = 256,
                 initial_width_s: float = 1.0) -> None:
        if max_points < 2 or max_points % 2:
            raise ValueError(f"max_points(={max_points}) must be an even number >= 2")
        if not initial_width_s > 0.0:
            raise ValueError(f"initial_width_s(={initial_width_s}) must be > 0")
        self.channels = tuple(channels)
        self.max_points = max_points
        self.width_s = float(initial_width_s)
        self._n = len(self.channels)
        self._area = [[0.0] * max_points for _ in self.channels]
        self._max = [[-math.inf] * max_points for _ in self.channels]
        self._covered = [0.0] * max_points

    def _merge(self) -> None:
        half = self.max_points // 2
        for c in range(self._n):
            a, m = self._area[c], self._max[c]
            self._area[c] = [a[2 * k] + a[2 * k + 1] for k in range(half)] + [0.0] * half
            self._max[c] = [max(m[2 * k], m[2 * k + 1]) for k in range(half)] + (
                [-math.inf] * half)
        cov = self._covered
        self._covered = [cov[2 * k] + cov[2 * k + 1] for k in range(half)] + [0.0] * half
        self.width_s *= 2.0

    def add(self, t0: float, t1: float, values: Sequence[float]) -> None:
        """Channels held ``values`` over [t0, t1)."""
        if t1 < t0:
            raise ValueError(f"span [{t0}, {t1}) goes back in time")
        while t1 >= self.width_s * self.max_points:
            self._merge()
        w = self.width_s
        i = int(t0 / w)
        if t1 <= (i + 1) * w:  # the common case: the span lies in one bucket
            dt = t1 - t0
            self._covered[i] += dt
            area, top = self._area, self._max
            for c in range(self._n):
                v = values[c]
                area[c][i] += v * dt
                if v > top[c][i]:
                    top[c][i] = v
            return
        while True:
            end = (i + 1) * w
            seg_end = t1 if t1 < end else end
            dt = seg_end - t0
            self._covered[i] += dt
            for c in range(self._n):
                v = values[c]
                self._area[c][i] += v * dt
                if v > self._max[c][i]:
                    self._max[c][i] = v
            if t1 <= end:
                return
            t0 = end
            i += 1

    def points(self) -> dict[str, list[float]]:
        """{"t_s": bucket starts, "<channel>": means, "<channel>_max": maxima}."""
        used = [i for i, cov in enumerate(self._covered) if cov > 0.0]
        out: dict[str, list[float]] = {"t_s": [i * self.width_s for i in used]}
        for c, name in enumerate(self.channels):
            out[name] = [self._area[c][i] / self._covered[i] for i in used]
            out[f"{name}_max"] = [self._max[c][i] for i in used]
        return out

    def mean(self, channel: str) -> float:
        """Time-weighted mean of one channel over everything added."""
        c = self.channels.index(channel)
        total = sum(self._covered)
        return sum(self._area[c]) / total if total > 0 else math.nan

    def maximum(self, channel: str) -> float:
        c = self.channels.index(channel)
        m = max(self._max[c])
        return m if m > -math.inf else math.nan
