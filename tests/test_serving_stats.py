"""Streaming statistics: quantile accuracy, exact moments, bounded time series."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpusim.serving.stats import LogHistogram, TimeSeries


@pytest.mark.parametrize("dist", ["lognormal", "exponential", "uniform"])
def test_quantiles_within_relative_accuracy(dist: str) -> None:
    rng = np.random.default_rng(5)
    x = {"lognormal": lambda: rng.lognormal(-3, 1.5, 20000),
         "exponential": lambda: rng.exponential(0.02, 20000),
         "uniform": lambda: rng.uniform(1e-4, 10, 20000)}[dist]()
    h = LogHistogram(relative_accuracy=0.005)
    for v in x:
        h.add(float(v))
    for q in (0.01, 0.5, 0.9, 0.99, 0.999, 1.0):
        true = np.quantile(x, q, method="inverted_cdf")
        assert abs(h.quantile(q) / true - 1) <= 0.005 + 1e-12, q
    assert h.count == len(x)
    assert h.mean == pytest.approx(x.mean(), rel=1e-12)
    assert h.min == x.min() and h.max == x.max()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=1e4, allow_nan=False), min_size=1,
                max_size=300),
       st.floats(min_value=0, max_value=1))
def test_quantile_is_a_near_sample_value(values: list[float], q: float) -> None:
    h = LogHistogram(relative_accuracy=0.01, min_value=1e-6)
    for v in values:
        h.add(v)
    got = h.quantile(q)
    true = float(np.quantile(np.asarray(values), q, method="inverted_cdf"))
    assert abs(got - true) <= 0.01 * true + 1e-6


def test_weighted_add_and_zero_bucket() -> None:
    h = LogHistogram()
    h.add(0.0, weight=3)
    h.add(2.0, weight=7)
    assert h.count == 10 and h.sum == 14.0
    assert h.quantile(0.3) == 0.0
    assert h.quantile(0.31) == pytest.approx(2.0, rel=0.005)
    cdf = h.cdf()
    assert cdf[0] == (0.0, 0.3) and cdf[-1][1] == 1.0


def test_histogram_rejects_bad_values() -> None:
    h = LogHistogram()
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError):
            h.add(bad)
    assert math.isnan(h.quantile(0.5))


def test_histogram_memory_is_fixed() -> None:
    h = LogHistogram()
    size = len(h._counts)
    for v in np.random.default_rng(0).lognormal(0, 4, 5000):
        h.add(float(v))
    assert len(h._counts) == size


def test_time_series_bounded_and_integral_preserved() -> None:
    ts = TimeSeries(("a",), max_points=8, initial_width_s=1.0)
    area = 0.0
    t = 0.0
    rng = np.random.default_rng(1)
    for _ in range(5000):
        dt = float(rng.exponential(0.7))
        v = float(rng.integers(0, 10))
        ts.add(t, t + dt, (v,))
        area += v * dt
        t += dt
    pts = ts.points()
    assert len(pts["t_s"]) <= 8
    assert ts.mean("a") == pytest.approx(area / t, rel=1e-9)
    assert ts.maximum("a") == 9


def test_time_series_rejects_going_back() -> None:
    ts = TimeSeries(("a",), max_points=4)
    with pytest.raises(ValueError):
        ts.add(2.0, 1.0, (0.0,))
    with pytest.raises(ValueError):
        TimeSeries(("a",), max_points=3)
