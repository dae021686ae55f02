"""Timing primitives for the measurement harness (stdlib, numpy, torch only).

- ``Clock``: times one call with CUDA events (GPU) or ``time.perf_counter`` (CPU),
  synchronizing after each call.
- ``repeat``: warm-up calls, then adaptive repeats (``Policy``), returning seconds.
- ``capture``: a CUDA graph of a callable, warmed up on a side stream first as the
  PyTorch CUDA-graph docs show.
- ``Budget``: the wall-clock budget of a campaign.
- ``CsvSink``: append-mode CSV, header written once, flushed after every row so that a
  killed campaign leaves valid partial data.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
ROTATE_FACTOR = 2.5  # rotated footprint >= this x L2, so every kernel streams HBM


@dataclass(frozen=True)
class Policy:
    """Warm-up count and adaptive repeats: stop at ``target`` repeats, or once ``max_s``
    seconds were spent and at least ``min_reps`` were taken."""

    warmup: int = 3
    target: int = 20
    min_reps: int = 5
    max_s: float = 0.3


class Budget:
    """Wall-clock budget since the campaign started."""

    def __init__(self, seconds: float, start: float | None = None):
        self.seconds = float(seconds)
        self.start = time.monotonic() if start is None else start
        self.hit = False

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def over(self) -> bool:
        if self.elapsed() >= self.seconds:
            self.hit = True
        return self.hit


class Clock:
    """Times one call; the device is idle before and after (synchronize each time)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def time(self, fn: Callable[[], object]) -> float:
        """Seconds of one call (CUDA events around it on the current stream)."""
        if self.cuda:
            self._start.record()
            fn()
            self._end.record()
            self._end.synchronize()
            return self._start.elapsed_time(self._end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def wall(self, fn: Callable[[], object]) -> float:
        """Host seconds of one call including a synchronize at the end."""
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t0


def repeat(clock: Clock, fn: Callable[[], object], policy: Policy,
           timer: str = "time") -> list[float]:
    """Warm up, then adaptive repeats of ``fn``; returns one duration (s) per repeat."""
    for _ in range(policy.warmup):
        fn()
    clock.sync()
    measure = clock.time if timer == "time" else clock.wall
    out: list[float] = []
    t0 = time.perf_counter()
    while len(out) < policy.target:
        out.append(measure(fn))
        if len(out) >= policy.min_reps and time.perf_counter() - t0 >= policy.max_s:
            break
    return out


def capture(fn: Callable[[], object], warmup: int = 2) -> torch.cuda.CUDAGraph:
    """CUDA graph of ``fn`` after ``warmup`` eager calls on a side stream."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    torch.cuda.synchronize()
    return g


def measure(clock: Clock, fn: Callable[[], object], policy: Policy, graph: bool,
            inner: int = 1) -> list[float]:
    """Per-call seconds of ``fn`` (which makes ``inner`` calls of the timed op).

    graph=True on a GPU: captured once, then each replay is timed; otherwise eager.
    """
    if graph and clock.cuda:
        g = capture(fn, warmup=1 if inner > 1 else 2)
        try:
            times = repeat(clock, g.replay, policy)
        finally:
            del g
    else:
        times = repeat(clock, fn, policy)
    return [t / inner for t in times]


def stats(times: Sequence[float], scale: float) -> dict[str, float | int]:
    """median/p10/p90 of ``times`` x ``scale`` (1e6 for us, 1e3 for ms) and the count."""
    a = np.asarray(times, dtype=np.float64) * scale
    p10, med, p90 = np.percentile(a, [10, 50, 90])
    return {"median": float(med), "p10": float(p10), "p90": float(p90), "repeats": len(a)}


def n_slots(slot_bytes: int, l2_bytes: int, cap: int) -> int:
    """Buffers to rotate so that the footprint exceeds ROTATE_FACTOR x L2."""
    return max(1, min(cap, math.ceil(ROTATE_FACTOR * l2_bytes / max(1, slot_bytes))))


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        with contextlib.suppress(Exception):  # a sticky CUDA error: nothing to free
            torch.cuda.synchronize()
        torch.cuda.empty_cache()


def _fmt(v: object) -> object:
    if v is None:
        return ""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return ""
        return f"{v:.6g}"
    return v


class CsvSink:
    """Append-mode CSV: the header once (new or empty file), a flush after every row."""

    def __init__(self, path: Path, columns: Sequence[str]):
        self.path = Path(path)
        self.columns = list(columns)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._f = open(self.path, "a", newline="")  # noqa: SIM115 (kept open, closed by close())
        self._w = csv.DictWriter(self._f, fieldnames=self.columns, extrasaction="raise")
        if new:
            self._w.writeheader()
            self._f.flush()
        self.rows: list[dict] = []

    def write(self, **row: object) -> None:
        full = {c: _fmt(row.get(c)) for c in self.columns}
        unknown = set(row) - set(self.columns)
        if unknown:
            raise KeyError(f"{self.path.name}: unknown columns {sorted(unknown)}")
        self._w.writerow(full)
        self._f.flush()
        self.rows.append(dict(row))

    def close(self) -> None:
        self._f.close()
