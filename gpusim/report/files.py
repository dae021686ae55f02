"""Writing outputs: CSV, JSON and HTML text, whole or not at all."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path


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


def write_html(fig, path: Path) -> None:
    """Write a self-contained Plotly HTML file atomically (a fixed div id, not Plotly's
    random one: the same figure writes the same bytes)."""
    write_atomic(Path(path), fig.to_html(include_plotlyjs=True, full_html=True,
                                         div_id="gpusim-figure"))
