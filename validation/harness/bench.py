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
import datetime as dt
import json
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # imported from tests (run as a script, it is there already)
    sys.path.insert(0, str(HERE))

import bench_micro  # noqa: E402
import bench_steps  # noqa: E402
from bench_common import (  # noqa: E402
    GRIDS,
    KERNELS_COLUMNS,
    MICRO_COLUMNS,
    STEPS_COLUMNS,
    Ctx,
)
from bench_timing import Budget, Clock, CsvSink, GiB, MiB, Policy  # noqa: E402
from reference import Shape  # noqa: E402

DEFAULT_MODELS = ("llama-3.2-1b", "llama-3.1-8b", "llama-2-7b", "qwen2.5-7b", "llama-3.2-3b")
MODELS_DIR = HERE.parents[1] / "workloads" / "models"
TINY = {  # built in, for CPU runs: --models tiny
    "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128, "vocab_size": 256,
    "tie_word_embeddings": False, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
}
PHASES = ("launch", "copy", "steps", "profile", "gemm", "attention", "elementwise")
ALIASES = {"micro": ("launch", "copy", "gemm", "attention", "elementwise")}


def parse_steps(text: str) -> tuple[tuple[str, int, int, int], ...]:
    """``"decode:8:1024:1,verify:4:512:2"`` -> ((mode, batch, ctx, q), ...). Raises
    ValueError for an item that is not mode:batch:ctx:q."""
    out = []
    for item in text.split(","):
        parts = item.split(":")
        if len(parts) != 4:
            raise ValueError(f"{item!r}: expected mode:batch:ctx:q")
        out.append((parts[0], int(parts[1]), int(parts[2]), int(parts[3])))
    return tuple(out)


def parse_int_list(text: str) -> tuple[int, ...]:
    """``"1,2,8:32:8"`` -> (1, 2, 8, 16, 24, 32): comma list of ints and inclusive
    first:last:step ranges, sorted, without repeats. Raises ValueError."""
    out: set[int] = set()
    for item in text.split(","):
        parts = [int(p) for p in item.split(":")]
        if len(parts) == 1:
            out.add(parts[0])
        elif len(parts) == 3 and parts[2] > 0:
            out.update(range(parts[0], parts[1] + 1, parts[2]))
        else:
            raise ValueError(f"{item!r}: expected an int or first:last:step")
    if not out or min(out) < 1:
        raise ValueError(f"{text!r}: expected positive ints")
    return tuple(sorted(out))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output directory (created; appended to)")
    p.add_argument("--gpu", required=True, help="GPU name as the project calls it (h100-sxm)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--budget-s", type=float, default=480.0,
                   help="no new measurement starts after this many seconds")
    p.add_argument("--quick", action="store_true", help="tiny grid (sanity run)")
    p.add_argument("--only", default="",
                   help="comma list of: micro, steps, profile, or the micro kinds "
                        "launch, copy, gemm, attention, elementwise (default: all)")
    p.add_argument("--models", default="",
                   help="comma list of model names (workloads/models/<name>.yaml, "
                        "--shapes-json keys, or 'tiny')")
    p.add_argument("--shapes-json", default=None,
                   help="JSON file {name: {hidden_size: ..., ...}} of model shapes")
    p.add_argument("--models-dir", default=str(MODELS_DIR))
    p.add_argument("--eager-only", action="store_true",
                   help="steps phase: measure only the eager shapes")
    p.add_argument("--profile-shapes", default="",
                   help="replace the profiled steps: comma list of mode:batch:ctx:q")
    p.add_argument("--step-shapes", default="",
                   help="replace the steps grid by these CUDA-graph steps: comma list of "
                        "mode:batch:ctx:q")
    p.add_argument("--gemm-m", default="",
                   help="replace the GEMM microbenchmarks' M values: comma list of M or "
                        "first:last:step ranges (8:1024:8)")
    p.add_argument("--kv-budget-gb", type=float, default=None,
                   help="KV cache bytes per model in steps (default: ~half the GPU memory)")
    return p.parse_args(argv)


def select_phases(only: str) -> list[str]:
    if not only.strip():
        return list(PHASES)
    want: set[str] = set()
    for tok in (t.strip() for t in only.split(",") if t.strip()):
        if tok in ALIASES:
            want.update(ALIASES[tok])
        elif tok in PHASES:
            want.add(tok)
        else:
            raise SystemExit(f"--only: unknown phase {tok!r} (known: micro, {', '.join(PHASES)})")
    return [ph for ph in PHASES if ph in want]


def load_models(names: list[str], shapes: dict[str, dict], models_dir: Path
                ) -> dict[str, Shape]:
    import yaml
    out = {}
    for name in names:
        if name in shapes:
            cfg = shapes[name]
        elif name == "tiny":
            cfg = TINY
        else:
            path = models_dir / f"{name}.yaml"
            if not path.exists():
                raise SystemExit(f"model {name!r}: no {path}")
            cfg = yaml.safe_load(path.read_text())
        out[name] = Shape.from_dict(cfg)
    return out


def _nvidia_smi() -> dict | None:
    q = "driver_version,clocks.sm,clocks.mem,clocks.max.sm,clocks.max.mem,power.limit"
    try:
        r = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv"],
                           capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        return {"error": repr(e)}
    lines = [ln.strip() for ln in r.stdout.splitlines() if ln.strip()]
    if r.returncode != 0 or len(lines) < 2:
        return {"error": f"rc={r.returncode}", "stdout": r.stdout, "stderr": r.stderr[-2000:]}
    keys = [k.strip() for k in lines[0].split(",")]
    gpus = [dict(zip(keys, (v.strip() for v in ln.split(",")), strict=False))
            for ln in lines[1:]]
    return {"raw": lines, "gpus": gpus}


