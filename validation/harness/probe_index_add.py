"""Probe: an MoE layer's combine (scale, zeros, index_add_) at controlled slot counts.

    python3 validation/harness/probe_index_add.py --out DIR [--hidden 2048,4096]
        [--tokens 8,16,...] [--topk 1,2,8] [--dtypes bfloat16,float32]

A routed MoE layer adds each token's top-k expert rows back into the token's row with
``index_add_`` (atomic adds; moe_forward.py's combine). Here T tokens of width h each get
k slots, in a random order as the expert sort leaves them, so the kernel's atomics on a
token row collide k ways. Each case runs the combine as a step does (the slot rows
scaled by their routing weight, a zeroed output, then index_add_) 20 times under
torch.profiler, and records each kernel's median time by name: with k = 1 the atomics
never collide, so k = 1, 2, 8 separate the atomics' own rate from the collisions' and
from the bytes moved. Writes DIR/index_add.csv (dtype, hidden, tokens, topk, slots,
kernel, calls, median/p10/p90 us) and DIR/index_add_env.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from probe_common import write_probe  # noqa: E402

TOKENS = "1,2,4,8,16,32,64,128,256,512,1024,2048"
REPEATS = 20


def combine(src: torch.Tensor, weight: torch.Tensor, idx: torch.Tensor,
            tokens: int) -> torch.Tensor:
    """moe_forward.py's combine: slot rows times their routing weight, added into a
    zeroed [tokens, h] by token id."""
    out = torch.zeros((tokens, src.shape[1]), device=src.device, dtype=src.dtype)
    return out.index_add_(0, idx, src * weight[:, None])


def _quantiles(us: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(us, n=10) if len(us) > 1 else [us[0]] * 9
    return statistics.median(us), q[0], q[-1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--hidden", default="2048,4096")
    ap.add_argument("--tokens", default=TOKENS)
    ap.add_argument("--topk", default="1,2,8")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    from torch.profiler import ProfilerActivity, profile

    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    cases = [(getattr(torch, d), int(h), int(t), int(k))
             for d in args.dtypes.split(",") for h in args.hidden.split(",")
             for t in args.tokens.split(",") for k in args.topk.split(",")]
    rows: list[dict[str, object]] = []
    for dtype, h, t, k in cases:
        slots = t * k
        src = torch.randn((slots, h), generator=gen, device=dev, dtype=dtype)
        weight = torch.rand((slots,), generator=gen, device=dev, dtype=dtype)
        perm = torch.randperm(slots, generator=gen, device=dev)
        idx = torch.arange(t, device=dev).repeat_interleave(k)[perm].contiguous()
        for _ in range(3):
            combine(src, weight, idx, t)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(REPEATS):
                combine(src, weight, idx, t)
            torch.cuda.synchronize()
        by_name: dict[str, list[float]] = {}
        for e in prof.events():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                by_name.setdefault(e.name, []).append(e.time_range.elapsed_us())
        for name, us in sorted(by_name.items()):
            med, p10, p90 = _quantiles(us)
            row: dict[str, object] = {
                "dtype": str(dtype).removeprefix("torch."), "hidden": h, "tokens": t,
                "topk": k, "slots": slots, "kernel": name, "calls": len(us),
                "median_us": round(med, 3), "p10_us": round(p10, 3),
                "p90_us": round(p90, 3)}
            rows.append(row)
            print(row, flush=True)
        del src, weight, idx
    write_probe(args.out, "index_add", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
