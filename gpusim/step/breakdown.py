"""Where a step's time goes: per-op rows and a step summary (time, share, bytes,
achieved bandwidth and FLOP/s, roofline, what bounds it), and per-op costs for the
layers above ``step`` that need a step split by op kind without handling kernels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpusim.cost import step_costs
from gpusim.platform import Platform
from gpusim.specs import GpuSpec, ModelSpec
from gpusim.specs.enums import KernelKind
from gpusim.step.predict import StepPrediction, forward_kernels


def breakdown(pred: StepPrediction, gpu: GpuSpec, index: int = 0) -> list[dict[str, object]]:
    """Per-op rows for one shape: time, share, launches, bytes, bandwidth, bound."""
    peak_bw = gpu.hbm_bandwidth_bytes_per_s
    peak_flops = gpu.matmul_peak_flops_per_s(pred.dtype)
    step_s = float(pred.seconds[index])
    rows: list[dict[str, object]] = []
    launches = {k.name: 0 for k in pred.kernels}
    for k in pred.kernels:
        launches[k.name] += int(np.broadcast_to(k.shape_launches(), pred.seconds.shape)[index]
                                * k.repeat)
    # collectives (and a pipeline's sends, no kernel of their own) wait on the links
    kinds = {k.name: k.kind for k in pred.kernels}
    for name, c in pred.by_op.items():
        t = float(c.seconds[index])
        mem, comp, fixed = (float(c.memory_s[index]), float(c.compute_s[index]),
                            float(c.fixed_s[index]))
        if kinds.get(name, KernelKind.COLLECTIVE) == KernelKind.COLLECTIVE:
            bound = "link"
        elif fixed >= max(mem, comp):
            bound = "fixed"
        else:
            bound = "memory" if mem >= comp else "compute"
        rows.append({
            "op": name, "ms": t * 1e3, "share": t / step_s if step_s else 0.0,
            "launches": launches.get(name, 0), "bytes": float(c.bytes[index]),
            "flops": float(c.flops[index]),
            "bandwidth_gb_per_s": float(c.bytes[index]) / t / 1e9 if t else 0.0,
            "bandwidth_fraction": float(c.bytes[index]) / t / peak_bw if t else 0.0,
            "tflops": float(c.flops[index]) / t / 1e12 if t else 0.0,
            "roofline_ms": max(float(c.bytes[index]) / peak_bw,
                               float(c.flops[index]) / peak_flops) * 1e3,
            "bound": bound,
        })
    return rows


def summary(pred: StepPrediction, gpu: GpuSpec, index: int = 0) -> dict[str, object]:
    """Whole-step figures for one shape: time, roofline, achieved bandwidth, bound."""
    peak_bw = gpu.hbm_bandwidth_bytes_per_s
    peak_flops = gpu.matmul_peak_flops_per_s(pred.dtype)
    t = float(pred.seconds[index])
    total_bytes = float(pred.total.bytes[index])
    flops = float(pred.total.flops[index])
    mem_roof, comp_roof = total_bytes / peak_bw, flops / peak_flops
    roof = max(mem_roof, comp_roof)
    if bool(pred.host_bound[index]):
        bound = "launch"
    else:
        bound = "memory" if mem_roof >= comp_roof else "compute"
    return {
        "step_ms": t * 1e3,
        "gpu_ms": float(pred.gpu_s[index]) * 1e3,
        "host_ms": float(pred.host_s[index]) * 1e3,
        "launches": int(pred.shape_launches[index]),
        "weight_bytes": float(np.broadcast_to(pred.weight_bytes, pred.seconds.shape)[index]),
        "kv_bytes": float(np.broadcast_to(pred.kv_bytes, pred.seconds.shape)[index]),
        "bytes": total_bytes,
        "flops": flops,
        "fixed_ms": float(pred.total.fixed_s[index]) * 1e3,
        "achieved_bandwidth_gb_per_s": total_bytes / t / 1e9 if t else 0.0,
        "achieved_tflops": flops / t / 1e12 if t else 0.0,
        "roofline_ms": roof * 1e3,
        "roofline_fraction": roof / t if t else 0.0,
        "bound": bound,
    }


@dataclass(frozen=True)
class OpCost:
    """One op of a step as the layers above ``step`` see it: what it is and what it
    costs (per step, all its repeats included), arrays over step shapes."""

    name: str
    kind: str           # gemm | attention | elementwise | embedding
    launches: int       # kernel launches per occurrence (where it launches at all)
    repeat: int         # occurrences per step (layers)
    seconds: np.ndarray
    bytes: np.ndarray
    fixed_s: np.ndarray


def op_costs(platform: Platform, model: ModelSpec, mode: str, batch: object, ctx: object,
             q: object) -> list[OpCost]:
    """Per-op GPU cost of a step for arrays of (batch, ctx, q), in launch order.

    For simulators built on ``step`` (serving) that need a step split by op kind without
    handling kernels. Raises ValueError for an impossible shape.
    """
    out = []
    kernels = forward_kernels(model, platform, mode, batch, ctx, q)
    costs = step_costs(kernels, platform.gpu, platform.calibration)
    for k, cost in zip(kernels, costs, strict=True):
        c = cost.scaled(k.repeat)
        out.append(OpCost(name=k.name, kind=k.kind, launches=k.launches, repeat=k.repeat,
                          seconds=c.seconds, bytes=c.bytes, fixed_s=c.fixed_s))
    return out
