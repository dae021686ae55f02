"""The reference stack's steps measured again on other leases, pooled into the GPU's
physics fit.

Two leases of one GPU kind run the same step 1-3% apart (validation/REPORT.md: most
leases measured after the fitted one ran the fitted shapes 1-3% faster on the H100, and
1-2.5% on the H200). A physics fitted on one lease carries that lease's speed into
every prediction; fitted on several, it predicts the machine one is likely to get. So
the reference stack's CUDA-graph steps of the fitted models on the leases below join
the physics fit, each lease with a speed factor of its own (``lease_factors``), and
each such lease is judged by the physics fitted without it (``validate``: leave one
lease out).

Not pooled: the leases where the other stacks' judged steps were measured (the stacks
campaigns, ``lease_2026-12-06_0447`` on the H100 and ``lease_2026-12-06_0722`` on the
H200), so that no stack is judged with a physics that saw its own lease; steps of
models the fit never saw (their sections stay never fitted); eager steps (the host's
time) and token trees.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gpusim.calibration.measurements import StepData, read_steps
from gpusim.specs import StackSpec
from gpusim.specs.enums import Launch, Mode

Joint = Sequence[tuple[StepData, StackSpec]]   # as calibration.joint's

# subdirectories of validation/data/<gpu>/ whose steps.csv is the reference stack's on
# another lease (held_out.HELD_OUT_SETS names their report sections)
POOLED_LEASES = ("second_lease", "lease_2026-12-06", "lease_2026-12-07_1656",
                 "lease_2026-12-07_1724", "lease_2026-12-07_1844", "lease_2026-12-07_1955",
                 "lease_2026-12-07_2324")


def lease_steps(gpu_dir: Path, reference: StackSpec, fitted_models: set[str]
                ) -> list[tuple[StepData, StackSpec]]:
    """Each pooled lease's CUDA-graph steps (no token trees) of ``fitted_models`` under
    ``gpu_dir``, with the reference stack, in ``POOLED_LEASES`` order (a lease without
    such steps left out). Raises ConfigError for an unreadable steps file."""
    out = []
    for sub in POOLED_LEASES:
        path = gpu_dir / sub / "steps.csv"
        if not path.is_file():
            continue
        data = read_steps(path, reference.name)
        keep = ((data.launch == Launch.GRAPH) & (data.mode != Mode.TREE)
                & np.isin(data.model.astype(str), sorted(fitted_models)))
        if keep.any():
            out.append((data.subset(keep), reference))
    return out


def lease_of(data: StepData) -> str:
    """The pooled lease (its subdirectory) a joint entry's steps came from, '' for
    steps of the fitted lease or of another stack."""
    parent = Path(data.source).parent.name
    return parent if parent in POOLED_LEASES else ""


def without_lease(joint: Joint, lease: str) -> list[tuple[StepData, StackSpec]]:
    """``joint`` with the steps of pooled lease ``lease`` left out (a leave-one-lease-out
    fit)."""
    return [(data, stack) for data, stack in joint if lease_of(data) != lease]


def pooled(joint: Joint) -> list[str]:
    """The pooled leases whose steps ``joint`` holds, in order."""
    return list(dict.fromkeys(lease for data, _ in joint if (lease := lease_of(data))))
