"""The SimPy world of one GPU: a host thread launching kernels into a stream.

The host spends ``host_launch_s`` per kernel (eager PyTorch) or ``graph_launch_s`` once
(a CUDA graph replay) and puts kernels into the stream; the GPU runs them in order.
Each kernel holds the SMs for its duration, the HBM for its memory phase and stages
its working set in on-chip SRAM, so the timeline shows weight streaming, KV reads and
math layer by layer. This is the only module that imports SimPy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import simpy


@dataclass(frozen=True)
class Launch:
    """One kernel launch as the engine sees it (durations already costed)."""

    name: str
    kind: str
    section: str
    layer: int
    gpu_s: float
    memory_s: float
    compute_s: float
    bytes: float
    flops: float


@dataclass(frozen=True)
class Interval:
    """What ran when: resource is ``host``, ``sm`` or ``hbm``."""

    resource: str
    name: str
    layer: int
    start_s: float
    end_s: float
    bytes: float = 0.0
    flops: float = 0.0


@dataclass
class Timeline:
    """The simulated step: its end time and every busy interval."""

    end_s: float = 0.0
    intervals: list[Interval] = field(default_factory=list)
    sram_peak_bytes: float = 0.0


def _check(name: str, value: float) -> None:
    if not value >= 0.0:  # also rejects NaN
        raise ValueError(f"{name}(={value}) must be >= 0")


def simulate_stream(launches: Sequence[Launch], *, host_launch_s: float,
                    graph_launch_s: float, graph: bool, sram_bytes: float,
                    record: bool = True) -> Timeline:
    """Run the launches of one step through host -> stream -> GPU; returns the Timeline.

    One step is a one-step host program (``simulate_program``); its graph launch is
    the host interval named ``graph_launch``. Raises ValueError for a negative cost or
    an empty SRAM.
    """
    step = HostStep(name="graph_launch", launches=tuple(launches), graph=graph)
    return simulate_program([step], host_launch_s=host_launch_s,
                            graph_launch_s=graph_launch_s, sram_bytes=sram_bytes,
                            record=record)


# ----------------------------------------------------------------------------------
# Programs: several steps from one host thread, with host work and syncs between them
# (a single step is the one-step program: simulate_stream above)
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class HostStep:
    """One unit of a host program: optional host work, then launch ``launches`` (one
    graph replay, or kernel by kernel), then optionally wait for the GPU to finish
    everything issued so far and do ``host_after_s`` of host work."""

    name: str
    launches: tuple[Launch, ...]
    graph: bool = True
    host_before_s: float = 0.0
    sync_after: bool = False
    host_after_s: float = 0.0


def simulate_program(program: Sequence[HostStep], *, host_launch_s: float,
                     graph_launch_s: float, sram_bytes: float,
                     record: bool = True) -> Timeline:
    """Run a host program through host -> stream -> GPU; returns the Timeline whose
    ``end_s`` is when both the host and the GPU are done.

    Host intervals are named ``<step>`` (graph launch), ``<step>/<kernel>`` (eager
    launch), ``<step>:host`` (host work) and ``<step>:sync`` (waiting for the GPU).
    Raises ValueError for a negative cost or an empty SRAM.
    """
    _check("host_launch_s", host_launch_s)
    _check("graph_launch_s", graph_launch_s)
    if not sram_bytes > 0:
        raise ValueError(f"sram_bytes(={sram_bytes}) must be > 0")
    for hs in program:
        _check(f"{hs.name}.host_before_s", hs.host_before_s)
        _check(f"{hs.name}.host_after_s", hs.host_after_s)
        for la in hs.launches:
            _check(f"{la.name}.gpu_s", la.gpu_s)
            _check(f"{la.name}.memory_s", la.memory_s)
            _check(f"{la.name}.compute_s", la.compute_s)
    env = simpy.Environment()
    stream: simpy.Store = simpy.Store(env)
    sms = simpy.Resource(env, capacity=1)
    hbm = simpy.Resource(env, capacity=1)
    sram = simpy.Container(env, capacity=sram_bytes, init=0)
    tl = Timeline()
    total = sum(len(hs.launches) for hs in program)
    state = {"done": 0}
    waiters: list[tuple[int, simpy.Event]] = []
    host_done = env.event()
    gpu_done = env.event()

    def host_work(label: str, seconds: float):  # type: ignore[no-untyped-def]
        if seconds > 0:
            t0 = env.now
            yield env.timeout(seconds)
            if record:
                tl.intervals.append(Interval("host", label, -1, t0, env.now))

    def host():  # type: ignore[no-untyped-def]
        issued = 0
        for hs in program:
            yield from host_work(f"{hs.name}:host", hs.host_before_s)
            if hs.graph:
                t0 = env.now
                yield env.timeout(graph_launch_s)
                if record:
                    tl.intervals.append(Interval("host", hs.name, -1, t0, env.now))
                for la in hs.launches:
                    yield stream.put(la)
            else:
                for la in hs.launches:
                    t0 = env.now
                    yield env.timeout(host_launch_s)
                    if record:
                        tl.intervals.append(Interval("host", la.name, la.layer, t0, env.now))
                    yield stream.put(la)
            issued += len(hs.launches)
            if hs.sync_after:
                if state["done"] < issued:
                    t0 = env.now
                    ev = env.event()
                    waiters.append((issued, ev))
                    yield ev
                    if record:
                        tl.intervals.append(Interval("host", f"{hs.name}:sync", -1, t0,
                                                     env.now))
                yield from host_work(f"{hs.name}:host", hs.host_after_s)
        host_done.succeed()

    def memory_phase(la: Launch, span_s: float):  # type: ignore[no-untyped-def]
        with hbm.request() as req:
            yield req
            t0 = env.now
            yield env.timeout(span_s)
            if record:
                tl.intervals.append(Interval("hbm", la.name, la.layer, t0, env.now,
                                             bytes=la.bytes))

    def gpu():  # type: ignore[no-untyped-def]
        for _ in range(total):
            la = yield stream.get()
            staged = min(la.bytes, sram_bytes)
            with sms.request() as req:
                yield req
                if staged > 0:
                    yield sram.put(staged)
                tl.sram_peak_bytes = max(tl.sram_peak_bytes, sram.level)
                t0 = env.now
                mem = env.process(memory_phase(la, min(la.memory_s, la.gpu_s)))
                yield env.timeout(la.gpu_s)
                yield mem
                if staged > 0:
                    yield sram.get(staged)
                if record:
                    tl.intervals.append(Interval("sm", la.name, la.layer, t0, env.now,
                                                 bytes=la.bytes, flops=la.flops))
            state["done"] += 1
            for target, ev in list(waiters):
                if state["done"] >= target:
                    waiters.remove((target, ev))
                    ev.succeed()
        gpu_done.succeed()

    env.process(host())
    env.process(gpu())
    env.run(until=env.all_of([host_done, gpu_done]))
    tl.end_s = float(env.now)
    return tl
