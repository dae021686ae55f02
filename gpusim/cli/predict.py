"""``gpusim predict``: step times for one shape or a CSV of shapes."""

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
    ModeOpt,
    PpOpt,
    StackOpt,
    TpOpt,
    _echo,
    _print_table,
    app,
    as_flag,
    cache_len_option,
    check_outputs,
    describe_calibration,
    flags,
    out_format,
    setup,
    wrote,
)
from gpusim.cost.trust import Assessment
from gpusim.errors import ConfigError, bad
from gpusim.io import loader
from gpusim.specs import GpuSpec, ModelSpec
from gpusim.specs.enums import Mode
from gpusim.specs.stack import STACK_ALIASES


@app.command()
def predict(
    gpu: GpuOpt,
    rows_in: Annotated[Path | None, typer.Option(
        "--in", help="rows.csv with columns model,mode,batch,ctx,q"
        "[,tp,weight_dtype,kv_dtype,cache_len].")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="With --in: the predictions to write, CSV (JSON for a .json file; "
        "- for standard output). Without --out they are printed in --format.")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="Single shape: model name, YAML or config.json path.")] = None,
    mode: Annotated[ModeOpt | None, typer.Option(
        "--mode", help="Single shape: decode (default), verify or prefill.")] = None,
    batch: Annotated[int | None, typer.Option(
        "--batch", help="Single shape: sequences in the step (default 1).")] = None,
    ctx: Annotated[int | None, typer.Option(
        "--ctx", help="Tokens already cached (default 1024; 0 for prefill).")] = None,
    q: Annotated[int | None, typer.Option(
        "--q", help="New tokens per sequence (decode 1; default verify 4, prefill 512).")
    ] = None,
    cache_len: CacheLenOpt = None,
    calibration: CalOpt = "auto",
    launch: LaunchOpt = Launch.GRAPH,
    stack: StackOpt = loader.DEFAULT_STACK,
    fmt: FmtOpt = Fmt.table,
    timeline: Annotated[Path | None, typer.Option(
        "--timeline", help="Single shape: write a Plotly timeline HTML here.")] = None,
    tp: TpOpt = 1,
    pp: PpOpt = 1,
    ep: EpOpt = 1,
    micro_batches: Annotated[int, typer.Option(
        "--micro-batches", help="With --pp: micro-batches the batch splits into.")] = 1,
    weight_dtype: Annotated[str | None, typer.Option(
        "--weight-dtype", help="Projection weights: bf16, fp16 (unquantized), fp8, int8, "
        "int4, fp4 (default: the model's, else what the stack implies).")] = None,
    kv_dtype: Annotated[str | None, typer.Option(
        "--kv-dtype", help="KV cache: bf16, fp16, fp32, fp8 (default: the "
        "activations').")] = None,
    ignore_memory: Annotated[bool, typer.Option(
        "--ignore-memory", help="Predict a shape whose weights + KV exceed the GPU's "
        "memory anyway (a warning on stderr instead of an error).")] = False,
    crossover: Annotated[str | None, typer.Option(
        "--crossover", help="What-if: stacks to compare with --stack (comma-separated, "
        "e.g. torch-fp8,torch-int4) over decode batches 1-256 at --ctx: the batch each "
        "stops beating it.")] = None,
) -> None:
    """Predict step times: a CSV of shapes (--in/--out) or one shape with a breakdown."""
    import numpy as np

    from gpusim import capacity, step
    from gpusim.kernels import check_shape, default_ctx, default_q
    from gpusim.kernels.quant import for_stack
    from gpusim.kernels.variants import op_roles
    from gpusim.step import rows as rows_mod

    # options that give one shape: an option that would be ignored is refused
    shape_opts = {"--mode": mode, "--batch": batch, "--ctx": ctx, "--q": q,
                  "--cache-len": cache_len}
    if rows_in is not None and timeline is not None:
        raise bad("--timeline", "draws one shape: give it with --model, not --in")
    out_kind = out_format(out, "--out", fmt, ("csv", "json"), "csv") if out else "csv"
    piped = check_outputs({"--out": out, "--timeline": timeline})
    plat = setup(gpu, stack, calibration, launch.value, tp, pp, ep, micro_batches)
    g = plat.gpu
    if rows_in is not None:
        if model is not None:
            raise bad("--model", "give either --in (a CSV of shapes) or --model, not both")
        _refuse_shape(shape_opts, "with --in, each row gives its shape (the model, mode, "
                      "batch, ctx, q and cache_len columns)")
        if ignore_memory:
            raise bad("--ignore-memory", "predicts one shape beyond memory; with --in a "
                      "row beyond memory is refused at its line")
        header, rows = rows_mod.read_rows(rows_in)
        rows_mod.check_columns(str(rows_in), header, rows, {
            "gpu": g.name, "launch": plat.launch.value,
            "stack": (plat.stack.name, *[k for k, v in STACK_ALIASES.items()
                                         if v == plat.stack.name])})
        preds = rows_mod.predict_rows(rows, str(rows_in), plat,
                                      capacity.fitting_model_loader(
                                          g, lambda n: for_stack(loader.load_model(n),
                                                                 plat.stack, weight_dtype,
                                                                 kv_dtype), tp=None))
        # the input's columns, a prediction column replacing an input one of its name
        columns = {**{c: [r.raw.get(c, "") for r in rows] for c in header},
                   **rows_mod.cells(preds)}
        _emit_rows(columns, len(rows), out, out_kind, fmt, f"predictions on {g.name}")
        return
    if model is None:
        raise bad("--model", "give --model for one shape, or --in/--out for a CSV of shapes")
    if crossover is not None:
        from gpusim.cli.crossover import print_crossover

        if weight_dtype is not None or kv_dtype is not None:
            raise bad("--crossover", "compares each stack in its own dtypes: give no "
                      "--weight-dtype or --kv-dtype")
        _refuse_shape({**{k: v for k, v in shape_opts.items() if k != "--ctx"},
                       "--timeline": timeline, "--ignore-memory": ignore_memory or None},
                      "--crossover sweeps decode batches 1-256 at --ctx")
        print_crossover(plat, crossover, loader.load_model(model), default_ctx(Mode.DECODE, ctx),
                        calibration, fmt)
        return
    md = Mode((mode or ModeOpt.decode).value)
    batch = 1 if batch is None else batch
    qq, cc = default_q(md, q), default_ctx(md, ctx)
    with flags():
        m = for_stack(loader.load_model(model), plat.stack, weight_dtype, kv_dtype)
        check_shape(md, np.array([batch], float), np.array([cc], float),
                    np.array([qq], float))
        capacity.check_context(m, cc, qq)
        cache = cache_len_option(plat.stack, cache_len, cc, qq)
        # a static cache holds all its positions: its memory is the cache's
        _check_fits(g, m, batch, cache - qq, qq, tp, pp, ignore_memory)
        p = step.predict(plat, m, md, batch, cc, qq, cache_len=cache_len)
    summ = {"gpu": g.name, "model": m.name, "stack": plat.stack.name, "mode": md.value,
            "batch": batch, "ctx": cc, "q": qq,
            **({"cache_len": cache} if plat.stack.attends_allocated_cache else {}),
            "launch": plat.launch.value,
            "calibration": describe_calibration(plat),
            "weights": m.quantization.describe() if m.quantization else m.dtype,
            "kv_dtype": m.kv_dtype_eff, **step.summary(p, g),
            **step.layout_summary(p, plat)}
    # judged at the context it attends: a static cache's every position
    trust = plat.assess(m.param_count, md.value, batch, cache - qq, qq)
    summ.update(trust.as_dict(float(summ["step_ms"])))  # type: ignore[arg-type]
    ops = step.breakdown(p, g)
    roles = op_roles(m, plat.stack)   # quantization and MoE routing costs, summed
    for role in sorted(set(roles.values())):
        summ[f"{role}_ms"] = sum(float(r["ms"]) for r in ops if roles.get(str(r["op"])) == role)
    cached = f" cache={cache}" if plat.stack.attends_allocated_cache else ""
    if timeline is not None:
        tl = step.simulate(plat, m, md, batch, cc, qq, cache_len=cache_len)
        title = (f"{m.name} {md.value} b={batch} ctx={cc} q={qq}{cached} on {g.name} "
                 f"({plat.launch.value}, {plat.stack.name})")
        report.write_html(report.timeline_figure(tl, title), timeline)
        wrote(timeline, "timeline")
    if piped:
        return
    if fmt is Fmt.json:
        _echo(report.to_json({**summ, "ops": ops}))
    elif fmt is Fmt.csv:
        _echo(report.to_csv(ops).rstrip("\n"))
    else:
        _print_table(
            f"{m.name} {md.value} batch={batch} ctx={cc} q={qq}{cached} on {g.name} "
            f"({plat.launch.value}, stack {plat.stack.name}, calibration: "
            f"{describe_calibration(plat)})", ops,
            ["op", "ms", "share", "launches", "bytes", "bandwidth_gb_per_s",
             "bandwidth_fraction", "tflops", "bound"])
        _print_table("step", [summ], ["step_ms", "gpu_ms", "launches", "weight_bytes",
                                      "kv_bytes", "achieved_bandwidth_gb_per_s",
                                      "roofline_ms", "roofline_fraction", "bound",
                                      *(f"{r}_ms" for r in sorted(set(roles.values()))),
                                      "band_pct", "band_low_ms", "band_high_ms"])
        parallel = step.layout_summary(p, plat)
        if parallel:
            _print_table("parallel layout", [parallel], list(parallel))
        warn_trust(trust)


