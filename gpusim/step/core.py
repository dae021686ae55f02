"""Predict one forward step (decode, verify, prefill) and say where the time goes.

Two ways to the same number:

* ``predict``: closed form, vectorised over many shapes (the fast path). Under a CUDA
  graph the step is the graph launch plus the sum of kernel times. In eager mode the
  host issues kernels one by one; kernel i ends at E_i = max(I_i, E_{i-1}) + d_i with
  issue time I_i = i*h, so the step ends at max_j (I_j + sum_{i>=j} d_i). Within an op
  of identical launches and across identical layers that expression is linear in the
  index, so only the first and last launch of each op in the first and last layer
  are candidates for the max.
* ``simulate``: the SimPy engine, launch by launch, with a timeline. Tests check the
  two agree.

Layers built on ``step`` (speculative decoding, serving) reach kernels, their costs and
the engine only through this module: ``forward_kernels`` (a forward pass's kernels, to
which a caller may add its own ``Kernel`` records), ``predict_kernels`` and
``kernels_cost`` (closed form) and ``simulate_steps`` (a host program of several
steps through the engine). ``Kernel`` and ``GemmShape`` (ops' records) are shared
vocabulary: a layer above may describe extra work with them, never build a forward
pass, cost a kernel or drive the engine itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from gpusim.cost import Calibration, Cost, kernel_cost, power_clock, step_cost, step_costs
from gpusim.engine import HostStep, Launch, Timeline, simulate_program, simulate_stream
from gpusim.kernels import GemmShape, Kernel, build_kernels, kernel_launches
from gpusim.specs import GpuSpec, ModelSpec, StackSpec

__all__ = ["Cost", "GemmShape", "Kernel", "ProgramStep", "StepPrediction", "Timeline",
           "forward_kernels", "kernels_cost", "predict", "predict_kernels", "program_clock",
           "program_costs",
           "simulate", "simulate_steps"]

LaunchMode = Literal["graph", "eager"]
LAUNCH_MODES: tuple[str, ...] = ("graph", "eager")


@dataclass(frozen=True)
class StepPrediction:
    """A step's predicted time (arrays over shapes) and its parts.

    ``seconds``: end-to-end step time; ``gpu_s``: sum of kernel times; ``host_bound``:
    whether host launches, not the GPU, set the pace (eager only).
    """

    seconds: np.ndarray
    gpu_s: np.ndarray
    host_s: np.ndarray
    host_bound: np.ndarray
    total: Cost
    by_op: dict[str, Cost]
    kernels: list[Kernel]
    launches: int

    @property
    def weight_bytes(self) -> np.ndarray:
        return sum((k.weight_bytes * k.repeat for k in self.kernels), np.zeros(1))

    @property
    def kv_bytes(self) -> np.ndarray:
        return sum((k.kv_bytes * k.repeat for k in self.kernels), np.zeros(1))


def _check_launch(launch: str) -> None:
    if launch not in LAUNCH_MODES:
        raise ValueError(f"launch={launch!r} must be one of {', '.join(LAUNCH_MODES)}")


def _eager_end(kernels: list[Kernel], costs: list[Cost], model_layers: int,
               host_s: float) -> np.ndarray:
    """max_j (j*h + suffix work from launch j): the eager step's end time."""
    n = len(costs[0].seconds)
    # per-launch GPU time of each op, and its launches, in step order
    per_launch = [c.seconds / max(k.launches, 1) for k, c in zip(kernels, costs, strict=True)]
    layer_ops = [i for i, k in enumerate(kernels) if k.section == "layer"]
    layer_launches = sum(kernels[i].launches for i in layer_ops)
    layer_time = sum((costs[i].seconds for i in layer_ops), np.zeros(n))
    total_gpu = sum((c.seconds * k.repeat for k, c in zip(kernels, costs, strict=True)),
                    np.zeros(n))
    best = np.full(n, -np.inf)
    issued = 0          # launches issued before the current op (first layer)
    done_before = np.zeros(n)  # GPU work of launches before the current op
    for i, (k, c) in enumerate(zip(kernels, costs, strict=True)):
        if k.launches == 0:
            continue
        for j in (1, k.launches):
            before = done_before + per_launch[i] * (j - 1)
            cand = (issued + j) * host_s + (total_gpu - before)
            best = np.maximum(best, cand)
            if k.section == "layer" and model_layers > 1:
                shift = (model_layers - 1) * (layer_launches * host_s - layer_time)
                best = np.maximum(best, cand + shift)
        if k.section == "layer":
            issued += k.launches
            done_before = done_before + c.seconds
        else:
            reps = k.repeat
            issued += k.launches * reps
            done_before = done_before + c.seconds * reps
        if layer_ops and i == layer_ops[-1]:
            # the remaining layers come before the epilogue
            issued += layer_launches * (model_layers - 1)
            done_before = done_before + layer_time * (model_layers - 1)
    return np.where(np.isfinite(best), best, 0.0)


