"""Probe hf-transformers' captured prefill at several static-cache lengths.

The stacks campaign measured the same captured prefill of transformers' LlamaForCausalLM
9-31% slower with a 4097-position static cache than with a 4100-position one, while
decode at both lengths agreed within 2%. Under CUDA-graph capture the library builds an
attention mask over the whole cache, [batch, 1, q, cache_len], so the mask's row length
is the cache length; this probe times the captured step (median of CUDA-event-timed
replays) at each ``--cache-lens`` entry and lists the kernels of its replays under
torch.profiler (CUPTI reports a graph replay's kernels one by one), in a fresh cache
per length, one model at a time.

    python3 validation/harness/probe_hf_prefill.py --out DIR
        [--models llama-3.2-1b,llama-3.1-8b] [--cache-lens 4097,4098,4100,4104,4112]
        [--qs 512,2048] [--replays 3]

Writes DIR/steps.csv (model, q, cache_len, median_ms, p10_ms, p90_ms, repeats),
DIR/kernels.csv (model, q, cache_len, kernel_name, count, total_us: per replay) and
DIR/env.json. Needs torch and transformers (the GPU machine).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_campaign import MODELS_DIR, load_models  # noqa: E402
from bench_timing import capture  # noqa: E402
from stacks_forward import HfStack  # noqa: E402


def time_replays(g: torch.cuda.CUDAGraph, n: int = 15) -> list[float]:
    """Milliseconds of ``n`` replays, each between two CUDA events."""
    out = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b))
    return out


def kernels_of(g: torch.cuda.CUDAGraph, replays: int) -> dict[str, list[float]]:
    """kernel name -> [count, total_us] per replay, over ``replays`` replays."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            g.replay()
            torch.cuda.synchronize()
    agg: dict[str, list[float]] = {}
    for e in prof.events():
        if e.device_type == DeviceType.CUDA and " Sync" not in e.name:
            a = agg.setdefault(e.name, [0, 0.0])
            a[0] += 1 / replays
            a[1] += e.time_range.elapsed_us() / replays
    return agg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--models", default="llama-3.2-1b,llama-3.1-8b")
    p.add_argument("--cache-lens", default="4097,4098,4100,4104,4112")
    p.add_argument("--qs", default="512,2048")
    p.add_argument("--replays", type=int, default=3)
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    import transformers
    env = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "transformers": transformers.__version__,
           "command": " ".join(sys.argv)}
    (out / "env.json").write_text(json.dumps(env, indent=1) + "\n")
    stack = HfStack()
    models = load_models(a.models.split(","), {}, MODELS_DIR)
    lens = [int(x) for x in a.cache_lens.split(",")]
    qs = [int(x) for x in a.qs.split(",")]
    with (out / "steps.csv").open("w", newline="") as fs, \
            (out / "kernels.csv").open("w", newline="") as fk:
        ws, wk = csv.writer(fs), csv.writer(fk)
        ws.writerow(["model", "q", "cache_len", "median_ms", "p10_ms", "p90_ms", "repeats"])
        wk.writerow(["model", "q", "cache_len", "kernel_name", "count", "total_us"])
        for name, shape in models.items():
            m = stack.load(shape, torch.device("cuda"), torch.bfloat16)
            for n in lens:
                cache = stack.new_cache(m, 1, n, torch.device("cuda"), torch.bfloat16)
                for q in qs:
                    g = capture(stack.step(m, cache, "prefill", 1, 0, q))
                    for _ in range(3):
                        g.replay()
                    ts = sorted(time_replays(g))
                    ws.writerow([name, q, n, f"{ts[len(ts) // 2]:.5f}",
                                 f"{ts[len(ts) // 10]:.5f}", f"{ts[-1 - len(ts) // 10]:.5f}",
                                 len(ts)])
                    fs.flush()
                    agg = kernels_of(g, a.replays)
                    for k, (c, us) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
                        wk.writerow([name, q, n, k, f"{c:g}", f"{us:.3f}"])
                    fk.flush()
                    print(f"{name} q={q} cache={n}: {ts[len(ts) // 2]:.3f} ms, "
                          f"{sum(v[0] for v in agg.values()):.0f} kernels", flush=True)
                    del g
                del cache
                torch.cuda.empty_cache()
            del m
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
