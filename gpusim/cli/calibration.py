"""``gpusim calibrate`` and ``gpusim validate``: fit and judge the cost model."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gpusim import report
from gpusim.cli.common import (
    Fmt,
    FmtOpt,
    GpuOpt,
    Micro,
    MicroOpt,
    StackOpt,
    _echo,
    _print_table,
    app,
    check_outputs,
    micro_kinds,
    out_format,
    wrote,
)
from gpusim.cli.progress import QuietOpt, working
from gpusim.cost import Calibration
from gpusim.cost.params import StackParams
from gpusim.errors import bad, cannot
from gpusim.io import calibrations, loader
from gpusim.specs import GpuSpec, StackSpec

if TYPE_CHECKING:   # the fitting and reporting modules load when a command runs
    from gpusim.calibration import stacks_report
    from gpusim.calibration.measurements import StepData


@app.command()
def calibrate(
    gpu: GpuOpt,
    data: Annotated[Path, typer.Option(
        "--data", help="Measured steps.csv (default validation/data/<gpu>/steps.csv); a "
        "tree.csv beside it fits the token-tree kernel too, gemm_sweep.csv cuBLAS's slow "
        "picks, power/ (the step power probe) the power cap.")
    ] = Path(""),
    out: Annotated[Path | None, typer.Option(
        "--out", help="Calibration YAML to write (- for standard output).")] = None,
    write_shipped: Annotated[bool, typer.Option(
        "--write-shipped", help="Replace the shipped calibration, "
        "validation/calibrations/<gpu>.yaml of gpusim's checkout (instead of --out).")
    ] = False,
    stack: StackOpt = loader.REFERENCE_STACK,
    micro_kind: MicroOpt = Micro.none,
    fmt: FmtOpt = Fmt.table,
    quiet: QuietOpt = False,
) -> None:
    """Fit the cost model's parameters for one GPU from measured step times.

    Writes --out FILE.yaml, or the shipped calibration with --write-shipped."""
    from gpusim.calibration import fit as cal_mod

    g = loader.load_gpu(gpu)
    target = _explicit_output(out, write_shipped, "--out",
                              calibrations.CALIBRATIONS_DIR / f"{g.name}.yaml")
    out_format(target, "--out", "yaml", ("yaml",), "yaml")
    check_outputs({"--out": target})
    st = loader.load_stack(stack)
    default = loader.ROOT / "validation" / "data" / g.name / "steps.csv"
    path = data if str(data) not in ("", ".") else default
    from gpusim.calibration import micro as micro_mod
    from gpusim.calibration.fit_inputs import read_fit_inputs_beside

    inputs = read_fit_inputs_beside(g, st, path)
    steps = inputs.data
    _check_enough_rows(steps, str(path))
    micro_path = path.parent / "micro.csv"
    micro = []
    if micro_path.is_file():
        models = [loader.load_model(m) for m in sorted(set(steps.model))]
        micro = micro_mod.read_micro(micro_path, st, models, kinds=micro_kinds(micro_kind))
    print(f"fitting {len(steps)} steps and {sum(len(m.measured_s) for m in micro)} "
          f"kernel microbenchmarks from {path.parent} ...", file=sys.stderr)
    note = f"{path.parent.name}/{path.name}"
    if (path.parent / "tree.csv").is_file():
        note += " + tree.csv"
    from gpusim.calibration.die_physics import physics_die_source
    from gpusim.calibration.joint import described

    # the measured stacks without parameters of their own fit the physics too
    note += described(inputs.joint)
    # an attention family's work on the SMs, from the GPU of this die that profiled it most
    die = physics_die_source(g, st, len(inputs.attention), path.parent.parent)
    if die is not None:
        note += f" + {', '.join(die.fields)} from {die.gpu} (same die)"
    try:
        with working("calibrate", quiet):
            res = cal_mod.fit(steps, g, st, loader.load_model, note=note, micro=micro,
                              profiles=inputs.profiles, sweep=inputs.sweep,
                              clocks=inputs.clocks, attention=inputs.attention,
                              also=inputs.joint,
                              held=die.shipped() if die is not None else None)
    except ValueError as exc:   # data the fit cannot use (no CUDA-graph rows, ...)
        raise bad(str(path), str(exc).removeprefix(f"{path}: ")) from None
    from gpusim.calibration.moe_fit import fit_moe

    # the expert GEMM's kernel family: GPU physics every stack inherits (an MoE model
    # under any stack), fitted before the stacks' own parameters
    physics, moe_note = fit_moe(path.parent, g, res.calibration, loader.load_stack,
                                loader.load_model)
    if moe_note:
        print(moe_note, file=sys.stderr)
        res = replace(res, calibration=physics.replace(
            {"notes": "; ".join(n for n in (physics.notes, moe_note) if n)}))
    stacks = _fit_stacks(path.parent / "stacks", g, res.calibration)
    from gpusim.calibration.serving_calibrate import (
        PIECEWISE_MODE,
        SERVING_STACK,
        serving_runs,
        serving_stack_params,
    )
    from gpusim.cost import CalibrationSet

    # the serving engine's host work, fitted on the GPU's measured serving runs
    serving = path.parent.parent / "serving"
    runs = serving_runs(serving, g.name)
    if runs:
        try:
            stacks[SERVING_STACK] = serving_stack_params(
                runs, g, CalibrationSet.of(res.calibration, stacks),
                serving_runs(serving, g.name, PIECEWISE_MODE))
        except ValueError as exc:   # no measured stack to borrow its host costs from
            print(f"{SERVING_STACK}: its serving runs under {serving} not fitted: {exc}",
                  file=sys.stderr)
    report.write_atomic(target, cal_mod.to_yaml(res, stacks))
    wrote(target)
    print(f"no error bands in {target} yet (they need leave-one-model-out fits): "
          f"python -m gpusim.calibration.bands --gpu {g.name} --write", file=sys.stderr)
    if report.is_stdout(target):
        return
    params = res.calibration.model_dump(exclude={"notes", "gemm_slow_picks", "trust"})
    # the picks are a table (in the YAML); the summary says how many
    params["gemm_slow_picks"] = len(res.calibration.physics.gemm_slow_picks)
    summary = {"rows": res.rows, "mape": res.mape, "log_rmse": res.log_rmse, **params}
    if fmt is Fmt.json:
        _echo(report.to_json(summary))
    elif fmt is Fmt.csv:
        _echo(report.to_csv([summary]).rstrip("\n"))
    else:
        _print_table(f"calibration of {g.name} (in-sample fit)",
                     [{"parameter": k, "value": v} for k, v in summary.items()],
                     ["parameter", "value"])


def _fit_stacks(directory: Path, gpu: GpuSpec, physics: Calibration) -> dict[str, StackParams]:
    """Each measured stack's own parameters (``stacks/<stack>/steps.csv``), physics held."""
    from gpusim.calibration import die, measurements
    from gpusim.calibration import fit as cal_mod

    out: dict[str, StackParams] = {}
    for steps_csv in sorted(directory.glob("*/steps.csv")):
        st = loader.load_stack(steps_csv.parent.name)
        data = measurements.read_steps(steps_csv, st.name)
        fitted, start = st, physics
        src = die.die_source(gpu, st, set(map(str, data.model)), directory.parent.parent)
        if src is not None:   # its arithmetic from the same-die GPU with more models
            fitted, start = die.hold(st, physics, src.shipped())
        res = cal_mod.fit_stack(data, gpu, fitted, start, loader.load_model)
        eager = int((data.launch == "eager").sum())
        notes = (f"fitted on {res.rows} steps of stacks/{st.name}/steps.csv (in-sample MAPE "
                 f"{100 * res.mape:.2f}%)")
        if src is not None:
            notes += (f"; {', '.join(src.fields)} from {src.gpu} (the same die, "
                      f"{len(src.models)} models measured)")
        if not eager:
            notes += f"; host costs: {physics.stack}'s (no eager steps measured)"
        out[st.name] = StackParams.of(res.calibration, st.calibrate, notes)
        print(f"{st.name}: {notes}", file=sys.stderr)
    return out


