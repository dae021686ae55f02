"""A GPU as its datasheet describes it (``hardware/<name>.yaml``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from gpusim.specs.base import NAME_PATTERN, Frozen, NonNeg, Pos, PosInt


class LinkSpec(Frozen):
    """A GPU-to-GPU or host link: per-direction bandwidth and one-way latency."""

    bandwidth_bytes_per_s: Pos
    latency_s: NonNeg


class TensorFlops(Frozen):
    """Dense (no sparsity) tensor-core throughput per dtype; None where unsupported."""

    bf16: Pos
    fp16: Pos | None = None
    fp8: Pos | None = None
    int8: Pos | None = None


class Links(Frozen):
    nvlink: LinkSpec | None = None
    pcie: LinkSpec


class GpuSpec(Frozen):
    """One GPU as its datasheet describes it (SI units, names carry the unit)."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    display_name: str
    vendor: Literal["nvidia", "amd"]
    architecture: str
    hbm_capacity_bytes: Pos
    hbm_bandwidth_bytes_per_s: Pos
    l2_bytes: Pos
    sram_per_sm_bytes: Pos
    sm_count: PosInt
    boost_clock_hz: Pos
    fp32_flops_per_s: Pos
    tensor_flops_per_s: TensorFlops
    links: Links
    price_usd_per_gpu_hour: Pos
    sources: dict[str, str] = Field(default_factory=dict)

    def tensor_peak_flops_per_s(self, dtype: str) -> float:
        """Dense tensor throughput for ``dtype``; raises ValueError if unsupported."""
        value = getattr(self.tensor_flops_per_s, dtype, None)
        if value is None:
            raise ValueError(f"{self.name} has no tensor throughput for dtype {dtype!r}")
        return float(value)

    def matmul_peak_flops_per_s(self, dtype: str) -> float:
        """Dense matrix throughput for arithmetic in ``dtype``: the tensor cores' for
        bf16, fp16, fp8 and int8; the CUDA cores' for fp32 (PyTorch runs fp32 matmuls
        without TF32 unless told to). Raises ValueError where unsupported."""
        if dtype == "fp32":
            return float(self.fp32_flops_per_s)
        return self.tensor_peak_flops_per_s(dtype)

