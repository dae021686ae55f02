"""Probe: torch._grouped_mm over experts with equal, controlled row counts.

    python3 validation/harness/probe_grouped_mm.py --out DIR [--shapes NAME:E:N:K,...]
        [--rows 8,16,...] [--spill]

A step's expert GEMM sees each expert's rows drawn by the routing; here every expert
gets exactly ``r`` rows (offs = r, 2r, ..., E r), so the time over ``r`` shows the
kernel's row tiles directly: a tile of T rows makes the time step up just past each
multiple of T. With ``--spill``, also each r with one expert given one row more and
another one less (the same rows in all): the price of one expert spilling into a next
tile. Each call is captured in a CUDA graph and its replays timed (bench_timing); the
weights (E x K x N, column-major per expert as moe_forward.py lays them) exceed L2,
so each replay streams them from HBM as a step does. Then every shape's kernel names
under torch.profiler (last: the profiler slows what follows it in the process).
With ``--touched``, also calls where only T of the E experts get rows (the rest
none), as a decode step routes. Writes DIR/grouped_mm.csv (shape, E, experts touched,
N, K, rows per touched expert, spill, median/p10/p90 us, kernel),
DIR/grouped_mm_env.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_timing import Clock, Policy, free_memory, measure, stats  # noqa: E402
from probe_common import longest_kernel, write_probe  # noqa: E402

# the expert GEMMs of the two MoE models the harness runs: gate_up [h -> 2I], down
# [I -> h]
SHAPES = ("mixtral_gate_up:8:28672:4096,mixtral_down:8:4096:14336,"
          "qwen3_gate_up:128:1536:2048,qwen3_down:128:2048:768")
ROWS = "8,16,32,48,64,65,96,128,129,160,192,224,256,257,288,320,384,448,512,513,640,768,1024"


def _offs(experts: int, rows: int, spill: bool, dev: torch.device,
          touched: int | None = None) -> torch.Tensor:
    """Cumulative row ends per expert: ``rows`` each for the first ``touched`` experts
    (default all), none for the rest (a decode step's few routed experts)."""
    t = experts if touched is None else touched
    counts = [rows] * t + [0] * (experts - t)
    if spill and t > 1:
        counts[0] += 1
        counts[1] -= 1
    return torch.tensor(counts, device=dev, dtype=torch.int32).cumsum(0, dtype=torch.int32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shapes", default=SHAPES, help="NAME:E:N:K,... (default: Mixtral "
                    "8x7B's and Qwen3-30B-A3B's gate_up and down)")
    ap.add_argument("--rows", default=ROWS, help="rows per expert, comma-separated")
    ap.add_argument("--spill", action="store_true", help="also one expert one row over")
    ap.add_argument("--touched", default="", help="also calls where only T of the experts "
                    "get rows (decode), as T1,T2,...:R1,R2,... (touched counts : rows per "
                    "touched expert); counts above a shape's experts are skipped")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    dev, dtype = torch.device("cuda"), torch.bfloat16
    clock, policy = Clock(dev), Policy(warmup=3, target=20, min_reps=8, max_s=0.5)
    rows_list = [int(x) for x in args.rows.split(",")]
    few: list[tuple[int, int]] = []
    if args.touched:
        ts, rs = args.touched.split(":")
        few = [(int(t), int(r)) for t in ts.split(",") for r in rs.split(",")]
    out: list[dict[str, object]] = []
    calls: list[tuple[dict[str, object], object]] = []
    for spec in args.shapes.split(","):
        name, e, n, k = spec.split(":")
        experts, n_, k_ = int(e), int(n), int(k)
        gen = torch.Generator(device=dev).manual_seed(0)
        w = (torch.randn((experts, n_, k_), generator=gen, device=dev, dtype=dtype)
             * 0.02).transpose(-2, -1)                                      # [E, K, N]
        cases = [(experts, r, spill) for r in rows_list
                 for spill in ((False, True) if args.spill and r > 1 else (False,))]
        cases += [(t, r, False) for t, r in few if t < experts]
        for touched, r, spill in cases:
            offs = _offs(experts, r, spill, dev, touched)
            a = torch.randn((touched * r, k_), generator=gen, device=dev, dtype=dtype)

            def fn(a: torch.Tensor = a, w: torch.Tensor = w,
                   offs: torch.Tensor = offs) -> torch.Tensor:
                return torch._grouped_mm(a, w, offs=offs, out_dtype=dtype)

            st = stats(measure(clock, fn, policy, graph=True), 1e6)
            row: dict[str, object] = {
                "shape": name, "experts": experts, "touched": touched, "n": n_,
                "k": k_, "rows_per_expert": r, "spill": int(spill),
                "median_us": round(st["median"], 3), "p10_us": round(st["p10"], 3),
                "p90_us": round(st["p90"], 3), "repeats": st["repeats"]}
            out.append(row)
            calls.append((row, fn))
            print(row, flush=True)
        torch.cuda.synchronize()
    for row, fn in calls:  # after every timing: the profiler slows what follows
        row["kernel"] = longest_kernel(fn)
    del calls
    free_memory(dev)
    write_probe(args.out, "grouped_mm", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
