"""Plotly figures of a step timeline and of validation errors."""

from __future__ import annotations

from collections.abc import Sequence

from gpusim.engine import Timeline

COLORS = {"host": "#8c564b", "sm": "#1f77b4", "hbm": "#ff7f0e", "link": "#2ca02c"}

def timeline_figure(tl: Timeline, title: str):
    """Plotly Gantt-style figure: host launches, SM busy, HBM busy, per kernel."""
    import plotly.graph_objects as go

    fig = go.Figure()
    lanes = ["host", "sm", "hbm"]
    multi = any(iv.gpu for iv in tl.intervals)
    if multi:  # a pipeline: each stage's GPU has its lanes, then its link
        gpus = sorted({iv.gpu for iv in tl.intervals})
        lanes = [f"gpu{g} {r}" for g in gpus for r in ("host", "sm", "hbm", "link")]
    for lane in lanes:
        ivs = [iv for iv in tl.intervals
               if (f"gpu{iv.gpu} {iv.resource}" if multi else iv.resource) == lane]
        if not ivs:
            continue
        fig.add_trace(go.Bar(
            base=[iv.start_s * 1e3 for iv in ivs],
            x=[(iv.end_s - iv.start_s) * 1e3 for iv in ivs],
            y=[lane] * len(ivs), orientation="h", name=lane,
            marker_color=COLORS[lane.split(" ")[-1]],
            customdata=[[iv.name, iv.layer, iv.bytes / 1e6, iv.flops / 1e9] for iv in ivs],
            hovertemplate=("%{customdata[0]} (layer %{customdata[1]})<br>start %{base:.4f} ms"
                           "<br>%{x:.4f} ms<br>%{customdata[2]:.2f} MB, "
                           "%{customdata[3]:.2f} GFLOP<extra></extra>"),
        ))
    fig.update_layout(title=title, barmode="overlay", xaxis_title="time (ms)",
                      yaxis={"categoryorder": "array", "categoryarray": lanes[::-1]},
                      height=360)
    return fig


def scatter_figure(points: Sequence[dict[str, object]], title: str):
    """Predicted against measured (log-log), one trace per (gpu, mode, launch)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    keys = sorted({(str(p["gpu"]), str(p["mode"]), str(p["launch"])) for p in points})
    for key in keys:
        sel = [p for p in points if (p["gpu"], p["mode"], p["launch"]) == key]
        fig.add_trace(go.Scatter(
            x=[p["measured_ms"] for p in sel], y=[p["predicted_ms"] for p in sel],
            mode="markers", name=" ".join(key),
            text=[f"{p['model']} b={p['batch']} ctx={p['ctx']} q={p['q']}" for p in sel],
            hovertemplate="%{text}<br>measured %{x:.3f} ms<br>predicted %{y:.3f} ms"))
    lo = min((float(p["measured_ms"]) for p in points), default=0.01)
    hi = max((float(p["measured_ms"]) for p in points), default=1.0)
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x",
                             line={"dash": "dash", "color": "gray"}))
    fig.update_layout(title=title, xaxis_type="log", yaxis_type="log",
                      xaxis_title="measured (ms)", yaxis_title="predicted (ms)", height=600)
    return fig


def error_vs_batch_figure(points: Sequence[dict[str, object]], title: str):
    """Relative error against batch size, one trace per (gpu, mode, launch)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    keys = sorted({(str(p["gpu"]), str(p["mode"]), str(p["launch"])) for p in points})
    for key in keys:
        sel = [p for p in points if (p["gpu"], p["mode"], p["launch"]) == key]
        fig.add_trace(go.Scatter(
            x=[p["batch"] for p in sel], y=[100 * float(p["error"]) for p in sel],
            mode="markers", name=" ".join(key),
            text=[f"{p['model']} ctx={p['ctx']} q={p['q']}" for p in sel]))
    fig.update_layout(title=title, xaxis_type="log", xaxis_title="batch",
                      yaxis_title="error (%)", height=500)
    return fig
