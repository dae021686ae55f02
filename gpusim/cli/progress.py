"""Progress on stderr for long runs: a bar on a terminal, else a line every few
seconds (a log or a CI job sees the run is alive); nothing with ``--quiet``."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

FIRST_REPORT_S = 1.0    # a run shorter than this says nothing
EVERY_S = 5.0           # then a line this often when stderr is not a terminal

QuietOpt = Annotated[bool, typer.Option("--quiet", help="No progress on stderr.")]


def _line(text: str) -> None:
    print(f"gpusim: {text}", file=sys.stderr, flush=True)


@contextmanager
def progress_bar(total_s: float, quiet: bool = False
                 ) -> Iterator[Callable[[float], None] | None]:
    """Yield a callback taking the simulated time (None when ``quiet``): a rich bar
    when stderr is a terminal (it disappears when the run ends), else a line
    ``simulated X of Y s`` after FIRST_REPORT_S and every EVERY_S seconds."""
    if quiet:
        yield None
        return
    if not sys.stderr.isatty():
        start = time.monotonic()
        due = [start + FIRST_REPORT_S]

        def tick(now_s: float) -> None:
            t = time.monotonic()
            if t >= due[0]:
                due[0] = t + EVERY_S
                _line(f"simulated {min(now_s, total_s):,.0f} of {total_s:,.0f} s "
                      f"({t - start:.0f} s elapsed)")
        yield tick
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("simulating"), BarColumn(),
               TextColumn("{task.completed:,.0f} / {task.total:,.0f} simulated s"),
               TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("serve", total=total_s)
        yield lambda now_s: bar.update(task, completed=min(now_s, total_s))


@contextmanager
def working(what: str, quiet: bool = False) -> Iterator[None]:
    """Within the block, say on stderr that ``what`` is still running: after
    FIRST_REPORT_S a spinner on a terminal, else a line ``WHAT: working, N s`` then
    every EVERY_S seconds. Nothing when ``quiet`` or when the block ends sooner."""
    if quiet:
        yield
        return
    done = threading.Event()
    start = time.monotonic()

    def lines() -> None:
        wait = FIRST_REPORT_S
        while not done.wait(wait):
            _line(f"{what}: working, {time.monotonic() - start:.0f} s")
            wait = EVERY_S

    def spinner() -> None:
        if done.wait(FIRST_REPORT_S):
            return
        from rich.console import Console

        with Console(stderr=True).status(f"{what}: working"):
            done.wait()

    thread = threading.Thread(target=spinner if sys.stderr.isatty() else lines,
                              daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=1.0)
