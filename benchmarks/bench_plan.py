"""How long a capacity plan takes, against baselines timed in the same run.

    python benchmarks/bench_plan.py [--repeats 3] [--rate 50] [--gpus G1,G2,...]

The issue's case: Llama 3.1 8B at 50 requests/s of chat traffic
(workloads/scenarios/chat-poisson.yaml with its rate raised), SLO TTFT p99 <= 1 s and
TPOT p99 <= 50 ms, over four GPU types, with the defaults of ``gpusim plan``
(speculation with the automatic draft searched, the +-25% sensitivity included). The
process is pinned to one core with single-threaded BLAS; the subprocess inherits the
pinning. Timed per repeat, after one warm-up run (imports, first-use caches):

* the plan in-process: ``gpusim plan ... --format json``, output discarded;
* the plan end to end: ``python -m gpusim.cli plan ...`` in a fresh process, Python's
  start-up and imports included (what a user waits for);
  **target: under 10 s on one core**;
* baseline 1: what ``gpusim serve`` does for one replica of the plan's winner, its
  engine built and the scenario's full window simulated (the command the plan prints,
  in-process): one serving simulation;
* baseline 2: a fixed numpy workload (sorting 1M random floats 20 times): the
  machine's speed, whatever the plan chose.

Reported: wall and CPU seconds (medians), the ratios plan / baselines (compare those
across machines), the winner and how many engines and simulations the plan ran.
Results go to stdout and benchmarks/results/bench_plan.json.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import datetime as dt  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from machine import machine_info  # noqa: E402

from gpusim.cli import main as gpusim_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "bench_plan.json"
SCENARIO = ROOT / "workloads" / "scenarios" / "chat-poisson.yaml"
TARGET_S = 10.0


def pin_one_core() -> str:
    """Pin this process to the first core it may use; returns what it did."""
    try:
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cores[0]})
        return f"pinned to core {cores[0]} of {len(cores)}"
    except (AttributeError, OSError):
        return "not pinned (no sched_setaffinity)"


def timed(fn) -> tuple[float, float, object]:
    """(wall s, CPU s, result) of ``fn()``."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


def run_plan(args_list: list[str]) -> dict:
    buf, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        rc = gpusim_main(args_list)
    if rc != 0:
        raise SystemExit(f"gpusim plan failed ({rc}): {err.getvalue().strip()}")
    return json.loads(buf.getvalue())


def run_serve(command: str) -> dict:
    """The plan's ``gpusim serve`` command for its winner, in-process, as JSON."""
    argv = [*shlex.split(command)[1:], "--format", "json", "--quiet"]
    buf, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        rc = gpusim_main(argv)
    if rc != 0:
        raise SystemExit(f"gpusim serve failed ({rc}): {err.getvalue().strip()}")
    return json.loads(buf.getvalue())


