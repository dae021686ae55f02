"""The serving simulation: a plain discrete-event loop at iteration level.

Each engine step is one event: the scheduler picks the step's work, the step-time
model says how long it takes, and at its end tokens are emitted, requests finish and
the requests that arrived meanwhile join the queue. When nothing runs, the clock
jumps to the next arrival. Arrivals stop at the scenario's duration; the run then
drains (every accepted request completes), so every run ends with an empty engine.

The loop never touches each decoding request per step (the KV cache's decoding group
and a heap of finish steps do that in O(1)), so its cost per step does not grow with
the batch, and memory does not grow with run length.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpusim.serving.invariants import InvariantError, require
from gpusim.serving.kv_cache import KvBudget, PagedKVCache, kv_budget
from gpusim.serving.metrics import RELATIVE_ACCURACY, Metrics
from gpusim.serving.requests import Request
from gpusim.serving.scenario import Scenario
from gpusim.serving.scheduler import ContinuousBatching, StaticBatching, make_scheduler
from gpusim.serving.speculation import (
    SpecStepModel,
    build_spec_step_model,
    draft_memory,
    draft_option,
)
from gpusim.serving.state import EngineState
from gpusim.serving.step_time import StepTimeModel, build_step_time_model
from gpusim.serving.workload import Source, build_source
from gpusim.specs import Calibration, GpuSpec, ModelSpec, StackSpec

PROGRESS_EVERY_STEPS = 8192
LITTLE_IDENTITY_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Engine:
    """What a run needs besides the scenario: hardware, model and its step times."""

    gpu: GpuSpec
    model: ModelSpec
    stack: StackSpec
    calibration: Calibration
    launch: str
    budget: KvBudget
    max_ctx_tokens: int
    step_model: StepTimeModel
    spec: SpecStepModel | None = None   # speculative decoding (None: plain decoding)


def build_engine(gpu: GpuSpec, model: ModelSpec, stack: StackSpec, cal: Calibration,
                 scenario: Scenario, launch: str = "graph") -> Engine:
    """KV budget and step-time tables for ``scenario``'s scheduler limits.

    Raises ConfigError when the model does not fit, ValueError for a bad launch mode.
    """
    s = scenario.scheduler
    sp = scenario.speculative
    draft = draft_option(sp.draft) if sp is not None else None
    extra_w, extra_kv = draft_memory(draft, model) if draft is not None else (0.0, 0.0)
    budget = kv_budget(gpu, model, s.block_size_tokens, s.reserve_fraction, extra_w,
                       extra_kv)
    max_ctx = min(model.max_position_embeddings, budget.capacity_tokens)
    step_model = build_step_time_model(gpu, model, stack, cal, launch,
                                       s.max_num_batched_tokens, s.max_num_seqs, max_ctx)
    spec = None
    if sp is not None and draft is not None:
        spec = build_spec_step_model(gpu, model, stack, cal, launch, draft,
                                     None if sp.k == "auto" else int(sp.k), sp.acceptance,
                                     s.max_num_seqs, max_ctx, s.reserve_fraction)
    return Engine(gpu, model, stack, cal, launch, budget, max_ctx, step_model, spec)


def _window_s(scenario: Scenario, source: Source) -> float:
    if scenario.duration_s is not None:
        return float(scenario.duration_s)
    last = getattr(source, "last_arrival_s", 0.0)
    return float(last) if last > 0 else 1.0


def simulate(engine: Engine, scenario: Scenario,
             progress: Callable[[float], None] | None = None) -> dict[str, Any]:
    """Run ``scenario`` on ``engine``; returns the summary (JSON-ready, deterministic
    for a given seed). Raises ConfigError for a bad trace, InvariantError on a bug."""
    sched_spec = scenario.scheduler
    if (engine.step_model.max_num_seqs < sched_spec.max_num_seqs
            or engine.step_model.max_batched_tokens < sched_spec.max_num_batched_tokens):
        raise ValueError("engine was built for smaller scheduler limits than the scenario's")
    if (engine.budget.block_size_tokens != sched_spec.block_size_tokens
            or engine.budget.reserve_fraction != sched_spec.reserve_fraction):
        raise ValueError("engine was built for another KV block size or reserve fraction")
    rng = np.random.default_rng(scenario.seed)
    source = build_source(scenario, rng)
    window = _window_s(scenario, source)
    metrics = Metrics(window, scenario.slo.ttft_s, scenario.slo.tpot_s)
    kv = PagedKVCache(engine.budget.total_blocks, engine.budget.block_size_tokens)
    state = EngineState(kv)
    scheduler = make_scheduler(sched_spec.policy, sched_spec.max_num_seqs,
                               sched_spec.max_num_batched_tokens)
    # accepted lengths: a stream of their own, derived from the seed, so that the
    # workload is the same with and without speculation
    spec_rng = np.random.default_rng([scenario.seed, 1])
    end_s = _loop(engine, state, scheduler, source, metrics, progress, spec_rng)
    checks = _final_checks(state, source, metrics)
    return _summary(engine, scenario, source, state, metrics, end_s, checks)


def _loop(engine: Engine, st: EngineState, scheduler: ContinuousBatching | StaticBatching,
          source: Source, m: Metrics,
          progress: Callable[[float], None] | None,
          spec_rng: np.random.Generator | None = None) -> float:
    """The event loop; returns the time the last request completed.

    With speculation (``engine.spec``), a step with no prefill chunk runs one
    speculative iteration when the KV cache has room for k more tokens per decoding
    sequence; each sequence then advances by its accepted length + 1 (capped by its
    remaining output), all emitted at the step's end. Other steps run as without.
    """
    sm = engine.step_model
    spec = engine.spec
    heappush = heapq.heappush
    kv = st.kv
    block = kv.block_size
    total_blocks = kv.total_blocks
    context_window = engine.model.max_position_embeddings
    waiting, running, heap = st.waiting, st.running, st.finish_heap
    itl_add = m.itl.add_positive
    decode_step, mixed_step = sm.decode_step, sm.step
    heappop = heapq.heappop
    next_rid = 0
    now = 0.0
    steps = 0

    def arrive(t: float) -> None:
        nonlocal next_rid
        t_arr, prompt, output, user = source.pop()
        require(t_arr <= t, f"arrival at {t_arr!r} after {t!r}")
        if prompt + output > context_window:
            m.reject("exceeds_context_window")
            source.done(user, t_arr)
            return
        if kv.blocks_for(prompt + output - 1) > total_blocks:
            m.reject("exceeds_kv_capacity")
            source.done(user, t_arr)
            return
        m.arrive(t_arr)
        waiting.append(Request(next_rid, t_arr, prompt, output, user))
        next_rid += 1

    def finish(req: Request, t: float) -> None:
        st.remove(req)
        m.finish(req, t)
        source.done(req.user, t)

    while True:
        while source.next_s <= now:
            arrive(now)
        if not running and not waiting:
            t_next = source.next_s
            if t_next == math.inf:
                return now
            m.idle(now, t_next, kv.used_blocks / total_blocks)
            now = t_next
            continue
        batch = scheduler.schedule(st, now)
        chunks = batch.chunks
        decode = batch.decode
        extra_total = 0
        if chunks:
            dt, moved = mixed_step(decode, batch.decode_ctx_tokens,
                                   [(n, ctx) for _, ctx, n in chunks])
            tokens = decode + sum(n for _, _, n in chunks)
        elif decode:
            if spec is not None:
                mean_ctx = batch.decode_ctx_tokens / decode
                k = spec.choose_k(decode, mean_ctx)
                if kv.free_blocks >= decode * -(-k // block):
                    dt, moved = spec.iteration(k, decode, mean_ctx)
                    extra_total = _speculate(st, spec, k, decode, spec_rng, heap, heappush)
                else:
                    dt, moved = decode_step(decode, batch.decode_ctx_tokens)
            else:
                dt, moved = decode_step(decode, batch.decode_ctx_tokens)
            tokens = decode + extra_total
        else:
            raise InvariantError(f"scheduler made no progress at t={now!r}: "
                                 f"{len(waiting)} waiting, {len(running)} running, "
                                 f"{kv.free_blocks} of {total_blocks} blocks free")
        t1 = now + dt
        m.step(now, t1, tokens, moved, len(waiting), len(running),
               kv.used_blocks / total_blocks)
        while source.next_s <= t1:
            arrive(t1)
        if decode:
            m.tokens_emitted += decode
            if extra_total:
                # accepted draft tokens: emitted with the step's token, at its end
                m.tokens_emitted += extra_total
                itl_add(0.0, extra_total)
            late = st.late_joiners
            if late:
                for req in late:
                    itl_add(t1 - req.last_token_s)
                if decode > len(late):
                    itl_add(dt, decode - len(late))
                st.late_joiners = []
            else:
                itl_add(dt, decode)
            ticks = kv.ticks
            while heap and heap[0][0] <= ticks:
                tick, rid = heappop(heap)
                req = running.get(rid)
                if req is None or req.finish_tick != tick:
                    continue  # preempted since, or already gone
                req.generated = req.output_tokens
                req.last_token_s = t1
                finish(req, t1)
        for req, ctx, n in chunks:
            req.computed = ctx + n
            m.prefill_tokens += n
            if req.computed == req.prompt_tokens + req.generated:
                req.generated += 1
                m.tokens_emitted += 1
                if req.generated == 1:
                    req.first_token_s = t1
                    m.first_token(req, t1)
                else:
                    itl_add(t1 - req.last_token_s)
                req.last_token_s = t1
                if req.generated >= req.output_tokens:
                    finish(req, t1)
                else:
                    scheduler.on_caught_up(st, req)
        now = t1
        steps += 1
        if progress is not None and steps % PROGRESS_EVERY_STEPS == 0:
            progress(now)


def _speculate(st: EngineState, spec: SpecStepModel, k: int, decode: int,
               rng: np.random.Generator | None, heap: list[tuple[int, int]],
               heappush: Callable[[list[tuple[int, int]], tuple[int, int]], None]) -> int:
    """After the scheduler's group step (one token each), advance every decoding
    sequence by its sampled accepted draft tokens, capped by its remaining output;
    returns the extra tokens in all."""
    if rng is None:
        raise ValueError("speculation needs a seeded random generator")
    kv = st.kv
    members = kv.group_members()
    require(len(members) == decode, f"{len(members)} decoding, batch says {decode}")
    accepted = spec.sample_accepted(k, decode, rng).tolist()
    running = st.running
    ticks = kv.ticks
    total = 0
    for rid, a in zip(members, accepted, strict=True):
        if not a:
            continue
        req = running[rid]
        extra = min(a, req.finish_tick - ticks)
        if extra > 0:
            kv.group_advance(rid, extra)
            req.finish_tick -= extra
            heappush(heap, (req.finish_tick, rid))
            total += extra
    return total


def _final_checks(st: EngineState, source: Source, m: Metrics) -> dict[str, bool]:
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
    require(m.tokens_processed == m.processed_tokens_done + st.lost_tokens,
            f"tokens not conserved: processed {m.tokens_processed}, expected "
            f"{m.processed_tokens_done} + {st.lost_tokens} recomputed")
    gap = m.littles_law()["whole_run_relative_gap"]
    require(gap <= LITTLE_IDENTITY_TOLERANCE,
            f"Little's law bookkeeping: integral of requests in system differs from the "
            f"sum of times in system by {gap:.3g} (relative)")
    return {"clock_monotone": True, "ttft_le_e2e": True, "kv_within_capacity": True,
            "tokens_conserved": True, "all_requests_completed": True,
            "littles_law_whole_run": True}


def _summary(engine: Engine, scenario: Scenario, source: Source, st: EngineState,
             m: Metrics, end_s: float, checks: dict[str, bool]) -> dict[str, Any]:
    makespan = end_s if end_s > 0 else math.nan
    rejected = sum(m.rejected.values())
    peak_bw = engine.gpu.hbm_bandwidth_bytes_per_s
    achieved = m.hbm_bytes / m.busy_s if m.busy_s > 0 else math.nan
    series = m.series
    workload = source.describe()
    if scenario.prompt is not None:
        workload["prompt"] = scenario.prompt.model_dump(exclude_none=True)
    if scenario.output is not None:
        workload["output"] = scenario.output.model_dump(exclude_none=True)
    return {
        "gpu": engine.gpu.name,
        "model": engine.model.name,
        "stack": engine.stack.name,
        "calibration": engine.calibration.fitted_on,
        "launch": engine.launch,
        "scenario": scenario.name,
        "seed": scenario.seed,
        "duration_s": m.window_s,
        "makespan_s": end_s,
        "workload": workload,
        "scheduler": scenario.scheduler.model_dump(),
        "slo": scenario.slo.model_dump(),
        "kv_cache": engine.budget.as_dict(),
        **({"speculative": engine.spec.describe()} if engine.spec is not None else {}),
        "requests": {
            "arrived": m.arrived + rejected,
            "accepted": m.arrived,
            "completed": m.completed,
            "rejected": rejected,
            "rejected_by_reason": dict(sorted(m.rejected.items())),
            "preemptions": st.preemptions,
            "met_slo": m.good,
        },
        "tokens": {
            "prompt": m.prompt_tokens_done,
            "output": m.output_tokens_done,
            "processed": m.tokens_processed,
            "recomputed": st.lost_tokens,
        },
        "latency_s": m.latency_summary(),
        "throughput": {
            "requests_per_s": m.completed / makespan,
            "output_tokens_per_s": m.output_tokens_done / makespan,
            "total_tokens_per_s": (m.prompt_tokens_done + m.output_tokens_done) / makespan,
        },
        "goodput": {
            "requests_per_s": m.good / makespan,
            "output_tokens_per_s": m.good_output_tokens / makespan,
            "fraction": m.good / m.completed if m.completed else math.nan,
        },
        "engine": {
            "steps": m.steps,
            "busy_fraction": m.busy_s / makespan,
            "mean_step_s": m.busy_s / m.steps if m.steps else math.nan,
            "mean_tokens_per_step": m.tokens_processed / m.steps if m.steps else math.nan,
            "achieved_hbm_bandwidth_bytes_per_s": achieved,
            "hbm_bandwidth_fraction": achieved / peak_bw,
            "mean_running": series.mean("running"),
            "max_running": series.maximum("running"),
            "mean_queue_length": series.mean("queue_length"),
            "max_queue_length": series.maximum("queue_length"),
            "mean_kv_utilisation": series.mean("kv_utilisation"),
            "max_kv_utilisation": series.maximum("kv_utilisation"),
        },
        "littles_law": m.littles_law(),
        "invariants": checks,
        "quantile_relative_accuracy": RELATIVE_ACCURACY,
        "time_series": series.points(),
        "latency_cdf": {k: [list(p) for p in v] for k, v in m.cdfs().items()},
    }


def build_and_simulate(gpu: GpuSpec, model: ModelSpec, stack: StackSpec, cal: Calibration,
                       scenario: Scenario, launch: str = "graph",
                       progress: Callable[[float], None] | None = None) -> dict[str, Any]:
    """``build_engine`` then ``simulate``."""
    return simulate(build_engine(gpu, model, stack, cal, scenario, launch), scenario,
                    progress)
