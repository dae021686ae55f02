"""cost: one kernel's time from its bytes and flops, on a hand-built GPU.

The toy GPU (tests/conftest.py): 100 SMs, 1 TB/s HBM, 1 PFLOP/s bf16 dense (so
10 TFLOP/s per SM), 50 TFLOP/s fp32. Every expected number is worked out by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import toy_gpu

from gpusim.cost import Calibration, Cost, busy_s, kernel_cost, step_cost
from gpusim.cost.attention import cudnn_masked, cudnn_prefill, fa2, flash_decode
from gpusim.cost.gemm import gemm_schedule
from gpusim.kernels import AttentionShape, GemmShape, Kernel
from gpusim.specs.stack import TORCH_SDPA_FAMILIES

GPU = toy_gpu()
BW = 1e12          # B/s
PER_SM = 1e13      # bf16 flop/s per SM
FP32 = 50e12
DATASHEET = Calibration()


def a(*values: float) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def gemm_kernel(m, n: int, k: int, launches: int = 1, repeat: int = 1) -> Kernel:
    m = np.atleast_1d(np.asarray(m, dtype=np.float64))
    return Kernel(name="g", kind="gemm", section="layer", launches=launches, repeat=repeat,
                  flops=2.0 * m * n * k, weight_bytes=np.full_like(m, 2.0 * n * k),
                  kv_bytes=np.zeros_like(m), act_bytes=2.0 * (m * k + m * n),
                  gemm=GemmShape(m=m, n=n, k=k))


def elementwise_kernel(elements, bytes_per_element: float, launches: int = 1,
                       kind: str = "elementwise") -> Kernel:
    e = np.atleast_1d(np.asarray(elements, dtype=np.float64))
    z = np.zeros_like(e)
    return Kernel(name="e", kind=kind, section="layer", launches=launches, repeat=1,
                  flops=e, weight_bytes=z, kv_bytes=z, act_bytes=e * bytes_per_element)


def attention_kernel(mode: str, batch, q, kv_len, heads: int = 32, kv_heads: int = 8,
                     head_dim: int = 64) -> Kernel:
    b, qq, kv = (np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (batch, q, kv_len))
    b, qq, kv = np.broadcast_arrays(b, qq, kv)
    ctx = kv - qq
    flops = 4.0 * b * heads * head_dim * (qq * ctx + qq * (qq + 1) / 2)
    kv_bytes = 2.0 * b * kv * kv_heads * head_dim * 2
    return Kernel(name="attn", kind="attention", section="layer", launches=1, repeat=1,
                  flops=flops, weight_bytes=np.zeros_like(b), kv_bytes=kv_bytes,
                  act_bytes=2.0 * b * qq * heads * head_dim * 2,
                  attention=AttentionShape(mode=mode, family=TORCH_SDPA_FAMILIES[mode],
                                           batch=b, q=qq, kv_len=kv, heads=heads,
                                           kv_heads=kv_heads, head_dim=head_dim))


def fa2_num_splits(a: AttentionShape, sms: float) -> np.ndarray:
    return fa2.num_splits(a, sms)


def attention_schedule(k: Kernel, gpu, cta_overhead_flops: float = 0.0,
                       score_flops: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(CTAs, busiest SM's flops) of an attention kernel, from its family's schedule."""
    a, sms = k.attention, float(gpu.sm_count)
    if a.family == "flash_decode":
        base = a.batch * a.kv_heads * np.ceil(a.q * a.group / flash_decode.BLOCK_M)
        return flash_decode.split_kv_schedule(base, a.kv_len, flash_decode.BLOCK_M,
                                              a.head_dim, sms, cta_overhead_flops)
    if a.family == "fa2":
        return fa2.schedule(a, sms, fa2.num_splits(a, sms), cta_overhead_flops, score_flops)
    if a.family == "cudnn_masked":
        return cudnn_masked.schedule(a, sms, cta_overhead_flops, score_flops)
    params = cudnn_prefill.CudnnPrefillParams(score_flops=score_flops,
                                              cta_overhead_s=cta_overhead_flops / PER_SM)
    parts = cudnn_prefill.CudnnPrefill().parts(a, k.kv_bytes, gpu, DATASHEET.physics, params,
                                               PER_SM)
    return parts.ctas, parts.critical_flops


# ---------------------------------------------------------------------------------
# GEMM schedule: tiles, waves, split-K
# ---------------------------------------------------------------------------------
def test_wave_quantisation_sm_count_plus_one_tiles_takes_two_waves():
    # m = 128 (one 128-row tile), n = 128*100 -> 1*100 = 100 tiles = SMs
    ctas, waves, cta_flops = gemm_schedule(a(128), 12800, 1024, GPU, DATASHEET.physics)
    assert (ctas[0], waves[0]) == (100, 1)
    # a CTA: 2*128*128*1024 = 33,554,432 flops (a perfect balance: other tile shapes
    # tie at best, and ties keep the default 128x128)
    assert cta_flops[0] == 33_554_432
    c1 = kernel_cost(gemm_kernel(128, 12800, 1024), GPU, DATASHEET)
    # 1 wave: 33,554,432 / 1e13 = 3.3554432 us
    assert c1.compute_s[0] == pytest.approx(3.3554432e-6, rel=1e-12)
    # n = 128*101 -> 101 tiles of 128: one more than the SMs, 2 waves (67.1M flops on
    # the critical path); two 64-row tiles by 96 columns (2*135 = 270 CTAs, 3 waves of
    # 2*64*96*1024) take 37.7M, near a perfect balance's 2*128*12928*1024/100 = 33.9M
    _, waves2, cta_flops2 = gemm_schedule(a(128), 12928, 1024, GPU, DATASHEET.physics)
    assert waves2[0] * cta_flops2[0] == 3 * 2 * 64 * 96 * 1024
    # the schedule never does more critical work than plain 128x128 tiles
    m = a(4096)
    for n in (12800, 12928, 30000):
        _, w, f = gemm_schedule(m, n, 1024, GPU, DATASHEET.physics)
        plain_tiles = np.ceil(4096 / 128) * np.ceil(n / 128)
        plain = np.ceil(plain_tiles / 100) * 2 * 128 * 128 * 1024
        assert w[0] * f[0] <= plain


