"""Where a sweep's results go: the ledger (finished points, keyed by point, appended as
they finish, so a stopped sweep resumes where it was), the rows in point order, and
their CSV and Parquet files (written whole or not at all).

Fresh and reused results pass through the same JSON round trip, so a resumed sweep
writes the same bytes as one that ran every point.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from gpusim import report
from gpusim.errors import bad, cannot
from gpusim.sweep.grid import Point

LEDGER_HEADER = {"gpusim_sweep_ledger": 1}


def normalized(record: dict[str, object]) -> dict[str, object]:
    """``record`` as the ledger stores it (JSON types only)."""
    return json.loads(json.dumps(record, allow_nan=False))


class Ledger:
    """A JSON-lines file: a header line, then one ``{"key", "record"}`` line per
    finished point. A last line cut short (the sweep was killed while writing it) is
    ignored; any other unreadable line is an error."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, dict[str, object]]:
        """Finished points by key ({} when the file does not exist yet). Raises
        ConfigError for a file that is not a sweep ledger or is damaged."""
        if not self.path.exists():
            return {}
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise bad(str(self.path), f"cannot read the sweep ledger: {reason}") from None
        if not text:
            return {}
        lines = text.split("\n")
        if _json(lines[0]) != LEDGER_HEADER:
            raise bad(str(self.path), "not a gpusim sweep ledger (delete it or give "
                      "another --ledger)", line=1)
        done: dict[str, dict[str, object]] = {}
        last = len(lines) - 1 if lines[-1] else len(lines) - 2
        for n, line in enumerate(lines[1:], start=2):
            if not line:
                continue
            entry = _json(line)
            ok = (isinstance(entry, dict) and isinstance(entry.get("key"), str)
                  and isinstance(entry.get("record"), dict))
            if not ok:
                if n - 1 == last and not text.endswith("\n"):
                    break   # cut short while being written: that point runs again
                raise bad(str(self.path), "damaged ledger line (delete the line or the "
                          "file to run those points again)", line=n)
            done[entry["key"]] = entry["record"]
        return done

    def append(self, entries: Iterable[tuple[str, dict[str, object]]]) -> None:
        """Add finished points and flush them to disk. Raises ConfigError when the file
        cannot be written."""
        text = "".join(json.dumps({"key": key, "record": rec}, allow_nan=False) + "\n"
                       for key, rec in entries)
        try:
            new = not self.path.exists() or self.path.stat().st_size == 0
            with self.path.open("a", encoding="utf-8") as fh:
                if new:
                    fh.write(json.dumps(LEDGER_HEADER) + "\n")
                else:
                    _drop_torn_tail(self.path)
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise cannot(self.path, exc) from None


def _json(line: str) -> object:
    try:
        return json.loads(line)
    except ValueError:
        return None


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line that was cut short (no newline) off the file."""
    with path.open("r+b") as fh:
        size = fh.seek(0, os.SEEK_END)
        back = min(size, 1 << 20)
        fh.seek(size - back)
        tail = fh.read(back)
        if tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n")
        if cut < 0 and back < size:
            raise OSError(f"{path}: a ledger line over 1 MiB")
        fh.truncate(size - back + cut + 1)


def row(point: Point, record: dict[str, object]) -> dict[str, object]:
    """A result row: the point's index, its parameters as written, then its record
    (seed, status, error, figures; a figure named like a parameter is left out)."""
    return {"point": point.index, **point.params,
            **{k: v for k, v in record.items() if k not in point.params}}


def columns(rows: Sequence[dict[str, object]]) -> list[str]:
    """Every key of ``rows``, in order of first appearance."""
    seen: dict[str, None] = {}
    for r in rows:
        seen.update(dict.fromkeys(r))
    return list(seen)


def _cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return value


def csv_text(rows: Sequence[dict[str, object]]) -> str:
    """The rows as CSV (empty cells for missing values, floats to 6 significant
    digits, lists as JSON)."""
    cols = columns(rows)
    return report.to_csv([{c: _cell(r.get(c)) for c in cols} for r in rows], cols)


def _arrow_column(values: list[object]):  # type: ignore[no-untyped-def]
    import pyarrow as pa

    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.array(values, type=pa.bool_())
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.array(values, type=pa.int64())
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                       for v in present):
        return pa.array([None if v is None else float(v) for v in values],
                        type=pa.float64())
    return pa.array([None if v is None else v if isinstance(v, str) else
                     json.dumps(v, separators=(",", ":")) if isinstance(v, (list, dict))
                     else str(v) for v in values], type=pa.string())


def write_parquet(path: Path, rows: Sequence[dict[str, object]]) -> None:
    """The rows as a Parquet file (one typed column per key: bool, int64, float64 or
    string), written whole or not at all. Raises ConfigError when pyarrow is missing
    or the file cannot be written."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise bad("--parquet", "needs pyarrow: pip install 'gpusim[sweep]'") from None
    cols = columns(rows)
    table = pa.table({c: _arrow_column([r.get(c) for r in rows]) for c in cols})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_bytes_atomic(Path(path), sink.getvalue().to_pybytes())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all (temp file + rename). Raises
    ConfigError when the path cannot be written."""
    directory = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise cannot(path, IsADirectoryError(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    except OSError as exc:
        raise cannot(path, exc) from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise cannot(path, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
