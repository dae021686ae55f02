"""cuDNN's fused SDPA kernel under a mask: a token tree's verify pass, hf-transformers'
static-cache attention, the serving harness's padded decode.

FlashAttention-2 cannot take a boolean mask, so SDPA runs cuDNN's fused kernel
(profiled: validation/data/*/tree_kernels.csv, validation/data/h100-sxm/
probe_2026-12-06/): 64-row query tiles that walk every key (a mask can't skip blocks,
padded keys included), never split, in waves over the SMs, each wave paying a
prologue/epilogue, the kernel a fixed time per launch. A tile's time is the longer of
two: its MMAs and the softmax-and-mask work per score (what bounds a prefill, whose
row tiles of one head read the same keys together from L2), and, for a CTA that is its
head's only row tile (a decode or a verify of a few rows), the stream of its KV head's
keys from HBM. That stream is latency-bound: a CTA gets ~33 GB/s plus ~6 ns a key on
an H100, so a few CTAs move far less than HBM can, while a full wave shares HBM (the
query heads of a group reading their KV head once); the profiled kernels of the three
regimes fix the two apart (calibration.attention_points). Pure and vectorised over
step shapes.

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

from typing import TYPE_CHECKING, Annotated, ClassVar

import numpy as np
from pydantic import Field

from gpusim.cost.attention.base import AttentionFamily, AttentionParts, Bounds, ceil_div
from gpusim.cost.overlap import overlapped
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
# a streaming CTA's time per key besides its bytes: 7.0 ns, fitted (with the per-CTA
# bandwidth) to the H100's profiled kernels under three stacks (70 of them; head dims
# 64 and 128, which alone tell a per-key time from a per-byte one). An SM's cost, held
# for every GPU, so that a GPU or a fit without both head dims still prices the other
# (Hopper's H200, whose profiles are tree verifies of batch 32 alone, shares the SM)
STREAM_S_PER_KEY = 7.0e-9


class CudnnMaskedParams(Frozen):
    """Tensor fraction, softmax-and-mask work per score (tensor-flop equivalents), time
    per wave of CTAs (prologue, epilogue) and per launch; a streaming CTA's time per
    key (``stream_s_per_key``, and ``stream_s_per_row_key`` for each query row the tile
    holds) and bandwidth (``cta_stream_bytes_per_s``), and how its
    stream and the GPU's aggregate HBM traffic combine (``stream_overlap_exponent``);
    the slow path of a misaligned mask. Defaults: the ideal kernel (no streaming
    limit), but for the two constants read off profiles (``STREAM_S_PER_KEY``,
    ``MISALIGNED_MASK_OPS_PER_SCORE``)."""

    tensor_efficiency: Fraction = 1.0
    score_flops: NonNeg = 0.0
    wave_overhead_s: NonNeg = 0.0
    fixed_s: NonNeg = 0.0
    stream_s_per_key: NonNeg = STREAM_S_PER_KEY
    stream_s_per_row_key: NonNeg = 0.0
    cta_stream_bytes_per_s: Annotated[float, Field(gt=0.0)] = 1e18
    stream_overlap_exponent: Annotated[float, Field(ge=1.0, le=64.0)] = 3.0
    misaligned_mask_ops_per_score: NonNeg = MISALIGNED_MASK_OPS_PER_SCORE


def misaligned_mask(kv_len: np.ndarray) -> np.ndarray:
    """Whether a 2-byte mask over ``kv_len`` keys has rows off 4-byte boundaries (an odd
    row length): the kernel's slow mask path (profiled; 4098 keys already runs fast)."""
    return np.mod(np.asarray(kv_len, dtype=np.float64), 2.0) == 1.0


def stream_wave_s(a: AttentionShape, kv_bytes: np.ndarray, bw: float, sms: float,
                  p: CudnnMaskedParams) -> np.ndarray:
    """Seconds one wave of single-tile CTAs spends streaming keys (0 where a head's
    query rows span several tiles: its tiles read the keys together, from L2). Each
    such CTA walks its KV head alone: ``stream_s_per_key``, ``stream_s_per_row_key`` for
    each query row it holds (the softmax of real rows: a 16-node tree's tile takes
    longer per key than a decode's 4 rows) and its bytes at ``cta_stream_bytes_per_s``
    per key (latency-bound: a few CTAs get far less than HBM each); a full wave also
    shares HBM, the query heads of a group reading their KV
    head once between them; the two combine at ``stream_overlap_exponent``."""
    tiles = ceil_div(a.q, BLOCK_M)
    ctas = a.batch * a.heads * tiles
    key_bytes = kv_bytes / np.maximum(a.batch * a.kv_heads * a.kv_len, 1.0)  # K + V
    rows = np.minimum(a.q, BLOCK_M)
    alone = a.kv_len * (p.stream_s_per_key + rows * p.stream_s_per_row_key
                        + key_bytes / p.cta_stream_bytes_per_s)
    shared = np.minimum(ctas, sms) / a.group * a.kv_len * key_bytes / bw
    wave = overlapped(alone, shared, p.stream_overlap_exponent)
    return np.where(tiles == 1.0, wave, 0.0)


