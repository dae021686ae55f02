"""The serving simulation: the engine a run needs, and ``simulate``, which runs a
scenario to the end (``loop.ServingLoop`` steps one; ``summary`` reports it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpusim.cost import Calibration
from gpusim.serving.kv_cache import KvBudget, kv_budget
from gpusim.serving.loop import ServingLoop
from gpusim.serving.scenario import Scenario
from gpusim.serving.speculation import (
    SpecStepModel,
    build_spec_step_model,
    draft_memory,
    draft_option,
)
from gpusim.serving.step_time import StepTimeModel, build_step_time_model
from gpusim.specs import GpuSpec, ModelSpec, StackSpec


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


def simulate(engine: Engine, scenario: Scenario,
             progress: Callable[[float], None] | None = None) -> dict[str, Any]:
    """Run ``scenario`` on ``engine`` to the end; returns the summary (JSON-ready,
    deterministic for a given seed; ``ServingSummary.as_dict``). Raises ValueError when
    the engine was built for other scheduler limits, ConfigError for a bad trace,
    InvariantError on a bug."""
    loop = ServingLoop(engine, scenario, progress)
    loop.run()
    return loop.summary().as_dict()


def build_and_simulate(gpu: GpuSpec, model: ModelSpec, stack: StackSpec, cal: Calibration,
                       scenario: Scenario, launch: str = "graph",
                       progress: Callable[[float], None] | None = None) -> dict[str, Any]:
    """``build_engine`` then ``simulate``."""
    return simulate(build_engine(gpu, model, stack, cal, scenario, launch), scenario,
                    progress)
