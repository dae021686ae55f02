"""The search: the cheapest deployment that meets the SLOs at the offered load.

1. Screen every option (GPU x stack x tp x speculation whose weights fit) under every
   limits pair analytically (``screen.capacity``): replicas = ceil(rate / capacity),
   and the fewest replicas any deployment of it could need (its throughput bound).
2. Simulate, cheapest screened option first, each option's best limits for the
   fewest replicas that meet the SLOs: from the screened count down to the
   throughput bound's by bisection when it meets (the screen errs on the safe side),
   up by doubling counts when it misses; the next-best limits get one try at one
   replica fewer. Counts stop rising at a latency floor (more replicas missed by as
   much: ``at_floor``). An option whose throughput bound already costs more than the
   best simulated deployment is pruned without simulating, and no count that could
   not beat that best is simulated (the sensitivity searches prune equal costs too).
3. Confirm the cheapest deployment that met the SLOs over the scenario's own window
   (the finalists ran a shorter one); if it misses there, the search goes on.

A short run that meets the SLOs where the screen predicts a miss is run again over the
scenario's own window, which decides (``screen_doubts``): close to saturation, queues
build up over minutes, so a short window that starts empty can pass a deployment whose
steady state misses (2 x H100 for Llama 3.1 8B at 50 req/s of chat: TTFT p99 0.17 s
over 60 s, 1.9 s over 600 s, 3.3 s by the screen).

Before 2, a survey simulates each GPU type's cheapest screened option, so that every
GPU type has a simulated deployment to stand against the winner (the Pareto front and
the per-GPU reasons are simulated, not screened).

Ties in cost go to the lower p99 latency (as a fraction of the SLO). The same search at
other load factors gives the sensitivity of the answer to traffic.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from gpusim.plan.finalists import Simulator, Verdict
from gpusim.plan.screen import (
    Capacity,
    LoadTable,
    StepCurves,
    capacity,
    load_table,
    predict_at,
)
from gpusim.plan.space import Deployment, Limits, Option, Slo
from gpusim.plan.workload import WorkloadProfile

BOUND_SLACK = 1.10     # the throughput bound's allowance for the screen's own error
FLOOR_GAIN = 0.02      # more replicas that gain less than this on the p99s: a floor


@dataclass(frozen=True)
class Screened:
    """One (option, limits) through the screen at one load factor: its capacity, the
    replicas it needs (None: none within ``max_gpus`` or none at all) and the fewest
    any deployment of it could need."""

    option: Option
    limits: Limits
    capacity: Capacity
    replicas: int | None
    bound_replicas: int | None
    ttft_p99_s: float = math.nan     # the screen's prediction at ``replicas``
    tpot_p99_s: float = math.nan

    @property
    def deployment(self) -> Deployment | None:
        return None if self.replicas is None else Deployment(self.option, self.limits,
                                                             self.replicas)

    @property
    def cost_per_hour(self) -> float:
        d = self.deployment
        return d.cost_per_hour if d is not None else math.inf

    @property
    def bound_cost_per_hour(self) -> float:
        if self.bound_replicas is None:
            return math.inf
        return self.bound_replicas * self.option.tp * self.option.hardware.price_per_gpu_hour


@dataclass
class Outcome:
    """One load factor's search: every screened row, every simulation, the winner (its
    confirming run over the full window) and the options pruned or left unsimulated."""

    load_factor: float
    rate_per_s: float
    screened: list[Screened]
    verdicts: list[Verdict] = field(default_factory=list)
    winner: Verdict | None = None
    confirmed: Verdict | None = None
    pruned: dict[str, Screened] = field(default_factory=dict)      # option key -> row
    unsimulated: dict[str, Screened] = field(default_factory=dict)  # budget ran out


def screen_rows(curves: dict[str, StepCurves], options: list[Option],
                limits: tuple[Limits, ...], profile: WorkloadProfile, slo: Slo,
                load_factor: float, max_gpus: int,
                cache: dict[tuple[str, Limits], tuple[Capacity, LoadTable]]
                ) -> list[Screened]:
    """Screen every option with curves under every limits pair at ``load_factor``
    (``cache``: each (option, limits)'s capacity and load table, for this profile and
    SLO, kept across load factors)."""
    rate = profile.rate_per_s * load_factor
    rows = []
    for o in options:
        c = curves.get(o.key)
        if c is None:
            continue
        for lim in limits:
            hit = cache.get((o.key, lim))
            if hit is None:
                table = load_table(c, profile, lim)
                hit = cache[(o.key, lim)] = (capacity(c, profile, lim, slo, table), table)
            cap, table = hit
            most = max_gpus // o.tp
            need = math.ceil(rate / cap.capacity_per_s) if cap.capacity_per_s > 0 else None
            lb = (math.ceil(rate / (cap.bound_per_s * BOUND_SLACK))
                  if cap.bound_per_s > 0 else None)
            replicas = need if need is not None and need <= most else None
            ttft = tpot = math.nan
            if replicas is not None:
                lp = predict_at(c, profile, lim, rate / replicas, table)
                if lp is not None:
                    ttft, tpot = float(lp.ttft_p99_s[0]), float(lp.tpot_p99_s[0])
            rows.append(Screened(o, lim, cap, replicas,
                                 lb if lb is not None and lb <= most else None, ttft, tpot))
    return rows


def screen_doubts(curves: dict[str, StepCurves], profile: WorkloadProfile, slo: Slo,
                  load_factor: float,
                  cache: dict[tuple[str, Limits], tuple[Capacity, LoadTable]]
                  ) -> Callable[[Deployment], bool]:
    """Whether the screen predicts that a deployment misses the SLOs at
    ``load_factor`` (a p99 over its target, or a load beyond what it carries at all);
    False for one the screen has no table for (``cache`` as ``screen_rows`` fills it)."""
    def doubts(d: Deployment) -> bool:
        c, hit = curves.get(d.option.key), cache.get((d.option.key, d.limits))
        if c is None or hit is None:
            return False
        lp = predict_at(c, profile, d.limits, profile.rate_per_s * load_factor / d.replicas,
                        hit[1])
        return lp is None or bool(lp.ttft_p99_s[0] > slo.ttft_p99_s
                                  or lp.tpot_p99_s[0] > slo.tpot_p99_s)
    return doubts


def _best_rows(rows: list[Screened]) -> dict[str, list[Screened]]:
    """Per option, its rows best first: fewest replicas, then most capacity."""
    out: dict[str, list[Screened]] = {}
    for r in rows:
        out.setdefault(r.option.key, []).append(r)
    for key, rs in out.items():
        out[key] = sorted(rs, key=lambda r: (r.replicas is None, r.replicas or 0,
                                             -r.capacity.capacity_per_s, r.limits))
    return out


def at_floor(fewer: Verdict, more: Verdict, slo: Slo, most: int) -> bool:
    """Whether ``more`` replicas than ``fewer`` missed the SLOs again at a latency
    floor, so that no count up to ``most`` would meet them (a prompt's own prefill, one
    sequence's decode step, a static batch's wait): neither run overloaded, and the
    worse p99 (against its target) improved by less than ``FLOOR_GAIN``, or by too
    little to reach its target by ``most`` replicas even if it kept improving by the
    same factor per doubling (latency falls ever more slowly as load falls, so that
    projection is optimistic)."""
    if more.meets or fewer.overloaded or more.overloaded:
        return False
    a, b = fewer.score(slo), more.score(slo)
    if not (math.isfinite(a) and math.isfinite(b)):
        return False
    if b > (1.0 - FLOOR_GAIN) * a:
        return True
    n0, n1 = fewer.deployment.replicas, more.deployment.replicas
    doublings = math.log2(most / n1) / math.log2(n1 / n0)
    return b * (b / a) ** doublings > 1.0


def _better(a: Verdict, b: Verdict | None, slo: Slo) -> bool:
    if b is None:
        return True
    return ((a.cost_per_hour, a.score(slo), a.deployment.key)
            < (b.cost_per_hour, b.score(slo), b.deployment.key))


class Search:
    """The search at one load factor over screened rows, with a simulator."""

    def __init__(self, sim: Simulator, slo: Slo, load_factor: float, max_gpus: int,
                 max_sims: int, doubts: Callable[[Deployment], bool] | None = None
                 ) -> None:
        self.sim, self.slo, self.f = sim, slo, load_factor
        self.doubts = doubts
        self.max_gpus, self.max_sims = max_gpus, max_sims
        self.verdicts: list[Verdict] = []
        self.best: Verdict | None = None
        self.ties = True
        self._rejected: set[tuple[str, int, int, int]] = set()   # missed the full window

    def _budget_left(self) -> bool:
        return len(self.verdicts) < self.max_sims

    def _run(self, d: Deployment) -> Verdict:
        v = self.sim.run(d, self.f)
        if v.meets and self.doubts is not None and self.doubts(d):
            v = self.sim.run(d, self.f, full=True)   # the full window decides
        if v not in self.verdicts:
            self.verdicts.append(v)
        if v.meets and d.key not in self._rejected and _better(v, self.best, self.slo):
            self.best = v
        return v

    def _meets(self, option: Option, lim: Limits, replicas: int) -> bool:
        return self._run(Deployment(option, lim, replicas)).meets

    def _can_win(self, replicas: int, price: float) -> bool:
        """Whether ``replicas`` at ``price`` per replica-hour could beat the best so far
        (at the same cost too, when ties are searched)."""
        if self.best is None:
            return True
        cost, best = replicas * price, self.best.cost_per_hour
        return cost < best or (self.ties and cost == best)

    def ladder(self, rows: list[Screened], survey: bool = False) -> None:
        """Simulate one option for its fewest replicas that meet the SLOs, starting at
        the screen's count (module docstring): when that meets, the throughput bound's
        count next, then bisection between them; when it misses, counts doubling
        upwards (while cheaper than the best so far), then bisection. At the least
        count found, the next-best limits get one try at one replica fewer. Outside
        the survey (``survey``: simulate the screen's count whatever it costs), counts
        that could not beat the best so far are not simulated."""
        top = rows[0]
        o, lim, r = top.option, top.limits, top.replicas
        most = self.max_gpus // o.tp
        price = o.tp * o.hardware.price_per_gpu_hour
        if not survey and not self._can_win(r, price):
            # the screen's count could not win: only the counts below it that could,
            # down to the throughput bound's; hi (untested) stands for "no cheaper one"
            lo, hi = max(1, top.bound_replicas or 1) - 1, r
            while hi - 1 > lo and not self._can_win(hi - 1, price):
                hi -= 1
        elif self._meets(o, lim, r):
            lo, hi = max(1, top.bound_replicas or 1) - 1, r     # lo misses (or is 0)
            if lo >= 1 and lo < hi - 1 and self._budget_left():
                if self._meets(o, lim, lo + 1):
                    hi = lo + 1
                else:
                    lo += 1
        else:
            lo, hi, step = r, None, 1
            prev = self._run(Deployment(o, lim, r))
            while hi is None and self._budget_left():
                nxt = min(lo + step, most)
                if nxt <= lo or (self.best is not None
                                 and nxt * price > self.best.cost_per_hour):
                    return
                v = self._run(Deployment(o, lim, nxt))
                if v.meets:
                    hi = nxt
                elif at_floor(prev, v, self.slo, most):
                    return
                else:
                    lo, step, prev = nxt, step * 2, v
            if hi is None:
                return
        while hi - lo > 1 and self._budget_left():
            mid = (lo + hi) // 2
            if self._meets(o, lim, mid):
                hi = mid
            else:
                lo = mid
        alternates = [x.limits for x in rows[1:] if x.limits != lim]
        if (hi > 1 and hi - 1 == lo and alternates and self._budget_left()
                and (survey or self._can_win(hi - 1, price))):
            self._meets(o, alternates[0], hi - 1)

    def run(self, rows: list[Screened], confirm: bool, survey: bool,
            ties: bool = True) -> Outcome:
        """The search over ``rows`` (see the module docstring); ``survey``: first
        simulate each GPU type's cheapest screened option, whatever its bound, so that
        every GPU type has a simulated deployment to compare; ``confirm``: confirm
        the winner over the scenario's full window; ``ties``: simulate an option that
        could at best cost as much as the best so far (it may win on latency; False:
        prune it, as the sensitivity searches do, where only the cost is reported)."""
        rate = self.sim.profile.rate_per_s * self.f
        out = Outcome(self.f, rate, rows)
        self.ties = ties
        by_option = _best_rows(rows)
        order = sorted((rs for rs in by_option.values() if rs[0].replicas is not None),
                       key=lambda rs: (rs[0].cost_per_hour, -rs[0].capacity.capacity_per_s,
                                       rs[0].option.key))
        if survey:
            firsts: dict[str, list[Screened]] = {}
            for rs in order:
                firsts.setdefault(rs[0].option.gpu_name, rs)
            for rs in firsts.values():
                if self._budget_left():
                    self.ladder(rs, survey=True)
        while True:
            for rs in order:
                key = rs[0].option.key
                if any(v.deployment.option.key == key for v in self.verdicts):
                    continue
                if key in out.pruned or key in out.unsimulated:
                    continue
                best_bound = min(r.bound_cost_per_hour for r in rs)
                if not self._can_win(1, best_bound):
                    out.pruned[key] = min(rs, key=lambda r: r.bound_cost_per_hour)
                    continue
                if not self._budget_left():
                    out.unsimulated[key] = rs[0]
                    continue
                self.ladder(rs)
            if not confirm or self.best is None:
                break
            full = self.sim.run(self.best.deployment, self.f, full=True)
            if full not in self.verdicts:
                self.verdicts.append(full)
            if full.meets:
                out.confirmed = full
                break
            # missed over the full window: never the winner; one more replica of it
            # enters the search, and the next best stands
            self._rejected.add(self.best.deployment.key)
            d = self.best.deployment
            self.best = None
            for v in self.verdicts:
                if (v.meets and v.deployment.key not in self._rejected
                        and _better(v, self.best, self.slo)):
                    self.best = v
            if d.replicas < self.max_gpus // d.option.tp and self._budget_left():
                self._run(Deployment(d.option, d.limits, d.replicas + 1))
        out.verdicts = list(self.verdicts)
        out.winner = self.best
        return out
