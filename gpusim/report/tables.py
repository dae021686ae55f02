"""Tables: rich tables for the terminal, markdown for reports."""

from __future__ import annotations

from collections.abc import Sequence

from gpusim.report.files import fmt


def rich_table(title: str, rows: Sequence[dict[str, object]], columns: Sequence[str]):
    """A rich Table of ``rows`` (imported lazily: only the CLI prints tables)."""
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for c in columns:
        table.add_column(c, justify="left" if c in ("op", "name", "bound", "model") else "right")
    for r in rows:
        table.add_row(*[_pretty(r.get(c, "")) for c in columns])
    return table


def _pretty(v: object) -> str:
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1e9:
            return f"{v / 1e9:.2f}G"
        if abs(v) >= 1e6:
            return f"{v / 1e6:.2f}M"
        if abs(v) < 0.01:
            return f"{v:.2e}"
        return f"{v:.3f}"
    return fmt(v)


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
