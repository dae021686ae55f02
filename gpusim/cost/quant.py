"""Quantized projection GEMMs: fp8 ``torch._scaled_mm``, int4 tinygemm and int8
weight-only (the kernels ``validation/harness/quant_forward.py`` runs).

Why quantization is not magic, in the model's terms:

* ``scaled_mm`` (fp8 x fp8 -> bf16, per-tensor scales): cuBLASLt's fp8 GEMM, tiled
  like cuBLAS's bf16 one but at the fp8 tensor rate, reading 1-byte weights. Its
  activation must be scaled and cast on every call: the stack lists those kernels (an
  amax reduction, scalar ops, div, clamp, cast: torch-fp8's ``*_act_quant*`` ops), and
  where the stack pads the token rows to 16, the two kernels of ``F.pad`` (a fill and a
  copy) run for shapes whose token count is not a multiple: priced here, per shape
  (a kernel record's launch count is one per op, so in eager mode these two launches'
  host cost is not counted; under CUDA graphs, what the harness times, they are exact).
  At small batch the weight bytes halve but eight small kernels per projection are
  added: it can lose to bf16 there and wins once the GEMMs dominate.
* ``tinygemm`` (int4 weight-only, ``torch._weight_int4pack_mm``): a decode kernel. Each
  warp computes 16 token rows (one m16n8k16 MMA row tile) over the whole K,
  dequantizing its int4 weights in registers, so every 16 rows are one pass over all
  the weights: the MMA work (padded to 16 rows) and the dequantize (CUDA-core
  operations per weight element) repeat per pass, while the int4 weights stream from
  HBM once (plus ``reread_fraction`` of them per later pass, what L2 misses). Its grid is
  one CTA per 8 output columns per 16 rows (``int4mm.cu``: grid (1, n / 8, m / 16)), and
  each CTA loads its rows of the bf16 activation over the whole K itself: the
  activations are read n / 8 times, from L2, ``m * k * 2 * n / 8`` bytes, a quarter of a
  byte per weight element per token row (rows past ``m`` are not loaded). That traffic,
  at ``activation_l2_ratio`` times the GPU's fitted L2 bandwidth and overlapping the
  weights' HBM stream (``l2_overlap_exponent``), is what grows with the batch: measured
  on H100 (validation/data/h100-sxm/stacks/torch-int4/), step time rises linearly with
  the tokens from 8 tokens on, ~0.5 ms per token for Llama 3.1 8B, within a 16-row pass
  as much as across passes, less below (there the weight stream hides the reads). At
  batch 1 it streams a quarter of bf16's bytes and wins; from batch ~8 the activation
  re-reads cost more than the bf16 weights it saves, and it loses.
* ``int8wo`` (int8 weight-only, compiled by Inductor): at one token a fused Triton
  GEMV streaming int8 weights (its multiply-adds on CUDA cores); at more, a Triton
  dequantize kernel writing the bf16 weight, cuBLAS's GEMM on it, and a scale kernel:
  three kernels, the weight moved three times (the two extra launches priced per shape,
  as fp8's padding).

Every field defaults to the ideal kernel relative to the GPU's fitted physics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, ClassVar

import numpy as np
from pydantic import Field

from gpusim.cost.gemm_family import (
    Bounds,
    GemmFamily,
    GemmParts,
    Ratio,
    extra_launches_s,
    hbm_s,
)
from gpusim.cost.overlap import overlapped
from gpusim.kernels.records import Kernel
from gpusim.specs import Frozen, GpuSpec
from gpusim.specs.base import NonNeg

if TYPE_CHECKING:
    from gpusim.cost.params import GpuPhysics

TINYGEMM_ROWS = 16        # token rows per tinygemm pass (its m16n8k16 MMA tile)
TINYGEMM_N_COLUMNS = 8    # output columns per tinygemm CTA (each loads its activation rows)
PAD_KERNELS = 2           # F.pad: a fill of the padded tensor and a copy of the rows
DEQUANT_KERNELS = 2       # int8wo at > 1 token: the dequantize and the scale kernels


def _gemm_compute_s(k: Kernel, gpu: GpuSpec, physics: GpuPhysics, dtype: str,
                    efficiency: float) -> np.ndarray:
    """A tiled GEMM's arithmetic (cost.gemm's schedule: waves of tiles over the SMs)
    at ``dtype``'s tensor rate times ``efficiency``."""
    # imported here: cost.gemm imports params, which imports this module's registry
    from gpusim.cost.gemm import gemm_schedule

    g = k.gemm
    assert g is not None  # built by kernels.quant.gemm_op_kernel
    _, waves, cta_flops = gemm_schedule(g.m, g.n, g.k, gpu, physics)
    per_sm = gpu.matmul_peak_flops_per_s(dtype) / gpu.sm_count
    return waves * cta_flops / (per_sm * efficiency)


