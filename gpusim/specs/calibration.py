"""The cost model's parameters for one GPU (and stack): a calibration."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from gpusim.specs.base import Fraction, Frozen, NonNeg, PosInt


class SlowPick(Frozen):
    """A GEMM shape for which cuBLAS picks a kernel far slower than its neighbours' in
    m, and by how much (measured: ``gemm_picks``)."""

    n: PosInt
    k: PosInt
    m: PosInt
    slowdown: Annotated[float, Field(ge=1.0, le=100.0)]



class Calibration(Frozen):
    """Cost-model parameters for one GPU and stack.

    The defaults describe an ideal GPU: full datasheet bandwidth and tensor rate, no
    fixed costs. ``gpusim calibrate`` fits them from measurements.
    """

    gpu: str | None = None
    fitted_on: str = "datasheet"
    # HBM: sustained fraction of the datasheet bandwidth, and the latency that a
    # kernel's first bytes pay (Little's law: small transfers don't reach peak).
    hbm_bandwidth_efficiency: Fraction = 1.0
    dram_latency_s: NonNeg = 0.0
    # CTAs per SM a kernel needs in flight to reach full bandwidth (0: no limit).
    saturating_ctas_per_sm: NonNeg = 0.0
    # Per-kernel GPU-side cost inside the kernel (prologue/epilogue, tail).
    kernel_fixed_cost_s: NonNeg = 0.0
    # Idle time on the GPU between two kernels of a stream (the next kernel's launch
    # by the front end): in a step's time, not in any kernel's profiled duration.
    launch_gap_s: NonNeg = 0.0
    # Achievable fraction of dense tensor throughput in large GEMMs.
    tensor_efficiency: Fraction = 1.0
    # GEMM output tile (cuBLAS-like) for wave quantisation.
    gemm_tile_m: PosInt = 128
    gemm_tile_n: PosInt = 128
    # Shapes where cuBLAS's kernel pick is measured far slower than the smooth model's
    # (gemm_picks); empty for a GPU without a GEMM sweep.
    gemm_slow_picks: tuple[SlowPick, ...] = ()
    # Attention: bandwidth fraction for KV streaming; tensor fraction for prefill.
    attention_bandwidth_efficiency: Fraction = 1.0
    attention_tensor_efficiency: Fraction = 1.0
    # verify runs a different kernel (FA2, padded 128/64-row query tiles) than decode
    verify_attention_tensor_efficiency: Fraction = 1.0
    attention_fixed_cost_s: NonNeg = 0.0
    # Per-CTA prologue/epilogue of an attention kernel, on its critical path.
    attention_cta_overhead_s: NonNeg = 0.0
    # FA2 verify: work per attention score besides its MMAs (softmax: scale, max, exp,
    # sum on the CUDA cores), in tensor-flop equivalents; MMAs are 4 x head_dim per score.
    verify_attention_score_flops: NonNeg = 0.0
    # FA2 verify, unsplit kernel: extra time per launch (its first round of CTAs
    # starts together and waits on memory together).
    verify_attention_unsplit_fixed_s: NonNeg = 0.0
    # FA2 verify, split kernel: the combine kernel's time per split it merges.
    verify_attention_combine_s_per_split: NonNeg = 0.0
    # A token tree's verify (a boolean mask: cuDNN's fused kernel, 64-row query tiles
    # over every key): tensor fraction, softmax-and-mask work per score (tensor-flop
    # equivalents), time per wave of CTAs (prologue, epilogue) and per launch.
    tree_attention_tensor_efficiency: Fraction = 1.0
    tree_attention_score_flops: NonNeg = 0.0
    tree_attention_wave_overhead_s: NonNeg = 0.0
    tree_attention_fixed_s: NonNeg = 0.0
    # Fraction of a KV head's re-reads by the other query heads of its group that L2
    # serves, in kernels that don't share KV across the group (1: all, as one read).
    attention_l2_reuse: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    # The same in FA2's unsplit verify kernel while the KV streamed between two query
    # heads' reads of a KV head fits in L2 (``attention.attention_bandwidth``)
    attention_l2_reuse_multiwave: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    # L2 bandwidth over sustained HBM bandwidth, for pointwise chains whose tensors
    # stay in L2 between kernels (1: L2 ignored, the datasheet model).
    l2_bandwidth_ratio: Annotated[float, Field(ge=1.0, le=20.0)] = 1.0
    # Row reductions: time per element of one row, and the rows after which more rows
    # run in parallel (see cost.reduction_s).
    reduction_s_per_element: NonNeg = 0.0
    reduction_parallel_rows: Annotated[float, Field(ge=1.0, le=4096.0)] = 16.0
    # Bandwidth of a non-vectorised (strided) pointwise kernel, as a fraction of a
    # vectorised one's (element-wide loads instead of 16-byte vectors).
    strided_bandwidth_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    # Extra fixed time of a non-vectorised (strided, broadcast, reduction) kernel.
    strided_kernel_extra_s: NonNeg = 0.0
    # Extra fixed time per GEMM (pipeline fill and drain, split-K reduction).
    gemm_fixed_cost_s: NonNeg = 0.0
    # Host side: cost to launch one kernel from eager PyTorch, and one graph replay.
    host_launch_cost_s: NonNeg = 0.0
    host_graph_launch_cost_s: NonNeg = 0.0
    # Power cap: the share of a back-to-back step's time its matrix work keeps the
    # tensor cores busy at peak (at full clock) before the power manager lowers the SM
    # clock (1: never); see cost.power_clock.
    power_cap_tensor_share: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    # HBM streaming's power against the tensor cores': a step's load on the cap is its
    # tensor share plus this times its HBM share (cost.power_load).
    power_memory_weight: Annotated[float, Field(ge=0.0, le=2.0)] = 0.0
    # How FA2's verify kernel's arithmetic stretches with the SM clock: time at clock f
    # goes as f^-s (1: like a GEMM; 0: set by its KV loads' latency, not the clock).
    verify_attention_clock_sensitivity: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    # How memory and compute overlap inside a kernel: time = (m^p + c^p)^(1/p).
    overlap_exponent: Annotated[float, Field(ge=1.0, le=64.0)] = 64.0
    notes: str = ""

