"""gpusim's serving simulator against measured serving runs (``gpusim serve --replay``).

For a run of the harness's engine (``serving_measured.ServingRun``), three views:

* per step: the step-time model prices the composition each measured step ran
  (decoding sequences and their context, prefill chunks), against the GPU span of the
  step's forward (CUDA events; on a CPU its wall time), and the fitted host work per
  step (``HostParams.serving_step_host_s`` + ``serving_seq_host_s`` x sequences +
  ``serving_chunk_host_s`` x prefill chunks + ``serving_prefill_token_host_s`` x prefill
  tokens) against the rest of the step;
* the simulation: the same arrivals, lengths and content, the same scheduler settings
  and KV blocks, every step priced by the model plus the host work: TTFT, TPOT, ITL and
  end-to-end latency quantiles and throughput, against the measured ones;
* the simulation with measured step times: each simulated step whose composition a
  measured step ran takes that step's measured duration, so what differs from the
  measurement is the schedule (and waking up for arrivals): the scheduling error.
* the simulation with every step ``STEP_SPREAD`` longer (``ScaledStepTimes``): how far
  the metrics move within the lease-to-lease spread of the steps
  (``serving_sensitivity``).

The host work (``serving_host``) is fitted over the steps of the other runs (leave one
run out), or of the run itself when it is the only one (then said so). So is the host
cost per kernel launch of the engine's eager steps (mixed steps, decode past the
largest capture size; a piecewise step's launches outside its graphs), which a serving
engine's Python pays on top of what the stack's own benchmark loop does (the harness:
~30 us a launch against torch-fused's ~15 us, probed).
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpusim.calibration.serving_host import (
    PIECEWISE,
    HostFit,
    eager_terms,
    fit_host,
    fit_launch,
    step_kind,
    step_parts,
    step_seconds,
    without_host,
)
from gpusim.calibration.serving_measured import MeasuredStep, ServingRun
from gpusim.calibration.serving_metrics import latency_metrics, mape, saturated
from gpusim.platform import Platform
from gpusim.serving.conversation import ListedSource
from gpusim.serving.loop import ServingLoop
from gpusim.serving.plan import StepPlan
from gpusim.serving.scenario import Scenario
from gpusim.serving.simulate import Engine, build_engine
from gpusim.serving.step_time import StepTimeModel
from gpusim.specs import ModelSpec

# how much longer every step is priced in the sensitivity replay: the lease-to-lease
# spread of one GPU kind's steps measured here (13 torch-fused shapes 1.8% apart on two
# H100 leases, validation/data/h100-sxm/probe_2026-12-06/README.md; the serving
# harness's 8B decode steps 1.9% apart, SERVING_REPORT_piecewise.md's repeats)
STEP_SPREAD = 0.02


def replay_scenario(run: ServingRun) -> Scenario:
    """The scenario of ``run``'s engine: its scheduler limits, KV block size, prefix
    caching, CUDA-graph sizes and mode (``ServingRun.cudagraph_mode``); the arrivals
    come from the run itself."""
    e = run.engine
    return Scenario.model_validate({
        "name": f"replay-{run.load}" if run.load[:1].isalnum() else "replay",
        "trace": {"path": str(run.path / "requests.jsonl")},
        "scheduler": {"max_num_seqs": e["max_num_seqs"],
                      "max_num_batched_tokens": e["max_num_batched_tokens"],
                      "block_size_tokens": e["block_size"],
                      "prefix_caching": e["prefix_caching"],
                      "cudagraph_capture_sizes": e["capture_sizes"] or None,
                      "cudagraph_mode": run.cudagraph_mode}})


def replay_source(run: ServingRun) -> ListedSource:
    """The run's requests as they arrived, their content keys numbered in order of
    first appearance."""
    keys: dict[str, int] = {}

    def key(name: str) -> int:
        return keys.setdefault(name, len(keys))

    rows = [(r.arrival_s, r.prompt_tokens, r.output_tokens,
             tuple((key(k), n) for k, n in r.segments), key(r.output_key))
            for r in run.requests]
    return ListedSource(rows, str(run.path))


class _WrappedStepTimes(ABC):
    """A step-time model that passes each step's composition and the wrapped model's
    time to ``_time`` for the time it gives; bytes moved and everything else are the
    wrapped model's."""

    def __init__(self, base: StepTimeModel) -> None:
        self._base = base

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base, name)

    @abstractmethod
    def _time(self, key: tuple, model_s: float) -> float:
        """The time a step of composition ``key`` takes, given the wrapped model's."""

    def decode_step(self, batch: int, ctx_sum: float, longest: int = 0
                    ) -> tuple[float, float]:
        t, moved = self._base.decode_step(batch, ctx_sum, longest)
        return self._time((batch, ctx_sum, ()), t), moved

    def step(self, decode: int, ctx_sum: float, chunks, longest: int = 0
             ) -> tuple[float, float]:
        chunks = list(chunks)
        t, moved = self._base.step(decode, ctx_sum, chunks, longest)
        return self._time((decode, ctx_sum, tuple(chunks)), t), moved