def predict_kernels(kernels: list[Kernel], model: ModelSpec, gpu: GpuSpec,
                    cal: Calibration, launch: str = "graph",
                    clock: np.ndarray | None = None,
                    full_clock: Sequence[Cost] | None = None) -> StepPrediction:
    """Closed-form step time from an already-built kernel list, at the step's own
    power-capped clock or at ``clock`` (per shape: the clock of a loop it runs in);
    ``full_clock``: the kernels' costs at full clock if already known (``program_costs``)."""
    _check_launch(launch)
    costs = step_costs(kernels, gpu, cal, clock, full_clock)
    n = len(kernels[0].flops)
    total = Cost.zero(n)
    by_op: dict[str, Cost] = {}
    for k, c in zip(kernels, costs, strict=True):
        part = c.scaled(k.repeat)
        total = total + part
        by_op[k.name] = by_op[k.name] + part if k.name in by_op else part
    gpu_s = total.seconds
    launches = kernel_launches(kernels)
    if launch == "graph":
        host = np.full(n, cal.host.host_graph_launch_cost_s)
        seconds = host + gpu_s
        host_bound = np.zeros(n, dtype=bool)
    else:
        host = np.full(n, launches * cal.host.host_launch_cost_s)
        seconds = _eager_end(kernels, costs, model.num_hidden_layers, cal.host.host_launch_cost_s)
        host_bound = seconds > gpu_s + cal.host.host_launch_cost_s + 1e-15
    return StepPrediction(seconds=seconds, gpu_s=gpu_s, host_s=host, host_bound=host_bound,
                          total=total, by_op=by_op, kernels=kernels, launches=launches)


def predict(gpu: GpuSpec, model: ModelSpec, stack: StackSpec, cal: Calibration, mode: str,
            batch: object, ctx: object, q: object, launch: str = "graph") -> StepPrediction:
    """Fast path: predicted step times for arrays of (batch, ctx, q).

    Raises ValueError for an impossible shape or unknown mode/launch.
    """
    kernels = build_kernels(model, stack, mode, batch, ctx, q)
    return predict_kernels(kernels, model, gpu, cal, launch)


def expand_launches(kernels: list[Kernel], costs: list[Cost], layers: int,
                    index: int = 0) -> list[Launch]:
    """Every kernel launch of one step (shape ``index``), in the order issued."""
    out: list[Launch] = []

    def emit(k: Kernel, c: Cost, layer: int) -> None:
        nl = max(k.launches, 1)
        for _ in range(k.launches):
            out.append(Launch(
                name=k.name, kind=k.kind, section=k.section, layer=layer,
                gpu_s=float(c.seconds[index]) / nl, memory_s=float(c.memory_s[index]) / nl,
                compute_s=float(c.compute_s[index]) / nl, bytes=float(c.bytes[index]) / nl,
                flops=float(c.flops[index]) / nl))

    pairs = list(zip(kernels, costs, strict=True))
    for k, c in pairs:
        if k.section == "prologue":
            emit(k, c, -1)
    for layer in range(layers):
        for k, c in pairs:
            if k.section == "layer":
                emit(k, c, layer)
    for k, c in pairs:
        if k.section == "epilogue":
            emit(k, c, -1)
    return out


def simulate(gpu: GpuSpec, model: ModelSpec, stack: StackSpec, cal: Calibration, mode: str,
             batch: int, ctx: int, q: int, launch: str = "graph",
             record: bool = True) -> Timeline:
    """Event simulation of one step shape; returns its Timeline (end_s = step time)."""
    _check_launch(launch)
    kernels = build_kernels(model, stack, mode, batch, ctx, q)
    costs = step_costs(kernels, gpu, cal)
    launches = expand_launches(kernels, costs, model.num_hidden_layers)
    return simulate_stream(
        launches, host_launch_s=cal.host.host_launch_cost_s,
        graph_launch_s=cal.host.host_graph_launch_cost_s, graph=launch == "graph",
        sram_bytes=gpu.l2_bytes + gpu.sram_per_sm_bytes * gpu.sm_count, record=record)


def forward_kernels(model: ModelSpec, stack: StackSpec, mode: str, batch: object, ctx: object,
                    q: object) -> list[Kernel]:
    """The kernels of one forward pass for arrays of (batch, ctx, q), in launch order
    (``mode``: decode, verify, prefill or ``TREE_MODE``, a verify under a token-tree
    mask). Raises ValueError for an impossible shape or an unknown mode."""
    return build_kernels(model, stack, mode, batch, ctx, q)


def kernels_cost(kernels: Sequence[Kernel], gpu: GpuSpec, cal: Calibration,
                 clock: np.ndarray | None = None) -> Cost:
    """GPU-side cost of a kernel list (each op times its repeat), arrays over shapes,
    at their own power-capped clock or at ``clock``."""
    return step_cost(list(kernels), gpu, cal, clock)


