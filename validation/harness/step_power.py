"""Do whole forward steps slow down when run back to back (the GPU's power cap)?

    python validation/harness/step_power.py [model:mode:batch:ctx:q ...]
        (writes $OUT/step_power.csv and $OUT/step_power_samples.csv)

For each step shape (CUDA graph of ``reference.forward``, random weights and KV): idle
1.5 s (the SM clock recovers), then replay it for 2 s, each replay timed with CUDA
events and a synchronize, as ``bench_steps`` times steps. The first replays run at the
idle clock; the later ones at whatever clock the power manager settles on. nvidia-smi
samples the SM clock, power and throttle reasons throughout (``power_probe.Sampler``).

On a machine without a GPU: ``--cpu`` runs the built-in tiny model a few times (a
check that the script runs).
"""

from __future__ import annotations

import csv
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference
from bench_campaign import load_models
from bench_timing import Clock, capture
from power_probe import Sampler

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(os.environ.get("OUT", "."))
IDLE_S, RUN_S = 1.5, 2.0
DEFAULT = (
    "llama-3.1-8b:verify:64:4096:2", "llama-3.1-8b:verify:64:4096:9",
    "llama-3.1-8b:verify:16:4096:2", "llama-3.1-8b:verify:64:512:9",
    "llama-3.1-8b:decode:64:4096:1", "llama-3.1-8b:decode:1:1024:1",
    "llama-3.1-8b:prefill:1:0:4096", "llama-3.2-1b:verify:64:4096:2",
    "llama-3.2-3b:verify:64:4096:2", "qwen2.5-7b:verify:64:4096:2",
    "qwen2.5-7b:verify:64:512:7", "qwen2.5-7b:verify:64:1024:9")


class Cache:
    """A view of a larger static KV cache: ``batch`` sequences (``reference.forward``
    reads only ``k`` and ``v``)."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, batch: int):
        self.k, self.v = k[:, :batch], v[:, :batch]


def parse(items: list[str]) -> list[tuple[str, str, int, int, int]]:
    """``model:mode:batch:ctx:q`` items -> (model, mode, batch, ctx, q) tuples."""
    out = []
    for it in items:
        m, mode, b, c, q = it.split(":")
        out.append((m, mode, int(b), int(c), int(q)))
    return out


def run_shape(w: reference.Weights, cache: Cache, mode: str, b: int, c: int, q: int,
              dev: torch.device, idle_s: float, run_s: float
              ) -> tuple[float, list[tuple[float, float]]]:
    """(Unix time of the first replay, [(s since the first replay, ms)] of each replay
    of the step's graph); the Unix time aligns the replays with nvidia-smi's samples."""
    tokens = torch.randint(0, w.shape.vocab_size, (b, q), device=dev)
    mask = reference.verify_mask(q, c + q) if mode == "verify" else None

    def step() -> None:
        reference.forward(w, cache, tokens, c, mode, mask)

    clock = Clock(dev)  # CUDA events and a synchronize per replay, as bench_steps times
    fn = capture(step).replay if clock.cuda else step
    clock.sync()
    time.sleep(idle_s)
    out: list[tuple[float, float]] = []
    t0 = time.time()
    while time.time() - t0 < run_s or len(out) < 3:
        ms = clock.time(fn) * 1e3
        out.append((time.time() - t0, ms))
    return t0, out


def main(argv: list[str]) -> None:
    cpu = "--cpu" in argv
    items = [a for a in argv if not a.startswith("--")]
    shapes = parse(items or (["tiny:verify:2:32:3", "tiny:decode:2:32:1"] if cpu
                             else DEFAULT))
    dev = torch.device("cpu" if cpu else "cuda")
    dtype = torch.float32 if cpu else torch.bfloat16
    idle_s, run_s = (0.0, 0.05) if cpu else (IDLE_S, RUN_S)
    rows = []
    with Sampler(enabled=not cpu) as sampler:
        for model in dict.fromkeys(s[0] for s in shapes):
            mine = [s for s in shapes if s[0] == model]
            sh = load_models([model], {}, ROOT / "workloads" / "models")[model]
            w = reference.Weights(sh, str(dev), dtype)
            size = (sh.num_hidden_layers, max(s[2] for s in mine), sh.num_key_value_heads,
                    max(s[3] + s[4] for s in mine), sh.d)
            # filled in place: a float32 staging copy of a 34 GB cache would not fit
            k = torch.empty(size, device=dev, dtype=dtype).normal_()
            v = torch.empty(size, device=dev, dtype=dtype).normal_()
            for _, mode, b, c, q in mine:
                t0, times = run_shape(w, Cache(k, v, b), mode, b, c, q, dev, idle_s, run_s)
                rows += [{"model": model, "mode": mode, "batch": b, "ctx": c, "q": q,
                          "start_unix_s": round(t0, 3), "t_s": round(t, 4),
                          "ms": round(ms, 4)} for t, ms in times]
                cold = statistics.median(ms for _, ms in times[:3])
                late = [ms for t, ms in times if t > run_s / 2] or [times[-1][1]]
                print(f"{model} {mode} b={b} ctx={c} q={q}: {len(times)} replays, first 3 "
                      f"{cold:.3f} ms, second half {statistics.median(late):.3f} ms "
                      f"({statistics.median(late) / cold - 1:+.1%})", flush=True)
            del w, k, v
            if not cpu:
                torch.cuda.empty_cache()
    OUT.mkdir(parents=True, exist_ok=True)
    with (OUT / "step_power.csv").open("w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    sampler.write(OUT / "step_power_samples.csv")


if __name__ == "__main__":
    main(sys.argv[1:])
