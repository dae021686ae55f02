"""Where cuBLAS's kernel choice makes a GEMM slower than its neighbours in M.

    python validation/gemm_sweep.py [--data-dir validation/data] [--min-spike 1.3]

Reads ``<gpu>/gemm_sweep.csv`` (``bench.py --only gemm --gemm-m 1:16:1,24:1024:8,
1088:2048:64``: every GEMM of the five model shapes, M every 8 rows up to 1024) and
compares each GEMM's time with its local trend: a robust (Theil-Sen) line through its 9
nearest M values, which a smooth cost model follows and one slow M cannot bend. Prints,
per GPU, how many points sit more than 5% and 15% above their trend, and every spike
above ``--min-spike``: M values where cuBLAS picks a tile that a model of tiles and
waves cannot foresee (the Llama 3.1 8B gate_up at M = 448 is the one the speculative
loops hit: batch 64 x 7 verified tokens).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from scipy.stats import theilslopes

FINE_M_MAX = 1024   # the sweep's step is 8 rows up to here (64 beyond)
WINDOW = 9          # M values in the local trend (the point and 4 on each side)


def spikes(rows: list[dict[str, str]]) -> list[tuple[str, int, float]]:
    """(GEMM name, M, time / local trend) for every swept point up to FINE_M_MAX."""
    by_name: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        if r["kind"] == "gemm" and int(r["m"]) <= FINE_M_MAX:
            by_name.setdefault(r["name"], []).append((int(r["m"]), float(r["median_us"])))
    out = []
    half = WINDOW // 2
    for name, pts in sorted(by_name.items()):
        pts.sort()
        for i, (m, t) in enumerate(pts):
            lo = min(max(0, i - half), max(0, len(pts) - WINDOW))
            near = pts[lo: lo + WINDOW]
            if len(near) < 3:
                out.append((name, m, 1.0))
                continue
            slope, intercept, _, _ = theilslopes([v for _, v in near], [x for x, _ in near])
            out.append((name, m, t / (intercept + slope * m)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=Path(__file__).parent / "data")
    ap.add_argument("--min-spike", type=float, default=1.3)
    args = ap.parse_args(argv)
    for path in sorted(args.data_dir.glob("*/gemm_sweep.csv")):
        with path.open(newline="") as fh:
            s = spikes(list(csv.DictReader(fh)))
        n = len(s)
        over5 = sum(r > 1.05 for _, _, r in s)
        over15 = sum(r > 1.15 for _, _, r in s)
        print(f"{path.parent.name}: {n} GEMM points (M <= {FINE_M_MAX}); "
              f"{over5} ({100 * over5 / n:.1f}%) over 5% above their local trend, "
              f"{over15} ({100 * over15 / n:.1f}%) over 15%")
        for name, m, r in s:
            if r >= args.min_spike:
                print(f"  {name:32s} M={m:5d}  {r:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
