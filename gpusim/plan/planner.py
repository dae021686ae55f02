"""``plan``: a capacity plan from a request (what ``gpusim plan`` runs).

The request names the hardware to consider (GPU types under software stacks, with
drafts for speculation), the offered load (a serving scenario), the SLO targets and
the search's limits; ``plan`` profiles the load, lists the options that fit, screens
them, simulates the finalists, confirms the winner, and repeats the search at the
sensitivity load factors (``search``). Results are records; ``gpusim.report`` formats
them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from gpusim.errors import ConfigError, FieldError
from gpusim.plan import workload
from gpusim.plan.finalists import Simulator, Verdict
from gpusim.plan.pareto import GpuLine, explain, pareto_front, runner_up, sensitivity_line
from gpusim.plan.screen import StepCurves, step_curves
from gpusim.plan.search import Outcome, Screened, Search, screen_doubts, screen_rows
from gpusim.plan.space import (
    DEFAULT_MAX_NUM_BATCHED_TOKENS,
    DEFAULT_MAX_NUM_SEQS,
    Hardware,
    Limits,
    Option,
    Slo,
    Unfit,
    limits_grid,
    options,
)
from gpusim.plan.workload import WorkloadProfile
from gpusim.serving.scenario import Scenario
from gpusim.serving.trace import Trace

SENSITIVITY = (0.75, 1.25)


@dataclass(frozen=True)
class PlanRequest:
    """What to plan. ``max_num_seqs`` / ``max_num_batched_tokens``: the scheduler limits
    to try (empty: the scenario's and the defaults); ``sim_duration_s`` and
    ``min_requests``: a finalist's simulated window (at least that long and that many
    requests, at most the scenario's); ``max_sims``: simulations at most per load
    factor; ``sensitivity``: other load factors to plan for; ``simulate``: False for
    the analytic screen alone."""

    hardware: tuple[Hardware, ...]
    scenario: Scenario
    slo: Slo
    trace: Trace | None = None
    max_num_seqs: tuple[int, ...] = ()
    max_num_batched_tokens: tuple[int, ...] = ()
    max_gpus: int = 64
    sim_duration_s: float = 60.0
    min_requests: int = 1000
    max_sims: int = 40
    sensitivity: tuple[float, ...] = SENSITIVITY
    simulate: bool = True


@dataclass
class PlanResult:
    """A plan: the load it planned for, the options it had and left out, the search's
    outcome at the offered load and at the sensitivity factors, the Pareto front, one
    line per GPU type, the runner-up, and how long each part took (``timings_s``)."""

    request: PlanRequest
    profile: WorkloadProfile
    limits: tuple[Limits, ...]
    options: list[Option]
    unfit: list[Unfit]
    unsupported: dict[str, str]
    main: Outcome
    others: list[Outcome]
    front: list[Verdict]
    lines: list[GpuLine]
    runner_up: Verdict | None
    screen_best: Screened | None
    timings_s: dict[str, float] = field(default_factory=dict)
    simulations: int = 0
    engines: int = 0

    @property
    def winner(self) -> Verdict | None:
        """The winner, as its confirming run over the scenario's window saw it."""
        return self.main.confirmed or self.main.winner

    def sensitivity_lines(self) -> list[str]:
        return [sensitivity_line(self.main, o) for o in self.others]

    def usd_per_million_tokens(self, cost_per_hour: float, load_factor: float = 1.0
                               ) -> float:
        """Dollars per million tokens (prompt and output) served at the offered load."""
        tokens_per_h = (self.profile.rate_per_s * load_factor
                        * self.profile.tokens_per_request * 3600.0)
        return cost_per_hour / tokens_per_h * 1e6 if tokens_per_h > 0 else math.inf

    def usd_per_million_output_tokens(self, cost_per_hour: float, load_factor: float = 1.0
                                      ) -> float:
        tokens_per_h = (self.profile.rate_per_s * load_factor
                        * self.profile.output_mean_tokens * 3600.0)
        return cost_per_hour / tokens_per_h * 1e6 if tokens_per_h > 0 else math.inf


def _limits(req: PlanRequest) -> tuple[Limits, ...]:
    s = req.scenario.scheduler
    seqs = req.max_num_seqs or (*DEFAULT_MAX_NUM_SEQS, s.max_num_seqs)
    tokens = req.max_num_batched_tokens or (*DEFAULT_MAX_NUM_BATCHED_TOKENS,
                                            s.max_num_batched_tokens)
    return limits_grid(tuple(seqs), tuple(tokens))


def screen_best(rows: list[Screened]) -> Screened | None:
    """The screen's cheapest deployment (then the most capacity) among ``rows``."""
    ok = [r for r in rows if r.replicas is not None]
    return min(ok, key=lambda r: (r.cost_per_hour, -r.capacity.capacity_per_s,
                                  r.option.key, r.limits), default=None)


def plan(req: PlanRequest) -> PlanResult:
    """Plan ``req`` (see the module docstring). Raises FieldError for a bad search
    setting (``max_gpus``, limits, ``max_sims``, ``sim_duration_s``, a load factor),
    ConfigError for a scenario the plan cannot split (a closed loop without think
    time), ValueError when the scenario replays a trace and none is given."""
    t0 = time.perf_counter()
    if not isinstance(req.max_sims, int) or req.max_sims < 1:
        raise FieldError("max_sims", f"max_sims={req.max_sims!r} must be an integer >= 1")
    if not req.sim_duration_s > 0 or not math.isfinite(req.sim_duration_s):
        raise FieldError("sim_duration_s",
                         f"sim_duration_s={req.sim_duration_s!r} must be a number > 0")
    for f in req.sensitivity:
        if not 0 < f < 100:
            raise FieldError("sensitivity", f"load factor {f!r} must be in (0, 100)")
    if not req.hardware:
        raise FieldError("gpus", "gpus: give at least one GPU type")
    sched = req.scenario.scheduler
    hardware = list(req.hardware)
    unsupported: dict[str, str] = {}
    if sched.prefix_caching:   # the serving simulator does not speculate with it
        for hw in hardware:
            for sp in hw.specs:
                unsupported[f"{hw.gpu_name}/{hw.stack_name}/spec-{sp.name}"] = (
                    "speculation with prefix caching is not modelled")
        hardware = [Hardware(hw.platform, hw.model, (), hw.overhead) for hw in hardware]
    prof = workload.profile(req.scenario, req.trace)
    limits = _limits(req)
    largest = Limits(max(x.max_num_seqs for x in limits),
                     max(x.max_num_batched_tokens for x in limits))
    opts, unfit = options(hardware, req.max_gpus, sched.reserve_fraction,
                          prof.longest_request_tokens)
    curves: dict[str, StepCurves] = {}
    for o in opts:
        try:
            curves[o.key] = step_curves(o, prof, largest, sched.block_size_tokens,
                                        sched.reserve_fraction)
        except (ValueError, ConfigError) as exc:
            unsupported[o.key] = str(exc)
    t_curves = time.perf_counter()
    cache: dict = {}
    sim = Simulator(req.scenario, req.trace, prof, req.slo, largest, req.sim_duration_s,
                    req.min_requests)
    outcomes = []
    t_screen = 0.0
    for i, f in enumerate((1.0, *req.sensitivity)):
        ts = time.perf_counter()
        rows = screen_rows(curves, opts, limits, prof, req.slo, f, req.max_gpus, cache)
        t_screen += time.perf_counter() - ts
        if req.simulate:
            budget = req.max_sims if i == 0 else max(4, req.max_sims // 3)
            doubts = screen_doubts(curves, prof, req.slo, f, cache)
            outcomes.append(Search(sim, req.slo, f, req.max_gpus, budget, doubts).run(
                rows, confirm=i == 0, survey=i == 0, ties=i == 0))
        else:
            outcomes.append(Outcome(f, prof.rate_per_s * f, rows))
    main, others = outcomes[0], outcomes[1:]
    gpus = list(dict.fromkeys(hw.gpu_name for hw in req.hardware))
    result = PlanResult(
        request=req, profile=prof, limits=limits, options=opts, unfit=unfit,
        unsupported=unsupported, main=main, others=others,
        front=pareto_front(main.verdicts),
        lines=explain(gpus, main, unfit, unsupported, req.slo) if req.simulate else [],
        runner_up=runner_up(main, req.slo), screen_best=screen_best(main.screened),
        simulations=sim.runs, engines=len(sim._engines))
    end = time.perf_counter()
    result.timings_s = {"total": end - t0, "curves": t_curves - t0, "screen": t_screen,
                        "engine_builds": sim.build_s, "simulations": sim.sim_s}
    return result
