"""One error type for every bad input: it renders as a single line naming where."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(eq=False)
class ConfigError(Exception):
    """Bad user input.

    Renders as ``source:line: field: reason (got value)``; the CLI prints that one
    line to stderr and exits 2.
    """

    source: str
    reason: str
    field: str | None = None
    line: int | None = None
    value: object = None
    has_value: bool = False

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        parts = [where] if where else []  # empty source: the caller names the place
        if self.field:
            parts.append(self.field)
        msg = ": ".join([*parts, self.reason])
        if self.has_value:
            shown = repr(self.value)
            if len(shown) > 80:
                shown = shown[:77] + "..."
            msg += f" (got {shown})"
        return msg.replace("\n", " ")


class FieldError(ValueError):
    """A library argument out of range: names the argument (``field``) so that the
    caller can say where it came from (the command line names its flag, a rows file
    its line). ``str()`` is the message, which shows the value."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def bad(source: str, reason: str, *, field: str | None = None, line: int | None = None,
        value: object = ..., ) -> ConfigError:
    """Build a ConfigError; pass ``value`` to show the offending value."""
    return ConfigError(source=source, reason=reason, field=field, line=line,
                       value=None if value is ... else value, has_value=value is not ...)


def draft_error(exc: ConfigError) -> ConfigError:
    """``exc`` from loading a draft model: the loader names ``--model`` for a name it
    does not know; the draft's option is ``--draft``. Raises nothing."""
    if exc.source == "--model":
        return dataclasses.replace(exc, source="--draft")
    return exc


def cannot(path: object, exc: OSError, action: str = "write") -> ConfigError:
    """A ConfigError for a file that cannot be written (or read): ``path: cannot
    <action>: <reason>``, the reason from ``exc`` without its errno noise."""
    if isinstance(exc, IsADirectoryError):
        reason = "is a directory"
    elif isinstance(exc, FileExistsError):
        reason = "exists and is not a directory"
    elif isinstance(exc, NotADirectoryError):
        reason = "a parent is not a directory"
    elif (isinstance(exc, FileNotFoundError) and action == "write"
          and not os.path.isdir(os.path.dirname(str(path)) or ".")):
        reason = f"directory {os.path.dirname(str(path)) or '.'} does not exist"
    else:
        reason = exc.strerror or str(exc) or type(exc).__name__
    return bad(str(path), f"cannot {action}: {reason}")


MAX_TEXT_FILE_BYTES = 512 << 20   # the largest text input gpusim reads (a trace, a CSV)


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 1e6:,.1f} MB" if n_bytes >= 1e5 else f"{n_bytes / 1e3:,.1f} kB"


def _read_gzip(path: Path, limit_bytes: int) -> bytes:
    """A gzip file's decompressed bytes, at most ``limit_bytes``. Raises ConfigError for
    more, or for a damaged or truncated file."""
    import gzip
    import zlib
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read(limit_bytes + 1)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise bad(str(path), f"damaged gzip file: {exc}") from None
    if len(data) > limit_bytes:
        raise bad(str(path), f"file of over {_size(limit_bytes)} decompressed: gpusim "
                  f"reads inputs of this kind up to {_size(limit_bytes)}")
    return data


def read_text(path: Path, encoding: str = "utf-8",
              limit_bytes: int = MAX_TEXT_FILE_BYTES) -> str:
    """A text file's contents (``encoding="utf-8-sig"`` drops a BOM). A ``.gz`` file is
    read decompressed, and so is ``<path>.gz`` where ``path`` itself does not exist
    (committed measurement files are stored gzip'd; readers name the plain file). Raises
    ConfigError for a file that cannot be read, is larger than ``limit_bytes``
    (decompressed; read before it could exhaust memory), is damaged gzip or is not text
    in that encoding."""
    packed = path.with_name(path.name + ".gz")
    if path.suffix != ".gz" and not path.exists() and packed.exists():
        path = packed
    try:
        if path.suffix == ".gz":
            data = _read_gzip(path, limit_bytes)
            return data.decode(encoding)
        size_bytes = path.stat().st_size
        if size_bytes > limit_bytes:
            raise bad(str(path), f"file of {_size(size_bytes)}: gpusim reads inputs of "
                      f"this kind up to {_size(limit_bytes)}")
        return path.read_text(encoding=encoding)
    except OSError as exc:
        raise bad(str(path), f"cannot read file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise bad(str(path), "file is not UTF-8 text") from None
