"""What a GEMM kernel family is to the cost model: its calibration fields, their fit
bounds, and the parts of a kernel's time (fixed, memory, compute) its schedule gives.

cuBLAS's bf16 GEMM (``cost.gemm``, priced in ``cost.kernel``) is the reference; the
families here (quantized projections in ``cost.quant``, expert GEMMs in ``cost.moe``)
price the kernels a stack names with ``family:``. Their fields default to the ideal
kernel relative to the GPU's fitted physics (the same tensor and bandwidth efficiency
as cuBLAS's GEMMs, no extra fixed cost), so a family without measurements is priced as
its datasheet arithmetic and bytes, and a fit moves them once its kernels are measured.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, ClassVar

import numpy as np
from pydantic import Field

from gpusim.kernels.records import Kernel
from gpusim.specs import Frozen, GpuSpec

if TYPE_CHECKING:  # params imports the families' registry to build its records
    from gpusim.cost.params import GpuPhysics

# (lower, upper, start, unit) of a fitted field, as calibration.space takes them
Bounds = tuple[float, float, float, float]
# a family's efficiency relative to the GPU's fitted one (1: the same)
Ratio = Annotated[float, Field(gt=0.0, le=4.0, allow_inf_nan=False)]


@dataclass(frozen=True)
class GemmParts:
    """A kernel's time before overlap, per step shape: fixed (not overlapped: extra
    kernels it launches, pipeline fill), HBM streaming, and arithmetic at full clock."""

    fixed_s: np.ndarray
    memory_s: np.ndarray
    compute_s: np.ndarray


class GemmFamily(ABC):
    """One GEMM kernel family: ``Params`` (its calibration fields, ideal defaults),
    ``FIT`` (each fitted field's bounds) and ``parts`` (each family's own schedule)."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[Frozen]] = Frozen
    FIT: ClassVar[dict[str, Bounds]] = {}
    # the fields that are the kernel's arithmetic on the SMs (a tensor-core efficiency,
    # CUDA-core operations per element), the same on every GPU of one die (GpuSpec.die):
    # fitted once per die (calibration.die); fixed costs and anything touching memory
    # are fitted per GPU
    DIE: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def parts(self, k: Kernel, gpu: GpuSpec, physics: GpuPhysics, params: Frozen
              ) -> GemmParts:
        """The time of one occurrence of ``k`` (all its launches) in parts."""

    @staticmethod
    def call_fixed_s(k: Kernel, physics: GpuPhysics, family_fixed_s: float,
                     extra_s: np.ndarray | float = 0.0) -> np.ndarray:
        """The fixed part every family shares, per step shape: cuBLAS's fitted fixed
        cost per launch, the family's own per call (``family_fixed_s``) and ``extra_s``
        (per-expert setup, pad kernels)."""
        fixed = k.launches * physics.gemm_fixed_cost_s + family_fixed_s + extra_s
        return np.broadcast_to(fixed, k.flops.shape).astype(np.float64)

    def overlap_exponent(self, physics: GpuPhysics, params: Frozen) -> float:
        """How its memory and arithmetic overlap (``cost.kernel.combined``'s exponent:
        large = the longer of the two alone): the GPU's fitted one (cuBLAS's GEMMs),
        unless the family's kernels overlap otherwise (``overlap_exponent`` in its
        Params, 0 = the GPU's)."""
        own = float(getattr(params, "overlap_exponent", 0.0))
        return own if own > 0.0 else physics.overlap_exponent

    def tensor_efficiency(self, physics: GpuPhysics, params: Frozen) -> float:
        """The fraction of its dtype's tensor peak its matrix work sustains (the power
        model's tensor share counts ``compute_s`` times this)."""
        return physics.tensor_efficiency * float(getattr(params, "tensor_efficiency_ratio",
                                                         1.0))


def hbm_s(bytes_: np.ndarray, gpu: GpuSpec, physics: GpuPhysics, ratio: float = 1.0
          ) -> np.ndarray:
    """Seconds to stream ``bytes_`` at the GPU's sustained bandwidth times ``ratio``."""
    return bytes_ / (gpu.hbm_bandwidth_bytes_per_s * physics.hbm_bandwidth_efficiency * ratio)


def extra_launches_s(launches: np.ndarray | float, physics: GpuPhysics) -> np.ndarray:
    """GPU time of small kernels a family launches for some shapes only (token padding,
    a dequantize pass): each pays the per-kernel fixed cost, its first bytes' latency
    and the idle gap before it."""
    return np.asarray(launches, dtype=np.float64) * (
        physics.kernel_fixed_cost_s + physics.dram_latency_s + physics.launch_gap_s)
