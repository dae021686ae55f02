"""Pointwise kernels: vectorised or not, chains whose tensors stay in L2, row
reductions (RMSNorm's mean) that are latency-bound per row until rows run side by side,
and in-CTA sorts (an MoE layer's argsort of its expert ids). Pure and vectorised over
step shapes."""

from __future__ import annotations

import numpy as np

from gpusim.cost.params import GpuPhysics
from gpusim.kernels.quant import whole_tensor_splits, whole_tensor_walk
from gpusim.specs import GpuSpec


def l2_aware_s(total_bytes: np.ndarray, launches: float, bw: np.ndarray | float,
                gpu: GpuSpec,
                physics: GpuPhysics) -> np.ndarray:
    """Streaming time of a chain of pointwise kernels whose inputs the previous kernel
    just wrote: the part of each kernel's traffic that fits in the share of L2 it
    reuses (``l2_reuse_fraction``) moves at L2 speed."""
    per_kernel = total_bytes / max(launches, 1.0)
    in_l2 = np.minimum(per_kernel, gpu.l2_bytes * physics.l2_reuse_fraction)
    l2_bw = bw * physics.l2_bandwidth_ratio
    return (in_l2 / l2_bw + (per_kernel - in_l2) / bw) * max(launches, 1.0)


def reduction_s(r: np.ndarray, physics: GpuPhysics) -> np.ndarray:
    """Row reductions (RMSNorm's mean): ``r`` = [rows, row_elements] per shape.

    PyTorch's reduce kernel walks a row's elements at a latency-bound rate and, for
    few rows, handles them one after another; past ``reduction_parallel_rows`` rows
    they run side by side on other SMs, so the time stops growing (profiled on H100).
    """
    rows, row_elements = r
    return np.minimum(rows, physics.reduction_parallel_rows) * row_elements \
        * physics.reduction_s_per_element


# The serial row walk of known kernels on H100 and H200 (their SMs run at one clock):
# (seconds a walk takes whatever its length: its first loads and its CTA's syncs;
# seconds per element of the row). torch's vectorized_layer_norm_kernel (F.rms_norm)
# gives each token row one CTA, which walks it twice (its sum of squares, then the
# scaling); profiled, its time follows the hidden size whatever the rows up to a few
# hundred (validation/data/*/stacks/torch-fused/kernels.csv, the fp8, int4 and MoE
# profiles and probe_2026-12-07_s21/norm_widths: 2.5 us at 896, 3.4-3.7 at 2048, 4.7-4.9
# at 3072, 5.2-5.6 at 3584, 5.4-6.1 at 4096, 7.1 at 5120, 9.9-10.7 at 8192; fitted on
# 896, 2048, 4096 and 5120 against the profiler's kernel times, tests/test_row_walk.py).
ROW_WALKS: dict[str, tuple[float, float]] = {"torch_layer_norm": (1.49e-6, 1.055e-9)}
# CTAs of a row walk an SM runs at once: torch's layer-norm kernels launch CTAs of 128
# threads (num_threads(), 4 warps: ATen/native/cuda/thread_constants.h) and a Hopper SM
# holds 2048 threads. Rows past the GPU's SMs x 16 wait for a round: Qwen3's per-head
# norms at a 512-token prefill walk 8192-16384 rows of 128 (profiled, never fitted:
# validation/data/h100-sxm/qwen3_2026-12-07/, moe/; tests/test_row_walk.py)
ROW_WALK_CTAS_PER_SM = 16


def row_walk_s(walk: str, row_elements: np.ndarray, rows: np.ndarray | None = None,
               sms: int | None = None) -> np.ndarray:
    """How long a kernel's CTAs take to walk ``rows`` rows of ``row_elements`` each (per
    shape): one CTA's walk, the critical path of a kernel whose rows run side by side,
    once per round of ``sms`` x ROW_WALK_CTAS_PER_SM rows (one round: ``rows`` None).
    Raises KeyError for a walk the table does not know (the stack schema allows only
    its keys), ValueError for ``rows`` without the GPU's ``sms``."""
    fixed_s, per_element_s = ROW_WALKS[walk]
    one = fixed_s + np.asarray(row_elements, dtype=np.float64) * per_element_s
    if rows is None:
        return one
    if sms is None:
        raise ValueError("row_walk_s: rows need the GPU's SM count (sms)")
    rounds = np.ceil(np.asarray(rows, dtype=np.float64) / (sms * ROW_WALK_CTAS_PER_SM))
    return one * np.maximum(rounds, 1.0)


