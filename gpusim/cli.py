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
from gpusim.errors import ConfigError, bad

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
    from gpusim import rows as rows_mod
    from gpusim import step

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
                                      loader.load_model)
        columns = header + [c for c in rows_mod.OUTPUT_COLUMNS if c not in header]
        records = [{**r.raw, **p} for r, p in zip(rows, preds, strict=True)]
        report.write_atomic(out, report.to_csv(records, columns))
        print(f"wrote {len(records)} predictions to {out}", file=sys.stderr)
        return
    if model is None:
        raise bad("--model", "give --model for one shape, or --in/--out for a CSV of shapes")
    m = loader.load_model(model)
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
    fmt: FmtOpt = Fmt.table,
) -> None:
    """Fit the cost model's parameters for one GPU from measured step times."""
    from gpusim import calibrate as cal_mod
    from gpusim import measurements

    g = loader.load_gpu(gpu)
    st = loader.load_stack(stack)
    default = loader.ROOT / "validation" / "data" / g.name / "steps.csv"
    path = data if str(data) not in ("", ".") else default
    steps = measurements.read_steps(path)
    print(f"fitting {len(steps)} rows from {path} ...", file=sys.stderr)
    res = cal_mod.fit(steps, g, st, loader.load_model, note=f"{path.parent.name}/{path.name}")
    target = out or loader.CALIBRATIONS_DIR / f"{g.name}.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
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
) -> None:
    """Predicted vs measured for every GPU's data: LOMO, cross-GPU, datasheet-only."""
    from gpusim import measurements
    from gpusim import validate as val

    st = loader.load_stack(stack)
    files = sorted(data_dir.glob("*/steps.csv"))
    if not files:
        raise bad(str(data_dir), "no <gpu>/steps.csv files found")
    datasets, gpus, shipped = {}, {}, {}
    for f in files:
        name = f.parent.name
        gpus[name] = loader.load_gpu(name)
        datasets[name] = measurements.read_steps(f)
        cal_file = loader.CALIBRATIONS_DIR / f"{name}.yaml"
        if cal_file.is_file():
            shipped[name] = loader.calibration_from_yaml(cal_file)
        print(f"{name}: {len(datasets[name])} rows", file=sys.stderr)
    command = "gpusim validate --data-dir " + str(data_dir)
    md, pts = val.run_report(datasets, gpus, st, loader.load_model, shipped, command)
    report.write_atomic(report_path, md)
    print(f"wrote {report_path}", file=sys.stderr)
    if points_path is not None:
        report.write_atomic(points_path, report.to_csv(pts))
    if html_dir is not None:
        html_dir.mkdir(parents=True, exist_ok=True)
        oos = [p for p in pts if p["evaluation"] == "leave-one-model-out"]
        report.write_html(report.scatter_figure(oos, "LOMO: predicted vs measured"),
                          html_dir / "validation_scatter.html")
        report.write_html(report.error_vs_batch_figure(oos, "LOMO: error vs batch"),
                          html_dir / "validation_error_vs_batch.html")
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
    out.mkdir(parents=True, exist_ok=True)
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
