"""Steps of models no fit has seen, measured under the other stacks: each stack's shipped
calibration predicts them, nothing fitted on them. validation/REPORT.md's section
"Models never fitted, under the other stacks".

The data: ``<gpu>/unseen_stacks/<stack>/steps.csv``, laid out as ``<gpu>/stacks/`` (one
stack's steps a file), of models that neither that GPU's physics fit nor any stack's
fit has seen. The reference stack's held-out models are ``<gpu>/unseen_models/``
(``validate.HELD_OUT_SETS``).

Run alone: ``python -m gpusim.calibration.unseen_stacks [GPU]`` prints the section.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from gpusim.calibration.fit import make_groups, predict_groups
from gpusim.calibration.measurements import StepData, read_steps
from gpusim.calibration.validate import Errors
from gpusim.cost import Calibration
from gpusim.report import markdown_table
from gpusim.specs import GpuSpec, ModelSpec, StackSpec

Resolver = Callable[[str], ModelSpec]
FOLDER = "unseen_stacks"


def predict(stack: StackSpec, data: StepData, gpu: GpuSpec, cal: Calibration,
            resolve: Resolver) -> np.ndarray:
    """Predicted seconds of every row of ``data`` under ``stack`` and ``cal``."""
    return predict_groups(make_groups(data, stack, resolve), len(data), gpu, cal)


def error_rows(stack: str, data: StepData, predicted_s: np.ndarray
               ) -> list[dict[str, object]]:
    """One row per model, launch and mode: n, MAPE, max and bias of the predictions,
    then one per mode over every model."""
    rows = []
    keys = sorted({(str(m), str(la), str(mo)) for m, la, mo
                   in zip(data.model, data.launch, data.mode, strict=True)},
                  key=lambda k: (k[0], k[1], ("decode", "verify", "prefill").index(k[2])))
    groups = [(m, la, mo, (data.model == m) & (data.launch == la) & (data.mode == mo))
              for m, la, mo in keys]
    modes = sorted({(la, mo) for _, la, mo in keys},
                   key=lambda k: (k[0], ("decode", "verify", "prefill").index(k[1])))
    if len({m for m, _, _ in keys}) > 1:
        groups += [("all", la, mo, (data.launch == la) & (data.mode == mo))
                   for la, mo in modes]
    for model, launch, mode, mask in groups:
        e = Errors.of(predicted_s[mask], data.measured_s[mask])
        rows.append({"stack": stack, "model": model, "launch": launch, "mode": mode,
                     "n": e.n, "mape": e.mape, "max": e.max, "bias": e.bias})
    return rows


def section(gpu: str, rows: Sequence[dict[str, object]]) -> str:
    """Markdown: the errors of every unseen model under every stack ("" for none)."""
    if not rows:
        return ""
    return "\n".join([
        f"## Models never fitted, under the other stacks, on {gpu}", "",
        f"Steps of models that no fit has seen (validation/data/{gpu}/{FOLDER}/<stack>/), "
        "each predicted by its stack's shipped calibration: nothing fitted on them, on "
        "this GPU or another. Their lease is not the fitted steps' lease, so the "
        "lease-to-lease spread (above) is part of these errors.", "",
        markdown_table(list(rows), ["stack", "model", "launch", "mode", "n", "mape", "max",
                                    "bias"], ("mape", "max", "bias")), ""])


def report(gpu_dir: Path, gpu: GpuSpec, shipped: Callable[[StackSpec], Calibration],
           load_stack: Callable[[str], StackSpec], resolve: Resolver) -> str:
    """The section for the GPU whose data folder is ``gpu_dir`` ("" when it has no
    ``unseen_stacks/``). Raises ConfigError for an unreadable steps file or an unknown
    stack folder."""
    rows: list[dict[str, object]] = []
    for path in sorted((gpu_dir / FOLDER).glob("*/steps.csv")):
        stack = load_stack(path.parent.name)
        data = read_steps(path, stack.name)
        rows += error_rows(stack.name, data,
                           predict(stack, data, gpu, shipped(stack), resolve))
    return section(gpu_dir.name, rows)


def main(argv: Sequence[str]) -> int:
    """Print the section for a GPU (default h100-sxm) from the committed data."""
    from gpusim.calibration.quant_moe_report import print_section

    return print_section(report, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
