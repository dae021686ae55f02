"""Serving metrics as vLLM's benchmark tool defines them (TTFT, TPOT without the first
token, ITL per gap, end-to-end; numpy's linear percentiles), throughput over the
makespan, whether a run's queue grew, and the relative errors the replay reports."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

QUANTILES = (50, 90, 99)
LATENCIES = ("ttft_s", "tpot_s", "itl_s", "e2el_s")
# a run is saturated when its queue grows: the median TTFT of its last third of arrivals
# over twice its first third's (serving under the offered rate over the makespan cannot
# tell a queue from a short run's drain of its last long requests)
SATURATED_TTFT_GROWTH = 2.0


def latency_metrics(arrival_s: Sequence[float], token_s: Sequence[Sequence[float]]
                    ) -> dict[str, Any]:
    """vLLM-benchmark metrics (TPOT without the first token, ITL per gap; numpy's
    linear percentiles) and throughput over the makespan (time 0 to the last token)."""
    ttft = [t[0] - a for a, t in zip(arrival_s, token_s, strict=True)]
    e2el = [t[-1] - a for a, t in zip(arrival_s, token_s, strict=True)]
    tpot = [(t[-1] - t[0]) / (len(t) - 1) for t in token_s if len(t) > 1]
    itl = [b - a for t in token_s for a, b in itertools.pairwise(t)]
    out: dict[str, Any] = {}
    for name, xs in zip(LATENCIES, (ttft, tpot, itl, e2el), strict=True):
        arr = np.asarray(xs, dtype=np.float64)
        out[name] = {f"p{q}": float(np.percentile(arr, q)) if len(arr) else math.nan
                     for q in QUANTILES}
    out["ttft_growth"] = ttft_growth(arrival_s, ttft)
    makespan = max(t[-1] for t in token_s)
    out["makespan_s"] = makespan
    out["requests_per_s"] = len(token_s) / makespan
    out["output_tokens_per_s"] = sum(len(t) for t in token_s) / makespan
    return out


def ttft_growth(arrival_s: Sequence[float], ttft_s: Sequence[float]) -> float:
    """Median TTFT of the last third of the requests by arrival over the first third's
    (NaN with fewer than three requests): about 1 where the engine keeps up, growing
    with the run where its queue does."""
    n = len(arrival_s) // 3
    if n == 0:
        return math.nan
    order = np.argsort(np.asarray(arrival_s, dtype=np.float64), kind="stable")
    ttft = np.asarray(ttft_s, dtype=np.float64)[order]
    first = float(np.median(ttft[:n]))
    return float(np.median(ttft[-n:])) / first if first > 0 else math.inf


def saturated(metrics: dict[str, Any]) -> bool:
    """Whether a run's (``latency_metrics``) queue grew (``SATURATED_TTFT_GROWTH``)."""
    return bool(metrics["ttft_growth"] > SATURATED_TTFT_GROWTH)


def relative_error(pred: float, meas: float) -> float:
    return (pred - meas) / meas if meas else math.nan


def mape(pred: np.ndarray, meas: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - meas) / meas)) if len(meas) else math.nan
