"""``gpusim spec``, ``spec-sweep`` and ``spec-validate``: speculative decoding."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from gpusim import report
from gpusim.cli.common import (
    CacheLenOpt,
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
    cache_len_option,
    check_outputs,
    describe_calibration,
    flags,
    out_format,
    setup,
    wrote,
)
from gpusim.cli.progress import QuietOpt, working
from gpusim.errors import bad
from gpusim.io import loader

SpecDraftOpt = Annotated[str, typer.Option(
    "--draft", help="Draft: a model (name, YAML or config.json path) | medusa:H (H heads "
    "on the target, k <= H) | eagle or eagle:N (EAGLE head, N layers) | ngram (prompt "
    "lookup at the host cost fitted in --overhead, growing with batch x ctx) or ngram:US "
    "(US us of host time per iteration).")]
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
    target: Annotated[str, typer.Option(
        "--model", help="Target model: name, YAML or config.json path.")],
    draft: SpecDraftOpt,
    k: Annotated[int | None, typer.Option(
        "--k", help="Draft tokens per iteration (a chain; default 4, medusa:H -> H).")
    ] = None,
    tree: Annotated[str | None, typer.Option(
        "--tree", help="Token tree instead of a chain: WxD | parents:0,0,1,... | "
        "best:N[:D] (Sequoia DP, <= N nodes, depth <= D). Verify q = nodes.")] = None,
    batch: Annotated[int, typer.Option("--batch")] = 1,
    ctx: Annotated[int, typer.Option("--ctx", help="Tokens already cached.")] = 1024,
    cache_len: CacheLenOpt = None,
    acceptance: Annotated[str, typer.Option(
        "--acceptance", help="0.8 (i.i.d.) | 0.9,0.8,0.7 (per position; last repeats) | "
        "ranked:0.6,0.2,0.1 (trees) | file:PATH or PATH.csv/.json (accepted-length "
        "histogram: CSV accepted,count or JSON {\"counts\": [...]}).")] = "0.8",
    calibration: CalOpt = "auto",
    overhead: SpecOverheadOpt = "auto",
    round_trip_us: SpecRoundTripOpt = None,
    launch: LaunchOpt = Launch.GRAPH,
    stack: StackOpt = loader.DEFAULT_STACK,
    reserve_fraction: SpecReserveOpt = 0.1,
    mc_iterations: Annotated[int, typer.Option(
        "--mc-iterations", help="Also sample this many iterations per request (Monte-Carlo "
        "check of tokens per iteration; 0: off).")] = 0,
    seed: Annotated[int | None, typer.Option(
        "--seed", help="Monte-Carlo seed (with --mc-iterations; default 0).")] = None,
    fmt: FmtOpt = Fmt.table,
    timeline: Annotated[Path | None, typer.Option(
        "--timeline", help="Write a Plotly timeline of one iteration (SimPy engine) here.")
    ] = None,
    tp: TpOpt = 1,
    pp: PpOpt = 1,
    ep: EpOpt = 1,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress on stderr.")] = False,
    ignore_memory: Annotated[bool, typer.Option(
        "--ignore-memory", help="Predict an iteration whose weights + KV exceed the GPU's "
        "memory (a warning on stderr) instead of refusing it.")] = False,
) -> None:
    """Speculative decoding: one iteration's time, tokens per iteration, speedup.

    Example: gpusim spec --gpu h100-sxm --model llama-3.1-8b --draft llama-3.2-1b
    --k 4 --batch 8 --ctx 4096 --acceptance 0.8 --format json
    """
    import numpy as np

    from gpusim.cli import spec_options as options
    from gpusim.report import spec_output as output
    from gpusim.report import trust_outputs
    from gpusim.speculative import iteration as it

    piped = check_outputs({"--timeline": timeline})
    options.check_monte_carlo(mc_iterations, batch, seed)
    seed = 0 if seed is None else seed
    plat = setup(gpu, stack, calibration, launch.value, tp, pp, ep)
    g, cal = plat.gpu, plat.calibration
    ov = options.overhead_from_options(overhead, round_trip_us, g)
    with working("spec", quiet):   # a best:N tree search can take seconds
        sp = options.speculation_from_options(target, draft, acceptance, k, tree, plat.stack)
    # a static cache holds the verify's tokens too: the target's and the draft's each
    # hold that many positions (default the fewest: loop_steps.loop_cache), and every
    # step attends them all
    cache = cache_len_option(plat.stack, cache_len, ctx, sp.tree.nodes, "the verify's tokens")
    static = plat.stack.attends_allocated_cache
    cached = f" cache={cache}" if static else ""
    with flags():
        p = it.predict_iteration(plat, ov, sp, batch, ctx, reserve_fraction, cache_len)
    options.check_weights_fit(p)
    if not bool(p.fits[0]):
        over = (f"weights + KV ({float(p.memory_bytes[0]) / 1e9:.1f} GB) exceed the usable "
                f"HBM ({p.capacity_bytes / 1e9:.1f} GB) at batch {batch}, ctx {ctx}{cached}")
        if not ignore_memory:
            smaller = "--cache-len" if cache_len is not None else "--ctx"
            raise bad("--batch", f"{over}; a smaller --batch or {smaller} fits "
                      "(--ignore-memory predicts it anyway)")
        print(f"gpusim: warning: {over}; predicting anyway (--ignore-memory)",
              file=sys.stderr)
    with working("spec --mc-iterations", quiet):
        mc = (sp.monte_carlo(batch, mc_iterations, np.random.default_rng(seed))
              if mc_iterations else None)
    rec = output.spec_record(p, g, cal, ov, mc, cache if static else None)
    # judged at the context it attends: a static cache's every position
    rec.update(trust_outputs.spec_fields(plat, sp, batch, cache - sp.tree.nodes, rec))
    if timeline is not None:
        tl = it.simulate_iteration(plat, ov, sp, batch, ctx, cache_len=cache_len)
        title = (f"{sp.target.name} + {sp.draft.label} {sp.tree.label()} b={batch} "
                 f"ctx={ctx}{cached} on {g.name}")
        report.write_html(report.timeline_figure(tl, title), timeline)
        wrote(timeline, "timeline")
    if piped:
        return
    if fmt is Fmt.json:
        _echo(report.to_json(rec))
    elif fmt is Fmt.csv:
        _echo(report.to_csv([rec]).rstrip("\n"))
    else:
        _print_table(f"{rec['target']} + {rec['draft']} ({rec['tree']}, {rec['acceptance']}) "
                     f"batch={batch} ctx={ctx}{cached} on {g.name} (stack {plat.stack.name}, "
                     "calibration: "
                     f"{describe_calibration(plat)}; "
                     f"overhead: {ov.fitted_on})", [rec], list(output.TABLE_COLUMNS))
        trust_outputs.warn(str(rec["envelope"]), rec["band_pct"],  # type: ignore[arg-type]
                           str(rec.get("no_band", "")), "the iteration")


@app.command("spec-sweep")
def spec_sweep(
    gpu: GpuOpt,
    target: Annotated[str, typer.Option(
        "--model", help="Target model: name, YAML or config.json path.")],
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
    launch: LaunchOpt = Launch.GRAPH,
    stack: StackOpt = loader.DEFAULT_STACK,
    reserve_fraction: SpecReserveOpt = 0.1,
    fmt: FmtOpt = Fmt.table,
    html: Annotated[Path | None, typer.Option(
        "--html", help="Write the Plotly heatmaps (best-k speedup) here.")] = None,
    md: Annotated[Path | None, typer.Option(
        "--report", help="Write a Markdown report (break-even and best-k tables) here.")
    ] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Write every (acceptance, ctx, batch, k) row here: CSV, or JSON "
        "for a .json file (- for standard output, in --format).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress on stderr.")] = False,
) -> None:
    """Speedup over plain decoding against batch and context; best k; break-even batch."""
    from gpusim.cli import spec_options as options
    from gpusim.report import spec_figures as figures
    from gpusim.report import trust_outputs
    from gpusim.speculative import sweep as sw

    piped = check_outputs({"--html": html, "--report": md, "--out": out})
    out_fmt = out_format(out, "--out", fmt, ("csv", "json"), "csv") if out else "csv"
    plat = setup(gpu, stack, calibration, launch.value)
    g = plat.gpu
    ov = options.overhead_from_options(overhead, round_trip_us, g)
    t = loader.load_model(target)
    sp = options.speculation_from_options(target, draft, "0.8", 1, None, plat.stack)
    accs = [options.acceptance_option(a) for a in (acceptance or ["0.8"])]
    grid = sw.SweepGrid(options.int_list(batches, "--batches", 1),
                        options.int_list(ctxs, "--ctxs", 0), options.int_list(ks, "--ks", 1),
                        max_batch, reserve_fraction)
    with flags(batch="--batches", ctx="--ctxs", k="--ks", max_batch="--max-batch"), \
            working("spec-sweep", quiet):
        res = sw.sweep(plat, ov, t, sp.draft, accs, grid)
        for row in res.rows:
            row.update(trust_outputs.sweep_fields(plat, t, sp, row))
    title = f"{t.name} + {sp.draft.label} on {g.name}"
    notes = [f"Calibration: {describe_calibration(plat)}; host round trip "
             f"{ov.host_round_trip_s * 1e6:.1f} us ({ov.fitted_on}); launch {launch.value}."]
    outputs = [(path, text()) for path, text in (
        (html, lambda: figures.sweep_html(res, title)),
        (md, lambda: figures.sweep_markdown(res, title, "gpusim " + " ".join(sys.argv[1:]),
                                            notes)),
        (out, lambda: report.to_csv(res.rows) if out_fmt == "csv"
         else report.to_json(report.json_safe(res.rows)))) if path is not None]
    report.write_all(outputs)     # all of them or none
    for path, _ in outputs:
        wrote(path)
    if piped:
        return
    if fmt is Fmt.json:
        _echo(report.to_json(report.json_safe({"title": title, "break_even": res.break_even,
                                            "best": res.best, "rows": res.rows})))
    elif fmt is Fmt.csv:
        _echo(report.to_csv(res.best).rstrip("\n"))
    else:
        _print_table(f"{title}: where speculation stops paying", res.break_even,
                     list(res.break_even[0]))
        _print_table("best k per (acceptance, ctx, batch)", res.best,
                     ["acceptance", "ctx", "batch", "best_k", "speedup", "ms_per_token",
                      "fits_in_memory"])
        trust_outputs.warn_rows(res.rows)


@app.command("spec-validate")
def spec_validate(
    data_dir: Annotated[Path | None, typer.Option(
        "--data", help="Directory with <gpu>/spec.csv measured loops (default: "
        "validation/data of gpusim's checkout, from any directory).")] = None,
    fit_pair: Annotated[str | None, typer.Option(
        "--fit-pair", help="Pair whose rows fit the round trip (default: the first).")
    ] = None,
    report_path: Annotated[Path | None, typer.Option(
        "--report", help="Markdown report to write (- for standard output; without it "
        "the report is printed, not written).")] = None,
    write_shipped: Annotated[bool, typer.Option(
        "--write-shipped", help="Replace the shipped report, validation/SPEC_REPORT.md of "
        "gpusim's checkout (instead of --report).")] = False,
    points_path: Annotated[Path | None, typer.Option(
        "--out", help="Per-row predictions to write: CSV, or JSON for a .json file.")
    ] = None,
    write_overhead: Annotated[bool, typer.Option(
        "--write-overhead", help="Write validation/calibrations/speculative/<gpu>.yaml.")
    ] = False,
    calibration: CalOpt = "auto",
    stack: StackOpt = loader.REFERENCE_STACK,
    quiet: QuietOpt = False,
) -> None:
    """Fit the host round trip per GPU and report predicted vs measured iterations."""
    from gpusim.calibration import spec_measured as measured
    from gpusim.calibration import spec_validate as val
    from gpusim.cli.calibration import _explicit_output
    from gpusim.io import calibrations
    from gpusim.io import overhead as iovmod
    from gpusim.platform import Platform

    shown_dir = str(data_dir) if data_dir is not None else "validation/data"
    data_dir = data_dir if data_dir is not None else loader.ROOT / "validation" / "data"
    if write_shipped:
        report_path = _explicit_output(report_path, write_shipped, "--report",
                                       loader.ROOT / "validation" / "SPEC_REPORT.md")
    points_fmt = (out_format(points_path, "--out", "csv", ("csv", "json"), "csv")
                  if points_path is not None else "csv")
    check_outputs({"--report": report_path, "--out": points_path})
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
            plat = Platform(g, st, calibrations.load_calibration(calibration, g, st))
            with working(f"spec-validate {g.name}", quiet):
                results.append(val.validate_gpu(plat, rows, loader.load_model, fit_pair,
                                                str(f)))
        except ValueError as exc:
            raise bad(str(f), str(exc)) from None
        if not quiet:
            print(f"{g.name}: {len(rows)} rows", file=sys.stderr)
    md = val.markdown(results, "gpusim spec-validate --data " + shown_dir)
    outputs = [(report_path, md)] if report_path is not None else []
    if points_path is not None:
        pts = [p for r in results for p in r.points()]
        outputs.append((points_path, report.to_csv(pts) if points_fmt == "csv"
                        else report.to_json(report.json_safe(pts))))
    if write_overhead:
        iovmod.SPEC_CALIBRATIONS_DIR.mkdir(parents=True, exist_ok=True)
        outputs += [(iovmod.SPEC_CALIBRATIONS_DIR / f"{r.gpu}.yaml", iovmod.to_yaml(r.overhead))
                    for r in results]
    report.write_all(outputs)     # all of them or none
    for path, _ in outputs:
        wrote(path)
    if not any(report.is_stdout(path) for path, _ in outputs):
        _echo(md)
