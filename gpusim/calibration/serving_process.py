"""Which measured serving runs were their process's first load, and their errors apart.

A process's first load pays its first pass over every new shape: on the H100's VM the
same eager steps took 50-130% longer on their first pass than on their next
(validation/data/h100-sxm/probe_2026-12-07_s27/), and in the committed runs the first
load of each process ran its eager mixed steps 25-40% slower than the same process's
later loads. gpusim prices a warm process, so a first load that no warm-up load
(``bench_serve_engine.py --warmup-s``) preceded is marked, and its errors are shown
apart from the later loads'.

A run of the harness records what its process ran before it (run.json's ``process``:
``load_index``, ``warmup_s``). For runs of a harness that did not, the runs of one
process are those of one command line and commit started one after another, each
within PROCESS_GAP_S of its predecessor's end; the first of them is the first load.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np

from gpusim.calibration.serving_measured import ServingRun
from gpusim.calibration.serving_metrics import relative_error, saturated
from gpusim.calibration.serving_replay import RunComparison

# a load follows its predecessor in one process within this many seconds of its end
# (writing the run's files; a new process loads its model and captures its graphs first)
PROCESS_GAP_S = 30.0


def _started_s(run: ServingRun) -> float | None:
    text = run.provenance.get("started_utc")
    try:
        return datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return None


def _length_s(run: ServingRun) -> float:
    return max((s.end_s for s in run.steps), default=0.0)


def _warmup_s(command: str) -> float:
    """The ``--warmup-s`` a command line gave (0 where none or unreadable)."""
    words = command.split()
    for i, word in enumerate(words):
        value = (word.partition("=")[2] if word.startswith("--warmup-s=") else
                 words[i + 1] if word == "--warmup-s" and i + 1 < len(words) else None)
        if value is not None:
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 0.0


def first_loads(runs: Sequence[ServingRun]) -> frozenset[Path]:
    """The paths of ``runs`` that were their process's first load with no warm-up load
    before them. Runs that record neither their process nor a start time and command
    line are never marked."""
    cold: set[Path] = set()
    unrecorded: dict[tuple[str, str], list[tuple[float, ServingRun]]] = defaultdict(list)
    for run in runs:
        proc = run.process
        if proc:
            if proc["load_index"] == 0 and not proc["warmup_s"]:
                cold.add(run.path)
            continue
        start, command = _started_s(run), run.provenance.get("command")
        if start is None or not command:
            continue
        if _warmup_s(str(command)) > 0:
            continue  # a warm-up load ran first: not its first load
        unrecorded[(str(command), str(run.provenance.get("git_commit", "")))].append(
            (start, run))
    for group in unrecorded.values():
        group.sort(key=lambda x: x[0])
        end = -np.inf
        for start, run in group:
            if start > end + PROCESS_GAP_S:
                cold.add(run.path)   # no load of this command ran just before it
            end = start + _length_s(run)
    return frozenset(cold)


def _summary(results: Sequence[RunComparison], key: str, q: str) -> str:
    errs = [relative_error(r.simulated[key][q], r.measured[key][q]) for r in results]
    if not errs:
        return "-"
    worst = max(errs, key=abs)
    return f"{100 * float(np.median(np.abs(errs))):.1f}% / {100 * worst:+.1f}%"


def _mixed_bias(results: Sequence[RunComparison]) -> str:
    xs = [e["forward_bias"] for r in results for kind, e in r.step_errors.items()
          if kind.startswith("mixed")]
    return "-" if not xs else f"{100 * float(np.median(xs)):+.1f}%"


def first_load_section(results: Sequence[RunComparison], cold_paths: frozenset[Path]
                       ) -> list[str]:
    """Markdown: the runs below saturation that were their process's first load
    (``cold_paths``: ``first_loads`` of all the runs, a saturated one included, as a
    load before another counts whatever its rate), and the simulation's latency errors
    on them and on the later loads; empty where no run is a first load or none is a
    later one."""
    below = [r for r in results if not saturated(r.measured)]
    cold = [r for r in below if r.run.path in cold_paths]
    warm = [r for r in below if r.run.path not in cold_paths]
    if not cold or not warm:
        return []
    lines = ["## First loads of a process", "",
             "A process's first load makes its first pass over every new shape, which its "
             "later loads do not (the same eager steps took 50-130% longer on their "
             "first pass: validation/data/h100-sxm/probe_2026-12-07_s27/); gpusim prices "
             "a warm process. First loads with no warm-up load before them (`--warmup-s`): "
             + ", ".join(f"{r.run.model} {r.run.load}" for r in cold)
             + ". A group of repeated runs (\"Run-to-run spread\") that holds a first load "
             "and a later one measures this difference too, not only the machine's "
             "spread. Errors of the runs below saturation, median of their sizes / the "
             "largest:", "",
             "| loads | runs | TTFT p50 | TPOT p50 | TTFT p99 | TPOT p99 | "
             "mixed steps' forward bias (median) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label, group in (("first of their process", cold), ("later", warm)):
        lines.append(f"| {label} | {len(group)} | {_summary(group, 'ttft_s', 'p50')} | "
                     f"{_summary(group, 'tpot_s', 'p50')} | "
                     f"{_summary(group, 'ttft_s', 'p99')} | "
                     f"{_summary(group, 'tpot_s', 'p99')} | {_mixed_bias(group)} |")
    return [*lines, ""]