def program_costs(kernel_lists: Sequence[Sequence[Kernel]], gpu: GpuSpec,
                  cal: Calibration) -> tuple[np.ndarray, list[list[Cost]]]:
    """(SM clock, each list's kernel costs at full clock) of several kernel lists run
    back to back in a loop: the power cap acts on their average (``cost.power_clock``
    over all of them), not on each list's own. The costs let the caller price each
    list at that clock without costing its kernels again (``step_costs``)."""
    full = [[kernel_cost(k, gpu, cal) for k in ks] for ks in kernel_lists]
    kernels = [k for ks in kernel_lists for k in ks]
    clock = power_clock(kernels, [c for cs in full for c in cs], cal)
    return (np.ones(len(kernels[0].flops)) if clock is None else clock), full


def program_clock(kernel_lists: Sequence[Sequence[Kernel]], gpu: GpuSpec,
                  cal: Calibration) -> np.ndarray:
    """The SM clock (fraction of full, per shape) of several kernel lists run back to
    back in a loop (``program_costs``)."""
    return program_costs(kernel_lists, gpu, cal)[0]


@dataclass(frozen=True)
class ProgramStep:
    """One launch unit of a host program of steps (see ``simulate_steps``): ``kernels``
    of a forward pass of ``model`` (plus any added kernels), host work before it, and
    optionally a wait for the GPU and host work after it."""

    name: str
    model: ModelSpec
    kernels: list[Kernel]
    host_before_s: float = 0.0
    sync_after: bool = False
    host_after_s: float = 0.0


def simulate_steps(steps: Sequence[ProgramStep], gpu: GpuSpec, cal: Calibration,
                   launch: str = "graph", index: int = 0, record: bool = True) -> Timeline:
    """Several steps issued by one host thread through the SimPy engine (shape
    ``index``), all at the program's power-capped clock (``program_clock``: the program
    is what runs back to back); kernel names carry their step (``draft0/qkv_proj``).

    Raises ValueError for an unknown launch mode or a negative cost.
    """
    _check_launch(launch)
    clock, full = program_costs([st.kernels for st in steps], gpu, cal)
    program = []
    for st, full_clock in zip(steps, full, strict=True):
        costs = step_costs(st.kernels, gpu, cal, clock, full_clock)
        launches = expand_launches(st.kernels, costs, st.model.num_hidden_layers, index)
        program.append(HostStep(
            name=st.name, launches=tuple(replace(la, name=f"{st.name}/{la.name}")
                                         for la in launches),
            graph=launch == "graph", host_before_s=st.host_before_s,
            sync_after=st.sync_after, host_after_s=st.host_after_s))
    return simulate_program(
        program, host_launch_s=cal.host.host_launch_cost_s,
        graph_launch_s=cal.host.host_graph_launch_cost_s,
        sram_bytes=gpu.l2_bytes + gpu.sram_per_sm_bytes * gpu.sm_count, record=record)


def breakdown(pred: StepPrediction, gpu: GpuSpec, index: int = 0) -> list[dict[str, object]]:
    """Per-op rows for one shape: time, share, launches, bytes, bandwidth, bound."""
    peak_bw = gpu.hbm_bandwidth_bytes_per_s
    peak_flops = gpu.tensor_peak_flops_per_s("bf16")
    step_s = float(pred.seconds[index])
    rows: list[dict[str, object]] = []
    launches = {k.name: 0 for k in pred.kernels}
    for k in pred.kernels:
        launches[k.name] += k.launches * k.repeat
    for name, c in pred.by_op.items():
        t = float(c.seconds[index])
        mem, comp, fixed = (float(c.memory_s[index]), float(c.compute_s[index]),
                            float(c.fixed_s[index]))
        if fixed >= max(mem, comp):
            bound = "fixed"
        else:
            bound = "memory" if mem >= comp else "compute"
        rows.append({
            "op": name, "ms": t * 1e3, "share": t / step_s if step_s else 0.0,
            "launches": launches[name], "bytes": float(c.bytes[index]),
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
    peak_flops = gpu.tensor_peak_flops_per_s("bf16")
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
        "launches": pred.launches,
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
    launches: int       # kernel launches per occurrence
    repeat: int         # occurrences per step (layers)
    seconds: np.ndarray
    bytes: np.ndarray
    fixed_s: np.ndarray


def op_costs(gpu: GpuSpec, model: ModelSpec, stack: StackSpec, cal: Calibration, mode: str,
             batch: object, ctx: object, q: object) -> list[OpCost]:
    """Per-op GPU cost of a step for arrays of (batch, ctx, q), in launch order.

    For simulators built on ``step`` (serving) that need a step split by op kind without
    handling kernels. Raises ValueError for an impossible shape.
    """
    out = []
    kernels = build_kernels(model, stack, mode, batch, ctx, q)
    for k, cost in zip(kernels, step_costs(kernels, gpu, cal), strict=True):
        c = cost.scaled(k.repeat)
        out.append(OpCost(name=k.name, kind=k.kind, launches=k.launches, repeat=k.repeat,
                          seconds=c.seconds, bytes=c.bytes, fixed_s=c.fixed_s))
    return out