def _stack_evaluations(directory: Path, gpu: GpuSpec,
                       physics: Callable[[str], Calibration]
                       ) -> list[stacks_report.StackEvaluation]:
    """Every measured stack's steps on ``gpu`` predicted from ``physics`` (by the
    stack's name: ``validate.judging_physics``, fitted without its measurements where
    they went into the shipped one): its transfer and leave-one-model-out errors must
    not see its own measurements."""
    from gpusim.calibration import die, measurements, stacks_report

    out = []
    for steps_csv in sorted(directory.glob("*/steps.csv")):
        st = loader.load_stack(steps_csv.parent.name)
        data = measurements.read_steps(steps_csv, st.name)
        own = physics(st.name)
        held = die.fold_values(gpu, st, set(map(str, data.model)), directory.parent.parent)
        out.append(stacks_report.evaluate_stack(st, data, gpu, own, loader.load_model,
                                                held=held))
        print(f"{gpu.name} {st.name}: {len(data)} rows", file=sys.stderr)
    return out


def _import_agreements(gpu_dir: Path, gpu: GpuSpec, reference: StackSpec,
                       reference_data: StepData) -> list[stacks_report.ImportAgreement]:
    """Every stack with committed traces under ``gpu_dir``, imported and compared with
    its hand-checked file on the shapes of its measured graph steps (where it has none,
    the reference stack's: ``steps.csv``)."""
    from gpusim.calibration import measurements, stacks_report

    out = []
    cal_file = calibrations.CALIBRATIONS_DIR / f"{gpu.name}.yaml"
    for name, traces in stacks_report.traces_of(gpu_dir).items():
        st = loader.load_stack(name)
        own = gpu_dir / "stacks" / name / "steps.csv"
        data = reference_data
        if st.name != reference.name and own.is_file():
            mine = measurements.read_steps(own, st.name)
            # a stack measured eager only is compared on the reference stack's shapes
            data = mine if (mine.launch == "graph").any() else reference_data
        cal = calibrations.load_calibration(str(cal_file), gpu, st)
        try:
            out.append(stacks_report.import_agreement(st, traces, data, gpu, cal,
                                                      loader.load_model, reference))
        except ValueError as exc:
            raise bad(str(traces[0]), str(exc)) from None
    return out


