"""``gpusim serve``: the serving simulator."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from gpusim import report
from gpusim.cli.common import (
    CalOpt,
    EpOpt,
    Fmt,
    FmtOpt,
    GpuOpt,
    Launch,
    LaunchOpt,
    PpOpt,
    StackOpt,
    TpOpt,
    _echo,
    _print_table,
    app,
    check_outputs,
    flags,
    setup,
    split_out,
    wrote,
)
from gpusim.errors import FieldError, bad
from gpusim.io import loader

# options that shape a synthetic or scenario workload: a replay's run gives all of them
_WORKLOAD_FLAGS = {
    "scenario": "--scenario", "rate": "--rate", "arrival": "--arrival", "cv": "--cv",
    "users": "--users", "think_time_s": "--think-time-s", "prompt_dist": "--prompt-dist",
    "output_dist": "--output-dist", "trace": "--trace", "duration_s": "--duration-s",
    "seed": "--seed", "scheduler": "--scheduler", "max_num_seqs": "--max-num-seqs",
    "max_num_batched_tokens": "--max-num-batched-tokens", "block_size": "--block-size",
    "reserve_fraction": "--reserve-fraction", "slo_ttft_s": "--slo-ttft-s",
    "slo_tpot_s": "--slo-tpot-s", "spec_draft": "--draft", "spec_k": "--k",
    "spec_acceptance": "--acceptance", "prefix_caching": "--prefix-caching",
    "shared_prefix_tokens": "--shared-prefix-tokens", "prefix_prompts": "--prefix-prompts",
    "conversation_turns": "--conversation-turns", "turn_think_s": "--turn-think-s",
    "cudagraph_capture_sizes": "--cudagraph-capture-sizes",
    "cudagraph_mode": "--cudagraph-mode", "out_csv": "--out-csv",
    "html": "--html", "weight_dtype": "--weight-dtype", "kv_dtype": "--kv-dtype",
}


@app.command()
def serve(
    gpu: GpuOpt,
    model: Annotated[str | None, typer.Option(
        "--model", help="Model name, YAML or config.json path (required unless --replay: "
        "a replay uses each run's config.json).")] = None,
    scenario: Annotated[Path | None, typer.Option(
        "--scenario", help="Scenario YAML (workloads/scenarios/); options below override it.")
    ] = None,
    rate: Annotated[float | None, typer.Option(
        "--rate", help="Arrivals per second (poisson, gamma).")] = None,
    arrival: Annotated[str | None, typer.Option(
        "--arrival", help="poisson | gamma | closed (default poisson).")] = None,
    cv: Annotated[float | None, typer.Option(
        "--cv", help="gamma: coefficient of variation of inter-arrival gaps.")] = None,
    users: Annotated[int | None, typer.Option("--users", help="closed: number of users.")
                     ] = None,
    think_time_s: Annotated[float | None, typer.Option(
        "--think-time-s", help="closed: mean think time between requests.")] = None,
    prompt_dist: Annotated[str | None, typer.Option(
        "--prompt-dist", help="Prompt tokens: N | uniform:LO-HI | "
        "lognormal:median=M,sigma=S[,min=A][,max=B] | empirical:V1,V2,...")] = None,
    output_dist: Annotated[str | None, typer.Option(
        "--output-dist", help="Output tokens, same syntax as --prompt-dist.")] = None,
    trace: Annotated[Path | None, typer.Option(
        "--trace", help="Replay a JSONL/CSV trace (arrival_s, prompt_tokens, output_tokens).")
    ] = None,
    duration_s: Annotated[float | None, typer.Option(
        "--duration-s", help="Arrival window in simulated seconds; the run then drains.")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed.")] = None,
    scheduler: Annotated[str | None, typer.Option(
        "--scheduler", help="continuous (vLLM-style) | static.")] = None,
    max_num_seqs: Annotated[int | None, typer.Option(
        "--max-num-seqs", help="Most requests running at once (default 256).")] = None,
    max_num_batched_tokens: Annotated[int | None, typer.Option(
        "--max-num-batched-tokens", help="Token budget of one step (default 8192).")] = None,
    block_size: Annotated[int | None, typer.Option(
        "--block-size", help="KV cache block size in tokens (default 16).")] = None,
    reserve_fraction: Annotated[float | None, typer.Option(
        "--reserve-fraction", help="HBM fraction kept for runtime use (default 0.1).")
    ] = None,
    slo_ttft_s: Annotated[float | None, typer.Option(
        "--slo-ttft-s", help="Goodput: time-to-first-token target (default 2).")] = None,
    slo_tpot_s: Annotated[float | None, typer.Option(
        "--slo-tpot-s", help="Goodput: time-per-output-token target (default 0.1).")] = None,
    spec_draft: Annotated[str | None, typer.Option(
        "--draft", help="Speculative decoding in decode-only steps with this draft: "
        "a model | medusa:H | eagle[:N] | ngram[:US] (default: no speculation).")] = None,
    spec_k: Annotated[str | None, typer.Option(
        "--k", help="Draft tokens per iteration: N (1..16) or auto (per step, "
        "from the batch size; default 4).")] = None,
    spec_acceptance: Annotated[float | None, typer.Option(
        "--acceptance", help="i.i.d. acceptance rate of a draft token (default 0.7).")
    ] = None,
    prefix_caching: Annotated[bool | None, typer.Option(
        "--prefix-caching/--no-prefix-caching",
        help="Automatic prefix caching (vLLM's; default off).")] = None,
    shared_prefix_tokens: Annotated[int | None, typer.Option(
        "--shared-prefix-tokens", help="A shared system prompt of N tokens in front of "
        "every prompt.")] = None,
    prefix_prompts: Annotated[int | None, typer.Option(
        "--prefix-prompts", help="Distinct shared system prompts (default 1).")] = None,
    conversation_turns: Annotated[int | None, typer.Option(
        "--conversation-turns", help="Arrivals start conversations of N turns, each "
        "turn's prompt the conversation so far plus a new message.")] = None,
    turn_think_s: Annotated[float | None, typer.Option(
        "--turn-think-s", help="Conversations: mean time from an answer to the next "
        "turn (default 0).")] = None,
    cudagraph_capture_sizes: Annotated[str | None, typer.Option(
        "--cudagraph-capture-sizes", help="Decode-only steps run as CUDA graphs padded "
        "to these batch sizes (vllm: vLLM's default list; 1,2,4,...), other steps "
        "eagerly (unless --cudagraph-mode full_and_piecewise).")] = None,
    cudagraph_mode: Annotated[str | None, typer.Option(
        "--cudagraph-mode", help="What runs as CUDA graphs (vLLM's names): "
        "full_decode_only (default: decode-only steps) | full_and_piecewise (mixed steps "
        "of up to the largest capture size too, as piecewise graphs; needs "
        "--cudagraph-capture-sizes).")] = None,
    replay: Annotated[list[Path] | None, typer.Option(
        "--replay", help="Measured serving run directories (bench_serve_engine.py; a "
        "directory of runs counts as all of them): simulate each with its arrivals and "
        "settings and compare (see --report).")] = None,
    report_path: Annotated[Path | None, typer.Option(
        "--report", help="With --replay: write the Markdown report here "
        "(validation/SERVING_REPORT.md).")] = None,
    calibration: CalOpt = "auto",
    launch: LaunchOpt = Launch.GRAPH,
    stack: StackOpt = loader.DEFAULT_STACK,
    fmt: FmtOpt = Fmt.table,
    out: Annotated[list[Path] | None, typer.Option(
        "--out", help="Write the results here: JSON for .json, CSV for .csv, else as "
        "--format says (- for standard output); repeat for both. With --replay: JSON.")
    ] = None,
    out_json: Annotated[Path | None, typer.Option("--out-json", hidden=True)] = None,
    out_csv: Annotated[Path | None, typer.Option("--out-csv", hidden=True)] = None,
    html: Annotated[Path | None, typer.Option(
        "--html", help="Write a Plotly HTML report here.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress on stderr.")] = False,
    tp: TpOpt = 1,
    pp: PpOpt = 1,
    ep: EpOpt = 1,
    weight_dtype: Annotated[str | None, typer.Option(
        "--weight-dtype", help="Projection weights: bf16, fp16, fp8, int8, int4, fp4 "
        "(default: the model's, else what the stack implies).")] = None,
    kv_dtype: Annotated[str | None, typer.Option(
        "--kv-dtype", help="KV cache: bf16, fp16, fp32, fp8 (default: the "
        "activations').")] = None,
) -> None:
    """Simulate serving over time: latency percentiles, throughput, goodput, KV use.
    With --replay: judge the simulator against measured serving runs."""
    from gpusim import serving
    from gpusim.cli.progress import progress_bar
    from gpusim.io import scenario as scenario_io
    from gpusim.io.overhead import load_overhead
    from gpusim.report import serving_figures as figures
    from gpusim.report import serving_output as output
    from gpusim.report import trust_outputs
    from gpusim.serving.shapes import StepShapes

    (json_flag, out_json), (csv_flag, out_csv) = split_out(out, fmt, out_json, out_csv)
    piped = check_outputs({json_flag: out_json, csv_flag: out_csv, "--html": html,
                           "--report": report_path})
    if replay:
        opts = dict(locals())
        given = [csv_flag if name == "out_csv" else flag
                 for name, flag in _WORKLOAD_FLAGS.items() if opts[name] is not None]
        given += [f"--{name}" for name in ("tp", "pp", "ep") if opts[name] != 1]
        if given:
            raise bad(given[0], "does not apply to --replay (the measured run gives it)")
        _replay(replay, gpu, model, stack, calibration, launch.value, report_path, fmt,
                out_json)
        return
    if report_path is not None:
        raise bad("--report", "needs --replay")
    if model is None:
        raise bad("--model", "required (unless --replay)")
    plat = setup(gpu, stack, calibration, launch.value, tp, pp, ep)
    from gpusim.kernels.quant import for_stack

    with flags():  # the model as the stack stores it: weights, KV cache (memory too)
        m = for_stack(loader.load_model(model), plat.stack, weight_dtype, kv_dtype)
    sc = scenario_io.scenario_from_options(
        scenario, prompt_dist=prompt_dist, output_dist=output_dist, duration_s=duration_s,
        seed=seed, arrival=arrival, rate_per_s=rate, cv=cv, users=users,
        think_time_s=think_time_s, trace=trace, policy=scheduler, max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens, block_size_tokens=block_size,
        reserve_fraction=reserve_fraction, slo_ttft_s=slo_ttft_s, slo_tpot_s=slo_tpot_s,
        spec_draft=spec_draft, spec_acceptance=spec_acceptance,
        spec_k=None if spec_k is None else scenario_io.parse_spec_k(spec_k),
        prefix_caching=prefix_caching, shared_prefix_tokens=shared_prefix_tokens,
        prefix_prompts=prefix_prompts, conversation_turns=conversation_turns,
        turn_think_s=turn_think_s,
        cudagraph_capture_sizes=None if cudagraph_capture_sizes is None
        else scenario_io.parse_capture_sizes(cudagraph_capture_sizes),
        cudagraph_mode=cudagraph_mode)
    try:
        serving.check_arrivals(sc)
    except FieldError as exc:   # the rate and duration came from the command line or
        if rate is not None or duration_s is not None or scenario is None:  # the file
            raise bad("--rate", str(exc)) from None
        raise bad(str(scenario), str(exc), field="arrival.rate_per_s") from None
    ov = load_overhead("auto", plat.gpu) if sc.speculative is not None else None
    with flags(spec_acceptance="--acceptance", spec_k="--k",
               block_size_tokens="--block-size"):
        draft = scenario_io.scenario_draft(
            sc, lambda n: for_stack(loader.load_model(n), plat.stack))
        engine = serving.build_engine(plat, m, sc, draft, ov)
    trace = scenario_io.scenario_trace(sc)
    total = float(sc.duration_s or 0.0)
    with progress_bar(total, quiet=quiet or total <= 0) as tick:
        shapes = StepShapes()
        result = serving.simulate(engine, sc, tick, trace, shapes)
    _check_served(result, m.max_position_embeddings)
    result["trust"] = trust_outputs.serving_trust(
        plat, m, shapes, None if engine.spec is None or draft is None or ov is None
        else (draft, engine.spec.acceptance_rate, ov))
    outputs = [(path, text(result)) for path, text in (
        (out_json, output.json_text), (out_csv, output.csv_text), (html, figures.serve_html))
        if path is not None]
    report.write_all(outputs)     # all of them or none
    for path, _ in outputs:
        wrote(path)
    if piped:
        return
    if fmt is Fmt.json:
        _echo(output.json_text(result))
    elif fmt is Fmt.csv:
        _echo(output.csv_text(result).rstrip("\n"))
    else:
        _print_table(output.title(result), output.latency_rows(result),
                     output.LATENCY_COLUMNS)
        _print_table("throughput and engine", output.overview_rows(result),
                     output.OVERVIEW_COLUMNS)
        from gpusim.serving.metrics import METRIC_DEFINITIONS

        print(METRIC_DEFINITIONS, file=sys.stderr)
        trust_outputs.serving_warning(result["trust"])


_REJECTIONS = {"exceeds_context_window": "longer than {model}'s context window of "
                                         "{window} tokens",
               "exceeds_kv_capacity": "needing more KV cache than the GPU holds "
                                      "({kv} tokens)"}


def _check_served(result: dict[str, Any], window: int) -> None:
    """Refuse a run that served no request (tables of nan otherwise): none arrived
    within the duration, or every one was rejected (prompt + output longer than the
    context window or the whole KV cache). Raises ConfigError naming the cause."""
    req = result["requests"]
    if req["completed"]:
        return
    if not req["arrived"]:
        raise bad("--duration-s", f"no request arrived in the {result['duration_s']:g} s "
                  "window: nothing to report; lengthen the duration or raise the rate")
    names = {"model": result["model"], "window": window,
             "kv": result["kv_cache"]["capacity_tokens"]}
    why = "; ".join(f"{n} {_REJECTIONS.get(r, r).format(**names)}"
                    for r, n in sorted(req["rejected_by_reason"].items()))
    raise bad("--prompt-dist", f"all {req['arrived']} requests were rejected ({why}): "
              "nothing to report; give shorter prompts or outputs (--prompt-dist, "
              "--output-dist) or a model with a longer context")


def _run_dirs(paths: list[Path]) -> list[Path]:
    """Run directories: each path that holds a run.json, else its subdirectories (two
    levels down) that do, sorted. Raises ConfigError for a path with none."""
    out: list[Path] = []
    for p in paths:
        if (p / "run.json").is_file():
            out.append(p)
            continue
        found = sorted({f.parent for pattern in ("*/run.json", "*/*/run.json")
                        for f in p.glob(pattern)})
        if not found:
            raise bad("--replay", "no measured serving run (run.json) there", value=str(p))
        out += found
    return out


def _replay(paths: list[Path], gpu: str, model: str | None, stack: str, calibration: str,
            launch: str, report_path: Path | None, fmt: Fmt, out_json: Path | None) -> None:
    """``serve --replay``: each measured run against its simulation."""
    from gpusim.calibration import serving_measured, serving_replay, serving_report

    runs = sorted((serving_measured.read_serving_run(p) for p in _run_dirs(paths)),
                  key=lambda r: (r.gpu, r.model, r.offered_rate_per_s, str(r.path)))
    plat = setup(gpu, stack, calibration, launch)
    fixed = loader.load_model(model) if model is not None else None
    results = serving_replay.compare_runs(
        runs, plat, lambda run: fixed or loader.load_model(run.config_path))
    sat = serving_replay.saturation(results)
    command = " ".join(["gpusim serve", *(f"--replay {p}" for p in paths), f"--gpu {gpu}",
                        f"--stack {stack}", *([f"--report {report_path}"]
                                              if report_path else [])])
    numbers = serving_report.as_dict(results, sat)
    outputs = []
    if report_path is not None:
        outputs.append((report_path, serving_report.markdown(
            results, sat, plat.gpu.name, plat.stack.name, command)))
    if out_json is not None:
        outputs.append((out_json, report.to_json(report.json_safe(numbers))))
    report.write_all(outputs)     # all of them or none
    for path, _ in outputs:
        wrote(path)
    if any(report.is_stdout(path) for path, _ in outputs):
        return
    if fmt is Fmt.json:
        _echo(report.to_json(report.json_safe(numbers)))
        return
    rows = []
    for r in numbers["runs"]:
        e = r["errors"]
        rows.append({"run": r["load"], "device": r["device"],
                     "step forward MAPE": r["step_errors"]["all"]["forward"],
                     "TTFT p50 err": e["ttft_s.p50"], "TPOT p50 err": e["tpot_s.p50"],
                     "ITL p50 err": e["itl_s.p50"], "E2EL p99 err": e["e2el_s.p99"],
                     "throughput err": e["throughput"]})
    if fmt is Fmt.csv:
        _echo(report.to_csv(rows, list(rows[0])).rstrip("\n"))
    else:
        _print_table("serving replay: simulated against measured (relative errors)", rows,
                     list(rows[0]))
