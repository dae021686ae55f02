"""The serving simulator's verdict on a deployment: one replica's share of the traffic
run through ``gpusim.serving`` (``build_engine``, ``simulate``), as ``gpusim serve``
runs it, and judged against the SLOs.

One engine is built per option (GPU, stack, tp, speculation) with the largest
scheduler limits searched: its step-time tables cover every smaller limit, so each
limits pair and replica count reuses it (``serving.loop`` accepts an engine built for
larger limits; a table's entries do not depend on its extent). Verdicts are cached by
deployment, load factor and window.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpusim.plan.space import Deployment, Limits, Option, Slo
from gpusim.plan.workload import WorkloadProfile, replica_scenario, sim_window_s
from gpusim.serving import Engine, build_engine, simulate
from gpusim.serving.scenario import Scenario
from gpusim.serving.shapes import StepShapes
from gpusim.serving.trace import Trace

BACKLOG_GROWTH = 2.0    # requests: a queue that grows more over a window is overloaded


@dataclass(frozen=True)
class Verdict:
    """A simulated deployment: one replica's p99 latencies (seconds), what it rejected
    and preempted, and whether it meets the SLOs (``miss``: which target it missed, in
    words; ``overloaded``: its waiting queue kept growing). ``window_s``: the arrival
    window simulated; ``wall_s``: the run's time; ``shapes``: its steps' shapes, tallied
    only over the scenario's full window (a confirming run: what the winner's trust is
    judged on), else None."""

    deployment: Deployment
    load_factor: float
    window_s: float
    ttft_p99_s: float
    tpot_p99_s: float
    completed: int
    rejected: int
    preemptions: int
    output_tokens_per_s: float
    meets: bool
    miss: str
    wall_s: float
    overloaded: bool = False
    shapes: StepShapes | None = field(default=None, compare=False, repr=False)

    @property
    def cost_per_hour(self) -> float:
        return self.deployment.cost_per_hour

    def score(self, slo: Slo) -> float:
        """The larger of the two p99s as a fraction of its target (lower is better)."""
        return max(self.ttft_p99_s / slo.ttft_p99_s, self.tpot_p99_s / slo.tpot_p99_s)


def _p99(summary: dict[str, Any], name: str) -> float:
    value = summary["latency_s"][name].get("p99")
    return float(value) if value is not None and math.isfinite(value) else math.inf


def backlog_growth(summary: dict[str, Any]) -> tuple[float, float]:
    """(growth, base): the waiting queue's mean over the last quarter of the arrival
    window less its mean over the second (requests; the first quarter is warm-up), and
    that second quarter's mean."""
    ts = summary.get("time_series") or {}
    t = np.asarray(ts.get("t_s", ()), dtype=np.float64)
    q = np.asarray(ts.get("queue_length", ()), dtype=np.float64)
    q = q[t <= float(summary["duration_s"])] if len(t) == len(q) else q
    if len(q) < 8:
        return 0.0, 0.0
    n = len(q)
    base = float(q[n // 4:n // 2].mean())
    return float(q[3 * n // 4:].mean()) - base, base


def _overloaded(summary: dict[str, Any]) -> bool:
    growth, base = backlog_growth(summary)
    return growth > max(BACKLOG_GROWTH, 0.25 * base)


def judge(summary: dict[str, Any], slo: Slo) -> tuple[float, float, bool, str]:
    """(TTFT p99, TPOT p99, meets, what it missed) of a ``simulate`` summary: it meets
    the SLOs when both p99s are within their targets, no request was rejected and the
    queue did not keep growing (an overloaded engine can look fine over a short
    window: a backlog grown by more than ``BACKLOG_GROWTH`` requests, or a quarter of
    what it was, counts as a miss)."""
    ttft, tpot = _p99(summary, "ttft_s"), _p99(summary, "tpot_s")
    rejected = int(summary["requests"]["rejected"])
    misses = []
    if _overloaded(summary):
        growth, _ = backlog_growth(summary)
        misses.append(f"backlog grew by {growth:.3g} requests over the window (overloaded)")
    if ttft > slo.ttft_p99_s:
        misses.append(f"TTFT p99 {ttft:.3g} s > {slo.ttft_p99_s:g} s")
    if tpot > slo.tpot_p99_s:
        misses.append(f"TPOT p99 {tpot * 1e3:.3g} ms > {slo.tpot_p99_s * 1e3:.3g} ms")
    if rejected:
        misses.append(f"{rejected} requests rejected")
    return ttft, tpot, not misses, "; ".join(misses)


class Simulator:
    """Engines and verdicts for one plan (module docstring)."""

    def __init__(self, scenario: Scenario, trace: Trace | None, profile: WorkloadProfile,
                 slo: Slo, largest: Limits, sim_duration_s: float, min_requests: int
                 ) -> None:
        self.scenario, self.trace, self.profile, self.slo = scenario, trace, profile, slo
        self.largest = largest
        self.sim_duration_s, self.min_requests = sim_duration_s, min_requests
        self._engines: dict[str, Engine] = {}
        self._verdicts: dict[tuple[Any, ...], Verdict] = {}
        self.runs = 0
        self.build_s = 0.0
        self.sim_s = 0.0

    def scenario_for(self, deployment: Deployment, load_factor: float,
                     window_s: float) -> Scenario:
        """The scenario one replica of ``deployment`` runs at ``load_factor``."""
        o = deployment.option
        return replica_scenario(self.scenario, load_factor / deployment.replicas, window_s,
                                self.slo.ttft_p99_s, self.slo.tpot_p99_s,
                                deployment.limits.max_num_seqs,
                                deployment.limits.max_num_batched_tokens, o.spec)

    def engine(self, option: Option) -> Engine:
        """The option's engine, built once with the largest limits. Raises ConfigError
        when the model does not fit."""
        hit = self._engines.get(option.key)
        if hit is None:
            t0 = time.perf_counter()
            sc = replica_scenario(self.scenario, 1.0, self.profile.window_s,
                                  self.slo.ttft_p99_s, self.slo.tpot_p99_s,
                                  self.largest.max_num_seqs,
                                  self.largest.max_num_batched_tokens, option.spec)
            spec = option.spec
            hit = build_engine(option.platform, option.model, sc,
                               spec.draft if spec is not None else None,
                               option.hardware.overhead if spec is not None else None)
            self._engines[option.key] = hit
            self.build_s += time.perf_counter() - t0
        return hit

    def window_s(self, deployment: Deployment, load_factor: float, full: bool) -> float:
        """The simulated arrival window: the scenario's own (``full``), else a shorter
        one that still holds ``min_requests`` requests (``workload.sim_window_s``)."""
        share = load_factor / deployment.replicas
        if full:
            return sim_window_s(self.profile, share, math.inf, 0)
        return sim_window_s(self.profile, share, self.sim_duration_s, self.min_requests)

    def run(self, deployment: Deployment, load_factor: float = 1.0, full: bool = False
            ) -> Verdict:
        """Simulate one replica of ``deployment`` at ``load_factor`` times the offered
        load (cached). Raises ConfigError when the model does not fit."""
        window = self.window_s(deployment, load_factor, full)
        key = (deployment.key, load_factor, window)
        hit = self._verdicts.get(key)
        if hit is not None:
            return hit
        engine = self.engine(deployment.option)
        sc = self.scenario_for(deployment, load_factor, window)
        # the full window's run may stand as the winner: tally its step shapes (trust)
        shapes = StepShapes() if window == self.window_s(deployment, load_factor, True) else None
        t0 = time.perf_counter()
        summary = simulate(engine, sc, None, self.trace, shapes)
        wall = time.perf_counter() - t0
        self.sim_s += wall
        self.runs += 1
        ttft, tpot, meets, miss = judge(summary, self.slo)
        verdict = Verdict(
            deployment=deployment, load_factor=load_factor, window_s=window,
            ttft_p99_s=ttft, tpot_p99_s=tpot,
            completed=int(summary["requests"]["completed"]),
            rejected=int(summary["requests"]["rejected"]),
            preemptions=int(summary["requests"]["preemptions"]),
            output_tokens_per_s=float(summary["throughput"]["output_tokens_per_s"]),
            meets=meets, miss=miss, wall_s=wall, overloaded=_overloaded(summary),
            shapes=shapes)
        self._verdicts[key] = verdict
        return verdict
