"""A/B checks of the step-timing method, interleaved in one process.

Two questions the campaigns could not answer from their own data:

* graph steps: does the KV cache's allocated length change a step's time? bench.py
  allocates one cache per batch at the longest context of its grid (16k), the
  speculative harness one just long enough; the same shapes came out 3-9% apart.
  Each shape is timed with both caches in turns (rounds), so drift in the GPU's
  state lands on both variants alike.
* eager steps: how much of the host-bound time's spread is the host itself? Eager
  steps are timed in turns with and without pinning the process to one core and
  pausing the garbage collector, with a host probe (time per launch of a tiny
  kernel) in every round.
* --profiler-check: a graph step and an eager step timed, then one torch.profiler
  session, then timed again (does the profiler slow the rest of the process?).

    python3 validation/harness/ab_steps.py --out DIR [--shapes m:b:ctx,...] [--rounds 8]

Writes DIR/ab_graph.csv and DIR/ab_eager.csv (one row per variant and round) and,
with --profiler-check, DIR/ab_profiler.csv.
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import sys
import time
from pathlib import Path
from statistics import median

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference
from bench_campaign import MODELS_DIR, load_models
from bench_steps import make_cache
from bench_timing import Clock, capture

BIG_LEN = 16384 + 9   # bench.py's cache length for a batch whose grid reaches 16k


def host_probe_us(n: int = 400) -> float:
    """Host microseconds per launch of a tiny add (the dispatcher + driver path)."""
    x = torch.zeros(8, device="cuda")
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        x.add_(1.0)
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / n * 1e6


def graph_ab(out: csv.writer, model: str, shape: reference.Shape, w: reference.Weights,
             b: int, c: int, rounds: int, reps: int) -> None:
    clock = Clock(torch.device("cuda"))
    tokens = torch.randint(0, shape.vocab_size, (b, 1), device="cuda")
    variants = {}
    for name, length in (("tight", c + 1), ("big", BIG_LEN)):
        cache = make_cache(shape, b, length, torch.device("cuda"), torch.bfloat16)
        g = capture(lambda cache=cache: reference.forward(w, cache, tokens, c, "decode"))
        variants[name] = (cache, g)
    for r in range(rounds):
        for name, (_, g) in variants.items():
            for _ in range(3):
                g.replay()
            times = [clock.time(g.replay) * 1e3 for _ in range(reps)]
            out.writerow([model, b, c, name, r, f"{median(times):.5f}", f"{min(times):.5f}"])
    variants.clear()
    torch.cuda.empty_cache()


def _host_counters() -> tuple[float, float]:
    """(steal, total) CPU jiffies of the whole machine from /proc/stat (0, 0 if absent):
    steal is time the hypervisor gave this VM's CPUs to someone else."""
    try:
        with open("/proc/stat") as fh:
            f = fh.readline().split()[1:]
    except OSError:
        return 0.0, 0.0
    v = [float(x) for x in f]
    return (v[7] if len(v) > 7 else 0.0), sum(v)


def _sm_clock_mhz() -> float:
    """Current SM clock (MHz) by NVML through torch, or -1 if unavailable."""
    try:
        return float(torch.cuda.clock_rate())
    except Exception:  # pynvml missing or an NVML error: a diagnostic only
        return -1.0


