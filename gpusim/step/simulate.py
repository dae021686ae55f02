"""A step, or a host program of steps, through the SimPy engine, launch by launch,
with a timeline (host launches, SMs, HBM). Gives ``step.predict``'s times (tests check
they agree) and shows where each kernel ran."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from gpusim.cost import Cost, step_costs
from gpusim.engine import HostStep, Launch, Timeline, simulate_program, simulate_stream
from gpusim.kernels import Kernel, build_kernels
from gpusim.platform import Platform
from gpusim.specs import ModelSpec
from gpusim.step.predict import program_costs, rank_kernels


def expand_launches(kernels: list[Kernel], costs: list[Cost], layers: int,
                    index: int = 0) -> list[Launch]:
    """Every kernel launch of one step (shape ``index``), in the order issued."""
    out: list[Launch] = []

    def emit(k: Kernel, c: Cost, layer: int) -> None:
        nl = max(k.launches, 1)
        if k.launched is not None and not k.launched[index]:
            return   # not launched at this shape (Kernel.launched)
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


def simulate(platform: Platform, model: ModelSpec, mode: str, batch: int, ctx: int,
             q: int, record: bool = True, cache_len: int | None = None) -> Timeline:
    """Event simulation of one step shape on ``platform``; returns its Timeline
    (``end_s`` = step time; a pipelined layout's stages through ``step.pipeline``;
    ``cache_len``: positions each KV cache holds, default ctx + q).
    Raises ValueError for an impossible shape or a layout the model does not allow."""
    if platform.layout.pp > 1:
        from gpusim.step.pipeline import simulate_pipeline  # built on this module

        return simulate_pipeline(platform, model, mode, batch, ctx, q, record, cache_len)
    gpu, cal = platform.gpu, platform.calibration
    kernels = rank_kernels(build_kernels(model, platform.stack, mode, batch, ctx, q,
                                         cache_len), model, platform)
    costs = step_costs(kernels, gpu, cal)
    launches = expand_launches(kernels, costs, model.num_hidden_layers)
    return simulate_stream(
        launches, host_launch_s=cal.host.host_launch_cost_s,
        graph_launch_s=cal.host.host_graph_launch_cost_s, graph=platform.graph,
        sram_bytes=platform.sram_bytes, record=record)


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


def simulate_steps(steps: Sequence[ProgramStep], platform: Platform, index: int = 0,
                   record: bool = True) -> Timeline:
    """Several steps issued by one host thread through the SimPy engine (shape
    ``index``), all at the program's power-capped clock (``program_costs``: the program
    is what runs back to back); kernel names carry their step (``draft0/qkv_proj``).

    Raises ValueError for a negative cost.
    """
    gpu, cal = platform.gpu, platform.calibration
    clock, full = program_costs([st.kernels for st in steps], platform)
    program = []
    for st, full_clock in zip(steps, full, strict=True):
        costs = step_costs(st.kernels, gpu, cal, clock, full_clock)
        launches = expand_launches(st.kernels, costs, st.model.num_hidden_layers, index)
        program.append(HostStep(
            name=st.name, launches=tuple(replace(la, name=f"{st.name}/{la.name}")
                                         for la in launches),
            graph=platform.graph, host_before_s=st.host_before_s,
            sync_after=st.sync_after, host_after_s=st.host_after_s))
    return simulate_program(
        program, host_launch_s=cal.host.host_launch_cost_s,
        graph_launch_s=cal.host.host_graph_launch_cost_s, sram_bytes=platform.sram_bytes,
        record=record)