class MeasuredStepTimes(_WrappedStepTimes):
    """A step-time model that gives a step the measured duration of a step of the same
    composition (in measured order where one repeats); a composition never measured
    gets the model's time scaled by the median measured / modelled ratio of its kind
    (decode-only, mixed, or mixed replaying piecewise graphs), so that what remains is
    the schedule's doing, not the step model's. Counts both. Everything else is the
    wrapped model's."""

    def __init__(self, base: StepTimeModel, steps: Sequence[MeasuredStep]) -> None:
        super().__init__(base)
        self._table: dict[tuple, list[float]] = defaultdict(list)
        ratios: dict[str, list[float]] = {"decode": [], "mixed": [], "piecewise": []}
        for s in steps:
            self._table[s.composition].append(s.duration_s)
            ratios[self._kind(s.composition)].append(
                s.duration_s / step_seconds(base, s.composition, s.longest))
        self._scale = {k: float(np.median(v)) if v else 1.0 for k, v in ratios.items()}
        self._used: dict[tuple, int] = defaultdict(int)
        self.matched = 0
        self.modelled = 0

    def _kind(self, key: tuple) -> str:
        """decode, mixed or piecewise: how the model runs a composition (the reader
        holds a run's piecewise steps to the same)."""
        decode, _, chunks = key
        if not chunks:
            return "decode"
        tokens = decode + sum(n for n, _ in chunks)
        return "mixed" if self._base.padded_tokens(tokens) is None else "piecewise"

    def _time(self, key: tuple, model_s: float) -> float:
        times = self._table.get(key)
        if not times:
            self.modelled += 1
            return model_s * self._scale[self._kind(key)]
        self.matched += 1
        i = min(self._used[key], len(times) - 1)
        self._used[key] += 1
        return times[i]


class ScaledStepTimes(_WrappedStepTimes):
    """A step-time model whose every step (forward and host work) takes ``factor``
    times the wrapped model's time; bytes moved and everything else are the wrapped
    model's."""

    def __init__(self, base: StepTimeModel, factor: float) -> None:
        super().__init__(base)
        self._factor = factor

    def _time(self, key: tuple, model_s: float) -> float:
        return model_s * self._factor


@dataclass(frozen=True)
class Simulated:
    """A replay's outcome: the summary, every request's token times, the steps."""

    summary: dict[str, Any]
    token_s: list[list[float]]
    plans: list[StepPlan]


def simulate_run(run: ServingRun, engine: Engine) -> Simulated:
    """Simulate ``run``'s arrivals on ``engine``; raises ValueError if the simulator
    rejects a request the engine served (the two disagree on its limits)."""
    source = replay_source(run)
    loop = ServingLoop(engine, replay_scenario(run), source=source)
    prompt = [r.prompt_tokens for r in run.requests]
    generated = [0] * len(prompt)
    times: list[list[float]] = [[] for _ in prompt]
    plans = []
    while not loop.finished:
        plan = loop.step().plan
        plans.append(plan)
        for rid in plan.decoding:
            times[rid].append(plan.end_s)
            generated[rid] += 1
        for c in plan.prefill:
            if c.cached_tokens + c.new_tokens == prompt[c.rid] + generated[c.rid]:
                times[c.rid].append(plan.end_s)
                generated[c.rid] += 1
    summary = loop.summary().as_dict()
    if summary["requests"]["accepted"] != len(prompt):
        raise ValueError(f"{run.path}: the simulator rejected "
                         f"{len(prompt) - summary['requests']['accepted']} requests the "
                         "engine served")
    return Simulated(summary, times, plans)


