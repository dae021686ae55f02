"""Pointwise kernels: vectorised or not, chains whose tensors stay in L2, and row
reductions (RMSNorm's mean) that are latency-bound per row until rows run side by side.
Pure and vectorised over step shapes."""

from __future__ import annotations

import numpy as np

from gpusim.cost.params import GpuPhysics
from gpusim.specs import GpuSpec


def l2_aware_s(total_bytes: np.ndarray, launches: float, bw: np.ndarray | float,
                gpu: GpuSpec,
                physics: GpuPhysics) -> np.ndarray:
    """Streaming time of a chain of pointwise kernels whose inputs the previous kernel
    just wrote: the part of each kernel's traffic that fits in L2 moves at L2 speed."""
    per_kernel = total_bytes / max(launches, 1.0)
    in_l2 = np.minimum(per_kernel, gpu.l2_bytes)
    l2_bw = bw * physics.l2_bandwidth_ratio
    return (in_l2 / l2_bw + (per_kernel - in_l2) / bw) * max(launches, 1.0)


def reduction_s(r: np.ndarray, physics: GpuPhysics) -> np.ndarray:
    """Row reductions (RMSNorm's mean): ``r`` = [rows, row_elements] per shape.

    PyTorch's reduce kernel walks a row's elements at a latency-bound rate and, for
    few rows, handles them one after another; past ``reduction_parallel_rows`` rows
    they run side by side on other SMs, so the time stops growing (profiled on H100).
    """
    rows, row_elements = r
    return np.minimum(rows, physics.reduction_parallel_rows) * row_elements \
        * physics.reduction_s_per_element