def _sdpa_backends() -> dict[str, object]:
    b = torch.backends.cuda
    out: dict[str, object] = {}
    for name in ("flash_sdp_enabled", "mem_efficient_sdp_enabled", "math_sdp_enabled",
                 "cudnn_sdp_enabled"):
        fn = getattr(b, name, None)
        out[name] = bool(fn()) if fn else None
    fn = getattr(b, "is_flash_attention_available", None)
    out["is_flash_attention_available"] = bool(fn()) if fn else None
    return out


def environment(args: argparse.Namespace, argv: list[str], device: torch.device) -> dict:
    env: dict[str, object] = {
        "gpu": args.gpu,
        "device": str(device),
        "utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017 (py3.10)
        "hostname": socket.gethostname(),
        "command": [sys.executable, str(Path(__file__)), *argv],
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "numpy": __import__("numpy").__version__,
        "sdpa_backends": _sdpa_backends(),
        "quick": args.quick,
        "budget_s": args.budget_s,
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(0)
        free, _ = torch.cuda.mem_get_info()
        env.update({
            "gpu_name": torch.cuda.get_device_name(0),
            "sm_count": p.multi_processor_count,
            "l2_bytes": getattr(p, "L2_cache_size", None),
            "total_memory": p.total_memory,
            "free_memory_at_start": free,
            "compute_capability": f"{p.major}.{p.minor}",
            "nvidia_smi": _nvidia_smi(),
        })
    else:
        env.update({"gpu_name": None, "cpu": platform.processor() or platform.machine()})
    return env


def _summary(ctx: Ctx, phases_done: list[str], elapsed: float) -> dict:
    return {
        "elapsed_s": round(elapsed, 1),
        "budget_s": ctx.budget.seconds,
        "stopped_by_budget": ctx.budget.hit,
        "phases_run": phases_done,
        "rows": {"micro": len(ctx.micro.rows), "steps": len(ctx.steps.rows),
                 "kernels": len(ctx.kernels.rows)},
        "errors": ctx.n_errors,
        "skipped": ctx.skipped,
        "nvidia_smi_end": _nvidia_smi() if ctx.cuda else None,
    }


def print_table(ctx: Ctx, summary: dict) -> None:
    print(f"gpusim harness: {summary['elapsed_s']} s, budget {summary['budget_s']:.0f} s"
          f"{' (stopped by budget)' if summary['stopped_by_budget'] else ''}, "
          f"{summary['errors']} errors, {len(summary['skipped'])} shapes skipped")
    print(f"rows: micro {summary['rows']['micro']}, steps {summary['rows']['steps']}, "
          f"kernels {summary['rows']['kernels']}")
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
    if ctx.steps.rows:
        print(f"  {'model':<16} {'mode':<8} {'launch':<6} {'rows':>4} "
              f"{'min ms':>9} {'max ms':>9}")
        groups: dict[tuple, list[float]] = {}
        for r in ctx.steps.rows:
            groups.setdefault((r["model"], r["mode"], r["launch"]), []).append(r["median_ms"])
        for (m, mode, launch), v in groups.items():
            print(f"  {m:<16} {mode:<8} {launch:<6} {len(v):>4} {min(v):9.3f} {max(v):9.3f}")


def main(argv: list[str] | None = None, shapes: dict[str, dict] | None = None) -> int:
    """CLI entry; ``shapes`` ({name: shape dict}) lets tests skip workloads/."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    phases = select_phases(args.only)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2

    shapes = dict(shapes or {})
    if args.shapes_json:
        shapes.update(json.loads(Path(args.shapes_json).read_text()))
    if args.models:
        names = [m.strip() for m in args.models.split(",") if m.strip()]
    elif shapes:
        names = list(shapes)
    else:
        names = ["tiny"] if device.type == "cpu" else list(DEFAULT_MODELS)
    models = load_models(names, shapes, Path(args.models_dir))

    env = environment(args, argv, device)
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
        grid = dataclasses.replace(grid, profile=parse_steps(args.profile_shapes))
    if args.step_shapes:
        grid = dataclasses.replace(grid, dec_b=(), ver_b=(), pre=(), eager=(),
                                   graph_steps=parse_steps(args.step_shapes))
    if args.gemm_m:
        grid = dataclasses.replace(grid, gemm_m=parse_int_list(args.gemm_m))
    env["grid"] = grid.name
    (out / "env.json").write_text(json.dumps(env, indent=2, default=str) + "\n")

    ctx = Ctx(
        out=out, device=device, grid=grid, budget=budget, clock=Clock(device),
        policy=Policy(), models=models,
        micro=CsvSink(out / "micro.csv", MICRO_COLUMNS),
        steps=CsvSink(out / "steps.csv", STEPS_COLUMNS),
        kernels=CsvSink(out / "kernels.csv", KERNELS_COLUMNS),
        l2_bytes=l2, mem_total=mem_total,
        kv_budget_bytes=None if args.kv_budget_gb is None else int(args.kv_budget_gb * GiB),
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
    done = []
    t0 = time.monotonic()
    try:
        for ph in phases:
            if ctx.stop():
                break
            ctx.guard(f"phase {ph}", lambda ph=ph: runners[ph](ctx))
            done.append(ph)
    finally:
        summary = _summary(ctx, done, budget.elapsed())
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        for sink in (ctx.micro, ctx.steps, ctx.kernels):
            sink.close()
    ctx.log(f"done in {time.monotonic() - t0:.1f} s")
    print_table(ctx, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