class ScaledMmParams(Frozen):
    """cuBLASLt's fp8 GEMM: its tensor efficiency and bandwidth relative to cuBLAS's
    bf16 GEMMs on this GPU, and a fixed cost per call beyond theirs."""

    tensor_efficiency_ratio: Ratio = 1.0
    bandwidth_ratio: Ratio = 1.0
    fixed_s: NonNeg = 0.0


class ScaledMm(GemmFamily):
    name: ClassVar[str] = "scaled_mm"
    Params: ClassVar[type[Frozen]] = ScaledMmParams
    DIE: ClassVar[frozenset[str]] = frozenset({"tensor_efficiency_ratio"})
    FIT: ClassVar[dict[str, Bounds]] = {
        "tensor_efficiency_ratio": (0.3, 1.3, 0.9, 1.0),
        "bandwidth_ratio": (0.3, 1.2, 0.9, 1.0),
        "fixed_s": (0.0, 10e-6, 1e-6, 1e-6),
    }

    def parts(self, k: Kernel, gpu: GpuSpec, physics: GpuPhysics, params: Frozen
              ) -> GemmParts:
        p = params
        assert isinstance(p, ScaledMmParams)
        g = k.gemm
        assert g is not None
        compute = _gemm_compute_s(k, gpu, physics, k.dtype,
                                  physics.tensor_efficiency * p.tensor_efficiency_ratio)
        memory = hbm_s(k.bytes, gpu, physics, p.bandwidth_ratio)
        pad_s: np.ndarray | float = 0.0
        rows = getattr(g, "rows", None)
        if rows is not None:
            # F.pad where the rows were padded: fill [m, k] and copy [rows, k] (bf16)
            pads = np.where(np.asarray(g.m) > rows, float(PAD_KERNELS), 0.0)
            pad_bytes = np.where(pads > 0, g.m * g.k * 2.0 + rows * g.k * 4.0, 0.0)
            pad_s = extra_launches_s(pads, physics) + hbm_s(pad_bytes, gpu, physics)
        return GemmParts(self.call_fixed_s(k, physics, p.fixed_s, pad_s), memory, compute)


class TinygemmParams(Frozen):
    """tinygemm (int4 weight-only): its MMA efficiency (mma.sync) and weight streaming
    relative to cuBLAS's, CUDA-core operations per weight element per pass to
    dequantize (unpack, convert, scale and zero: a fused multiply-add is 2), the share
    of the weights each pass after the first re-reads from HBM, the bandwidth of its
    activation re-reads relative to the GPU's fitted L2 bandwidth, how far those L2
    reads overlap the weights' HBM stream (``cost.overlap.overlapped``'s exponent: 1,
    the default, adds them), a fixed cost per call."""

    tensor_efficiency_ratio: Ratio = 1.0
    bandwidth_ratio: Ratio = 1.0
    dequant_flops_per_element: Annotated[float, Field(ge=0.0, le=200.0)] = 2.0
    reread_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    activation_l2_ratio: Annotated[float, Field(gt=0.0, le=4.0)] = 1.0
    l2_overlap_exponent: Annotated[float, Field(ge=1.0, le=64.0)] = 1.0
    fixed_s: NonNeg = 0.0


