"""What every ``gpusim`` command shares: the Typer app, option types, output helpers."""

from __future__ import annotations

import sys
from enum import StrEnum
from typing import Annotated

import typer

from gpusim import report
from gpusim.cost import Calibration
from gpusim.io import calibrations, loader
from gpusim.specs import GpuSpec, StackSpec

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="gpusim: LLM inference performance simulator.")


class Fmt(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


class Launch(StrEnum):
    graph = "graph"
    eager = "eager"


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


def _echo(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def _print_table(title: str, rows: list[dict[str, object]], columns: list[str]) -> None:
    from rich.console import Console

    Console(width=160).print(report.rich_table(title, rows, columns))


def setup(gpu: str, stack: str, calibration: str
          ) -> tuple[GpuSpec, StackSpec, Calibration]:
    """The GPU, software stack and calibration named on the command line.

    Raises ConfigError for a bad name, path or file.
    """
    g, st = loader.load_gpu(gpu), loader.load_stack(stack)
    return g, st, calibrations.load_calibration(calibration, g, st)