@dataclass(frozen=True)
class RunComparison:
    """One run against its replay (see the module docstring); errors are relative,
    (simulated - measured) / measured."""

    run: ServingRun
    host: HostFit
    host_in_sample: bool
    step_errors: dict[str, dict[str, float]]      # kind -> forward/host/total MAPE, count
    # mixed steps by the parts they hold (serving_host.step_parts) -> forward MAPE, bias,
    # count
    mixed_parts: dict[str, dict[str, float]]
    measured: dict[str, Any]
    simulated: dict[str, Any]
    with_measured_steps: dict[str, Any]
    steps_matched: float                          # share of oracle steps found measured
    simulated_steps: int
    simulated_preemptions: int
    simulated_prefix: dict[str, Any] | None
    oracle_steps: int                             # the same, with measured step times
    oracle_preemptions: int
    oracle_prefix: dict[str, Any] | None
    # the simulation with every step STEP_SPREAD longer: how far the metrics move
    # within the lease-to-lease spread of the steps
    slower_steps: dict[str, Any]
    # the 99th percentile of the decoding rows a step runs, measured and simulated: where
    # the simulation's outgrow the measurement's past a CUDA-graph capture size, its
    # steps pad to the next size and slow down, which keeps more rows decoding
    decoding_p99: tuple[float, float] = (math.nan, math.nan)


def compare_run(run: ServingRun, platform: Platform, model: ModelSpec,
                host: HostFit, host_in_sample: bool) -> RunComparison:
    """Compare ``run`` with its replay on ``platform`` with ``host`` work (its launch
    cost None: the calibration's). Raises ConfigError/ValueError where the run cannot be
    replayed."""
    # the replay's own fit stands in for the shipped host costs of either mode
    cal = platform.calibration.replace(host.fields()).model_copy(
        update={"host_piecewise": None})
    engine = build_engine(platform.with_calibration(cal), model, replay_scenario(run),
                          kv_blocks=int(run.engine["num_blocks"]))
    forward_model = without_host(engine.step_model)
    by_kind: dict[str, list[tuple[float, float, float, float]]] = defaultdict(list)
    by_parts: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for s in run.steps:
        fwd = step_seconds(forward_model, s.composition, s.longest)
        hst = host.seconds(s)
        row = (fwd, s.gpu_s, hst, s.host_s)
        by_kind[step_kind(s)].append(row)
        by_kind["all"].append(row)
        if s.chunks:
            by_parts[step_parts(s)].append((fwd, s.gpu_s))
    step_errors = {}
    order = ("decode, graph", "decode, eager", "mixed", PIECEWISE, "all")
    for kind, rows in sorted(by_kind.items(), key=lambda kv: order.index(kv[0])):
        a = np.array(rows)
        step_errors[kind] = {"count": float(len(a)), "forward": mape(a[:, 0], a[:, 1]),
                             "host": mape(a[:, 2], np.maximum(a[:, 3], 1e-9)),
                             "total": mape(a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]),
                             "forward_bias": float(np.median((a[:, 0] - a[:, 1]) / a[:, 1]))}
    mixed_parts = {}
    for parts, rows in sorted(by_parts.items()):
        a = np.array(rows)
        mixed_parts[parts] = {"count": float(len(a)), "forward": mape(a[:, 0], a[:, 1]),
                              "forward_bias": float(np.median((a[:, 0] - a[:, 1]) / a[:, 1]))}
    arrivals = [r.arrival_s for r in run.requests]
    measured = latency_metrics(arrivals, [r.token_s for r in run.requests])
    sim = simulate_run(run, engine)
    oracle_times = MeasuredStepTimes(engine.step_model, run.steps)
    oracle = simulate_run(run, dataclasses.replace(engine, step_model=oracle_times))
    looked_up = oracle_times.matched + oracle_times.modelled
    slower = simulate_run(run, dataclasses.replace(
        engine, step_model=ScaledStepTimes(engine.step_model, 1.0 + STEP_SPREAD)))
    return RunComparison(
        run=run, host=host, host_in_sample=host_in_sample, step_errors=step_errors,
        mixed_parts=mixed_parts,
        measured=measured, simulated=latency_metrics(arrivals, sim.token_s),
        with_measured_steps=latency_metrics(arrivals, oracle.token_s),
        steps_matched=oracle_times.matched / looked_up if looked_up else math.nan,
        simulated_steps=len(sim.plans),
        simulated_preemptions=int(sim.summary["requests"]["preemptions"]),
        simulated_prefix=sim.summary.get("prefix_cache"), oracle_steps=len(oracle.plans),
        oracle_preemptions=int(oracle.summary["requests"]["preemptions"]),
        oracle_prefix=oracle.summary.get("prefix_cache"),
        slower_steps=latency_metrics(arrivals, slower.token_s),
        decoding_p99=(_p99([s.decode for s in run.steps]),
                      _p99([len(p.decoding) for p in sim.plans])))


