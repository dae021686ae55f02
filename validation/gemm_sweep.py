"""Where cuBLAS's kernel choice makes a GEMM slower than its neighbours in M.

    python validation/gemm_sweep.py [--data-dir validation/data] [--min-spike 1.3]

Reads ``<gpu>/gemm_sweep.csv`` (``bench.py --only gemm --gemm-m 1:16:1,24:1024:8,
1088:2048:64``: every GEMM of the five model shapes, M every 8 rows up to 1024) and
compares each GEMM's time with its local trend (``gpusim.gemm_picks``: a robust
Theil-Sen line through its nearest neighbours in M, which a smooth cost model follows
and one slow M cannot bend). Prints, per GPU, how many points sit more than 5% and 15%
above their trend, and every spike above ``--min-spike``: M values where cuBLAS picks a
tile that a model of tiles and waves cannot foresee. ``gpusim calibrate`` keeps the
spikes of at least ``gemm_picks.MIN_SLOWDOWN`` (1.3x) as the calibration's slow picks
(the Llama 3.1 8B and Qwen2.5 7B gate_up at M = 448 are the ones the speculative loops
hit: batch 64 x 7 verified tokens).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gpusim.gemm_picks import FINE_M_MAX, MIN_SLOWDOWN, read_sweep


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
        print(f"{path.parent.name}: {n} GEMM points (M <= {FINE_M_MAX}); "
              f"{over5} ({100 * over5 / n:.1f}%) over 5% above their local trend, "
              f"{over15} ({100 * over15 / n:.1f}%) over 15%")
        for p in points:
            if p.slowdown >= args.min_spike:
                print(f"  {p.name:32s} M={p.m:5d}  {p.slowdown:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
