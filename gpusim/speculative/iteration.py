"""One speculative iteration: draft steps, the verify pass, the host round trip.

An iteration of a chain of k draft tokens (or a token tree of n nodes, depth D):

1. the draft proposes: a draft model or EAGLE head decodes D steps (step l forwards
   the tree nodes at depth l, q = their count, at ctx L + nodes above them; a chain:
   k decode steps at ctx L .. L+k-1), each followed by greedy sampling; Medusa heads
   run inside the verify pass; n-gram lookup is host work before it;
2. the target verifies all n positions in one pass (q = n, ctx L: mode verify for a
   chain, mode tree for a tree: its boolean mask takes another attention kernel) and
   the acceptance kernels pick the accepted prefix and the next root token;
3. the host waits for the GPU, reads the accepted counts and moves each sequence's
   KV pointer back past the rejected positions (static cache: a pointer move, no
   kernel; paged cache: blocks freed on the host), then launches the next iteration.

Every step is one CUDA graph replay (or its kernels one by one in eager mode), and all
of them run at the loop's SM clock: the power cap acts on what runs back to back, the
whole loop (``step.program_clock``), so a verify pass after memory-bound draft steps
runs faster than it does alone. With host issue cost h_j, step time alone T_j
(``step.predict`` of its kernels, at that clock) and GPU time d_j, step j starts on the
host at S_j (after the previous issues and any host work) and the GPU finishes it at
E_j = max(E_{j-1} + d_j, S_j + T_j); the iteration ends at max(E_last, host) + the
round trip. ``simulate_iteration`` runs the same
program through the SimPy engine, launch by launch.

Plain decoding, the baseline of ``speedup``: one decode step plus sampling and the
same round trip per token. Draft and target share the GPU: their weights and KV
caches count against one HBM capacity (``fits_in_memory``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpusim import step as step_mod
from gpusim.capacity import DEFAULT_RESERVE_FRACTION, MemoryPlan, memory_plan
from gpusim.platform import Platform
from gpusim.specs import GpuSpec, ModelSpec
from gpusim.speculative.acceptance import (
    Acceptance,
    IidAcceptance,
    MonteCarlo,
    RankedAcceptance,
    monte_carlo,
)
from gpusim.speculative.drafts import (
    Draft,
    EagleDraft,
    MedusaDraft,
    ModelDraft,
    NgramDraft,
    extra_weight_bytes,
    kv_bytes_per_token,
)
from gpusim.speculative.loop_steps import PlannedStep, loop_cache, plan_iteration, plan_plain
from gpusim.speculative.overhead import SpecOverhead
from gpusim.speculative.trees import TokenTree


@dataclass(frozen=True)
class StepTimes:
    """A planned step's alone time, GPU time and host issue time (arrays over shapes)."""

    alone_s: np.ndarray
    gpu_s: np.ndarray
    issue_s: np.ndarray


@dataclass(frozen=True)
class Speculation:
    """What is speculated: target, draft, chain or tree, acceptance."""

    target: ModelSpec
    draft: Draft
    tree: TokenTree
    acceptance: Acceptance

    def __post_init__(self) -> None:
        if self.tree.depth < 1:
            raise ValueError(f"k={self.tree.depth} must be >= 1 (a tree needs a draft token)")
        if isinstance(self.draft, MedusaDraft) and self.tree.depth > self.draft.heads:
            raise ValueError(f"k={self.tree.depth}: {self.draft.heads} Medusa heads guess at "
                             f"most {self.draft.heads} tokens ahead")
        self.expected_tokens()   # raises for an acceptance model the tree can't use

    @property
    def k(self) -> int:
        return self.tree.depth

    def ranked(self) -> tuple[float, ...]:
        """Ranked child probabilities for a tree (i.i.d. rate a: a (1 - a)^(j-1))."""
        acc = self.acceptance
        if isinstance(acc, RankedAcceptance):
            return acc.p
        if isinstance(acc, IidAcceptance):
            return RankedAcceptance.geometric(acc.rate, self.tree.max_width).p
        raise ValueError(f"acceptance={acc.label!r}: a token tree needs an i.i.d. rate or "
                         "ranked:p1,p2,... probabilities")

    def expected_tokens(self) -> float:
        """Expected tokens per iteration (accepted drafts + the target's token)."""
        if self.tree.is_chain:
            return self.acceptance.expected_tokens(self.k)
        return self.tree.expected_tokens(self.ranked())

    def monte_carlo(self, batch: int, iterations: int, rng: np.random.Generator
                    ) -> MonteCarlo:
        """Tokens per iteration sampled for ``batch`` requests over ``iterations``
        iterations (seeded ``rng``), against the closed form. Raises ValueError."""
        if batch < 1 or iterations < 1:
            raise ValueError(f"batch={batch} and iterations={iterations} must be >= 1")
        if self.tree.is_chain:
            return monte_carlo(self.acceptance, self.k, batch, iterations, rng)
        t = self.tree.sample_tokens(self.ranked(), batch * iterations, rng).astype(float)
        sd = float(t.std(ddof=1)) if t.size > 1 else 0.0
        return MonteCarlo(samples=t.size, mean=float(t.mean()),
                          stderr=sd / float(np.sqrt(t.size)), expected=self.expected_tokens())


