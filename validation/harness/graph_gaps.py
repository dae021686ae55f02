"""Kernel start/end times inside CUDA-graph replays of reference.forward.

Profiles a few graph replays per step shape with torch.profiler (CUPTI reports the
kernels of a graph replay one by one) and writes, per kernel in launch order, its
name, GPU duration and the idle gap before it: graph_kernels.csv. This is the data the
eager-mode profile (bench.py --only profile) can't give: the gaps between kernels of
a replayed graph.

    python3 validation/harness/graph_gaps.py --out DIR --shapes llama-3.2-1b:decode:1:1024:1,...
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference
from bench_campaign import MODELS_DIR, load_models
from bench_steps import make_cache
from bench_timing import capture
from graph_profile import GRAPH_KERNELS_COLUMNS, profile_replays


def _step(w: reference.Weights, cache: reference.KVCache, tokens: torch.Tensor, ctx: int,
          mode: str, mask: object):
    return lambda: reference.forward(w, cache, tokens, ctx, mode, mask)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--shapes", required=True, help="model:mode:batch:ctx:q,...")
    p.add_argument("--replays", type=int, default=3)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shapes = [s.split(":") for s in args.shapes.split(",")]
    models = load_models(sorted({s[0] for s in shapes}), {}, MODELS_DIR)
    with (out / "graph_kernels.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, GRAPH_KERNELS_COLUMNS)
        w.writeheader()
        weights = {}
        for model, mode, b, c, q in shapes:
            b, c, q = int(b), int(c), int(q)
            shape = models[model]
            if model not in weights:
                weights.clear()
                torch.cuda.empty_cache()
                weights[model] = reference.Weights(shape, "cuda", torch.bfloat16)
            wts = weights[model]
            cache = make_cache(shape, b, c + q, torch.device("cuda"), torch.bfloat16)
            tokens = torch.randint(0, shape.vocab_size, (b, q), device="cuda")
            mask = reference.verify_mask(q, c + q) if mode == "verify" else None
            g = capture(_step(wts, cache, tokens, c, mode, mask))
            per_replay = profile_replays(g.replay, args.replays)
            for rows in per_replay:
                for row in rows:
                    w.writerow({"model": model, "mode": mode, "batch": b, "ctx": c, "q": q,
                                **row})
            n = len(per_replay[0])
            print(f"{model} {mode} b={b} ctx={c} q={q}: {n} kernels per replay", flush=True)
            g = cache = None
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
