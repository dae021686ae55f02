"""The ``gpusim`` command: parses, calls the library, formats. No logic of its own.

Exit codes: 0 success; 2 bad input, with one line on stderr naming file, line and
field. Results go to stdout; progress and diagnostics to stderr.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from gpusim import loader, report
from gpusim.errors import ConfigError, bad, cannot

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="gpusim: LLM inference performance simulator.")


class Fmt(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


class Launch(StrEnum):
    graph = "graph"
    eager = "eager"


class ModeOpt(StrEnum):
    decode = "decode"
    verify = "verify"
    prefill = "prefill"


class Micro(StrEnum):
    none = "none"
    attention = "attention"
    all = "all"


def micro_kinds(m: Micro) -> tuple[str, ...]:
    """The micro.csv kinds a --micro choice fits on."""
    return {"none": (), "attention": ("attention",), "all": ("gemm", "attention")}[m.value]


MicroOpt = Annotated[Micro, typer.Option(
    "--micro", help="Also fit on the kernel microbenchmarks beside steps.csv: none, "
    "attention or all (gemm + attention). Chosen by leave-one-model-out error.")]
GpuOpt = Annotated[str, typer.Option("--gpu", help="GPU name (hardware/<name>.yaml) or path.")]
CalOpt = Annotated[str, typer.Option(
    "--calibration", help="auto (shipped for this GPU, else datasheet), none, or a path.")]
LaunchOpt = Annotated[Launch, typer.Option("--launch", help="CUDA graph replay or eager.")]
StackOpt = Annotated[str, typer.Option("--stack", help="Software stack name or path.")]
FmtOpt = Annotated[Fmt, typer.Option("--format", help="Output format.")]


def _echo(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def _print_table(title: str, rows: list[dict[str, object]], columns: list[str]) -> None:
    from rich.console import Console

    Console(width=160).print(report.rich_table(title, rows, columns))


@app.command()
def predict(
    gpu: GpuOpt,
    rows_in: Annotated[Path | None, typer.Option(
        "--in", help="rows.csv with columns model,mode,batch,ctx,q[,tp].")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="preds.csv to write.")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="Single shape: model name, YAML or config.json path.")] = None,
    mode: Annotated[ModeOpt, typer.Option("--mode")] = ModeOpt.decode,
    batch: Annotated[int, typer.Option("--batch")] = 1,
    ctx: Annotated[int, typer.Option("--ctx", help="Tokens already cached.")] = 1024,
    q: Annotated[int | None, typer.Option(
        "--q", help="New tokens per sequence (decode 1; default verify 4, prefill 512).")
    ] = None,
    calibration: CalOpt = "auto",
    launch: LaunchOpt = Launch.graph,
    stack: StackOpt = loader.DEFAULT_STACK,
    fmt: FmtOpt = Fmt.table,
    timeline: Annotated[Path | None, typer.Option(
        "--timeline", help="Single shape: write a Plotly timeline HTML here.")] = None,
) -> None:
    """Predict step times: a CSV of shapes (--in/--out) or one shape with a breakdown."""
    from gpusim import fit, step
    from gpusim import rows as rows_mod

    g = loader.load_gpu(gpu)
    st = loader.load_stack(stack)
    cal = loader.load_calibration(calibration, g)
    if rows_in is not None:
        if model is not None:
            raise bad("--model", "give either --in (a CSV of shapes) or --model, not both")
        if out is None:
            raise bad("--out", "--in needs --out (the predictions CSV to write)")
        header, rows = rows_mod.read_rows(rows_in)
        preds = rows_mod.predict_rows(rows, str(rows_in), g, st, cal, launch.value,
                                      fit.fitting_model_loader(g, loader.load_model))
        columns = header + [c for c in rows_mod.OUTPUT_COLUMNS if c not in header]
        records = [{**r.raw, **p} for r, p in zip(rows, preds, strict=True)]
        report.write_atomic(out, report.to_csv(records, columns))
        print(f"wrote {len(records)} predictions to {out}", file=sys.stderr)
        return
    if model is None:
        raise bad("--model", "give --model for one shape, or --in/--out for a CSV of shapes")
    m = loader.load_model(model)
    fit.check_fits(m, g)
    qq = q if q is not None else {"decode": 1, "verify": 4, "prefill": 512}[mode.value]
    cc = 0 if mode is ModeOpt.prefill and ctx == 1024 else ctx  # prefill default: no cache
    try:
        p = step.predict(g, m, st, cal, mode.value, batch, cc, qq, launch.value)
    except ValueError as exc:
        raise bad("--" + str(exc).split("=", 1)[0], str(exc)) from None
    summ = {"gpu": g.name, "model": m.name, "mode": mode.value, "batch": batch, "ctx": cc,
            "q": qq, "launch": launch.value, "calibration": cal.fitted_on,
            **step.summary(p, g)}
    ops = step.breakdown(p, g)
    if timeline is not None:
        tl = step.simulate(g, m, st, cal, mode.value, batch, cc, qq, launch.value)
        title = f"{m.name} {mode.value} b={batch} ctx={cc} q={qq} on {g.name} ({launch.value})"
        report.write_html(report.timeline_figure(tl, title), timeline)
        print(f"wrote timeline to {timeline}", file=sys.stderr)
    if fmt is Fmt.json:
        _echo(report.to_json({**summ, "ops": ops}))
    elif fmt is Fmt.csv:
        _echo(report.to_csv(ops).rstrip("\n"))
    else:
        _print_table(
            f"{m.name} {mode.value} batch={batch} ctx={cc} q={qq} on {g.name} "
            f"({launch.value}, calibration: {cal.fitted_on})", ops,
            ["op", "ms", "share", "launches", "bytes", "bandwidth_gb_per_s",
             "bandwidth_fraction", "tflops", "bound"])
        _print_table("step", [summ], ["step_ms", "gpu_ms", "launches", "weight_bytes",
                                      "kv_bytes", "achieved_bandwidth_gb_per_s",
                                      "roofline_ms", "roofline_fraction", "bound"])


@app.command()
def calibrate(
    gpu: GpuOpt,
    data: Annotated[Path, typer.Option(
        "--data", help="Measured steps.csv (default validation/data/<gpu>/steps.csv).")
    ] = Path(""),
    out: Annotated[Path | None, typer.Option(
        "--out", help="Calibration YAML to write (default validation/calibrations/<gpu>.yaml).")
    ] = None,
    stack: StackOpt = loader.DEFAULT_STACK,
    micro_kind: MicroOpt = Micro.none,
    fmt: FmtOpt = Fmt.table,
) -> None:
    """Fit the cost model's parameters for one GPU from measured step times."""
    from gpusim import calibrate as cal_mod
    from gpusim import measurements

    g = loader.load_gpu(gpu)
    st = loader.load_stack(stack)
    default = loader.ROOT / "validation" / "data" / g.name / "steps.csv"
    path = data if str(data) not in ("", ".") else default
    from gpusim import micro as micro_mod

    steps = measurements.read_steps(path)
    micro_path = path.parent / "micro.csv"
    micro = []
    if micro_path.is_file():
        models = [loader.load_model(m) for m in sorted(set(steps.model))]
        micro = micro_mod.read_micro(micro_path, st, models, kinds=micro_kinds(micro_kind))
    print(f"fitting {len(steps)} steps and {sum(len(m.measured_s) for m in micro)} "
          f"kernel microbenchmarks from {path.parent} ...", file=sys.stderr)
    from gpusim import profiles as prof_mod

    prof = prof_mod.read_profiles(sorted(path.parent.glob("kernels*.csv")), st)
    res = cal_mod.fit(steps, g, st, loader.load_model, note=f"{path.parent.name}/{path.name}",
                      micro=micro, profiles=prof)
    target = out or loader.CALIBRATIONS_DIR / f"{g.name}.yaml"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise cannot(target.parent, exc) from None
    report.write_atomic(target, cal_mod.to_yaml(res))
    print(f"wrote {target}", file=sys.stderr)
    params = res.calibration.model_dump(exclude={"notes"})
    summary = {"rows": res.rows, "mape": res.mape, "log_rmse": res.log_rmse, **params}
    if fmt is Fmt.json:
        _echo(report.to_json(summary))
    elif fmt is Fmt.csv:
        _echo(report.to_csv([summary]).rstrip("\n"))
    else:
        _print_table(f"calibration of {g.name} (in-sample fit)",
                     [{"parameter": k, "value": v} for k, v in summary.items()],
                     ["parameter", "value"])


