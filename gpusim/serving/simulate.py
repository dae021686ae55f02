"""The serving simulation: the engine a run needs, and ``simulate``, which runs a
scenario to the end (``loop.ServingLoop`` steps one; ``summary`` reports it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpusim.cost.params import Calibration
from gpusim.errors import FieldError
from gpusim.platform import Platform
from gpusim.serving.kv_cache import KvBudget, kv_budget
from gpusim.serving.loop import MAX_ARRIVALS, ServingLoop, too_many_arrivals
from gpusim.serving.scenario import Scenario
from gpusim.serving.shapes import StepShapes
from gpusim.serving.speculation import SpecStepModel, build_spec_step_model, draft_memory
from gpusim.serving.step_time import StepTimeModel, build_step_time_model
from gpusim.serving.trace import Trace
from gpusim.specs import GpuSpec, ModelSpec, StackSpec
from gpusim.speculative.drafts import Draft
from gpusim.speculative.overhead import SpecOverhead


@dataclass(frozen=True)
class Engine:
    """What a run needs besides the scenario: the platform, the model and its step
    times, the KV budget, and speculation's iteration tables (if any)."""

    platform: Platform
    model: ModelSpec
    budget: KvBudget
    max_ctx_tokens: int
    step_model: StepTimeModel
    spec: SpecStepModel | None = None   # speculative decoding (None: plain decoding)

    @property
    def gpu(self) -> GpuSpec:
        return self.platform.gpu

    @property
    def stack(self) -> StackSpec:
        return self.platform.stack

    @property
    def calibration(self) -> Calibration:
        return self.platform.calibration

    @property
    def launch(self) -> str:
        return self.platform.launch.value


def build_engine(platform: Platform, model: ModelSpec, scenario: Scenario,
                 draft: Draft | None = None, overhead: SpecOverhead | None = None,
                 kv_blocks: int | None = None) -> Engine:
    """KV budget and step-time tables for ``scenario``'s scheduler limits on
    ``platform``; with speculation, the ``draft`` the scenario names (resolved by the
    caller: ``gpusim.io.scenario.scenario_draft``) and the loop's host ``overhead``.
    ``kv_blocks`` sets the KV cache's size instead of the memory planner (a replay of a
    measured engine uses the blocks it had).

    Raises ConfigError when the model does not fit or a speculative option is bad,
    ValueError when the scenario speculates and no draft or overhead is given, FieldError
    for ``kv_blocks`` < 1.
    """
    s = scenario.scheduler
    sp = scenario.speculative
    if sp is not None and (draft is None or overhead is None):
        raise ValueError("draft=None: the scenario speculates; resolve its draft "
                         "(gpusim.io.scenario.scenario_draft) and pass it and an overhead")
    draft = draft if sp is not None else None
    extra_w, extra_kv = draft_memory(draft, model) if draft is not None else (0.0, 0.0)
    budget = kv_budget(platform.gpu, model, s.block_size_tokens, s.reserve_fraction, extra_w,
                       extra_kv, platform.layout.tp, platform.layout.pp)
    if kv_blocks is not None:
        if not isinstance(kv_blocks, int) or kv_blocks < 1:
            raise FieldError("kv_blocks", f"kv_blocks={kv_blocks!r} must be an integer >= 1")
        budget = dataclasses.replace(budget, total_blocks=kv_blocks)
    max_ctx = min(model.max_position_embeddings, budget.capacity_tokens)
    step_model = build_step_time_model(platform, model, s.max_num_batched_tokens,
                                       s.max_num_seqs, max_ctx, s.cudagraph_capture_sizes,
                                       s.cudagraph_mode)
    spec = None
    if sp is not None and draft is not None and overhead is not None:
        spec = build_spec_step_model(platform, model, overhead, draft,
                                     None if sp.k == "auto" else int(sp.k), sp.acceptance,
                                     s.max_num_seqs, max_ctx, s.reserve_fraction)
    return Engine(platform, model, budget, max_ctx, step_model, spec)


def simulate(engine: Engine, scenario: Scenario,
             progress: Callable[[float], None] | None = None,
             trace: Trace | None = None, shapes: StepShapes | None = None
             ) -> dict[str, Any]:
    """Run ``scenario`` on ``engine`` to the end (``trace``: the trace it replays, if
    any; ``shapes``: a tally of its steps' shapes, filled as it runs); returns the
    summary (JSON-ready, deterministic for a given seed; ``ServingSummary.as_dict``).
    Raises ValueError when the engine was built for other scheduler limits or the
    trace is missing, InvariantError on a bug."""
    loop = ServingLoop(engine, scenario, progress, trace, shapes=shapes)
    loop.run()
    return loop.summary().as_dict()


def check_arrivals(scenario: Scenario) -> None:
    """Refuse, before any work, an open-loop run whose expected arrivals (rate x
    duration) exceed ``loop.MAX_ARRIVALS``: it would run for hours and queue millions
    of requests. Raises FieldError (field ``rate_per_s``) with the numbers. A closed
    loop or a trace is bounded while it runs (``ServingLoop`` stops at the cap)."""
    arrival, duration = scenario.arrival, scenario.duration_s
    if arrival is None or arrival.rate_per_s is None or duration is None:
        return
    expected = arrival.rate_per_s * duration
    if expected > MAX_ARRIVALS:
        raise FieldError("rate_per_s", too_many_arrivals(
            f"rate {arrival.rate_per_s:g}/s x duration {duration:g} s = {expected:.3g} "
            "expected arrivals"))
