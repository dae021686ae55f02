"""The ``predict`` CSV contract: rows of (model, mode, batch, ctx, q[, tp]) -> predictions.
A row's ``tp`` (blank or absent: the platform's) sets its tensor-parallel degree.

Reads and checks the rows (file:line: field errors), groups them by (model, mode) so
each group is one vectorised fast-path call, and returns the predictions as columns in
input order (``predicted_ms``, a breakdown, the error band and envelope): no record
per row, so a table of many shapes stays fast; ``cells`` turns them into a writer's
values.
"""

from __future__ import annotations

import csv
import io
import math
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
OPTIONAL = ("tp", "weight_dtype", "kv_dtype", "cache_len")
OUTPUT_COLUMNS = ("predicted_ms", "gpu_ms", "host_bound", "launches", "weight_bytes",
                  "kv_bytes", "flops", "achieved_bandwidth_gb_per_s", "roofline_ms",
                  "bound", "stack", "band_pct", "band_low_ms", "band_high_ms", "envelope")
# the last four: the calibration's held-out error band around predicted_ms and whether
# the row lies inside what it was measured on (cost.trust; appended, docs/PREDICT_CSV.md)


@dataclass(frozen=True, slots=True)
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
    # whether the row gave its tp (else the command's layout's)
    tp_given: bool = False
    # positions each KV cache holds (None, a blank cell: ctx + q); only a stack that
    # attends its whole static cache depends on it
    cache_len: int | None = None


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
        value = int(text)  # the common case, without a float's checks
    except ValueError:
        try:
            number = float(text)  # "8.0", "1e3"
        except ValueError:
            raise bad(source, f"must be an integer >= {low}", field=name, line=line,
                      value=text) from None
        if not math.isfinite(number) or number != int(number):
            raise bad(source, f"must be an integer >= {low}", field=name, line=line,
                      value=text) from None
        value = int(number)
    if value < low:
        raise bad(source, f"must be an integer >= {low}", field=name, line=line, value=text)
    return value


def _cache_len(source: str, line: int, text: str | None, ctx: int, q: int) -> int | None:
    """A row's ``cache_len`` cell (None: blank or absent). Raises ConfigError for one
    that cannot hold the row's ctx + q positions."""
    if not text:
        return None
    value = _int_field(source, line, "cache_len", text, 1)
    if value < ctx + q:
        raise bad(source, f"must hold ctx + q = {ctx + q} positions", field="cache_len",
                  line=line, value=text)
    return value


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
        # in column order, so a row's first bad cell is the one named
        batch = _int_field(source, line, "batch", vals["batch"], 1)
        ctx = _int_field(source, line, "ctx", vals["ctx"], 0)
        q = _int_field(source, line, "q", vals["q"], 1)
        row = Row(line=line, model=vals["model"], mode=mode, batch=batch, ctx=ctx, q=q,
                  tp=_int_field(source, line, "tp", vals.get("tp") or "1", 1),
                  raw=vals, tp_given=bool(vals.get("tp")),
                  weight_dtype=_choice(source, line, "weight_dtype", vals.get("weight_dtype"),
                                       WEIGHT_DTYPES),
                  kv_dtype=_choice(source, line, "kv_dtype", vals.get("kv_dtype"), KV_DTYPES),
                  cache_len=_cache_len(source, line, vals.get("cache_len"), ctx, q))
        rows.append(row)
    if not rows:
        raise bad(source, "no data rows after the header")
    _check_shapes(source, rows)
    return header, rows


