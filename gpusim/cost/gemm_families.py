"""GEMM kernel families other than cuBLAS's bf16 GEMM: the registry the cost model,
the calibration record and the stack loader look names up in.

A family owns its schedule, calibration fields and fit bounds (``gemm_family.GemmFamily``);
quantized projections are in ``cost.quant``, expert GEMMs in ``cost.moe``. A stack names
the family each gemm op runs (``family:``; none: ``cublas``, ``cost.gemm``'s model).
"""

from __future__ import annotations

from gpusim.cost.gemm_family import GemmFamily, GemmParts
from gpusim.cost.moe import FusedMoe, GroupedMm
from gpusim.cost.quant import Int8Wo, ScaledMm, Tinygemm

GEMM_FAMILIES: dict[str, GemmFamily] = {
    f.name: f for f in (ScaledMm(), Tinygemm(), Int8Wo(), GroupedMm(), FusedMoe())}
KNOWN = ("cublas", *GEMM_FAMILIES)


def gemm_family(name: str) -> GemmFamily:
    """The family called ``name``; raises ValueError naming the known ones."""
    try:
        return GEMM_FAMILIES[name]
    except KeyError:
        raise ValueError(f"GEMM family {name!r} is unknown; known: "
                         f"{', '.join(KNOWN)}") from None


__all__ = ["GEMM_FAMILIES", "KNOWN", "GemmFamily", "GemmParts", "gemm_family"]
