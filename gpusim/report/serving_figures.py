"""Plotly HTML report of a serving run: queue and KV cache over time, latency CDFs.

The HTML is deterministic (a fixed div id), so the same run gives the same bytes.
"""

from __future__ import annotations

from typing import Any

from gpusim import report
from gpusim.report.serving_output import title

DIV_ID = "gpusim-serve"


def serve_figure(summary: dict[str, Any]):
    """Three panels: queue length and running requests, KV utilisation, latency CDFs."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    s = report.json_safe(summary)
    ts = s["time_series"]
    fig = make_subplots(rows=3, cols=1, vertical_spacing=0.09, subplot_titles=(
        "requests waiting and running (time-weighted mean per bucket)",
        "KV cache utilisation", "latency CDFs"))
    for name, color in (("queue_length", "#d62728"), ("running", "#1f77b4")):
        fig.add_trace(go.Scatter(x=ts["t_s"], y=ts[name], mode="lines", name=name,
                                 line={"color": color}), row=1, col=1)
    fig.add_trace(go.Scatter(x=ts["t_s"], y=ts["kv_utilisation"], mode="lines",
                             name="kv_utilisation", line={"color": "#2ca02c"}), row=2, col=1)
    fig.add_trace(go.Scatter(x=ts["t_s"], y=ts["kv_utilisation_max"], mode="lines",
                             name="kv_utilisation (max)",
                             line={"color": "#2ca02c", "dash": "dot"}), row=2, col=1)
    for name, points in s["latency_cdf"].items():
        if points:
            fig.add_trace(go.Scatter(x=[p[0] * 1e3 for p in points], y=[p[1] for p in points],
                                     mode="lines", name=name.removesuffix("_s"),
                                     line={"shape": "hv"}), row=3, col=1)
    fig.update_xaxes(title_text="time (s)", row=1, col=1)
    fig.update_xaxes(title_text="time (s)", row=2, col=1)
    fig.update_xaxes(title_text="latency (ms)", type="log", row=3, col=1)
    fig.update_yaxes(title_text="requests", row=1, col=1)
    fig.update_yaxes(title_text="fraction", range=[0, 1.02], row=2, col=1)
    fig.update_yaxes(title_text="fraction <= x", range=[0, 1.02], row=3, col=1)
    fig.update_layout(title=title(s), height=1100)
    return fig


def serve_html(summary: dict[str, Any]) -> str:
    """Self-contained HTML text of ``serve_figure``."""
    return serve_figure(summary).to_html(include_plotlyjs=True, full_html=True,
                                         div_id=DIV_ID)
