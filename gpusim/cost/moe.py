"""Expert GEMMs of an MoE layer: PyTorch's grouped GEMM and a fused-MoE kernel.

An expert GEMM multiplies the T x k token-slots, sorted by expert, by the weights of
the experts they route to: each touched expert is its own GEMM problem. Its bytes are
the touched experts' weights (``kernels.moe``: the expected distinct experts grow with
the tokens and saturate at all of them); its arithmetic is tiles of each expert's rows,
so a step whose experts get few rows each pays for mostly empty tiles.

* ``grouped_mm``: ``torch._grouped_mm`` (what plain PyTorch runs, no custom kernels):
  one CUTLASS grouped GEMM over all groups on sm90, the groups' tiles scheduled together
  in waves over the SMs; unquantized weights. Its tile is PyTorch's pick
  (aten/src/ATen/native/cuda/GroupMM.cu, ``dispatch_bf16_grouped_kernel_on_tile_size``):
  where the rows per group (all slots over all experts) or n are at most 128, a
  64 x 128 ping-pong CTA tile, else a 128 x 256 cooperative one, both in clusters of two
  CTAs along M that share each weight tile (TMA multicast). Profiled on H100 at every
  Qwen3-30B-A3B shape, decode 1 to a 512-token prefill (validation/data/h100-sxm/moe/
  kernels.csv): TileShape 64 x 128, ClusterShape 2 x 1 x 1,
  KernelPtrArrayTmaWarpSpecializedPingpong. A cluster covers two CTA tiles of rows, so
  an expert's rows are padded to multiples of ``tile_m`` = 2 x 64 = 128 (a cluster whose
  expert has 64 rows or fewer leaves its second CTA without rows), the large kernel's
  to multiples of 256, in 256-column tiles. Before the GEMM, PyTorch launches
  ``prepare_grouped_gemm_data`` (one CTA writing each group's pointers and problem
  size: 96 launches in 48 layers at every profiled shape, 1.7 us each), priced as one
  more small kernel per call. Each row tile streams its expert's whole weight, and
  under the small kernel a second tile of the same expert reads it again from HBM: the
  weight bytes are paid once per expected row tile. Under the large kernel they are
  not: its second tiles find the weight in L2. Both kernels overlap their loads and
  MMAs (TMA, warp-specialized) about as well as the longer of the two alone
  (``overlap_exponent``). Measured on H100, Mixtral 8x7B (8 layers) prefill
  (validation/data/h100-sxm/moe/steps.csv; the grouped kernel's own times in
  validation/data/h100-sxm/probe_2026-12-06/moe_profile/): 11.2 ms at 384 tokens (96
  rows an expert, one 128-row tile each), 15.0 at 512 (128 rows on average: about half
  the experts spill into a second tile, whose weight read makes the kernel 1.42x as
  long, 1497 against 1053 us a layer), 12.7 at 640 (160 rows: the 256-row large kernel,
  one tile again) and 17.8 at 1024 (256 rows: a second large tile for about half of
  them, its weight from L2: the kernel 1517 us a layer where re-reading it from HBM
  would take about 1670). The harness's grouped-GEMM probe (every expert given
  exactly r rows; validation/data/h100-sxm/probe_2026-12-06/grouped_mm*/) shows both
  tiles directly: the cooperative kernel's time steps up 1.85x from 256 to 257 rows an
  expert (Mixtral gate_up), and one expert spilling past 128 rows costs the ping-pong
  kernel 9% (its weight read again). Its efficiency, bandwidth and fixed cost relative
  to cuBLAS's are fitted per GPU on those probes and the MoE steps
  (``calibration.moe_fit``). The permutation (sort, gather) and the combine are the
  stack's own ops.
* ``fused_moe``: a fused-MoE kernel as vLLM and SGLang run it (Triton's ``fused_moe``
  or CUTLASS's grouped MoE): the token gather fused into the GEMM's loads, each
  expert's rows padded to ``block_m`` (moe_align_block_size), weights unquantized or
  quantized (fp8 with fp8 activations at the fp8 rate; int8, int4, fp4 weight-only,
  dequantized per row block at ``dequant_flops_per_element`` CUDA-core operations per
  weight element). A stack running it lists its own align and combine kernels.

Row tiles: each expert's rows (Binomial(T, pi_i) under the routing,
``kernels.moe.expected_row_tiles``) in ceil(rows / tile) tiles, summed over the experts:
the rows of a few hundred tokens cluster near their mean, so 96 rows an expert is one
128-row tile for nearly every expert and 128 rows is two for about half of them.
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
from gpusim.kernels.moe import ExpertGemmShape
from gpusim.kernels.records import Kernel
from gpusim.specs import Frozen, GpuSpec
from gpusim.specs.base import NonNeg

if TYPE_CHECKING:
    from gpusim.cost.params import GpuPhysics

RowTile = Annotated[int, Field(ge=1, le=512)]
# torch._grouped_mm on sm90 (GroupMM.cu): problems whose rows per group or n are at most
# SMALL_PROBLEM_ROWS run the small kernel (GroupedMmParams.tile_m rows per cluster tile,
# SMALL_TILE_N columns); others the large one (LARGE_TILE_M rows per cluster: two
# 128-row CTA tiles, LARGE_TILE_N columns)
SMALL_PROBLEM_ROWS = 128
SMALL_TILE_N, LARGE_TILE_M, LARGE_TILE_N = 128, 256, 256
CLUSTER_M = 2   # both kernels: clusters of two CTAs along M (one SM each)
PREPARE_KERNELS = 1   # prepare_grouped_gemm_data, one launch before each grouped GEMM
GROUPED_OVERLAP_EXPONENT = 12.0   # see GroupedMmParams.overlap_exponent


def _tiled(k: Kernel, gpu: GpuSpec, physics: GpuPhysics, tile_m: object, efficiency: float,
           tile_n: object = None, cluster_m: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(row tiles, arithmetic seconds) of an expert GEMM: each expert's rows in tiles of
    ``tile_m`` by ``tile_n`` columns (default ``gemm_tile_n``; both per step shape or
    one), each tile computed by ``cluster_m`` CTAs of tile_m / cluster_m rows (a
    cluster, one CTA per SM), all CTAs in waves over the SMs."""
    g = k.gemm
    assert isinstance(g, ExpertGemmShape)  # kernels.moe
    tile_m = np.asarray(tile_m, dtype=np.float64)
    tiles_m = g.row_tiles(tile_m)
    tile_n = np.asarray(physics.gemm_tile_n if tile_n is None else tile_n, dtype=np.float64)
    waves = np.ceil(cluster_m * tiles_m * np.ceil(g.n / tile_n) / gpu.sm_count)
    per_sm = gpu.matmul_peak_flops_per_s(k.dtype) / gpu.sm_count
    return tiles_m, waves * 2.0 * (tile_m / cluster_m) * tile_n * g.k / (per_sm * efficiency)