def step_times(st: PlannedStep, platform: Platform, clock: np.ndarray | None = None,
               full_clock: list[step_mod.Cost] | None = None) -> StepTimes:
    """Alone time (as ``step.predict`` would time it, at the step's own power-capped
    clock or at ``clock``: its loop's), GPU time and host issue time; ``full_clock``:
    its kernels' costs at full clock when known (``step.program_costs``)."""
    p = step_mod.predict_kernels(st.kernels, st.model, platform, clock, full_clock)
    host = platform.calibration.host
    issue = (np.full_like(p.seconds, host.host_graph_launch_cost_s) if platform.graph
             else p.shape_launches * host.host_launch_cost_s)
    return StepTimes(alone_s=p.seconds, gpu_s=p.gpu_s, issue_s=issue)


def pipeline_end_s(times: list[StepTimes], host_before_s: list[float | np.ndarray],
                   round_trip_s: float) -> np.ndarray:
    """End of a sequence of launch units issued by one host thread, then a host sync
    and ``round_trip_s`` of host work (the recurrence in the module docstring)."""
    host = np.zeros_like(times[0].alone_s)
    gpu_end = np.zeros_like(host)
    for t, before in zip(times, host_before_s, strict=True):
        start = host + before
        host = start + t.issue_s
        gpu_end = np.maximum(gpu_end + t.gpu_s, start + t.alone_s)
    return np.maximum(gpu_end, host) + round_trip_s


# ----------------------------------------------------------------------------------
# the prediction
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class IterationPrediction:
    """Predicted iteration for every (batch, ctx) shape; times in seconds (arrays)."""

    spec: Speculation
    batch: np.ndarray
    ctx: np.ndarray
    launch: str
    iteration_s: np.ndarray
    # the parts alone (each step's own launch and GPU time), at the loop's clock
    draft_s: np.ndarray          # all drafting work of one iteration
    draft_step_s: np.ndarray     # one draft step (model, EAGLE), head (Medusa), lookup
    verify_s: np.ndarray         # the verify pass with acceptance kernels
    target_step_s: np.ndarray    # plain decode step with sampling, alone
    round_trip_s: float
    tokens_per_iteration: float
    memory_bytes: np.ndarray
    capacity_bytes: float
    weight_bytes: float

    @property
    def s_per_token(self) -> np.ndarray:
        return self.iteration_s / self.tokens_per_iteration

    @property
    def baseline_s_per_token(self) -> np.ndarray:
        """Plain decoding: one step and one host round trip per token."""
        return self.target_step_s + self.round_trip_s

    @property
    def speedup(self) -> np.ndarray:
        return self.baseline_s_per_token / self.s_per_token

    @property
    def fits(self) -> np.ndarray:
        return self.memory_bytes <= self.capacity_bytes

    def record(self, i: int = 0) -> dict[str, object]:
        """One shape's figures as a flat dict (milliseconds, the JSON contract keys)."""
        it = float(self.iteration_s[i])
        draft = float(self.draft_s[i])
        verify = float(self.verify_s[i])
        return {
            "iteration_ms": it * 1e3,
            "draft_step_ms": float(self.draft_step_s[i]) * 1e3,
            "draft_ms": draft * 1e3,
            "verify_ms": verify * 1e3,
            "target_step_ms": float(self.target_step_s[i]) * 1e3,
            "host_round_trip_ms": self.round_trip_s * 1e3,
            "overhead_ms": (it - draft - verify) * 1e3,
            "tokens_per_iteration": self.tokens_per_iteration,
            "ms_per_token": float(self.s_per_token[i]) * 1e3,
            "baseline_ms_per_token": float(self.baseline_s_per_token[i]) * 1e3,
            "speedup": float(self.speedup[i]),
            "tokens_per_s": float(self.batch[i]) * self.tokens_per_iteration / it,
            "memory_bytes": float(self.memory_bytes[i]),
            "capacity_bytes": self.capacity_bytes,
            "fits_in_memory": bool(self.fits[i]),
        }


def memory_plan_of(spec: Speculation, gpu: GpuSpec,
                   reserve_fraction: float = DEFAULT_RESERVE_FRACTION, tp: int = 1
                   ) -> MemoryPlan:
    """The memory planner's view of target and draft on ``gpu``: both sets of weights,
    and every cached token held by the target and the draft (the target split over
    ``tp`` GPUs; the draft counted whole on each, an upper bound). Raises ConfigError
    for a reserve outside [0, 1)."""
    return memory_plan(gpu, spec.target, reserve_fraction,
                       extra_weight_bytes(spec.draft, spec.target),
                       kv_bytes_per_token(spec.draft, spec.target), tp=tp)


