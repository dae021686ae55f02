"""A progress bar on stderr for long runs (simulated seconds against the window)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def progress_bar(total_s: float, quiet: bool = False
                 ) -> Iterator[Callable[[float], None] | None]:
    """Yield a callback taking the simulated time, or None when stderr is not a
    terminal or ``quiet``; the bar disappears when the run ends."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("simulating"), BarColumn(),
               TextColumn("{task.completed:,.0f} / {task.total:,.0f} simulated s"),
               TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("serve", total=total_s)
        yield lambda now_s: bar.update(task, completed=min(now_s, total_s))
