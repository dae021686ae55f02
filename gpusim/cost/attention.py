"""Attention kernels: which CTAs run, in how many waves, and the flops on the busiest SM.

The schedule of each kind of SDPA kernel the stacks run (``cost.kernel_cost`` turns it
into time with the calibration's efficiencies):

* decode: flash-decoding; a KV group's query heads packed into one 64-row tile, the
  keys split over CTAs until the SMs are full;
* prefill: causal, waves of 128-query tiles (the early tiles see fewer keys);
* verify (causal, a few new tokens): FlashAttention-2 as PyTorch runs it. Its own
  ``num_splits_heuristic`` picks how many ways the keys split (``fa2_num_splits``);
  unsplit CTAs pad the queries to 128 rows, split ones to 64; their MMAs and a softmax
  cost per score run in waves over the SMs, CTA prologues in rounds of two CTAs per SM;
* tree (a verify under a boolean token-tree mask): cuDNN's fused kernel, 64-row tiles
  over every key, never split, in waves.

Also the bandwidth regime of a kernel's KV reads (which re-reads L2 serves) and the
bound of a kernel with too few CTAs in flight to saturate HBM.

Pure and vectorised over step shapes.
"""

from __future__ import annotations

import numpy as np

from gpusim.kernels.build import AttentionShape, Kernel
from gpusim.specs import Calibration, GpuSpec

FLASH_BLOCK_M = 128          # FlashAttention-2 query tile (forward, head_dim 128)
FLASH_BLOCK_N = 128          # keys per inner step; also the split-KV granularity
FLASH_DECODE_BLOCK_M = 64    # query tile in the split-KV decode kernel
FLASH_CTAS_PER_SM = 2        # FA2's split heuristic counts two 128-thread CTAs per SM
FA2_MAX_SPLITS = 128         # FA2 splits the keys at most this many ways
TREE_BLOCK_M = 64            # cuDNN's masked SDPA kernel: 64-row query tiles (profiled)


def ceil_div(a: np.ndarray, b: np.ndarray | float) -> np.ndarray:
    """ceil(a / b), elementwise, in float64."""
    return np.ceil(np.asarray(a, dtype=np.float64) / b)


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
        base = a.batch * a.kv_heads * ceil_div(a.q * group, FLASH_DECODE_BLOCK_M)
        return _split_kv(base, a.kv_len, FLASH_DECODE_BLOCK_M, a.head_dim, sms,
                         cta_overhead_flops)
    if a.mode == "verify":
        if splits is None:
            splits = fa2_num_splits(a, sms)
        return _fa2_verify_schedule(a, sms, splits, cta_overhead_flops, score_flops)
    if a.mode == "tree":
        # a boolean mask can't skip blocks: every 64-row tile walks every key, never
        # split; waves over the SMs, each paying its tiles' MMAs, softmax and mask
        ctas = a.batch * a.heads * ceil_div(a.q, TREE_BLOCK_M)
        waves = ceil_div(ctas, sms)
        per_cta = TREE_BLOCK_M * a.kv_len * (4.0 * a.head_dim + score_flops)
        return np.maximum(np.minimum(sms, ctas), 1.0), waves * (per_cta + cta_overhead_flops)
    # prefill: one CTA per (batch, head, query block); causal blocks see fewer keys,
    # the last one sees all of them.
    m_blocks = ceil_div(a.q, FLASH_BLOCK_M)
    ctas = a.batch * a.heads * m_blocks
    waves = ceil_div(ctas, sms)
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
    base = np.atleast_1d(a.batch * a.heads * ceil_div(a.q, FLASH_DECODE_BLOCK_M))
    n_blocks = np.atleast_1d(ceil_div(a.kv_len, fa2_block_n(a.head_dim)))
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
    n_blocks = ceil_div(a.kv_len, block_n)
    block_m = np.where(split, FLASH_DECODE_BLOCK_M, FLASH_BLOCK_M)
    m_blocks = ceil_div(a.q, block_m)
    ctas = a.batch * a.heads * m_blocks * splits
    mean_keys = (a.kv_len - a.q) + np.minimum(a.q, FLASH_BLOCK_M * (m_blocks + 1) / 2)
    keys = np.where(split, np.minimum(a.kv_len, ceil_div(n_blocks, splits) * block_n),
                    mean_keys)
    full = np.where(split, keys, a.kv_len)
    waves = ceil_div(ctas, sms)
    rounds = ceil_div(ctas, FLASH_CTAS_PER_SM * sms)
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
    n_blocks = ceil_div(kv_len, FLASH_BLOCK_N)
    split = np.clip(np.floor(sms / base), 1.0, np.minimum(n_blocks, 128.0))
    waves = ceil_div(base * split, sms)
    keys = np.minimum(kv_len, ceil_div(n_blocks, split) * FLASH_BLOCK_N)
    per_cta = 4.0 * block_m * keys * head_dim + cta_overhead_flops
    # fractional blocks keep the in-flight count monotone in batch and context
    ctas = np.minimum(sms, base * kv_len / FLASH_BLOCK_N)
    return ctas, waves * per_cta


def attention_bandwidth(a: AttentionShape, cal: Calibration, splits: np.ndarray | None,
                        sms: float, kv_head_bytes: np.ndarray | float, l2_bytes: float
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(fraction of datasheet bandwidth, L2 reuse of KV re-reads) of an attention kernel.

    Every attention kernel streams KV at one sustained fraction of HBM bandwidth. What
    differs is how much of verify's re-reads (FA2 reads a KV head once per query head)
    L2 serves, in FA2's two regimes (``splits``: ``fa2_num_splits``): split, the query
    heads of a KV group are neighbours in the grid and stream the same keys at the same
    time, and L2 serves many re-reads; unsplit, each CTA walks all the keys and the
    grid runs every batch of one head before the next head, so the next query head of a
    group reads a KV head ``batch`` CTAs after the last one did. L2 serves that re-read
    while (a) the whole group fits in the CTAs running at once (two per SM), a falling
    share beyond, and (b) the KV the GPU streams in between (``batch`` x
    ``kv_head_bytes``, one sequence's KV head per CTA) fits in L2, a falling share
    beyond.
    """
    eff = np.full_like(a.batch, cal.attention_bandwidth_efficiency, dtype=np.float64)
    if a.mode != "verify":
        return eff, np.full_like(eff, cal.attention_l2_reuse)
    assert splits is not None  # kernel_cost passes verify's split counts
    between = np.maximum(a.batch * kv_head_bytes, 1.0)
    held = np.minimum(1.0, l2_bytes / between)
    group = a.heads // a.kv_heads
    together = np.minimum(1.0, FLASH_CTAS_PER_SM * sms / (a.batch * group))
    return eff, np.where(splits > 1.0, cal.attention_l2_reuse,
                         cal.attention_l2_reuse_multiwave * together * held)


def latency_bound_s(kv_bytes: np.ndarray, ctas: np.ndarray, bw: float, gpu: GpuSpec,
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