def predict_iteration(platform: Platform, overhead: SpecOverhead, spec: Speculation,
                      batch: object, ctx: object,
                      reserve_fraction: float = DEFAULT_RESERVE_FRACTION,
                      cache_len: object = None) -> IterationPrediction:
    """Closed-form iteration times for arrays of (batch, ctx) (broadcast) on
    ``platform`` (``cache_len``: as ``plan_iteration``'s, ``loop_cache``; the memory
    check counts the caches' positions, ctx + the verify's tokens where they hold
    just the context).

    Raises ValueError for an impossible shape, ConfigError for a reserve_fraction
    outside [0, 1).
    """
    plan = memory_plan_of(spec, platform.gpu, reserve_fraction, platform.layout.tp)
    b, c = np.broadcast_arrays(np.atleast_1d(np.asarray(batch, dtype=np.float64)),
                               np.atleast_1d(np.asarray(ctx, dtype=np.float64)))
    b, c = b.copy(), c.copy()
    loop = platform.with_calibration(overhead.calibration_for_loop(platform.calibration))
    # the caches' positions, resolved once: the loop's steps and the baseline read them
    cache = loop_cache(spec, platform, b, c, cache_len)
    steps = plan_iteration(spec, loop, b, c, overhead, cache)
    # the loop runs back to back: the power cap sets one clock for all of its steps
    # (memory-bound draft steps let the verify pass run faster than it would alone)
    clock, full = step_mod.program_costs([s.kernels for s in steps], loop)
    times = [step_times(s, loop, clock, f) for s, f in zip(steps, full, strict=True)]
    rt = overhead.host_round_trip_s
    iteration = pipeline_end_s(times, [s.host_before_s for s in steps], rt)
    verify = times[-1]
    draft = sum((t.alone_s for s, t in zip(steps, times, strict=True) if s.role == "draft"),
                np.zeros_like(b))
    d = spec.draft
    if isinstance(d, (ModelDraft, EagleDraft)):
        draft_step = times[0].alone_s
        verify_alone = verify.alone_s
    elif isinstance(d, MedusaDraft):
        heads = [k for k in steps[-1].kernels if k.name.startswith("medusa")]
        heads_s = step_mod.kernels_cost(heads, loop, clock).seconds
        draft, draft_step = heads_s, heads_s / spec.k
        verify_alone = verify.alone_s - heads_s
    else:
        assert isinstance(d, NgramDraft)
        draft = np.asarray(steps[-1].host_before_s, dtype=np.float64)
        draft_step = draft
        verify_alone = verify.alone_s
    plain = step_times(plan_plain(spec.target, loop, b, c, cache), loop)
    held = c + spec.tree.nodes if cache is None else cache
    return IterationPrediction(
        spec=spec, batch=b, ctx=c, launch=platform.launch.value, iteration_s=iteration,
        draft_s=draft, draft_step_s=np.asarray(draft_step, dtype=np.float64),
        verify_s=verify_alone, target_step_s=plain.alone_s, round_trip_s=rt,
        tokens_per_iteration=spec.expected_tokens(),
        memory_bytes=plan.bytes_for(b * held),
        capacity_bytes=plan.usable_bytes, weight_bytes=plan.weight_bytes)


def simulate_iteration(platform: Platform, overhead: SpecOverhead, spec: Speculation,
                       batch: int, ctx: int, record: bool = True,
                       cache_len: int | None = None) -> step_mod.Timeline:
    """The iteration through the SimPy engine, launch by launch (one shape;
    ``cache_len``: as ``plan_iteration``'s).

    ``Timeline.end_s`` equals ``predict_iteration(...).iteration_s``; kernel names carry
    their step (``draft0/qkv_proj``). Raises ValueError like ``predict_iteration``.
    """
    loop = platform.with_calibration(overhead.calibration_for_loop(platform.calibration))
    steps = plan_iteration(spec, loop, batch, ctx, overhead, cache_len)
    last = len(steps) - 1
    program = [step_mod.ProgramStep(
        name=st.name, model=st.model, kernels=st.kernels,
        host_before_s=float(np.asarray(st.host_before_s).ravel()[0]),
        sync_after=i == last, host_after_s=overhead.host_round_trip_s if i == last else 0.0)
        for i, st in enumerate(steps)]
    return step_mod.simulate_steps(program, loop, record=record)


def iteration_bytes(spec: Speculation, platform: Platform, batch: object, ctx: object
                    ) -> np.ndarray:
    """HBM bytes one iteration moves (draft steps, verify, acceptance kernels), per
    (batch, ctx) shape. Raises ValueError for an impossible shape."""
    steps = plan_iteration(spec, platform, batch, ctx)
    return sum((step_mod.kernels_cost(st.kernels, platform).bytes for st in steps),
               np.zeros(len(np.atleast_1d(np.asarray(batch, dtype=np.float64)))))