def run_plan_process(args_list: list[str]) -> tuple[float, float]:
    """(wall s, CPU s) of ``python -m gpusim.cli`` + ``args_list`` in a fresh process
    (this checkout first on its path), output discarded."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    w0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "gpusim.cli", *args_list], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          check=False)
    wall = time.perf_counter() - w0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"gpusim plan failed ({done.returncode}): {done.stderr.strip()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def numpy_baseline() -> None:
    """A fixed CPU workload: sort 1M random floats (seed 0) 20 times."""
    x = np.random.default_rng(0).random(1_000_000)
    for _ in range(20):
        np.sort(x)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--gpus", default="h100-sxm,h200,b200,a100-sxm-80gb")
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.rate <= 0:
        print("bench_plan: --repeats and --rate must be positive", file=sys.stderr)
        return 2
    pinned = pin_one_core()
    plan_args = ["plan", "--model", args.model, "--traffic", str(SCENARIO), "--rate",
                 f"{args.rate:g}", "--slo", "ttft_p99_s=1,tpot_p99_s=0.05", "--gpus",
                 args.gpus, "--format", "json"]
    result = run_plan(plan_args)                     # warm-up
    command = result["serve_command"]
    if command is None:
        print("bench_plan: the plan found no winner", file=sys.stderr)
        return 1
    run_serve(command)                               # warm-up
    numpy_baseline()
    t: dict[str, list[float]] = {k: [] for k in (
        "plan_wall_s", "plan_cpu_s", "plan_process_wall_s", "plan_process_cpu_s",
        "baseline_wall_s", "baseline_cpu_s", "numpy_wall_s", "numpy_cpu_s")}
    served: dict = {}
    for _ in range(args.repeats):
        w, c, result = timed(lambda: run_plan(plan_args))
        t["plan_wall_s"].append(w)
        t["plan_cpu_s"].append(c)
        w, c = run_plan_process(plan_args)
        t["plan_process_wall_s"].append(w)
        t["plan_process_cpu_s"].append(c)
        w, c, served = timed(lambda: run_serve(command))
        t["baseline_wall_s"].append(w)
        t["baseline_cpu_s"].append(c)
        w, c, _ = timed(numpy_baseline)
        t["numpy_wall_s"].append(w)
        t["numpy_cpu_s"].append(c)
    m = {f"{k}_median": statistics.median(v) for k, v in t.items()}
    pw, pc = m["plan_wall_s_median"], m["plan_cpu_s_median"]
    ew, ec = m["plan_process_wall_s_median"], m["plan_process_cpu_s_median"]
    sw, scpu = m["baseline_wall_s_median"], m["baseline_cpu_s_median"]
    nw, ncpu = m["numpy_wall_s_median"], m["numpy_cpu_s_median"]
    winner = result["winner"]
    out = {
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {**machine_info(), "cpu_count": os.cpu_count(), "affinity": pinned},
        "config": {"model": args.model, "scenario": SCENARIO.name, "rate_per_s": args.rate,
                   "gpus": args.gpus.split(","), "slo": result["slo"],
                   "command": "gpusim " + shlex.join(plan_args), "repeats": args.repeats},
        **t, **m,
        "ratio_plan_to_serve_cpu": pc / scpu, "ratio_plan_to_serve_wall": pw / sw,
        "ratio_plan_to_numpy_cpu": pc / ncpu, "ratio_process_to_numpy_cpu": ec / ncpu,
        "target_s": TARGET_S, "meets_target": ec < TARGET_S and ew < TARGET_S,
        "winner": winner["describe"], "usd_per_hour": winner["usd_per_hour"],
        "winner_ttft_p99_s": winner["ttft_p99_s"], "winner_tpot_p99_s": winner["tpot_p99_s"],
        "baseline_command": command,
        "baseline_ttft_p99_s": served["latency_s"]["ttft_s"]["p99"],
        "baseline_tpot_p99_s": served["latency_s"]["tpot_s"]["p99"],
        "engines": result["engines"], "simulations": result["simulations"],
    }
    print(f"gpusim plan: {args.model} at {args.rate:g} req/s over {args.gpus} ({pinned}); "
          f"median of {args.repeats}")
    print(f"  plan in-process     wall {pw:6.2f} s  cpu {pc:6.2f} s  ({result['engines']} "
          f"engines, {result['simulations']} simulations)")
    print(f"  plan end to end     wall {ew:6.2f} s  cpu {ec:6.2f} s  (python -m gpusim.cli "
          "plan: start-up and imports included)")
    print(f"  baseline: serve     wall {sw:6.2f} s  cpu {scpu:6.2f} s  (one `gpusim serve` "
          "of the winner's replica over the scenario's window, in-process)")
    print(f"  baseline: numpy     wall {nw:6.2f} s  cpu {ncpu:6.2f} s  (sort 1M floats x 20)")
    print(f"  ratios (cpu): plan / serve {pc / scpu:.2f}x, plan / numpy {pc / ncpu:.2f}x, "
          f"end to end / numpy {ec / ncpu:.2f}x")
    print(f"  target: end to end < {TARGET_S:g} s on one core: "
          f"{'meets' if out['meets_target'] else 'MISSES'}")
    print(f"  winner: {winner['describe']} at ${winner['usd_per_hour']:.2f}/h")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