class GroupedMmParams(Frozen):
    """torch._grouped_mm on this GPU: its tensor efficiency and bandwidth relative to
    cuBLAS's GEMMs, the rows of one cluster tile of its small-problem kernel (two 64-row
    CTA tiles on sm90), a fixed cost per call and per touched expert (each group's
    problem setup and tile scheduling)."""

    tensor_efficiency_ratio: Ratio = 1.0
    bandwidth_ratio: Ratio = 1.0
    tile_m: RowTile = 128
    fixed_s: NonNeg = 0.0
    per_expert_s: NonNeg = 0.0
    # what one CTA streams per second on its own (0: no limit): a decode's few touched
    # experts give the kernel fewer CTA tiles than SMs (it has no split-K), each
    # streaming its slice of a weight; profiled on H100 (grouped_mm_decode/): one Qwen3
    # expert's 6.3 MB take 16 us, 2.5x what HBM needs
    cta_stream_bytes_per_s: NonNeg = 0.0
    # the grouped kernel's overlap of weight streaming and MMAs: the H100 profile's
    # kernel times at 384-2048 tokens (moe_profile/) lie within 3.5% of the longer of
    # the two at exponent 12 for every shape but one (1024 tokens, +6.7%), where the
    # GPU's fitted 3 (cuBLAS's GEMMs) over-predicts them by up to 32%
    overlap_exponent: Annotated[float, Field(ge=0.0, le=64.0)] = GROUPED_OVERLAP_EXPONENT


