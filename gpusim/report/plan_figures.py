"""Plotly HTML of a capacity plan: cost against p99 TTFT and p99 TPOT for every
simulated deployment (by GPU type; hollow where it missed an SLO), the screen's
candidates faintly behind them, the Pareto front and the winner, the SLO targets as
lines. Deterministic (a fixed div id): the same plan gives the same bytes."""

from __future__ import annotations

import math
from typing import Any

from gpusim.plan import PlanResult
from gpusim.plan.pareto import latest

DIV_ID = "gpusim-plan"


def plan_figure(res: PlanResult, title: str) -> Any:
    """Two panels sharing the cost axis: TTFT p99 and TPOT p99 against $/hour."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.08, subplot_titles=(
        "TTFT p99 against cost", "TPOT p99 against cost"))
    gpus = list(dict.fromkeys(hw.gpu_name for hw in res.request.hardware))
    palette = qualitative.Plotly
    color = {g: palette[i % len(palette)] for i, g in enumerate(gpus)}
    verdicts = latest(res.main.verdicts)
    for g in gpus:
        screened = [r for r in res.main.screened
                    if r.option.gpu_name == g and r.replicas is not None
                    and math.isfinite(r.ttft_p99_s)]
        mine = [v for v in verdicts if v.deployment.option.gpu_name == g]
        for col, attr, scale in ((1, "ttft_p99_s", 1.0), (2, "tpot_p99_s", 1e3)):
            if screened:
                fig.add_trace(go.Scatter(
                    x=[r.cost_per_hour for r in screened],
                    y=[getattr(r, attr) * scale for r in screened], mode="markers",
                    name=f"{g} (screen)", legendgroup=f"{g}-screen", showlegend=col == 1,
                    marker={"color": color[g], "opacity": 0.25, "size": 6},
                    text=[f"{r.option.key} seqs {r.limits.max_num_seqs} tokens "
                          f"{r.limits.max_num_batched_tokens} x{r.replicas}"
                          for r in screened], hoverinfo="text+x+y"), row=1, col=col)
            if mine:
                fig.add_trace(go.Scatter(
                    x=[v.cost_per_hour for v in mine],
                    y=[getattr(v, attr) * scale for v in mine], mode="markers",
                    name=f"{g} (simulated)", legendgroup=g, showlegend=col == 1,
                    marker={"color": color[g], "size": 11,
                            "symbol": ["circle" if v.meets else "circle-open" for v in mine]},
                    text=[v.deployment.describe() + ("" if v.meets else f": {v.miss}")
                          for v in mine], hoverinfo="text+x+y"), row=1, col=col)
    front = res.front
    for col, attr, scale in ((1, "ttft_p99_s", 1.0), (2, "tpot_p99_s", 1e3)):
        if front:
            fig.add_trace(go.Scatter(
                x=[v.cost_per_hour for v in front], y=[getattr(v, attr) * scale for v in front],
                mode="lines", name="Pareto front", legendgroup="front", showlegend=col == 1,
                line={"color": "#444", "dash": "dot", "shape": "hv"}), row=1, col=col)
        w = res.winner
        if w is not None:
            fig.add_trace(go.Scatter(
                x=[w.cost_per_hour], y=[getattr(w, attr) * scale], mode="markers",
                name="winner", legendgroup="winner", showlegend=col == 1,
                marker={"symbol": "star", "size": 18, "color": "gold",
                        "line": {"color": "black", "width": 1}},
                text=[w.deployment.describe()], hoverinfo="text+x+y"), row=1, col=col)
        target = getattr(res.request.slo, attr) * scale
        if math.isfinite(target):
            fig.add_hline(y=target, line={"color": "#d62728", "dash": "dash"},
                          annotation_text="SLO", row=1, col=col)
    fig.update_xaxes(title_text="cost ($/hour, list rental prices)", row=1, col=1)
    fig.update_xaxes(title_text="cost ($/hour, list rental prices)", row=1, col=2)
    fig.update_yaxes(title_text="TTFT p99 (s)", type="log", row=1, col=1)
    fig.update_yaxes(title_text="TPOT p99 (ms)", type="log", row=1, col=2)
    fig.update_layout(title=title, height=600)
    return fig


def plan_html(res: PlanResult, title: str) -> str:
    """Self-contained HTML text of ``plan_figure``."""
    return plan_figure(res, title).to_html(include_plotlyjs=True, full_html=True,
                                           div_id=DIV_ID)
