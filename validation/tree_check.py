"""Token-tree verify steps: how gpusim's pricing compares with the measured ones.

    python validation/tree_check.py [--data-dir validation/data]

Reads ``<gpu>/tree.csv`` (``harness/probe_tree.py``: CUDA-graph step times of one
verify pass of q = nodes tokens under the causal mask and under a binary-tree mask)
and prints the shipped calibration's error on both. gpusim prices a tree's verify as
the causal verify pass at q = nodes (FlashAttention-2); the reference stack really runs
a boolean tree mask through cuDNN's fused kernel (``tree_kernels.csv``), which neither
splits the keys at small batch nor pads 4-64 queries to 128 rows, so its time differs.
None of these rows was fitted.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from gpusim import loader, step


def errors(path: Path) -> dict[str, np.ndarray]:
    """Predicted / measured - 1 of the causal and tree step times in ``path``."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    gpu = loader.load_gpu(path.parent.name)
    cal = loader.load_calibration("auto", gpu)
    stack = loader.load_stack()
    out: dict[str, list[float]] = {"causal": [], "tree": []}
    for name in sorted({r["model"] for r in rows}):
        mine = [r for r in rows if r["model"] == name]
        b, c, q = (np.array([float(r[k]) for r in mine]) for k in ("batch", "ctx", "nodes"))
        pred = step.predict(gpu, loader.load_model(name), stack, cal, "verify", b, c, q)
        for kind in out:
            meas = np.array([float(r[f"{kind}_ms"]) for r in mine]) * 1e-3
            out[kind] += list(pred.seconds / meas - 1.0)
    return {k: np.asarray(v) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=Path(__file__).parent / "data")
    args = ap.parse_args(argv)
    for path in sorted(args.data_dir.glob("*/tree.csv")):
        for kind, e in errors(path).items():
            print(f"{path.parent.name} {kind:6s} steps: n={len(e)} "
                  f"mape {100 * np.abs(e).mean():.1f}% max {100 * np.abs(e).max():.1f}% "
                  f"bias {100 * e.mean():+.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
