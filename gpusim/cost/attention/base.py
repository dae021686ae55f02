"""What every attention kernel family shares: the record a family's cost comes back
in, the interface a family implements, and the bound of a kernel with too few CTAs in
flight to saturate HBM.

A family (one module each: ``flash_decode``, ``fa2``, ``cudnn_prefill``,
``cudnn_masked``) owns its schedule (CTAs, waves, the busiest SM's flops), its KV
reads (which re-reads L2 serves), its fixed costs, how its arithmetic follows the SM
clock, and its calibration fields (``Params``, with their fit bounds ``FIT``). The
stack file names the family each step mode runs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from gpusim.kernels.records import AttentionShape
from gpusim.specs import Frozen, GpuSpec

if TYPE_CHECKING:
    from gpusim.cost.params import GpuPhysics

# name: (lower, upper, start, unit) of a fitted parameter, searched in `unit`s
Bounds = tuple[float, float, float, float]


def ceil_div(a: np.ndarray, b: np.ndarray | float) -> np.ndarray:
    """ceil(a / b), elementwise, in float64."""
    return np.ceil(np.asarray(a, dtype=np.float64) / b)


@dataclass(frozen=True)
class AttentionParts:
    """An attention kernel's cost before memory and math meet (arrays over shapes).

    ``ctas``: CTAs in flight (for the latency bound); ``critical_flops``: tensor-flops
    the busiest SM executes (its MMAs, padding, per-CTA and per-score extras);
    ``tensor_efficiency``: the fraction of peak those run at; ``kv_read_bytes``: the KV
    bytes HBM serves (re-reads L2 does not serve included); ``fixed_s``: the family's
    own fixed time per launch beyond every attention kernel's.
    """

    ctas: np.ndarray
    critical_flops: np.ndarray
    tensor_efficiency: float
    kv_read_bytes: np.ndarray
    fixed_s: np.ndarray | float = 0.0


class AttentionFamily(ABC):
    """One attention kernel family. Subclasses set ``name``, ``Params`` (its
    calibration fields, defaults = the ideal datasheet kernel) and ``FIT`` (bounds of
    the fields a calibration fits) and implement ``parts``."""

    name: ClassVar[str]
    Params: ClassVar[type[Frozen]]
    FIT: ClassVar[dict[str, Bounds]] = {}
    # the fitted fields that are the kernel's work on the SMs (arithmetic, its per-tile
    # and per-launch schedule), the same on every GPU of one die (GpuSpec.die): fitted
    # once per die (calibration.die); anything touching memory is fitted per GPU
    DIE: ClassVar[frozenset[str]] = frozenset()
    # whether it pays every attention kernel's fitted fixed cost
    # (``physics.attention_fixed_cost_s``) besides its own ``fixed_s``
    SHARED_FIXED: ClassVar[bool] = True

    @abstractmethod
    def parts(self, a: AttentionShape, kv_bytes: np.ndarray, gpu: GpuSpec,
              physics: GpuPhysics, params: Frozen, per_sm_flops: float) -> AttentionParts:
        """The kernel's schedule, KV reads and fixed time for shape ``a``
        (``kv_bytes``: K and V read once; ``per_sm_flops``: one SM's tensor rate)."""

    def tensor_efficiency(self, params: Frozen) -> float:
        """The fraction of the tensor cores' peak its matrix work sustains."""
        return float(params.tensor_efficiency)  # type: ignore[attr-defined]

    def clock_exponent(self, params: Frozen) -> float:
        """s in "arithmetic time goes as clock^-s": 1 for kernels whose math keeps the
        tensor cores busy (a GEMM's way)."""
        return 1.0


def latency_bound_s(kv_bytes: np.ndarray, ctas: np.ndarray, bw: float, gpu: GpuSpec,
                    physics: GpuPhysics) -> np.ndarray:
    """Streaming time of the busiest CTA when too few CTAs are in flight to saturate HBM.

    A CTA reaches about ``bw / saturating CTAs`` on its own (Little's law: its bytes in
    flight over the memory latency); with fewer CTAs than that the kernel is bound by
    one CTA's share. Never decreasing in the work: a CTA's share only grows.
    """
    if physics.saturating_ctas_per_sm == 0.0:  # the datasheet model: no limit
        return np.zeros_like(kv_bytes)
    saturating = physics.saturating_ctas_per_sm * gpu.sm_count
    return kv_bytes / np.maximum(ctas, 1e-9) * saturating / bw
