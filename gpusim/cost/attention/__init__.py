"""Attention kernel families: one module each, the stack names which runs each mode.

A family owns its schedule, KV reads, fixed costs, clock sensitivity and calibration
fields (``base.AttentionFamily``). ``FAMILIES`` is the registry the cost model, the
calibration record and the stack loader look names up in.
"""

from __future__ import annotations

from gpusim.cost.attention.base import AttentionFamily, AttentionParts, latency_bound_s
from gpusim.cost.attention.cudnn_masked import CudnnMasked
from gpusim.cost.attention.cudnn_prefill import CudnnPrefill
from gpusim.cost.attention.fa2 import Fa2
from gpusim.cost.attention.flash_decode import FlashDecode

FAMILIES: dict[str, AttentionFamily] = {
    f.name: f for f in (FlashDecode(), Fa2(), CudnnPrefill(), CudnnMasked())}


def family(name: str) -> AttentionFamily:
    """The family called ``name``; raises ValueError naming the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"attention family {name!r} is unknown; known: "
                         f"{', '.join(FAMILIES)}") from None


__all__ = ["FAMILIES", "AttentionFamily", "AttentionParts", "family", "latency_bound_s"]