def test_padding_tile_rows_counts_a_full_tile():
    # m = 1: the smallest (8-row) MMA tile still computes 8 rows; n = 128 in two
    # 64-wide tiles (one wave either way, less work per CTA): 2*8*64*128 = 131,072
    ctas, _, cta_flops = gemm_schedule(a(1), 128, 128, GPU, DATASHEET.physics)
    assert (ctas[0], cta_flops[0]) == (2, 131_072)
    # m = 20: one tile padded to 24 rows (the MMA's 8-row granularity) -> 2*24*64*128
    _, _, cta_flops = gemm_schedule(a(20), 128, 128, GPU, DATASHEET.physics)
    assert cta_flops[0] == 2 * 24 * 64 * 128
    # m = 64: one 64-row tile
    _, _, cta_flops = gemm_schedule(a(64), 128, 128, GPU, DATASHEET.physics)
    assert cta_flops[0] == 2 * 64 * 64 * 128


def test_one_token_tile_of_all_the_rows():
    # m = 144 > gemm_tile_m = 128: one 144-row tile (cuBLAS runs 144-row tiles there),
    # not two of 128 rows. n = 6400 in 50 tiles of 128, split-K 2 -> 100 CTAs, one
    # wave of 2*144*128*512: a perfect balance, 2*144*6400*1024/100 flops per SM
    ctas, waves, cta_flops = gemm_schedule(a(144), 6400, 1024, GPU, DATASHEET.physics)
    assert (ctas[0], waves[0]) == (100, 1)
    assert cta_flops[0] == 2 * 144 * 128 * 512
    # two 128-row tiles would do 256 rows of work: 1.78x
    two_tiles = 2 * 2 * 128 * 64 * 1024   # 200 CTAs of 128x64 in 2 waves
    assert two_tiles / (waves[0] * cta_flops[0]) == pytest.approx(256 / 144)


def test_split_k_for_skinny_gemm():
    # m = 1, n = 1280 -> 1*10 = 10 tiles; k = 4096 -> max split floor(4096/256) = 16;
    # split = min(floor(100/10) = 10, 16) = 10 -> 100 CTAs, 1 wave,
    # each 2*8*128*4096/10 = 838,860.8 flops (an 8-row tile for one token)
    ctas, waves, cta_flops = gemm_schedule(a(1), 1280, 4096, GPU, DATASHEET.physics)
    assert (ctas[0], waves[0]) == (100, 1)
    assert cta_flops[0] == pytest.approx(838_860.8, rel=1e-12)
    # k = 512 -> max split 2: 64-wide tiles (20, split 2 -> 40 CTAs of 2*8*64*256 =
    # 262,144) beat 128-wide ones (20 CTAs of 524,288)
    ctas, waves, cta_flops = gemm_schedule(a(1), 1280, 512, GPU, DATASHEET.physics)
    assert (ctas[0], waves[0], cta_flops[0]) == (40, 1, 262_144)
    # k = 200 < 256 -> no split: 20 CTAs of 2*8*64*200 = 204,800
    ctas, waves, cta_flops = gemm_schedule(a(1), 1280, 200, GPU, DATASHEET.physics)
    assert (ctas[0], waves[0], cta_flops[0]) == (20, 1, 204_800)


def test_split_k_not_used_when_tiles_fill_the_gpu():
    # m = 4096, n = 4096 -> 32*32 = 1024 tiles of 128x128 >= 100 SMs -> split 1, 11
    # waves; 64x64 tiles (4096, 41 waves of a quarter the work) waste less: full K
    ctas, waves, cta_flops = gemm_schedule(a(4096), 4096, 4096, GPU, DATASHEET.physics)
    assert (ctas[0], waves[0]) == (4096, 41)
    assert cta_flops[0] == 2 * 64 * 64 * 4096  # full K: no split


def test_gemm_schedule_vectorised_over_m():
    m = a(1, 64, 65, 128, 129, 4096)
    ctas, waves, cta_flops = gemm_schedule(m, 1280, 4096, GPU, DATASHEET.physics)
    for i, mi in enumerate(m):
        c1, w1, f1 = gemm_schedule(a(mi), 1280, 4096, GPU, DATASHEET.physics)
        assert (ctas[i], waves[i], cta_flops[i]) == (c1[0], w1[0], f1[0])


def test_calibrated_tile_sizes_are_used():
    cal = Calibration(physics={"gemm_tile_m": 256, "gemm_tile_n": 64})
    # m = 300 -> token tiles of 128 (256 x 1/2: 3 tiles) or 256 (2 tiles); n = 640 in
    # 32-wide tiles (64 x 1/2) -> 20 columns: 3*20 = 60 CTAs of 128x32, one wave, the
    # least work per CTA: 2*128*32*256
    ctas, waves, cta_flops = gemm_schedule(a(300), 640, 256, GPU, cal.physics)
    assert (ctas[0], waves[0], cta_flops[0]) == (60, 1, 2 * 128 * 32 * 256)


# ---------------------------------------------------------------------------------
# memory-bound GEMV, bandwidth efficiency, latency, parallelism
# ---------------------------------------------------------------------------------
def test_gemv_is_bytes_over_bandwidth_in_datasheet_calibration():
    # m = 1, n = k = 4096: weights 4096*4096*2 = 33,554,432 B, x and y (4096+4096)*2
    # = 16,384 B: 33,570,816 B / 1e12 B/s = 33.570816 us. Compute: 32 tiles, split 3,
    # 2*64*128*4096/3 / 1e13 = 2.24 us, so the p = 64 overlap adds (1/15)^64: nothing.
    c = kernel_cost(gemm_kernel(1, 4096, 4096), GPU, DATASHEET)
    assert c.bytes[0] == 33_570_816
    assert c.memory_s[0] == pytest.approx(33.570816e-6, rel=1e-12)
    assert c.seconds[0] == pytest.approx(33.570816e-6, rel=1e-12)
    assert c.fixed_s[0] == 0


