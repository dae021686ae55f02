"""The SimPy world of one GPU, or of a pipeline of GPUs: a host thread launching
kernels into a stream.

The host spends ``host_launch_s`` per kernel (eager PyTorch) or ``graph_launch_s`` once
(a CUDA graph replay) and puts kernels into the stream; the GPU runs them in order.
Each kernel holds the SMs for its duration, the HBM for its memory phase and stages
its working set in on-chip SRAM, so the timeline shows weight streaming, KV reads and
math layer by layer. A pipeline (``simulate_pipeline``) runs one such world per stage's
GPU in one environment, micro-batches flowing from stage to stage over the links
between them (each link a resource: one transfer at a time). This is the only module
that imports SimPy.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

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
    """What ran when: resource is ``host``, ``sm``, ``hbm`` or ``link`` (a pipeline's
    send from ``gpu`` to the next stage); ``gpu``: the stage's GPU (0 for one GPU)."""

    resource: str
    name: str
    layer: int
    start_s: float
    end_s: float
    bytes: float = 0.0
    flops: float = 0.0
    gpu: int = 0


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
    return ProgramRunner(program, host_launch_s=host_launch_s,
                         graph_launch_s=graph_launch_s, sram_bytes=sram_bytes,
                         record=record).run()


class ProgramRunner:
    """One run of a host program: the SimPy world (a stream, the SMs, the HBM, the
    on-chip SRAM), a host process filling the stream, a GPU process draining it, and
    what they share: the kernels done so far and the host's pending sync.

    Built once per run; ``run()`` simulates and returns the Timeline (also kept as
    ``timeline``). The constructor raises ValueError for a negative cost (the field
    and value named) or an empty SRAM.
    """

    def __init__(self, program: Sequence[HostStep], *, host_launch_s: float,
                 graph_launch_s: float, sram_bytes: float, record: bool = True,
                 env: simpy.Environment | None = None, timeline: Timeline | None = None,
                 gpu: int = 0) -> None:
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
        self.program = tuple(program)
        self.host_launch_s = host_launch_s
        self.graph_launch_s = graph_launch_s
        self.sram_bytes = sram_bytes
        self.record = record
        # a pipeline's stages share one environment and timeline (``PipelineRunner``)
        self.env = simpy.Environment() if env is None else env
        self.gpu_index = gpu
        self.stream = simpy.Store(self.env)
        self.sms = simpy.Resource(self.env, capacity=1)
        self.hbm = simpy.Resource(self.env, capacity=1)
        self.sram = simpy.Container(self.env, capacity=sram_bytes, init=0)
        self.timeline = Timeline() if timeline is None else timeline
        self.kernels_done = 0
        # the host waits for at most one sync at a time: (kernels issued, its event)
        self._sync: tuple[int, simpy.Event] | None = None
        self._ran = False

    def run(self) -> Timeline:
        """Simulate until both the host and the GPU are done; returns the Timeline.
        Raises RuntimeError when called a second time (the world is spent)."""
        env = self.env
        env.run(until=env.all_of(self.start()))
        self.timeline.end_s = float(env.now)
        return self.timeline

    def start(self) -> list[simpy.Process]:
        """Start the host and GPU processes in the environment (``run`` runs it;
        a pipeline runs several runners' processes together). Raises RuntimeError when
        called a second time (the world is spent)."""
        if self._ran:
            raise RuntimeError("a ProgramRunner runs once")
        self._ran = True
        return [self.env.process(self.host()), self.env.process(self.gpu())]

    def _interval(self, resource: str, name: str, layer: int, t0: float,
                  nbytes: float = 0.0, flops: float = 0.0) -> None:
        """Record ``name`` busy on ``resource`` from ``t0`` to now (when recording)."""
        if self.record:
            self.timeline.intervals.append(Interval(resource, name, layer, t0, self.env.now,
                                                    bytes=nbytes, flops=flops,
                                                    gpu=self.gpu_index))

    # --- the host thread -------------------------------------------------------------
    def host(self) -> Generator[simpy.Event, Any, None]:
        """The host process: each step's host work, launches and sync, in order."""
        issued = 0
        for hs in self.program:
            yield from self._host_work(f"{hs.name}:host", hs.host_before_s)
            yield from self._launch(hs)
            issued += len(hs.launches)
            if hs.sync_after:
                yield from self._wait_for_gpu(hs.name, issued)
                yield from self._host_work(f"{hs.name}:host", hs.host_after_s)

    def _host_work(self, label: str, seconds: float) -> Generator[simpy.Event, Any, None]:
        """``seconds`` of host work, recorded as ``label`` (nothing when 0)."""
        if seconds > 0:
            t0 = self.env.now
            yield self.env.timeout(seconds)
            self._interval("host", label, -1, t0)

    def _launch(self, hs: HostStep) -> Generator[simpy.Event, Any, None]:
        """Put ``hs``'s kernels into the stream: one graph replay, or one by one."""
        env, stream = self.env, self.stream
        if hs.graph:
            t0 = env.now
            yield env.timeout(self.graph_launch_s)
            self._interval("host", hs.name, -1, t0)
            for la in hs.launches:
                yield stream.put(la)
            return
        for la in hs.launches:
            t0 = env.now
            yield env.timeout(self.host_launch_s)
            self._interval("host", la.name, la.layer, t0)
            yield stream.put(la)

    def _wait_for_gpu(self, name: str, issued: int) -> Generator[simpy.Event, Any, None]:
        """Block the host until the GPU has finished the first ``issued`` kernels."""
        if self.kernels_done >= issued:
            return
        t0 = self.env.now
        ev = self.env.event()
        self._sync = (issued, ev)
        yield ev
        self._interval("host", f"{name}:sync", -1, t0)

    # --- the GPU ---------------------------------------------------------------------
    def gpu(self) -> Generator[simpy.Event, Any, None]:
        """The GPU process: run every kernel of the program in stream order."""
        for _ in range(sum(len(hs.launches) for hs in self.program)):
            la = yield self.stream.get()
            yield from self._kernel(la)
            self.kernels_done += 1
            if self._sync is not None and self.kernels_done >= self._sync[0]:
                self._sync[1].succeed()
                self._sync = None

    def _kernel(self, la: Launch) -> Generator[simpy.Event, Any, None]:
        """One kernel: hold the SMs for ``gpu_s`` with its working set staged in SRAM,
        its memory phase on the HBM alongside."""
        env, sram = self.env, self.sram
        staged = min(la.bytes, self.sram_bytes)
        with self.sms.request() as req:
            yield req
            if staged > 0:
                yield sram.put(staged)
            tl = self.timeline
            tl.sram_peak_bytes = max(tl.sram_peak_bytes, sram.level)
            t0 = env.now
            mem = env.process(self.memory_phase(la, min(la.memory_s, la.gpu_s)))
            yield env.timeout(la.gpu_s)
            yield mem
            if staged > 0:
                yield sram.get(staged)
            self._interval("sm", la.name, la.layer, t0, la.bytes, la.flops)

    def memory_phase(self, la: Launch, span_s: float) -> Generator[simpy.Event, Any, None]:
        """``la``'s HBM traffic: holds the HBM for ``span_s``."""
        with self.hbm.request() as req:
            yield req
            t0 = self.env.now
            yield self.env.timeout(span_s)
            self._interval("hbm", la.name, la.layer, t0, la.bytes)


