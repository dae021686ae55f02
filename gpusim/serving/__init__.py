"""Serving simulation: requests arrive, a scheduler batches them, steps take time.

Built on the step predictor's kernel costs (``step_time``), never below them; knows
nothing of SimPy. Entry points: ``scenario_from_options`` (a scenario file and/or CLI
options -> ``Scenario``), ``run`` (simulate with an optional progress bar -> summary
dict), and ``output`` / ``figures`` to format the summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpusim.cost import Calibration
from gpusim.serving.invariants import InvariantError
from gpusim.serving.kv_cache import KvBudget, PagedKVCache, kv_budget
from gpusim.serving.progress import progress_bar
from gpusim.serving.scenario import (
    LengthSpec,
    Scenario,
    load_scenario,
    parse_length,
    with_overrides,
)
from gpusim.serving.simulate import Engine, build_engine, simulate
from gpusim.serving.step_time import StepTimeModel, build_step_time_model
from gpusim.specs import GpuSpec, ModelSpec, StackSpec

__all__ = [
    "Engine", "InvariantError", "KvBudget", "LengthSpec", "PagedKVCache", "Scenario",
    "StepTimeModel", "build_engine", "build_step_time_model", "kv_budget", "load_scenario",
    "parse_length", "run", "scenario_from_options", "simulate", "with_overrides",
]


def scenario_from_options(path: Path | None, *, prompt_dist: str | None = None,
                          output_dist: str | None = None, **options: Any) -> Scenario:
    """The scenario in ``path`` (if any) with the given command-line options applied.

    ``prompt_dist``/``output_dist`` use ``parse_length``'s syntax; other options as in
    ``with_overrides``. Raises ConfigError naming the file and line or the option.
    """
    base = load_scenario(path) if path is not None else None
    prompt = parse_length(prompt_dist, "--prompt-dist") if prompt_dist is not None else None
    output = parse_length(output_dist, "--output-dist") if output_dist is not None else None
    return with_overrides(base, prompt=prompt, output=output, **options)


def run(gpu: GpuSpec, model: ModelSpec, stack: StackSpec, cal: Calibration,
        scenario: Scenario, launch: str = "graph", quiet: bool = True) -> dict[str, Any]:
    """Build the engine and simulate, with a progress bar on stderr unless ``quiet``
    (or stderr is not a terminal). Raises ConfigError for bad input."""
    engine = build_engine(gpu, model, stack, cal, scenario, launch)
    total = float(scenario.duration_s or 0.0)
    with progress_bar(total, quiet=quiet or total <= 0) as tick:
        return simulate(engine, scenario, tick)