def test_bandwidth_efficiency_and_dram_latency():
    cal = Calibration(physics={"hbm_bandwidth_efficiency": 0.8, "dram_latency_s": 1e-6})
    # elementwise: 1e6 elements x 4 B = 4e6 B over 0.8 TB/s = 5 us; 3 launches x 1 us
    c = kernel_cost(elementwise_kernel(1e6, 4, launches=3), GPU, cal)
    assert c.memory_s[0] == pytest.approx(5e-6 + 3e-6, rel=1e-12)
    # compute: 1e6 / 50e12 = 0.02 us
    assert c.compute_s[0] == pytest.approx(1e6 / FP32, rel=1e-12)


def test_attention_uses_its_own_bandwidth_efficiency():
    cal = Calibration(physics={"hbm_bandwidth_efficiency": 0.5,
                               "attention_bandwidth_efficiency": 0.8})
    k = attention_kernel("decode", 1, 1, 1001)
    c = kernel_cost(k, GPU, cal)
    # attention's efficiency is its own fraction of the datasheet bandwidth
    assert c.memory_s[0] == pytest.approx(k.bytes[0] / (BW * 0.8), rel=1e-12)


def test_few_ctas_bound_decode_attention_by_one_ctas_share():
    # saturating 1 CTA/SM -> 100 CTAs for full bandwidth. Decode attention at batch 1,
    # kv_len 64 over 8 KV heads: 8 * 64/128 = 4 CTAs in flight, so the kernel streams
    # at 4% of the bandwidth: time = kv_bytes / 4 CTAs * 100 / BW
    cal = Calibration(physics={"saturating_ctas_per_sm": 1.0})
    k = attention_kernel("decode", 1, 1, 64)
    c = kernel_cost(k, GPU, cal)
    assert c.memory_s[0] == pytest.approx(k.kv_bytes[0] / 4 * 100 / BW, rel=1e-12)
    # enough CTAs (batch 64: 512 * 0.5 -> capped at 100 SMs): plain bandwidth
    k = attention_kernel("decode", 64, 1, 64)
    c = kernel_cost(k, GPU, cal)
    assert c.memory_s[0] == pytest.approx(k.bytes[0] / BW, rel=1e-12)


def test_gemm_and_pointwise_stream_at_full_bandwidth_whatever_their_ctas():
    # split-K keeps every SM streaming for a skinny GEMM; pointwise kernels launch a
    # CTA per few thousand elements: the CTA limit applies to attention only
    cal = Calibration(physics={"saturating_ctas_per_sm": 1.0})
    for k in (
        gemm_kernel(1, 1280, 200),
        gemm_kernel(4096, 4096, 4096),
        elementwise_kernel(10 * 4096, 4),
    ):
        c = kernel_cost(k, GPU, cal)
        assert c.memory_s[0] == pytest.approx(k.bytes[0] / BW, rel=1e-12)


# ---------------------------------------------------------------------------------
# fixed costs
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("launches", [1, 2, 5, 8])
def test_fixed_cost_scales_with_launches(launches):
    cal = Calibration(physics={"kernel_fixed_cost_s": 2e-6})
    c = kernel_cost(elementwise_kernel(1e5, 36, launches=launches), GPU, cal)
    assert c.fixed_s[0] == pytest.approx(launches * 2e-6, rel=1e-12)
    base = kernel_cost(elementwise_kernel(1e5, 36, launches=launches), GPU, DATASHEET)
    assert c.seconds[0] == pytest.approx(base.seconds[0] + launches * 2e-6, rel=1e-12)


@pytest.mark.parametrize("launches", [1, 3])
def test_launch_gap_in_step_time_not_in_busy_time(launches):
    """The idle gap before each launch adds to the op's time in the stream, but a
    profiler's kernel duration (busy_s) does not hold it."""
    k = gemm_kernel(8, 4096, 4096, launches=launches)
    base = kernel_cost(k, GPU, DATASHEET)
    cal = Calibration(physics={"launch_gap_s": 0.3e-6})
    c = kernel_cost(k, GPU, cal)
    assert c.seconds[0] == pytest.approx(base.seconds[0] + launches * 0.3e-6, rel=1e-12)
    assert busy_s(k, c, cal)[0] == pytest.approx(base.seconds[0], rel=1e-12)
    assert c.fixed_s[0] == base.fixed_s[0]


def test_attention_fixed_cost_once_per_launch_plus_its_own():
    cal = Calibration(physics={"kernel_fixed_cost_s": 2e-6, "attention_fixed_cost_s": 3e-6})
    c = kernel_cost(attention_kernel("verify", 2, 5, 505), GPU, cal)
    assert c.fixed_s[0] == pytest.approx(5e-6, rel=1e-12)


def test_zero_launch_op_costs_nothing():
    cal = Calibration(physics={"kernel_fixed_cost_s": 2e-6, "dram_latency_s": 1e-6})
    c = kernel_cost(elementwise_kernel(1e5, 36, launches=0), GPU, cal)
    for field in ("seconds", "fixed_s", "memory_s", "compute_s", "flops", "bytes"):
        assert getattr(c, field)[0] == 0, field


# ---------------------------------------------------------------------------------
# memory/compute overlap: (m^p + c^p)^(1/p)
# ---------------------------------------------------------------------------------
def _overlap_kernel() -> Kernel:
    # 2e6 B -> memory 2 us; 5e7 elements/50e12 -> compute 1 us
    e = 5e7
    z = np.zeros(1)
    return Kernel(
        name="e",
        kind="elementwise",
        section="layer",
        launches=1,
        repeat=1,
        flops=np.array([e]),
        weight_bytes=z,
        kv_bytes=z,
        act_bytes=np.array([2e6]),
    )


