"""Tables: rich tables for the terminal, markdown for reports."""

from __future__ import annotations

import math
from collections.abc import Sequence

from gpusim.report.files import fmt


def rich_table(title: str, rows: Sequence[dict[str, object]], columns: Sequence[str]):
    """A rich Table of ``rows`` in human units (``cell``); label columns (text)
    left-aligned, numbers right-aligned. Imported lazily: only the CLI prints tables."""
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for c in columns:
        values = [r.get(c) for r in rows]
        text = any(isinstance(v, str) for v in values) and not any(
            isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        # a number too wide for its column folds onto a second line: never cut to "…"
        table.add_column(c, justify="left" if text else "right", no_wrap=text,
                         overflow="ellipsis" if text else "fold")
    for r in rows:
        table.add_row(*[cell(c, r.get(c)) for c in columns])
    return table


def _is_percent(column: str) -> bool:
    """Columns holding a fraction of 1 shown as a percentage: shares, fractions,
    relative errors."""
    name = column.lower()
    return (name in ("share", "mape") or name.endswith(("_share", "_fraction", " err"))
            or "mape" in name.replace(" ", "_").split("_") or name.endswith("fraction"))


def sig3(v: float) -> str:
    """``v`` to 3 significant digits without an exponent (``0.00307``, ``2.25``,
    ``131``); 1000 and above as a whole number with thousands separators."""
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    decimals = 2 - math.floor(math.log10(abs(v)))
    return f"{v:.{min(decimals, 12)}f}"


def human_bytes(v: float) -> str:
    """A byte count in decimal units, stated: ``16.1 GB``, ``131 kB``, ``512 B``."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(v) >= size:
            return f"{sig3(v / size)} {unit}"
    return f"{v:.0f} B"


def cell(column: str, v: object) -> str:
    """One table cell in human units: nothing or NaN as ``-``; a ``*_ms`` column to 3
    significant digits; a share, fraction or relative error as a percentage; bytes
    with their unit (decimal: 1 GB = 1e9 B); other numbers to 4 significant digits."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-" if v is None or v != v else ("inf" if v > 0 else "-inf")
    if isinstance(v, bool) or not isinstance(v, int | float):
        return fmt(v)
    name = column.lower()
    if _is_percent(name) and isinstance(v, float):
        return f"{sig3(100 * v)}%"
    if name == "bytes" or name.endswith("_bytes"):
        return human_bytes(float(v))
    if isinstance(v, int):
        return str(v)
    if name == "ms" or name.endswith(("_ms", "_pct")) or (
            name.endswith("_s") and not name.endswith("per_s")):
        return sig3(v)
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return f"{v:,.0f}" if abs(v) >= 1e4 else sig3(v) if abs(v) < 1e-3 else f"{v:.4g}"


def markdown_table(rows: Sequence[dict[str, object]], columns: Sequence[str],
                   percent: Sequence[str] = ()) -> str:
    """A GitHub markdown table; columns in ``percent`` shown as percentages."""
    head = "| " + " | ".join(columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = []
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c, "")
            if c in percent and isinstance(v, float):
                cells.append("n/a" if v != v else f"{100 * v:.1f}%")
            elif isinstance(v, float):
                cells.append(f"{v:.4g}")
            else:
                cells.append(str(v))
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, sep, *body])
