"""What a plan concludes besides its winner: the Pareto front of cost against p99
latency, one line per GPU type on why it lost (memory, latency or cost), the
runner-up, and how the winner moves with traffic."""

from __future__ import annotations

import math
from dataclasses import dataclass

from gpusim.plan.finalists import Verdict
from gpusim.plan.search import Outcome, Screened
from gpusim.plan.space import Slo, Unfit


def latest(verdicts: list[Verdict]) -> list[Verdict]:
    """Each deployment's verdict over the longest window it ran (a finalist confirmed
    or refuted over the scenario's full window counts as that), in run order."""
    out: dict[tuple[str, int, int, int], Verdict] = {}
    for v in verdicts:
        k = v.deployment.key
        if k not in out or v.window_s > out[k].window_s:
            out[k] = v
    return list(out.values())


def pareto_front(verdicts: list[Verdict]) -> list[Verdict]:
    """The SLO-meeting deployments no other beats in cost, TTFT p99 and TPOT p99 at
    once, cheapest first. Deployments are compared over the finalists' window (each
    its shortest run, so that like is compared with like); one that missed over the
    scenario's full window is left out."""
    refuted = {v.deployment.key for v in latest(verdicts) if not v.meets}
    short: dict[tuple[str, int, int, int], Verdict] = {}
    for v in verdicts:
        k = v.deployment.key
        if k not in short or v.window_s < short[k].window_s:
            short[k] = v
    ok = [v for k, v in short.items() if v.meets and k not in refuted]

    def dominates(a: Verdict, b: Verdict) -> bool:
        pa = (a.cost_per_hour, a.ttft_p99_s, a.tpot_p99_s)
        pb = (b.cost_per_hour, b.ttft_p99_s, b.tpot_p99_s)
        return all(x <= y for x, y in zip(pa, pb, strict=True)) and pa != pb

    front = [v for v in ok if not any(dominates(w, v) for w in ok)]
    return sorted(front, key=lambda v: (v.cost_per_hour, v.ttft_p99_s, v.deployment.key))


def runner_up(outcome: Outcome, slo: Slo) -> Verdict | None:
    """The best simulated deployment the plan did not choose: of another option (GPU,
    stack, tp or speculation) when there is one, else another replica count or
    limits of the winner's; ranked by cost, then p99 latency against the SLO."""
    w = outcome.confirmed or outcome.winner
    if w is None:
        return None
    others = [v for v in latest(outcome.verdicts) if v.deployment.key != w.deployment.key]
    elsewhere = [v for v in others if v.deployment.option.key != w.deployment.option.key]
    pool = elsewhere or others
    if not pool:
        return None
    return min(pool, key=lambda v: (v.cost_per_hour, v.score(slo), v.deployment.key))


@dataclass(frozen=True)
class GpuLine:
    """Why one GPU type won or lost: ``kind`` is winner, cost, latency, memory,
    unsupported or budget (not simulated: the search's budget ran out)."""

    gpu: str
    kind: str
    text: str


def _money(x: float) -> str:
    return f"${x:.2f}/h"