def test_overlap_exponent_one_is_sum():
    c = kernel_cost(_overlap_kernel(), GPU, Calibration(physics={"overlap_exponent": 1.0}))
    assert (c.memory_s[0], c.compute_s[0]) == pytest.approx((2e-6, 1e-6), rel=1e-12)
    assert c.seconds[0] == pytest.approx(3e-6, rel=1e-12)


def test_overlap_exponent_large_is_max():
    c = kernel_cost(_overlap_kernel(), GPU, Calibration(physics={"overlap_exponent": 64.0}))
    # 2 us * (1 + 0.5^64)^(1/64): max to 1e-20
    assert c.seconds[0] == pytest.approx(2e-6, rel=1e-15)


def test_overlap_exponent_two_is_euclidean():
    c = kernel_cost(_overlap_kernel(), GPU, Calibration(physics={"overlap_exponent": 2.0}))
    assert c.seconds[0] == pytest.approx(np.sqrt(5.0) * 1e-6, rel=1e-12)


def test_equal_memory_and_compute_at_p64():
    # memory 1 us, compute 1 us: 2^(1/64) us, the most p = 64 can exceed the max
    z = np.zeros(1)
    k = Kernel(
        name="e",
        kind="elementwise",
        section="layer",
        launches=1,
        repeat=1,
        flops=np.array([5e7]),
        weight_bytes=z,
        kv_bytes=z,
        act_bytes=np.array([1e6]),
    )
    c = kernel_cost(k, GPU, DATASHEET)
    assert c.seconds[0] == pytest.approx(2 ** (1 / 64) * 1e-6, rel=1e-12)


@pytest.mark.parametrize("p", [1.0, 1.5, 3.0, 16.0, 64.0])
def test_overlap_between_max_and_sum(p):
    cal = Calibration(physics={"overlap_exponent": p, "kernel_fixed_cost_s": 1e-6})
    c = kernel_cost(gemm_kernel(a(1, 16, 128, 1024, 8192), 4096, 4096), GPU, cal)
    body = c.seconds - c.fixed_s
    assert np.all(body >= np.maximum(c.memory_s, c.compute_s) * (1 - 1e-12))
    assert np.all(body <= (c.memory_s + c.compute_s) * (1 + 1e-12))


def test_zero_work_kernel_is_only_its_fixed_cost():
    cal = Calibration(physics={"kernel_fixed_cost_s": 1e-6})
    c = kernel_cost(elementwise_kernel(0, 4), GPU, cal)
    assert np.isfinite(c.seconds[0])
    assert c.seconds[0] == pytest.approx(1e-6, rel=1e-12)


# ---------------------------------------------------------------------------------
# attention schedule
# ---------------------------------------------------------------------------------
def test_attention_schedule_decode_split_kv():
    # H=32, Hkv=8: 4 query heads packed per KV head -> ceil(4/64) = 1 M block;
    # batch 1: base = 1*8*1 = 8 CTAs; kv_len 1024 -> 1024/128 = 8 key blocks;
    # split = min(floor(100/8) = 12, 8) = 8 -> 64 CTAs, 1 wave, one 128-key block each;
    # busiest SM: 4*64*128*64 = 2,097,152 flops
    ctas, critical = attention_schedule(attention_kernel("decode", 1, 1, 1024), GPU)
    assert ctas[0] == 64
    assert critical[0] == pytest.approx(2_097_152, rel=1e-12)
    # batch 16: base 128 > 100 SMs -> no split; 2 waves of 4*64*1024*64; CTAs in
    # flight capped at the 100 SMs
    ctas, critical = attention_schedule(attention_kernel("decode", 16, 1, 1024), GPU)
    assert ctas[0] == 100
    assert critical[0] == pytest.approx(2 * 4 * 64 * 1024 * 64, rel=1e-12)
    # batch 1, kv_len 64: half a block, no split possible: 8 CTAs of 4*64*64*64, each
    # streaming half a block's keys -> 8 * 64/128 = 4 CTAs' worth in flight
    ctas, critical = attention_schedule(attention_kernel("decode", 1, 1, 64), GPU)
    assert ctas[0] == 4
    assert critical[0] == pytest.approx(4 * 64 * 64 * 64, rel=1e-12)


def test_fa2_splits_kv_until_query_blocks_fill_80pct_of_two_ctas_per_sm():
    # toy GPU: 100 SMs -> 200 CTA slots, threshold 160 (batch x heads x ceil(q/64))
    def split(batch, q=5, heads=32):
        return bool(
            fa2_num_splits(
                attention_kernel("verify", batch, q, 1024 + q, heads=heads).attention, 100.0
            )[0]
            > 1
        )

    assert split(4)  # 128 < 160
    assert not split(5)  # 160: full enough, one CTA per (batch, head, block)
    assert split(6, heads=24)  # 144 < 160: fewer heads split longer
    assert not split(1, q=384, heads=32)  # 6 query blocks x 32 heads = 192


def test_verify_schedule_follows_the_fa2_split_decision():
    # below the threshold the verify runs the split-KV schedule (64-row tiles);
    # above it the plain one (128-row tiles): the busiest SM's flops differ
    split = attention_schedule(attention_kernel("verify", 4, 5, 1029), GPU)[1][0]
    plain = attention_schedule(attention_kernel("verify", 5, 5, 1029), GPU)[1][0]
    # 160 CTAs over 100 SMs: 2 waves of 128 query rows x 1029 keys
    assert plain == pytest.approx(2 * 4 * 128 * 1029 * 64, rel=1e-12)
    # 128 base CTAs, head_dim 64 -> 256-key blocks: 5 of them; FA2 picks 3 splits
    # (2 blocks each): 384 CTAs in 4 waves of 64 rows x 512 keys
    assert split == pytest.approx(4 * 4 * 64 * 512 * 64, rel=1e-12)


