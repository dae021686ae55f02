"""Kernel -> Cost: the time one op takes on a GPU, from its bytes and flops.

Physics, each term with its parameter in ``Calibration`` (calibrate.FIT_SPACE fits
them; the defaults are the ideal datasheet GPU):

* HBM streaming at a sustained fraction of the datasheet bandwidth, plus a first-byte
  latency per launch (small transfers never reach peak).
* Pointwise kernels: vectorised or not (strided views, broadcasts, reductions are
  slower per launch and per byte); chains whose tensors fit in L2 move at L2 speed;
  RMSNorm's row reductions are latency-bound per row until rows run side by side.
* GEMMs: the token side split into equal tiles padded to the MMA's 8 rows, output
  tiles quantised into waves over the SMs with the tile shape that wastes least,
  split-K when tiles can't fill the GPU; a fixed cost per GEMM; the measured
  slowdown of the few shapes where cuBLAS picks a slow kernel (``gemm_picks``).
* Attention: each kernel's schedule (CTAs, waves, the busiest SM's flops) comes from
  ``attention`` (decode, prefill, FlashAttention-2's verify with its own split
  heuristic, a token tree's masked kernel); here it meets its tensor efficiency, the
  per-CTA and per-launch costs (FA2's unsplit launch, its combine per split), and KV
  streaming with the re-reads L2 does not serve. A kernel with too few CTAs in flight
  is bound by one CTA's share of the bandwidth.
* A fixed GPU-side cost per launch inside the kernel (prologue, epilogue), and the
  idle gap before each launch in the stream (``launch_gap_s``): the gap belongs to the
  step's time but not to a kernel's profiled duration (``busy_s``).
* Memory and math overlap inside a kernel: ``(m^p + c^p)^(1/p)`` (p large: max).
* A step whose matrix work keeps the tensor cores busy for much of its time runs into
  the GPU's power cap when run back to back: its arithmetic slows with the clock the cap
  allows (``power_clock``); FA2's verify kernel's by ``verify_attention_clock_sensitivity``.

Pure and vectorised over step shapes; no SimPy, no requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from gpusim.calibration.gemm_picks import slowdown
from gpusim.cost.attention import (
    attention_bandwidth,
    attention_schedule,
    fa2_num_splits,
    latency_bound_s,
)
from gpusim.kernels.build import Kernel
from gpusim.specs import Calibration, GpuSpec

# the tile shapes a GEMM chooses from, in units of gemm_tile_m (token rows, besides
# one tile of all the rows) and gemm_tile_n (output columns): cuBLAS's Hopper kernels
# run tiles 64 to 512 wide in steps of 16 or 32 (96, 112, 168, 176, 224 profiled)
TILE_M_FACTORS = (0.5, 1.0, 1.5, 2.0)
TILE_N_FACTORS = (1.0, 0.5, 0.75, 1.25, 1.5, 1.75, 2.0)
POWER_EXPONENT = 1.0 / 3.0   # clock under a power cap ~ (cap / load)^(1/3): P ~ f V^2, V ~ f
MMA_ROWS = 8.0               # smallest row tile of a tensor-core MMA (m8n8k16 family)
CACHED_SHAPES_MAX = 1024     # GEMM schedules of at most this many shapes are memoised
SPLIT_K_MIN_K = 256          # cuBLAS-like: a split-K slice keeps at least this much K


@dataclass(frozen=True)
class Cost:
    """Time and work of one op (arrays over step shapes); ``+`` sums two costs."""

    seconds: np.ndarray
    fixed_s: np.ndarray
    memory_s: np.ndarray
    compute_s: np.ndarray
    flops: np.ndarray
    bytes: np.ndarray

    # spelled out, not a loop over the fields: a step sums a few dozen of these per
    # call, and the generator's overhead showed in the prediction benchmark
    def __add__(self, other: Cost) -> Cost:
        return Cost(self.seconds + other.seconds, self.fixed_s + other.fixed_s,
                    self.memory_s + other.memory_s, self.compute_s + other.compute_s,
                    self.flops + other.flops, self.bytes + other.bytes)

    def scaled(self, factor: float) -> Cost:
        """This cost ``factor`` times over (e.g. once per layer)."""
        return Cost(self.seconds * factor, self.fixed_s * factor, self.memory_s * factor,
                    self.compute_s * factor, self.flops * factor, self.bytes * factor)

    @staticmethod
    def zero(n: int = 1) -> Cost:
        z = np.zeros(n)
        return Cost(z, z, z, z, z, z)


def gemm_schedule(m: np.ndarray, n: int, k: int, gpu: GpuSpec, cal: Calibration
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ctas, waves, flops per CTA) of a tiled GEMM, split-K where tiles can't fill
    the GPU.

    Token tiles (rows of m) are padded to the MMA's 8 rows: Hopper's wgmma takes any
    multiple of 8 as its token extent, and cuBLAS's kernels run one tile of all m rows
    when m is small (profiled: m = 36 in 40-row tiles, m = 144 in one of 144) and
    tiles of ``gemm_tile_m`` x TILE_M_FACTORS rows otherwise. Output tiles are
    ``gemm_tile_n`` x TILE_N_FACTORS wide. Of these shapes the schedule takes the one
    whose waves do the least work, as cuBLAS's heuristics balance the last wave (they
    were seen picking 64 to 232 rows and 96 to 512 columns). Each candidate's work is
    monotone in m and the candidate set only shrinks as m grows (the single tile
    reaches the tallest fixed height where it stops), so the time is monotone in m.
    """
    m = np.asarray(m, dtype=np.float64)
    args = (n, k, float(gpu.sm_count), float(cal.gemm_tile_m), float(cal.gemm_tile_n))
    if m.size > CACHED_SHAPES_MAX:
        return _schedule(m, *args)
    # the schedule depends on shapes and tile sizes only, never on fitted parameters:
    # a fit re-costs the same few dozen shapes hundreds of times (large sweeps are not
    # cached: their keys alone would hold megabytes)
    return _cached_schedule(m.tobytes(), m.shape, *args)


