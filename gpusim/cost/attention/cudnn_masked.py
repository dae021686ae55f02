"""cuDNN's fused SDPA kernel under a boolean mask: a token tree's verify pass.

FlashAttention-2 cannot take a boolean mask, so SDPA runs cuDNN's fused kernel
(profiled: validation/data/*/tree_kernels.csv): 64-row query tiles that walk every key
(a mask can't skip blocks), never split, in waves over the SMs. Each tile pays its
MMAs, the softmax-and-mask work per score, and a prologue/epilogue per wave; the
kernel a fixed time per launch. Pure and vectorised over step shapes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np

from gpusim.cost.attention.base import AttentionFamily, AttentionParts, Bounds, ceil_div
from gpusim.kernels.records import AttentionShape
from gpusim.specs import Frozen, GpuSpec
from gpusim.specs.base import Fraction, NonNeg

if TYPE_CHECKING:
    from gpusim.cost.params import GpuPhysics

BLOCK_M = 64     # query rows per CTA (profiled)


class CudnnMaskedParams(Frozen):
    """Tensor fraction, softmax-and-mask work per score (tensor-flop equivalents), time
    per wave of CTAs (prologue, epilogue) and per launch."""

    tensor_efficiency: Fraction = 1.0
    score_flops: NonNeg = 0.0
    wave_overhead_s: NonNeg = 0.0
    fixed_s: NonNeg = 0.0


def schedule(a: AttentionShape, sms: float, wave_overhead_flops: float = 0.0,
             score_flops: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(CTAs in flight, flops on the busiest SM): 64-row tiles walk every key, never
    split, in waves over the SMs, each paying its tiles' MMAs, softmax and mask, and a
    prologue/epilogue per wave (``wave_overhead_flops``)."""
    ctas = a.batch * a.heads * ceil_div(a.q, BLOCK_M)
    waves = ceil_div(ctas, sms)
    per_cta = BLOCK_M * a.kv_len * (4.0 * a.head_dim + score_flops)
    return np.maximum(np.minimum(sms, ctas), 1.0), waves * (per_cta + wave_overhead_flops)


class CudnnMasked(AttentionFamily):
    name: ClassVar[str] = "cudnn_masked"
    Params: ClassVar[type[Frozen]] = CudnnMaskedParams
    FIT: ClassVar[dict[str, Bounds]] = {
        "tensor_efficiency": (0.05, 1.0, 0.3, 1.0),
        "score_flops": (0.0, 4096.0, 256.0, 100.0),
        "wave_overhead_s": (0.0, 20e-6, 3e-6, 1e-6),
        "fixed_s": (0.0, 60e-6, 10e-6, 1e-6),
    }

    def parts(self, a: AttentionShape, kv_bytes: np.ndarray, gpu: GpuSpec,
              physics: GpuPhysics, params: Frozen, per_sm_flops: float) -> AttentionParts:
        p: CudnnMaskedParams = params  # type: ignore[assignment]
        eff = self.tensor_efficiency(p)
        ctas, critical = schedule(a, float(gpu.sm_count),
                                  p.wave_overhead_s * per_sm_flops * eff, p.score_flops)
        return AttentionParts(ctas, critical, eff, kv_bytes, p.fixed_s)
