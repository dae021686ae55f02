"""Running a sweep: check every point, skip those the ledger has, hand the rest to an
executor in chunks, record each chunk as it finishes, and return the rows in point
order (``SweepResult``). The rows depend on the grid alone: not on the executor, the
worker count, the chunking, the order chunks finish in, or whether a point was reused.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass

from gpusim.errors import bad
from gpusim.sweep import store
from gpusim.sweep.evaluate import PointError, prepare, run_chunk
from gpusim.sweep.grid import Grid, Point

# points per task, at most: a step point takes a millisecond, a serving run seconds
MAX_CHUNK = {"step": 256, "spec": 64, "serve": 1}
TASKS_PER_WORKER = 4
IN_FLIGHT_PER_WORKER = 2   # tasks submitted ahead of their results, per worker


@dataclass(frozen=True)
class SweepResult:
    """The rows in point order, and how many points ran now or came from the ledger."""

    grid: Grid
    rows: list[dict[str, object]]
    computed: int
    reused: int

    @property
    def failed(self) -> list[dict[str, object]]:
        """Rows of points that could not run (``status`` error)."""
        return [r for r in self.rows if r.get("status") != "ok"]

    def csv_text(self) -> str:
        return store.csv_text(self.rows)


def check(grid: Grid, points: list[Point]) -> None:
    """Resolve every point's names and files before anything runs. Raises ConfigError
    at the grid line of the value to blame (or the named file's own error)."""
    for point in points:
        try:
            prepare(grid.simulation, point.params, grid.base_dir)
        except PointError as exc:
            if exc.file is not None and exc.key in point.params:
                raise exc.file from None
            field, line = grid.where(exc.key, point.positions.get(exc.key))
            if exc.key not in point.params:   # a default: blame the grid as a whole
                raise bad(grid.source, exc.reason, field=field,
                          line=grid.lines.get(("grid",))) from None
            value = point.params[exc.key]
            if str(value) in exc.reason:      # the reason shows it already
                raise bad(grid.source, exc.reason, field=field, line=line) from None
            raise bad(grid.source, exc.reason, field=field, line=line, value=value) from None


def chunked(points: list[Point], simulation: str, workers: int) -> list[list[Point]]:
    """``points`` in chunks of consecutive points: about TASKS_PER_WORKER chunks per
    worker, no more than MAX_CHUNK[simulation] points each."""
    if not points:
        return []
    size = max(1, min(MAX_CHUNK[simulation],
                      math.ceil(len(points) / (workers * TASKS_PER_WORKER))))
    return [points[i:i + size] for i in range(0, len(points), size)]


def run_sweep(grid: Grid, executor: Executor, workers: int = 1,
              ledger: store.Ledger | None = None,
              progress: Callable[[int, int], None] | None = None) -> SweepResult:
    """Every point of ``grid``: those in ``ledger`` reused, the others run on
    ``executor`` (about ``workers`` in parallel) and appended to the ledger as their
    chunk finishes. ``progress(done, total)`` is called as points finish. Raises
    ConfigError for a bad point (before anything runs) or an unusable ledger; a stop
    (KeyboardInterrupt) cancels what has not started and leaves finished points in the
    ledger."""
    points = grid.points()
    check(grid, points)
    done = ledger.load() if ledger is not None else {}
    todo = [p for p in points if p.key not in done]
    records = {p.index: done[p.key] for p in points if p.key in done}
    reused = len(records)
    if progress is not None:
        progress(reused, len(points))
    pending: set[Future[list[tuple[int, dict[str, object]]]]] = set()

    def finish(done_now: set[Future[list[tuple[int, dict[str, object]]]]]) -> None:
        for future in done_now:
            finished = [(i, store.normalized(rec)) for i, rec in future.result()]
            if ledger is not None:
                ledger.append((points[i].key, rec) for i, rec in finished)
            records.update(finished)
        if progress is not None:
            progress(len(records), len(points))

    try:   # a window of tasks in flight: results are recorded as they come
        for chunk in chunked(todo, grid.simulation, workers):
            pending.add(executor.submit(run_chunk, grid.simulation, str(grid.base_dir),
                                        [(p.index, p.params, p.seed) for p in chunk]))
            if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
                done_now, pending = wait(pending, return_when=FIRST_COMPLETED)
                finish(done_now)
        while pending:
            done_now, pending = wait(pending, return_when=FIRST_COMPLETED)
            finish(done_now)
    except BaseException:
        for f in pending:
            f.cancel()
        raise
    missing = [p.index for p in points if p.index not in records]
    if missing:   # an executor that lost a task without saying so
        raise RuntimeError(f"the executor returned no result for {len(missing)} points")
    rows = [store.row(p, records[p.index]) for p in points]
    return SweepResult(grid, rows, len(points) - reused, reused)
