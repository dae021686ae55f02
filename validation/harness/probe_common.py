"""What the kernel probes share: each call's longest GPU kernel by name, and their
output (a CSV of rows and an env.json beside it)."""

from __future__ import annotations

import csv
import datetime as dt
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch


def longest_kernel(fn: Callable[[], object]) -> str:
    """The name of the longest GPU kernel of one call of ``fn`` under torch.profiler
    (run it after every timing: the profiler slows what follows in the process)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return max(events, key=lambda e: e.time_range.elapsed_us()).name if events else ""


def write_probe(out: Path, stem: str, rows: list[dict[str, object]]) -> None:
    """``out/<stem>.csv`` (the rows, columns in the first row's order) and
    ``out/<stem>_env.json`` (time, torch, CUDA, GPU, command)."""
    env = {"utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
           "torch": torch.__version__, "cuda": torch.version.cuda,
           "gpu_name": torch.cuda.get_device_name(), "command": sys.argv}
    (out / f"{stem}_env.json").write_text(json.dumps(env, indent=2) + "\n")
    with (out / f"{stem}.csv").open("w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
