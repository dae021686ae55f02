"""FlashAttention-2's forward kernel as PyTorch runs a causal verify pass (a few new
tokens per sequence against a long cache).

Its own ``num_splits_heuristic`` (flash_api.cpp) picks how many ways the keys split
(``num_splits``). Unsplit, one CTA per (sequence, head, 128 query rows) walks every
key its causal rows see, padded to 128 rows; split, CTAs of 64 rows each take a run of
whole key blocks and a combine kernel merges them. Each query head is its own CTA, so
it re-reads its KV head: L2 serves some re-reads (``kv_read_bytes``). MMAs and a
softmax cost per score run in waves over the SMs, CTA prologues in rounds of two CTAs
per SM; its arithmetic follows the SM clock only in part (``clock_sensitivity``).

Also used for a decode step: with one query per sequence FA2 swaps the group's query
heads into the query dimension (``seqlenq_ngroups_swapped``), so each KV head is read
once for its group. Pure and vectorised over step shapes.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, ClassVar

import numpy as np
from pydantic import Field

from gpusim.cost.attention.base import AttentionFamily, AttentionParts, Bounds, ceil_div
from gpusim.kernels.records import AttentionShape
from gpusim.specs import Frozen, GpuSpec
from gpusim.specs.base import Fraction, NonNeg

if TYPE_CHECKING:
    from gpusim.cost.params import GpuPhysics

BLOCK_M = 128          # query tile of an unsplit CTA (head_dim 128)
SPLIT_BLOCK_M = 64     # query tile of a split CTA
CTAS_PER_SM = 2        # its split heuristic counts two 128-thread CTAs per SM
MAX_SPLITS = 128       # the keys split at most this many ways

Share = Annotated[float, Field(ge=0.0, le=1.0)]


class Fa2Params(Frozen):
    """FA2's calibration fields (defaults: the ideal kernel)."""

    # tensor fraction of its padded 128/64-row query tiles
    tensor_efficiency: Fraction = 1.0
    # per-CTA prologue/epilogue, on the critical path in rounds of two CTAs per SM
    cta_overhead_s: NonNeg = 0.0
    # work per attention score besides its MMAs (softmax: scale, max, exp, sum on the
    # CUDA cores), in tensor-flop equivalents; MMAs are 4 x head_dim per score
    score_flops: NonNeg = 0.0
    # unsplit kernel: extra time per launch (its first round of CTAs starts together
    # and waits on memory together)
    unsplit_fixed_s: NonNeg = 0.0
    # split kernel: the combine kernel's time per split it merges
    combine_s_per_split: NonNeg = 0.0
    # share of a KV head's re-reads by the other query heads of its group that L2
    # serves: split (neighbours in the grid stream the same keys together), and unsplit
    # while the KV streamed between two heads' reads fits in L2 (``kv_read_bytes``)
    l2_reuse_split: Share = 1.0
    l2_reuse_unsplit: Share = 1.0
    # time at SM clock f goes as f^-s (1: like a GEMM; 0: set by its KV loads'
    # latency, which the SM clock does not set)
    clock_sensitivity: Share = 1.0


def block_n(head_dim: int) -> int:
    """Keys per block of FA2's split-KV kernel (its split granularity)."""
    return 256 if head_dim <= 64 else (128 if head_dim <= 128 else 64)


def num_splits(a: AttentionShape, sms: float) -> np.ndarray:
    """How many key splits FA2 runs a step with: its ``num_splits_heuristic``. 1 while
    batch x heads x 64-row query blocks fill 80% of the CTA slots (two 128-thread CTAs
    per SM); else the fewest splits whose last wave of CTAs is at least 85% as full as
    the best split's, among split counts that change the blocks per split (at most
    128, the blocks, the slots)."""
    slots = CTAS_PER_SM * sms
    base = np.atleast_1d(a.batch * a.heads * ceil_div(a.q, SPLIT_BLOCK_M))
    n_blocks = np.atleast_1d(ceil_div(a.kv_len, block_n(a.head_dim)))
    base, n_blocks = np.broadcast_arrays(base, n_blocks)
    out = np.ones(base.shape)
    need = (base < 0.8 * slots) & (n_blocks > 1.0)
    if not need.any():
        return out
    # shapes repeat (a sweep's batches share contexts): search each pair once, the pairs
    # found through one integer key (both are whole numbers well below 2**26: the key is
    # exact) as numpy's unique over columns sorts far slower
    bn, kn = base[need], n_blocks[need]
    _, first, inverse = np.unique(bn * (kn.max() + 1.0) + kn, return_index=True,
                                  return_inverse=True)
    b, nb = bn[first][:, None], kn[first][:, None]
    cand = np.arange(1.0, min(MAX_SPLITS, slots, float(nb.max())) + 1.0)[None, :]
    eligible = (cand == 1.0) | (np.ceil(nb / cand) != np.ceil(nb / np.maximum(cand - 1.0, 1.0)))
    eligible &= cand <= nb
    waves = b * cand / slots
    eff = np.where(eligible, waves / np.ceil(waves), 0.0)
    ok = eligible & (eff >= 0.85 * eff.max(axis=1, keepdims=True))
    out[need] = (ok.argmax(axis=1) + 1.0)[inverse.ravel()]
    return out