def schedule(a: AttentionShape, sms: float, wave_overhead_flops: float = 0.0,
             score_flops: float | np.ndarray = 0.0,
             stream_flops: float | np.ndarray = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(CTAs in flight, flops on the busiest SM): 64-row tiles walk every key, never
    split, in waves over the SMs, each paying its tiles' MMAs, softmax and mask
    (``score_flops`` per score, one per shape or one for all) or its key stream
    (``stream_flops`` a wave, as tensor-flops: the longer), and a prologue/epilogue
    per wave (``wave_overhead_flops``)."""
    ctas = a.batch * a.heads * ceil_div(a.q, BLOCK_M)
    waves = ceil_div(ctas, sms)
    per_cta = np.maximum(BLOCK_M * a.kv_len * (4.0 * a.head_dim + score_flops),
                         stream_flops)
    return np.maximum(np.minimum(sms, ctas), 1.0), waves * (per_cta + wave_overhead_flops)


class CudnnMasked(AttentionFamily):
    name: ClassVar[str] = "cudnn_masked"
    Params: ClassVar[type[Frozen]] = CudnnMaskedParams
    FIT: ClassVar[dict[str, Bounds]] = {
        "tensor_efficiency": (0.05, 1.0, 0.4, 1.0),
        "score_flops": (0.0, 4096.0, 100.0, 100.0),
        "wave_overhead_s": (0.0, 20e-6, 3e-6, 1e-6),
        "fixed_s": (0.0, 60e-6, 2e-6, 1e-6),
        "stream_s_per_row_key": (0.0, 5e-9, 0.2e-9, 1e-9),
        "cta_stream_bytes_per_s": (5e9, 500e9, 35e9, 1e9),
        "stream_overlap_exponent": (1.0, 16.0, 4.0, 1.0),
    }
    # the SM's side of the kernel: its MMAs, softmax-and-mask work, wave prologue and
    # epilogue, launch and per-row-key softmax; the per-CTA stream bandwidth and how
    # it shares HBM stay per GPU. Steps alone cannot fix the SM's side: fitted on the
    # H200's tree verifies (batch 32, one regime) it went to 7 us a launch and 4.5x the
    # H100's work per score, which overpriced the H200's serving decode steps by 5-11%
    DIE = frozenset({"tensor_efficiency", "score_flops", "wave_overhead_s", "fixed_s",
                     "stream_s_per_row_key"})

    def parts(self, a: AttentionShape, kv_bytes: np.ndarray, gpu: GpuSpec,
              physics: GpuPhysics, params: Frozen, per_sm_flops: float) -> AttentionParts:
        p: CudnnMaskedParams = params  # type: ignore[assignment]
        eff = self.tensor_efficiency(p)
        sms = float(gpu.sm_count)
        # the slow mask path's CUDA-core work, as tensor-flops at this kernel's rate
        per_sm_fp32 = float(gpu.fp32_flops_per_s) / gpu.sm_count
        slow = np.where(misaligned_mask(a.kv_len),
                        p.misaligned_mask_ops_per_score * per_sm_flops * eff / per_sm_fp32,
                        0.0)
        bw = gpu.hbm_bandwidth_bytes_per_s * physics.attention_bandwidth_efficiency
        stream = stream_wave_s(a, kv_bytes, bw, sms, p) * per_sm_flops * eff
        ctas, critical = schedule(a, sms, p.wave_overhead_s * per_sm_flops * eff,
                                  p.score_flops + slow, stream)
        # the KV stream is the schedule's own (above): HBM is not charged again
        single = ceil_div(a.q, BLOCK_M) == 1.0
        return AttentionParts(ctas, critical, eff, np.where(single, 0.0, kv_bytes),
                              p.fixed_s)