def _explicit_output(path: Path | None, write_shipped: bool, flag: str, shipped: Path
                     ) -> Path:
    """Where a command that can replace a shipped file writes: ``path`` (``flag``), or
    ``shipped`` with --write-shipped. Raises ConfigError when neither or both are
    given (shipped files are replaced only when asked by name)."""
    if path is not None and write_shipped:
        raise bad(flag, "give either it or --write-shipped, not both")
    if path is None and not write_shipped:
        shown = shipped.relative_to(loader.ROOT) if shipped.is_relative_to(loader.ROOT) \
            else shipped
        raise bad(flag, f"required: the file to write (or --write-shipped to replace {shown})")
    return path if path is not None else shipped


# CUDA-graph rows a calibration needs: it fits a few dozen parameters, and on fewer
# rows it fits them exactly (MAPE 0%) and predicts nothing else
MIN_GRAPH_ROWS = 50


def _check_enough_rows(steps, source: str) -> None:  # type: ignore[no-untyped-def]
    """Raise ConfigError when ``steps`` (measurements.StepData) has fewer than
    MIN_GRAPH_ROWS CUDA-graph rows (token-tree rows not counted)."""
    graph = int(((steps.launch == "graph") & (steps.mode != "tree")).sum())
    if graph < MIN_GRAPH_ROWS:
        raise bad(source, f"{graph} CUDA-graph rows (launch=graph); a calibration fits a "
                  f"few dozen parameters and needs at least {MIN_GRAPH_ROWS}, else it "
                  "fits them exactly and predicts nothing")


