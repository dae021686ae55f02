"""Probe: the torch-fp8 stack's projections, one at a time, over the token count.

    python3 validation/harness/probe_scaled_mm.py --out DIR [--models M,...] [--ms 1,2,...]

For each model's four projection weights (qkv, o, gate_up, down) and each token count
m: CUDA-graph replays of (a) ``torch._scaled_mm`` alone on an fp8 activation padded to
16 rows, as quant_forward.Fp8Linear runs it, and (b) the whole Fp8Linear call (pad,
abs, amax, scale, cast, GEMM). Each replay runs the call over a ring of weight copies
larger than L2, as a step's layers do, and is divided by the ring's length. Then each
shape's GEMM kernel name under torch.profiler (last: the profiler slows what follows).
Writes DIR/scaled_mm.csv (model, weight, n, k, m, gemm_us, linear_us, kernel) and
DIR/scaled_mm_env.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import bench_campaign as bc  # noqa: E402
from bench_timing import Clock, Policy, free_memory, measure, stats  # noqa: E402
from probe_common import longest_kernel, write_probe  # noqa: E402
from quant_forward import Fp8Linear  # noqa: E402

MS = "1,2,4,8,16,24,32,48,64,96,128,192,256,512"
RING_BYTES = 256 << 20   # weights per replay: well past L2


def _weights(shape: object) -> dict[str, tuple[int, int]]:
    """(n, k) of the four projections of a Llama-shaped model."""
    h, i, hd = shape.hidden_size, shape.intermediate_size, shape.d  # type: ignore[attr-defined]
    q = shape.num_attention_heads * hd  # type: ignore[attr-defined]
    kv = shape.num_key_value_heads * hd  # type: ignore[attr-defined]
    return {"qkv": (q + 2 * kv, h), "o": (h, q), "gate_up": (2 * i, h), "down": (h, i)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--models", default="llama-3.2-1b,llama-3.1-8b")
    ap.add_argument("--ms", default=MS, help="token counts, comma-separated")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    dev, dtype = torch.device("cuda"), torch.bfloat16
    clock, policy = Clock(dev), Policy(warmup=3, target=15, min_reps=5, max_s=0.4)
    ms = [int(x) for x in args.ms.split(",")]
    shapes = bc.load_models(args.models.split(","), {}, bc.MODELS_DIR)
    rows: list[dict[str, object]] = []
    probes: list[tuple[dict[str, object], object]] = []
    gen = torch.Generator(device=dev).manual_seed(0)
    for model, shape in shapes.items():
        for weight, (n, k) in _weights(shape).items():
            ring = max(2, -(-RING_BYTES // (n * k)))      # fp8: a byte per element
            lins = [Fp8Linear.from_weight(torch.randn((n, k), generator=gen, device=dev,
                                                      dtype=dtype) * 0.02)
                    for _ in range(ring)]
            for m in ms:
                x = torch.randn((m, k), generator=gen, device=dev, dtype=dtype)
                mp = -(-m // 16) * 16
                xq = torch.randn((mp, k), generator=gen, device=dev,
                                 dtype=dtype).to(torch.float8_e4m3fn)
                one = torch.ones((), device=dev, dtype=torch.float32)

                def gemm(xq: torch.Tensor = xq, lins: list = lins,
                         one: torch.Tensor = one) -> None:
                    for lin in lins:
                        torch._scaled_mm(xq, lin.wq.t(), scale_a=one, scale_b=lin.w_scale,
                                         out_dtype=dtype)

                def linear(x: torch.Tensor = x, lins: list = lins) -> None:
                    for lin in lins:
                        lin(x)

                g = stats(measure(clock, gemm, policy, graph=True, inner=ring), 1e6)
                lin_st = stats(measure(clock, linear, policy, graph=True, inner=ring), 1e6)
                row: dict[str, object] = {"model": model, "weight": weight, "n": n, "k": k,
                                          "m": m, "ring": ring,
                                          "gemm_us": round(g["median"], 3),
                                          "linear_us": round(lin_st["median"], 3)}
                rows.append(row)
                probes.append((row, lambda xq=xq, lin=lins[0], one=one: torch._scaled_mm(
                    xq, lin.wq.t(), scale_a=one, scale_b=lin.w_scale, out_dtype=dtype)))
                print(row, flush=True)
            free_memory(dev)
    for row, fn in probes:  # after every timing: the profiler slows what follows
        row["kernel"] = longest_kernel(fn)
    write_probe(args.out, "scaled_mm", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
