"""``gpusim sweep``: a grid of step, speculative or serving simulations on a local
process pool or Dask, resumable, to CSV and Parquet."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from gpusim import report
from gpusim.cli.common import _echo, _print_table, app
from gpusim.errors import bad


class SweepFmt(StrEnum):
    csv = "csv"
    json = "json"
    table = "table"


@contextmanager
def _progress(total: int, quiet: bool) -> Iterator[Callable[[int, int], None] | None]:
    """Progress on stderr (points done of all): a rich bar on a terminal, else a line
    after a second and every few seconds; None when ``quiet``."""
    if quiet:
        yield None
        return
    if not sys.stderr.isatty():
        from gpusim.cli.progress import EVERY_S, FIRST_REPORT_S

        start = time.monotonic()
        due = [start + FIRST_REPORT_S]

        def tick(done: int, all_: int) -> None:
            now = time.monotonic()
            if now >= due[0]:
                due[0] = now + EVERY_S
                print(f"gpusim: swept {done} of {all_} points ({now - start:.0f} s)",
                      file=sys.stderr, flush=True)
        yield tick
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("sweeping"), BarColumn(), MofNCompleteColumn(),
               TextColumn("points"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("sweep", total=total)
        yield lambda done, all_: bar.update(task, completed=done, total=all_)


@app.command()
def sweep(
    grid_file: Annotated[Path, typer.Argument(
        metavar="GRID.yaml", help="The grid: simulation (step | spec | serve), seed, and "
        "grid: each key an option of that command (underscores), one value or a list.")],
    scheduler: Annotated[str | None, typer.Option(
        "--scheduler", help="Run on a Dask scheduler's workers (tcp://HOST:PORT; they need "
        "gpusim installed).")] = None,
    dask: Annotated[int | None, typer.Option(
        "--dask", help="Run on a local Dask cluster of N worker processes.")] = None,
    workers: Annotated[int | None, typer.Option(
        "--workers", help="Local worker processes (default: the CPUs; 1 runs in this "
        "process).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="results.csv to write (a .parquet file: as --parquet).")] = None,
    parquet: Annotated[Path | None, typer.Option(
        "--parquet", help="results.parquet to write (needs pyarrow).")] = None,
    ledger: Annotated[Path | None, typer.Option(
        "--ledger", help="Finished points, kept as they finish; a rerun skips them "
        "(default: --out's or --parquet's path + .ledger.jsonl).")] = None,
    fresh: Annotated[bool, typer.Option(
        "--fresh", help="Forget the ledger's finished points and run every point (a "
        "point is known by its parameters: use this after the simulator or its data "
        "files change).")] = False,
    fmt: Annotated[SweepFmt, typer.Option(
        "--format", help="stdout format when neither --out nor --parquet is given.")
    ] = SweepFmt.csv,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress on stderr.")] = False,
) -> None:
    """Run a grid of simulations; rows sorted by point, the same bytes for any executor.

    Example grid (gpusim sweep grid.yaml --out results.csv):

        simulation: step
        seed: 0
        grid:
          gpu:
            - h100-sxm
            - h200
          model: llama-3.1-8b
          batch: [1, 8, 64, 256]
          ctx: [1024, 16384]
    """
    from gpusim.sweep import store
    from gpusim.sweep.executors import dask_executor, local_executor
    from gpusim.sweep.grid import load_grid
    from gpusim.sweep.run import run_sweep

    chosen = [flag for flag, v in (("--scheduler", scheduler), ("--dask", dask),
                                   ("--workers", workers)) if v is not None]
    if len(chosen) > 1:
        raise bad(chosen[1], f"give one of --scheduler, --dask, --workers (also {chosen[0]})")
    if out is not None and out.suffix.lower() == ".parquet":
        if parquet is not None:
            raise bad("--out", "writes parquet (--parquet too): give one of them")
        out, parquet = None, out
    grid = load_grid(grid_file)
    if parquet is not None:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise bad("--parquet", "needs pyarrow: pip install 'gpusim[sweep]'") from None
    target = out or parquet
    files = [p for p in (out, parquet) if p is not None and str(p) != "-"]   # - : stdout
    ledger_path = ledger or (files[0].with_name(files[0].name + ".ledger.jsonl")
                             if files else None)
    if fresh and ledger_path is not None:
        ledger_path.unlink(missing_ok=True)
    book = store.Ledger(ledger_path) if ledger_path is not None else None
    runner: AbstractContextManager
    if scheduler is not None or dask is not None:
        runner = dask_executor(dask, scheduler)
    else:
        runner = local_executor(workers)
    start = time.perf_counter()
    try:
        with runner as (executor, n), _progress(grid.size, quiet) as tick:
            result = run_sweep(grid, executor, n, book, tick)
    except KeyboardInterrupt:
        kept = f"finished points are in {ledger_path}; run again to resume" \
            if ledger_path is not None else "give --out or --ledger to keep finished points"
        print(f"gpusim: sweep interrupted: {kept}", file=sys.stderr)
        raise SystemExit(130) from None
    elapsed = time.perf_counter() - start
    if out is not None:
        report.write_atomic(out, result.csv_text())
        print(f"wrote {out}", file=sys.stderr)
    if parquet is not None:
        store.write_parquet(parquet, result.rows)
        print(f"wrote {parquet}", file=sys.stderr)
    where = (f"the Dask scheduler {scheduler} ({n} workers)" if scheduler is not None
             else f"a local Dask cluster of {n} workers" if dask is not None
             else f"{n} local worker processes" if n > 1 else "this process")
    print(f"swept {len(result.rows)} {grid.simulation} points in {elapsed:.1f} s: "
          f"{result.computed} run on {where}, {result.reused} from the ledger",
          file=sys.stderr)
    if result.failed:
        first = result.failed[0]
        print(f"gpusim: warning: {len(result.failed)} points could not run (status error); "
              f"first: point {first['point']}: {first['error']}", file=sys.stderr)
    if target is None:
        if fmt is SweepFmt.json:
            _echo(report.to_json(result.rows))
        elif fmt is SweepFmt.table:
            _print_table(f"sweep {grid_file} ({grid.simulation})", result.rows,
                         store.columns(result.rows))
        else:
            _echo(result.csv_text().rstrip("\n"))