def _check_shapes(source: str, rows: list[Row]) -> None:
    """Raise ConfigError at the first row (in file order) whose shape its mode does not
    allow (``kernels.check_shape``): checked as arrays per mode, row by row only to
    find a bad one."""
    def shape(rs: list[Row]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(np.array([getattr(r, k) for r in rs], float)  # type: ignore[return-value]
                     for k in ("batch", "ctx", "q"))
    try:
        for mode in {r.mode for r in rows}:
            check_shape(mode, *shape([r for r in rows if r.mode == mode]))
    except FieldError:
        for r in rows:
            try:
                check_shape(r.mode, *shape([r]))
            except FieldError as exc:
                raise bad(source, str(exc), field=exc.field, line=r.line) from None


# the ``bound`` column's words, indexed 0 (host launches), 1 (HBM), 2 (arithmetic)
BOUNDS = np.array(["launch", "memory", "compute"], dtype=object)
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


def _check_memory(platform: Platform, model: ModelSpec, lines: Callable[[int], int],
                  tokens: np.ndarray, source: str) -> None:
    """Raise ConfigError at the first row whose weights and KV exceed the HBM of the
    fullest GPU of its layout (field ``model`` when the weights alone do not fit);
    ``lines``: a row's file line by its index among ``tokens``."""
    layout = platform.layout
    plan = memory_plan(platform.gpu, model, reserve_fraction=0.0, tp=layout.tp, pp=layout.pp)
    try:
        plan.check_weights()
    except ConfigError as exc:
        raise bad(source, exc.reason, field="model", line=lines(0)) from None
    over = np.flatnonzero(tokens * plan.kv_bytes_per_token > plan.kv_capacity_bytes)
    if len(over):
        try:
            plan.check_tokens(tokens[over[:1]])
        except ConfigError as exc:
            raise bad(source, exc.reason, field="batch", line=lines(int(over[0]))) from None


def predict_rows(rows: Iterable[Row], source: str, platform: Platform,
                 resolve_model: Callable[[str], ModelSpec]) -> dict[str, np.ndarray]:
    """Predictions for ``rows`` as columns: OUTPUT_COLUMNS -> a numpy array, one value
    per row in input order (NaN band cells: no band; ``cells`` writes them blank).
    Raises ConfigError naming the row."""
    rows = list(rows)
    n = len(rows)
    groups: dict[tuple[str, str, int, str | None, str | None], list[int]] = {}
    base = platform
    base_tp = base.layout.tp
    for i, r in enumerate(rows):
        key = (r.model, r.mode, r.tp if r.tp_given else base_tp, r.weight_dtype, r.kv_dtype)
        members = groups.get(key)
        if members is None:
            groups[key] = [i]
        else:
            members.append(i)
    models: dict[tuple[str, str | None, str | None], ModelSpec] = {}
    # three flat lists convert in C; a list of tuples goes through numpy's slow path
    batch, ctx, q = np.array([[r.batch for r in rows], [r.ctx for r in rows],
                              [r.q for r in rows]], float).reshape(3, n)
    # a static cache attended whole: its length (else ctx + q, which the others attend)
    static = base.stack.attends_allocated_cache
    cache = (np.array([r.ctx + r.q if r.cache_len is None else r.cache_len for r in rows],
                      float) if static else None)
    # each group's results are scattered into whole-table columns: no record per row
    # (a table of a million shapes)
    num = {k: np.empty(n) for k in ("predicted_ms", "gpu_ms", "weight_bytes", "kv_bytes",
                                     "flops", "achieved_bandwidth_gb_per_s", "roofline_ms",
                                     "band_pct", "band_low_ms", "band_high_ms")}
    host_bound = np.empty(n, bool)
    launches = np.empty(n, np.int64)
    text = {k: np.empty(n, object) for k in ("bound", "envelope")}
    peak_bw = platform.gpu.hbm_bandwidth_bytes_per_s
    for (model_name, mode, tp, weight_dtype, kv_dtype), members in groups.items():
        idx = np.array(members)
        first = rows[members[0]]
        try:
            # the model as the stack runs it, in the row's dtypes (once for its modes)
            model = models.get((model_name, weight_dtype, kv_dtype))
            if model is None:
                model = models[model_name, weight_dtype, kv_dtype] = for_stack(
                    resolve_model(model_name), base.stack, weight_dtype, kv_dtype)
        except ConfigError as exc:
            raise bad(source, str(exc), field="model", line=first.line) from None
        except FieldError as exc:  # a dtype the stack's kernels cannot run
            raise bad(source, str(exc), field=exc.field, line=first.line) from None
        b, c, qq = batch[idx], ctx[idx], q[idx]
        try:
            platform = (base if tp == base.layout.tp else
                        base.with_layout(replace(base.layout, tp=tp)))
            over = context_overflow(model, c, qq)
            if len(over):
                try:
                    check_context(model, c[over], qq[over])
                except ConfigError as exc:
                    raise bad(source, exc.reason, field="ctx",
                              line=rows[members[over[0]]].line) from None
            held = c + qq if cache is None else cache[idx]
            _check_memory(platform, model, lambda j, m=members: rows[m[j]].line,
                          b * held, source)
            p = predict(platform, model, mode, b, c, qq,
                        cache_len=None if cache is None else held)
        except FieldError as exc:  # a layout the model or the GPU does not allow
            raise bad(source, str(exc), field=exc.field, line=first.line) from None
        peak_flops = platform.gpu.matmul_peak_flops_per_s(model.dtype)
        memory_s, compute_s = p.total.bytes / peak_bw, p.total.flops / peak_flops
        predicted_ms = p.seconds * 1e3
        num["predicted_ms"][idx] = predicted_ms
        num["gpu_ms"][idx] = p.gpu_s * 1e3
        num["weight_bytes"][idx] = p.weight_bytes
        num["kv_bytes"][idx] = p.kv_bytes
        num["flops"][idx] = p.total.flops
        num["achieved_bandwidth_gb_per_s"][idx] = p.total.bytes / p.seconds / 1e9
        num["roofline_ms"][idx] = np.maximum(memory_s, compute_s) * 1e3
        host_bound[idx] = p.host_bound
        launches[idx] = p.shape_launches
        text["bound"][idx] = BOUNDS[np.broadcast_to(
            np.where(p.host_bound, 0, np.where(memory_s >= compute_s, 1, 2)), b.shape)]
        # judged at the context it attends (a static cache's every position)
        trust = platform.assess_columns(model.param_count, mode, b, held - qq, qq,
                                        predicted_ms)
        num["band_pct"][idx] = trust.band_pct
        num["band_low_ms"][idx] = trust.band_low_ms
        num["band_high_ms"][idx] = trust.band_high_ms
        text["envelope"][idx] = trust.envelope
    cols: dict[str, np.ndarray] = {**num, **text, "host_bound": host_bound,
                                   "launches": launches,
                                   "stack": np.full(n, base.stack.name, dtype=object)}
    return {k: cols[k] for k in OUTPUT_COLUMNS}


def cells(columns: dict[str, np.ndarray]) -> dict[str, list[object]]:
    """``predict_rows``'s columns as Python values for a CSV or JSON writer: numbers as
    floats, a missing band as a blank cell."""
    out: dict[str, list[object]] = {k: v.tolist() for k, v in columns.items()}
    for k in ("band_pct", "band_low_ms", "band_high_ms"):
        if k in columns and np.isnan(columns[k]).any():
            out[k] = ["" if v != v else v for v in out[k]]
    return out
