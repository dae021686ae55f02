"""The serving simulation's event loop as an object that a notebook can step.

Each engine step is one event: the scheduler picks the step's work, the step-time
model says how long it takes, and at its end tokens are emitted, requests finish and
the requests that arrived meanwhile join the queue. When nothing runs, the clock
jumps to the next arrival. Arrivals stop at the scenario's duration; the run then
drains (every accepted request completes), so every run ends with an empty engine.

``ServingLoop`` owns one run's state and always rests at the start of its next step
(arrivals due by then admitted to the queue, idle time skipped): ``peek()`` says what
that step would do without doing it, ``step()`` does it, ``run()`` steps on, and
``summary()`` reports the finished run.

The loop never touches each decoding request per step (the KV cache's decoding group
and a heap of finish steps do that in O(1)), so its cost per step does not grow with
the batch, and memory does not grow with run length. ``run()`` builds no per-step
records; only ``step()`` and ``peek()`` do.
"""

from __future__ import annotations

import copy
import heapq
import math
from collections.abc import Callable
from itertools import islice
from typing import TYPE_CHECKING

import numpy as np

from gpusim.errors import FieldError
from gpusim.serving.invariants import InvariantError, require
from gpusim.serving.kv_cache import PagedKVCache
from gpusim.serving.metrics import Metrics
from gpusim.serving.plan import Chunk, LoopStateError, StepPlan, StepRecord
from gpusim.serving.prefix_cache import PrefixKVCache
from gpusim.serving.requests import Request
from gpusim.serving.scheduler import Batch, make_scheduler
from gpusim.serving.shapes import StepShapes
from gpusim.serving.speculation import SpecStepModel
from gpusim.serving.state import EngineState
from gpusim.serving.summary import ServingSummary, summarize
from gpusim.serving.trace import Trace
from gpusim.serving.workload import Source, build_source

if TYPE_CHECKING:  # simulate imports this module; the engine is only a type here
    from gpusim.serving.scenario import Scenario
    from gpusim.serving.simulate import Engine

PROGRESS_EVERY_STEPS = 8192

# one step's work as ``_plan`` hands it to ``_apply``: (batch, seconds, HBM bytes,
# tokens processed, speculative k or None, accepted draft tokens)
_Work = tuple[Batch, float, float, int, int | None, int]


def _window_s(scenario: Scenario, source: Source) -> float:
    """The arrival window (Little's law's): the duration, else the trace's span."""
    if scenario.duration_s is not None:
        return float(scenario.duration_s)
    last = getattr(source, "last_arrival_s", 0.0)
    return float(last) if last > 0 else 1.0


def _check_limits(engine: Engine, scenario: Scenario) -> None:
    """Raise ValueError unless ``engine``'s tables cover ``scenario``'s scheduler."""
    sched = scenario.scheduler
    if (engine.step_model.max_num_seqs < sched.max_num_seqs
            or engine.step_model.max_batched_tokens < sched.max_num_batched_tokens):
        raise ValueError("engine was built for smaller scheduler limits than the scenario's")
    if getattr(engine.step_model, "piecewise", False) != (
            sched.cudagraph_mode == "full_and_piecewise"):
        raise ValueError("engine was built for another CUDA-graph mode than the scenario's")
    if (engine.budget.block_size_tokens != sched.block_size_tokens
            or engine.budget.reserve_fraction != sched.reserve_fraction):
        raise ValueError("engine was built for another KV block size or reserve fraction")


def _speculate(st: EngineState, spec: SpecStepModel, rng: np.random.Generator, k: int,
               decode: int) -> int:
    """After the scheduler's group step (one token each), advance every decoding
    sequence by its sampled accepted draft tokens, capped by its remaining output;
    returns the extra tokens in all."""
    kv = st.kv
    members = kv.group_members()
    require(len(members) == decode, f"{len(members)} decoding, batch says {decode}")
    accepted = spec.sample_accepted(k, decode, rng).tolist()
    running, heap = st.running, st.finish_heap
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
            heapq.heappush(heap, (req.finish_tick, rid))
            total += extra
    return total


