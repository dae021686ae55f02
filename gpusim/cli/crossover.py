"""``gpusim predict --crossover``: where quantized stacks stop beating a baseline."""

from __future__ import annotations

from gpusim import report
from gpusim.cli.common import Fmt, _echo, _print_table, flags
from gpusim.errors import bad
from gpusim.io import calibrations, loader
from gpusim.platform import Platform
from gpusim.specs import ModelSpec


def print_crossover(baseline: Platform, stacks: str, model: ModelSpec, ctx: int,
                    calibration: str, fmt: Fmt) -> None:
    """Decode step times of ``model`` on ``baseline``'s stack and on each of ``stacks``
    (comma-separated names or paths, each with its own ``--calibration``), and the
    batch each stops beating the baseline. Raises ConfigError for a bad stack list."""
    from gpusim.step.crossover import crossover

    names = [s.strip() for s in stacks.split(",") if s.strip()]
    if not names:
        raise bad("--crossover", "name at least one stack (e.g. torch-fp8,torch-int4)",
                  value=stacks)
    others = []
    for name in names:
        st = loader.load_stack(name)
        cal = calibrations.load_calibration(calibration, baseline.gpu, st)
        others.append(Platform(baseline.gpu, st, cal, baseline.launch, baseline.layout))
    with flags():
        table = crossover(baseline, others, model, ctx=ctx)
    if fmt is Fmt.json:
        _echo(report.to_json({"model": table.model, "gpu": table.gpu, "mode": table.mode,
                              "ctx": table.ctx, "baseline": table.baseline.stack,
                              "summary": table.summary(), "batches": table.rows()}))
    elif fmt is Fmt.csv:
        _echo(report.to_csv(table.rows()).rstrip("\n"))
    else:
        rows = table.rows()
        _print_table(f"{table.model} decode at ctx={table.ctx} on {table.gpu} "
                     f"({baseline.launch.value}): step ms and speedup over "
                     f"{table.baseline.stack} ({table.baseline.weights})", rows, list(rows[0]))
        summary = table.summary()
        _print_table("where each stops beating the baseline", summary, list(summary[0]))
