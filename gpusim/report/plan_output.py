"""A capacity plan (``gpusim.plan.PlanResult``) as text: the summary lines, the Pareto
table, one CSV row per candidate looked at, and JSON. Formats, computes nothing."""

from __future__ import annotations

import math
import shlex
from typing import Any

from gpusim import report
from gpusim.plan import PlanResult, Verdict
from gpusim.plan.planner import screen_best
from gpusim.plan.search import Screened
from gpusim.report import trust_outputs

FRONT_COLUMNS = ["gpu", "tp", "replicas", "gpus", "stack", "speculation", "max_num_seqs",
                 "max_num_batched_tokens", "usd_per_hour", "usd_per_million_tokens",
                 "ttft_p99_s", "tpot_p99_s", "window_s"]
CSV_COLUMNS = ["load_factor", "rate_per_s", "status", "gpu", "stack", "tp", "speculation",
               "max_num_seqs", "max_num_batched_tokens", "replicas", "gpus", "usd_per_hour",
               "usd_per_million_tokens", "screen_capacity_per_s", "screen_bound_replicas",
               "screen_ttft_p99_s", "screen_tpot_p99_s", "sim_window_s", "sim_ttft_p99_s",
               "sim_tpot_p99_s", "sim_rejected", "sim_preemptions", "reason"]


def _spec(o: Any) -> str:
    return "off" if o.spec is None else o.spec.label


def _deployment_fields(res: PlanResult, d: Any, f: float) -> dict[str, Any]:
    o = d.option
    return {"gpu": o.gpu_name, "stack": o.hardware.stack_name, "tp": o.tp,
            "speculation": _spec(o), "max_num_seqs": d.limits.max_num_seqs,
            "max_num_batched_tokens": d.limits.max_num_batched_tokens,
            "replicas": d.replicas, "gpus": d.gpus, "usd_per_hour": d.cost_per_hour,
            "usd_per_million_tokens": res.usd_per_million_tokens(d.cost_per_hour, f)}


def verdict_dict(res: PlanResult, v: Verdict) -> dict[str, Any]:
    """A simulated deployment as JSON-ready fields."""
    return {**_deployment_fields(res, v.deployment, v.load_factor),
            "ttft_p99_s": v.ttft_p99_s, "tpot_p99_s": v.tpot_p99_s, "window_s": v.window_s,
            "meets": v.meets, "miss": v.miss, "rejected": v.rejected,
            "preemptions": v.preemptions, "describe": v.deployment.describe()}


def front_rows(res: PlanResult) -> list[dict[str, Any]]:
    return [verdict_dict(res, v) for v in res.front]


TABLE_COLUMNS = ["gpu", "tp", "x", "stack", "spec", "seqs", "tokens", "$/h", "$/Mtok",
                 "TTFT p99 s", "TPOT p99 ms", "sim s"]


def front_table(res: PlanResult) -> list[dict[str, Any]]:
    """The Pareto front for the terminal (short column names; ``sim s``: the arrival
    window each point was compared over, the finalists' shorter one)."""
    out = []
    for r in front_rows(res):
        out.append({"gpu": r["gpu"], "tp": r["tp"], "x": r["replicas"], "stack": r["stack"],
                    "spec": r["speculation"], "seqs": r["max_num_seqs"],
                    "tokens": r["max_num_batched_tokens"], "$/h": r["usd_per_hour"],
                    "$/Mtok": r["usd_per_million_tokens"], "TTFT p99 s": r["ttft_p99_s"],
                    "TPOT p99 ms": r["tpot_p99_s"] * 1e3, "sim s": r["window_s"]})
    return out


def _screen_status(res: PlanResult, r: Screened, outcome: Any) -> tuple[str, str]:
    key = r.option.key
    if r.replicas is None:
        return "infeasible", r.capacity.reason
    if key in outcome.pruned:
        return "pruned", (f"throughput bound {r.bound_replicas} replicas costs more than "
                          "the best simulated deployment")
    if key in outcome.unsimulated:
        return "unsimulated", "search budget spent"
    return "screened", r.capacity.reason


