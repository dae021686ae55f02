"""Kernel -> Cost: the time one op takes on a GPU, from its bytes and flops.

Physics, each term with its parameter in ``Calibration`` (calibrate.FIT_SPACE fits
them; the defaults are the ideal datasheet GPU):

* HBM streaming at a sustained fraction of the datasheet bandwidth, plus a first-byte
  latency per launch (small transfers never reach peak).
* Pointwise kernels: vectorised or not (strided views, broadcasts, reductions are
  slower per launch and per byte); chains whose tensors fit in L2 move at L2 speed;
  RMSNorm's row reductions are latency-bound per row until rows run side by side.
* GEMMs: token tiles padded to the MMA granularity for skinny shapes, output tiles
  quantised into waves over the SMs with the tile width that wastes least, split-K
  when tiles can't fill the GPU; a fixed cost per GEMM.
* Attention: decode packs a KV group's query heads and splits keys over CTAs
  (flash-decoding); prefill is causal with waves of 128-query blocks; a token tree's
  verify (a boolean mask) runs 64-row tiles over every key, in waves. Verify runs
  FlashAttention-2 as PyTorch calls it: its own split heuristic picks the number of
  key splits (``fa2_num_splits``); its MMAs run on padded query tiles in waves over
  the SMs, with a softmax cost per score; CTA prologues run in rounds of two CTAs
  per SM; the unsplit kernel pays a fixed cost per launch, the split one a combine
  per split; it re-reads KV once per query head, L2 serving part of the re-reads.
  A kernel with too few CTAs in flight is bound by one CTA's share of the bandwidth.
* A fixed GPU-side cost per launch inside the kernel (prologue, epilogue), and the
  idle gap before each launch in the stream (``launch_gap_s``): the gap belongs to the
  step's time but not to a kernel's profiled duration (``busy_s``).
* Memory and math overlap inside a kernel: ``(m^p + c^p)^(1/p)`` (p large: max).

Pure and vectorised over step shapes; no SimPy, no requests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpusim.ops import AttentionShape, Kernel
from gpusim.specs import Calibration, GpuSpec

MMA_ROWS = 8.0               # smallest row tile of a tensor-core MMA (m8n8k16 family)
SPLIT_K_MIN_K = 256          # cuBLAS-like: a split-K slice keeps at least this much K
FLASH_BLOCK_M = 128          # FlashAttention-2 query tile (forward, head_dim 128)
FLASH_BLOCK_N = 128          # keys per inner step; also the split-KV granularity
FLASH_DECODE_BLOCK_M = 64    # query tile in the split-KV decode kernel
FLASH_CTAS_PER_SM = 2        # FA2's split heuristic counts two 128-thread CTAs per SM
FA2_MAX_SPLITS = 128         # FA2 splits the keys at most this many ways
TREE_BLOCK_M = 64            # cuDNN's masked SDPA kernel: 64-row query tiles (profiled)


@dataclass(frozen=True)
class Cost:
    """Time and work of one op (arrays over step shapes); ``+`` sums two costs."""

    seconds: np.ndarray
    fixed_s: np.ndarray
    memory_s: np.ndarray
    compute_s: np.ndarray
    flops: np.ndarray
    bytes: np.ndarray

    def __add__(self, other: Cost) -> Cost:
        return Cost(*(getattr(self, f) + getattr(other, f) for f in _FIELDS))

    def scaled(self, factor: float) -> Cost:
        """This cost ``factor`` times over (e.g. once per layer)."""
        return Cost(*(getattr(self, f) * factor for f in _FIELDS))

    @staticmethod
    def zero(n: int = 1) -> Cost:
        z = np.zeros(n)
        return Cost(z, z, z, z, z, z)


_FIELDS = ("seconds", "fixed_s", "memory_s", "compute_s", "flops", "bytes")


def _ceil_div(a: np.ndarray, b: np.ndarray | float) -> np.ndarray:
    return np.ceil(np.asarray(a, dtype=np.float64) / b)


def _tiled(m: np.ndarray, n: int, k: int, tile_m: np.ndarray, tile_n: float, sms: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tiles = _ceil_div(m, tile_m) * _ceil_div(n, tile_n)
    max_split = max(1.0, np.floor(k / SPLIT_K_MIN_K))
    split = np.clip(np.floor(sms / tiles), 1.0, max_split)
    ctas = tiles * split
    waves = _ceil_div(ctas, sms)
    # a tile computes its full tile_m rows even when m is smaller (padding)
    cta_flops = 2.0 * tile_m * tile_n * (k / split)
    return ctas, waves, cta_flops


def gemm_schedule(m: np.ndarray, n: int, k: int, gpu: GpuSpec, cal: Calibration
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ctas, waves, flops per CTA) of a tiled GEMM with split-K for skinny shapes.

    Wide GEMMs pick, among output-tile widths of ``gemm_tile_n`` x {1/2, 1, 3/2, 2},
    the one whose waves waste the least (cuBLAS's heuristics pick tile shapes such
    as 192x128 to balance the last wave); the time is then monotone in m.
    """
    sms = float(gpu.sm_count)
    # skinny GEMMs (m <= gemm_skinny_tile_m) run token tiles padded to the MMA's
    # granularity of 8 rows, rounded up to a power of two (cuBLAS's 8/16/32/64 tiles)
    pow2 = np.exp2(np.ceil(np.log2(np.maximum(m, 1.0))))
    skinny = np.clip(pow2, MMA_ROWS, cal.gemm_skinny_tile_m)
    tile_m = np.where(m <= cal.gemm_skinny_tile_m, skinny, cal.gemm_tile_m)
    best = _tiled(m, n, k, tile_m, float(cal.gemm_tile_n), sms)
    wide = m > cal.gemm_skinny_tile_m
    if wide.any():
        for factor in (0.5, 1.5, 2.0):
            cand = _tiled(m, n, k, tile_m, cal.gemm_tile_n * factor, sms)
            better = wide & (cand[1] * cand[2] < best[1] * best[2])
            best = tuple(np.where(better, c, b) for c, b in zip(cand, best, strict=True))
    return best


