"""Formats what the library computed, computes nothing: tables, CSV/JSON files and
Plotly figures (one module per output kind; speculative and serving outputs in their
own modules)."""

from gpusim.report.figures import COLORS, error_vs_batch_figure, scatter_figure, timeline_figure
from gpusim.report.files import (
    check_writable,
    check_writable_dir,
    columns_to_csv,
    figure_html,
    fmt,
    is_stdout,
    json_safe,
    to_csv,
    to_json,
    write_all,
    write_atomic,
    write_html,
)
from gpusim.report.tables import markdown_table, rich_table

__all__ = ["COLORS", "check_writable", "check_writable_dir", "columns_to_csv",
           "error_vs_batch_figure", "figure_html", "fmt", "is_stdout", "json_safe",
           "markdown_table", "rich_table",
           "scatter_figure", "timeline_figure", "to_csv", "to_json", "write_all",
           "write_atomic", "write_html"]
