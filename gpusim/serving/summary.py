"""The summary of a finished serving run: a typed, frozen record and its JSON form.

``summarize`` checks the end-of-run invariants (tokens conserved, KV cache empty and
consistent, everyone accepted completed, Little's law as a bookkeeping identity) and
builds a ``ServingSummary``; ``ServingSummary.as_dict()`` is the dictionary that
``simulate`` returns and the report writers format, key for key.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gpusim.serving.invariants import require
from gpusim.serving.metrics import RELATIVE_ACCURACY, Metrics
from gpusim.serving.prefix_cache import PrefixKVCache
from gpusim.serving.state import EngineState
from gpusim.serving.workload import Source

if TYPE_CHECKING:  # simulate imports this module; the engine is only a type here
    from gpusim.serving.scenario import Scenario
    from gpusim.serving.simulate import Engine

LITTLE_IDENTITY_TOLERANCE = 1e-9


@dataclass(frozen=True)
class RequestCounts:
    """Requests by fate; ``arrived`` counts the rejected ones too."""

    arrived: int
    accepted: int
    completed: int
    rejected: int
    rejected_by_reason: dict[str, int]
    preemptions: int
    met_slo: int


@dataclass(frozen=True)
class TokenCounts:
    """Tokens of the completed requests, and what the engine processed for them."""

    prompt: int
    output: int
    processed: int
    recomputed: int


@dataclass(frozen=True)
class Throughput:
    """Completions per second of makespan."""

    requests_per_s: float
    output_tokens_per_s: float
    total_tokens_per_s: float


@dataclass(frozen=True)
class Goodput:
    """Completions that met both SLOs, per second of makespan, and their share."""

    requests_per_s: float
    output_tokens_per_s: float
    fraction: float


@dataclass(frozen=True)
class EngineUse:
    """How busy the engine was, and its queue, batch and KV cache over time."""

    steps: int
    busy_fraction: float
    mean_step_s: float
    mean_tokens_per_step: float
    achieved_hbm_bandwidth_bytes_per_s: float
    hbm_bandwidth_fraction: float
    mean_running: float
    max_running: float
    mean_queue_length: float
    max_queue_length: float
    mean_kv_utilisation: float
    max_kv_utilisation: float


@dataclass(frozen=True)
class ServingSummary:
    """Everything a serving run reports (deterministic for a given seed).

    The nested dictionaries are the inputs' own descriptions (workload, scheduler,
    SLO, KV budget, draft) and the streaming statistics' outputs (latency quantiles,
    Little's law, the time series, latency CDFs).
    """

    gpu: str
    model: str
    stack: str
    calibration: str
    launch: str
    scenario: str
    seed: int
    duration_s: float
    makespan_s: float
    workload: dict[str, Any]
    scheduler: dict[str, Any]
    slo: dict[str, Any]
    kv_cache: dict[str, float | int]
    speculative: dict[str, object] | None   # None: plain decoding (no key in as_dict)
    requests: RequestCounts
    tokens: TokenCounts
    latency_s: dict[str, dict[str, float]]
    throughput: Throughput
    goodput: Goodput
    engine: EngineUse
    littles_law: dict[str, float]
    invariants: dict[str, bool]
    quantile_relative_accuracy: float
    time_series: dict[str, list[float]]
    latency_cdf: dict[str, list[list[float]]]
    prefix_cache: dict[str, float | int] | None = None  # None: off (no key in as_dict)

    def as_dict(self) -> dict[str, Any]:
        """The JSON-ready dictionary (``simulate``'s result), in field order; it
        shares the nested dictionaries and lists with this record."""
        # not dataclasses.asdict: its deep copy of the time series and CDFs costs as
        # much as a thousand engine steps
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, value in out.items():
            if dataclasses.is_dataclass(value):
                out[name] = {f.name: getattr(value, f.name)
                             for f in dataclasses.fields(value)}
        if self.speculative is None:
            del out["speculative"]
        if self.prefix_cache is None:
            del out["prefix_cache"]
        return out


def final_checks(st: EngineState, source: Source, m: Metrics) -> dict[str, bool]:
    """End-of-run invariants; raises InvariantError naming the first that fails."""
    kv = st.kv
    kv.check()
    require(kv.used_blocks == 0, f"KV cache not empty at the end: {kv.used_blocks} blocks")
    require(not st.running and not st.waiting and source.next_s == math.inf,
            "run ended with requests still pending")
    require(m.completed == m.arrived and m.in_system == 0,
            f"{m.arrived} accepted but {m.completed} completed")
    require(m.tokens_emitted == m.output_tokens_done,
            f"tokens not conserved: emitted {m.tokens_emitted}, requests asked for "
            f"{m.output_tokens_done}")
    require(m.tokens_processed + st.prefix_hit_tokens
            == m.processed_tokens_done + st.lost_tokens,
            f"tokens not conserved: processed {m.tokens_processed} (+ "
            f"{st.prefix_hit_tokens} from the prefix cache), expected "
            f"{m.processed_tokens_done} + {st.lost_tokens} recomputed")
    gap = m.littles_law()["whole_run_relative_gap"]
    require(gap <= LITTLE_IDENTITY_TOLERANCE,
            f"Little's law bookkeeping: integral of requests in system differs from the "
            f"sum of times in system by {gap:.3g} (relative)")
    # TTFT <= e2e and the KV capacity are checked as they happen (Metrics.finish,
    # PagedKVCache); reaching here means they held throughout
    return {"clock_monotone": True, "ttft_le_e2e": True, "kv_within_capacity": True,
            "tokens_conserved": True, "all_requests_completed": True,
            "littles_law_whole_run": True}


def summarize(engine: Engine, scenario: Scenario, source: Source, st: EngineState,
              m: Metrics, end_s: float) -> ServingSummary:
    """The summary of a run that ended at ``end_s`` (its last completion).

    Raises InvariantError when an end-of-run invariant fails (``final_checks``).
    """
    checks = final_checks(st, source, m)
    makespan = end_s if end_s > 0 else math.nan
    rejected = sum(m.rejected.values())
    workload = source.describe()
    if scenario.prompt is not None:
        workload["prompt"] = scenario.prompt.model_dump(exclude_none=True)
    if scenario.output is not None:
        workload["output"] = scenario.output.model_dump(exclude_none=True)
    return ServingSummary(
        gpu=engine.gpu.name, model=engine.model.name, stack=engine.stack.name,
        calibration=engine.calibration.fitted_on, launch=engine.launch,
        scenario=scenario.name, seed=scenario.seed, duration_s=m.window_s,
        makespan_s=end_s, workload=workload, scheduler=scenario.scheduler.describe(),
        slo=scenario.slo.model_dump(), kv_cache=engine.budget.as_dict(),
        speculative=engine.spec.describe() if engine.spec is not None else None,
        requests=RequestCounts(
            arrived=m.arrived + rejected, accepted=m.arrived, completed=m.completed,
            rejected=rejected, rejected_by_reason=dict(sorted(m.rejected.items())),
            preemptions=st.preemptions, met_slo=m.good),
        tokens=TokenCounts(prompt=m.prompt_tokens_done, output=m.output_tokens_done,
                           processed=m.tokens_processed, recomputed=st.lost_tokens),
        latency_s=m.latency_summary(),
        throughput=Throughput(
            requests_per_s=m.completed / makespan,
            output_tokens_per_s=m.output_tokens_done / makespan,
            total_tokens_per_s=(m.prompt_tokens_done + m.output_tokens_done) / makespan),
        goodput=Goodput(
            requests_per_s=m.good / makespan,
            output_tokens_per_s=m.good_output_tokens / makespan,
            fraction=m.good / m.completed if m.completed else math.nan),
        engine=_engine_use(engine, m, makespan),
        littles_law=m.littles_law(), invariants=checks,
        quantile_relative_accuracy=RELATIVE_ACCURACY, time_series=m.series.points(),
        latency_cdf={k: [list(p) for p in v] for k, v in m.cdfs().items()},
        prefix_cache=(st.kv.describe() if isinstance(st.kv, PrefixKVCache)
                      else None))


def _engine_use(engine: Engine, m: Metrics, makespan: float) -> EngineUse:
    achieved = m.hbm_bytes / m.busy_s if m.busy_s > 0 else math.nan
    series = m.series
    return EngineUse(
        steps=m.steps,
        busy_fraction=m.busy_s / makespan,
        mean_step_s=m.busy_s / m.steps if m.steps else math.nan,
        mean_tokens_per_step=m.tokens_processed / m.steps if m.steps else math.nan,
        achieved_hbm_bandwidth_bytes_per_s=achieved,
        hbm_bandwidth_fraction=achieved / engine.gpu.hbm_bandwidth_bytes_per_s,
        mean_running=series.mean("running"),
        max_running=series.maximum("running"),
        mean_queue_length=series.mean("queue_length"),
        max_queue_length=series.maximum("queue_length"),
        mean_kv_utilisation=series.mean("kv_utilisation"),
        max_kv_utilisation=series.maximum("kv_utilisation"),
    )