def attention_schedule(k: Kernel, gpu: GpuSpec, cta_overhead_flops: float = 0.0,
                       score_flops: float = 0.0, splits: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(ctas, critical_flops): CTAs in flight and the flops the busiest SM executes.

    Compute time follows from ``critical_flops`` at the per-SM tensor rate; each CTA
    also pays ``cta_overhead_flops`` (its prologue and epilogue: loading its query
    tile, writing its output) on the critical path (a tree's kernel: per wave);
    verify's and a tree's kernels also spend ``score_flops`` per attention score on the
    softmax (and the mask).
    """
    a = k.attention
    assert a is not None  # built by ops for attention kernels only
    sms = float(gpu.sm_count)
    group = a.heads // a.kv_heads
    if a.mode == "decode":
        # the query heads of a KV group are packed into the M dimension (q = 1)
        base = a.batch * a.kv_heads * _ceil_div(a.q * group, FLASH_DECODE_BLOCK_M)
        return _split_kv(base, a.kv_len, FLASH_DECODE_BLOCK_M, a.head_dim, sms,
                         cta_overhead_flops)
    if a.mode == "verify":
        if splits is None:
            splits = fa2_num_splits(a, sms)
        return _fa2_verify_schedule(a, sms, splits, cta_overhead_flops, score_flops)
    if a.mode == "tree":
        # a boolean mask can't skip blocks: every 64-row tile walks every key, never
        # split; waves over the SMs, each paying its tiles' MMAs, softmax and mask
        ctas = a.batch * a.heads * _ceil_div(a.q, TREE_BLOCK_M)
        waves = _ceil_div(ctas, sms)
        per_cta = TREE_BLOCK_M * a.kv_len * (4.0 * a.head_dim + score_flops)
        return np.maximum(np.minimum(sms, ctas), 1.0), waves * (per_cta + cta_overhead_flops)
    # prefill: one CTA per (batch, head, query block); causal blocks see fewer keys,
    # the last one sees all of them.
    m_blocks = _ceil_div(a.q, FLASH_BLOCK_M)
    ctas = a.batch * a.heads * m_blocks
    waves = _ceil_div(ctas, sms)
    mean_keys = (a.kv_len - a.q) + np.minimum(a.q, FLASH_BLOCK_M * (m_blocks + 1) / 2)
    mean_cta = 4.0 * FLASH_BLOCK_M * mean_keys * a.head_dim + cta_overhead_flops
    full_cta = 4.0 * FLASH_BLOCK_M * a.kv_len * a.head_dim + cta_overhead_flops
    # less than one wave: the slowest CTA decides; many waves: the average does
    critical = np.where(waves <= 1, full_cta, waves * mean_cta)
    ideal = np.minimum(sms, ctas * a.kv_len / FLASH_BLOCK_N)
    return np.maximum(ideal, 1.0), critical


def fa2_block_n(head_dim: int) -> int:
    """Keys per block of FlashAttention-2's split-KV kernel (its split granularity)."""
    return 256 if head_dim <= 64 else (128 if head_dim <= 128 else 64)


def fa2_num_splits(a: AttentionShape, sms: float) -> np.ndarray:
    """How many key splits FlashAttention-2 runs a verify step with: its
    ``num_splits_heuristic`` (flash_api.cpp). 1 while batch x heads x 64-row query
    blocks fill 80% of the CTA slots (two 128-thread CTAs per SM); else the fewest
    splits whose last wave of CTAs is at least 85% as full as the best split's, among
    split counts that change the blocks per split (at most 128, the blocks, the slots).
    """
    slots = FLASH_CTAS_PER_SM * sms
    base = np.atleast_1d(a.batch * a.heads * _ceil_div(a.q, FLASH_DECODE_BLOCK_M))
    n_blocks = np.atleast_1d(_ceil_div(a.kv_len, fa2_block_n(a.head_dim)))
    base, n_blocks = np.broadcast_arrays(base, n_blocks)
    out = np.ones(base.shape)
    need = (base < 0.8 * slots) & (n_blocks > 1.0)
    if not need.any():
        return out
    # shapes repeat (a sweep's batches share contexts): search each pair once
    pairs, inverse = np.unique(np.stack([base[need], n_blocks[need]]), axis=1,
                               return_inverse=True)
    b, nb = pairs[0][:, None], pairs[1][:, None]
    cand = np.arange(1.0, min(FA2_MAX_SPLITS, slots, float(nb.max())) + 1.0)[None, :]
    eligible = (cand == 1.0) | (np.ceil(nb / cand) != np.ceil(nb / np.maximum(cand - 1.0, 1.0)))
    eligible &= cand <= nb
    waves = b * cand / slots
    eff = np.where(eligible, waves / np.ceil(waves), 0.0)
    ok = eligible & (eff >= 0.85 * eff.max(axis=1, keepdims=True))
    out[need] = (ok.argmax(axis=1) + 1.0)[inverse.ravel()]
    return out


def fa2_splits_kv(a: AttentionShape, sms: float) -> np.ndarray:
    """Whether FlashAttention-2 runs a verify step split over the keys."""
    return fa2_num_splits(a, sms) > 1.0


def _fa2_verify_schedule(a: AttentionShape, sms: float, splits: np.ndarray,
                         cta_overhead_flops: float, score_flops: float
                         ) -> tuple[np.ndarray, np.ndarray]:
    """FlashAttention-2's verify kernels: unsplit, one CTA per (batch, head, 128 query
    rows) (padded: q is often a few tokens) walks the keys its causal rows see (a long
    chunk's early rows see fewer); split, CTAs of 64 rows each take a run of whole key
    blocks. Their MMAs keep an SM busy with one CTA or two, so the key loop runs in
    waves over the SMs (less than a wave: the slowest CTA decides); the prologue and
    epilogue of a CTA overlap a co-resident CTA's loop and run in rounds of two CTAs
    per SM."""
    split = splits > 1.0
    block_n = fa2_block_n(a.head_dim)
    n_blocks = _ceil_div(a.kv_len, block_n)
    block_m = np.where(split, FLASH_DECODE_BLOCK_M, FLASH_BLOCK_M)
    m_blocks = _ceil_div(a.q, block_m)
    ctas = a.batch * a.heads * m_blocks * splits
    mean_keys = (a.kv_len - a.q) + np.minimum(a.q, FLASH_BLOCK_M * (m_blocks + 1) / 2)
    keys = np.where(split, np.minimum(a.kv_len, _ceil_div(n_blocks, splits) * block_n),
                    mean_keys)
    full = np.where(split, keys, a.kv_len)
    waves = _ceil_div(ctas, sms)
    rounds = _ceil_div(ctas, FLASH_CTAS_PER_SM * sms)
    per_key = block_m * (4.0 * a.head_dim + score_flops)
    critical = (np.where(waves <= 1, full, waves * keys) * per_key
                + rounds * cta_overhead_flops)
    return np.maximum(np.minimum(sms, ctas), 1.0), critical


def _split_kv(base: np.ndarray, kv_len: np.ndarray, block_m: float, head_dim: int,
              sms: float, cta_overhead_flops: float = 0.0
              ) -> tuple[np.ndarray, np.ndarray]:
    """Flash-decoding: ``base`` CTAs (batch x heads x query blocks), keys split into
    whole 128-key blocks across more CTAs until the SMs are full.

    Returns (CTAs in flight if the keys split ideally, flops on the busiest SM).
    """
    n_blocks = _ceil_div(kv_len, FLASH_BLOCK_N)
    split = np.clip(np.floor(sms / base), 1.0, np.minimum(n_blocks, 128.0))
    waves = _ceil_div(base * split, sms)
    keys = np.minimum(kv_len, _ceil_div(n_blocks, split) * FLASH_BLOCK_N)
    per_cta = 4.0 * block_m * keys * head_dim + cta_overhead_flops
    # fractional blocks keep the in-flight count monotone in batch and context
    ctas = np.minimum(sms, base * kv_len / FLASH_BLOCK_N)
    return ctas, waves * per_cta


def _attention_bandwidth(a: AttentionShape, cal: Calibration, splits: np.ndarray | None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(fraction of datasheet bandwidth, L2 reuse of KV re-reads) of an attention kernel.

    Every attention kernel streams KV at one sustained fraction of HBM bandwidth. What
    differs is how much of verify's re-reads (FA2 reads a KV head once per query head)
    L2 serves, in FA2's two regimes (``splits``: ``fa2_num_splits``): split over the keys, short
    CTAs of a KV group stream the same keys at the same time and L2 serves many
    re-reads; unsplit, each CTA walks all the keys, CTAs of a group drift apart and
    reuse falls.
    """
    eff = np.full_like(a.batch, cal.attention_bandwidth_efficiency, dtype=np.float64)
    if a.mode != "verify":
        return eff, np.full_like(eff, cal.attention_l2_reuse)
    assert splits is not None  # kernel_cost passes verify's split counts
    return eff, np.where(splits > 1.0, cal.attention_l2_reuse,
                         cal.attention_l2_reuse_multiwave)


def _latency_bound_s(kv_bytes: np.ndarray, ctas: np.ndarray, bw: float, gpu: GpuSpec,
                     cal: Calibration) -> np.ndarray:
    """Streaming time of the busiest CTA when too few CTAs are in flight to saturate HBM.

    A CTA reaches about ``bw / saturating CTAs`` on its own (Little's law: its bytes in
    flight over the memory latency); with fewer CTAs than that the kernel is bound by
    one CTA's share. Never decreasing in the work: a CTA's share only grows.
    """
    if cal.saturating_ctas_per_sm == 0.0:  # the datasheet model: no limit
        return np.zeros_like(kv_bytes)
    saturating = cal.saturating_ctas_per_sm * gpu.sm_count
    return kv_bytes / np.maximum(ctas, 1e-9) * saturating / bw


def _l2_aware_s(total_bytes: np.ndarray, launches: float, bw: np.ndarray | float,
                gpu: GpuSpec,
                cal: Calibration) -> np.ndarray:
    """Streaming time of a chain of pointwise kernels whose inputs the previous kernel
    just wrote: the part of each kernel's traffic that fits in L2 moves at L2 speed."""
    per_kernel = total_bytes / max(launches, 1.0)
    in_l2 = np.minimum(per_kernel, gpu.l2_bytes)
    l2_bw = bw * cal.l2_bandwidth_ratio
    return (in_l2 / l2_bw + (per_kernel - in_l2) / bw) * max(launches, 1.0)


def reduction_s(r: np.ndarray, cal: Calibration) -> np.ndarray:
    """Row reductions (RMSNorm's mean): ``r`` = [rows, row_elements] per shape.

    PyTorch's reduce kernel walks a row's elements at a latency-bound rate and, for
    few rows, handles them one after another; past ``reduction_parallel_rows`` rows
    they run side by side on other SMs, so the time stops growing (profiled on H100).
    """
    rows, row_elements = r
    return np.minimum(rows, cal.reduction_parallel_rows) * row_elements \
        * cal.reduction_s_per_element


def kernel_cost(k: Kernel, gpu: GpuSpec, cal: Calibration) -> Cost:
    """Cost of one occurrence of ``k`` (all its launches) on ``gpu`` under ``cal``."""
    bw = gpu.hbm_bandwidth_bytes_per_s * cal.hbm_bandwidth_efficiency
    tensor_peak = gpu.tensor_peak_flops_per_s("bf16")
    per_sm = tensor_peak / gpu.sm_count
    launches = float(k.launches)
    fixed = np.full_like(k.flops, launches * cal.kernel_fixed_cost_s)
    if k.strided_launches is not None:
        fixed = fixed + k.strided_launches * cal.strided_kernel_extra_s
    if k.kind == "gemm":
        g = k.gemm
        assert g is not None
        _, waves, cta_flops = gemm_schedule(g.m, g.n, g.k, gpu, cal)
        compute = waves * cta_flops / (per_sm * cal.tensor_efficiency)
        # split-K lets a skinny GEMM keep every SM streaming: no parallelism limit
        memory = k.bytes / bw
        fixed = fixed + launches * cal.gemm_fixed_cost_s
    elif k.kind == "attention":
        a = k.attention
        assert a is not None
        verify, tree = a.mode == "verify", a.mode == "tree"
        # the per-CTA prologue/epilogue was measured on verify's FA2 kernel (and per
        # wave on the tree's masked kernel); decode's and prefill's kernels amortise
        # theirs over long key loops
        if verify:
            tensor_eff, overhead_s = (cal.verify_attention_tensor_efficiency,
                                      cal.attention_cta_overhead_s)
            score_flops = cal.verify_attention_score_flops
        elif tree:
            tensor_eff, overhead_s = (cal.tree_attention_tensor_efficiency,
                                      cal.tree_attention_wave_overhead_s)
            score_flops = cal.tree_attention_score_flops
            fixed = fixed + cal.tree_attention_fixed_s
        else:
            tensor_eff, overhead_s, score_flops = cal.attention_tensor_efficiency, 0.0, 0.0
        splits = fa2_num_splits(a, float(gpu.sm_count)) if verify else None
        ctas, critical = attention_schedule(k, gpu, overhead_s * per_sm * tensor_eff,
                                            score_flops, splits)
        compute = critical / (per_sm * tensor_eff)
        if splits is not None:
            fixed = fixed + np.where(splits > 1.0,
                                     splits * cal.verify_attention_combine_s_per_split,
                                     cal.verify_attention_unsplit_fixed_s)
        eff, reuse = _attention_bandwidth(a, cal, splits)
        attn_bw = gpu.hbm_bandwidth_bytes_per_s * eff
        kv_bytes = k.kv_bytes
        if not a.shares_kv:
            # each query head re-reads its KV head; L2 serves a fraction of the re-reads
            group = a.heads // a.kv_heads
            kv_bytes = kv_bytes * (1.0 + (group - 1) * (1.0 - reuse))
        memory = np.maximum((k.bytes - k.kv_bytes + kv_bytes) / attn_bw,
                            _latency_bound_s(kv_bytes, ctas, attn_bw, gpu, cal))
        fixed = fixed + cal.attention_fixed_cost_s
    else:
        # pointwise kernels launch a CTA per few thousand elements: never short of CTAs
        # once they move enough bytes to matter; small ones pay fixed cost and latency
        compute = k.flops / gpu.fp32_flops_per_s
        # non-vectorised kernels load element by element: a lower achieved bandwidth
        strided = (k.strided_launches / max(launches, 1.0) if k.strided_launches is not None
                   else np.zeros_like(k.flops))
        op_bw = bw / (1.0 - strided + strided / cal.strided_bandwidth_fraction)
        memory = _l2_aware_s(k.bytes, launches, op_bw, gpu, cal)
        if k.reduction is not None:
            fixed = fixed + reduction_s(k.reduction, cal)
    if launches == 0:
        z = np.zeros_like(k.flops)
        return Cost(z, z, z, z, z, z)
    memory = memory + launches * cal.dram_latency_s
    p = cal.overlap_exponent
    hi = np.maximum(memory, compute)
    lo = np.minimum(memory, compute)
    with np.errstate(divide="ignore", invalid="ignore"):
        overlapped = hi * np.power(1.0 + np.power(np.where(hi > 0, lo / hi, 0.0), p), 1.0 / p)
    seconds = fixed + overlapped + launches * cal.launch_gap_s
    return Cost(seconds=seconds, fixed_s=fixed, memory_s=memory, compute_s=compute,
                flops=k.flops, bytes=k.bytes)


def busy_s(k: Kernel, cost: Cost, cal: Calibration) -> np.ndarray:
    """GPU seconds ``k``'s kernels run (as a profiler reports them): ``cost`` less the
    idle launch gaps before them."""
    return cost.seconds - k.launches * cal.launch_gap_s


def step_cost(kernels: list[Kernel], gpu: GpuSpec, cal: Calibration) -> Cost:
    """GPU-side cost of a whole step: each op's cost times its repeat, summed."""
    total = Cost.zero(len(kernels[0].flops)) if kernels else Cost.zero()
    for k in kernels:
        total = total + kernel_cost(k, gpu, cal).scaled(k.repeat)
    return total
