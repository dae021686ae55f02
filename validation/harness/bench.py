"""GPU measurement campaign for the reference stack (validation/harness/reference.py).

    python3 validation/harness/bench.py --out DIR --gpu NAME [--device cuda|cpu]
        [--budget-s 480] [--quick] [--only micro,steps,profile] [--models m1,m2,...]
        [--shapes-json FILE] [--kv-budget-gb G] [--profile-shapes ...] [--gemm-m ...]
        [--step-shapes mode:batch:ctx:q,...]

Writes into DIR: env.json, micro.csv, steps.csv, kernels.csv, errors.log (if any),
summary.json. CSV rows are appended and flushed as they are measured, so a killed run
leaves valid partial data and several runs (e.g. ``--only`` / ``--models`` splits) can
write into one DIR.

Order: env, launch + copy micro, steps (model by model), profile, then gemm, attention,
elementwise micro. No new measurement starts once --budget-s seconds have passed.

Imports only stdlib, numpy, yaml, torch (the GPU machine has no gpusim).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # imported from tests (run as a script, it is there already)
    sys.path.insert(0, str(HERE))

import bench_campaign as bc  # noqa: E402
import bench_micro  # noqa: E402
import bench_steps  # noqa: E402
from bench_common import GRIDS, KERNELS_COLUMNS, MICRO_COLUMNS, STEPS_COLUMNS, Ctx  # noqa: E402
from bench_timing import Clock, CsvSink, GiB, MiB  # noqa: E402

DEFAULT_MODELS = ("llama-3.2-1b", "llama-3.1-8b", "llama-2-7b", "qwen2.5-7b", "llama-3.2-3b")
PHASES = ("launch", "copy", "steps", "profile", "gemm", "attention", "elementwise")
ALIASES = {"micro": ("launch", "copy", "gemm", "attention", "elementwise")}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bc.add_run_args(p, budget_s=480.0)
    p.add_argument("--only", default="",
                   help="comma list of: micro, steps, profile, or the micro kinds "
                        "launch, copy, gemm, attention, elementwise (default: all)")
    bc.add_model_args(p, "comma list of model names (workloads/models/<name>.yaml, "
                         "--shapes-json keys, or 'tiny')")
    p.add_argument("--eager-only", action="store_true",
                   help="steps phase: measure only the eager shapes")
    bc.add_shape_args(p, "profile", "step")
    p.add_argument("--gemm-m", default="",
                   help="replace the GEMM microbenchmarks' M values: comma list of M or "
                        "first:last:step ranges (8:1024:8)")
    bc.add_kv_arg(p, "~half the GPU memory")
    return p.parse_args(argv)


def select_phases(only: str) -> list[str]:
    return bc.select_phases(only, PHASES, ALIASES)


def print_table(ctx: Ctx, summary: dict) -> None:
    bc.print_header("gpusim harness", summary)
    by_kind: dict[str, list[dict]] = {}
    for r in ctx.micro.rows:
        by_kind.setdefault(r["kind"], []).append(r)
    for r in by_kind.get("launch", []):
        print(f"  launch {r['launch']:<12} {r['name']:<16} {r['median_us']:10.2f} us")
    copies = [r for r in by_kind.get("copy", []) if r["median_us"] > 0]
    if copies:
        best = max(copies, key=lambda r: r["bytes"] / r["median_us"])
        print(f"  copy peak {best['bytes'] / best['median_us'] / 1e3:8.1f} GB/s "
              f"at {best['bytes']} B")
    for kind in ("gemm", "attention", "elementwise"):
        if by_kind.get(kind):
            print(f"  {kind}: {len(by_kind[kind])} rows")
    bc.print_steps(ctx.steps.rows, ("model", "mode", "launch"))


def main(argv: list[str] | None = None, shapes: dict[str, dict] | None = None) -> int:
    """CLI entry; ``shapes`` ({name: shape dict}) lets tests skip workloads/."""
    argv, args, budget, out = bc.start(argv, parse_args)
    phases = select_phases(args.only)
    device = bc.open_device(args.device)
    if device is None:
        return 2
    models = bc.select_models(args, shapes, DEFAULT_MODELS)

    env = bc.environment(args, argv, device, __file__)
    env["models"] = {n: vars(s) for n, s in models.items()}
    env["phases"] = phases
    if device.type == "cuda":
        grid = GRIDS["quick" if args.quick else "full"]
        l2 = int(env.get("l2_bytes") or 50 * MiB)
        mem_total = int(env["total_memory"])
    else:
        grid = GRIDS["cpu"]                # CPU: tiny shapes only, whatever --quick says
        l2, mem_total = 1 * MiB, 8 * GiB
    if args.eager_only:
        grid = dataclasses.replace(grid, dec_b=(), ver_b=(), pre=())
    if args.profile_shapes:
        grid = dataclasses.replace(grid, profile=bc.parse_steps(args.profile_shapes))
    if args.step_shapes:
        grid = dataclasses.replace(grid, dec_b=(), ver_b=(), pre=(), eager=(),
                                   graph_steps=bc.parse_steps(args.step_shapes))
    if args.gemm_m:
        grid = dataclasses.replace(grid, gemm_m=bc.parse_int_list(args.gemm_m))
    env["grid"] = grid.name
    bc.write_json(out / "env.json", env)

    ctx = Ctx(
        out=out, device=device, grid=grid, budget=budget, clock=Clock(device), models=models,
        micro=CsvSink(out / "micro.csv", MICRO_COLUMNS),
        steps=CsvSink(out / "steps.csv", STEPS_COLUMNS),
        kernels=CsvSink(out / "kernels.csv", KERNELS_COLUMNS),
        l2_bytes=l2, mem_total=mem_total, kv_budget_bytes=bc.kv_budget_arg(args.kv_budget_gb),
        micro_mem_bytes=min(16 * GiB, int(0.2 * mem_total)),
        attn_kv_bytes=min(30 * GiB, int(0.38 * mem_total)),
    )
    ctx.log(f"gpusim harness on {env.get('gpu_name') or device} ({args.gpu}), grid "
            f"{grid.name}, models {', '.join(models)}, phases {', '.join(phases)}, "
            f"budget {args.budget_s:.0f} s -> {out}")
    runners: dict[str, Callable[[Ctx], None]] = {
        "launch": bench_micro.run_launch, "copy": bench_micro.run_copy,
        "steps": bench_steps.run_steps, "profile": bench_steps.run_profile,
        "gemm": bench_micro.run_gemm,
        "attention": bench_micro.run_attention, "elementwise": bench_micro.run_elementwise,
    }
    summary = bc.run_phases(
        ctx, phases, lambda ph: ctx.guard(f"phase {ph}", lambda: runners[ph](ctx)),
        lambda done: {**bc.base_summary(ctx, done),
                      "rows": {"micro": len(ctx.micro.rows), "steps": len(ctx.steps.rows),
                               "kernels": len(ctx.kernels.rows)}},
        out / "summary.json", (ctx.micro, ctx.steps, ctx.kernels))
    print_table(ctx, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