def _splits(batch, q, kv_len, heads=32, head_dim=128, sms=132.0):
    k = attention_kernel("verify", batch, q, kv_len, heads=heads, head_dim=head_dim)
    return fa2_num_splits(k.attention, sms)


def test_fa2_num_splits_matches_the_heuristic_worked_by_hand():
    # H100 (132 SMs -> 264 slots), head_dim 128 -> 128-key blocks
    # batch 1, 32 heads, kv 4098: 33 blocks; 8 splits would fill 97% of a wave but
    # leave 5 blocks per split like 7 splits (not eligible); the next eligible counts
    # fill <= 69% until 33 splits: exactly 4 waves
    assert _splits(1, 2, 4098)[0] == 33
    # batch 6, q 5, kv 16389: base 192, 129 blocks: 4 splits fill 97% of 3 waves
    assert _splits(6, 5, 16389)[0] == 4
    # batch 4, 24 heads, kv 514 (5 blocks): 5 splits are 480 CTAs (91% of 2 waves)
    assert _splits(4, 2, 514, heads=24)[0] == 5
    # 256 CTAs fill 80% of the slots: never split; one key block: nothing to split
    assert _splits(8, 2, 16386)[0] == 1
    assert _splits(1, 2, 100)[0] == 1
    # vectorised over shapes
    np.testing.assert_array_equal(_splits([1, 6, 8], [2, 5, 2], [4098, 16389, 16386]), [33, 4, 1])


def test_verify_schedule_pays_the_softmax_per_score_and_the_overhead_per_round():
    # batch 5, 32 heads, q 5: 160 unsplit CTAs (2 waves of 100 SMs, 1 round of 200
    # slots); per score 4*64 MMA flops + 100 softmax flop-equivalents
    k = attention_kernel("verify", 5, 5, 1029)
    _, critical = attention_schedule(k, GPU, cta_overhead_flops=1e6, score_flops=100.0)
    assert critical[0] == pytest.approx(2 * 128 * 1029 * (4 * 64 + 100) + 1 * 1e6, rel=1e-12)
    # 201 CTAs: a second round
    k = attention_kernel("verify", 201, 1, 1029, heads=1)
    _, critical = attention_schedule(k, GPU, cta_overhead_flops=1e6)
    assert critical[0] == pytest.approx(3 * 4 * 128 * 1029 * 64 + 2 * 1e6, rel=1e-12)


def test_verify_chunk_rows_see_causal_keys():
    # a 512-token chunk after 3000 cached tokens, 32 heads, batch 4: 4 query blocks of
    # 128 rows -> 512 CTAs (never split), 6 waves of 100 SMs; block j sees 3000 + 128(j+1)
    # keys: 3320 on average
    k = attention_kernel("verify", 4, 512, 3512)
    _, critical = attention_schedule(k, GPU)
    assert critical[0] == pytest.approx(6 * 128 * 3320 * 4 * 64, rel=1e-12)
    # 80 heads x one 128-row block: 160 64-row blocks fill 80% of the slots (no
    # split) and the 80 CTAs one wave: the slowest, all 3512 keys, decides
    k = attention_kernel("verify", 1, 128, 3512, heads=80, kv_heads=8)
    assert attention_schedule(k, GPU)[1][0] == pytest.approx(128 * 3512 * 4 * 64)


def test_tree_schedule_walks_every_key_in_64_row_tiles():
    # batch 5, 32 heads, 40 tree nodes, 1064 keys: one 64-row tile per (batch, head):
    # 160 CTAs -> 2 waves of 100 SMs, each tile 64 x 1064 keys x (4*64 MMA + 300
    # softmax/mask) flops, plus the per-wave overhead; never split, at any batch
    k = attention_kernel("tree", 5, 40, 1064)
    ctas, critical = attention_schedule(k, GPU, cta_overhead_flops=1e6, score_flops=300.0)
    assert ctas[0] == 100
    assert critical[0] == pytest.approx(2 * (64 * 1064 * (4 * 64 + 300) + 1e6), rel=1e-12)
    one = attention_schedule(attention_kernel("tree", 1, 40, 1064, heads=2), GPU)[1][0]
    assert one == pytest.approx(64 * 1064 * 4 * 64, rel=1e-12)


def test_tree_kernel_costs_use_their_own_parameters():
    base = Calibration(gpu="toy")
    cal = Calibration(
        gpu="toy",
        attention={
            "cudnn_masked": {"tensor_efficiency": 0.5, "fixed_s": 7e-6},
            "fa2": {"tensor_efficiency": 0.1},
        },
    )
    # 128 nodes: two row tiles a head, which read the keys together (no stream term):
    # the MMAs alone, at half the efficiency twice as long
    k = attention_kernel("tree", 5, 128, 1064)
    c0, c1 = kernel_cost(k, GPU, base), kernel_cost(k, GPU, cal)
    assert c1.compute_s[0] == pytest.approx(2 * c0.compute_s[0])
    assert c1.fixed_s[0] - c0.fixed_s[0] == pytest.approx(7e-6)


