"""Kernel by kernel inside CUDA-graph replays: each kernel's GPU duration and the idle
gap before it, as CUPTI reports the kernels of a replayed graph one by one.

An eager profile (bench_steps.profile_kernels) times kernels launched one at a time
from the host; the judged steps are graph replays, whose small kernels run ~0.1-0.2 us
shorter each (validation/data/h100-sxm/graph_kernels.csv.gz against kernels.csv) and
whose gaps only a replay shows. graph_gaps.py (the reference forward) and bench_stacks.py
(``--only graph_profile``, any measured stack) write these rows.

Taken under the profiler, the gaps hold CUPTI's overhead (~0.45 us a kernel on H100,
against the ~0.2 us of an unprofiled replay); the durations do not.

Imports torch only inside ``profile_replays`` (the splitting is testable without it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

# graph_kernels.csv: one row per kernel of each profiled replay, in launch order
GRAPH_KERNELS_COLUMNS = ["model", "mode", "batch", "ctx", "q", "replay", "index",
                         "kernel_name", "duration_us", "gap_before_us"]


@dataclass(frozen=True)
class Span:
    """One device activity: its name and start/end in microseconds."""

    name: str
    start_us: float
    end_us: float


def split_replays(spans: Sequence[Span], replays: int) -> list[list[dict[str, object]]]:
    """The device activities of ``replays`` back-to-back replays of one graph, in time
    order, as per-replay rows (index, kernel_name, duration_us, gap_before_us; the first
    kernel of a replay has no gap, the host sync before it is not the graph's).

    Raises ValueError when the activities do not divide evenly into ``replays`` (a
    replay lost or gained a kernel: its rows would be misattributed)."""
    if replays < 1:
        raise ValueError(f"replays must be >= 1, got {replays}")
    ordered = sorted(spans, key=lambda s: s.start_us)
    if not ordered or len(ordered) % replays:
        raise ValueError(f"{len(ordered)} device activities do not split into {replays} "
                         "replays of one graph")
    n = len(ordered) // replays
    out = []
    for r in range(replays):
        rows: list[dict[str, object]] = []
        prev_end = None
        for i, s in enumerate(ordered[r * n:(r + 1) * n]):
            gap = "" if prev_end is None else f"{s.start_us - prev_end:.3f}"
            rows.append({"replay": r, "index": i, "kernel_name": s.name,
                         "duration_us": f"{s.end_us - s.start_us:.3f}",
                         "gap_before_us": gap})
            prev_end = s.end_us
        out.append(rows)
    return out


def profile_replays(replay: Callable[[], object], replays: int, warm: int = 3
                    ) -> list[list[dict[str, object]]]:
    """``warm`` unprofiled calls of ``replay`` (a captured graph's replay), then
    ``replays`` calls under torch.profiler, each followed by a synchronize; their
    kernels, memsets and copies split per replay (``split_replays``). Needs CUDA."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warm):
        replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            replay()
            torch.cuda.synchronize()
    spans = [Span(e.name, e.time_range.start, e.time_range.end) for e in prof.events()
             if e.device_type == DeviceType.CUDA and " Sync" not in e.name]
    return split_replays(spans, replays)