class Tinygemm(GemmFamily):
    name: ClassVar[str] = "tinygemm"
    Params: ClassVar[type[Frozen]] = TinygemmParams
    DIE: ClassVar[frozenset[str]] = frozenset({"tensor_efficiency_ratio",
                                               "dequant_flops_per_element"})
    FIT: ClassVar[dict[str, Bounds]] = {
        "tensor_efficiency_ratio": (0.05, 1.2, 0.5, 1.0),
        "bandwidth_ratio": (0.2, 1.2, 0.7, 1.0),
        "dequant_flops_per_element": (0.0, 100.0, 8.0, 1.0),
        "reread_fraction": (0.0, 1.0, 0.2, 1.0),
        "activation_l2_ratio": (0.2, 4.0, 1.0, 1.0),
        "l2_overlap_exponent": (1.0, 16.0, 2.0, 1.0),
        "fixed_s": (0.0, 10e-6, 1e-6, 1e-6),
    }

    def parts(self, k: Kernel, gpu: GpuSpec, physics: GpuPhysics, params: Frozen
              ) -> GemmParts:
        p = params
        assert isinstance(p, TinygemmParams)
        g = k.gemm
        assert g is not None
        passes = np.ceil(np.maximum(g.m, 1.0) / TINYGEMM_ROWS)
        nk = float(g.n) * g.k
        mma_rate = gpu.matmul_peak_flops_per_s(k.dtype) * physics.tensor_efficiency \
            * p.tensor_efficiency_ratio
        compute = passes * nk * (2.0 * TINYGEMM_ROWS / mma_rate
                                 + p.dequant_flops_per_element / gpu.fp32_flops_per_s)
        reread = (passes - 1.0) * p.reread_fraction * k.weight_bytes
        # every CTA (8 output columns) loads its token rows of the bf16 activation
        activation_l2_bytes = np.asarray(g.m, dtype=np.float64) * g.k * 2.0 \
            * np.ceil(g.n / TINYGEMM_N_COLUMNS)
        l2_bw = gpu.hbm_bandwidth_bytes_per_s * physics.hbm_bandwidth_efficiency \
            * physics.l2_bandwidth_ratio * p.activation_l2_ratio
        weights_s = hbm_s(k.bytes + reread, gpu, physics, p.bandwidth_ratio)
        memory = overlapped(weights_s, activation_l2_bytes / l2_bw, p.l2_overlap_exponent)
        return GemmParts(self.call_fixed_s(k, physics, p.fixed_s), memory, compute)


class Int8WoParams(Frozen):
    """int8 weight-only under Inductor: the fused GEMV's weight streaming relative to
    cuBLAS's, CUDA-core operations per weight element to dequantize, a fixed cost."""

    bandwidth_ratio: Ratio = 1.0
    dequant_flops_per_element: Annotated[float, Field(ge=0.0, le=200.0)] = 2.0
    fixed_s: NonNeg = 0.0


class Int8Wo(GemmFamily):
    name: ClassVar[str] = "int8wo"
    Params: ClassVar[type[Frozen]] = Int8WoParams
    DIE: ClassVar[frozenset[str]] = frozenset({"dequant_flops_per_element"})
    FIT: ClassVar[dict[str, Bounds]] = {
        "bandwidth_ratio": (0.2, 1.2, 0.8, 1.0),
        "dequant_flops_per_element": (0.0, 100.0, 4.0, 1.0),
        "fixed_s": (0.0, 10e-6, 1e-6, 1e-6),
    }

    def parts(self, k: Kernel, gpu: GpuSpec, physics: GpuPhysics, params: Frozen
              ) -> GemmParts:
        p = params
        assert isinstance(p, Int8WoParams)
        g = k.gemm
        assert g is not None
        nk = float(g.n) * g.k
        one = np.asarray(g.m) <= 1.0
        # one token: the fused GEMV, a multiply and a sum per weight on CUDA cores
        gemv_compute = np.full_like(k.flops, nk * (2.0 + p.dequant_flops_per_element)
                                    / gpu.fp32_flops_per_s)
        gemv_memory = hbm_s(k.bytes, gpu, physics, p.bandwidth_ratio)
        # more: dequantize (read int8, write bf16), cuBLAS on the bf16 weight, scale
        bf16_bytes = k.bytes - k.weight_bytes + 2.0 * nk
        deq_s = hbm_s(np.full_like(k.flops, 3.0 * nk), gpu, physics) \
            + nk * p.dequant_flops_per_element / gpu.fp32_flops_per_s
        scale_s = hbm_s(4.0 * g.m * g.n, gpu, physics)
        gemm_compute = _gemm_compute_s(k, gpu, physics, k.dtype, physics.tensor_efficiency)
        split = extra_launches_s(DEQUANT_KERNELS, physics) + deq_s + scale_s \
            + physics.gemm_fixed_cost_s
        fixed = k.launches * np.where(one, 0.0, split) + p.fixed_s
        return GemmParts(fixed,
                         np.where(one, gemv_memory, hbm_s(bf16_bytes, gpu, physics)),
                         np.where(one, gemv_compute, gemm_compute))

    def tensor_efficiency(self, physics: GpuPhysics, params: Frozen) -> float:
        # at one token its arithmetic is on CUDA cores; at more, cuBLAS's GEMM: the
        # power model's tensor share counts it at cuBLAS's efficiency
        return physics.tensor_efficiency
