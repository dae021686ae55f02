"""What a serving run measures, in O(1) memory per run.

Per request: TTFT (arrival to first token), TPOT (mean time per output token after
the first), e2e (arrival to last token), queue wait (arrival to first admission). Per
token: inter-token latency. All go into ``LogHistogram``s (quantiles within
``RELATIVE_ACCURACY``; means exact). Over time: queue length, running requests and KV
utilisation in a bounded ``TimeSeries``. Counters: requests, tokens, steps, busy time,
HBM bytes. Little's law: the time-integral of the number of requests in the system,
against the sum of their times in the system.
"""

from __future__ import annotations

import math

from gpusim.serving.invariants import InvariantError, relative_gap, require
from gpusim.serving.requests import Request
from gpusim.serving.stats import LogHistogram, TimeSeries

RELATIVE_ACCURACY = 0.005
METRIC_DEFINITIONS = (
    "Metrics as vLLM's benchmark tool defines them: TTFT = first token - arrival; TPOT "
    "= (last token - first token) / (output tokens - 1) per request, the first token "
    "excluded; ITL = every gap between two tokens of a request; E2E = last token - "
    "arrival. Quantiles within 0.5% (log-bucket histograms).")
SERIES_POINTS = 256
SERIES_CHANNELS = ("queue_length", "running", "kv_utilisation")
LATENCIES = ("ttft_s", "tpot_s", "itl_s", "e2e_s", "queue_wait_s")


class Metrics:
    """Streaming recorder; ``window_s`` is the arrival window (for Little's law)."""

    def __init__(self, window_s: float, slo_ttft_s: float, slo_tpot_s: float,
                 series_points: int = SERIES_POINTS) -> None:
        self.window_s = window_s
        self.slo_ttft_s = slo_ttft_s
        self.slo_tpot_s = slo_tpot_s
        self.hist = {name: LogHistogram(RELATIVE_ACCURACY) for name in LATENCIES}
        self.itl = self.hist["itl_s"]
        self.series = TimeSeries(SERIES_CHANNELS, series_points,
                                 initial_width_s=max(window_s, 1e-3) / (series_points // 2))
        self.arrived = 0
        self.rejected: dict[str, int] = {}
        self.completed = 0
        self.good = 0
        self.good_output_tokens = 0
        self.prompt_tokens_done = 0
        self.output_tokens_done = 0
        self.processed_tokens_done = 0   # P + O - 1 per completed request
        self.tokens_emitted = 0
        self.tokens_processed = 0
        self.prefill_tokens = 0
        self.steps = 0
        self.busy_s = 0.0
        self.hbm_bytes = 0.0
        # Little's law
        self.in_system = 0
        self._last_t = 0.0
        self.area = 0.0
        self.area_window = 0.0
        self.sojourn_s = 0.0
        self.clock_s = 0.0

    # --- events ------------------------------------------------------------------
    def _advance(self, t: float) -> None:
        dt = t - self._last_t
        require(dt >= 0.0, f"clock went back: {self._last_t!r} -> {t!r}")
        self.area += self.in_system * dt
        if self._last_t < self.window_s:
            self.area_window += self.in_system * (min(t, self.window_s) - self._last_t)
        self._last_t = t

    def arrive(self, t: float) -> None:
        self._advance(t)
        self.in_system += 1
        self.arrived += 1

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def first_token(self, req: Request, t: float) -> None:
        self.hist["ttft_s"].add(t - req.arrival_s)
        self.hist["queue_wait_s"].add(req.service_start_s - req.arrival_s)

    def finish(self, req: Request, t: float) -> None:
        """Record a completed request and check its latencies."""
        self._advance(t)
        self.in_system -= 1
        ttft = req.first_token_s - req.arrival_s
        e2e = t - req.arrival_s
        require(0.0 <= ttft <= e2e, f"request {req.rid}: TTFT {ttft!r} > e2e {e2e!r}")
        require(req.generated == req.output_tokens,
                f"request {req.rid}: generated {req.generated} of {req.output_tokens}")
        self.hist["e2e_s"].add(e2e)
        good = ttft <= self.slo_ttft_s
        if req.output_tokens > 1:
            tpot = (t - req.first_token_s) / (req.output_tokens - 1)
            self.hist["tpot_s"].add(tpot)
            good = good and tpot <= self.slo_tpot_s
        if good:
            self.good += 1
            self.good_output_tokens += req.output_tokens
        self.completed += 1
        self.sojourn_s += e2e
        self.prompt_tokens_done += req.prompt_tokens
        self.output_tokens_done += req.output_tokens
        self.processed_tokens_done += req.prompt_tokens + req.output_tokens - 1

    def step(self, t0: float, t1: float, tokens: int, hbm_bytes: float, waiting: int,
             running: int, kv_utilisation: float) -> None:
        if not t1 > t0:  # also catches NaN
            raise InvariantError(f"step of non-positive duration at t={t0!r}: {t1 - t0!r} s")
        self.steps += 1
        self.busy_s += t1 - t0
        self.hbm_bytes += hbm_bytes
        self.tokens_processed += tokens
        self.series.add(t0, t1, (waiting, running, kv_utilisation))
        self.clock_s = t1

    def idle(self, t0: float, t1: float, kv_utilisation: float) -> None:
        self.series.add(t0, t1, (0, 0, kv_utilisation))
        self.clock_s = t1

    # --- results -----------------------------------------------------------------
    def littles_law(self) -> dict[str, float]:
        """L = lambda W over the arrival window (and over the whole run, where it is an
        identity of the bookkeeping)."""
        n = self.completed
        w = self.sojourn_s / n if n else math.nan
        d = self.window_s
        lam = n / d if d > 0 else math.nan
        mean_in_system = self.area_window / d if d > 0 else math.nan
        return {
            "window_s": d,
            "arrival_rate_per_s": lam,
            "mean_time_in_system_s": w,
            "mean_in_system": mean_in_system,
            "lambda_times_w": lam * w,
            "relative_gap": relative_gap(mean_in_system, lam * w) if n else math.nan,
            "whole_run_relative_gap": relative_gap(self.area, self.sojourn_s) if n else 0.0,
        }

    def latency_summary(self) -> dict[str, dict[str, float]]:
        return {name: h.summary() for name, h in self.hist.items()}

    def cdfs(self, points: int = 200) -> dict[str, list[tuple[float, float]]]:
        return {name: h.cdf(points) for name, h in self.hist.items() if name != "queue_wait_s"}
