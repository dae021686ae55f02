"""``gpusim plan``: the cheapest deployment that meets latency targets at a traffic."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated

import typer

from gpusim import report
from gpusim.cli.common import (
    CalOpt,
    Fmt,
    FmtOpt,
    Launch,
    LaunchOpt,
    _echo,
    app,
    check_outputs,
    flags,
    split_out,
    wrote,
)
from gpusim.cli.progress import QuietOpt, working
from gpusim.errors import ConfigError, bad
from gpusim.io import calibrations, loader

DEFAULT_GPUS = "a100-sxm-80gb,h100-sxm,h200,b200,l40s"
SLO_KEYS = ("ttft_p99_s", "tpot_p99_s")
DRAFT_SHRINK = 4          # an automatic draft has at most a quarter of the parameters
DEFAULT_SPEC_K = 4


def parse_slo(text: str):  # -> gpusim.plan.Slo
    """``ttft_p99_s=1,tpot_p99_s=0.05`` (either or both). Raises ConfigError (--slo)."""
    from gpusim.plan import Slo

    found: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in SLO_KEYS:
            raise bad("--slo", f"expected {'=..,'.join(SLO_KEYS)}=.. (seconds)", value=part)
        if key in found:
            raise bad("--slo", f"{key} given twice", value=text)
        try:
            v = float(value)
        except ValueError:
            raise bad("--slo", f"{key}: expected a number of seconds", value=value) from None
        if not (v > 0 and math.isfinite(v)):
            raise bad("--slo", f"{key}: must be a finite number > 0 (seconds)", value=value)
        found[key] = v
    if not found:
        raise bad("--slo", f"give at least one of {', '.join(SLO_KEYS)}", value=text)
    return Slo(**found)


def _names(text: str, flag: str) -> list[str]:
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise bad(flag, "expected a comma-separated list", value=text)
    return names


def _ints(text: str | None, flag: str) -> tuple[int, ...]:
    if text is None:
        return ()
    try:
        return tuple(int(v) for v in _names(text, flag))
    except ValueError:
        raise bad(flag, "expected comma-separated integers", value=text) from None


def _floats(text: str, flag: str) -> tuple[float, ...]:
    if text.strip().lower() == "none":
        return ()
    try:
        return tuple(float(v) for v in _names(text, flag))
    except ValueError:
        raise bad(flag, "expected comma-separated load factors or none", value=text) from None


def _auto_draft(target) -> list[str]:
    """The largest shipped model of the target's vocabulary with at most a quarter of
    its parameters (none: no automatic draft)."""
    best = None
    for name in loader.available(loader.MODELS_DIR):
        m = loader.load_model(name)
        if (m.vocab_size == target.vocab_size and not m.is_moe
                and m.param_count * DRAFT_SHRINK <= target.param_count
                and (best is None or m.param_count > best.param_count)):
            best = m
    return [best.name] if best is not None else []


def _spec_choices(text: str, scenario, target, resolve):  # -> list[SpecChoice]
    """``--spec``: auto | none | DRAFT[@K],... (a draft as serve's --draft spells it)."""
    from gpusim.plan import SpecChoice
    from gpusim.speculative.drafts import parse_draft

    sp = scenario.speculative
    acceptance = sp.acceptance if sp is not None else 0.7
    k_default = sp.k if sp is not None and sp.k != "auto" else DEFAULT_SPEC_K
    t = text.strip()
    if t.lower() == "none":
        return []
    items: list[tuple[str, int]] = []
    if t.lower() == "auto":
        if sp is not None:
            items.append((sp.draft, int(k_default)))
        items += [(n, int(k_default)) for n in _auto_draft(target)
                  if sp is None or n != sp.draft]
    else:
        for part in _names(t, "--spec"):
            name, _, k = part.partition("@")
            try:
                kk = int(k) if k else int(k_default)
            except ValueError:
                raise bad("--spec", "expected DRAFT[@K], K an integer", value=part) from None
            if not 1 <= kk <= 16:
                raise bad("--spec", "K must be in 1..16", value=part)
            items.append((name.strip(), kk))
    out = []
    for name, k in items:
        try:
            draft = parse_draft(name, resolve)
        except ValueError as exc:
            raise bad("--spec", str(exc), value=name) from None
        except ConfigError as exc:    # an unknown draft model: --spec named it
            if exc.source not in ("--model", ""):
                raise
            raise ConfigError("--spec", exc.reason, None, None, exc.value,
                              exc.has_value) from None
        out.append(SpecChoice(name, draft, k, float(acceptance)))
    return out


def hardware_for(gpus: list[str], stacks: list[str], model: str, calibration: str,
                 launch: str, spec: str, scenario):  # -> list[Hardware]
    """Each GPU type under each stack as the plan takes it: platform (calibration,
    launch mode), the model as the stack stores it, the drafts ``spec`` names and the
    speculative loop's overhead. Raises ConfigError naming --gpus, --stacks, --model,
    --spec or the file at fault."""
    from gpusim.io.overhead import load_overhead
    from gpusim.kernels.quant import for_stack
    from gpusim.plan import Hardware
    from gpusim.platform import Platform
    from gpusim.specs.enums import parse

    out = []
    for g in gpus:
        try:
            gpu = loader.load_gpu(g)
        except ConfigError as exc:
            raise (ConfigError("--gpus", exc.reason) if exc.source == "--gpu" else exc) \
                from None
        for s in stacks:
            try:
                st = loader.load_stack(s)
            except ConfigError as exc:
                raise (ConfigError("--stacks", exc.reason) if exc.source == "--stack"
                       else exc) from None
            cal = calibrations.load_calibration(calibration, gpu, st)
            with flags():
                m = for_stack(loader.load_model(model), st)
                plat = Platform(gpu, st, cal, parse(Launch, launch, "launch"))

            def resolve(name: str, st=st):
                return for_stack(loader.load_model(name), st)

            specs = tuple(_spec_choices(spec, scenario, m, resolve))
            with flags(stack="--stacks"):
                out.append(Hardware(plat, m, specs,
                                    load_overhead("auto", gpu) if specs else None))
    return out


@app.command()
def plan(
    model: Annotated[str, typer.Option("--model", help="Model name, YAML or config.json.")],
    traffic: Annotated[Path, typer.Option(
        "--traffic", help="Serving scenario YAML: the offered load (workloads/scenarios/).")],
    slo: Annotated[str, typer.Option(
        "--slo", help="p99 targets in seconds: ttft_p99_s=..,tpot_p99_s=.. (either or both).")],
    gpus: Annotated[str, typer.Option("--gpus", help="GPU types to consider.")] = DEFAULT_GPUS,
    stacks: Annotated[str, typer.Option(
        "--stacks", help="Software stacks (dtypes) to consider, e.g. "
        "torch-compile,torch-fp8,torch-int4.")] = loader.DEFAULT_STACK,
    max_gpus: Annotated[int, typer.Option("--max-gpus", help="GPUs at most.")] = 64,
    rate: Annotated[float | None, typer.Option(
        "--rate", help="Offered requests per second (overrides the scenario's).")] = None,
    spec: Annotated[str, typer.Option(
        "--spec", help="Speculation to try besides none: auto (the scenario's draft and a "
        "shipped model of the same vocabulary at most a quarter the size), none, or "
        "DRAFT@K,... (@K optional: draft tokens per iteration, default 4).")] = "auto",
    max_num_seqs: Annotated[str | None, typer.Option(
        "--max-num-seqs", help="Scheduler limits to try (default 64,128,256 and the "
        "scenario's).")] = None,
    max_num_batched_tokens: Annotated[str | None, typer.Option(
        "--max-num-batched-tokens", help="Token budgets to try (default 2048,8192 and the "
        "scenario's).")] = None,
    sim_duration_s: Annotated[float, typer.Option(
        "--sim-duration-s", help="Finalists' simulated window per replica (at least 1000 "
        "requests; the winner is confirmed over the scenario's duration).")] = 60.0,
    max_sims: Annotated[int, typer.Option(
        "--max-sims", help="Serving simulations at most (offered load).")] = 40,
    sensitivity: Annotated[str, typer.Option(
        "--sensitivity", help="Other load factors to plan for, or none.")] = "0.75,1.25",
    screen_only: Annotated[bool, typer.Option(
        "--screen-only", help="The analytic screen alone (no simulation).")] = False,
    calibration: CalOpt = "auto",
    launch: LaunchOpt = Launch.GRAPH,
    fmt: FmtOpt = Fmt.table,
    out: Annotated[list[Path] | None, typer.Option(
        "--out", help="Write the whole plan as JSON (.json), or every candidate, screened "
        "and simulated, as CSV (.csv); else as --format says (- for standard output); "
        "repeat for both.")
    ] = None,
    out_json: Annotated[Path | None, typer.Option("--out-json", hidden=True)] = None,
    out_csv: Annotated[Path | None, typer.Option("--out-csv", hidden=True)] = None,
    html: Annotated[Path | None, typer.Option(
        "--html", help="Write a Plotly HTML (cost against p99 latency) here.")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Capacity plan: the cheapest deployment (GPU type, tensor parallelism, replicas,
    scheduler limits, speculation, stack) meeting p99 latency targets at a traffic."""
    from gpusim.io import scenario as scenario_io
    from gpusim.plan import PlanRequest
    from gpusim.plan import plan as run_plan
    from gpusim.report import plan_figures, plan_output

    (json_flag, out_json), (csv_flag, out_csv) = split_out(out, fmt, out_json, out_csv)
    piped = check_outputs({json_flag: out_json, csv_flag: out_csv, "--html": html})
    target = parse_slo(slo)
    sc = scenario_io.scenario_from_options(traffic)
    if rate is not None:
        if sc.trace is not None:
            raise bad("--rate", "does not apply to a scenario that replays a trace",
                      value=f"{rate:g}")
        sc = scenario_io.with_overrides(sc, rate_per_s=rate)
    trace = scenario_io.scenario_trace(sc)
    hardware = hardware_for(_names(gpus, "--gpus"), _names(stacks, "--stacks"), model,
                            calibration, launch.value, spec, sc)
    with flags(max_sims="--max-sims", sim_duration_s="--sim-duration-s",
               max_gpus="--max-gpus", sensitivity="--sensitivity", slo="--slo"):
        req = PlanRequest(
            hardware=tuple(hardware), scenario=sc, slo=target, trace=trace,
            max_num_seqs=_ints(max_num_seqs, "--max-num-seqs"),
            max_num_batched_tokens=_ints(max_num_batched_tokens, "--max-num-batched-tokens"),
            max_gpus=max_gpus, sim_duration_s=sim_duration_s, max_sims=max_sims,
            sensitivity=_floats(sensitivity, "--sensitivity"), simulate=not screen_only)
        try:
            with working("plan", quiet):
                res = run_plan(req)
        except ConfigError as exc:   # the scenario's arrivals: the traffic file says
            if exc.source or not (exc.field or "").startswith("arrival"):
                raise
            raise ConfigError(str(traffic), exc.reason, exc.field) from None
    extra = []
    if calibration != "auto":
        extra += ["--calibration", calibration]
    if launch is not Launch.GRAPH:
        extra += ["--launch", launch.value]
    command = plan_output.serve_command(res, model, str(traffic), extra=tuple(extra))
    title = f"gpusim plan: {model}, {sc.name}, SLO {target.describe()}"
    outputs = [(path, make()) for path, make in (
        (out_json, lambda: plan_output.json_text(res, model, command)),
        (out_csv, lambda: plan_output.csv_text(res)),
        (html, lambda: plan_figures.plan_html(res, title))) if path is not None]
    report.write_all(outputs)      # all of them or none
    for path, _ in outputs:
        wrote(path)
    t = res.timings_s
    print(f"planned in {t['total']:.2f} s: screen {t['curves'] + t['screen']:.2f} s, "
          f"{res.engines} engines {t['engine_builds']:.2f} s, {res.simulations} "
          f"simulations {t['simulations']:.2f} s", file=sys.stderr)
    if piped:
        return
    if fmt is Fmt.json:
        _echo(plan_output.json_text(res, model, command))
    elif fmt is Fmt.csv:
        _echo(plan_output.csv_text(res).rstrip("\n"))
    else:
        _print(res, model, command)


def _print(res, model: str, command: str | None) -> None:
    from gpusim.cli.common import _print_table
    from gpusim.report import plan_output

    for line in plan_output.summary_lines(res, model, command):
        _echo(line)
    if res.front:
        _print_table("Pareto front: cost against p99 latency (simulated, SLOs met)",
                     plan_output.front_table(res), plan_output.TABLE_COLUMNS)