def rows(res: PlanResult) -> list[dict[str, Any]]:
    """Every candidate at every load factor: each screened (option, limits) and each
    simulation, with its status (winner, meets, misses, screened, pruned, unsimulated,
    infeasible) and reason."""
    out: list[dict[str, Any]] = []
    for outcome in (res.main, *res.others):
        f = outcome.load_factor
        win = outcome.confirmed or outcome.winner
        for v in outcome.verdicts:
            status = ("winner" if win is not None and v is win
                      else "meets" if v.meets else "misses")
            out.append({"load_factor": f, "rate_per_s": outcome.rate_per_s, "status": status,
                        **_deployment_fields(res, v.deployment, f),
                        "sim_window_s": v.window_s, "sim_ttft_p99_s": v.ttft_p99_s,
                        "sim_tpot_p99_s": v.tpot_p99_s, "sim_rejected": v.rejected,
                        "sim_preemptions": v.preemptions, "reason": v.miss})
        for r in outcome.screened:
            status, reason = _screen_status(res, r, outcome)
            base = {"gpu": r.option.gpu_name, "stack": r.option.hardware.stack_name,
                    "tp": r.option.tp, "speculation": _spec(r.option),
                    "max_num_seqs": r.limits.max_num_seqs,
                    "max_num_batched_tokens": r.limits.max_num_batched_tokens}
            if r.deployment is not None:
                base = _deployment_fields(res, r.deployment, f)
            out.append({"load_factor": f, "rate_per_s": outcome.rate_per_s, "status": status,
                        **base, "screen_capacity_per_s": r.capacity.capacity_per_s,
                        "screen_bound_replicas": r.bound_replicas,
                        "screen_ttft_p99_s": r.ttft_p99_s, "screen_tpot_p99_s": r.tpot_p99_s,
                        "reason": reason})
    return out


def csv_text(res: PlanResult) -> str:
    return report.to_csv(rows(res), CSV_COLUMNS)


def _exact(x: float) -> str:
    """``x`` as short as it reads back exactly (``25``, ``16.666666666666668``)."""
    short = f"{x:g}"
    return short if float(short) == x else repr(float(x))


def serve_command(res: PlanResult, model: str, traffic: str, verdict: Verdict | None = None,
                  extra: tuple[str, ...] = ()) -> str | None:
    """The ``gpusim serve`` command that simulates one replica of ``verdict``'s
    deployment (default: the winner) over the window the plan judged it on, with
    ``extra`` arguments (``--calibration``, ``--launch``) appended. None without a
    verdict, for a trace (serve cannot stretch one), and for a deployment without
    speculation of a scenario that speculates (serve has no flag to turn it off)."""
    w = res.winner if verdict is None else verdict
    sc = res.request.scenario
    if w is None or sc.trace is not None or (sc.speculative is not None
                                             and w.deployment.option.spec is None):
        return None
    d, o = w.deployment, w.deployment.option
    share = w.load_factor / d.replicas
    args = ["gpusim", "serve", "--gpu", o.gpu_name, "--model", model, "--stack",
            o.hardware.stack_name, "--scenario", traffic]
    if sc.arrival.process == "closed":
        args += ["--users", str(max(1, round(sc.arrival.users * share)))]
    else:
        args += ["--rate", _exact(sc.arrival.rate_per_s * share)]
    if o.tp > 1:
        args += ["--tp", str(o.tp)]
    if o.platform.layout.ep > 1:
        args += ["--ep", str(o.platform.layout.ep)]
    args += ["--duration-s", _exact(w.window_s), "--max-num-seqs",
             str(d.limits.max_num_seqs), "--max-num-batched-tokens",
             str(d.limits.max_num_batched_tokens)]
    slo = res.request.slo
    if math.isfinite(slo.ttft_p99_s):
        args += ["--slo-ttft-s", _exact(slo.ttft_p99_s)]
    if math.isfinite(slo.tpot_p99_s):
        args += ["--slo-tpot-s", _exact(slo.tpot_p99_s)]
    if o.spec is not None:
        args += ["--spec-draft", o.spec.name, "--spec-k", str(o.spec.k),
                 "--spec-acceptance", _exact(o.spec.acceptance)]
    return shlex.join([*args, *extra])


def summary_lines(res: PlanResult, model: str, command: str | None) -> list[str]:
    """The plan in a few lines: the load, the winner with its cost and p99s, the
    command that reproduces it, the runner-up and the sensitivity."""
    p, sc, req = res.profile, res.request.scenario, res.request
    load = (f"{p.rate_per_s:.4g} req/s" if p.process != "closed"
            else f"{p.users} closed-loop users (<= {p.rate_per_s:.4g} req/s)")
    out = [f"plan: {model}, scenario {sc.name} at {load} (mean prompt "
           f"{p.prompt_mean_tokens:.0f}, output {p.output_mean_tokens:.0f} tokens); SLO "
           f"{req.slo.describe()}; {len(res.options)} options x {len(res.limits)} limits "
           f"screened, {res.simulations} simulations"]
    if not req.simulate:
        return out + _screen_lines(res)
    w = res.winner
    if w is None:
        out.append("winner: none: no deployment within --max-gpus meets the SLOs")
    else:
        d = w.deployment
        out.append(f"winner: {d.describe()}: ${d.cost_per_hour:.2f}/h, "
                   f"${res.usd_per_million_tokens(d.cost_per_hour):.3f} per million tokens "
                   f"(${res.usd_per_million_output_tokens(d.cost_per_hour):.3f} per million "
                   f"output tokens); simulated over {w.window_s:g} s per replica: TTFT p99 "
                   f"{w.ttft_p99_s:.3g} s, TPOT p99 {w.tpot_p99_s * 1e3:.3g} ms")
        if command:
            out.append(f"reproduce one replica: {command}")
    ru = res.runner_up
    if ru is not None:
        verdict = f"misses ({ru.miss})" if not ru.meets else "meets the SLOs"
        out.append(f"runner-up: {ru.deployment.describe()}: ${ru.cost_per_hour:.2f}/h, "
                   f"{verdict}")
    out += [f"{line.gpu}: {line.text}" for line in res.lines]
    out += [f"sensitivity: {s}" for s in res.sensitivity_lines()]
    if w is not None:
        out.append(trust_outputs.summary_line(winner_trust(res)))
    return out + _trust_lines(res)


