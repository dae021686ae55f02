"""Serving simulation: requests arrive, a scheduler batches them, steps take time.

Built on the step predictor's kernel costs (``step_time``), never below them; knows
nothing of SimPy. ``build_engine`` (platform, model, scenario -> tables), ``simulate``
(a whole run -> summary dict) or ``ServingLoop`` (a run step by step, for notebooks).
Prefix caching (``prefix_cache``) and workloads that share content (``conversation``)
are opt-in scenario keys.
Scenario files and options are read by ``gpusim.io.scenario``; outputs are formatted
by ``gpusim.report``.
"""

from gpusim.serving.invariants import InvariantError
from gpusim.serving.kv_cache import KvBudget, PagedKVCache, kv_budget
from gpusim.serving.loop import ServingLoop, StepPlan, StepRecord
from gpusim.serving.prefix_cache import PrefixKVCache
from gpusim.serving.scenario import LengthSpec, Scenario
from gpusim.serving.simulate import Engine, build_engine, check_arrivals, simulate
from gpusim.serving.step_time import StepTimeModel, build_step_time_model
from gpusim.serving.summary import ServingSummary

__all__ = [
    "Engine", "InvariantError", "KvBudget", "LengthSpec", "PagedKVCache", "PrefixKVCache",
    "Scenario",
    "ServingLoop", "ServingSummary", "StepPlan", "StepRecord", "StepTimeModel",
    "build_engine", "build_step_time_model", "check_arrivals", "kv_budget", "simulate",
]
