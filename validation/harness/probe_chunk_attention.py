"""Probe the serving engine's prompt chunks on a GPU: which attention kernel an eager
step runs for a chunk after cached tokens (its keys gathered from the paged cache,
repeated per query head, a lower-right causal mask) and for a fresh prompt, and what
each costs, over a grid of (cached tokens, new tokens).

    python3 validation/harness/probe_chunk_attention.py --out DIR \
        [--models llama-3.2-1b,llama-3.1-8b] [--lease HHMM]

Each point is one eager step of a single chunk (no decoding rows), run through the
serving engine's model runner (serve_model.ModelRunner) with its eager SDPA backends
(no-cudnn). The steps are timed first (CUDA events, median of 10), then profiled once
each (torch.profiler slows every later step of its process). Writes DIR/steps.csv
(lease, model, ctx, q, gpu_s) and DIR/kernels.csv (lease, model, ctx, q, kernel_name,
count, total_us: one profiled step's kernels, grouped by name). Needs torch (runs on
the GPU machine).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_serve_engine import load_shape  # noqa: E402
from serve_model import ModelRunner, StepInput  # noqa: E402

BLOCK = 16
CTXS = (0, 128, 512, 1024, 2048)
QS = (16, 64, 256, 512, 1024)
MAX_LEN = 3072


def chunk_input(ctx: int, q: int, base: int = 100) -> StepInput:
    """One chunk of ``q`` new tokens after ``ctx`` cached ones (ctx 0: a fresh prompt),
    its blocks ``base`` onwards; the last position sampled."""
    table = list(range(base, base + -(-(ctx + q) // BLOCK)))
    pos = list(range(ctx, ctx + q))
    return StepInput(tokens=[3] * q, positions=pos,
                     slots=[table[p // BLOCK] * BLOCK + p % BLOCK for p in pos],
                     chunks=[(ctx, q, table)], sample=[q - 1])


def kernels_of(runner: ModelRunner, inp: StepInput) -> dict[str, list[float]]:
    """Kernel name -> [count, total us] of one profiled step."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        runner.run(inp)
    out: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for e in p.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            out[e.name][0] += 1
            out[e.name][1] += e.device_time_total
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--models", default="llama-3.2-1b,llama-3.1-8b")
    ap.add_argument("--lease", default=time.strftime("%H%M", time.gmtime()))
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(a.device)
    points = [(c, q) for c in CTXS for q in QS if c + q <= MAX_LEN]
    steps, kernels = [], []
    for model in a.models.split(","):
        _, shape, _ = load_shape(model)
        runner = ModelRunner(shape, dev, torch.bfloat16, BLOCK, MAX_LEN, (), 256)
        runner.allocate_kv(4096 if dev.type == "cuda" else 600)
        for ctx, q in points:
            inp = chunk_input(ctx, q)
            for _ in range(3):
                runner.run(inp)
            ts = sorted(runner.run(inp).gpu_s for _ in range(10))
            steps.append({"lease": a.lease, "model": model, "ctx": ctx, "q": q,
                          "gpu_s": f"{ts[5]:.9f}"})
            print(model, ctx, q, f"{ts[5] * 1e3:.3f} ms", flush=True)
        if dev.type == "cuda":
            for ctx, q in points:
                for name, (n, us) in kernels_of(runner, chunk_input(ctx, q)).items():
                    kernels.append({"lease": a.lease, "model": model, "ctx": ctx, "q": q,
                                    "kernel_name": name, "count": n,
                                    "total_us": f"{us:.3f}"})
        del runner
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    for name, rows in (("steps.csv", steps), ("kernels.csv", kernels)):
        if rows:
            with (out / name).open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
    info = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "torch": torch.__version__, "models": a.models, "lease": a.lease,
            "command": " ".join(sys.argv)}
    (out / "probe.json").write_text(json.dumps(info, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
