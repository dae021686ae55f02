"""Run-to-run spread of measured serving runs: the floor under the serving report's errors.

Runs of the same GPU, model, engine settings and workload (the same arrivals, lengths
and seed: ``bench_serve_engine.py`` run twice with the same arguments) measure the same
thing twice; how far their metrics differ is what no simulator can be judged below.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gpusim.calibration.serving_replay import RunComparison

METRICS = (("TTFT p50", "ttft_s", "p50"), ("TTFT p99", "ttft_s", "p99"),
           ("TPOT p50", "tpot_s", "p50"), ("TPOT p99", "tpot_s", "p99"),
           ("ITL p50", "itl_s", "p50"), ("output tokens/s", "output_tokens_per_s", None))


def repeat_groups(results: Sequence[RunComparison]) -> list[list[RunComparison]]:
    """Groups of two or more runs with the same GPU, model, engine and workload, in
    the order of their first run."""
    groups: dict[str, list[RunComparison]] = {}
    for r in results:
        # the requests' lengths too: the same workload draws the same ones
        lengths = [(q.prompt_tokens, q.output_tokens) for q in r.run.requests]
        key = json.dumps([r.run.device, r.run.gpu, r.run.model, r.run.engine,
                          r.run.workload, r.run.offered_rate_per_s, lengths],
                         sort_keys=True, default=str)
        groups.setdefault(key, []).append(r)
    return [g for g in groups.values() if len(g) > 1]


def metric_value(r: RunComparison, which: str, name: str, q: str | None) -> float:
    x = getattr(r, which)[name]
    return float(x if q is None else x[q])


def spread(group: Sequence[RunComparison], name: str, q: str | None) -> float:
    """(largest - smallest) / smallest of a measured metric over ``group``'s runs."""
    xs = np.array([metric_value(r, "measured", name, q) for r in group])
    return float(xs.max() / xs.min() - 1.0)


def worst_spread(results: Sequence[RunComparison], name: str, q: str | None
                 ) -> float | None:
    """The largest ``spread`` of a measured metric over ``results``' groups of repeated
    runs (None without repeats): the floor under that metric's errors."""
    xs = [spread(g, name, q) for g in repeat_groups(results)]
    return max(xs) if xs else None


def _mixed_forward_ms(r: RunComparison) -> float:
    """Median measured forward of the run's mixed steps (ms; nan without any)."""
    xs = [s.gpu_s for s in r.run.steps if s.chunks]
    return 1e3 * float(np.median(xs)) if xs else float("nan")


def repeat_section(results: Sequence[RunComparison], cold: frozenset[Path]) -> list[str]:
    """Markdown: for each group of repeated runs, every run's measured metrics, the
    spread between them and the simulation's error on each, a run in ``cold``
    (``serving_process.first_loads``) marked as its process's first load; empty
    without repeats."""
    groups = repeat_groups(results)
    if not groups:
        return []
    lines = ["## Run-to-run spread", "",
             "Runs repeated with the same arguments (the same arrivals, lengths, seed, "
             "engine settings) on the same GPU kind: how far two measurements of the same "
             "thing differ, (largest - smallest) / smallest. It is the floor under the "
             "errors above: a metric that moves this much between two runs cannot be "
             "judged more finely. A run marked (first load) was the first its process "
             "measured, with no warm-up load before it (\"First loads of a process\").", "",
             "| model | runs | metric | measured per run | spread | simulated error per run |",
             "|---|---|---|---:|---:|---:|"]
    for g in groups:
        loads = ", ".join(r.run.load + (" (first load)" if r.run.path in cold else "")
                          for r in g)
        for label, name, q in METRICS:
            meas = [metric_value(r, "measured", name, q) for r in g]
            errs = [metric_value(r, "simulated", name, q) / m - 1.0
                    for r, m in zip(g, meas, strict=True)]
            scale = 1.0 if q is None else 1e3   # latencies in ms
            lines.append(
                f"| {g[0].run.model} | {loads} | {label} | "
                + " / ".join(f"{scale * m:.2f}" for m in meas)
                + f" | {100 * spread(g, name, q):.1f}% | "
                + " / ".join(f"{100 * e:+.1f}%" for e in errs) + " |")
        mixed = [_mixed_forward_ms(r) for r in g]
        lines.append(f"| {g[0].run.model} | {loads} | mixed step forward, median (ms) | "
                     + " / ".join(f"{m:.2f}" for m in mixed)
                     + f" | {100 * (max(mixed) / min(mixed) - 1):.1f}% | - |")
    lines += ["", "(Latencies in ms.)", ""]
    return lines
