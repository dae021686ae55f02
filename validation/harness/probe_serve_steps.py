"""Probe the serving engine's step kinds on a GPU: which kernels a decode step and a
mixed step launch (torch.profiler), what a padded decode graph costs against its
gathered bytes, and whether a prefill chunk of a never-seen length pays a one-off
cost (cuDNN building an execution plan for a new SDPA shape), with and without cuDNN's
SDPA backend.

    python3 validation/harness/probe_serve_steps.py --out DIR [--model llama-3.2-1b]

Writes DIR/probe.json and DIR/kernels_*.csv. Needs torch (runs on the GPU machine).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_serve_engine import load_shape  # noqa: E402
from serve_model import ModelRunner, StepInput  # noqa: E402


def decode_input(b: int, ctx: int, bs: int, base: int, ragged: bool = False) -> StepInput:
    """``b`` decoding rows at ``ctx`` cached tokens each; ``ragged``: row i at
    ``(ctx + 1) * (i + 1) // b - 1`` instead (the longest still at ``ctx``), as a
    serving batch's rows differ, so that the padded gather reads short rows' padding."""
    ctxs = [(ctx + 1) * (i + 1) // b - 1 if ragged else ctx for i in range(b)]
    blocks = -(-(ctx + 1) // bs)
    tables = [[(base + i * blocks + j) % 3000 for j in range(-(-(c + 1) // bs))]
              for i, c in enumerate(ctxs)]
    return StepInput(tokens=[1] * b, positions=ctxs,
                     slots=[t[c // bs] * bs + c % bs for t, c in zip(tables, ctxs, strict=True)],
                     decode_tables=tables, decode_keys=[c + 1 for c in ctxs],
                     sample=list(range(b)))


def mixed_input(b: int, ctx: int, q: int, bs: int) -> StepInput:
    inp = decode_input(b, ctx, bs, 0) if b else StepInput([], [], [])
    base = 4000
    table = list(range(base, base + -(-q // bs)))
    inp.tokens += [2] * q
    inp.positions += list(range(q))
    inp.slots += [table[p // bs] * bs + p % bs for p in range(q)]
    inp.chunks.append((0, q, table))
    inp.sample.append(len(inp.tokens) - 1)
    return inp


def profile(runner: ModelRunner, inp: StepInput, path: Path) -> dict:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof
    runner.run(inp)
    with prof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        t0 = time.perf_counter()
        out = runner.run(inp)
        wall = time.perf_counter() - t0
    rows = [(e.name, e.device_time_total if hasattr(e, "device_time_total") else 0.0)
            for e in p.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["kernel", "us"])
        w.writerows(rows)
    return {"kernels": len(rows), "gpu_s": out.gpu_s, "wall_s": wall,
            "kernel_us_sum": sum(r[1] for r in rows)}


def profile_graphs(runner: ModelRunner, spec: str, out: Path, res: dict) -> int:
    """Each ``rows x keys`` decode graph: its replay's GPU time (median of 20) and its
    kernels under torch.profiler (CUPTI lists a graph replay's kernels one by one)."""
    for item in spec.split(","):
        ragged = item.endswith("r")
        pad, k = (int(x) for x in item.rstrip("r").split("x"))
        if pad not in runner.capture_sizes:
            runner.capture_sizes = tuple(sorted({*runner.capture_sizes, pad}))
        inp = decode_input(pad, k - 1, 16, 0, ragged)
        runner.run(inp)
        ts = sorted(runner.run(inp).gpu_s for _ in range(20))
        res[f"graph_{item}"] = {"gpu_s": ts[10], "decode_keys": sum(inp.decode_keys), **profile(
            runner, inp, out / f"kernels_graph_{item}.csv")}
        print(item, res[f"graph_{item}"], flush=True)
    (out / "probe.json").write_text(json.dumps(res, indent=1) + "\n")
    return 0


def parse_mixed(item: str) -> tuple[int, int, int]:
    """(decoding rows, their cached tokens, fresh prompt tokens) of a mixed step written
    ``ROWSxCACHED+PROMPT`` (``4x1023+700``; ``0x0+700``: a prefill alone). Raises
    ValueError for another form."""
    head, q = item.split("+")
    b, ctx = (int(x) for x in head.split("x"))
    return b, ctx, int(q)


def timed_step(runner: ModelRunner, inp: StepInput) -> tuple[float, float]:
    """(GPU span, wall) of one step: the wall from a synchronised start to its sampled
    tokens on the host (which waits for the whole step)."""
    if runner.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = runner.run(inp)
    return out.gpu_s, time.perf_counter() - t0


def profile_eager(runner: ModelRunner, spec: str, out: Path, res: dict) -> int:
    """Each eager mixed step of ``spec`` (comma list, ``parse_mixed``'s form): its wall
    and GPU time (medians of 10, no profiler), then its kernels under torch.profiler
    (last for each step: the profiler slows what follows);
    ``kernels_eager_4x1023_q700.csv``."""
    runner.capture_sizes = ()
    items = [(item, *parse_mixed(item)) for item in spec.split(",")]
    for item, b, ctx, q in items:
        inp = mixed_input(b, ctx, q, 16)
        runner.run(inp)
        gpus, walls = zip(*(timed_step(runner, inp) for _ in range(10)), strict=True)
        res[f"eager_{item}"] = {"decode": b, "ctx": ctx, "q": q,
                                "wall_s": sorted(walls)[5], "gpu_s": sorted(gpus)[5]}
        print(item, res[f"eager_{item}"], flush=True)
    for item, b, ctx, q in items:
        name = item.replace("+", "_q")   # the device machine's file return refuses "+"
        res[f"eager_{item}"]["profiled"] = profile(
            runner, mixed_input(b, ctx, q, 16), out / f"kernels_eager_{name}.csv")
    (out / "probe.json").write_text(json.dumps(res, indent=1) + "\n")
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="llama-3.2-1b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--graph-profiles", default="",
                   help="only profile these decode graphs' replays (rows x keys, comma "
                        "list, e.g. 16x2048,32x1536; a trailing r: rows of rising "
                        "lengths up to the keys, e.g. 32x2304r): kernels_graph_<item>.csv")
    p.add_argument("--eager-profiles", default="",
                   help="only time and profile these eager mixed steps (decode rows x "
                        "their cached tokens + prompt tokens, comma list, e.g. "
                        "4x1023+700,0x0+900): kernels_eager_<item>.csv")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(a.device)
    _, shape, _ = load_shape(a.model)
    runner = ModelRunner(shape, dev, torch.bfloat16, 16, 3072, (1, 16, 256), 256)
    runner.allocate_kv(16384 if dev.type == "cuda" else 5000)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    res: dict = {"device": name, "torch": torch.__version__, "model": a.model}
    if a.graph_profiles:
        return profile_graphs(runner, a.graph_profiles, out, res)
    if a.eager_profiles:
        return profile_eager(runner, a.eager_profiles, out, res)
    # decode graphs: time against the padded gather
    graphs = {}
    for pad, k in ((1, 1024), (16, 1024), (16, 2304), (256, 2304), (256, 3072)):
        inp = decode_input(pad, k - 1, 16, 0)
        runner.run(inp)
        ts = [runner.run(inp).gpu_s for _ in range(20)]
        graphs[f"{pad}x{k}"] = sorted(ts)[10]
    res["graph_decode_gpu_s"] = graphs
    # eager kernel lists (the graph's kernels as it captured them, and a mixed step)
    runner.capture_sizes = ()
    res["decode_eager_16x1024"] = profile(runner, decode_input(16, 1023, 16, 0),
                                          out / "kernels_decode_16x1024.csv")
    res["mixed_4x1024_q500"] = profile(runner, mixed_input(4, 1023, 500, 16),
                                       out / "kernels_mixed_4x1024_q500.csv")
    res["prefill_q700"] = profile(runner, mixed_input(0, 0, 700, 16),
                                  out / "kernels_prefill_q700.csv")
    # new shapes: a fresh chunk of a never-seen length, then the same again
    for label, cudnn in (("cudnn_on", True), ("cudnn_off", False)):
        torch.backends.cuda.enable_cudnn_sdp(cudnn)
        rows = []
        for q in (301, 302, 303, 1301, 1302):
            first = runner.run(mixed_input(0, 0, q, 16))
            again = runner.run(mixed_input(0, 0, q, 16))
            rows.append({"q": q, "first_gpu_s": first.gpu_s, "again_gpu_s": again.gpu_s})
        for b in (3, 5, 7):   # a mixed step's decode part at an unpadded batch
            first = runner.run(mixed_input(b, 1023, 64, 16))
            again = runner.run(mixed_input(b, 1023, 64, 16))
            rows.append({"decode_b": b, "first_gpu_s": first.gpu_s,
                         "again_gpu_s": again.gpu_s})
        res[f"new_shapes_{label}"] = rows
    torch.backends.cuda.enable_cudnn_sdp(True)
    (out / "probe.json").write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
