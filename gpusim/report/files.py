"""Writing outputs: CSV, JSON and HTML text, whole or not at all, several at once all or
none; ``-`` is standard output, a symlink is written through."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import stat
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from gpusim.errors import ConfigError, bad, cannot

STDOUT = "-"   # an output path that means standard output


def is_stdout(path: object) -> bool:
    """Whether the output path ``path`` means standard output (``-``)."""
    return path is not None and str(path) == STDOUT


def write_atomic(path: Path | str, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (``write_all`` of one file)."""
    write_all([(path, text)])


def _backup(target: str) -> tuple[bool, str | None]:
    """(whether ``target`` exists, a hard link to its current contents or None where
    the file system cannot link): what a failed write_all puts back."""
    if not os.path.isfile(target):
        return False, None
    backup = f"{target}.gpusim-old-{os.getpid()}"
    try:
        os.link(target, backup)
    except OSError:
        return True, None
    return True, backup


def _restore(backup: tuple[bool, str | None], target: str) -> None:
    """Put ``target`` back as it was before write_all renamed over it: its old contents,
    or no file where there was none (a file that could not be linked stays new)."""
    existed, old = backup
    try:
        if old is not None:
            os.replace(old, target)
        elif not existed:
            Path(target).unlink(missing_ok=True)
    except OSError:
        pass   # best effort: the write already failed and says so


def write_all(items: Sequence[tuple[Path | str, str]]) -> None:
    """Write each ``(path, text)``: every file whole, and all of them or none.

    Each text is first written to a temp file beside its target; only when all are
    written are they renamed over their targets, so a failure (or Ctrl-C) leaves every
    existing file unchanged and no temp file behind; should a rename fail, the files
    renamed before it are put back (hard links to their old contents). A symlink is written through:
    its target is replaced and the link kept. A target that is not a regular file (a
    pipe, a terminal, ``/dev/stdout``) is written in place, after the files. ``-``
    means standard output, written last. An existing file keeps its permissions.

    Raises ConfigError (``path: cannot write: reason``) when a path cannot be written:
    its directory is missing, it is a directory, no permission, disk full.
    """
    staged: list[tuple[str, str, Path]] = []      # (temp file, final target, as given)
    in_place: list[tuple[Path, str]] = []
    to_stdout: list[str] = []
    try:
        for given, text in items:
            if is_stdout(given):
                to_stdout.append(text)
                continue
            if _special(Path(given)):
                in_place.append((Path(given), text))
                continue
            target = resolved(given)
            staged.append((_stage(Path(given), target, text), str(target), Path(given)))
        backups = [_backup(target) for _, target, _ in staged]
        try:
            for i, (tmp, target, given) in enumerate(staged):
                try:
                    os.replace(tmp, target)
                except OSError as exc:
                    for later, _, _ in staged[i:]:
                        Path(later).unlink(missing_ok=True)
                    # the files already renamed go back to what they were: all or none
                    for (_, done, _), backup in zip(staged[:i], backups, strict=False):
                        _restore(backup, done)
                    staged = []
                    raise _cannot(given, exc) from None
        finally:
            for _, old in backups:
                if old is not None:
                    Path(old).unlink(missing_ok=True)
        staged = []
    finally:
        for tmp, _, _ in staged:        # a failure or an interrupt before the renames
            Path(tmp).unlink(missing_ok=True)
    for given, text in in_place:
        try:
            _write_in_place(given, text)
        except OSError as exc:
            raise _cannot(given, exc) from None
    for text in to_stdout:
        sys.stdout.write(text)
        sys.stdout.flush()


def resolved(path: Path | str) -> Path:
    """The file a write to ``path`` lands in: a symlink's final target (a dangling
    link's too), else ``path`` itself, made absolute."""
    return Path(os.path.realpath(path))


def _special(path: Path) -> bool:
    """Whether ``path`` is written in place rather than replaced: a file descriptor's
    name (``/dev/stdout``, ``/dev/fd/N``, ``/proc/self/fd/N``: a redirect the shell
    opened, whatever it points at), or a path that (through its symlinks) exists and is
    neither a regular file nor a directory (a pipe, a terminal, a device)."""
    absolute = os.path.abspath(path)
    if absolute.startswith(("/dev/", "/proc/")):
        return os.path.exists(absolute)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def check_writable(path: Path | str) -> None:
    """Raise ConfigError (``path: cannot write: reason``) unless a file could be
    written to ``path`` now: its directory exists and takes new files, and it is not a
    directory. ``-`` (standard output) and descriptors always pass. Lets a command
    refuse a bad output path before its work starts."""
    if is_stdout(path) or _special(Path(path)):
        return
    target = resolved(path)
    if target.is_dir():
        raise _cannot(path, IsADirectoryError(path))
    if not target.parent.is_dir():
        raise _no_directory(path, target)
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise bad(str(path), f"cannot write: no permission to create files in "
                  f"{_shown_parent(path, target)}")