@app.command()
def validate(
    data_dir: Annotated[Path, typer.Option(
        "--data-dir", help="Directory with <gpu>/steps.csv measurements.")
    ] = Path("validation/data"),
    report_path: Annotated[Path, typer.Option(
        "--report", help="Markdown report to write.")] = Path("validation/REPORT.md"),
    points_path: Annotated[Path | None, typer.Option(
        "--points", help="Per-row predictions CSV to write.")] = None,
    html_dir: Annotated[Path | None, typer.Option(
        "--html-dir", help="Write scatter and error-vs-batch Plotly HTML here.")] = None,
    stack: StackOpt = loader.DEFAULT_STACK,
    micro_kind: MicroOpt = Micro.none,
    fmt: Annotated[Fmt, typer.Option(
        "--format", help="stdout: table (the markdown report), json or csv (per-row "
        "predictions of every evaluation).")] = Fmt.table,
) -> None:
    """Predicted vs measured for every GPU's data: LOMO, cross-GPU, datasheet-only."""
    from gpusim import measurements
    from gpusim import validate as val

    st = loader.load_stack(stack)
    files = sorted(data_dir.glob("*/steps.csv"))
    if not files:
        raise bad(str(data_dir), "no <gpu>/steps.csv files found")
    from gpusim import micro as micro_mod
    from gpusim import profiles as prof_mod

    datasets, gpus, shipped, micro, profs, others = {}, {}, {}, {}, {}, {}
    for f in files:
        name = f.parent.name
        gpus[name] = loader.load_gpu(name)
        datasets[name] = measurements.read_steps(f)
        if (f.parent / "micro.csv").is_file():
            models = [loader.load_model(m) for m in sorted(set(datasets[name].model))]
            micro[name] = micro_mod.read_micro(f.parent / "micro.csv", st, models,
                                               kinds=micro_kinds(micro_kind))
        profs[name] = prof_mod.read_profiles(sorted(f.parent.glob("kernels*.csv")), st)
        earlier = f.parent / "previous_machine" / "steps.csv"
        if earlier.is_file():
            others[name] = measurements.read_steps(earlier)
        cal_file = loader.CALIBRATIONS_DIR / f"{name}.yaml"
        if cal_file.is_file():
            shipped[name] = loader.calibration_from_yaml(cal_file)
        print(f"{name}: {len(datasets[name])} rows", file=sys.stderr)
    command = "gpusim validate --data-dir " + str(data_dir)
    md, pts = val.run_report(datasets, gpus, st, loader.load_model, shipped, command, micro,
                             profs, others)
    report.write_atomic(report_path, md)
    print(f"wrote {report_path}", file=sys.stderr)
    if points_path is not None:
        report.write_atomic(points_path, report.to_csv(pts))
    if html_dir is not None:
        try:
            html_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise cannot(html_dir, exc) from None
        oos = [p for p in pts if p["evaluation"] == "leave-one-model-out"]
        report.write_html(report.scatter_figure(oos, "LOMO: predicted vs measured"),
                          html_dir / "validation_scatter.html")
        report.write_html(report.error_vs_batch_figure(oos, "LOMO: error vs batch"),
                          html_dir / "validation_error_vs_batch.html")
    if fmt is Fmt.json:
        _echo(report.to_json(pts))
    elif fmt is Fmt.csv:
        _echo(report.to_csv(pts).rstrip("\n"))
    else:
        _echo(md)


