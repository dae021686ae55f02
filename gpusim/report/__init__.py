"""Formats what the library computed, computes nothing: tables, CSV/JSON files and
Plotly figures (one module per output kind; speculative and serving outputs in their
own modules)."""

from gpusim.report.figures import COLORS, error_vs_batch_figure, scatter_figure, timeline_figure
from gpusim.report.files import fmt, json_safe, to_csv, to_json, write_atomic, write_html
from gpusim.report.tables import markdown_table, rich_table

__all__ = ["COLORS", "error_vs_batch_figure", "fmt", "json_safe", "markdown_table",
           "rich_table", "scatter_figure", "timeline_figure", "to_csv", "to_json",
           "write_atomic", "write_html"]
