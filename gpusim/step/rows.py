"""The ``predict`` CSV contract: rows of (model, mode, batch, ctx, q[, tp]) -> predictions.
A row's ``tp`` (blank or absent: the platform's) sets its tensor-parallel degree.

Reads and checks the rows (file:line: field errors), groups them by (model, mode) so
each group is one vectorised fast-path call, and returns the rows in input order with
``predicted_ms`` and a breakdown.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from gpusim.capacity import check_context, context_overflow, memory_plan
from gpusim.errors import ConfigError, FieldError, bad, read_text
from gpusim.kernels import check_shape
from gpusim.kernels.quant import for_stack
from gpusim.platform import Platform
from gpusim.specs import ModelSpec
from gpusim.specs.enums import ROW_MODES as MODES
from gpusim.specs.model import KV_DTYPES, WEIGHT_DTYPES
from gpusim.step.predict import predict

REQUIRED = ("model", "mode", "batch", "ctx", "q")
OPTIONAL = ("tp", "weight_dtype", "kv_dtype")
OUTPUT_COLUMNS = ("predicted_ms", "gpu_ms", "host_bound", "launches", "weight_bytes",
                  "kv_bytes", "flops", "achieved_bandwidth_gb_per_s", "roofline_ms",
                  "bound", "stack", "band_pct", "band_low_ms", "band_high_ms", "envelope")
# the last four: the calibration's held-out error band around predicted_ms and whether
# the row lies inside what it was measured on (cost.trust; appended, docs/PREDICT_CSV.md)


@dataclass(frozen=True)
class Row:
    line: int
    model: str
    mode: str
    batch: int
    ctx: int
    q: int
    tp: int
    raw: dict[str, str]
    # the projections' and the KV cache's dtype (None, a blank cell: the model's as the
    # stack runs it; kernels.quant.for_stack)
    weight_dtype: str | None = None
    kv_dtype: str | None = None


def _choice(source: str, line: int, name: str, text: str | None,
            allowed: tuple[str, ...]) -> str | None:
    if not text:
        return None
    if text not in allowed:
        raise bad(source, f"must be one of {', '.join(allowed)}", field=name, line=line,
                  value=text)
    return text


def _int_field(source: str, line: int, name: str, text: str, low: int) -> int:
    try:
        value = float(text)
    except ValueError:
        raise bad(source, f"must be an integer >= {low}", field=name, line=line,
                  value=text) from None
    if not np.isfinite(value) or value != int(value) or value < low:
        raise bad(source, f"must be an integer >= {low}", field=name, line=line, value=text)
    return int(value)


def read_rows(path: Path) -> tuple[list[str], list[Row]]:
    """Parse rows.csv; returns (header, rows). Raises ConfigError with file:line."""
    source = str(path)
    text = read_text(path, "utf-8-sig")
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    if not header:
        raise bad(source, f"empty file; expected a header with {','.join(REQUIRED)}", line=1)
    reader.fieldnames = header
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise bad(source, f"missing column(s) {', '.join(missing)}; required: "
                  f"{','.join(REQUIRED)} (optional: {','.join(OPTIONAL)})", line=1)
    rows: list[Row] = []
    for rec in reader:
        line = reader.line_num
        if None in rec:
            raise bad(source, "more values than header columns", line=line)
        vals = {k: (v or "").strip() for k, v in rec.items()}
        if not any(vals.values()):
            continue
        mode = vals["mode"]
        if mode not in MODES:
            raise bad(source, f"must be one of {', '.join(MODES)}", field="mode", line=line,
                      value=mode)
        if not vals["model"]:
            raise bad(source, "must name a model", field="model", line=line)
        row = Row(line=line, model=vals["model"], mode=mode,
                  batch=_int_field(source, line, "batch", vals["batch"], 1),
                  ctx=_int_field(source, line, "ctx", vals["ctx"], 0),
                  q=_int_field(source, line, "q", vals["q"], 1),
                  tp=_int_field(source, line, "tp", vals.get("tp") or "1", 1),
                  raw=vals,
                  weight_dtype=_choice(source, line, "weight_dtype", vals.get("weight_dtype"),
                                       WEIGHT_DTYPES),
                  kv_dtype=_choice(source, line, "kv_dtype", vals.get("kv_dtype"), KV_DTYPES))
        try:
            check_shape(mode, np.array([row.batch], float), np.array([row.ctx], float),
                        np.array([row.q], float))
        except FieldError as exc:
            raise bad(source, str(exc), field=exc.field, line=line) from None
        rows.append(row)
    if not rows:
        raise bad(source, "no data rows after the header")
    return header, rows


# columns naming a setting the command takes from its options (--gpu, --stack,
# --launch), not per row: honoured where every cell agrees with the command's (a
# steps.csv's launch column under the same --launch), else refused
SETTING_COLUMNS = {"gpu": "--gpu", "stack": "--stack", "launch": "--launch"}
# columns that would change a step's time but that gpusim does not take per row; any
# other column (an id, a measured time) is carried to the output untouched
UNMODELLED_COLUMNS = {
    "pp": "give --pp", "ep": "give --ep", "micro_batches": "give --micro-batches",
    "dp": "predict one replica", "dtype": "use the weight_dtype column",
    "torch_dtype": "use the weight_dtype column",
    "quantization": "use the weight_dtype column", "calibration": "give --calibration",
    "draft": "use gpusim spec", "k": "use gpusim spec", "acceptance": "use gpusim spec"}


def check_columns(source: str, header: list[str], rows: list[Row],
                  settings: dict[str, str | tuple[str, ...]]) -> None:
    """Refuse a column gpusim cannot honour: one of UNMODELLED_COLUMNS, or a
    SETTING_COLUMNS cell other than the command's setting (``settings``: column -> the
    value, or the values, the command runs with). Raises ConfigError (file:line:
    column)."""
    for name in header:
        if name in UNMODELLED_COLUMNS:
            raise bad(source, f"column {name!r} cannot be honoured per row (it would "
                      f"be ignored): {UNMODELLED_COLUMNS[name]}; the columns read are "
                      f"{','.join(REQUIRED + OPTIONAL)} and {','.join(SETTING_COLUMNS)} "
                      "(equal to the command's), others are passed through",
                      field=name, line=1)
    for name, flag in SETTING_COLUMNS.items():
        if name not in header or name not in settings:
            continue
        want = settings[name]
        allowed = (want,) if isinstance(want, str) else want
        for r in rows:
            cell = r.raw.get(name, "")
            if cell and cell not in allowed:
                raise bad(source, f"this run predicts {flag} {allowed[0]} for every row; "
                          f"run the rows of {cell} with {flag} {cell}", field=name,
                          line=r.line, value=cell)


def _check_memory(platform: Platform, model: ModelSpec, rows: list[Row], tokens: np.ndarray,
                  source: str) -> None:
    """Raise ConfigError at the first row whose weights and KV exceed the HBM of the
    fullest GPU of its layout (field ``model`` when the weights alone do not fit)."""
    layout = platform.layout
    plan = memory_plan(platform.gpu, model, reserve_fraction=0.0, tp=layout.tp, pp=layout.pp)
    try:
        plan.check_weights()
    except ConfigError as exc:
        raise bad(source, exc.reason, field="model", line=rows[0].line) from None
    over = np.flatnonzero(tokens * plan.kv_bytes_per_token > plan.kv_capacity_bytes)
    if len(over):
        try:
            plan.check_tokens(tokens[over[:1]])
        except ConfigError as exc:
            raise bad(source, exc.reason, field="batch", line=rows[over[0]].line) from None


def predict_rows(rows: Iterable[Row], source: str, platform: Platform,
                 resolve_model: Callable[[str], ModelSpec]) -> list[dict[str, object]]:
    """Predictions for ``rows`` in input order; raises ConfigError naming the row."""
    rows = list(rows)
    groups: dict[tuple[str, str, int, str | None, str | None], list[int]] = {}
    base = platform
    for i, r in enumerate(rows):
        tp = r.tp if r.raw.get("tp") else base.layout.tp
        groups.setdefault((r.model, r.mode, tp, r.weight_dtype, r.kv_dtype), []).append(i)
    out: list[dict[str, object]] = [{} for _ in rows]
    stack_name = platform.stack.name
    peak_bw = platform.gpu.hbm_bandwidth_bytes_per_s
    for (model_name, mode, tp, weight_dtype, kv_dtype), idx in groups.items():
        first = rows[idx[0]]
        try:
            # the model as the stack runs it, in the row's dtypes
            model = for_stack(resolve_model(model_name), base.stack, weight_dtype, kv_dtype)
        except ConfigError as exc:
            raise bad(source, str(exc), field="model", line=first.line) from None
        except FieldError as exc:  # a dtype the stack's kernels cannot run
            raise bad(source, str(exc), field=exc.field, line=first.line) from None
        b = np.array([rows[i].batch for i in idx], float)
        c = np.array([rows[i].ctx for i in idx], float)
        q = np.array([rows[i].q for i in idx], float)
        try:
            platform = (base if tp == base.layout.tp else
                        base.with_layout(replace(base.layout, tp=tp)))
            over = context_overflow(model, c, q)
            if len(over):
                try:
                    check_context(model, c[over], q[over])
                except ConfigError as exc:
                    raise bad(source, exc.reason, field="ctx",
                              line=rows[idx[over[0]]].line) from None
            _check_memory(platform, model, [rows[i] for i in idx], b * (c + q), source)
            p = predict(platform, model, mode, b, c, q)
        except FieldError as exc:  # a layout the model or the GPU does not allow
            raise bad(source, str(exc), field=exc.field, line=first.line) from None
        peak_flops = platform.gpu.matmul_peak_flops_per_s(model.dtype)
        w_bytes = np.broadcast_to(p.weight_bytes, b.shape)
        kv_bytes = np.broadcast_to(p.kv_bytes, b.shape)
        roof = np.maximum(p.total.bytes / peak_bw, p.total.flops / peak_flops)
        bound = np.where(p.host_bound, "launch",
                         np.where(p.total.bytes / peak_bw >= p.total.flops / peak_flops,
                                  "memory", "compute"))
        # one .tolist() per column: Python floats without a numpy scalar per cell
        cols = {
            "predicted_ms": (p.seconds * 1e3).tolist(),
            "gpu_ms": (p.gpu_s * 1e3).tolist(),
            "host_bound": p.host_bound.tolist(),
            "weight_bytes": np.asarray(w_bytes, dtype=float).tolist(),
            "kv_bytes": np.asarray(kv_bytes, dtype=float).tolist(),
            "flops": p.total.flops.tolist(),
            "achieved_bandwidth_gb_per_s": (p.total.bytes / p.seconds / 1e9).tolist(),
            "roofline_ms": (roof * 1e3).tolist(),
            "bound": bound.tolist(),
        }
        trust = platform.assess_many(model.param_count, mode, [rows[i].batch for i in idx],
                                     [rows[i].ctx for i in idx], [rows[i].q for i in idx])
        for j, i in enumerate(idx):
            out[i] = {
                "predicted_ms": cols["predicted_ms"][j],
                "gpu_ms": cols["gpu_ms"][j],
                "host_bound": cols["host_bound"][j],
                "launches": p.launches,
                "weight_bytes": cols["weight_bytes"][j],
                "kv_bytes": cols["kv_bytes"][j],
                "flops": cols["flops"][j],
                "achieved_bandwidth_gb_per_s": cols["achieved_bandwidth_gb_per_s"][j],
                "roofline_ms": cols["roofline_ms"][j],
                "bound": cols["bound"][j],
                "stack": stack_name,
                **trust[j].as_dict(cols["predicted_ms"][j]),
            }
            out[i].pop("no_band", None)  # "envelope: unknown" says it in the CSV
            for k in ("band_pct", "band_low_ms", "band_high_ms"):
                out[i][k] = "" if out[i][k] is None else out[i][k]  # a blank cell
    return out


