"""Measured step times (validation/data/<gpu>/steps.csv, tree.csv) -> typed rows.

The harness writes ``model,mode,batch,ctx,q,launch,median_ms,...``; this module reads
it (file:line errors) and groups rows so the predictor can run vectorised. A
``tree.csv`` beside it (``harness/probe_tree.py``: verify passes under a token-tree
mask, CUDA graphs) adds rows of mode ``tree`` (q = the tree's nodes).

Which statistic stands for a row: the median for CUDA-graph rows (GPU-bound, tight:
p10 and p90 within ~2%), the 10th percentile for eager rows when the file has one.
Eager steps are host-bound, and on the shared VMs the host path is slowed in phases
of seconds by up to 2x (validation/data/README.md); the model predicts the
undisturbed host path, which the low percentile of 60 calls in turns measures and the
median, in a disturbed phase, does not.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpusim.errors import bad, read_text
from gpusim.specs.enums import ROW_MODES as MODES
from gpusim.specs.enums import Mode

STEP_COLUMNS = ("model", "mode", "batch", "ctx", "q", "launch", "median_ms")
EAGER_STATISTIC = "p10_ms"   # optional column; eager rows use it when present


@dataclass(frozen=True)
class StepData:
    """Measured steps as parallel arrays (one entry per measurement)."""

    model: np.ndarray   # str
    mode: np.ndarray    # str
    batch: np.ndarray
    ctx: np.ndarray
    q: np.ndarray
    launch: np.ndarray  # str
    measured_s: np.ndarray
    source: str
    # positions each sequence's KV cache held (None: ctx + q, a cache sized to the step);
    # a stack that reads its whole allocated cache (a static cache) depends on it
    cache_len: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.measured_s)

    @property
    def cache(self) -> np.ndarray:
        """Each row's cache length (ctx + q where the file gave none)."""
        return self.ctx + self.q if self.cache_len is None else self.cache_len

    def subset(self, mask: np.ndarray) -> StepData:
        """Rows where ``mask`` is true."""
        return StepData(self.model[mask], self.mode[mask], self.batch[mask], self.ctx[mask],
                        self.q[mask], self.launch[mask], self.measured_s[mask], self.source,
                        None if self.cache_len is None else self.cache_len[mask])

    def concat(self, other: StepData) -> StepData:
        """These rows, then ``other``'s (the sources joined)."""
        cache = (None if self.cache_len is None and other.cache_len is None
                 else np.concatenate([self.cache, other.cache]))
        return StepData(*(np.concatenate([getattr(self, f), getattr(other, f)]) for f in
                          ("model", "mode", "batch", "ctx", "q", "launch", "measured_s")),
                        source=f"{self.source}, {other.source}", cache_len=cache)

    def groups(self) -> dict[tuple[str, str, str], np.ndarray]:
        """{(model, mode, launch): row indices} for vectorised prediction."""
        out: dict[tuple[str, str, str], list[int]] = {}
        for i, key in enumerate(zip(self.model, self.mode, self.launch, strict=True)):
            out.setdefault(key, []).append(i)
        return {k: np.array(v) for k, v in out.items()}


def _low_statistic(rec: dict, source: str, line: int, median_ms: float) -> float:
    """An eager row's p10 (ms); the median when the cell is empty. Raises ConfigError
    for a value that is not a positive number at most the median."""
    text = rec.get(EAGER_STATISTIC)
    if text in (None, ""):
        return median_ms
    try:
        v = float(text)
    except ValueError:
        raise bad(source, "must be a number", field=EAGER_STATISTIC, line=line,
                  value=text) from None
    if not np.isfinite(v) or v <= 0 or v > median_ms * (1 + 1e-9):
        raise bad(source, "must be a positive number no larger than median_ms",
                  field=EAGER_STATISTIC, line=line, value=text)
    return v


def _read_csv(path: Path, columns: tuple[str, ...]) -> tuple[list[str], list[tuple[int, dict]]]:
    """(header, [(line, record)]) of a CSV that has ``columns``. Raises ConfigError for
    an unreadable file or a missing column."""
    source = str(path)
    text = read_text(path, "utf-8-sig")   # ConfigError: unreadable, not UTF-8
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = list(reader.fieldnames or [])
    missing = [c for c in columns if c not in header]
    if missing:
        raise bad(source, f"missing column(s) {', '.join(missing)}", line=1)
    try:
        return header, [(reader.line_num, rec) for rec in reader]
    except csv.Error as exc:
        raise bad(source, f"not a CSV file: {exc}", line=reader.line_num) from None


