"""``gpusim collectives-validate``: the collective model against published
measurements (validation/COLLECTIVES.md), and the fit of a GPU's parameters."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from gpusim import report
from gpusim.cli.common import _echo, app, check_outputs
from gpusim.errors import bad
from gpusim.io import loader


@app.command("collectives-validate")
def collectives_validate(
    data_dir: Annotated[Path | None, typer.Option(
        "--data", help="Directory of published nccl_*.csv rows, one source per row "
        "(default: validation/data/published of gpusim's checkout).")] = None,
    report_path: Annotated[Path | None, typer.Option(
        "--report", help="Markdown report to write (without it: printed).")] = None,
    write_shipped: Annotated[bool, typer.Option(
        "--write-shipped", help="Replace the shipped report, validation/COLLECTIVES.md of "
        "gpusim's checkout (instead of --report).")] = False,
    fit_gpu: Annotated[str | None, typer.Option(
        "--fit", help="Fit this GPU's links.collectives to its all-reduce rows (8-GPU rows "
        "held out) and print the values; the report keeps the GPU files' values.")] = None,
) -> None:
    """Judge the collective model (gpusim/cost/collectives.py) on published figures."""
    from gpusim.calibration import collectives as coll
    from gpusim.cli.calibration import _explicit_output

    shown = str(data_dir) if data_dir is not None else "validation/data/published"
    data_dir = data_dir if data_dir is not None else loader.ROOT / shown
    if write_shipped:
        report_path = _explicit_output(report_path, True, "--report",
                                       loader.ROOT / "validation" / "COLLECTIVES.md")
    if fit_gpu is None:
        check_outputs({"--report": report_path})
    files = sorted(data_dir.glob("nccl_*.csv"))
    if not files:
        raise bad(str(data_dir), "no nccl_*.csv files found")
    points = [p for f in files for p in coll.read_published(f)]
    gpus = {name: loader.load_gpu(name) for name in sorted({p.gpu for p in points})}
    if fit_gpu is not None:
        g = loader.load_gpu(fit_gpu)
        try:
            params = coll.fit(g, points)
        except ValueError as exc:
            raise bad("--fit", str(exc)) from None
        _echo("\n".join(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}"
                        for k, v in params.model_dump().items()))
        return
    md = coll.markdown(coll.judge(gpus, points), gpus,
                       "gpusim collectives-validate --data " + shown)
    if report_path is None:
        _echo(md)
        return
    report.write_atomic(report_path, md)
    print(f"wrote {report_path}", file=sys.stderr)
