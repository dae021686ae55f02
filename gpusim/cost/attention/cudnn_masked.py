"""cuDNN's fused SDPA kernel under a boolean mask: a token tree's verify pass.

FlashAttention-2 cannot take a boolean mask, so SDPA runs cuDNN's fused kernel
(profiled: validation/data/*/tree_kernels.csv): 64-row query tiles that walk every key
(a mask can't skip blocks), never split, in waves over the SMs. Each tile pays its
MMAs, the softmax-and-mask work per score, and a prologue/epilogue per wave; the
kernel a fixed time per launch. Pure and vectorised over step shapes.

A mask whose rows hold an odd number of 2-byte elements (a static cache of 4097
positions, say) has rows that start on 2-byte boundaries only, and the kernel then
reads it by a slower path: profiled on an H100 (validation/data/h100-sxm/
probe_2026-12-06/hf_prefill/), the same kernel over the same shapes takes 1.6-2.1x as
long at 4097 keys as at 4098, 4100, 4104 or 4112, and the added time grows with the
scores the busiest SM works through (139-147 ps each, over head dims 64 and 128, 512
and 2048 query rows), not with the head dimension's MMAs: per-score CUDA-core work,
``misaligned_mask_ops_per_score`` operations at the GPU's fp32 rate.
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
# CUDA-core operations per score of a misaligned mask's slow path: the H100 profile's
# 143 ps per score on the busiest SM (mean of three shapes, 139-147) at one SM's fp32
# rate (67 TFLOP/s / 132 SMs): 72.6. A property of cuDNN's kernel on Hopper, not of a
# stack: every stack that runs this family with such a mask pays it.
MISALIGNED_MASK_OPS_PER_SCORE = 72.6


class CudnnMaskedParams(Frozen):
    """Tensor fraction, softmax-and-mask work per score (tensor-flop equivalents), time
    per wave of CTAs (prologue, epilogue) and per launch."""

    tensor_efficiency: Fraction = 1.0
    score_flops: NonNeg = 0.0
    wave_overhead_s: NonNeg = 0.0
    fixed_s: NonNeg = 0.0
    misaligned_mask_ops_per_score: NonNeg = MISALIGNED_MASK_OPS_PER_SCORE


def misaligned_mask(kv_len: np.ndarray) -> np.ndarray:
    """Whether a 2-byte mask over ``kv_len`` keys has rows off 4-byte boundaries (an odd
    row length): the kernel's slow mask path (profiled; 4098 keys already runs fast)."""
    return np.mod(np.asarray(kv_len, dtype=np.float64), 2.0) == 1.0


def schedule(a: AttentionShape, sms: float, wave_overhead_flops: float = 0.0,
             score_flops: float | np.ndarray = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(CTAs in flight, flops on the busiest SM): 64-row tiles walk every key, never
    split, in waves over the SMs, each paying its tiles' MMAs, softmax and mask
    (``score_flops`` per score, one per shape or one for all), and a prologue/epilogue
    per wave (``wave_overhead_flops``)."""
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
        # the slow mask path's CUDA-core work, as tensor-flops at this kernel's rate
        per_sm_fp32 = float(gpu.fp32_flops_per_s) / gpu.sm_count
        slow = np.where(misaligned_mask(a.kv_len),
                        p.misaligned_mask_ops_per_score * per_sm_flops * eff / per_sm_fp32,
                        0.0)
        ctas, critical = schedule(a, float(gpu.sm_count),
                                  p.wave_overhead_s * per_sm_flops * eff,
                                  p.score_flops + slow)
        return AttentionParts(ctas, critical, eff, kv_bytes, p.fixed_s)