def winner_trust(res: PlanResult) -> dict[str, Any] | None:
    """The winner's ``serve`` trust object (``report.trust_outputs.serving_trust``) from
    its run over the scenario's full window; None without a winner or such a run."""
    w = res.winner
    if w is None or w.shapes is None:
        return None
    o = w.deployment.option
    spec = (None if o.spec is None or o.hardware.overhead is None
            else (o.spec.draft, o.spec.acceptance, o.hardware.overhead))
    return trust_outputs.serving_trust(o.platform, o.model, w.shapes, spec)


def _trust_lines(res: PlanResult) -> list[str]:
    """One line per GPU whose calibration was not fitted on its own measurements (carried
    over from another GPU, or the datasheet alone): a plan that picks it says so."""
    seen: dict[str, str] = {}
    for o in res.options:
        cal = o.hardware.platform.calibration
        if cal.fitted_on.startswith("transferred") or cal.fitted_on == "datasheet":
            seen.setdefault(o.gpu_name, cal.fitted_on)
    return [f"calibration: {gpu} was never measured here: {how} (cross-GPU error: "
            "validation/REPORT.md)" for gpu, how in seen.items()]


def _screen_lines(res: PlanResult) -> list[str]:
    """``--screen-only``: the screen's cheapest deployment at each load factor."""
    out = []
    for o in (res.main, *res.others):
        b = screen_best(o.screened)
        head = ("screen (not simulated): " if o is res.main
                else f"sensitivity (screen): traffic x{o.load_factor:g} "
                     f"({o.rate_per_s:.3g} req/s): ")
        out.append(head + ("no deployment within --max-gpus meets the SLOs" if b is None
                           else f"{b.deployment.describe()} at ${b.cost_per_hour:.2f}/h "
                           f"(predicted TTFT p99 {b.ttft_p99_s:.3g} s, TPOT p99 "
                           f"{b.tpot_p99_s * 1e3:.3g} ms)"))
    return out


def as_dict(res: PlanResult, model: str, command: str | None) -> dict[str, Any]:
    """The whole plan as JSON-ready data."""
    p, req = res.profile, res.request
    w, ru = res.winner, res.runner_up
    return report.json_safe({
        "model": model, "scenario": req.scenario.name,
        "offered": {"process": p.process, "rate_per_s": p.rate_per_s, "users": p.users,
                    "prompt_mean_tokens": p.prompt_mean_tokens,
                    "output_mean_tokens": p.output_mean_tokens,
                    "prefill_mean_tokens": p.prefill_mean_tokens},
        "slo": {"ttft_p99_s": req.slo.ttft_p99_s, "tpot_p99_s": req.slo.tpot_p99_s},
        "winner": verdict_dict(res, w) if w is not None else None,
        "winner_trust": winner_trust(res),
        "usd_per_million_output_tokens": (res.usd_per_million_output_tokens(w.cost_per_hour)
                                          if w is not None else None),
        "serve_command": command,
        "runner_up": verdict_dict(res, ru) if ru is not None else None,
        "screen_best": None if res.screen_best is None else {
            **_deployment_fields(res, res.screen_best.deployment, 1.0),
            "screen_ttft_p99_s": res.screen_best.ttft_p99_s,
            "screen_tpot_p99_s": res.screen_best.tpot_p99_s},
        "pareto": front_rows(res),
        "gpus": [{"gpu": g.gpu, "kind": g.kind, "text": g.text} for g in res.lines],
        "calibrations": {o.gpu_name: o.hardware.platform.calibration.fitted_on
                         for o in res.options},
        "sensitivity": [
            {"load_factor": o.load_factor, "rate_per_s": o.rate_per_s,
             "winner": verdict_dict(res, o.confirmed or o.winner)
             if (o.confirmed or o.winner) is not None else None,
             "text": line} for o, line in zip(res.others, res.sensitivity_lines(),
                                              strict=True)],
        "left_out": [{"gpu": u.gpu, "stack": u.stack, "tp": u.tp, "speculation": u.spec,
                      "kind": u.kind, "reason": u.reason} for u in res.unfit],
        "unsupported": res.unsupported,
        "candidates": rows(res),
        "simulations": res.simulations, "engines": res.engines,
    })


def json_text(res: PlanResult, model: str, command: str | None) -> str:
    return report.to_json(as_dict(res, model, command))
