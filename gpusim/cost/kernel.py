"""Kernel -> Cost: the time one op takes on a GPU, from its bytes and flops.

Physics, each term with its parameter in the calibration (``cost.params``; the
defaults are the ideal datasheet GPU):

* HBM streaming at a sustained fraction of the datasheet bandwidth, plus a first-byte
  latency per launch (small transfers never reach peak).
* Pointwise kernels (``pointwise``): vectorised or not, L2-resident chains, RMSNorm's
  row reductions.
* GEMMs (``gemm``): tiles and waves over the SMs, split-K, a fixed cost per GEMM,
  cuBLAS's measured slow picks; arithmetic at the kernel's dtype's peak.
* Attention (``attention``): each family's schedule, KV reads and fixed costs meet
  its tensor efficiency and the KV bandwidth; a kernel with too few CTAs in flight is
  bound by one CTA's share of the bandwidth.
* A fixed GPU-side cost per launch inside the kernel (prologue, epilogue), and the
  idle gap before each launch in the stream (``launch_gap_s``): the gap belongs to the
  step's time but not to a kernel's profiled duration (``busy_s``).
* Memory and math overlap inside a kernel: ``(m^p + c^p)^(1/p)`` (p large: max).
* Arithmetic runs at the SM clock (``clock``, a fraction of full: the power cap's,
  ``cost.power``); HBM has its own.

Pure and vectorised over step shapes; no SimPy, no requests.
"""

from __future__ import annotations

import numpy as np

from gpusim.cost.attention import family, latency_bound_s
from gpusim.cost.collectives import collective_cost
from gpusim.cost.gemm import gemm_schedule, slowdown
from gpusim.cost.gemm_families import gemm_family
from gpusim.cost.overlap import overlapped
from gpusim.cost.params import Calibration
from gpusim.cost.pointwise import (
    l2_aware_s,
    reduction_s,
    row_walk_s,
    small_index_s,
    sort_s,
    tensor_reduction_s,
)
from gpusim.cost.record import Cost
from gpusim.kernels.records import Kernel
from gpusim.specs import GpuSpec
from gpusim.specs.enums import KernelKind


def tensor_efficiency(k: Kernel, cal: Calibration) -> float:
    """The fraction of the tensor cores' peak that ``k``'s matrix work sustains: GEMMs
    the GPU's, each attention kernel its family's; 0 for kernels without matrix work
    (pointwise, embedding). A kernel's ``compute_s`` times this is the time its matrix
    work (padded tiles included) keeps the tensor cores busy at peak."""
    if k.kind == KernelKind.GEMM:
        if k.gemm is not None and k.gemm.family != "cublas":  # cost.gemm_families
            gf = gemm_family(k.gemm.family)
            return gf.tensor_efficiency(cal.physics, cal.gemm_params(gf.name))
        return cal.physics.tensor_efficiency
    if k.kind != KernelKind.ATTENTION or k.attention is None:
        return 0.0
    fam = family(k.attention.family)
    return fam.tensor_efficiency(cal.family_params(fam.name))


def kernel_cost(k: Kernel, gpu: GpuSpec, cal: Calibration,
                clock: np.ndarray | float = 1.0) -> Cost:
    """Cost of one occurrence of ``k`` (all its launches) on ``gpu`` under ``cal``, with
    the SMs at ``clock`` times their full clock (``cost.power.power_clock``; per shape).
    Raises ValueError for a dtype the GPU has no matrix rate for, or an unknown
    attention family."""
    if k.kind == KernelKind.COLLECTIVE:  # link time, from the GPU's links
        return collective_cost(k, gpu, cal)
    ph = cal.physics
    bw = gpu.hbm_bandwidth_bytes_per_s * ph.hbm_bandwidth_efficiency
    launches = float(k.launches)
    slow = None  # cuBLAS's measured slow pick for this GEMM shape, if any
    fixed = np.full_like(k.flops, launches * ph.kernel_fixed_cost_s)
    if k.strided_launches is not None:
        fixed = fixed + k.strided_launches * ph.strided_kernel_extra_s
    if k.kind == KernelKind.GEMM and k.gemm is not None and k.gemm.family != "cublas":
        # quantized and expert GEMMs: their family's schedule (cost.gemm_families)
        gf = gemm_family(k.gemm.family)
        gp = gf.parts(k, gpu, ph, cal.gemm_params(gf.name))
        fixed, memory, compute = fixed + gp.fixed_s, gp.memory_s, gp.compute_s
    elif k.kind == KernelKind.GEMM:
        g = k.gemm
        assert g is not None  # built by kernels.records.gemm_kernel
        _, waves, cta_flops = gemm_schedule(g.m, g.n, g.k, gpu, ph)
        per_sm = gpu.matmul_peak_flops_per_s(k.dtype) / gpu.sm_count
        compute = waves * cta_flops / (per_sm * ph.tensor_efficiency)
        # split-K lets a skinny GEMM keep every SM streaming: no parallelism limit
        memory = k.bytes / bw
        fixed = fixed + launches * ph.gemm_fixed_cost_s
        slow = slowdown(ph.gemm_slow_picks, g.n, g.k, g.m)
    elif k.kind == KernelKind.ATTENTION:
        a = k.attention
        assert a is not None  # built by kernels.records.attention_kernel
        fam = family(a.family)
        per_sm = gpu.matmul_peak_flops_per_s(k.dtype) / gpu.sm_count
        parts = fam.parts(a, k.kv_bytes, gpu, ph, cal.family_params(fam.name), per_sm)
        compute = parts.critical_flops / (per_sm * parts.tensor_efficiency)
        fixed = fixed + parts.fixed_s
        attn_bw = gpu.hbm_bandwidth_bytes_per_s * ph.attention_bandwidth_efficiency
        memory = np.maximum((k.bytes - k.kv_bytes + parts.kv_read_bytes) / attn_bw,
                            latency_bound_s(parts.kv_read_bytes, parts.ctas, attn_bw, gpu,
                                            ph))
        if fam.SHARED_FIXED:
            fixed = fixed + ph.attention_fixed_cost_s
    else:
        # pointwise kernels launch a CTA per few thousand elements: never short of CTAs
        # once they move enough bytes to matter; small ones pay fixed cost and latency
        compute = k.flops / gpu.fp32_flops_per_s
        if k.atomic_elements is not None:
            # its atomic adds run at the L2's rate, overlapped with its streams
            compute = compute + k.atomic_elements * ph.atomic_add_s_per_element
        # non-vectorised kernels load element by element: a lower achieved bandwidth
        strided = (k.strided_launches / max(launches, 1.0) if k.strided_launches is not None
                   else np.zeros_like(k.flops))
        op_bw = (bw * k.bandwidth_fraction if k.bandwidth_fraction is not None
                 else bw / (1.0 - strided + strided / ph.strided_bandwidth_fraction))
        if k.l2_chain:
            # what it reads from the KV cache streams from HBM; the rest may sit in L2
            cached = 0.0 if k.cache_read_bytes is None else k.cache_read_bytes
            memory = l2_aware_s(k.bytes - cached, launches, op_bw, gpu, ph) + cached / op_bw
        else:
            memory = k.bytes / op_bw
        if k.reduction is not None:
            fixed = fixed + reduction_s(k.reduction, ph)
        if k.reduced_elements is not None:
            fixed = fixed + tensor_reduction_s(k.reduced_elements, k.tensor_reductions, ph)
        if k.sort_elements is not None:
            fixed = fixed + sort_s(k.sort_elements, ph)
        if k.index_count is not None:
            fixed = fixed + small_index_s(k.index_count, k.small_index_s)
    if launches == 0:
        z = np.zeros_like(k.flops)
        return Cost(z, z, z, z, z, z)
    memory = memory + launches * ph.dram_latency_s
    # arithmetic runs at the SM clock; HBM has its own
    compute = compute / stretch(k, cal, clock)
    if k.row_walk is not None and k.row_walk_elements is not None:
        # a CTA's serial walk of its row is the kernel's critical path, overlapped with
        # its streaming as arithmetic is; load latency, not the SM clock, sets its pace
        compute = np.maximum(compute, row_walk_s(k.row_walk, k.row_walk_elements,
                                                 k.row_walk_rows, gpu.sm_count))
    return combined(k, cal, fixed, memory, compute, slow, _family_exponent(k, cal))