# requests one run simulates: each costs time (~10 s per 100,000) and, while queued,
# memory; an open-loop run asking for more is refused before it starts
# (``simulate.check_arrivals``), any other stops here with one line
MAX_ARRIVALS = 500_000
# engine steps one run simulates (~150,000 a second): long requests in a closed loop
# reach it before the arrival cap
MAX_STEPS = 5_000_000


def too_many_arrivals(what: str, limit: str = "requests") -> str:
    """The message for a run over a cap (``limit``: requests or engine steps):
    ``what`` happened, and what to do."""
    most = MAX_ARRIVALS if limit == "requests" else MAX_STEPS
    return (f"{what}; a run simulates at most {most:,} {limit} (time and memory): "
            "shorten the duration or lower the rate")


class ServingLoop:
    """One serving run of ``scenario`` on ``engine``, advanced one engine step at a time.

    Its state is public for inspection: ``now`` (the next step's start, or the end of
    the run once ``finished``), ``state`` (queues, running requests, KV cache),
    ``metrics``, ``source``. The constructor raises ValueError when the engine was
    built for other scheduler limits or the scenario's trace is missing; any method raises
    InvariantError when the simulation breaks an invariant (a bug). ``shapes``: a
    tally that every step's shape and time is added to (its trust: ``serving.shapes``).
    """

    def __init__(self, engine: Engine, scenario: Scenario,
                 progress: Callable[[float], None] | None = None,
                 trace: Trace | None = None, source: Source | None = None,
                 shapes: StepShapes | None = None) -> None:
        _check_limits(engine, scenario)
        self.shapes = shapes
        sched = scenario.scheduler
        self.engine = engine
        self.scenario = scenario
        self.source = source if source is not None else build_source(
            scenario, np.random.default_rng(scenario.seed), trace)
        self.metrics = Metrics(_window_s(scenario, self.source), scenario.slo.ttft_s,
                               scenario.slo.tpot_s)
        blocks, bs = engine.budget.total_blocks, engine.budget.block_size_tokens
        # a speculating engine holds KV for the most draft tokens it may propose
        lookahead = max(engine.spec.ks) if engine.spec is not None else 0
        self.state = EngineState(PrefixKVCache(blocks, bs) if sched.prefix_caching
                                 else PagedKVCache(blocks, bs, lookahead))
        self.scheduler = make_scheduler(sched.policy, sched.max_num_seqs,
                                        sched.max_num_batched_tokens, sched.prefix_caching)
        # a source that names its prompts' content (shared prefixes) hands it over
        self._content = hasattr(self.source, "segments")
        # accepted lengths: a stream of their own, derived from the seed, so that the
        # workload is the same with and without speculation
        self.spec_rng = np.random.default_rng([scenario.seed, 1])
        self.progress = progress
        self.now = 0.0
        self.finished = False
        self._next_rid = 0
        self._arrivals = 0          # every request popped from the source, rejected too
        # read on every step or arrival: one attribute each instead of a chain
        self._step_model = engine.step_model
        self._spec = engine.spec
        self._context_window = engine.model.max_position_embeddings
        self._itl_add = self.metrics.itl.add_positive
        self._settle()

    # --- stepping ------------------------------------------------------------------
    def peek(self) -> StepPlan | None:
        """What ``step()`` would do next (None once the run is finished); changes
        nothing: the scheduler runs on copies of the state and the draft sampler, so a
        peek costs a copy of every request in the engine."""
        if self.finished:
            return None
        return self._plan_recorded(copy.deepcopy(self.state),
                                   copy.deepcopy(self.spec_rng))[1]

    def step(self) -> StepRecord:
        """Run the next engine step and return its record; raises LoopStateError once
        the run is finished."""
        if self.finished:
            raise LoopStateError("the run is finished: nothing left to step")
        st = self.state
        work, plan = self._plan_recorded(st, self.spec_rng)
        running = list(st.running)
        self._apply(work)
        left = st.running
        return StepRecord(plan, tuple(rid for rid in running if rid not in left))

    def run(self, until: float = math.inf) -> None:
        """Step while the run is not finished and the next step starts before
        ``until`` (simulated seconds; by default to the end)."""
        st, rng = self.state, self.spec_rng
        plan, apply = self._plan, self._apply
        while not self.finished and self.now < until:
            apply(plan(st, rng))

    def summary(self) -> ServingSummary:
        """The finished run's summary; raises LoopStateError before the end and
        InvariantError when an end-of-run invariant fails."""
        if not self.finished:
            raise LoopStateError(f"the run is not finished (t={self.now!r} s)")
        return summarize(self.engine, self.scenario, self.source, self.state,
                         self.metrics, self.now)

    # --- one step --------------------------------------------------------------------
    def _plan(self, st: EngineState, rng: np.random.Generator) -> _Work:
        """Schedule the next step on ``st`` and cost it (sampling accepted draft tokens
        from ``rng`` for a speculative step); mutates both. Raises InvariantError when
        the scheduler picks no work."""
        batch = self.scheduler.schedule(st, self.now)
        decode, chunks = batch.decode, batch.chunks
        # a stack that pads decode keys to the longest: its cached tokens before this
        # step's token (the scheduler has grown the group by it)
        longest = (st.kv.group_longest_tokens() - 1
                   if decode and self._step_model.key_bucket_tokens else 0)
        if chunks:
            dt, moved = self._step_model.step(decode, batch.decode_ctx_tokens,
                                              [(n, ctx) for _, ctx, n in chunks], longest)
            return batch, dt, moved, decode + sum(n for _, _, n in chunks), None, 0
        if not decode:
            kv = st.kv
            raise InvariantError(f"scheduler made no progress at t={self.now!r}: "
                                 f"{len(st.waiting)} waiting, {len(st.running)} running, "
                                 f"{kv.free_blocks} of {kv.total_blocks} blocks free")
        spec = self._spec
        if spec is not None:
            mean_ctx = batch.decode_ctx_tokens / decode
            k = spec.choose_k(decode, mean_ctx)
            # every decoding sequence holds KV for k draft tokens already; speculate
            # when the cache can restore that lookahead after the longest acceptance
            if st.kv.free_blocks >= st.kv.advance_blocks(k):
                dt, moved = spec.iteration(k, decode, mean_ctx)
                extra = _speculate(st, spec, rng, k, decode)
                return batch, dt, moved, decode + extra, k, extra
        dt, moved = self._step_model.decode_step(decode, batch.decode_ctx_tokens, longest)
        return batch, dt, moved, decode, None, 0

    def _plan_recorded(self, st: EngineState, rng: np.random.Generator
                       ) -> tuple[_Work, StepPlan]:
        """``_plan`` and its record (the requests by id, as they stand after
        scheduling)."""
        waiting_before = len(st.waiting)
        work = self._plan(st, rng)
        batch, dt, moved, tokens, k, extra = work
        # preempted requests go back to the head of the queue and no one is admitted
        # after a preemption; admissions leave its head for the tail of ``running``
        admitted = waiting_before + batch.preempted - len(st.waiting)
        newest = list(islice(reversed(st.running), admitted))
        plan = StepPlan(
            index=self.metrics.steps, start_s=self.now, duration_s=dt, end_s=self.now + dt,
            hbm_bytes=moved, decoding=tuple(st.kv.group_members()),
            decode_ctx_tokens=batch.decode_ctx_tokens,
            prefill=tuple(Chunk(req.rid, ctx, n) for req, ctx, n in batch.chunks),
            speculative_k=k, accepted_tokens=extra, tokens=tokens,
            admitted=tuple(reversed(newest)),
            preempted=tuple(req.rid for req in islice(st.waiting, batch.preempted)))
        return work, plan

    def _apply(self, work: _Work) -> None:
        """Run planned work from ``now``: record the step, take the arrivals meanwhile,
        emit tokens and let requests finish at its end, then move to the next step."""
        batch, dt, moved, tokens, k, extra = work
        st, m, source = self.state, self.metrics, self.source
        if self.shapes is not None:
            self.shapes.add(batch.decode, batch.decode_ctx_tokens, batch.chunks, k, dt)
        kv = st.kv
        t0 = self.now
        t1 = t0 + dt
        m.step(t0, t1, tokens, moved, len(st.waiting), len(st.running),
               kv.used_blocks / kv.total_blocks)
        while source.next_s <= t1:
            self._arrive(t1)
        if batch.decode:
            self._emit_decode(t1, dt, batch.decode, extra)
        if batch.chunks:
            self._emit_chunks(batch.chunks, t1)
        self.now = t1
        if m.steps % PROGRESS_EVERY_STEPS == 0:
            if self.progress is not None:
                self.progress(t1)
            if m.steps >= MAX_STEPS:
                raise FieldError("duration_s", too_many_arrivals(
                    f"the run reached {m.steps:,} engine steps at {t1:.6g} s of "
                    "simulated time", "engine steps"))
        # usually the engine is busy and no arrival is due: nothing to settle
        if source.next_s <= t1 or not (st.running or st.waiting):
            self._settle()

    def _emit_decode(self, t1: float, dt: float, decode: int, extra: int) -> None:
        """The decoding group's tokens at ``t1``; members that reached their last
        token finish."""
        st, m, itl_add = self.state, self.metrics, self._itl_add
        m.tokens_emitted += decode
        if extra:
            # accepted draft tokens: emitted with the step's token, at its end
            m.tokens_emitted += extra
            itl_add(0.0, extra)
        late = st.late_joiners
        if late:
            for req in late:
                itl_add(t1 - req.last_token_s)
            if decode > len(late):
                itl_add(dt, decode - len(late))
            st.late_joiners = []
        else:
            itl_add(dt, decode)
        heap = st.finish_heap
        ticks = st.kv.ticks
        while heap and heap[0][0] <= ticks:
            tick, rid = heapq.heappop(heap)
            req = st.running.get(rid)
            if req is None or req.finish_tick != tick:
                continue  # preempted since, or already gone
            req.generated = req.output_tokens
            req.last_token_s = t1
            self._finish(req, t1)

    def _emit_chunks(self, chunks: list[tuple[Request, int, int]], t1: float) -> None:
        """Prefill chunks done at ``t1``: a request whose cache caught up with its
        tokens emits one, then finishes or goes on decoding."""
        m = self.metrics
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
                    self._itl_add(t1 - req.last_token_s)
                req.last_token_s = t1
                if req.generated >= req.output_tokens:
                    self._finish(req, t1)
                else:
                    self.scheduler.on_caught_up(self.state, req)

    # --- between steps -----------------------------------------------------------------
    def _settle(self) -> None:
        """Queue the arrivals due by ``now`` and, while the engine is idle, jump to the
        next arrival; with no arrival left the run is ``finished``."""
        source, st = self.source, self.state
        while True:
            while source.next_s <= self.now:
                self._arrive(self.now)
            if st.running or st.waiting:
                return
            t_next = source.next_s
            if t_next == math.inf:
                self.finished = True
                return
            kv = st.kv
            self.metrics.idle(self.now, t_next, kv.used_blocks / kv.total_blocks)
            self.now = t_next

    def _arrive(self, t: float) -> None:
        """The source's next request, arrived by ``t``: queued, or rejected when it
        could never run (longer than the context window or the whole KV cache)."""
        source, m, st = self.source, self.metrics, self.state
        self._arrivals += 1
        if self._arrivals > MAX_ARRIVALS:
            raise FieldError("duration_s", too_many_arrivals(
                f"the run reached {MAX_ARRIVALS:,} arrivals at {self.now:.6g} s of "
                "simulated time"))
        t_arr, prompt, output, user = source.pop()
        if t_arr > t:  # not require(): its message would be formatted on every arrival
            raise InvariantError(f"arrival at {t_arr!r} after {t!r}")
        if prompt + output > self._context_window:
            m.reject("exceeds_context_window")
            source.done(user, t_arr)
            return
        if st.kv.blocks_for(prompt + output - 1 + st.kv.lookahead) > st.kv.total_blocks:
            m.reject("exceeds_kv_capacity")
            source.done(user, t_arr)
            return
        m.arrive(t_arr)
        req = Request(self._next_rid, t_arr, prompt, output, user)
        if self._content:
            req.segments, req.output_key = source.segments, source.output_key  # type: ignore[attr-defined]
        st.waiting.append(req)
        self._next_rid += 1

    def _finish(self, req: Request, t: float) -> None:
        """``req`` completed at ``t``: it leaves the engine and the metrics record it."""
        self.state.remove(req)
        self.metrics.finish(req, t)
        self.source.done(req.user, t)
