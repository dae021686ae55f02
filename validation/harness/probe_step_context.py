"""Does an eager mixed step take as long alone as in a serving engine's rhythm? Times
one mixed step (decoding rows + a fresh prompt chunk) of the serving engine's
ModelRunner in four phases of one process:

* ``isolated``: one step after a 0.3 s idle pause, ten times;
* ``back_to_back``: the step sixty times in a row (the GPU never idles);
* ``interleaved``: thirty cycles of the step and ``--decode-steps`` replays of a decode
  graph, as a serving run alternates them;
* ``isolated_again``: as the first, after the others;
* ``fresh_lengths``: thirty steps whose prompt is one token longer each time (a token
  count no earlier step ran, as a serving run's prompts mostly are), back to back;
* ``fresh_lengths_again``: the same thirty again (every length seen once before).

Each step's GPU span (CUDA events, as serving runs record ``gpu_s``) and wall time are
kept; ``nvidia-smi`` logs the SM clock and power every 50 ms meanwhile, with each
phase's start and end on the same clock.

    python3 validation/harness/probe_step_context.py --out DIR [--model llama-3.1-8b]
        [--mixed 5x1279+771] [--decode 8x1280] [--decode-steps 8]

Writes DIR/context.json and DIR/clocks.csv. Needs torch and a GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_serve_engine import load_shape  # noqa: E402
from probe_serve_steps import decode_input, mixed_input, parse_mixed, timed_step  # noqa: E402
from serve_model import ModelRunner  # noqa: E402


def series(runner: ModelRunner, inputs, pause_s: float = 0.0) -> dict:
    """Each step of ``inputs`` timed in turn (``timed_step``), ``pause_s`` idle before
    each: their GPU spans and walls."""
    gpu, wall = [], []
    for inp in inputs:
        if pause_s:
            time.sleep(pause_s)
        g, w = timed_step(runner, inp)
        gpu.append(g)
        wall.append(w)
    return {"gpu_s": gpu, "wall_s": wall}


def phase(name: str, res: dict, fn) -> None:
    start = time.time()
    rows = fn()
    res[name] = {"start_unix_s": start, "end_unix_s": time.time(), **rows}
    summary = {k: statistics.median(v) for k, v in rows.items() if v}
    print(name, {k: round(v * 1e3, 3) for k, v in summary.items()}, flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="llama-3.1-8b")
    p.add_argument("--mixed", default="5x1279+771",
                   help="decode rows x their cached tokens + fresh prompt tokens")
    p.add_argument("--decode", default="8x1280", help="decode graph: rows x keys")
    p.add_argument("--decode-steps", type=int, default=8)
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    b, ctx, q = parse_mixed(a.mixed)
    db, dk = (int(x) for x in a.decode.split("x"))
    dev = torch.device("cuda")
    _, shape, _ = load_shape(a.model)
    runner = ModelRunner(shape, dev, torch.bfloat16, 16, 3072, (db,), 256)
    runner.allocate_kv(16384)
    mixed = mixed_input(b, ctx, q, 16)
    dec = decode_input(db, dk - 1, 16, 0)
    for _ in range(3):
        runner.run(mixed)
        runner.run(dec)
    clocks = subprocess.Popen(
        ["nvidia-smi", "--query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu",
         "--format=csv,nounits", "-lms", "50"],
        stdout=(out / "clocks.csv").open("w"), stderr=subprocess.DEVNULL)
    res: dict = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__,
                 "model": a.model, "mixed": a.mixed, "decode": a.decode,
                 "decode_steps": a.decode_steps}
    time.sleep(1.0)

    def isolated() -> dict:
        return series(runner, [mixed] * 10, pause_s=0.3)

    def back_to_back() -> dict:
        return series(runner, [mixed] * 60)

    def interleaved() -> dict:
        gpu, wall, dgpu = [], [], []
        for _ in range(30):
            g, w = timed_step(runner, mixed)
            gpu.append(g)
            wall.append(w)
            for _ in range(a.decode_steps):
                dgpu.append(runner.run(dec).gpu_s)
        return {"gpu_s": gpu, "wall_s": wall, "decode_gpu_s": dgpu}

    def fresh() -> dict:
        return series(runner, (mixed_input(b, ctx, q + i, 16) for i in range(1, 31)))

    try:
        phase("isolated", res, isolated)
        phase("back_to_back", res, back_to_back)
        phase("interleaved", res, interleaved)
        phase("isolated_again", res, isolated)
        phase("fresh_lengths", res, fresh)
        phase("fresh_lengths_again", res, fresh)
    finally:
        time.sleep(0.5)
        clocks.terminate()
    (out / "context.json").write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