@app.command()
def validate(
    data_dir: Annotated[Path | None, typer.Option(
        "--data", help="Directory with <gpu>/steps.csv measurements (default: "
        "validation/data of gpusim's checkout, from any directory).")] = None,
    report_path: Annotated[Path | None, typer.Option(
        "--report", help="Markdown report to write (- for standard output; without it "
        "the report is printed, not written).")] = None,
    write_shipped: Annotated[bool, typer.Option(
        "--write-shipped", help="Replace the shipped report, validation/REPORT.md of "
        "gpusim's checkout (instead of --report).")] = False,
    points_path: Annotated[Path | None, typer.Option(
        "--out", help="Per-row predictions to write: CSV, or JSON for a .json file.")
    ] = None,
    html_dir: Annotated[Path | None, typer.Option(
        "--html-dir", help="Write scatter and error-vs-batch Plotly HTML here.")] = None,
    stack: StackOpt = loader.REFERENCE_STACK,
    micro_kind: MicroOpt = Micro.none,
    fmt: Annotated[Fmt, typer.Option(
        "--format", help="stdout: table (the markdown report), json or csv (per-row "
        "predictions of every evaluation).")] = Fmt.table,
    quiet: QuietOpt = False,
) -> None:
    """Predicted vs measured for every GPU's data: LOMO, cross-GPU, datasheet-only."""
    from gpusim.calibration import quant_moe_report, stacks_report, unseen_stacks
    from gpusim.calibration import validate as val

    shown_dir = str(data_dir) if data_dir is not None else "validation/data"
    data_dir = data_dir if data_dir is not None else loader.ROOT / "validation" / "data"
    if write_shipped:
        report_path = _explicit_output(report_path, write_shipped, "--report",
                                       loader.ROOT / "validation" / "REPORT.md")
    points_fmt = (out_format(points_path, "--out", fmt, ("csv", "json"), "csv")
                  if points_path is not None else "csv")
    piped = check_outputs({"--report": report_path, "--out": points_path},
                          {"--html-dir": html_dir})
    st = loader.load_stack(stack)
    files = sorted(data_dir.glob("*/steps.csv"))
    if not files:
        raise bad(str(data_dir), "no <gpu>/steps.csv files found")
    from gpusim.calibration import lease_anchor
    from gpusim.calibration import micro as micro_mod
    from gpusim.calibration.die_physics import PhysicsDieSource, physics_die_source
    from gpusim.calibration.fit_inputs import read_fit_inputs_beside
    from gpusim.calibration.held_out import held_out_sets, read_held_out

    datasets, gpus, shipped, micro, profs, sweeps, clocks = {}, {}, {}, {}, {}, {}, {}
    attention: dict[str, list] = {}
    joint: dict[str, list] = {}
    die: dict[str, PhysicsDieSource | None] = {}
    held: dict[str, dict] = {}
    for f in files:
        name = f.parent.name
        gpus[name] = loader.load_gpu(name)
        inputs = read_fit_inputs_beside(gpus[name], st, f)
        datasets[name] = inputs.data
        _check_enough_rows(datasets[name], str(f))
        if (f.parent / "micro.csv").is_file():
            models = [loader.load_model(m) for m in sorted(set(datasets[name].model))]
            micro[name] = micro_mod.read_micro(f.parent / "micro.csv", st, models,
                                               kinds=micro_kinds(micro_kind))
        profs[name], sweeps[name], clocks[name] = inputs.profiles, inputs.sweep, inputs.clocks
        attention[name], joint[name] = inputs.attention, inputs.joint
        die[name] = physics_die_source(gpus[name], st, len(attention[name]), data_dir)
        held[name] = read_held_out(f.parent)
        cal_file = calibrations.CALIBRATIONS_DIR / f"{name}.yaml"
        if cal_file.is_file():
            shipped[name] = calibrations.load_calibration(str(cal_file), gpus[name], st)
        print(f"{name}: {len(datasets[name])} rows", file=sys.stderr)
    command = "gpusim validate --data " + shown_dir
    held_out = held_out_sets(held)
    with working("validate", quiet):
        md, pts = val.run_report(datasets, gpus, st, loader.load_model, shipped, command,
                                 micro, profs, held_out, sweeps, clocks,
                                 attention=attention, joint=joint, die=die)
    for name in sorted(datasets):
        if name in shipped:
            physics = val.judging_physics(shipped[name], datasets[name], gpus[name], st,
                                          loader.load_model, micro.get(name, []),
                                          profs[name], sweeps[name], clocks[name],
                                          attention[name], joint[name], die[name])
            evaluations = _stack_evaluations(data_dir / name / "stacks", gpus[name],
                                             physics)
            if evaluations:
                md += "\n" + stacks_report.section(name, evaluations)
                pts += [p for ev in evaluations for p in stacks_report.points(name, ev)]
            md += lease_anchor.report(data_dir / name, gpus[name], physics, st,
                                      loader.load_model, loader.load_stack)
            md += stacks_report.import_section(
                _import_agreements(data_dir / name, gpus[name], st, datasets[name]))

            def shipped_for(s: StackSpec, n: str = name) -> Calibration:
                """The GPU's shipped calibration under stack ``s``."""
                return calibrations.load_calibration(
                    str(calibrations.CALIBRATIONS_DIR / f"{n}.yaml"), gpus[n], s)

            md += "\n" + quant_moe_report.report(data_dir / name, gpus[name], shipped_for,
                                                 loader.load_stack, loader.load_model)
            unseen = unseen_stacks.report(data_dir / name, gpus[name], shipped_for,
                                          loader.load_stack, loader.load_model)
            md += "\n" + unseen if unseen else ""
    outputs = [(report_path, md)] if report_path is not None else []
    if points_path is not None:
        outputs.append((points_path, report.to_csv(pts) if points_fmt == "csv"
                        else report.to_json(report.json_safe(pts))))
    if html_dir is not None:
        try:
            html_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise cannot(html_dir, exc) from None
        oos = [p for p in pts if p["evaluation"] == "leave-one-model-out"]
        outputs += [(html_dir / name, report.figure_html(fig)) for name, fig in (
            ("validation_scatter.html", report.scatter_figure(oos, "LOMO: predicted vs measured")),
            ("validation_error_vs_batch.html",
             report.error_vs_batch_figure(oos, "LOMO: error vs batch")))]
    report.write_all(outputs)     # all of them or none
    for path, _ in outputs:
        wrote(path)
    if piped:
        return
    if fmt is Fmt.json:
        _echo(report.to_json(pts))
    elif fmt is Fmt.csv:
        _echo(report.to_csv(pts).rstrip("\n"))
    else:
        _echo(md)