class GroupedMm(GemmFamily):
    name: ClassVar[str] = "grouped_mm"
    Params: ClassVar[type[Frozen]] = GroupedMmParams
    FIT: ClassVar[dict[str, Bounds]] = {
        "tensor_efficiency_ratio": (0.2, 1.3, 0.8, 1.0),
        "bandwidth_ratio": (0.3, 1.2, 0.9, 1.0),
        "fixed_s": (0.0, 20e-6, 2e-6, 1e-6),
        "per_expert_s": (0.0, 2e-6, 0.1e-6, 1e-6),
        "cta_stream_bytes_per_s": (1e9, 400e9, 40e9, 1e10),
    }

    def parts(self, k: Kernel, gpu: GpuSpec, physics: GpuPhysics, params: Frozen
              ) -> GemmParts:
        p = params
        assert isinstance(p, GroupedMmParams)
        g = k.gemm
        assert g is not None
        # PyTorch's tile pick: rows per group over all the experts, as GroupMM.cu sizes
        # it (M / group_count), or n, at most 128: the small ping-pong tile
        experts = max(float(getattr(g, "experts", 0) or 1), 1.0)
        small = (np.asarray(g.m, dtype=np.float64) / experts <= SMALL_PROBLEM_ROWS) \
            | (g.n <= SMALL_PROBLEM_ROWS)
        tile_n = np.where(small, SMALL_TILE_N, LARGE_TILE_N)
        tiles_m, compute = _tiled(k, gpu, physics,
                                  np.where(small, float(p.tile_m), LARGE_TILE_M),
                                  physics.tensor_efficiency * p.tensor_efficiency_ratio,
                                  tile_n, CLUSTER_M)
        touched = getattr(g, "touched", np.zeros_like(k.flops))
        # under the small kernel every row tile past an expert's first reads its weight
        # again from HBM; the large kernel's find it in L2 (see the module docstring)
        rereads = np.where(small, np.maximum(tiles_m - touched, 0.0)
                           / np.maximum(touched, 1e-12), 0.0)
        moved = k.bytes + k.weight_bytes * rereads
        memory = hbm_s(moved, gpu, physics, p.bandwidth_ratio)
        if p.cta_stream_bytes_per_s > 0.0:
            # two CTAs per cluster tile, each streaming its share; with fewer tiles
            # than SMs (or a last round that leaves SMs idle) one CTA's rate binds
            cta_tiles = np.maximum(CLUSTER_M * tiles_m * np.ceil(g.n / tile_n), 1.0)
            rounds = np.ceil(cta_tiles / gpu.sm_count)
            memory = np.maximum(memory, rounds * (moved / cta_tiles)
                                / p.cta_stream_bytes_per_s)
        # prepare_grouped_gemm_data: a small kernel of its own before each call
        prepare = k.launches * extra_launches_s(PREPARE_KERNELS, physics)
        return GemmParts(self.call_fixed_s(k, physics, p.fixed_s,
                                           touched * p.per_expert_s + prepare),
                         memory, compute)


class FusedMoeParams(Frozen):
    """A fused-MoE kernel: tensor efficiency and bandwidth relative to cuBLAS's, its
    row block, CUDA-core operations per weight element per row block to dequantize a
    weight-only quantized expert, a fixed cost per call and per touched expert."""

    tensor_efficiency_ratio: Ratio = 1.0
    bandwidth_ratio: Ratio = 1.0
    block_m: RowTile = 16
    dequant_flops_per_element: Annotated[float, Field(ge=0.0, le=200.0)] = 2.0
    fixed_s: NonNeg = 0.0
    per_expert_s: NonNeg = 0.0


class FusedMoe(GemmFamily):
    name: ClassVar[str] = "fused_moe"
    Params: ClassVar[type[Frozen]] = FusedMoeParams
    FIT: ClassVar[dict[str, Bounds]] = {
        "tensor_efficiency_ratio": (0.2, 1.3, 0.8, 1.0),
        "bandwidth_ratio": (0.3, 1.2, 0.9, 1.0),
        "dequant_flops_per_element": (0.0, 100.0, 4.0, 1.0),
        "fixed_s": (0.0, 20e-6, 2e-6, 1e-6),
        "per_expert_s": (0.0, 2e-6, 0.1e-6, 1e-6),
    }

    def parts(self, k: Kernel, gpu: GpuSpec, physics: GpuPhysics, params: Frozen
              ) -> GemmParts:
        p = params
        assert isinstance(p, FusedMoeParams)
        g = k.gemm
        assert g is not None
        tiles_m, compute = _tiled(k, gpu, physics, float(p.block_m),
                                  physics.tensor_efficiency * p.tensor_efficiency_ratio)
        if g.w_dtype in ("int8", "int4", "fp4"):
            # weight-only: each row block dequantizes its expert's whole [n, k] weight
            compute = compute + (tiles_m * float(g.n) * g.k * p.dequant_flops_per_element
                                 / gpu.fp32_flops_per_s)
        touched = getattr(g, "touched", np.zeros_like(k.flops))
        return GemmParts(self.call_fixed_s(k, physics, p.fixed_s, touched * p.per_expert_s),
                         hbm_s(k.bytes, gpu, physics, p.bandwidth_ratio), compute)
