"""What every ``gpusim`` command shares: the Typer app, option types, output helpers."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from gpusim import report
from gpusim.errors import ConfigError, FieldError, bad
from gpusim.io import calibrations, loader
from gpusim.platform import ParallelLayout, Platform
from gpusim.specs.enums import Launch, parse
from gpusim.specs.stack import StackSpec

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="gpusim: LLM inference performance simulator.")


class Fmt(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


class ModeOpt(StrEnum):
    decode = "decode"
    verify = "verify"
    prefill = "prefill"


class Micro(StrEnum):
    none = "none"
    attention = "attention"
    all = "all"


def micro_kinds(m: Micro) -> tuple[str, ...]:
    """The micro.csv kinds a --micro choice fits on."""
    return {"none": (), "attention": ("attention",), "all": ("gemm", "attention")}[m.value]


MicroOpt = Annotated[Micro, typer.Option(
    "--micro", help="Also fit on the kernel microbenchmarks beside steps.csv: none, "
    "attention or all (gemm + attention). Chosen by leave-one-model-out error.")]
GpuOpt = Annotated[str, typer.Option("--gpu", help="GPU name (hardware/<name>.yaml) or path.")]
CalOpt = Annotated[str, typer.Option(
    "--calibration", help="auto (shipped for this GPU, else datasheet), none, or a path.")]
LaunchOpt = Annotated[Launch, typer.Option("--launch", help="CUDA graph replay or eager.")]
StackOpt = Annotated[str, typer.Option("--stack", help="Software stack name or path.")]
FmtOpt = Annotated[Fmt, typer.Option("--format", help="Output format.")]
TpOpt = Annotated[int, typer.Option(
    "--tp", help="Tensor-parallel GPUs (Megatron split; collectives from the GPU's links).")]
PpOpt = Annotated[int, typer.Option("--pp", help="Pipeline-parallel stages.")]
CacheLenOpt = Annotated[int | None, typer.Option(
    "--cache-len", min=1, help="Positions each sequence's KV cache holds, for a stack "
    "that attends its whole static cache (hf-transformers: the StaticCache's "
    "max_cache_len); default ctx + q (spec: ctx + the verify's tokens).")]
EpOpt = Annotated[int, typer.Option(
    "--ep", help="Expert-parallel degree of an MoE model: its experts split over the "
    "--tp GPUs (give --ep equal to --tp), with all-to-all dispatch and combine.")]


def _echo(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


PIPE_WIDTH = 400   # a table printed into a pipe: its natural width, up to this


def _print_table(title: str, rows: list[dict[str, object]], columns: list[str]) -> None:
    """Print a rich table on stdout, as wide as the terminal (rich reads its width, or
    $COLUMNS); into a pipe or a file, as wide as the table needs (nothing cut)."""
    from rich.console import Console

    console = Console(soft_wrap=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=PIPE_WIDTH, soft_wrap=False)
    console.print(report.rich_table(title, rows, columns))


# an output file's format, from its extension (README "Command-line conventions")
EXTENSION_FORMATS = {".json": "json", ".csv": "csv", ".md": "md", ".yaml": "yaml",
                     ".yml": "yaml", ".html": "html", ".parquet": "parquet"}


def out_format(path: Path, flag: str, fmt: object, allowed: tuple[str, ...],
               default: str) -> str:
    """The format ``path`` (given to ``flag``) is written in: its extension's when that
    is one of ``allowed``, else ``--format``'s (``fmt``) when that is, else ``default``
    (``-`` and unknown extensions). Raises ConfigError for an extension naming another
    format (``--out preds.html`` where json or csv is written)."""
    ext = EXTENSION_FORMATS.get(path.suffix.lower()) if not report.is_stdout(path) else None
    if ext is not None and ext not in allowed:
        raise bad(str(path), f"{flag} writes {' or '.join(allowed)} (chosen by the "
                  f"extension: {', '.join('.' + a for a in allowed)}), not {ext}",
                  field=flag)
    if ext is not None:
        return ext
    value = getattr(fmt, "value", fmt)
    return value if value in allowed else default


def setup(gpu: str, stack: str, calibration: str, launch: str = "graph", tp: int = 1,
          pp: int = 1, ep: int = 1, micro_batches: int = 1) -> Platform:
    """The Platform named on the command line: GPU, software stack, calibration, launch
    mode and parallel layout. Raises ConfigError for a bad name, path, file or layout
    (naming its flag)."""
    g, st = loader.load_gpu(gpu), loader.load_stack(stack)
    cal = calibrations.load_calibration(calibration, g, st)
    with flags():
        layout = ParallelLayout(tp, pp, ep, micro_batches)
        return Platform(g, st, cal, parse(Launch, launch, "launch"), layout)


# library errors name the field (``reserve_fraction``); a command shows its own flag
_FLAGS: ContextVar[dict[str, str] | None] = ContextVar("flags", default=None)


def flag_for(field: str) -> str:
    """The flag this command spells ``field`` as (``--reserve-fraction`` by default)."""
    return (_FLAGS.get() or {}).get(field, "--" + field.replace("_", "-"))


def as_flag(exc: ConfigError | FieldError) -> ConfigError:
    """``exc`` as the command line shows it: a library error (no source, a field)
    names the flag that set the field."""
    if isinstance(exc, FieldError):
        return ConfigError(flag_for(exc.field), str(exc))
    if exc.source or not exc.field:
        return exc
    return ConfigError(flag_for(exc.field), exc.reason, None, exc.line, exc.value,
                       exc.has_value)


@contextmanager
def flags(**names: str) -> Iterator[None]:
    """Within the block, library errors about these fields name these flags
    (``flags(acceptance="--spec-acceptance")``)."""
    token = _FLAGS.set({**(_FLAGS.get() or {}), **names})
    try:
        yield
    except (ConfigError, FieldError) as exc:
        raise as_flag(exc) from None
    finally:
        _FLAGS.reset(token)


def split_out(outs: list[Path] | None, fmt: object, json_path: Path | None,
              csv_path: Path | None, default: str = "json"
              ) -> tuple[tuple[str, Path | None], tuple[str, Path | None]]:
    """``--out FILE`` (repeatable) as the JSON and the CSV output, each by its extension
    (else --format, else ``default``), beside ``--out-json``/``--out-csv`` (hidden: the
    spellings of earlier releases). Returns ``((flag, json path), (flag, csv path))``,
    each flag as given. Raises ConfigError when two outputs name one format."""
    found = {"json": ("--out-json", json_path), "csv": ("--out-csv", csv_path)}
    for out in outs or []:
        kind = out_format(out, "--out", fmt, ("json", "csv"), default)
        if found[kind][1] is not None:
            raise bad("--out", f"two {kind} outputs ({found[kind][1]} and {out}): give "
                      "one .json and one .csv at most", value=str(out))
        found[kind] = ("--out", out)
    return found["json"], found["csv"]


def check_outputs(files: dict[str, Path | None],
                  dirs: dict[str, Path | None] | None = None) -> bool:
    """Refuse, before any work starts, an output the run could not write: ``files``
    and ``dirs`` map each output option (``--out-json``) to its path (None: not
    given). Raises ConfigError (``path: --flag: cannot write: reason``) for a path that
    cannot be written, two options naming the same file, or more than one ``-``.
    Returns whether an output goes to standard output (``-``): the command then prints
    nothing else there."""
    seen: dict[str, str] = {}
    for flag, path in files.items():
        if path is None:
            continue
        key = "-" if report.is_stdout(path) else str(report.files.resolved(path))
        if key in seen:
            raise bad(str(path), f"{seen[key]} writes there too: give each output its own "
                      "file", field=flag)
        seen[key] = flag
        try:
            report.check_writable(path)
        except ConfigError as exc:
            raise ConfigError(exc.source, exc.reason, flag) from None
    for flag, path in (dirs or {}).items():
        if path is not None:
            try:
                report.check_writable_dir(path)
            except ConfigError as exc:
                raise ConfigError(exc.source, exc.reason, flag) from None
    return "-" in seen


def wrote(path: Path, what: str = "") -> None:
    """Say on stderr that ``path`` was written (``what``: e.g. ``12 predictions``)."""
    where = "standard output" if report.is_stdout(path) else str(path)
    print(f"wrote {what + ' to ' if what else ''}{where}", file=sys.stderr)


def describe_calibration(platform: Platform) -> str:
    """What calibration a result used, in one phrase: where it was fitted and, when
    another stack's host costs stand in for this stack's, whose."""
    cal = platform.calibration
    text = cal.fitted_on
    if cal.host_from is not None:
        text += f"; host costs of {cal.host_from}"
    if platform.stack.status == "described":
        text += f"; stack {platform.stack.name}: described, not measured"
    return text


def cache_len_option(stack: StackSpec, cache_len: int | None, ctx: int, q: int,
                     q_name: str = "q") -> int:
    """The positions each KV cache holds: ``--cache-len`` (default ctx + q; ``q_name``:
    what the messages call q). Raises ConfigError where the stack attends ctx + q keys
    whatever its cache holds (the option would change nothing) or the cache cannot hold
    ctx + q positions."""
    if cache_len is None:
        return ctx + q
    if not stack.attends_allocated_cache:
        raise bad("--cache-len", f"stack {stack.name} attends the keys cached and new (ctx + "
                  f"{q_name}) whatever its cache holds; only a stack that attends its whole "
                  "static cache (hf-transformers) takes a cache length")
    if cache_len < ctx + q:
        raise bad("--cache-len", f"must hold ctx + {q_name} = {ctx + q} positions",
                  value=cache_len)
    return cache_len
