"""Token-tree verify steps: the shipped calibration against the measured ones.

    python validation/tree_check.py [--data-dir validation/data]

Reads ``<gpu>/tree.csv`` (``harness/probe_tree.py``: CUDA-graph step times of one
verify pass of q = nodes tokens under the causal mask and under a binary-tree mask) and
prints the shipped calibration's error on both: the causal steps are verify steps of up
to 64 tokens (the fit's verify rows stop at 9: never fitted); the tree steps are
priced with the stack's tree kernel (SDPA runs a boolean mask through cuDNN's fused
kernel, ``tree_kernels.csv``), whose own parameters the calibration fits on these rows
(in-sample here; ``gpusim validate`` reports them leave-one-model-out). For contrast it
also prices the tree steps as causal verify passes (FlashAttention-2), as gpusim did
before it knew the tree kernel.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from gpusim import step
from gpusim.io import calibrations, loader
from gpusim.platform import Platform


def errors(path: Path) -> dict[str, np.ndarray]:
    """Predicted / measured - 1 of the causal and tree step times in ``path``."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    gpu = loader.load_gpu(path.parent.name)
    cal = calibrations.load_calibration("auto", gpu, loader.load_stack(loader.REFERENCE_STACK))
    stack = loader.load_stack(loader.REFERENCE_STACK)
    # (label, measured column, mode gpusim prices it with)
    cases = (("causal", "causal", "verify"), ("tree", "tree", "tree"),
             ("tree as causal", "tree", "verify"))
    out: dict[str, list[float]] = {label: [] for label, _, _ in cases}
    for name in sorted({r["model"] for r in rows}):
        mine = [r for r in rows if r["model"] == name]
        b, c, q = (np.array([float(r[k]) for r in mine]) for k in ("batch", "ctx", "nodes"))
        model = loader.load_model(name)
        for label, column, mode in cases:
            pred = step.predict(Platform(gpu, stack, cal), model, mode, b, c, q)
            meas = np.array([float(r[f"{column}_ms"]) for r in mine]) * 1e-3
            out[label] += list(pred.seconds / meas - 1.0)
    return {k: np.asarray(v) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=Path(__file__).parent / "data")
    args = ap.parse_args(argv)
    for path in sorted(args.data_dir.glob("*/tree.csv")):
        for kind, e in errors(path).items():
            print(f"{path.parent.name} {kind + ' steps:':21s} n={len(e)} "
                  f"mape {100 * np.abs(e).mean():.1f}% max {100 * np.abs(e).max():.1f}% "
                  f"bias {100 * e.mean():+.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