def check_writable_dir(path: Path | str) -> None:
    """Raise ConfigError unless ``path`` is a directory that takes new files, or could
    be created as one (its nearest existing ancestor is a writable directory)."""
    if is_stdout(path):
        raise bad(str(path), "cannot write: a directory is needed here, not standard output")
    here = resolved(path)
    while not here.exists():
        here = here.parent
    if not here.is_dir():
        raise bad(str(path), f"cannot write: {here} is not a directory")
    if not os.access(here, os.W_OK | os.X_OK):
        raise bad(str(path), f"cannot write: no permission to create files in {here}")


def _shown_parent(given: Path | str, target: Path) -> str:
    """The directory to name for ``given``: as written, unless a symlink led elsewhere."""
    if Path(os.path.abspath(given)) == target:
        return os.path.dirname(str(given)) or "."
    return str(target.parent)


def _no_directory(given: Path | str, target: Path) -> ConfigError:
    return bad(str(given), f"cannot write: directory {_shown_parent(given, target)} "
               "does not exist")


_FD_NAMES = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}


def _write_in_place(path: Path, text: str) -> None:
    """Write ``text`` into ``path`` as it is: a descriptor this process holds
    (``/dev/stdout``, ``/dev/fd/N``, ``/proc/self/fd/N``) through that descriptor, so
    that it follows what was printed there before; anything else opened for writing.
    Raises OSError."""
    name = os.path.abspath(path)
    fd = _FD_NAMES.get(name)
    for prefix in ("/dev/fd/", "/proc/self/fd/", f"/proc/{os.getpid()}/fd/"):
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            fd = int(name[len(prefix):])
    if fd is None:
        with open(path, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        return
    sys.stdout.flush()
    sys.stderr.flush()
    data = text.encode("utf-8")
    while data:
        data = data[os.write(fd, data):]


def _cannot(path: Path | str, exc: OSError) -> ConfigError:
    return cannot(path, exc)


def _stage(given: Path, target: Path, text: str) -> str:
    """``text`` in a new temp file beside ``target`` (the mode ``target`` has, else
    the umask's); returns its path. Raises ConfigError naming ``given``."""
    if target.is_dir():
        raise _cannot(given, IsADirectoryError(given))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) and not target.parent.is_dir():
            raise _no_directory(given, target) from None
        raise _cannot(given, exc) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        if target.is_file():
            mode = target.stat().st_mode & 0o7777
        else:  # mkstemp creates the file 0600: give it the usual umask-based mode
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _cannot(given, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def to_csv(rows: Sequence[dict[str, object]], columns: Sequence[str] | None = None) -> str:
    """Rows of dicts -> CSV text (floats to 6 significant digits)."""
    cols = list(columns or (rows[0].keys() if rows else []))
    return columns_to_csv({c: [r.get(c, "") for r in rows] for c in cols}, len(rows))


def columns_to_csv(columns: dict[str, Sequence[object]], rows: int) -> str:
    """Columns (name -> ``rows`` values, in order) -> CSV text, as ``to_csv``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(list(columns))
    # formatted a column at a time: a column of one type (the common case) skips
    # fmt's per-cell dispatch (a table of many rows)
    w.writerows(zip(*(_fmt_column(list(v)) for v in columns.values()), strict=True)
                if columns else [()] * rows)
    return buf.getvalue()


def _fmt_column(values: list[object]) -> list[str]:
    """``fmt`` of every value of one column."""
    if all(type(v) is float for v in values):
        return [f"{v:.6g}" for v in values]
    if all(type(v) is str for v in values):
        return values  # type: ignore[return-value]
    return [fmt(v) for v in values]


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


def figure_html(fig) -> str:
    """A self-contained Plotly HTML page of ``fig`` (a fixed div id, not Plotly's random
    one: the same figure gives the same bytes)."""
    return fig.to_html(include_plotlyjs=True, full_html=True, div_id="gpusim-figure")


def write_html(fig, path: Path) -> None:
    """Write ``figure_html(fig)`` to ``path`` atomically."""
    write_atomic(Path(path), figure_html(fig))
