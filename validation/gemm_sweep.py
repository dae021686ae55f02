"""Where cuBLAS's kernel choice makes a GEMM slower than its neighbours in M.

    python validation/gemm_sweep.py [--data-dir validation/data] [--min-spike 1.3]

Reads ``<gpu>/gemm_sweep.csv`` (``bench.py --only gemm --gemm-m 1:16:1,24:1024:8,
1088:2048:64``: every GEMM of the five model shapes, M every 8 rows up to 1024) and
compares each GEMM's time with its local trend (``gpusim.calibration.gemm_picks``: a robust
Theil-Sen line through its nearest neighbours in M, which a smooth cost model follows
and one slow M cannot bend). Prints, per GPU, how many points sit more than 5% and 15%
above their trend, and every spike above ``--min-spike``: M values where cuBLAS picks a
tile that a model of tiles and waves cannot foresee. ``gpusim calibrate`` keeps the
spikes of at least ``gemm_picks.MIN_SLOWDOWN`` (1.3x) as the calibration's slow picks
(the Llama 3.1 8B and Qwen2.5 7B gate_up at M = 448 are the ones the speculative loops
hit: batch 64 x 7 verified tokens).

For a GPU with a shipped calibration it also prints the half-tile pattern: at M an odd
multiple of 64 (192 to 1024: batch 64 verifying 3, 5, 7 or 9 tokens) each GEMM's time
over the cost model's (slow picks left out), against the same ratio at its neighbours
within 32 rows that are not multiples of 64. The model's tiles fit those M exactly (64-row
tiles, no padding); cuBLAS's kernels there run slower than that, so these are the
verify passes the step model under-prices (validation/README.md).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gpusim.calibration.gemm_picks import FINE_M_MAX, MIN_SLOWDOWN, SweptPoint, read_sweep
from gpusim.calibration.micro import DTYPE
from gpusim.cost import Calibration, busy_s, kernel_cost
from gpusim.errors import ConfigError
from gpusim.io import calibrations, loader
from gpusim.kernels import gemm_kernel
from gpusim.specs import GpuSpec

HALF_TILE_ROWS = 64      # M = 64 x odd: half of a 128-row tile row left over
HALF_TILE_MIN_M = 192    # below, one tile of all rows covers M
NEIGHBOUR_ROWS = 32      # the ratio at M is compared with its neighbours this close


def half_tile_excess(points: Sequence[SweptPoint], gpu: GpuSpec, cal: Calibration
                     ) -> dict[int, list[float]]:
    """Per odd multiple of 64 in [HALF_TILE_MIN_M, FINE_M_MAX]: each swept GEMM's
    measured over modelled time there, divided by the median of that ratio at its
    neighbours within NEIGHBOUR_ROWS rows whose M is not a multiple of 64."""
    series: dict[tuple[str, int, int], list[SweptPoint]] = defaultdict(list)
    for p in points:
        series[(p.name, p.n, p.k)].append(p)
    cal = cal.replace({"physics.gemm_slow_picks": ()})
    out: dict[int, list[float]] = defaultdict(list)
    for (_, n, k), pts in sorted(series.items()):
        m = np.array([p.m for p in pts], dtype=np.float64)
        kern = gemm_kernel(m, n, k, DTYPE)
        ratio = np.array([p.measured_s for p in pts]) / busy_s(kern, kernel_cost(kern, gpu, cal),
                                                               cal)
        for i, mi in enumerate(m):
            if mi < HALF_TILE_MIN_M or mi % (2 * HALF_TILE_ROWS) != HALF_TILE_ROWS:
                continue
            near = (np.abs(m - mi) <= NEIGHBOUR_ROWS) & (m % HALF_TILE_ROWS != 0)
            if near.any():
                out[int(mi)].append(float(ratio[i] / np.median(ratio[near])))
    return dict(out)


def _half_tile_lines(name: str, points: Sequence[SweptPoint]) -> list[str]:
    try:
        gpu = loader.load_gpu(name)
    except ConfigError:
        return []
    if not (calibrations.CALIBRATIONS_DIR / f"{name}.yaml").is_file():
        return []
    excess = half_tile_excess(
        points, gpu, calibrations.load_calibration(
            "auto", gpu, loader.load_stack(loader.REFERENCE_STACK))
    )
    if not excess:
        return []
    allx = np.concatenate([np.asarray(v) for v in excess.values()])
    by_m = "  ".join(f"{m}: {np.median(v):.2f}x" for m, v in sorted(excess.items()))
    return [
        f"  half tiles (M = 64 x odd, {HALF_TILE_MIN_M}-{FINE_M_MAX}) over the shipped "
        f"calibration's model, against their neighbours: median {np.median(allx):.3f}x, "
        f"{100 * np.mean(allx > 1.05):.0f}% over 1.05x ({len(allx)} points)",
        f"    median by M: {by_m}",
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=Path(__file__).parent / "data")
    ap.add_argument("--min-spike", type=float, default=MIN_SLOWDOWN)
    args = ap.parse_args(argv)
    for path in sorted(args.data_dir.glob("*/gemm_sweep.csv")):
        points = read_sweep(path)
        n = len(points)
        over5 = sum(p.slowdown > 1.05 for p in points)
        over15 = sum(p.slowdown > 1.15 for p in points)
        print(
            f"{path.parent.name}: {n} GEMM points (M <= {FINE_M_MAX}); "
            f"{over5} ({100 * over5 / n:.1f}%) over 5% above their local trend, "
            f"{over15} ({100 * over15 / n:.1f}%) over 15%"
        )
        for p in points:
            if p.slowdown >= args.min_spike:
                print(f"  {p.name:32s} M={p.m:5d}  {p.slowdown:.2f}x")
        for line in _half_tile_lines(path.parent.name, points):
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