def _cache_len(rec: dict, source: str, line: int, ctx: float, q: float) -> float:
    """A row's ``cache_len`` (ctx + q when the cell is empty). Raises ConfigError for a
    value that is not a whole number of at least ctx + q."""
    text = rec.get("cache_len")
    if text in (None, ""):
        return ctx + q
    try:
        v = float(text)
    except ValueError:
        raise bad(source, "must be a number", field="cache_len", line=line,
                  value=text) from None
    if not np.isfinite(v) or v != round(v) or v < ctx + q:
        raise bad(source, "must be a whole number of positions >= ctx + q",
                  field="cache_len", line=line, value=text)
    return v


def read_steps(path: Path, stack: str | None = None) -> StepData:
    """Read a harness steps.csv (eager rows: their p10, see the module docstring). A
    ``stack`` column, when the file has one, must name ``stack`` on every row (a file
    holds one stack's steps); a ``cache_len`` column gives each row's cache length.
    Raises ConfigError naming file, line and field."""
    source = str(path)
    header, records = _read_csv(path, STEP_COLUMNS)
    cols: dict[str, list] = {c: [] for c in STEP_COLUMNS}
    cache: list[float] = []
    has_low = EAGER_STATISTIC in header
    for line, rec in records:
        if rec["mode"] not in MODES:
            raise bad(source, f"must be one of {', '.join(MODES)}", field="mode",
                      line=line, value=rec["mode"])
        if rec["launch"] not in ("graph", "eager"):
            raise bad(source, "must be graph or eager", field="launch", line=line,
                      value=rec["launch"])
        for c in ("batch", "ctx", "q", "median_ms"):
            try:
                v = float(rec[c])
            except (TypeError, ValueError):
                raise bad(source, "must be a number", field=c, line=line,
                          value=rec[c]) from None
            if not np.isfinite(v) or v < 0 or (c == "median_ms" and v == 0):
                raise bad(source, "must be a finite positive number", field=c,
                          line=line, value=rec[c])
            low = {"batch": 1, "q": 1, "ctx": 0}.get(c)
            if low is not None and (v < low or v != round(v)):
                raise bad(source, f"must be an integer >= {low}", field=c, line=line,
                          value=rec[c])
            cols[c].append(v)
        if has_low and rec["launch"] == "eager":
            cols["median_ms"][-1] = _low_statistic(rec, source, line,
                                                   cols["median_ms"][-1])
        for c in ("model", "mode", "launch"):
            cols[c].append(rec[c])
        cache.append(_cache_len(rec, source, line, cols["ctx"][-1], cols["q"][-1]))
        if "stack" in header and stack is not None and rec["stack"] not in ("", stack):
            raise bad(source, f"must be {stack} (a file holds one stack's steps)",
                      field="stack", line=line, value=rec["stack"])
    if not cols["model"]:
        raise bad(source, "no measurements")
    return StepData(
        model=np.array(cols["model"]), mode=np.array(cols["mode"]),
        batch=np.array(cols["batch"]), ctx=np.array(cols["ctx"]), q=np.array(cols["q"]),
        launch=np.array(cols["launch"]), measured_s=np.array(cols["median_ms"]) / 1e3,
        source=source,
        cache_len=np.array(cache) if "cache_len" in header else None)


TREE_COLUMNS = ("model", "batch", "ctx", "nodes", "tree_ms")


def read_tree_steps(path: Path) -> StepData:
    """Read a tree.csv: one CUDA-graph verify step under a token-tree mask per row (its
    median, ``tree_ms``), as rows of mode ``tree``. Raises ConfigError naming file,
    line and field."""
    source = str(path)
    _, records = _read_csv(path, TREE_COLUMNS)
    models, vals = [], []
    for line, rec in records:
        row = []
        for c in TREE_COLUMNS[1:]:
            try:
                v = float(rec[c])
            except (TypeError, ValueError):
                raise bad(source, "must be a number", field=c, line=line,
                          value=rec[c]) from None
            if not np.isfinite(v) or v < 0 or (c != "ctx" and v == 0):
                raise bad(source, "must be a finite positive number", field=c, line=line,
                          value=rec[c])
            row.append(v)
        models.append(rec["model"])
        vals.append(row)
    if not models:
        raise bad(source, "no measurements")
    b, c, n, ms = (np.array(col) for col in zip(*vals, strict=True))
    return StepData(model=np.array(models), mode=np.full(len(models), Mode.TREE.value),
                    batch=b, ctx=c, q=n, launch=np.full(len(models), "graph"),
                    measured_s=ms / 1e3, source=source)


def read_step_dir(steps_csv: Path) -> StepData:
    """``steps.csv`` and, when one lies beside it, ``tree.csv``'s rows. Raises
    ConfigError like the readers."""
    data = read_steps(steps_csv)
    trees = steps_csv.parent / "tree.csv"
    return data.concat(read_tree_steps(trees)) if trees.is_file() else data
