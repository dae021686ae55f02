"""cuDNN's flash prefill kernel (SDPA with a causal mask from an empty cache).

One CTA per (sequence, head, 128-query block); causal blocks see fewer keys, the last
one sees all of them. Less than one wave of CTAs: the slowest CTA decides; many waves:
the average does. Each query head reads its KV head from L2 or HBM once per block
(modelled as one read per group). Pure and vectorised over step shapes.
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

BLOCK_M = 128      # query rows per CTA
BLOCK_N = 128      # keys per inner step


class CudnnPrefillParams(Frozen):
    """The tensor-core efficiency of its long key loops."""

    tensor_efficiency: Fraction = 1.0


def causal_schedule(a: AttentionShape, sms: float, cta_overhead_flops: float = 0.0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(CTAs in flight, flops on the busiest SM) of a causal prefill in waves of
    128-query blocks."""
    m_blocks = ceil_div(a.q, BLOCK_M)
    ctas = a.batch * a.heads * m_blocks
    waves = ceil_div(ctas, sms)
    mean_keys = (a.kv_len - a.q) + np.minimum(a.q, BLOCK_M * (m_blocks + 1) / 2)
    mean_cta = 4.0 * BLOCK_M * mean_keys * a.head_dim + cta_overhead_flops
    full_cta = 4.0 * BLOCK_M * a.kv_len * a.head_dim + cta_overhead_flops
    critical = np.where(waves <= 1, full_cta, waves * mean_cta)
    ideal = np.minimum(sms, ctas * a.kv_len / BLOCK_N)
    return np.maximum(ideal, 1.0), critical


class CudnnPrefill(AttentionFamily):
    name: ClassVar[str] = "cudnn_prefill"
    Params: ClassVar[type[Frozen]] = CudnnPrefillParams
    FIT: ClassVar[dict[str, Bounds]] = {"tensor_efficiency": (0.1, 1.0, 0.5, 1.0)}

    def parts(self, a: AttentionShape, kv_bytes: np.ndarray, gpu: GpuSpec,
              physics: GpuPhysics, params: Frozen, per_sm_flops: float) -> AttentionParts:
        ctas, critical = causal_schedule(a, float(gpu.sm_count), 0.0)
        return AttentionParts(ctas, critical, self.tensor_efficiency(params), kv_bytes)
