"""Probe why the serving harness's eager (host-bound) mixed steps run at different speeds
in different processes: the first load a process measures ran its eager steps 25-40%
slower than its later loads, on every committed serving lease (validation/
SERVING_REPORT*.md, "Run-to-run spread").

One process: the model's ModelRunner (as the serving engine builds it, no graphs), a
pure-Python loop timed (the CPU's own speed), then the same eager mixed steps over and
over for ``--seconds``: a set S1 of steps of random shapes, S1 again (a per-shape
first-call cost shows as S1's first pass slower than its second), a new set S2 and S2
again, then S1 cycled to the end (a drift with the process's age shows there). Writes
DIR/<label>.csv (one row a step) and prints one JSON line of medians.

    python3 validation/harness/probe_host_speed.py --out DIR --label NAME
        [--model llama-3.2-1b] [--seconds 30] [--gc-freeze] [--pin CPU]

Needs torch on a GPU (the device machine has no gpusim).
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_serve_engine import load_shape  # noqa: E402
from probe_serve_steps import mixed_input, timed_step  # noqa: E402
from serve_model import ModelRunner  # noqa: E402


def python_loop_s(n: int = 300_000) -> float:
    """Seconds for a fixed pure-Python loop (the host CPU's speed for this process)."""
    t0 = time.perf_counter()
    acc = 0
    for i in range(n):
        acc += i % 7
    return time.perf_counter() - t0


def shapes(seed: int, n: int) -> list[tuple[int, int, int]]:
    """``n`` mixed steps (decode rows, their cached tokens, prompt tokens)."""
    rng = random.Random(seed)
    return [(rng.randint(1, 8), rng.randint(200, 2000), rng.randint(50, 1500))
            for _ in range(n)]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--model", default="llama-3.2-1b")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--gc-freeze", action="store_true")
    p.add_argument("--pin", type=int, default=None, help="run on this CPU only")
    p.add_argument("--device", default="cuda", help="cpu: a smoke run (with --model tiny)")
    a = p.parse_args()
    if a.pin is not None:
        os.sched_setaffinity(0, {a.pin})
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    _, shape, _ = load_shape(a.model)
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    runner = ModelRunner(shape, dev, torch.bfloat16 if cuda else torch.float32, 16, 3072,
                         (), 256)
    runner.allocate_kv(16384 if cuda else 5000)
    if a.gc_freeze:
        gc.collect()
        gc.freeze()
        gc.disable()
    loops = [python_loop_s()]
    sets = {"S1": shapes(1, 40), "S2": shapes(2, 40)}
    plan = ["S1", "S1", "S2", "S2"]
    rows = []
    deadline = time.perf_counter() + a.seconds
    i = 0
    while time.perf_counter() < deadline or i < len(plan):
        name = plan[i] if i < len(plan) else "S1"
        for b, ctx, q in sets[name]:
            age_s = time.perf_counter() - t_start
            gpu_s, wall_s = timed_step(runner, mixed_input(b, ctx, q, 16))
            rows.append({"pass": i, "set": name, "decode": b, "ctx": ctx, "q": q,
                         "age_s": round(age_s, 3), "wall_s": wall_s, "gpu_s": gpu_s})
        i += 1
    loops.append(python_loop_s())
    with open(out / f"{a.label}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    def med(pass_no: int) -> float:
        return statistics.median(r["wall_s"] for r in rows if r["pass"] == pass_no) * 1e3

    last = max(r["pass"] for r in rows)
    summary = {"label": a.label, "pin": a.pin, "gc_freeze": a.gc_freeze,
               "cpu": os.sched_getaffinity(0).__len__(),
               "module_loading": os.environ.get("CUDA_MODULE_LOADING", ""),
               "python_loop_ms": [round(x * 1e3, 2) for x in loops],
               "S1_first_ms": round(med(0), 3), "S1_again_ms": round(med(1), 3),
               "S2_first_ms": round(med(2), 3), "S2_again_ms": round(med(3), 3),
               "last_pass_ms": round(med(last), 3), "passes": last + 1}
    print(json.dumps(summary), flush=True)
    (out / f"{a.label}.json").write_text(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
