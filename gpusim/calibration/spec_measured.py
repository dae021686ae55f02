"""Measured speculative loops (validation/data/<gpu>/spec.csv) -> typed rows.

The harness (validation/harness/bench_spec.py) writes one row per (pair, k, batch,
ctx): the loop's iteration time and, timed alone at the same shape, the draft step,
the verify pass and the plain decode step (each as launched in the loop, sampling and
acceptance kernels included), plus the plain decoding loop's time per token.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from gpusim.errors import bad, read_text

SPEC_COLUMNS = ("pair", "target", "draft", "k", "batch", "ctx", "launch", "iteration_ms",
                "iteration_p10_ms", "iteration_p90_ms", "repeats", "draft_step_ms",
                "verify_ms", "target_step_ms", "plain_iteration_ms", "plain_p10_ms",
                "plain_p90_ms", "accepted_mean")
REQUIRED = ("pair", "target", "draft", "k", "batch", "ctx", "launch", "iteration_ms",
            "draft_step_ms", "verify_ms", "target_step_ms")
_INTS = ("k", "batch", "ctx")
_TIMES = ("iteration_ms", "draft_step_ms", "verify_ms", "target_step_ms")


@dataclass(frozen=True)
class SpecRow:
    """One measured loop shape (times in seconds)."""

    line: int
    pair: str
    target: str
    draft: str
    k: int
    batch: int
    ctx: int
    launch: str
    iteration_s: float
    draft_step_s: float
    verify_s: float
    target_step_s: float
    plain_iteration_s: float | None


def read_spec_csv(path: Path) -> list[SpecRow]:
    """Read a harness spec.csv. Raises ConfigError naming file, line and field."""
    source = str(path)
    fh = io.StringIO(read_text(path), newline="")  # ConfigError: unreadable, not UTF-8
    rows: list[SpecRow] = []
    with fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise bad(source, f"missing column(s) {', '.join(missing)}", line=1)
        for rec in reader:
            line = reader.line_num
            if None in rec:
                raise bad(source, "more values than header columns", line=line)
            vals: dict[str, float] = {}
            for c in (*_INTS, *_TIMES):
                text = (rec[c] or "").strip()
                try:
                    v = float(text)
                except ValueError:
                    raise bad(source, "must be a number", field=c, line=line,
                              value=text) from None
                low_ok = v >= (1 if c in ("k", "batch") else 0)
                if not math.isfinite(v) or not low_ok or (c in _TIMES and v <= 0):
                    raise bad(source, "must be a finite positive number", field=c,
                              line=line, value=text)
                if c in _INTS and v != int(v):
                    raise bad(source, "must be an integer", field=c, line=line, value=text)
                vals[c] = v
            plain = (rec.get("plain_iteration_ms") or "").strip()
            try:
                plain_s = float(plain) / 1e3 if plain else None
            except ValueError:
                raise bad(source, "must be a number", field="plain_iteration_ms",
                          line=line, value=plain) from None
            rows.append(SpecRow(
                line=line, pair=rec["pair"].strip(), target=rec["target"].strip(),
                draft=rec["draft"].strip(), k=int(vals["k"]), batch=int(vals["batch"]),
                ctx=int(vals["ctx"]), launch=rec["launch"].strip(),
                iteration_s=vals["iteration_ms"] / 1e3,
                draft_step_s=vals["draft_step_ms"] / 1e3, verify_s=vals["verify_ms"] / 1e3,
                target_step_s=vals["target_step_ms"] / 1e3, plain_iteration_s=plain_s))
    if not rows:
        raise bad(source, "no measurements")
    return rows