def test_unsplit_verify_reuse_falls_once_a_group_or_its_streamed_kv_outgrows_the_gpu():
    # toy GPU: 100 SMs -> 200 CTAs at once; a group of 4 query heads per KV head, each
    # `batch` CTAs apart: all running together up to batch 50. Between two heads' reads
    # of a KV head the GPU streams batch x 1 MB: a 100 MB L2 holds it up to batch 100
    cal = Calibration(
        gpu="toy", attention={"fa2": {"l2_reuse_split": 0.9, "l2_reuse_unsplit": 0.6}}
    )
    k = attention_kernel("verify", [50.0, 100.0, 200.0, 400.0], 5, 1029)
    reuse = fa2.l2_reuse(k.attention, cal.family_params("fa2"), np.ones(4), 100.0, 1e6, 100e6)
    np.testing.assert_allclose(reuse, [0.6, 0.3, 0.075, 0.01875])
    # the same with a large L2: only the group's span counts
    reuse = fa2.l2_reuse(k.attention, cal.family_params("fa2"), np.ones(4), 100.0, 1e6, 1e12)
    np.testing.assert_allclose(reuse, [0.6, 0.3, 0.15, 0.075])
    # long contexts: 8 MB per sequence's KV head; at batch 50 L2 holds a quarter
    reuse = fa2.l2_reuse(k.attention, cal.family_params("fa2"), np.ones(4), 100.0, 8e6, 100e6)
    np.testing.assert_allclose(reuse[0], 0.6 * 0.25)
    # split kernels keep a group's heads side by side in the grid
    reuse = fa2.l2_reuse(k.attention, cal.family_params("fa2"), np.full(4, 2.0), 100.0, 1e6, 100e6)
    np.testing.assert_allclose(reuse, [0.9, 0.9, 0.9, 0.9])


def test_verify_kernel_fixed_costs_split_combine_and_unsplit_launch():
    cal = Calibration(
        gpu="toy", attention={"fa2": {"unsplit_fixed_s": 10e-6, "combine_s_per_split": 1e-6}}
    )
    base = Calibration(gpu="toy")
    unsplit = attention_kernel("verify", 5, 5, 1029)
    split = attention_kernel("verify", 4, 5, 1029)  # 3 splits (above)
    assert (
        kernel_cost(unsplit, GPU, cal).fixed_s[0] - kernel_cost(unsplit, GPU, base).fixed_s[0]
    ) == pytest.approx(10e-6)
    assert (
        kernel_cost(split, GPU, cal).fixed_s[0] - kernel_cost(split, GPU, base).fixed_s[0]
    ) == pytest.approx(3e-6)
    # decode's kernel pays neither
    dec = attention_kernel("decode", 4, 1, 1029)
    assert kernel_cost(dec, GPU, cal).fixed_s[0] == kernel_cost(dec, GPU, base).fixed_s[0]


def test_attention_schedule_prefill_waves():
    # prefill q = kv_len = 384, H = 32: ceil(384/128) = 3 query blocks; batch 1 -> 96
    # CTAs, one wave: the last block sees all 384 keys: 4*128*384*64 = 12,582,912;
    # in flight: 96 CTAs x 3 key blocks, capped at the 100 SMs
    ctas, critical = attention_schedule(attention_kernel("prefill", 1, 384, 384), GPU)
    assert ctas[0] == 100
    assert critical[0] == pytest.approx(12_582_912, rel=1e-12)
    # batch 2: 192 CTAs on 100 SMs walking 1, 2 and 3 key tiles of 128 (a tile:
    # 4*128*128*64 = 4,194,304): widely spread, so the SMs' mean load (1.92 mean CTAs of
    # 2 tiles) plus one mean CTA: 2.92 * 2 * 4,194,304 = 24,494,735.36
    ctas, critical = attention_schedule(attention_kernel("prefill", 2, 384, 384), GPU)
    assert ctas[0] == 100
    assert critical[0] == pytest.approx(24_494_735.36, rel=1e-12)
    # a per-CTA cost and a softmax cost per score: 1e6 flops a CTA, a tile
    # 128*128*(256 + 100) = 5,832,704: 1.92 * (1e6 + 2 * 5,832,704) + (1e6 + 2 *
    # 5,832,704): spread = min(1, 1.5 * (most - fewest) / most) = 1.5 * 11,665,408 /
    # 18,498,112 = 0.946; tail = mean * (0.946 + 0.054 * (2 - 1.92))
    _, critical = attention_schedule(attention_kernel("prefill", 2, 384, 384), GPU,
                                     cta_overhead_flops=1e6, score_flops=100.0)
    mean, fewest, most = 1e6 + 2 * 5_832_704, 1e6 + 5_832_704, 1e6 + 3 * 5_832_704
    spread = 1.5 * (most - fewest) / most
    want = 1.92 * mean + mean * (spread + (1 - spread) * (2 - 1.92))
    assert critical[0] == pytest.approx(want, rel=1e-12)


def test_attention_compute_uses_attention_tensor_efficiency():
    cal = Calibration(
        physics={"tensor_efficiency": 0.9},
        attention={
            "flash_decode": {"tensor_efficiency": 0.5},
            "cudnn_prefill": {"tensor_efficiency": 0.5},
        },
    )
    k = attention_kernel("prefill", 1, 384, 384)
    c = kernel_cost(k, GPU, cal)
    assert c.compute_s[0] == pytest.approx(12_582_912 / (PER_SM * 0.5), rel=1e-12)


def test_gemm_compute_uses_tensor_efficiency():
    cal = Calibration(physics={"tensor_efficiency": 0.5})
    c = kernel_cost(gemm_kernel(128, 12800, 1024), GPU, cal)
    assert c.compute_s[0] == pytest.approx(2 * 3.3554432e-6, rel=1e-12)


# ---------------------------------------------------------------------------------
# Cost record
# ---------------------------------------------------------------------------------
def _cost(x: float) -> Cost:
    return Cost(
        seconds=a(x, 2 * x),
        fixed_s=a(0.1 * x, 0.2 * x),
        memory_s=a(x, x),
        compute_s=a(0.5 * x, 3 * x),
        flops=a(10 * x, 20 * x),
        bytes=a(7 * x, 8 * x),
    )


def test_cost_add_is_fieldwise():
    s = _cost(1.0) + _cost(2.0)
    np.testing.assert_allclose(s.seconds, [3.0, 6.0])
    np.testing.assert_allclose(s.fixed_s, [0.3, 0.6])
    np.testing.assert_allclose(s.memory_s, [3.0, 3.0])
    np.testing.assert_allclose(s.compute_s, [1.5, 9.0])
    np.testing.assert_allclose(s.flops, [30.0, 60.0])
    np.testing.assert_allclose(s.bytes, [21.0, 24.0])


