"""The ``--acceptance`` syntax and accepted-length histogram files -> acceptance models.

Raises ValueError for a bad value, ConfigError (file:line:field) for a bad file.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from gpusim.errors import bad, read_text
from gpusim.io import jsontext
from gpusim.speculative.acceptance import (
    MAX_K,
    Acceptance,
    EmpiricalAcceptance,
    IidAcceptance,
    PositionalAcceptance,
    RankedAcceptance,
)

ACCEPTANCE_HELP = (
    "0.8 (i.i.d. rate) | 0.9,0.8,0.7 (per-position rates, the last repeats) | "
    "ranked:0.6,0.2,0.1 (token trees: j-th ranked guess accepted) | "
    "file:PATH or PATH.csv/.json (accepted-length histogram: CSV columns "
    "accepted,count or JSON {\"counts\": [c0, c1, ...]})")


def _floats(text: str, what: str) -> list[float]:
    out = []
    for part in text.split(","):
        try:
            out.append(float(part))
        except ValueError:
            raise ValueError(f"{what}={text!r}: {part.strip()!r} is not a number") from None
    return out


def parse_acceptance(text: str) -> Acceptance:
    """Parse the ``--acceptance`` syntax (see ACCEPTANCE_HELP).

    Raises ValueError for a bad value, ConfigError for a bad histogram file.
    """
    s = text.strip()
    if s.startswith("file:") or s.endswith((".csv", ".json")):
        return read_histogram(Path(s.removeprefix("file:")))
    if s.startswith("ranked:"):
        return RankedAcceptance(tuple(_floats(s[len("ranked:"):], "acceptance")))
    vals = _floats(s, "acceptance")
    if len(vals) == 1:
        return IidAcceptance(vals[0])
    return PositionalAcceptance(tuple(vals))


def _histogram_from_pairs(pairs: list[tuple[int, float, int | None]], source: str
                          ) -> EmpiricalAcceptance:
    seen: dict[int, int | None] = {}
    counts: dict[int, float] = {}
    for acc, cnt, line in pairs:
        if acc in seen:
            raise bad(source, f"accepted={acc} appears twice (first at line {seen[acc]})",
                      field="accepted", line=line, value=acc)
        seen[acc] = line
        counts[acc] = cnt
    if not counts:
        raise bad(source, "no histogram rows")
    k_max = max(counts)
    if k_max < 1:
        raise bad(source, "the histogram must cover accepted lengths 0..k_max with k_max >= 1")
    if sum(counts.values()) <= 0:
        raise bad(source, "all counts are zero", field="count")
    return EmpiricalAcceptance(tuple(counts.get(j, 0.0) for j in range(k_max + 1)),
                               source=Path(source).name)


def _check_pair(source: str, line: int | None, acc: object, cnt: object
                ) -> tuple[int, float, int | None]:
    try:
        if isinstance(acc, bool):
            raise TypeError
        a = float(acc)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise bad(source, "must be an integer >= 0", field="accepted", line=line,
                  value=acc) from None
    if not math.isfinite(a) or a != int(a) or not 0 <= a <= MAX_K:
        raise bad(source, f"must be an integer in 0..{MAX_K}", field="accepted", line=line,
                  value=acc)
    try:
        if isinstance(cnt, bool):   # JSON true is no count (float(True) would be 1)
            raise TypeError
        c = float(cnt)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise bad(source, "must be a number >= 0", field="count", line=line,
                  value=cnt) from None
    if not math.isfinite(c) or c < 0:
        raise bad(source, "must be a finite number >= 0", field="count", line=line, value=cnt)
    return int(a), c, line


def read_histogram(path: Path) -> EmpiricalAcceptance:
    """An accepted-length histogram from CSV (``accepted,count`` rows) or JSON
    (``{"counts": [c0, c1, ...]}`` or ``{"accepted": [...], "count": [...]}``).

    Raises ConfigError naming file, line and field.
    """
    source = str(path)
    text = read_text(path, "utf-8-sig")
    if path.suffix == ".json":
        return _histogram_json(text, source)
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    if "accepted" not in header or "count" not in header:
        raise bad(source, "expected CSV columns accepted,count", line=1)
    reader.fieldnames = header
    pairs = []
    for rec in reader:
        if None in rec:
            raise bad(source, "more values than header columns", line=reader.line_num)
        if not any((v or "").strip() for v in rec.values()):
            continue
        pairs.append(_check_pair(source, reader.line_num, (rec["accepted"] or "").strip(),
                                 (rec["count"] or "").strip()))
    return _histogram_from_pairs(pairs, source)


def _histogram_json(text: str, source: str) -> EmpiricalAcceptance:
    data = jsontext.loads(text, source)

    def line_of(key: str) -> int | None:
        idx = text.find(f'"{key}"')
        return text.count("\n", 0, idx) + 1 if idx >= 0 else None

    if not isinstance(data, dict):
        raise bad(source, 'expected an object {"counts": [...]}', line=1)
    if "counts" in data:
        c = data["counts"]
        if not isinstance(c, list):
            raise bad(source, "must be a list of counts", field="counts",
                      line=line_of("counts"), value=c)
        pairs = [_check_pair(source, line_of("counts"), j, v) for j, v in enumerate(c)]
        return _histogram_from_pairs(pairs, source)
    if "accepted" in data and "count" in data:
        a, c = data["accepted"], data["count"]
        if not (isinstance(a, list) and isinstance(c, list) and len(a) == len(c)):
            raise bad(source, "accepted and count must be lists of equal length",
                      field="count", line=line_of("count"))
        pairs = [_check_pair(source, line_of("accepted"), x, y) for x, y in zip(a, c,
                                                                              strict=True)]
        return _histogram_from_pairs(pairs, source)
    raise bad(source, 'expected key "counts" (or "accepted" and "count")', line=1)
