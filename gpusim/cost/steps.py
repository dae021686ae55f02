"""A step's kernels priced together: each at the clock the power cap allows the step
(or the loop it runs in), and their sum."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gpusim.cost.kernel import kernel_cost, reclocked
from gpusim.cost.params import Calibration
from gpusim.cost.power import power_clock
from gpusim.cost.record import Cost
from gpusim.kernels.records import Kernel
from gpusim.specs import GpuSpec
from gpusim.specs.enums import KernelKind


def step_costs(kernels: Sequence[Kernel], gpu: GpuSpec, cal: Calibration,
               clock: np.ndarray | None = None,
               full_clock: Sequence[Cost] | None = None) -> list[Cost]:
    """Each kernel's cost in a step run back to back: at full clock, or, where the
    step's matrix work would exceed the power cap, at the clock the cap allows.
    ``clock`` (per shape) overrides the step's own: the clock of a loop the step runs
    in (``speculative.iteration``); ``full_clock``: the kernels' costs at full clock,
    when the caller has them already (a loop's clock needs them)."""
    costs = (list(full_clock) if full_clock is not None
             else distinct_costs(kernels, gpu, cal))
    if clock is None:
        clock = power_clock(kernels, costs, cal)
    if clock is None or bool((np.asarray(clock) >= 1.0).all()):
        return costs
    # pointwise kernels stream at HBM's pace: their few fp32 operations change nothing
    # measurable at a lower clock, and skipping them keeps the fast path fast
    return [reclocked(k, c, cal, clock)
            if k.kind in (KernelKind.GEMM, KernelKind.ATTENTION) else c
            for k, c in zip(kernels, costs, strict=True)]


def distinct_costs(kernels: Sequence[Kernel], gpu: GpuSpec, cal: Calibration
                   ) -> list[Cost]:
    """Each kernel's cost at full clock, a kernel the same as an earlier one but for its
    name and place (``Kernel.cost_key``: a twin ``kernels.build`` made) priced once.
    Raises what ``kernel_cost`` raises."""
    seen: dict[tuple[object, ...], Cost] = {}
    costs = []
    for k in kernels:
        key = k.cost_key()
        c = seen.get(key)
        if c is None:
            c = seen[key] = kernel_cost(k, gpu, cal)
        costs.append(c)
    return costs


def step_cost(kernels: list[Kernel], gpu: GpuSpec, cal: Calibration,
              clock: np.ndarray | None = None) -> Cost:
    """GPU-side cost of a whole step: each op's cost times its repeat, summed (at
    ``clock`` when given, as ``step_costs``)."""
    total = Cost.zero(len(kernels[0].flops)) if kernels else Cost.zero()
    for k, c in zip(kernels, step_costs(kernels, gpu, cal, clock), strict=True):
        total = total + c.scaled(k.repeat)
    return total