def eager_ab(out: csv.writer, model: str, shape: reference.Shape, w: reference.Weights,
             b: int, c: int, rounds: int, reps: int) -> None:
    clock = Clock(torch.device("cuda"))
    tokens = torch.randint(0, shape.vocab_size, (b, 1), device="cuda")
    cache = make_cache(shape, b, c + 1, torch.device("cuda"), torch.bfloat16)

    def fn() -> None:
        reference.forward(w, cache, tokens, c, "decode")

    all_cpus = os.sched_getaffinity(0)
    one = {sorted(all_cpus)[len(all_cpus) // 2]}
    for _ in range(3):
        fn()
    for r in range(rounds):
        for name in ("default", "pinned"):
            if name == "pinned":
                os.sched_setaffinity(0, one)
                gc.disable()
            try:
                probe = host_probe_us()
                for _ in range(2):
                    fn()
                clock.sync()
                steal0, total0 = _host_counters()
                t0 = time.time()
                times = []
                clocks = []
                for _ in range(reps):
                    times.append(clock.time(fn) * 1e3)
                    clocks.append(_sm_clock_mhz())
                steal1, total1 = _host_counters()
            finally:
                os.sched_setaffinity(0, all_cpus)
                gc.enable()
            steal = (steal1 - steal0) / max(total1 - total0, 1.0)
            out.writerow([model, b, c, name, r, f"{median(times):.5f}", f"{min(times):.5f}",
                          f"{probe:.3f}", f"{t0:.3f}", f"{median(clocks):.0f}",
                          f"{min(clocks):.0f}", f"{steal:.4f}"])


def profiler_check(outdir: Path, model: str, shape: reference.Shape, w: reference.Weights,
                   b: int, c: int, reps: int = 30) -> None:
    """Graph replay and eager step times before and after one profiler session."""
    from torch.profiler import ProfilerActivity, profile

    clock = Clock(torch.device("cuda"))
    tokens = torch.randint(0, shape.vocab_size, (b, 1), device="cuda")
    cache = make_cache(shape, b, c + 1, torch.device("cuda"), torch.bfloat16)

    def fn() -> None:
        reference.forward(w, cache, tokens, c, "decode")

    g = capture(fn)
    rows = []
    for when in ("before", "after"):
        if when == "after":
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]):
                fn()
                torch.cuda.synchronize()
        for name, call in (("graph", g.replay), ("eager", fn)):
            for _ in range(3):
                call()
            times = [clock.time(call) * 1e3 for _ in range(reps)]
            rows.append([model, b, c, name, when, f"{median(times):.5f}", f"{min(times):.5f}"])
            print(f"profiler check {model} b={b} {name} {when}: {median(times):.3f} ms",
                  flush=True)
    with (outdir / "ab_profiler.csv").open("w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["model", "batch", "ctx", "launch", "profiler", "median_ms", "min_ms"])
        wr.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--graph-shapes", default="llama-3.2-1b:1:1024,llama-3.2-1b:16:1024,"
                   "llama-3.2-3b:4:1024,llama-3.1-8b:1:1024,llama-3.1-8b:4:1024,"
                   "llama-3.1-8b:16:4096")
    p.add_argument("--eager-shapes", default="llama-3.2-1b:1:1024,llama-3.1-8b:8:1024")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--profiler-check", default=None, metavar="MODEL:B:CTX",
                   help="only the before/after-profiler check, on this decode shape")
    args = p.parse_args(argv)
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    if args.profiler_check:
        m, b, c = args.profiler_check.split(":")
        shape = load_models([m], {}, MODELS_DIR)[m]
        profiler_check(outdir, m, shape, reference.Weights(shape, "cuda", torch.bfloat16),
                       int(b), int(c))
        return 0
    parse = lambda s: [(m, int(b), int(c)) for m, b, c in (x.split(":") for x in s.split(","))]  # noqa: E731
    graph, eager = parse(args.graph_shapes), parse(args.eager_shapes)
    models = load_models(sorted({m for m, _, _ in graph + eager}), {}, MODELS_DIR)
    with (outdir / "ab_graph.csv").open("w", newline="") as fg, \
            (outdir / "ab_eager.csv").open("w", newline="") as fe:
        wg, we = csv.writer(fg), csv.writer(fe)
        wg.writerow(["model", "batch", "ctx", "variant", "round", "median_ms", "min_ms"])
        we.writerow(["model", "batch", "ctx", "variant", "round", "median_ms", "min_ms",
                     "host_probe_us", "unix_s", "sm_clock_mhz", "sm_clock_min_mhz",
                     "cpu_steal_fraction"])
        for model in models:
            w = reference.Weights(models[model], "cuda", torch.bfloat16)
            for m, b, c in graph:
                if m == model:
                    graph_ab(wg, model, models[model], w, b, c, args.rounds, args.reps)
                    fg.flush()
                    print(f"graph {model} b={b} ctx={c} done", flush=True)
            for m, b, c in eager:
                if m == model:
                    eager_ab(we, model, models[model], w, b, c, args.rounds, args.reps)
                    fe.flush()
                    print(f"eager {model} b={b} ctx={c} done", flush=True)
            del w
            gc.collect()
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
