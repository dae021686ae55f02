"""Probe the serving engine's piecewise mixed steps on a GPU (serve_pieces.py): each
composition's GPU span (median of 10 CUDA-event timings), then the kernels of a few
under torch.profiler (last: the profiler slows what follows it in a process).

    python3 validation/harness/probe_piecewise.py --out DIR [--model llama-3.2-1b]

Writes DIR/<model>/probe.json and DIR/<model>/kernels_<composition>.csv. Needs torch
(runs on the GPU machine).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_serve_engine import load_shape  # noqa: E402
from probe_serve_steps import mixed_input, profile  # noqa: E402
from serve_model import ModelRunner  # noqa: E402

# (decode rows, their cached tokens, fresh prompt tokens)
TIMED = ((0, 0, 500), (1, 1023, 500), (2, 1023, 500), (8, 1023, 500), (32, 1023, 500),
         (2, 2047, 500), (8, 2047, 500), (2, 1023, 100), (8, 1023, 100), (64, 1023, 64),
         (0, 0, 1000), (4, 1023, 1000))
PROFILED = ((0, 0, 500), (2, 1023, 500), (8, 2047, 500))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="llama-3.2-1b")
    a = p.parse_args()
    out = Path(a.out) / a.model
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda")
    _, shape, _ = load_shape(a.model)
    runner = ModelRunner(shape, dev, torch.bfloat16, 16, 3072, (1,), 256,
                         piecewise_sizes=(128, 512, 1024, 1536))
    runner.allocate_kv(8192)
    runner.capture_all()
    res: dict = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__,
                 "model": a.model, "timed": []}
    for b, ctx, q in TIMED:
        inp = mixed_input(b, ctx, q, 16)
        runner.run(inp)
        ts = sorted(runner.run(inp).gpu_s for _ in range(10))
        row = {"decode": b, "ctx": ctx, "q": q, "gpu_s": ts[5], "min_s": ts[0]}
        res["timed"].append(row)
        print(row, flush=True)
    for b, ctx, q in PROFILED:
        res[f"profile_{b}x{ctx}_q{q}"] = profile(runner, mixed_input(b, ctx, q, 16),
                                               out / f"kernels_{b}x{ctx}_q{q}.csv")
    (out / "probe.json").write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