def test_cost_scaled_and_zero():
    s = _cost(1.0).scaled(16)
    np.testing.assert_allclose(s.seconds, [16.0, 32.0])
    np.testing.assert_allclose(s.bytes, [112.0, 128.0])
    z = Cost.zero(2)
    t = z + _cost(1.0)
    np.testing.assert_array_equal(t.flops, _cost(1.0).flops)
    assert np.all(Cost.zero(3).seconds == 0) and Cost.zero(3).seconds.shape == (3,)


def test_cost_add_does_not_mutate_operands():
    x, y = _cost(1.0), _cost(2.0)
    _ = x + y
    np.testing.assert_allclose(x.seconds, [1.0, 2.0])
    z = Cost.zero(2)
    _ = z + x
    assert np.all(z.seconds == 0)


def test_step_cost_is_sum_of_kernel_costs_times_repeat():
    cal = Calibration(
        physics={
            "kernel_fixed_cost_s": 1e-6,
            "dram_latency_s": 5e-7,
            "saturating_ctas_per_sm": 0.5,
            "overlap_exponent": 3.0,
        }
    )
    ks = [
        gemm_kernel(a(1, 64), 4096, 4096, repeat=16),
        elementwise_kernel(a(2048, 131072), 36, launches=8),
        attention_kernel("decode", a(1, 64), 1, a(1001, 1001)),
    ]
    total = step_cost(ks, GPU, cal)
    expect = sum(kernel_cost(k, GPU, cal).seconds * k.repeat for k in ks)
    np.testing.assert_allclose(total.seconds, expect, rtol=1e-12)
    expect_b = sum(k.bytes * k.repeat for k in ks)
    np.testing.assert_allclose(total.bytes, expect_b, rtol=1e-12)


# ---------------------------------------------------------------------------------
# physics: a kernel with more work is never faster. These pin down genuine model
# flaws (reported; not weakened).
# ---------------------------------------------------------------------------------
def test_decode_attention_not_faster_with_one_more_key():
    """FLAW: per-CTA keys are kv_len/split with split capped by the number of 128-key
    blocks, so crossing a block boundary doubles the split and halves the critical path:
    kv_len 128 -> 1 block, split 1, 4*64*128*64 flops; kv_len 129 -> 2 blocks, split 2,
    4*64*64.5*64. A CTA processes whole key blocks (ceil(n_blocks/split) * 128 keys),
    so the busiest SM's work should not drop."""
    kv = np.arange(1, 2049, dtype=np.float64)
    _, critical = attention_schedule(attention_kernel("decode", 1, 1, kv), GPU)
    drops = np.nonzero(np.diff(critical) < 0)[0]
    assert drops.size == 0, (
        f"critical flops drop at kv_len {kv[drops[0]]:g} -> {kv[drops[0] + 1]:g}: "
        f"{critical[drops[0]]:g} -> {critical[drops[0] + 1]:g}"
    )


def test_elementwise_memory_not_faster_with_more_elements():
    """FLAW (saturating_ctas_per_sm > 0): memory = bytes / (bw * ctas / saturating) uses
    the mean bytes per CTA with ctas = ceil(elements / 4096), so one more element that
    adds a CTA halves the time: 4096 elements -> 1 CTA, 4097 -> 2 CTAs."""
    cal = Calibration(physics={"saturating_ctas_per_sm": 1.0})
    e = np.arange(4000, 4200, dtype=np.float64)
    c = kernel_cost(elementwise_kernel(e, 4), GPU, cal)
    drops = np.nonzero(np.diff(c.seconds) < 0)[0]
    assert drops.size == 0, (
        f"{e[drops[0]]:g} elements: {c.seconds[drops[0]]:g} s; {e[drops[0] + 1]:g}: "
        f"{c.seconds[drops[0] + 1]:g} s"
    )


def test_pointwise_off_the_l2_chain_streams_every_byte_from_hbm():
    """A pointwise op reading what the kernel before it just wrote moves the part of
    each launch's traffic that fits in L2 at L2 speed; one that streams a tensor no
    kernel just wrote (``l2_chain=False``: repeat_kv's copy of a whole static cache)
    moves every byte at its own bandwidth, a profile's ``bandwidth_fraction`` of HBM."""
    import dataclasses
    cal = Calibration(physics={"l2_bandwidth_ratio": 2.0})
    small = 10e6                 # 40 MB per launch: under the toy GPU's 50 MB L2
    chained = dataclasses.replace(elementwise_kernel(small, 4), bandwidth_fraction=0.35)
    cold = dataclasses.replace(chained, l2_chain=False)
    assert kernel_cost(chained, GPU, cal).memory_s[0] == pytest.approx(
        4 * small / (2.0 * 0.35 * BW))
    assert kernel_cost(cold, GPU, cal).memory_s[0] == pytest.approx(4 * small / (0.35 * BW))
    big = 1e9                    # far past L2: the chain's gain vanishes in proportion
    c_big = kernel_cost(dataclasses.replace(cold, act_bytes=a(4 * big), flops=a(big)),
                        GPU, cal)
    assert c_big.memory_s[0] == pytest.approx(4 * big / (0.35 * BW))


def test_a_chain_reuses_only_its_share_of_l2():
    """With ``l2_reuse_fraction`` f, a chained launch moves at L2 speed only what fits
    in f of the L2: 40 MB a launch against a fifth of the toy GPU's 50 MB L2 (10 MB)."""
    import dataclasses
    cal = Calibration(physics={"l2_bandwidth_ratio": 2.0, "l2_reuse_fraction": 0.2})
    small = 10e6                 # 40 MB per launch
    chained = dataclasses.replace(elementwise_kernel(small, 4), bandwidth_fraction=0.5)
    assert kernel_cost(chained, GPU, cal).memory_s[0] == pytest.approx(
        10e6 / (2.0 * 0.5 * BW) + 30e6 / (0.5 * BW))
    # under the share: all at L2 speed, as with the whole L2
    tiny = dataclasses.replace(elementwise_kernel(1e6, 4), bandwidth_fraction=0.5)
    assert kernel_cost(tiny, GPU, cal).memory_s[0] == pytest.approx(4e6 / (2.0 * 0.5 * BW))