@lru_cache(maxsize=1024)
def _cached_schedule(m_bytes: bytes, shape: tuple[int, ...], n: int, k: int, sms: float,
                     gemm_tile_m: float, gemm_tile_n: float
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    out = _schedule(np.frombuffer(m_bytes, dtype=np.float64).reshape(shape), n, k, sms,
                    gemm_tile_m, gemm_tile_n)
    for x in out:
        x.flags.writeable = False  # shared by every caller
    return out


def _schedule(m: np.ndarray, n: int, k: int, sms: float, gemm_tile_m: float,
              gemm_tile_n: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    m = np.maximum(m, 1.0)[..., None, None]
    fixed = gemm_tile_m * np.asarray(TILE_M_FACTORS)
    tallest = float(fixed.max())
    single = np.minimum(MMA_ROWS * np.ceil(m / MMA_ROWS), tallest)
    tile_m = np.concatenate([single, np.broadcast_to(fixed[:, None], (*m.shape[:-2],
                                                                       len(fixed), 1))],
                            axis=-2)                                  # (..., H, 1)
    tile_n = gemm_tile_n * np.asarray(TILE_N_FACTORS)                 # (W,)
    tiles = np.ceil(m / tile_m) * np.ceil(n / tile_n)                 # (..., H, W)
    max_split = max(1.0, np.floor(k / SPLIT_K_MIN_K))
    split = np.clip(np.floor(sms / tiles), 1.0, max_split)
    ctas = tiles * split
    waves = np.ceil(ctas / sms)
    # a tile computes its full tile_m rows even when m is smaller (padding)
    cta_flops = 2.0 * tile_m * tile_n * (k / split)
    flat = (*ctas.shape[:-2], -1)
    pick = np.argmin((waves * cta_flops).reshape(flat), axis=-1)[..., None]

    def take(x: np.ndarray) -> np.ndarray:
        return np.take_along_axis(np.broadcast_to(x, ctas.shape).reshape(flat), pick,
                                  axis=-1)[..., 0]

    return take(ctas), take(waves), take(cta_flops)


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


def tensor_efficiency(k: Kernel, cal: Calibration) -> float:
    """The fraction of the tensor cores' peak that ``k``'s matrix work sustains: GEMMs,
    and each attention kernel (decode and prefill, FA2's verify, the token tree's
    masked kernel) its own; 0 for kernels without matrix work (pointwise, embedding).
    A kernel's ``compute_s`` times this is the time its matrix work (padded tiles
    included) keeps the tensor cores busy at peak."""
    if k.kind == "gemm":
        return cal.tensor_efficiency
    if k.kind != "attention" or k.attention is None:
        return 0.0
    mode = k.attention.mode
    if mode == "verify":
        return cal.verify_attention_tensor_efficiency
    if mode == "tree":
        return cal.tree_attention_tensor_efficiency
    return cal.attention_tensor_efficiency


def kernel_cost(k: Kernel, gpu: GpuSpec, cal: Calibration,
                clock: np.ndarray | float = 1.0) -> Cost:
    """Cost of one occurrence of ``k`` (all its launches) on ``gpu`` under ``cal``, with
    the SMs at ``clock`` times their full clock (``power_clock``; per shape)."""
    bw = gpu.hbm_bandwidth_bytes_per_s * cal.hbm_bandwidth_efficiency
    tensor_peak = gpu.tensor_peak_flops_per_s("bf16")
    per_sm = tensor_peak / gpu.sm_count
    launches = float(k.launches)
    slow = None  # cuBLAS's measured slow pick for this GEMM shape, if any
    fixed = np.full_like(k.flops, launches * cal.kernel_fixed_cost_s)
    if k.strided_launches is not None:
        fixed = fixed + k.strided_launches * cal.strided_kernel_extra_s
    if k.kind == "gemm":
        g = k.gemm
        assert g is not None
        _, waves, cta_flops = gemm_schedule(g.m, g.n, g.k, gpu, cal)
        compute = waves * cta_flops / (per_sm * tensor_efficiency(k, cal))
        # split-K lets a skinny GEMM keep every SM streaming: no parallelism limit
        memory = k.bytes / bw
        fixed = fixed + launches * cal.gemm_fixed_cost_s
        slow = slowdown(cal.gemm_slow_picks, g.n, g.k, g.m)
    elif k.kind == "attention":
        a = k.attention
        assert a is not None
        verify, tree = a.mode == "verify", a.mode == "tree"
        tensor_eff = tensor_efficiency(k, cal)
        # the per-CTA prologue/epilogue was measured on verify's FA2 kernel (and per
        # wave on the tree's masked kernel); decode's and prefill's kernels amortise
        # theirs over long key loops
        if verify:
            overhead_s = cal.attention_cta_overhead_s
            score_flops = cal.verify_attention_score_flops
        elif tree:
            overhead_s = cal.tree_attention_wave_overhead_s
            score_flops = cal.tree_attention_score_flops
            fixed = fixed + cal.tree_attention_fixed_s
        else:
            overhead_s, score_flops = 0.0, 0.0
        splits = fa2_num_splits(a, float(gpu.sm_count)) if verify else None
        ctas, critical = attention_schedule(k, gpu, overhead_s * per_sm * tensor_eff,
                                            score_flops, splits)
        compute = critical / (per_sm * tensor_eff)
        if splits is not None:
            fixed = fixed + np.where(splits > 1.0,
                                     splits * cal.verify_attention_combine_s_per_split,
                                     cal.verify_attention_unsplit_fixed_s)
        eff, reuse = attention_bandwidth(a, cal, splits, float(gpu.sm_count),
                                         k.kv_bytes / (a.batch * a.kv_heads),
                                         float(gpu.l2_bytes))
        attn_bw = gpu.hbm_bandwidth_bytes_per_s * eff
        kv_bytes = k.kv_bytes
        if not a.shares_kv:
            # each query head re-reads its KV head; L2 serves a fraction of the re-reads
            group = a.heads // a.kv_heads
            kv_bytes = kv_bytes * (1.0 + (group - 1) * (1.0 - reuse))
        memory = np.maximum((k.bytes - k.kv_bytes + kv_bytes) / attn_bw,
                            latency_bound_s(kv_bytes, ctas, attn_bw, gpu, cal))
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
    # arithmetic runs at the SM clock; HBM has its own
    return _combined(k, cal, fixed, memory, compute / _stretch(k, cal, clock), slow)


def _combined(k: Kernel, cal: Calibration, fixed: np.ndarray, memory: np.ndarray,
              compute: np.ndarray, slow: np.ndarray | None) -> Cost:
    """A kernel's Cost from its parts: memory and compute overlapped, plus fixed
    costs, times cuBLAS's slowdown if any, plus the idle gaps before its launches."""
    p = cal.overlap_exponent
    hi = np.maximum(memory, compute)
    lo = np.minimum(memory, compute)
    # (hi = 0 means lo = 0: the ratio is then 0, without a division by zero)
    ratio = lo / np.maximum(hi, 1e-300)
    overlapped = hi * (1.0 + ratio**p) ** (1.0 / p)
    kernel_s = fixed + overlapped
    if slow is not None:
        kernel_s = kernel_s * slow
    seconds = kernel_s + k.launches * cal.launch_gap_s
    return Cost(seconds=seconds, fixed_s=fixed, memory_s=memory, compute_s=compute,
                flops=k.flops, bytes=k.bytes)


def _stretch(k: Kernel, cal: Calibration, clock: np.ndarray | float) -> np.ndarray | float:
    """How much slower ``k``'s arithmetic runs at ``clock`` (a fraction of full): most
    kernels' by the clock; FA2's verify kernel's by the clock to the power
    ``verify_attention_clock_sensitivity``, since its few query rows per KV block make
    its small matrix steps wait on KV loads whose latency the SM clock does not set
    (prefill's long query blocks keep the tensor cores busy like a GEMM's)."""
    if k.kind == "attention" and k.attention is not None and k.attention.mode == "verify":
        return np.power(clock, cal.verify_attention_clock_sensitivity)
    return clock


def _reclocked(k: Kernel, cost: Cost, cal: Calibration, clock: np.ndarray) -> Cost:
    """``cost`` (at full clock) with its arithmetic at ``clock``: the schedule, bytes
    and fixed costs stay, so nothing but the overlap is redone."""
    if k.launches == 0:
        return cost
    slow = slowdown(cal.gemm_slow_picks, k.gemm.n, k.gemm.k, k.gemm.m) if k.gemm else None
    return _combined(k, cal, cost.fixed_s, cost.memory_s,
                     cost.compute_s / _stretch(k, cal, clock), slow)


def busy_s(k: Kernel, cost: Cost, cal: Calibration) -> np.ndarray:
    """GPU seconds ``k``'s kernels run (as a profiler reports them): ``cost`` less the
    idle launch gaps before them."""
    return cost.seconds - k.launches * cal.launch_gap_s


def tensor_share(kernels: Sequence[Kernel], costs: Sequence[Cost], cal: Calibration
                 ) -> np.ndarray:
    """The share of the kernels' time (each run ``repeat`` times, costs at full clock)
    that their matrix work keeps the tensor cores busy at peak: each kernel's
    ``compute_s`` times its ``tensor_efficiency``, padded tiles included (the tensor
    cores burn power on the padding too)."""
    return _shares(kernels, costs, cal)[0]


def _shares(kernels: Sequence[Kernel], costs: Sequence[Cost], cal: Calibration
            ) -> tuple[np.ndarray, np.ndarray]:
    """(tensor share, HBM share) of the kernels' time at full clock."""
    n = len(costs[0].seconds) if costs else 1
    tensor, memory, total = np.zeros(n), np.zeros(n), np.zeros(n)
    for k, c in zip(kernels, costs, strict=True):
        eff = tensor_efficiency(k, cal)
        if eff > 0.0:
            tensor = tensor + c.compute_s * (k.repeat * eff)
        memory = memory + c.memory_s * k.repeat
        total = total + c.seconds * k.repeat
    with np.errstate(divide="ignore", invalid="ignore"):
        return (np.where(total > 0, tensor / total, 0.0),
                np.where(total > 0, memory / total, 0.0))


def power_load(kernels: Sequence[Kernel], costs: Sequence[Cost], cal: Calibration
               ) -> np.ndarray:
    """What the power cap weighs: the tensor share plus ``power_memory_weight`` times
    the share of the time HBM streams (its traffic draws power too)."""
    tensor, memory = _shares(kernels, costs, cal)
    return tensor + cal.power_memory_weight * memory


def power_clock(kernels: Sequence[Kernel], costs: Sequence[Cost], cal: Calibration
                ) -> np.ndarray | None:
    """The SM clock, as a fraction of full, at which the kernels run back to back stay
    within the GPU's power cap; None where every shape runs at full clock.

    The SMs' power follows their matrix work: kernels keeping the tensor cores busy
    (at peak) for a share u of their time (``tensor_share``, at full clock) draw more
    than the cap allows once u passes ``power_cap_tensor_share`` (u_cap), and the power
    manager lowers the clock. Dynamic power goes as f V^2 with the voltage following f,
    so at the cap f = (u_cap / u)^(1/3). The manager averages power over far longer
    than a step (nvidia-smi: a second), so the kernels are whatever runs back to back:
    one step, or a speculative loop's draft steps and verify pass together. Measured on
    H100 and H200 (700 W): one u_cap puts twelve steps' steady clocks within 2.5%
    (``validation/power_steady.py``); a 4k-token prefill settles at 0.83-0.85 of the
    1980 MHz clock, batch-64 verify passes at 0.89-0.99, decode at full clock.
    """
    if cal.power_cap_tensor_share >= 1.0:
        return None
    u = power_load(kernels, costs, cal)
    with np.errstate(divide="ignore"):
        clock = np.minimum(1.0, np.power(cal.power_cap_tensor_share / u, POWER_EXPONENT))
    return clock if bool((clock < 1.0).any()) else None


def step_costs(kernels: Sequence[Kernel], gpu: GpuSpec, cal: Calibration,
               clock: np.ndarray | None = None,
               full_clock: Sequence[Cost] | None = None) -> list[Cost]:
    """Each kernel's cost in a step run back to back: at full clock, or, where the
    step's matrix work would exceed the power cap, at the clock the cap allows.
    ``clock`` (per shape) overrides the step's own: the clock of a loop the step runs
    in (``speculative.iteration``); ``full_clock``: the kernels' costs at full clock,
    when the caller has them already (a loop's clock needs them)."""
    costs = (list(full_clock) if full_clock is not None
             else [kernel_cost(k, gpu, cal) for k in kernels])
    if clock is None:
        clock = power_clock(kernels, costs, cal)
    if clock is None or bool((np.asarray(clock) >= 1.0).all()):
        return costs
    # pointwise kernels stream at HBM's pace: their few fp32 operations change nothing
    # measurable at a lower clock, and skipping them keeps the fast path fast
    return [_reclocked(k, c, cal, clock) if k.kind in ("gemm", "attention") else c
            for k, c in zip(kernels, costs, strict=True)]


def step_cost(kernels: list[Kernel], gpu: GpuSpec, cal: Calibration,
              clock: np.ndarray | None = None) -> Cost:
    """GPU-side cost of a whole step: each op's cost times its repeat, summed (at
    ``clock`` when given, as ``step_costs``)."""
    total = Cost.zero(len(kernels[0].flops)) if kernels else Cost.zero()
    for k, c in zip(kernels, step_costs(kernels, gpu, cal, clock), strict=True):
        total = total + c.scaled(k.repeat)
    return total