# a split reduction's finish: each CTA writes its partial and bumps a semaphore in global
# memory, then the last CTA reads the partials back (Reduce.cuh, global_reduce): two
# round trips to HBM beyond one CTA's walk
SPLIT_FINISH_ROUND_TRIPS = 2


def split_reduction_s(splits: np.ndarray, physics: GpuPhysics) -> np.ndarray:
    """What ``splits`` whole-tensor reductions split over CTAs add to their walk (per
    shape): the memset of each one's semaphores, a kernel of its own (fixed cost, first
    bytes' latency, the idle gap before it), and the finish through global memory. The
    H100's profiled fp8 amax (torch-fp8 kernels.csv): 6.5 us a split call at 128 tokens
    where the one-CTA walk's rate gives 3.6, and a 0.8 us memset per call."""
    n = np.asarray(splits, dtype=np.float64)
    return n * (physics.kernel_fixed_cost_s + physics.launch_gap_s
                + (1 + SPLIT_FINISH_ROUND_TRIPS) * physics.dram_latency_s)


def tensor_reduction_s(elements: np.ndarray, reductions: int, physics: GpuPhysics
                       ) -> np.ndarray:
    """``reductions`` reductions of a whole tensor of ``elements`` each to one value (per
    shape): the busiest CTA's walk (``kernels.quant.whole_tensor_walk``) at the row
    reductions' latency-bound rate, and for those PyTorch splits over CTAs their
    memset and finish (``split_reduction_s``)."""
    e = np.asarray(elements, dtype=np.float64)
    walk = reduction_s(np.stack([np.ones_like(e), whole_tensor_walk(e) * reductions]),
                       physics)
    return walk + split_reduction_s(whole_tensor_splits(e) * reductions, physics)


# PyTorch's sortKeyValueInplace configs (aten/src/ATen/native/cuda/Sort.cu,
# MediumRadixSort): the elements rounded up to a power of two pick (threads, items per
# thread) of the one CTA that sorts a row
SORT_CONFIGS = ((32, 16, 2), (128, 32, 4), (1024, 32, 32), (2048, 64, 32), (4096, 128, 32))
SORT_CTA_MAX = SORT_CONFIGS[-1][0]


def sort_s(elements: np.ndarray, physics: GpuPhysics) -> np.ndarray:
    """torch.sort / argsort of ``elements`` keys (per shape). Up to 4096 keys, one CTA's
    radix sort: its passes over the keys each walk every thread's items one after
    another and synchronise the CTA, so the time follows the items a thread holds and
    the CTA's threads, not the bytes (profiled on H100: 6.7 us at 8 keys, 27.1 at 512,
    30.3 at 2048, 33.8 at 4096). Beyond, cub's device-wide radix sort, whose ten
    latency-bound kernels take ``sort_device_s`` whatever the keys at the sizes a step
    sorts (H100: 54 us at 8192 to 32768)."""
    n = np.maximum(np.asarray(elements, dtype=np.float64), 1.0)
    threads, items = sort_config(n)
    in_cta = physics.sort_fixed_s + items * physics.sort_s_per_item \
        + threads * physics.sort_s_per_thread
    return np.where(n > SORT_CTA_MAX, physics.sort_device_s, in_cta)


def sort_config(elements: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(threads, items per thread) of the CTA that sorts ``elements`` keys (per shape;
    the largest config beyond 4096)."""
    n = np.asarray(elements, dtype=np.float64)
    threads = np.full_like(n, float(SORT_CONFIGS[-1][1]))
    items = np.full_like(n, float(SORT_CONFIGS[-1][2]))
    for limit, t, i in reversed(SORT_CONFIGS):   # the smallest config that holds them
        threads = np.where(n <= limit, float(t), threads)
        items = np.where(n <= limit, float(i), items)
    return threads, items


SMALL_INDEX_MAX = 16   # PyTorch's index_select / index_add_: SmallIndex kernels up to here


def small_index_s(indices: np.ndarray, per_index_s: float) -> np.ndarray:
    """What PyTorch's SmallIndex kernel adds for ``indices`` indices: with at most
    SMALL_INDEX_MAX (Indexing.cu's rule) every thread walks the indices one after
    another, ``per_index_s`` each; beyond, the LargeIndex kernel takes them in parallel
    and adds nothing. Raises nothing."""
    n = np.asarray(indices, dtype=np.float64)
    return np.where(n <= SMALL_INDEX_MAX, n * per_index_s, 0.0)