# ----------------------------------------------------------------------------------
# Pipelines: one GPU world per stage, micro-batches sent from stage to stage over links
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stage:
    """One pipeline stage: the host program of one micro-batch on its GPU (one
    ``HostStep``: host work, a graph replay or eager launches) and the seconds its
    output takes over the link to the next stage (ignored on the last)."""

    step: HostStep
    send_s: float = 0.0


class _StageRunner(ProgramRunner):
    """A stage's GPU world: its host waits for each micro-batch's input, launches it,
    waits for its GPU to finish it, and hands it on (``done``)."""

    def __init__(self, program: Sequence[HostStep], inputs: list[simpy.Event],
                 done: list[simpy.Event], **kwargs: Any) -> None:
        super().__init__(program, **kwargs)
        self.inputs, self.done = inputs, done

    def host(self) -> Generator[simpy.Event, Any, None]:
        issued = 0
        for j, hs in enumerate(self.program):
            yield self.inputs[j]
            yield from self._host_work(f"{hs.name}:host", hs.host_before_s)
            yield from self._launch(hs)
            issued += len(hs.launches)
            yield from self._wait_for_gpu(hs.name, issued)
            self.done[j].succeed()


class PipelineRunner:
    """One run of a pipeline: ``stages`` GPUs in one environment, ``micro_batches``
    micro-batches entering the first stage at time 0, each stage taking micro-batches
    in order (one at a time: its host waits for its GPU), each stage's output crossing
    the link to the next (a resource: one transfer at a time, in order). The timeline's
    intervals carry their stage's GPU; ``end_s`` is when the last micro-batch leaves
    the last stage. The constructor raises ValueError for a negative cost, an empty
    SRAM or fewer than one micro-batch."""

    def __init__(self, stages: Sequence[Stage], micro_batches: int, *, host_launch_s: float,
                 graph_launch_s: float, sram_bytes: float, record: bool = True) -> None:
        if not stages:
            raise ValueError("a pipeline needs at least one stage")
        if not isinstance(micro_batches, int) or micro_batches < 1:
            raise ValueError(f"micro_batches(={micro_batches}) must be an integer >= 1")
        for i, st in enumerate(stages):
            _check(f"stage{i}.send_s", st.send_s)
        self.env = env = simpy.Environment()
        self.timeline = Timeline()
        self.record = record
        n, m = len(stages), micro_batches
        self.inputs = [[env.event() for _ in range(m)] for _ in range(n)]
        self.done = [[env.event() for _ in range(m)] for _ in range(n)]
        for ev in self.inputs[0]:
            ev.succeed()
        self.links = [simpy.Resource(env, capacity=1) for _ in range(n - 1)]
        self.sends = [st.send_s for st in stages]
        self.runners = [
            _StageRunner([HostStep(name=f"stage{i}/mb{j}", launches=st.step.launches,
                                   graph=st.step.graph, host_before_s=st.step.host_before_s)
                          for j in range(m)],
                         self.inputs[i], self.done[i], host_launch_s=host_launch_s,
                         graph_launch_s=graph_launch_s, sram_bytes=sram_bytes,
                         record=record, env=env, timeline=self.timeline, gpu=i)
            for i, st in enumerate(stages)]
        self._ran = False

    def run(self) -> Timeline:
        """Simulate until the last micro-batch leaves the last stage; returns the
        Timeline. Raises RuntimeError when called a second time."""
        if self._ran:
            raise RuntimeError("a PipelineRunner runs once")
        self._ran = True
        env = self.env
        procs = [p for r in self.runners for p in r.start()]
        for i in range(len(self.runners) - 1):
            for j in range(len(self.done[i])):
                procs.append(env.process(self._send(i, j)))
        env.run(until=env.all_of(procs))
        self.timeline.end_s = float(env.now)
        return self.timeline

    def _send(self, stage: int, mb: int) -> Generator[simpy.Event, Any, None]:
        """Micro-batch ``mb``'s output of ``stage`` over the link to the next stage."""
        yield self.done[stage][mb]
        with self.links[stage].request() as req:
            yield req
            t0 = self.env.now
            yield self.env.timeout(self.sends[stage])
            if self.record:
                self.timeline.intervals.append(Interval(
                    "link", f"stage{stage}/mb{mb}:send", -1, t0, self.env.now, gpu=stage))
        self.inputs[stage + 1][mb].succeed()


def simulate_pipeline(stages: Sequence[Stage], micro_batches: int, *, host_launch_s: float,
                      graph_launch_s: float, sram_bytes: float,
                      record: bool = True) -> Timeline:
    """Run ``micro_batches`` micro-batches through a pipeline of ``stages``
    (``PipelineRunner``); returns the Timeline. Raises ValueError as it does."""
    return PipelineRunner(stages, micro_batches, host_launch_s=host_launch_s,
                          graph_launch_s=graph_launch_s, sram_bytes=sram_bytes,
                          record=record).run()