def _refuse_shape(options: dict[str, object], why: str) -> None:
    """Raise ConfigError naming the first of ``options`` given (not None): ``why`` it
    would be ignored."""
    given = [name for name, value in options.items() if value is not None]
    if given:
        raise bad(given[0], f"{why}: give no {', '.join(given)}")


def warn_trust(trust: Assessment) -> None:
    """On stderr: a shape outside its calibration's measured envelope (the band is not
    a bound there), or a calibration without error bands."""
    if trust.outside:
        print(f"gpusim: warning: {trust.envelope} (outside what the calibration was "
              "measured on; its error band is not a bound here)", file=sys.stderr)
    elif trust.band_pct is None:
        print(f"gpusim: note: no error band: {trust.no_band}", file=sys.stderr)


def _emit_rows(columns: dict[str, list[object]], n: int, out: Path | None, kind: str,
               fmt: Fmt, title: str) -> None:
    """``predict --in``'s ``n`` rows, as columns (name -> values): to ``out`` as
    ``kind`` (csv | json), else on stdout in ``fmt``. Raises ConfigError when ``out``
    cannot be written."""
    if out is not None and kind == "csv":
        report.write_atomic(out, report.columns_to_csv(columns, n))
        wrote(out, f"{n} predictions")
        return
    if fmt == Fmt.csv and out is None:
        _echo(report.columns_to_csv(columns, n).rstrip("\n"))
        return
    records = [dict(zip(columns, cells, strict=True))
               for cells in zip(*columns.values(), strict=True)]
    if out is not None:
        report.write_atomic(out, report.to_json(report.json_safe(records)))
        wrote(out, f"{n} predictions")
    elif fmt == Fmt.json:
        _echo(report.to_json(report.json_safe(records)))
    else:
        _print_table(f"{n} {title}", records, list(columns))


def _check_fits(g: GpuSpec, m: ModelSpec, batch: int, ctx: int, q: int, tp: int, pp: int,
                ignore: bool) -> None:
    """Refuse a step whose weights + KV exceed the GPU's memory (ConfigError with the
    numbers); with ``ignore`` (``--ignore-memory``), say so on stderr and go on."""
    from gpusim import capacity

    try:
        capacity.check_step_fits(g, m, batch, ctx, q, tp, pp)
    except ConfigError as exc:
        if not ignore:
            raise
        print(f"gpusim: warning: {as_flag(exc)}; predicting anyway (--ignore-memory)",
              file=sys.stderr)