def test_an_l2_chained_ops_kv_cache_reads_stream_from_hbm():
    """An op in an L2 chain that also reads the KV cache (the serving harness's K/V
    gather: it writes a buffer the attention reads next, from cache slots no kernel
    just wrote): its cache reads move at HBM speed, only the rest may sit in L2."""
    import dataclasses
    cal = Calibration(physics={"l2_bandwidth_ratio": 2.0})
    small = 5e6                  # 20 MB written + 20 MB read: under the 50 MB L2
    chained = dataclasses.replace(elementwise_kernel(small, 8), bandwidth_fraction=0.5)
    gather = dataclasses.replace(chained, cache_read_bytes=a(4 * small))
    assert kernel_cost(chained, GPU, cal).memory_s[0] == pytest.approx(
        8 * small / (2.0 * 0.5 * BW))
    assert kernel_cost(gather, GPU, cal).memory_s[0] == pytest.approx(
        4 * small / (2.0 * 0.5 * BW) + 4 * small / (0.5 * BW))
    # off the chain every byte streams from HBM, cache reads or not
    cold = dataclasses.replace(gather, l2_chain=False)
    assert kernel_cost(cold, GPU, cal).memory_s[0] == pytest.approx(8 * small / (0.5 * BW))


def test_the_harness_gather_records_its_kv_cache_reads():
    from gpusim.io import loader
    from gpusim.kernels import build_kernels

    model = loader.load_model("llama-3.2-1b")
    ks = {k.name: k for k in build_kernels(model, loader.load_stack("harness-serve"),
                                           "decode", 8, 1023, 1)}
    gather = ks["kv_gather"]
    # K and V of 8 rows x 1024 keys x the KV width, 2 B each: half its traffic
    assert gather.cache_read_bytes[0] == pytest.approx(8 * 1024 * model.kv_dim * 4)
    assert gather.cache_read_bytes[0] == pytest.approx(gather.bytes[0] / 2)
    assert ks["attn_mask"].cache_read_bytes is None


def test_multi_launch_elementwise_ctas_count_the_whole_tensor_per_launch():
    """BUG (saturating_ctas_per_sm > 0): an elementwise op's ``kernels`` launches each
    stream the whole tensor (rms_norm's 8 kernels each run over [T, h]), but cost.py
    sizes each launch's grid from elements / launches, so an 8-launch op gets 1/8 of
    the CTAs and a lower bandwidth than each of its launches really has. 8 passes over
    the same tensor should cost 8 x one pass."""
    cal = Calibration(physics={"saturating_ctas_per_sm": 1.0})
    elements = 4096 * 40  # 40 CTAs per pass -> 40% of the bandwidth
    one = kernel_cost(elementwise_kernel(elements, 4, launches=1), GPU, cal)
    eight = kernel_cost(elementwise_kernel(elements, 8 * 4, launches=8), GPU, cal)
    assert eight.memory_s[0] == pytest.approx(8 * one.memory_s[0], rel=1e-9)


def test_gemm_not_faster_with_more_rows():
    """FLAW (saturating_ctas_per_sm > 0): GEMM CTAs = tiles * floor(SMs/tiles) (capped
    split-K) is not monotone in m, and memory time divides by it. Toy GPU, saturating
    1 CTA/SM, n = 3072, k = 2048: m = 384 -> 3*24 = 72 tiles, split 1: 72 CTAs, 22.94 us;
    m = 385 -> 4*24 = 96 tiles: 96 CTAs, 17.21 us (the same 16.5 MB at 72% vs 96% of
    1 TB/s). Also m = 512 -> 513 (96 -> 120 CTAs)."""
    cal = Calibration(physics={"saturating_ctas_per_sm": 1.0})
    m = np.arange(1, 1025, dtype=np.float64)
    c = kernel_cost(gemm_kernel(m, 3072, 2048), GPU, cal)
    drops = np.nonzero(np.diff(c.seconds) < 0)[0]
    assert drops.size == 0, (
        f"m {m[drops[0]]:g} -> {m[drops[0] + 1]:g}: {c.seconds[drops[0]]:g} s -> "
        f"{c.seconds[drops[0] + 1]:g} s"
    )


def test_gemm_compute_monotone_in_m_datasheet():
    # without the parallelism term the wave/split-K model is monotone in m
    m = np.arange(1, 4097, dtype=np.float64)
    for n, k in ((3072, 2048), (1280, 4096), (12928, 1024), (22016, 4096)):
        c = kernel_cost(gemm_kernel(m, n, k), GPU, DATASHEET)
        assert np.all(np.diff(c.compute_s) >= 0), (n, k)
        assert np.all(np.diff(c.seconds) >= 0), (n, k)


def test_gemm_schedule_of_repeated_token_counts_equals_each_one_alone():
    # a sweep's token counts repeat: the schedule is computed once per distinct count
    # (small arrays, large ones, cached or not) and must equal each count's own
    rng = np.random.default_rng(3)
    for size in (10, 200, 3000):
        m = rng.choice([1.0, 7.0, 64.0, 129.0, 1000.0, 4096.0], size)
        got = gemm_schedule(m, 14336, 4096, GPU, DATASHEET.physics)
        for value in np.unique(m):
            alone = gemm_schedule(np.array([value]), 14336, 4096, GPU, DATASHEET.physics)
            for g, x in zip(got, alone, strict=True):
                assert np.all(g[m == value] == x[0])
