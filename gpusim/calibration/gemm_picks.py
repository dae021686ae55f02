"""cuBLAS's slow kernel picks: GEMM shapes a GPU runs far slower than its neighbours in M.

cuBLAS chooses each GEMM's kernel by heuristics, and for a few (n, k, m) it picks one
that is much slower than the kernel it runs one tile row either side (profiled on
H100 and H200: Llama 3.1 8B's and Qwen2.5 7B's gate_up at m = 448 run a 512x64 tile
at 1.7-1.9x the time of m = 384 and 512). No model of tiles and waves foresees such a
pick, so it is measured: the harness sweeps every GEMM of the measured models over m
(``gemm_sweep.csv``), each point is compared with a robust line through its nearest
neighbours in m, and the points at least ``MIN_SLOWDOWN`` above their line become
``SlowPick`` entries of the GPU's calibration. The cost model multiplies such a GEMM's
kernel time by the measured slowdown; every other shape keeps the smooth model.

A pick belongs to one GPU and cuBLAS version: a calibration transferred to another
GPU drops its picks, and leave-one-model-out drops the held-out model's shapes.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from scipy.stats import theilslopes

from gpusim.cost.params import SlowPick
from gpusim.errors import bad

FINE_M_MAX = 1024     # the sweep steps m by 8 rows up to here (by 64 beyond: too coarse)
WINDOW = 9            # a point and its neighbours in m (4 either side): the line is theirs
MIN_SLOWDOWN = 1.3    # a pick this much slower than its neighbours' line is kept


def gemm_owners(name: str) -> frozenset[str]:
    """The models of a harness GEMM name: ``<model>.<gemm>``, ``|``-joined when models
    share the shape (a model name may hold dots: llama-3.1-8b)."""
    return frozenset(part.rsplit(".", 1)[0] for part in name.split("|"))


@dataclass(frozen=True)
class SweptPoint:
    """One swept GEMM (named ``<model>.<gemm>``, ``|``-joined when models share it):
    its median time and that time over the local line through its neighbours in m."""

    name: str
    n: int
    k: int
    m: int
    slowdown: float
    measured_s: float

    @property
    def models(self) -> frozenset[str]:
        return gemm_owners(self.name)


def read_sweep(path: Path) -> list[SweptPoint]:
    """Every GEMM point of a harness ``gemm_sweep.csv`` with m <= FINE_M_MAX, with its
    slowdown over its local trend. Raises ConfigError for a malformed file."""
    source = str(path)
    series: dict[tuple[str, int, int], list[tuple[int, float]]] = {}
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            for line, r in enumerate(csv.DictReader(fh), start=2):
                try:
                    if r["kind"] != "gemm" or int(r["m"]) > FINE_M_MAX:
                        continue
                    key = (r["name"], int(r["n"]), int(r["k"]))
                    series.setdefault(key, []).append((int(r["m"]), float(r["median_us"])))
                except (KeyError, ValueError, TypeError) as exc:
                    raise bad(source, f"malformed row: {exc}", line=line) from None
    except OSError as exc:
        raise bad(source, f"cannot read file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise bad(source, "file is not UTF-8 text") from None
    out = []
    half = WINDOW // 2
    for (name, n, k), pts in sorted(series.items()):
        pts.sort()
        for i, (m, t) in enumerate(pts):
            lo = min(max(0, i - half), max(0, len(pts) - WINDOW))
            near = [p for j, p in enumerate(pts[lo: lo + WINDOW], start=lo) if j != i]
            if len(near) < 3:
                continue
            # Theil-Sen through the neighbours (the point itself left out): another
            # slow m among them cannot bend the line either
            slope, intercept, _, _ = theilslopes([v for _, v in near], [x for x, _ in near])
            trend = intercept + slope * m
            if trend > 0:
                out.append(SweptPoint(name, n, k, m, t / trend, t * 1e-6))
    return out


def read_sweep_beside(steps_csv: Path) -> list[SweptPoint]:
    """The swept GEMMs in ``gemm_sweep.csv`` beside a GPU's steps.csv; none if absent.
    Raises ConfigError for a malformed file."""
    path = steps_csv.parent / "gemm_sweep.csv"
    return read_sweep(path) if path.is_file() else []


def slow_picks(points: Sequence[SweptPoint], exclude_models: frozenset[str] = frozenset(),
               min_slowdown: float = MIN_SLOWDOWN) -> tuple[SlowPick, ...]:
    """The points at least ``min_slowdown`` above their line, as calibration entries,
    leaving out shapes that only ``exclude_models`` have (leave-one-model-out)."""
    return tuple(SlowPick(n=p.n, k=p.k, m=p.m, slowdown=round(p.slowdown, 4))
                 for p in points
                 if p.slowdown >= min_slowdown and not p.models <= exclude_models)
