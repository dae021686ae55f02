"""Tables and Plotly figures. Formats what the library computed; computes nothing."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from gpusim.engine import Timeline

COLORS = {"host": "#8c564b", "sm": "#1f77b4", "hbm": "#ff7f0e"}


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (temp file + rename).

    Raises ConfigError (``path: cannot write: reason``) when the path cannot be
    written: its directory is missing, it is a directory, no permission, disk full.
    A temp file is never left behind and an existing ``path`` is then unchanged.
    """
    from gpusim.errors import cannot

    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise cannot(path, IsADirectoryError(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    except OSError as exc:
        raise cannot(path, exc) from None
    try:
        # mkstemp creates the file 0600: give it the usual umask-based mode
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise cannot(path, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_csv(rows: Sequence[dict[str, object]], columns: Sequence[str] | None = None) -> str:
    """Rows of dicts -> CSV text (floats to 6 significant digits)."""
    cols = list(columns or (rows[0].keys() if rows else []))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow([fmt(r.get(c, "")) for c in cols])
    return buf.getvalue()


def to_json(obj: object) -> str:
    """JSON text, keys in insertion order, 2-space indent, trailing newline."""
    return json.dumps(obj, indent=2, default=_json_default) + "\n"


def json_safe(obj: object) -> object:
    """NaN and infinities as None, recursively, so the result is valid JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _json_default(o: object) -> object:
    if hasattr(o, "tolist"):
        return o.tolist()  # numpy scalars and arrays
    raise TypeError(f"cannot encode {type(o).__name__}")


def fmt(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


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


def timeline_figure(tl: Timeline, title: str):
    """Plotly Gantt-style figure: host launches, SM busy, HBM busy, per kernel."""
    import plotly.graph_objects as go

    fig = go.Figure()
    lanes = ["host", "sm", "hbm"]
    for lane in lanes:
        ivs = [iv for iv in tl.intervals if iv.resource == lane]
        if not ivs:
            continue
        fig.add_trace(go.Bar(
            base=[iv.start_s * 1e3 for iv in ivs],
            x=[(iv.end_s - iv.start_s) * 1e3 for iv in ivs],
            y=[lane] * len(ivs), orientation="h", name=lane,
            marker_color=COLORS[lane],
            customdata=[[iv.name, iv.layer, iv.bytes / 1e6, iv.flops / 1e9] for iv in ivs],
            hovertemplate=("%{customdata[0]} (layer %{customdata[1]})<br>start %{base:.4f} ms"
                           "<br>%{x:.4f} ms<br>%{customdata[2]:.2f} MB, "
                           "%{customdata[3]:.2f} GFLOP<extra></extra>"),
        ))
    fig.update_layout(title=title, barmode="overlay", xaxis_title="time (ms)",
                      yaxis={"categoryorder": "array", "categoryarray": lanes[::-1]},
                      height=360)
    return fig


def write_html(fig, path: Path) -> None:
    """Write a self-contained Plotly HTML file atomically (a fixed div id, not Plotly's
    random one: the same figure writes the same bytes)."""
    write_atomic(Path(path), fig.to_html(include_plotlyjs=True, full_html=True,
                                         div_id="gpusim-figure"))


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
