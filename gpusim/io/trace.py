"""Request traces: JSONL or CSV rows of (arrival_s, prompt_tokens, output_tokens).

JSONL: one object per line with exactly those keys. CSV: a header naming exactly
those columns (any order). Blank lines are skipped. Arrivals must be finite, >= 0 and
in non-decreasing order; token counts integers >= 1. Every problem is a ConfigError
naming the file, line and field.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from gpusim.errors import bad, read_text
from gpusim.io import jsontext
from gpusim.serving.trace import Trace

COLUMNS = ("arrival_s", "prompt_tokens", "output_tokens")


def _number(value: object, source: str, line: int, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise bad(source, "expected a number", field=field, line=line, value=value)
    try:
        x = float(value)
    except ValueError:
        raise bad(source, "expected a number", field=field, line=line, value=value) from None
    if not math.isfinite(x):
        raise bad(source, "must be finite", field=field, line=line, value=value)
    return x


def _row(record: dict[str, object], source: str, line: int, prev_s: float
         ) -> tuple[float, int, int]:
    keys = set(record)
    if keys != set(COLUMNS):
        unknown = sorted(keys - set(COLUMNS))
        if unknown:
            raise bad(source, f"unknown key; allowed: {', '.join(COLUMNS)}",
                      field=unknown[0], line=line)
        missing = [c for c in COLUMNS if c not in keys]
        raise bad(source, "required field is missing", field=missing[0], line=line)
    t = _number(record["arrival_s"], source, line, "arrival_s")
    if t < 0:
        raise bad(source, "must be >= 0", field="arrival_s", line=line, value=record["arrival_s"])
    if t < prev_s:
        raise bad(source, f"arrivals must be in time order (previous {prev_s:g})",
                  field="arrival_s", line=line, value=record["arrival_s"])
    counts = []
    for field in ("prompt_tokens", "output_tokens"):
        x = _number(record[field], source, line, field)
        if x != int(x) or x < 1:
            raise bad(source, "must be an integer >= 1", field=field, line=line,
                      value=record[field])
        counts.append(int(x))
    return t, counts[0], counts[1]


def _jsonl_records(text: str, source: str):
    for i, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        record = jsontext.loads(raw, source, line=i)
        if not isinstance(record, dict):
            raise bad(source, "expected a JSON object per line", line=i)
        yield i, record


def _csv_records(text: str, source: str):
    rows = csv.reader(text.splitlines())
    header: list[str] | None = None
    for i, row in enumerate(rows, start=1):
        if not row or not any(c.strip() for c in row):
            continue
        cells = [c.strip() for c in row]
        if header is None:
            header = cells
            unknown = [c for c in header if c not in COLUMNS]
            if unknown:
                raise bad(source, f"unknown column; allowed: {', '.join(COLUMNS)}",
                          field=unknown[0], line=i)
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise bad(source, "required column is missing", field=missing[0], line=i)
            continue
        if len(cells) != len(header):
            raise bad(source, f"expected {len(header)} cells, found {len(cells)}", line=i)
        yield i, dict(zip(header, cells, strict=True))


def read_trace(path: str | Path) -> Trace:
    """Read a .jsonl/.json or .csv trace. Raises ConfigError with file:line: field."""
    p = Path(path)
    source = str(p)
    if p.suffix not in (".jsonl", ".json", ".csv"):
        raise bad(source, "trace must be a .jsonl or .csv file")
    text = read_text(p)
    records = _csv_records(text, source) if p.suffix == ".csv" else _jsonl_records(text, source)
    times: list[float] = []
    prompts: list[int] = []
    outputs: list[int] = []
    prev = 0.0
    for line, record in records:
        t, pt, ot = _row(record, source, line, prev)
        times.append(t)
        prompts.append(pt)
        outputs.append(ot)
        prev = t
    if not times:
        raise bad(source, "trace has no requests")
    return Trace(source=source, arrival_s=np.asarray(times, dtype=np.float64),
                 prompt_tokens=np.asarray(prompts, dtype=np.int64),
                 output_tokens=np.asarray(outputs, dtype=np.int64))
