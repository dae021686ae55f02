"""``gpusim stack import`` and ``gpusim stack check``: stack files from profiler
traces, and a stack file compared with a trace kernel by kernel."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml

from gpusim import report
from gpusim.cli.common import (
    CalOpt,
    Fmt,
    FmtOpt,
    GpuOpt,
    ModeOpt,
    StackOpt,
    _echo,
    _print_table,
    app,
    check_outputs,
)
from gpusim.errors import bad
from gpusim.io import calibrations, loader
from gpusim.io.profile_trace import TracedStep, read_trace

stack_app = typer.Typer(no_args_is_help=True,
                        help="Stack files from torch.profiler traces of an engine.")
app.add_typer(stack_app, name="stack")

TraceArg = Annotated[list[Path], typer.Argument(
    help="Chrome trace(s) from torch.profiler's export_chrome_trace (.json or .json.gz), "
    "one per step shape (a decode and a verify step give both modes' attention kernels).",
    show_default=False)]
ModelOpt = Annotated[str, typer.Option("--model", help="The traced model's name or path.")]
StepsOpt = Annotated[int, typer.Option(
    "--steps", help="Forward steps each trace holds (the last, warm one is read).")]
TraceModeOpt = Annotated[ModeOpt | None, typer.Option(
    "--mode", help="The traced step's mode, for a trace of GPU kernels only (no "
    "recorded shapes); checked against the trace when it has shapes.")]


def _warm_step(path: Path, steps: int) -> TracedStep:
    return read_trace(path, steps)[-1]


def _as_config_error(path: Path, exc: ValueError) -> Exception:
    return bad(str(path), str(exc))


def stack_yaml(stack, sources: list[Path], model: str, notes: tuple[str, ...]) -> str:
    """The YAML text of an imported stack: a header saying where it came from and what
    the import assumed, then the stack's fields (defaults left out)."""
    head = [f"# {stack.name}: imported by `gpusim stack import` from "
            f"{', '.join(p.name for p in sources)} ({model})"]
    head += [f"# assumed: {n}" for n in notes]
    body = yaml.safe_dump(stack.model_dump(mode="json", exclude_defaults=True),
                          sort_keys=False, width=100)
    return "\n".join(head) + "\n" + body


@stack_app.command("import")
def import_(
    traces: TraceArg,
    model: ModelOpt,
    name: Annotated[str, typer.Option("--name", help="The new stack's name.")],
    out: Annotated[Path, typer.Option("--out", help="The stack file to write.")],
    steps: StepsOpt = 1,
    like: Annotated[str, typer.Option(
        "--like", help="Stack whose host costs, and attention families for modes no "
        "trace ran, the new stack takes.")] = loader.REFERENCE_STACK,
    mode: TraceModeOpt = None,
    fmt: FmtOpt = Fmt.table,
) -> None:
    """A stack file from profiler traces of an engine's forward steps."""
    from gpusim.stackgen.build import import_stack

    if not name.replace("-", "").replace("_", "").isalnum() or not name.islower():
        raise bad("--name", "lowercase letters, digits, '-' and '_' only", value=name)
    if out.stem != name or out.suffix not in (".yaml", ".yml"):
        # the loader resolves a stack by its file name and refuses a mismatch
        raise bad("--out", f"a stack named {name!r} is written to {name}.yaml",
                  value=str(out))
    check_outputs({"--out": out})
    m, base = loader.load_model(model), loader.load_stack(like)
    warm = [_warm_step(p, steps) for p in traces]
    try:
        imported = import_stack(warm, m, name, base,
                                given_mode=mode.value if mode is not None else None)
    except ValueError as exc:
        raise _as_config_error(traces[0], exc) from None
    report.write_atomic(out, stack_yaml(imported.stack, traces, m.name, imported.notes))
    rows = [{"section": sec, "op": op.name, "kind": op.op,
             "weight_or_tensor": op.weight or op.tensor or "",
             "kernels": op.kernels, "bytes_per_element": op.bytes_per_element}
            for sec in ("prologue", "layer", "epilogue")
            for op in getattr(imported.stack, sec)]
    if fmt is Fmt.json:
        _echo(report.to_json({"stack": name, "out": str(out), "modes": imported.modes,
                              "attention": imported.stack.attention,
                              "traced_launches": imported.launches,
                              "assumed": list(imported.notes), "ops": rows}))
    elif fmt is Fmt.csv:
        _echo(report.to_csv(rows).rstrip("\n"))
    else:
        _print_table(f"{name}: ops per step section", rows, list(rows[0]))
    for note in imported.notes:
        print(f"assumed: {note}", file=sys.stderr)
    families = ", ".join(f"{k} {v}" for k, v in imported.stack.attention.items())
    print(f"wrote {out}: traced {', '.join(imported.modes)} "
          f"({imported.launches} kernels per step); attention {families}", file=sys.stderr)


@stack_app.command("check")
def check(
    trace: Annotated[Path, typer.Argument(help="Chrome trace of the engine's steps.",
                                          show_default=False)],
    stack: StackOpt,
    model: ModelOpt,
    steps: StepsOpt = 1,
    gpu: GpuOpt = "h100-sxm",
    calibration: CalOpt = "auto",
    ctx: Annotated[int | None, typer.Option(
        "--ctx", help="Context before the traced step, where the trace cannot tell it "
        "(a static cache under a mask); default: keys attended less new tokens.")] = None,
    fmt: FmtOpt = Fmt.table,
) -> None:
    """Compare a stack file with a traced step, op by op: launches and kernel time."""
    from gpusim.stackgen.check import check_stack

    g, st, m = loader.load_gpu(gpu), loader.load_stack(stack), loader.load_model(model)
    cal = calibrations.load_calibration(calibration, g, st)
    step = _warm_step(trace, steps)
    try:
        res = check_stack(step, m, st, g, cal, ctx=ctx)
    except ValueError as exc:
        raise _as_config_error(trace, exc) from None
    rows = [{"section": r.section, "stack_ops": r.stack_ops, "traced_ops": r.traced_ops,
             "stack_kernels": r.stack_kernels, "traced_kernels": r.traced_kernels,
             "predicted_us": round(r.predicted_us, 2), "traced_us": round(r.traced_us, 2)}
            for r in res.rows]
    totals = {"stack": st.name, "mode": res.mode, "batch": res.batch, "q": res.q,
              "keys": res.keys, "stack_launches": res.stack_launches,
              "traced_launches": res.traced_launches,
              "predicted_kernel_us": round(res.predicted_us, 1),
              "traced_kernel_us": round(res.traced_us, 1)}
    if fmt is Fmt.json:
        _echo(report.to_json({**totals, "rows": rows}))
    elif fmt is Fmt.csv:
        _echo(report.to_csv(rows).rstrip("\n"))
    else:
        _print_table(f"{st.name} vs {trace.name} (one layer; prologue and epilogue)",
                     rows, list(rows[0]))
        _print_table("whole step", [totals], list(totals))
    if st.status == "described":
        print(f"stack {st.name}: described, not measured", file=sys.stderr)