def _family_exponent(k: Kernel, cal: Calibration) -> float | None:
    """A non-cuBLAS GEMM family's own overlap exponent (None: the GPU's)."""
    if k.kind != KernelKind.GEMM or k.gemm is None or k.gemm.family == "cublas":
        return None
    gf = gemm_family(k.gemm.family)
    return gf.overlap_exponent(cal.physics, cal.gemm_params(gf.name))


def combined(k: Kernel, cal: Calibration, fixed: np.ndarray, memory: np.ndarray,
             compute: np.ndarray, slow: np.ndarray | None,
             exponent: float | None = None) -> Cost:
    """A kernel's Cost from its parts: memory and compute overlapped (``exponent``:
    how, default the GPU's fitted one), plus fixed costs, times cuBLAS's slowdown if
    any, plus the idle gaps before its launches."""
    ph = cal.physics
    p = ph.overlap_exponent if exponent is None else exponent
    kernel_s = fixed + overlapped(memory, compute, p)
    if slow is not None:
        kernel_s = kernel_s * slow
    seconds = kernel_s + k.launches * ph.launch_gap_s
    cost = Cost(seconds=seconds, fixed_s=fixed, memory_s=memory, compute_s=compute,
                flops=k.flops, bytes=k.bytes)
    # nothing at the shapes where its kernels do not launch
    return cost if k.launched is None else cost.scaled(k.launched)


def stretch(k: Kernel, cal: Calibration, clock: np.ndarray | float) -> np.ndarray | float:
    """How much slower ``k``'s arithmetic runs at ``clock`` (a fraction of full): most
    kernels' by the clock; an attention kernel's by the clock to its family's exponent
    (FA2's verify kernel: its few query rows per KV block make its small matrix steps
    wait on KV loads whose latency the SM clock does not set)."""
    if k.kind == KernelKind.ATTENTION and k.attention is not None:
        fam = family(k.attention.family)
        exponent = fam.clock_exponent(cal.family_params(fam.name))
        if exponent != 1.0:
            return np.power(clock, exponent)
    return clock


def reclocked(k: Kernel, cost: Cost, cal: Calibration, clock: np.ndarray) -> Cost:
    """``cost`` (at full clock) with its arithmetic at ``clock``: the schedule, bytes
    and fixed costs stay, so nothing but the overlap is redone."""
    if k.launches == 0:
        return cost
    slow = (slowdown(cal.physics.gemm_slow_picks, k.gemm.n, k.gemm.k, k.gemm.m)
            if k.gemm and k.gemm.family == "cublas" else None)
    return combined(k, cal, cost.fixed_s, cost.memory_s,
                    cost.compute_s / stretch(k, cal, clock), slow, _family_exponent(k, cal))


def busy_s(k: Kernel, cost: Cost, cal: Calibration) -> np.ndarray:
    """GPU seconds ``k``'s kernels run (as a profiler reports them): ``cost`` less the
    idle launch gaps before them."""
    gaps = k.launches * cal.physics.launch_gap_s
    return cost.seconds - (gaps if k.launched is None else gaps * k.launched)
