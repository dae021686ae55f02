"""Flash-decoding: the split-KV decode kernel (cuDNN's SDPA flash kernel plus its lean
reduction, as PyTorch runs a decode step on Hopper).

A KV group's query heads are packed into one 64-row query tile (q = 1: each sequence's
group of heads is one tile), so each KV head is read once for its group; the keys are
split into whole 128-key blocks across more CTAs until the SMs are full, and the busiest
SM's flops set the compute time. Pure and vectorised over step shapes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np

from gpusim.cost.attention.base import AttentionFamily, AttentionParts, Bounds, ceil_div
from gpusim.kernels.records import AttentionShape
from gpusim.specs import Frozen, GpuSpec
from gpusim.specs.base import Fraction

if TYPE_CHECKING:
    from gpusim.cost.params import GpuPhysics

BLOCK_M = 64        # query rows per CTA (the group's heads x q, padded)
BLOCK_N = 128       # keys per inner step; also the split granularity
MAX_SPLITS = 128    # the keys split at most this many ways


class FlashDecodeParams(Frozen):
    """Its tensor-core efficiency (a decode step's attention is memory-bound; this
    matters only for long groups x q)."""

    tensor_efficiency: Fraction = 1.0


def split_kv_schedule(base: np.ndarray, kv_len: np.ndarray, block_m: float, head_dim: int,
                      sms: float, cta_overhead_flops: float = 0.0
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Flash-decoding: ``base`` CTAs (batch x heads x query blocks), keys split into
    whole 128-key blocks across more CTAs until the SMs are full.

    Returns (CTAs in flight if the keys split ideally, flops on the busiest SM).
    """
    n_blocks = ceil_div(kv_len, BLOCK_N)
    split = np.clip(np.floor(sms / base), 1.0, np.minimum(n_blocks, float(MAX_SPLITS)))
    waves = ceil_div(base * split, sms)
    keys = np.minimum(kv_len, ceil_div(n_blocks, split) * BLOCK_N)
    per_cta = 4.0 * block_m * keys * head_dim + cta_overhead_flops
    # fractional blocks keep the in-flight count monotone in batch and context
    ctas = np.minimum(sms, base * kv_len / BLOCK_N)
    return ctas, waves * per_cta


class FlashDecode(AttentionFamily):
    name: ClassVar[str] = "flash_decode"
    Params: ClassVar[type[Frozen]] = FlashDecodeParams
    FIT: ClassVar[dict[str, Bounds]] = {"tensor_efficiency": (0.1, 1.0, 0.5, 1.0)}
    # fitted as one value with the causal prefill kernel's (calibration.space), which is
    # the die's: so is this
    DIE = frozenset({"tensor_efficiency"})

    def parts(self, a: AttentionShape, kv_bytes: np.ndarray, gpu: GpuSpec,
              physics: GpuPhysics, params: Frozen, per_sm_flops: float) -> AttentionParts:
        base = a.batch * a.kv_heads * ceil_div(a.q * a.group, BLOCK_M)
        ctas, critical = split_kv_schedule(base, a.kv_len, BLOCK_M, a.head_dim,
                                           float(gpu.sm_count), 0.0)
        return AttentionParts(ctas, critical, self.tensor_efficiency(params), kv_bytes)