@app.command()
def serve(
    gpu: GpuOpt,
    model: Annotated[str, typer.Option(
        "--model", help="Model name, YAML or config.json path.")],
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
        "--spec-draft", help="Speculative decoding in decode-only steps with this draft: "
        "a model | medusa:H | eagle[:N] | ngram[:US] (default: no speculation).")] = None,
    spec_k: Annotated[str | None, typer.Option(
        "--spec-k", help="Draft tokens per iteration: N (1..16) or auto (per step, "
        "from the batch size; default 4).")] = None,
    spec_acceptance: Annotated[float | None, typer.Option(
        "--spec-acceptance", help="i.i.d. acceptance rate of a draft token (default 0.7).")
    ] = None,
    calibration: CalOpt = "auto",
    launch: LaunchOpt = Launch.graph,
    stack: StackOpt = loader.DEFAULT_STACK,
    fmt: FmtOpt = Fmt.table,
    out_json: Annotated[Path | None, typer.Option("--out-json", help="Write JSON here.")
                        ] = None,
    out_csv: Annotated[Path | None, typer.Option("--out-csv", help="Write CSV here.")] = None,
    html: Annotated[Path | None, typer.Option(
        "--html", help="Write a Plotly HTML report here.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Simulate serving over time: latency percentiles, throughput, goodput, KV use."""
    from gpusim import serving
    from gpusim.serving import figures, output
    from gpusim.serving.scenario import parse_spec_k

    g = loader.load_gpu(gpu)
    m = loader.load_model(model)
    st = loader.load_stack(stack)
    cal = loader.load_calibration(calibration, g)
    sc = serving.scenario_from_options(
        scenario, prompt_dist=prompt_dist, output_dist=output_dist, duration_s=duration_s,
        seed=seed, arrival=arrival, rate_per_s=rate, cv=cv, users=users,
        think_time_s=think_time_s, trace=trace, policy=scheduler, max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens, block_size_tokens=block_size,
        reserve_fraction=reserve_fraction, slo_ttft_s=slo_ttft_s, slo_tpot_s=slo_tpot_s,
        spec_draft=spec_draft, spec_acceptance=spec_acceptance,
        spec_k=None if spec_k is None else parse_spec_k(spec_k))
    result = serving.run(g, m, st, cal, sc, launch.value, quiet=quiet)
    for path, text in ((out_json, output.json_text), (out_csv, output.csv_text),
                       (html, figures.serve_html)):
        if path is not None:
            report.write_atomic(path, text(result))
            print(f"wrote {path}", file=sys.stderr)
    if fmt is Fmt.json:
        _echo(output.json_text(result))
    elif fmt is Fmt.csv:
        _echo(output.csv_text(result).rstrip("\n"))
    else:
        _print_table(output.title(result), output.latency_rows(result),
                     output.LATENCY_COLUMNS)
        _print_table("throughput and engine", output.overview_rows(result),
                     output.OVERVIEW_COLUMNS)


SpecDraftOpt = Annotated[str, typer.Option(
    "--draft", help="Draft: a model (name, YAML or config.json path) | medusa:H (H heads "
    "on the target, k <= H) | eagle or eagle:N (EAGLE head, N layers) | ngram or "
    "ngram:US (prompt lookup, US us of host time per iteration).")]
SpecOverheadOpt = Annotated[str, typer.Option(
    "--overhead", help="Host round trip per iteration: auto (fitted for this GPU under "
    "validation/calibrations/speculative/, else a prior), none (the prior), or a YAML path.")]
SpecRoundTripOpt = Annotated[float | None, typer.Option(
    "--round-trip-us", help="Override the host round trip (microseconds).")]
SpecReserveOpt = Annotated[float, typer.Option(
    "--reserve-fraction", help="HBM fraction kept for the runtime (not weights or KV).")]


@app.command()
def spec(
    gpu: GpuOpt,
    target: Annotated[str, typer.Option("--target", help="Target model name or path.")],
    draft: SpecDraftOpt,
    k: Annotated[int | None, typer.Option(
        "--k", help="Draft tokens per iteration (a chain; default 4, medusa:H -> H).")
    ] = None,
    tree: Annotated[str | None, typer.Option(
        "--tree", help="Token tree instead of a chain: WxD | parents:0,0,1,... | "
        "best:N[:D] (Sequoia DP, <= N nodes, depth <= D). Verify q = nodes.")] = None,
    batch: Annotated[int, typer.Option("--batch")] = 1,
    ctx: Annotated[int, typer.Option("--ctx", help="Tokens already cached.")] = 1024,
    acceptance: Annotated[str, typer.Option(
        "--acceptance", help="0.8 (i.i.d.) | 0.9,0.8,0.7 (per position; last repeats) | "
        "ranked:0.6,0.2,0.1 (trees) | file:PATH or PATH.csv/.json (accepted-length "
        "histogram: CSV accepted,count or JSON {\"counts\": [...]}).")] = "0.8",
    calibration: CalOpt = "auto",
    overhead: SpecOverheadOpt = "auto",
    round_trip_us: SpecRoundTripOpt = None,
    launch: LaunchOpt = Launch.graph,
    stack: StackOpt = loader.DEFAULT_STACK,
    reserve_fraction: SpecReserveOpt = 0.1,
    mc_iterations: Annotated[int, typer.Option(
        "--mc-iterations", help="Also sample this many iterations per request (Monte-Carlo "
        "check of tokens per iteration; 0: off).")] = 0,
    seed: Annotated[int, typer.Option("--seed", help="Monte-Carlo seed.")] = 0,
    fmt: FmtOpt = Fmt.table,
    timeline: Annotated[Path | None, typer.Option(
        "--timeline", help="Write a Plotly timeline of one iteration (SimPy engine) here.")
    ] = None,
) -> None:
    """Speculative decoding: one iteration's time, tokens per iteration, speedup.

    Example: gpusim spec --gpu h100-sxm --target llama-3.1-8b --draft llama-3.2-1b
    --k 4 --batch 8 --ctx 4096 --acceptance 0.8 --format json
    """
    import numpy as np

    from gpusim.speculative import iteration as it
    from gpusim.speculative import options, output

    g = loader.load_gpu(gpu)
    st = loader.load_stack(stack)
    cal = loader.load_calibration(calibration, g)
    ov = options.overhead_from_options(overhead, round_trip_us, g)
    sp = options.speculation_from_options(target, draft, acceptance, k, tree)
    if not 0.0 <= reserve_fraction < 1.0:
        raise bad("--reserve-fraction", "must be in [0, 1)", value=reserve_fraction)
    if mc_iterations < 0:
        raise bad("--mc-iterations", "must be >= 0", value=mc_iterations)
    try:
        p = it.predict_iteration(g, st, cal, ov, sp, batch, ctx, launch.value,
                                 reserve_fraction)
    except ValueError as exc:
        raise bad("--" + str(exc).split("=", 1)[0], str(exc)) from None
    options.check_weights_fit(p)
    if not bool(p.fits[0]):
        print(f"gpusim: warning: weights + KV ({float(p.memory_bytes[0]) / 1e9:.1f} GB) exceed "
              f"the usable HBM ({p.capacity_bytes / 1e9:.1f} GB) at batch {batch}, ctx {ctx}",
              file=sys.stderr)
    mc = (sp.monte_carlo(batch, mc_iterations, np.random.default_rng(seed))
          if mc_iterations else None)
    rec = output.spec_record(p, g, cal, ov, mc)
    if timeline is not None:
        tl = it.simulate_iteration(g, st, cal, ov, sp, batch, ctx, launch.value)
        title = (f"{sp.target.name} + {sp.draft.label} {sp.tree.label()} b={batch} "
                 f"ctx={ctx} on {g.name}")
        report.write_html(report.timeline_figure(tl, title), timeline)
        print(f"wrote timeline to {timeline}", file=sys.stderr)
    if fmt is Fmt.json:
        _echo(report.to_json(rec))
    elif fmt is Fmt.csv:
        _echo(report.to_csv([rec]).rstrip("\n"))
    else:
        _print_table(f"{rec['target']} + {rec['draft']} ({rec['tree']}, {rec['acceptance']}) "
                     f"batch={batch} ctx={ctx} on {g.name} (calibration: {cal.fitted_on}; "
                     f"overhead: {ov.fitted_on})", [rec], list(output.TABLE_COLUMNS))


@app.command("spec-sweep")
def spec_sweep(
    gpu: GpuOpt,
    target: Annotated[str, typer.Option("--target", help="Target model name or path.")],
    draft: SpecDraftOpt,
    acceptance: Annotated[list[str] | None, typer.Option(
        "--acceptance", help="Acceptance model (as for `spec`); repeat for several.")
    ] = None,
    batches: Annotated[str, typer.Option("--batches", help="e.g. 1,2,4,8 or 1-16.")
                       ] = "1,2,4,8,16,32,64,128,256",
    ctxs: Annotated[str, typer.Option("--ctxs", help="Contexts, e.g. 1024,16384.")
                    ] = "1024,4096,16384",
    ks: Annotated[str, typer.Option("--ks", help="Chain lengths to try, e.g. 1-8.")] = "1-8",
    max_batch: Annotated[int | None, typer.Option(
        "--max-batch", help="Break-even search over every batch 1..this (default: the "
        "largest of --batches).")] = None,
    calibration: CalOpt = "auto",
    overhead: SpecOverheadOpt = "auto",
    round_trip_us: SpecRoundTripOpt = None,
    launch: LaunchOpt = Launch.graph,
    stack: StackOpt = loader.DEFAULT_STACK,
    reserve_fraction: SpecReserveOpt = 0.1,
    fmt: FmtOpt = Fmt.table,
    html: Annotated[Path | None, typer.Option(
        "--html", help="Write the Plotly heatmaps (best-k speedup) here.")] = None,
    md: Annotated[Path | None, typer.Option(
        "--md", help="Write a markdown report (break-even and best-k tables) here.")] = None,
    out_csv: Annotated[Path | None, typer.Option(
        "--out-csv", help="Write every (acceptance, ctx, batch, k) row here.")] = None,
) -> None:
    """Speedup over plain decoding against batch and context; best k; break-even batch."""
    from gpusim.speculative import figures, options
    from gpusim.speculative import sweep as sw

    g = loader.load_gpu(gpu)
    st = loader.load_stack(stack)
    cal = loader.load_calibration(calibration, g)
    ov = options.overhead_from_options(overhead, round_trip_us, g)
    t = loader.load_model(target)
    sp = options.speculation_from_options(target, draft, "0.8", 1, None)
    accs = [options.acceptance_option(a) for a in (acceptance or ["0.8"])]
    if not 0.0 <= reserve_fraction < 1.0:
        raise bad("--reserve-fraction", "must be in [0, 1)", value=reserve_fraction)
    try:
        res = sw.sweep(g, st, cal, ov, t, sp.draft, accs,
                       options.int_list(batches, "--batches", 1),
                       options.int_list(ctxs, "--ctxs", 0), options.int_list(ks, "--ks", 1),
                       launch.value, reserve_fraction, max_batch)
    except ValueError as exc:
        raise bad("--" + str(exc).split("=", 1)[0].replace("_", "-"), str(exc)) from None
    title = f"{t.name} + {sp.draft.label} on {g.name}"
    notes = [f"Calibration: {cal.fitted_on}; host round trip "
             f"{ov.host_round_trip_s * 1e6:.1f} us ({ov.fitted_on}); launch {launch.value}."]
    for path, text in ((html, lambda: figures.sweep_html(res, title)),
                       (md, lambda: figures.sweep_markdown(
                           res, title, "gpusim " + " ".join(sys.argv[1:]), notes)),
                       (out_csv, lambda: report.to_csv(res.rows))):
        if path is not None:
            report.write_atomic(path, text())
            print(f"wrote {path}", file=sys.stderr)
    if fmt is Fmt.json:
        _echo(report.to_json(figures.clean({"title": title, "break_even": res.break_even,
                                            "best": res.best, "rows": res.rows})))
    elif fmt is Fmt.csv:
        _echo(report.to_csv(res.best).rstrip("\n"))
    else:
        _print_table(f"{title}: where speculation stops paying", res.break_even,
                     list(res.break_even[0]))
        _print_table("best k per (acceptance, ctx, batch)", res.best,
                     ["acceptance", "ctx", "batch", "best_k", "speedup", "ms_per_token",
                      "fits_in_memory"])


@app.command("spec-validate")
def spec_validate(
    data_dir: Annotated[Path, typer.Option(
        "--data-dir", help="Directory with <gpu>/spec.csv measured loops.")
    ] = Path("validation/data"),
    fit_pair: Annotated[str | None, typer.Option(
        "--fit-pair", help="Pair whose rows fit the round trip (default: the first).")
    ] = None,
    report_path: Annotated[Path, typer.Option("--report", help="Markdown report to write.")
                           ] = Path("validation/SPEC_REPORT.md"),
    points_path: Annotated[Path | None, typer.Option(
        "--points", help="Per-row predictions CSV to write.")] = None,
    write_overhead: Annotated[bool, typer.Option(
        "--write-overhead", help="Write validation/calibrations/speculative/<gpu>.yaml.")
    ] = False,
    calibration: CalOpt = "auto",
    stack: StackOpt = loader.DEFAULT_STACK,
) -> None:
    """Fit the host round trip per GPU and report predicted vs measured iterations."""
    from gpusim.speculative import measured
    from gpusim.speculative import overhead as ovmod
    from gpusim.speculative import validate as val

    st = loader.load_stack(stack)
    files = sorted(data_dir.glob("*/spec.csv"))
    if not files:
        raise bad(str(data_dir), "no <gpu>/spec.csv files found (run "
                  "validation/harness/bench_spec.py on a GPU first)")
    results = []
    for f in files:
        g = loader.load_gpu(f.parent.name)
        rows = measured.read_spec_csv(f)
        try:
            results.append(val.validate_gpu(g, st, loader.load_calibration(calibration, g),
                                             rows, loader.load_model, fit_pair, str(f)))
        except ValueError as exc:
            raise bad(str(f), str(exc)) from None
        print(f"{g.name}: {len(rows)} rows", file=sys.stderr)
    md = val.markdown(results, "gpusim spec-validate --data-dir " + str(data_dir))
    report.write_atomic(report_path, md)
    print(f"wrote {report_path}", file=sys.stderr)
    if points_path is not None:
        report.write_atomic(points_path, report.to_csv([p for r in results
                                                        for p in r.points()]))
    if write_overhead:
        ovmod.SPEC_CALIBRATIONS_DIR.mkdir(parents=True, exist_ok=True)
        for r in results:
            path = ovmod.SPEC_CALIBRATIONS_DIR / f"{r.gpu}.yaml"
            report.write_atomic(path, ovmod.to_yaml(r.overhead))
            print(f"wrote {path}", file=sys.stderr)
    _echo(md)


@app.command()
def schema(
    out: Annotated[Path | None, typer.Option(
        "--out", help="Directory to write <kind>.schema.json files into.")] = None,
) -> None:
    """Export JSON schemas of the GPU, model, stack and calibration files."""
    from gpusim import schemas

    docs = schemas.all_schemas()
    if out is None:
        _echo(report.to_json(docs))
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise cannot(out, exc) from None
    for kind, doc in docs.items():
        report.write_atomic(out / f"{kind}.schema.json", report.to_json(doc))
    print(f"wrote {len(docs)} schemas to {out}", file=sys.stderr)


@app.command("list")
def list_(
    what: Annotated[str, typer.Argument(help="gpus, models or stacks")] = "gpus",
    fmt: FmtOpt = Fmt.table,
) -> None:
    """List the shipped GPUs, models or stacks."""
    dirs = {"gpus": loader.HARDWARE_DIR, "models": loader.MODELS_DIR,
            "stacks": loader.STACKS_DIR}
    if what not in dirs:
        raise bad("list", "must be one of gpus, models, stacks", value=what)
    rows: list[dict[str, object]] = []
    for name in loader.available(dirs[what]):
        if what == "gpus":
            g = loader.load_gpu(name)
            rows.append({"name": name, "display_name": g.display_name,
                         "hbm_gb": g.hbm_capacity_bytes / 1e9,
                         "hbm_tb_per_s": g.hbm_bandwidth_bytes_per_s / 1e12,
                         "bf16_tflops": g.tensor_flops_per_s.bf16 / 1e12})
        elif what == "models":
            m = loader.load_model(name)
            rows.append({"name": name, "params_b": m.param_count / 1e9,
                         "layers": m.num_hidden_layers, "heads": m.num_attention_heads,
                         "kv_heads": m.num_key_value_heads,
                         "kv_kib_per_token": m.kv_bytes_per_token / 1024})
        else:
            rows.append({"name": name, "description": loader.load_stack(name).description})
    if fmt is Fmt.json:
        _echo(report.to_json(rows))
    elif fmt is Fmt.csv:
        _echo(report.to_csv(rows).rstrip("\n"))
    else:
        _print_table(what, rows, list(rows[0]) if rows else ["name"])


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app; bad input -> one line on stderr and exit 2."""
    try:
        app(args=argv, standalone_mode=False, prog_name="gpusim")
    except ConfigError as exc:
        print(f"gpusim: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except OSError as exc:
        # a file the commands did not check themselves: still one line, no traceback
        where = f"{exc.filename}: " if exc.filename is not None else ""
        print(f"gpusim: error: {where}{exc.strerror or exc}".replace("\n", " "),
              file=sys.stderr)
        return 2
    except Exception as exc:
        # click (vendored by typer) usage errors: one line, exit 2
        name = type(exc).__name__
        if name == "NoArgsIsHelpError":
            return 0
        if name == "Abort":
            print("gpusim: aborted", file=sys.stderr)
            return 1
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            msg = exc.format_message().replace("\n", " ")
            print(f"gpusim: error: {msg} (see --help)", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
