"""Steps of models no fit has seen, measured under the other stacks: each stack's shipped
calibration predicts them, nothing fitted on them. validation/REPORT.md's section
"Models never fitted, under the other stacks".

The data: ``<gpu>/unseen_stacks/<stack>/steps.csv``, laid out as ``<gpu>/stacks/`` (one
stack's steps a file), of models that neither that GPU's physics fit nor any stack's
fit has seen. The reference stack's held-out models are ``<gpu>/unseen_models/``
(``held_out.HELD_OUT_SETS``).

Run alone: ``python -m gpusim.calibration.unseen_stacks [GPU]`` prints the section.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from gpusim.calibration.measurements import read_steps
from gpusim.calibration.validate import Evaluation, in_sample
from gpusim.cost import Calibration
from gpusim.report import markdown_table
from gpusim.specs import GpuSpec, ModelSpec, StackSpec

Resolver = Callable[[str], ModelSpec]
FOLDER = "unseen_stacks"


MODES = ("decode", "verify", "prefill")


def error_rows(stack: str, ev: Evaluation) -> list[dict[str, object]]:
    """One row per model, launch and mode of ``ev``'s steps: n, MAPE, max and bias of
    its predictions, then one per launch and mode over every model."""
    d = ev.data
    models = sorted(set(map(str, d.model)))
    groups = [(m, d.model == m) for m in models]
    if len(models) > 1:
        groups.append(("all", np.ones(len(d), dtype=bool)))
    rows: list[dict[str, object]] = []
    for model, of in groups:
        for launch in ("graph", "eager"):
            for mode in MODES:
                mask = of & (d.launch == launch) & (d.mode == mode)
                if mask.any():
                    e = ev.errors(mask)
                    rows.append({"stack": stack, "model": model, "launch": launch,
                                 "mode": mode, "n": e.n, "mape": e.mape, "max": e.max,
                                 "bias": e.bias})
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
        rows += error_rows(stack.name, in_sample(data, gpu, stack, shipped(stack),
                                                 resolve, "shipped"))
    return section(gpu_dir.name, rows)


def main(argv: Sequence[str]) -> int:
    """Print the section for a GPU (default h100-sxm) from the committed data."""
    from gpusim.calibration.quant_moe_report import print_section

    return print_section(report, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