def schedule(a: AttentionShape, sms: float, splits: np.ndarray, cta_overhead_flops: float,
             score_flops: float) -> tuple[np.ndarray, np.ndarray]:
    """(CTAs in flight, flops on the busiest SM): unsplit, one CTA per (sequence, head,
    128 query rows) walks the keys its causal rows see (a long chunk's early rows see
    fewer); split, CTAs of 64 rows each take a run of whole key blocks. Their MMAs keep
    an SM busy with one CTA or two, so the key loop runs in waves over the SMs (less
    than a wave: the slowest CTA decides); the prologue and epilogue of a CTA overlap a
    co-resident CTA's loop and run in rounds of two CTAs per SM."""
    split = splits > 1.0
    n_blocks = ceil_div(a.kv_len, block_n(a.head_dim))
    block_m = np.where(split, SPLIT_BLOCK_M, BLOCK_M)
    m_blocks = ceil_div(a.q, block_m)
    ctas = a.batch * a.heads * m_blocks * splits
    mean_keys = (a.kv_len - a.q) + np.minimum(a.q, BLOCK_M * (m_blocks + 1) / 2)
    keys = np.where(split, np.minimum(a.kv_len, ceil_div(n_blocks, splits) * block_n(a.head_dim)),
                    mean_keys)
    full = np.where(split, keys, a.kv_len)
    waves = ceil_div(ctas, sms)
    rounds = ceil_div(ctas, CTAS_PER_SM * sms)
    per_key = block_m * (4.0 * a.head_dim + score_flops)
    critical = (np.where(waves <= 1, full, waves * keys) * per_key
                + rounds * cta_overhead_flops)
    return np.maximum(np.minimum(sms, ctas), 1.0), critical


def l2_reuse(a: AttentionShape, p: Fa2Params, splits: np.ndarray, sms: float,
             kv_head_bytes: np.ndarray | float, l2_bytes: float) -> np.ndarray:
    """The share of a KV head's re-reads (by the other query heads of its group) that L2
    serves. Split, the query heads of a group are neighbours in the grid and stream the
    same keys at the same time. Unsplit, each CTA walks all the keys and the grid runs
    every sequence of one head before the next head, so the next query head of a group
    reads a KV head ``batch`` CTAs after the last one did; L2 serves that re-read while
    (a) the whole group fits in the CTAs running at once (two per SM), a falling share
    beyond, and (b) the KV the GPU streams in between (``batch`` x ``kv_head_bytes``)
    fits in L2, a falling share beyond."""
    between = np.maximum(a.batch * kv_head_bytes, 1.0)
    held = np.minimum(1.0, l2_bytes / between)
    together = np.minimum(1.0, CTAS_PER_SM * sms / (a.batch * a.group))
    return np.where(splits > 1.0, p.l2_reuse_split, p.l2_reuse_unsplit * together * held)


class Fa2(AttentionFamily):
    name: ClassVar[str] = "fa2"
    Params: ClassVar[type[Frozen]] = Fa2Params
    FIT: ClassVar[dict[str, Bounds]] = {
        "tensor_efficiency": (0.02, 1.0, 0.3, 1.0),
        "l2_reuse_split": (0.0, 1.0, 0.3, 1.0),
        "l2_reuse_unsplit": (0.0, 1.0, 0.1, 1.0),
        "cta_overhead_s": (0.0, 10e-6, 1e-6, 1e-6),
        "score_flops": (0.0, 2048.0, 128.0, 100.0),
        "unsplit_fixed_s": (0.0, 40e-6, 5e-6, 1e-6),
        "combine_s_per_split": (0.0, 2e-6, 0.2e-6, 1e-6),
        "clock_sensitivity": (0.0, 1.0, 0.5, 1.0),
    }

    def parts(self, a: AttentionShape, kv_bytes: np.ndarray, gpu: GpuSpec,
              physics: GpuPhysics, params: Frozen, per_sm_flops: float) -> AttentionParts:
        p: Fa2Params = params  # type: ignore[assignment]
        shares_kv = a.mode == "decode" and a.group > 1
        if shares_kv:  # seqlenq_ngroups_swapped: the group's heads become the queries
            a = replace(a, q=a.q * a.group, heads=a.kv_heads)
        sms = float(gpu.sm_count)
        eff = self.tensor_efficiency(p)
        splits = num_splits(a, sms)
        ctas, critical = schedule(a, sms, splits, p.cta_overhead_s * per_sm_flops * eff,
                                  p.score_flops)
        fixed = np.where(splits > 1.0, splits * p.combine_s_per_split, p.unsplit_fixed_s)
        if shares_kv or a.group == 1:
            return AttentionParts(ctas, critical, eff, kv_bytes, fixed)
        reuse = l2_reuse(a, p, splits, sms, kv_bytes / (a.batch * a.kv_heads),
                         float(gpu.l2_bytes))
        read = kv_bytes * (1.0 + (a.group - 1) * (1.0 - reuse))
        return AttentionParts(ctas, critical, eff, read, fixed)

    def clock_exponent(self, params: Frozen) -> float:
        return float(params.clock_sensitivity)  # type: ignore[attr-defined]
