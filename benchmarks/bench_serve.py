"""How fast the serving simulation runs: simulated seconds per wall-clock second.

    python benchmarks/bench_serve.py [--duration-s 3600] [--rate 20] [--repeats 3]

One hour of Llama 3.1 8B on one H100 SXM serving 20 requests/s with chat-like lengths
(lognormal prompts, median 500 tokens, sigma 0.8, at most 8192; lognormal answers,
median 250, sigma 0.7, at most 2048), continuous batching with vLLM's defaults, CUDA
graphs, the shipped calibration if there is one. Reported:

* simulated seconds per wall second (the run drains after the arrival window, so the
  simulated time is the makespan), the median of ``--repeats`` timed runs after one
  warm-up; **target: >= 1000x on one core**;
* wall time per engine step, and against a baseline timed in the same run: a minimal
  pure-Python discrete-event loop (a heap push and pop per step, nothing else) over
  the same number of steps, so machines can be compared;
* peak memory: traced Python allocations of one more run (tracemalloc), next to the
  same for a run a quarter as long (streaming statistics: it should not grow), and the
  process's peak RSS.

Results go to stdout and benchmarks/results/bench_serve.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import heapq
import json
import os
import platform
import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
from machine import cpu_model

from gpusim.io import calibrations, loader
from gpusim.platform import Platform
from gpusim.serving.scenario import Scenario
from gpusim.serving.simulate import build_engine, simulate

TARGET_X_REAL_TIME = 1000.0
RESULTS = Path(__file__).resolve().parent / "results" / "bench_serve.json"


def chat_scenario(duration_s: float, rate: float, seed: int) -> Scenario:
    return Scenario.model_validate({
        "name": "bench-chat", "duration_s": duration_s, "seed": seed,
        "arrival": {"process": "poisson", "rate_per_s": rate},
        "prompt": {"dist": "lognormal", "median_tokens": 500, "sigma": 0.8,
                   "max_tokens": 8192},
        "output": {"dist": "lognormal", "median_tokens": 250, "sigma": 0.7,
                   "max_tokens": 2048},
    })


def baseline_loop(steps: int) -> float:
    """Wall seconds of the simplest event loop: one heap push and pop per step."""
    heap: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    now = 0.0
    for i in range(steps):
        heapq.heappush(heap, (now + 0.01, i))
        now, _ = heapq.heappop(heap)
    return time.perf_counter() - t0


def traced_peak_bytes(engine, scenario: Scenario) -> int:
    tracemalloc.start()
    try:
        simulate(engine, scenario)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration-s", type=float, default=3600.0)
    ap.add_argument("--rate", type=float, default=20.0, help="requests per second")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gpu", default="h100-sxm")
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--calibration", default="auto")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--no-memory", action="store_true", help="skip the tracemalloc runs")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.duration_s <= 0 or args.rate <= 0:
        print("bench_serve: --repeats, --duration-s and --rate must be positive",
              file=sys.stderr)
        return 2

    gpu = loader.load_gpu(args.gpu)
    model = loader.load_model(args.model)
    stack = loader.load_stack()
    cal = calibrations.load_calibration(args.calibration, gpu, stack)
    scenario = chat_scenario(args.duration_s, args.rate, args.seed)
    t0 = time.perf_counter()
    engine = build_engine(Platform(gpu, stack, cal), model, scenario)
    build_s = time.perf_counter() - t0

    simulate(engine, chat_scenario(min(60.0, args.duration_s), args.rate, args.seed))  # warm
    walls = []
    out = {}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = simulate(engine, scenario)
        walls.append(time.perf_counter() - t0)
    wall = statistics.median(walls)
    simulated = out["makespan_s"]
    steps = out["engine"]["steps"]
    base = statistics.median(baseline_loop(steps) for _ in range(3))
    x_real = simulated / wall

    memory: dict[str, object] = {}
    if not args.no_memory:
        quarter = chat_scenario(args.duration_s / 4, args.rate, args.seed)
        traced_peak_bytes(engine, quarter)  # first-use allocations out of the way
        memory = {
            "traced_peak_bytes": traced_peak_bytes(engine, scenario),
            "traced_peak_bytes_quarter_duration": traced_peak_bytes(engine, quarter),
        }
    memory["max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    result = {
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpu_model": cpu_model(), "platform": platform.platform(),
                    "python": platform.python_version(), "numpy": np.__version__,
                    "cpu_count": os.cpu_count()},
        "config": {"gpu": gpu.name, "model": model.name, "calibration": cal.fitted_on,
                   "duration_s": args.duration_s, "rate_per_s": args.rate,
                   "seed": args.seed, "scheduler": scenario.scheduler.model_dump(),
                   "prompt": scenario.prompt.model_dump(exclude_none=True),
                   "output": scenario.output.model_dump(exclude_none=True)},
        "engine_build_s": build_s,
        "wall_s": walls,
        "wall_s_median": wall,
        "simulated_s": simulated,
        "x_real_time": x_real,
        "target_x_real_time": TARGET_X_REAL_TIME,
        "meets_target": x_real >= TARGET_X_REAL_TIME,
        "steps": steps,
        "requests": out["requests"]["completed"],
        "us_per_step": wall / steps * 1e6,
        "baseline_us_per_step": base / steps * 1e6,
        "x_baseline": wall / base,
        "memory": memory,
        "summary": {"output_tokens_per_s": out["throughput"]["output_tokens_per_s"],
                    "ttft_p99_s": out["latency_s"]["ttft_s"]["p99"],
                    "tpot_p50_s": out["latency_s"]["tpot_s"]["p50"],
                    "mean_running": out["engine"]["mean_running"],
                    "littles_law_gap": out["littles_law"]["relative_gap"]},
    }
    print(f"serving simulation: {simulated:,.0f} simulated s ({out['requests']['completed']:,}"
          f" requests, {steps:,} steps) of {model.name} on {gpu.name} at {args.rate:g} req/s")
    print(f"  engine tables built in {build_s * 1e3:.0f} ms")
    print(f"  wall {wall:.2f} s (median of {args.repeats}): {x_real:,.0f}x real time "
          f"(target >= {TARGET_X_REAL_TIME:,.0f}x: "
          f"{'meets' if result['meets_target'] else 'MISSES'})")
    print(f"  {result['us_per_step']:.2f} us per step; baseline heap loop "
          f"{result['baseline_us_per_step']:.2f} us per step ({result['x_baseline']:.1f}x)")
    if "traced_peak_bytes" in memory:
        print(f"  peak traced memory {memory['traced_peak_bytes'] / 1e6:.2f} MB "
              f"(quarter-length run {memory['traced_peak_bytes_quarter_duration'] / 1e6:.2f} "
              f"MB); peak RSS {memory['max_rss_bytes'] / 1e6:.0f} MB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