def explain(gpus: list[str], outcome: Outcome, unfit: list[Unfit],
            unsupported: dict[str, str], slo: Slo) -> list[GpuLine]:
    """One line per GPU type (module docstring)."""
    w = outcome.confirmed or outcome.winner
    win_cost = w.cost_per_hour if w is not None else math.inf
    lines = []
    for g in gpus:
        mine = [v for v in latest(outcome.verdicts) if v.deployment.option.gpu_name == g]
        good = [v for v in mine if v.meets]
        rows = [r for r in outcome.screened if r.option.gpu_name == g]
        if w is not None and w.deployment.option.gpu_name == g:
            lines.append(GpuLine(g, "winner", f"winner: {w.deployment.describe()}"))
        elif good:
            b = min(good, key=lambda v: (v.cost_per_hour, v.score(slo)))
            more = (b.cost_per_hour / win_cost - 1.0) * 100 if math.isfinite(win_cost) else 0
            tail = (f", {more:.0f}% more than the winner" if b.cost_per_hour > win_cost
                    else ", the same cost with a higher p99 latency")
            lines.append(GpuLine(g, "cost", f"cost: {b.deployment.describe()} meets the SLOs"
                                 f" (TTFT p99 {b.ttft_p99_s:.3g} s, TPOT p99 "
                                 f"{b.tpot_p99_s * 1e3:.3g} ms) at "
                                 f"{_money(b.cost_per_hour)}{tail}"))
        elif mine:
            b = max(mine, key=lambda v: (v.cost_per_hour, -v.score(slo)))
            step = b.deployment.option.tp * b.deployment.option.hardware.price_per_gpu_hour
            if b.cost_per_hour + step > win_cost:
                lines.append(GpuLine(g, "cost", f"cost: {b.deployment.describe()} misses "
                                     f"({b.miss}); one more replica costs "
                                     f"{_money(b.cost_per_hour + step)} > the winner's "
                                     f"{_money(win_cost)}"))
            else:
                lines.append(GpuLine(g, "latency", f"latency: {b.deployment.describe()} "
                                     f"misses ({b.miss})"))
        elif any(r.option.key in outcome.pruned for r in rows):
            r = min((outcome.pruned[k] for k in outcome.pruned
                     if outcome.pruned[k].option.gpu_name == g),
                    key=lambda r: r.bound_cost_per_hour)
            lines.append(GpuLine(g, "cost", f"cost: at least {_money(r.bound_cost_per_hour)}"
                                 f" ({r.bound_replicas} x {g} tp={r.option.tp}, its "
                                 f"throughput bound) > the winner's {_money(win_cost)}"))
        elif any(r.option.key in outcome.unsimulated for r in rows):
            r = min((outcome.unsimulated[k] for k in outcome.unsimulated
                     if outcome.unsimulated[k].option.gpu_name == g),
                    key=lambda r: r.cost_per_hour)
            lines.append(GpuLine(g, "budget", f"not simulated (search budget): the screen "
                                 f"estimates {r.deployment.describe()} at "
                                 f"{_money(r.cost_per_hour)}"))
        elif rows:
            lines.append(_screen_line(g, rows, outcome))
        elif any(k.startswith(f"{g}/") for k in unsupported):
            reason = next(v for k, v in unsupported.items() if k.startswith(f"{g}/"))
            lines.append(GpuLine(g, "unsupported", f"unsupported: {reason}"))
        else:
            mine_unfit = [u for u in unfit if u.gpu == g]
            mem = [u for u in mine_unfit if u.kind == "memory"] or mine_unfit
            text = (max(mem, key=lambda u: u.tp).reason if mem
                    else "no layout within --max-gpus")
            lines.append(GpuLine(g, "memory", f"memory: {text}"))
    return lines


def _screen_line(g: str, rows: list[Screened], outcome: Outcome) -> GpuLine:
    """Why the screen found no deployment of ``g``."""
    best = max(rows, key=lambda r: r.capacity.capacity_per_s)
    cap = best.capacity
    if cap.capacity_per_s <= 0:
        kind = cap.limit if cap.limit in ("latency", "memory") else "latency"
        return GpuLine(g, kind, f"{kind}: {cap.reason} (screen, {best.option.key})")
    need = math.ceil(outcome.rate_per_s / cap.capacity_per_s)
    return GpuLine(g, "cost", f"cost: needs {need} replicas of tp={best.option.tp} "
                   f"({need * best.option.tp} GPUs) by the screen, beyond --max-gpus")


def sensitivity_line(base: Outcome, other: Outcome) -> str:
    """How the winner changes at another load factor, in one line."""
    b = base.confirmed or base.winner
    o = other.confirmed or other.winner
    head = f"traffic x{other.load_factor:g} ({other.rate_per_s:.3g} req/s): "
    if o is None:
        return head + "no deployment within --max-gpus meets the SLOs"
    text = f"{o.deployment.describe()} at {_money(o.cost_per_hour)}"
    if b is None:
        return head + text
    if o.deployment.key == b.deployment.key:
        return head + "the same deployment, " + _money(o.cost_per_hour)
    delta = o.cost_per_hour - b.cost_per_hour
    return head + f"{text} ({'+' if delta >= 0 else '-'}${abs(delta):.2f}/h)"
