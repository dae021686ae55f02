"""Profiled kernel lists (validation/data/<gpu>/kernels*.csv) -> GPU time per kernel class.

torch.profiler gives each kernel's GPU time in a step. Summed by class (GEMM,
pointwise, attention), they tell calibration how a step's time divides between kinds
of kernel, which step times alone cannot: a model heavy in small pointwise kernels
and one heavy in GEMMs can take the same total time. Profiled durations leave out the
idle gaps between kernels; the step times hold them (``Calibration.launch_gap_s``).
Which kernel names belong to which class is software-stack knowledge, so it lives
in the stack file (``profile_classes``).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpusim.calibration.measurements import StepData
from gpusim.errors import bad
from gpusim.kernels import Kernel
from gpusim.specs import GpuSpec, StackSpec
from gpusim.specs.enums import KernelKind

CLASSES = ("gemm", "elementwise", "attention")
# a profiled step longer than this at the GPU's matrix peak runs, with its warm-up, long
# enough for the power cap to lower the SM clock (cost.power: after 0.1-0.2 s of load);
# fits price a profiled kernel at full clock, so they leave such steps out
CAPPED_STEP_S = 0.05


def profile_paths(gpu_dir: Path) -> list[Path]:
    """A GPU's profiled reference-stack steps: ``kernels*.csv`` beside its steps.csv and
    the prefill probes' ``probe_*/prefill*/kernels.csv`` (longer prompts and batches)."""
    return [*sorted(gpu_dir.glob("kernels*.csv")),
            *sorted(gpu_dir.glob("probe_*/prefill*/kernels.csv"))]


def peak_s(kernels: Sequence[Kernel], gpu: GpuSpec) -> np.ndarray:
    """Per shape, a step's matrix work at the GPU's peak rate: the least time it takes."""
    peak = gpu.matmul_peak_flops_per_s(kernels[0].dtype)
    return sum((k.flops * k.repeat for k in kernels
                if k.kind in (KernelKind.GEMM, KernelKind.ATTENTION)),
               np.zeros(1)) / peak


@dataclass(frozen=True)
class ProfileData:
    """Per profiled step shape: measured GPU seconds of each kernel class."""

    shapes: StepData            # one row per profiled shape (measured_s: total busy)
    class_s: dict[str, np.ndarray]


def classify(name: str, stack: StackSpec) -> str:
    """The class of a kernel name: gemm, attention or elementwise (the default)."""
    for cls, patterns in stack.profile_classes.items():
        if any(re.search(p, name) for p in patterns):
            return cls
    return "elementwise"


def read_profiles(paths: list[Path], stack: StackSpec) -> ProfileData | None:
    """Aggregate kernel CSVs by (model, mode, batch, ctx, q) and class; None if empty.

    A shape listed in several files is taken from the first one. Raises ConfigError
    for a malformed file.
    """
    totals: dict[tuple, dict[str, float]] = {}
    for path in paths:
        seen: set[tuple] = set()
        try:
            with path.open(encoding="utf-8", newline="") as fh:
                rows = list(csv.DictReader(fh))
        except OSError as exc:
            raise bad(str(path), f"cannot read file: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise bad(str(path), "file is not UTF-8 text") from None
        for line, r in enumerate(rows, start=2):
            try:
                key = (r["model"], r["mode"], int(r["batch"]), int(r["ctx"]), int(r["q"]))
                t = float(r["total_us"]) * 1e-6
            except (KeyError, ValueError) as exc:
                raise bad(str(path), f"malformed row: {exc}", line=line) from None
            if key in totals and key not in seen:
                continue  # already read from an earlier file
            seen.add(key)
            acc = totals.setdefault(key, dict.fromkeys(CLASSES, 0.0))
            acc[classify(r["kernel_name"], stack)] += t
    if not totals:
        return None
    keys = sorted(totals)
    col = list(zip(*keys, strict=True))
    shapes = StepData(
        model=np.array(col[0]), mode=np.array(col[1]), batch=np.array(col[2], float),
        ctx=np.array(col[3], float), q=np.array(col[4], float),
        launch=np.array(["graph"] * len(keys)),
        measured_s=np.array([sum(totals[k].values()) for k in keys]),
        source=", ".join(str(p) for p in paths))
    return ProfileData(shapes, {c: np.array([totals[k][c] for k in keys]) for c in CLASSES})