def _p99(counts: Sequence[int]) -> float:
    return float(np.percentile(counts, 99)) if len(counts) else math.nan


def run_terms(run: ServingRun, platform: Platform, model: ModelSpec) -> np.ndarray:
    """``eager_terms`` of ``run``'s steps on ``platform`` (its engine as it ran; the
    calibration's host costs of the default mode throughout, as the replay's)."""
    plat = platform.with_calibration(platform.calibration.model_copy(
        update={"host_piecewise": None}))
    return eager_terms(run, build_engine(plat, model, replay_scenario(run),
                                         kv_blocks=int(run.engine["num_blocks"])))


def fit_runs(runs: Sequence[ServingRun], platform: Platform, model_for) -> HostFit:
    """The host work (per step, sequence, prefill chunk and token, eager launch)
    fitted on every step of ``runs`` (a shipped calibration's; a replay fits it
    leaving each run out instead). ``model_for(run)``: the run's ModelSpec."""
    fitted = fit_host([s for run in runs for s in run.steps])
    terms = [run_terms(run, platform, model_for(run)) for run in runs]
    return fitted._replace(launch_s=fit_launch(np.concatenate(terms)))


def compare_runs(runs: Sequence[ServingRun], platform: Platform, model_for
                 ) -> list[RunComparison]:
    """Every run against its replay, the host work (per step, per sequence, per eager
    launch) fitted leaving the run out (in sample when there is one run).
    ``model_for(run)``: the run's ModelSpec."""
    terms = [run_terms(run, platform, model_for(run)) for run in runs]
    out = []
    for i, run in enumerate(runs):
        others = [s for j, r in enumerate(runs) if j != i for s in r.steps]
        in_sample = not others
        fitted = fit_host(run.steps if in_sample else others)
        launch_s = fit_launch(terms[i] if in_sample else
                              np.concatenate([t for j, t in enumerate(terms) if j != i]))
        out.append(compare_run(run, platform, model_for(run),
                               fitted._replace(launch_s=launch_s), in_sample))
    return out


def saturation(results: Sequence[RunComparison]) -> dict[str, Any]:
    """Per run: model, offered load, measured and simulated throughput (requests/s),
    whether each saturated (``saturated``: its queue grew); per model
    (``models``), the saturation load of each (the highest throughput of its
    saturated runs; None: not reached); ``measured``/``simulated``: the same over the
    runs of the first model (one model: its saturation)."""
    rows = []
    for r in sorted(results, key=lambda r: (r.run.model, r.run.offered_rate_per_s)):
        offered = r.run.offered_rate_per_s
        m, s = r.measured["requests_per_s"], r.simulated["requests_per_s"]
        rows.append({"model": r.run.model, "load": r.run.load, "offered": offered,
                     "measured": m, "simulated": s,
                     "measured_saturated": saturated(r.measured),
                     "simulated_saturated": saturated(r.simulated)})
    models: dict[str, dict[str, float | None]] = {}
    for model in dict.fromkeys(x["model"] for x in rows):
        mine = [x for x in rows if x["model"] == model]
        meas = [x["measured"] for x in mine if x["measured_saturated"]]
        sim = [x["simulated"] for x in mine if x["simulated_saturated"]]
        models[model] = {"measured": max(meas) if meas else None,
                         "simulated": max(sim) if sim else None}
    first = next(iter(models.values()), {"measured": None, "simulated": None})
    return {"rows": rows, "models": models, **first}
