"""cuDNN's flash prefill kernel (SDPA with a causal mask, as PyTorch runs a prefill on
Hopper: ``cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128xD``).

One CTA per (sequence, head, 128-query block) walks the 128-key tiles its causal rows
see: a block sees the cached prefix and the prompt up to its last row, so the first
block of a prompt walks one tile and the last walks them all. A CTA costs a prologue
and epilogue (``cta_overhead_s``: loading its queries, the pipeline's fill, writing its
output) plus, per key tile, the tile's MMAs (4 x head_dim flops a score) and its
softmax (``score_flops`` a score, in tensor-flop equivalents: scale, max, exp, sum run
on the CUDA cores and the MUFU beside the MMAs). The SMs take CTAs as they free up
(``list_schedule_flops``). The kernel's own launch cost (``fixed_s``) replaces every
attention kernel's shared one: its profiled calls put it near 3 us, where the shared
one is fitted to the decode kernels' split and combine.

Measured (H100, ``validation/data/h100-sxm/probe_2026-12-07_s21/prefill_*``): at batch
1 its time grows 2.5-3.5x per doubling of the prompt (the per-CTA cost weighs at short
prompts, the quadratic key walk at long ones); batch 4 x 512 tokens runs the same 512
CTAs as batch 1 x 2048 in 22 us against 56 (its CTAs walk 2.5 tiles on average, not
8.5). Pure and vectorised over step shapes.
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

BLOCK_M = 128      # query rows per CTA (two 64-row warpgroup tiles)
BLOCK_N = 128      # keys per inner step
# how fast the list schedule's tail shrinks as the CTAs' costs even out: matched to an
# exact greedy simulation of the SMs taking CTAs in launch order (tests/
# test_cudnn_prefill.py: within 1% on average over 1,000 shapes, not to measurements)
TAIL_SPREAD = 1.5


class CudnnPrefillParams(Frozen):
    """The kernel's calibration fields (defaults: the ideal datasheet kernel)."""

    # the fraction of peak its MMAs sustain
    tensor_efficiency: Fraction = 1.0
    # softmax work per score, in tensor-flop equivalents (MMAs are 4 x head_dim a score)
    score_flops: NonNeg = 0.0
    # a CTA's prologue and epilogue, at the tensor efficiency's pace
    cta_overhead_s: NonNeg = 0.0
    # its launch, in place of every attention kernel's shared fixed cost
    fixed_s: NonNeg = 0.0


def key_tiles(a: AttentionShape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fewest, mean, most) 128-key tiles a CTA of shape ``a`` walks: block i of the
    prompt sees the cached prefix and rows up to 128 (i + 1)."""
    m_blocks = ceil_div(a.q, BLOCK_M)
    prefix = a.kv_len - a.q
    most = ceil_div(a.kv_len, BLOCK_N)
    fewest = ceil_div(prefix + np.minimum(a.q, BLOCK_M), BLOCK_N)
    # blocks before the last end on a tile boundary past the prefix's own tiles
    # (BLOCK_M == BLOCK_N): block i walks i + 1 + ceil(prefix / 128) of them
    before = (m_blocks - 1.0) * (m_blocks / 2.0 + ceil_div(prefix, BLOCK_N))
    return fewest, (before + most) / m_blocks, most


def list_schedule_flops(ctas: np.ndarray, sms: float, fewest: np.ndarray,
                        mean: np.ndarray, most: np.ndarray) -> np.ndarray:
    """The busiest SM's work when ``sms`` SMs take ``ctas`` CTAs of the given (fewest,
    mean, most) work as they free up. Up to one CTA per SM: the longest CTA. Beyond, the
    average load plus a tail: one mean CTA where the costs spread widely (a short CTA
    fills each gap), the last wave's empty share of one where they are even (whole
    waves, as a GEMM's tiles)."""
    w = ctas / sms
    spread = np.minimum(1.0, TAIL_SPREAD * (most - fewest) / np.maximum(most, 1e-30))
    tail = mean * (spread + (1.0 - spread) * (np.ceil(w) - w))
    return np.where(ctas <= sms, most, np.maximum(most, w * mean + tail))


class CudnnPrefill(AttentionFamily):
    name: ClassVar[str] = "cudnn_prefill"
    Params: ClassVar[type[Frozen]] = CudnnPrefillParams
    FIT: ClassVar[dict[str, Bounds]] = {
        "tensor_efficiency": (0.1, 1.0, 0.5, 1.0),
        "score_flops": (0.0, 2048.0, 128.0, 100.0),
        "cta_overhead_s": (0.0, 10e-6, 1e-6, 1e-6),
        "fixed_s": (0.0, 20e-6, 3e-6, 1e-6),
    }
    # its work on the SMs: only the H100's profiles (512-8192 tokens, batch 1-8) tell the
    # MMAs' pace, the softmax, the per-CTA and the launch costs apart; the H200 is the
    # same die (its profiled calls at 512 tokens take the H100's times)
    DIE = frozenset({"tensor_efficiency", "score_flops", "cta_overhead_s", "fixed_s"})
    SHARED_FIXED = False

    def parts(self, a: AttentionShape, kv_bytes: np.ndarray, gpu: GpuSpec,
              physics: GpuPhysics, params: Frozen, per_sm_flops: float) -> AttentionParts:
        p: CudnnPrefillParams = params  # type: ignore[assignment]
        eff = self.tensor_efficiency(p)
        sms = float(gpu.sm_count)
        ctas = a.batch * a.heads * ceil_div(a.q, BLOCK_M)
        tile_flops = BLOCK_M * BLOCK_N * (4.0 * a.head_dim + p.score_flops)
        cta_flops = p.cta_overhead_s * per_sm_flops * eff
        fewest, mean, most = key_tiles(a)
        critical = list_schedule_flops(ctas, sms, cta_flops + fewest * tile_flops,
                                       cta_flops + mean * tile_flops,
                                       cta_flops + most * tile_flops)
        in_flight = np.maximum(np.minimum(sms, ctas * a.kv_len / BLOCK_N), 1.0)
        return AttentionParts(in_flight, critical, eff, kv_bytes, p.fixed_s)
