"""How fast gpusim's fast path predicts many step shapes, against a numpy roofline.

    python benchmarks/bench_predict.py [--shapes 10000] [--repeats 5] [--seed 0]

Draws random (model, mode, batch, ctx, q) shapes on one GPU (h100-sxm by default) and
times, in the same run, on the same shapes:

* ``step.predict``: one vectorised call per (model, mode) group, the way the CLI
  groups a rows.csv (grouping and scattering back into input order included);
* ``rows.predict_rows``: the CLI's own path from parsed Row objects to output dicts;
* a numpy roofline, ``max(bytes / BW, flops / peak)`` per shape, computed directly
  from the models' sizes in one vectorised pass (weights + KV bytes, GEMM + attention
  flops): the floor any fast path is measured against.

Each is run ``--repeats`` times after one warm-up; the median is reported as
microseconds per shape, with gpusim's ratio to the roofline. Results go to stdout and
to benchmarks/results/bench_predict.json (timestamp, machine, numbers).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import io
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from machine import machine_info

from gpusim.capacity import memory_plan
from gpusim.cli import main as cli_main
from gpusim.io import calibrations, loader
from gpusim.kernels.quant import for_stack
from gpusim.platform import Platform
from gpusim.step import predict
from gpusim.step.rows import Row, predict_rows

TARGET_US_PER_SHAPE = 5.0
DEFAULT_MODELS = ("llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b", "llama-2-7b",
                  "qwen2.5-7b", "mistral-7b")
MODES = ("decode", "verify", "prefill")
RESULTS = Path(__file__).resolve().parent / "results" / "bench_predict.json"


def draw_shapes(n: int, models: tuple[str, ...], seed: int,
                fits: np.ndarray | None = None,
                window: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """n random shapes: model index, mode index, batch, ctx, q (physical ranges);
    ``fits``: per model, the cached tokens its KV cache holds on the GPU; ``window``:
    per model, its context window (ctx + q beyond it is refused by predict --in)."""
    rng = np.random.default_rng(seed)
    model = rng.integers(0, len(models), n)
    mode = rng.integers(0, len(MODES), n)
    batch = np.where(mode == 0, rng.integers(1, 257, n),
                     np.where(mode == 1, rng.integers(1, 65, n), rng.integers(1, 9, n)))
    ctx = np.where(mode == 2, 0, rng.integers(0, 32769, n))
    q = np.where(mode == 0, 1, np.where(mode == 1, rng.integers(2, 17, n),
                                        rng.integers(1, 4097, n)))
    if fits is not None:
        # a shape whose KV cache exceeds the GPU is refused (predict --in): shorten its
        # context to what fits
        ctx = np.minimum(ctx, np.maximum(fits[model] // batch - q, 0))
    if window is not None:
        q = np.minimum(q, window[model])
        ctx = np.minimum(ctx, window[model] - q)
    return {"model": model, "mode": mode, "batch": batch.astype(np.float64),
            "ctx": ctx.astype(np.float64), "q": q.astype(np.float64)}


def library_path(shapes, specs, platform: Platform) -> np.ndarray:
    """step.predict once per (model, mode) group; results back in input order."""
    out = np.empty(len(shapes["batch"]))
    key = shapes["model"] * len(MODES) + shapes["mode"]
    order = np.argsort(key, kind="stable")
    bounds = np.flatnonzero(np.diff(key[order])) + 1
    for idx in np.split(order, bounds):
        g = int(key[idx[0]])
        p = predict(
            platform,
            specs[g // len(MODES)],
            MODES[g % len(MODES)],
            shapes["batch"][idx],
            shapes["ctx"][idx],
            shapes["q"][idx],
        )
        out[idx] = p.seconds
    return out


def make_rows(shapes, models: tuple[str, ...]) -> list[Row]:
    rows = []
    for i in range(len(shapes["batch"])):
        m, mode = models[int(shapes["model"][i])], MODES[int(shapes["mode"][i])]
        b, c, q = (int(shapes[k][i]) for k in ("batch", "ctx", "q"))
        raw = {"model": m, "mode": mode, "batch": str(b), "ctx": str(c), "q": str(q)}
        rows.append(Row(line=i + 2, model=m, mode=mode, batch=b, ctx=c, q=q, tp=1, raw=raw))
    return rows


def rows_path(rows, platform: Platform) -> np.ndarray:
    preds = predict_rows(rows, "bench.csv", platform,
                         lambda n: for_stack(loader.load_model(n), platform.stack))
    return np.array(preds["predicted_ms"]) * 1e-3


def cli_path(rows_csv: Path, out_csv: Path, cli_args: list[str]) -> None:
    """``gpusim predict --in rows.csv --out preds.csv`` in this process: CSV parsing,
    checks, the rows path and the CSV writing (what a user of the command waits for,
    less the interpreter's start-up)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = cli_main(["predict", "--in", str(rows_csv), "--out", str(out_csv), *cli_args])
    if code not in (0, None):
        raise SystemExit(f"bench_predict: gpusim predict exited {code}")


def model_table(specs) -> dict[str, np.ndarray]:
    """Per-model sizes as arrays (one entry per model) for the roofline."""
    cols: dict[str, list[float]] = {
        k: []
        for k in (
            "layer_gemm_params",
            "lm_head_params",
            "kv_dim",
            "heads",
            "head_dim",
            "layers",
            "dtype_bytes",
            "layer_gemm_bytes",
        )
    }
    for m in specs:
        h, i, d = m.hidden_size, m.intermediate_size, m.head_dim_eff
        qd, kvd = m.num_attention_heads * d, m.num_key_value_heads * d
        cols["layer_gemm_params"].append(h * (qd + 2 * kvd) + qd * h + 2 * h * i + i * h)
        cols["lm_head_params"].append(m.vocab_size * h)
        cols["kv_dim"].append(kvd)
        cols["heads"].append(m.num_attention_heads)
        cols["head_dim"].append(d)
        cols["layers"].append(m.num_hidden_layers)
        cols["dtype_bytes"].append(m.dtype_bytes)
        # the projections' weights as the model stores them (a quantized stack's bytes)
        cols["layer_gemm_bytes"].append(sum(
            count * m.matrix_bytes(name, n, k)
            for name, (n, k, count) in m.layer_matrices().items()))
    return {k: np.asarray(v, dtype=np.float64) for k, v in cols.items()}


def numpy_roofline(shapes, table, bw: float, peak: float) -> np.ndarray:
    """max(bytes / BW, flops / peak) per shape, straight from the sizes."""
    mi = shapes["model"]
    b, c, q = shapes["batch"], shapes["ctx"], shapes["q"]
    layers, dt = table["layers"][mi], table["dtype_bytes"][mi]
    tokens = b * q
    out_tokens = np.where(shapes["mode"] == 2, b, tokens)  # prefill: last position only
    weights = layers * table["layer_gemm_bytes"][mi] + table["lm_head_params"][mi] * dt
    kv = 2.0 * b * (c + q) * table["kv_dim"][mi] * dt * layers
    gemm_flops = 2.0 * (
        tokens * layers * table["layer_gemm_params"][mi] + out_tokens * table["lm_head_params"][mi]
    )
    attn_flops = (
        4.0 * b * table["heads"][mi] * table["head_dim"][mi] * (q * c + q * (q + 1) / 2) * layers
    )
    return np.maximum((weights + kv) / bw, (gemm_flops + attn_flops) / peak)


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, list[float], object]:
    result = fn()  # warm-up (imports, caches)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", type=int, default=10000, help="random shapes (default 10000)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats (median; default 5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gpu", default="h100-sxm")
    ap.add_argument("--stack", default=None, help="stack name or path (default: the "
                    "CLI's default stack)")
    ap.add_argument("--calibration", default="auto", help="auto | none | PATH (as the CLI)")
    ap.add_argument("--launch", default="graph", choices=("graph", "eager"))
    ap.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    args = ap.parse_args(argv)
    if args.shapes < 1 or args.repeats < 1:
        print("bench_predict: --shapes and --repeats must be >= 1", file=sys.stderr)
        return 2

    gpu = loader.load_gpu(args.gpu)
    stack = loader.load_stack(args.stack or loader.DEFAULT_STACK)
    cal = calibrations.load_calibration(args.calibration, gpu, stack)
    platform = Platform(gpu, stack, cal, args.launch)
    models = DEFAULT_MODELS
    # each model as the stack stores it (a quantized stack's dtype), as `predict` loads it
    specs = [for_stack(loader.load_model(m), stack) for m in models]
    fits = np.array([memory_plan(gpu, m, reserve_fraction=0.0).kv_tokens() for m in specs],
                    dtype=np.int64)
    window = np.array([m.max_position_embeddings for m in specs], dtype=np.int64)
    shapes = draw_shapes(args.shapes, models, args.seed, fits, window)
    rows = make_rows(shapes, models)
    table = model_table(specs)
    bw = gpu.hbm_bandwidth_bytes_per_s
    # the fastest matrix rate any of the stack's GEMMs runs at (fp8's where it has one)
    quant = specs[0].quantization
    peak = gpu.tensor_peak_flops_per_s(
        "fp8" if quant is not None and quant.weight_dtype == "fp8" else "bf16")

    t_lib, lib_all, lib = timed(
        lambda: library_path(shapes, specs, platform), args.repeats
    )
    t_rows, rows_all, via_rows = timed(
        lambda: rows_path(rows, platform), args.repeats
    )
    t_roof, roof_all, roof = timed(lambda: numpy_roofline(shapes, table, bw, peak), args.repeats)
    with tempfile.TemporaryDirectory() as tmp_dir:
        rows_csv, out_csv = Path(tmp_dir) / "rows.csv", Path(tmp_dir) / "preds.csv"
        with rows_csv.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["model", "mode", "batch", "ctx", "q"])
            w.writerows([r.raw[k] for k in ("model", "mode", "batch", "ctx", "q")]
                        for r in rows)
        cli_args = ["--gpu", args.gpu, "--stack", args.stack or loader.DEFAULT_STACK,
                    "--calibration", args.calibration, "--launch", args.launch]
        t_cli, cli_all, _ = timed(lambda: cli_path(rows_csv, out_csv, cli_args), args.repeats)
        with out_csv.open(encoding="utf-8") as fh:
            via_cli = np.array([float(r["predicted_ms"]) for r in csv.DictReader(fh)]) * 1e-3

    # sanity: both gpusim paths give the same numbers, and none beats the roofline
    if not np.allclose(lib, via_rows, rtol=1e-12, atol=0):
        print("bench_predict: step.predict and predict_rows disagree", file=sys.stderr)
        return 1
    if not np.allclose(lib, via_cli, rtol=1e-5, atol=0):  # the CSV's 6 digits
        print("bench_predict: step.predict and gpusim predict --in disagree", file=sys.stderr)
        return 1
    below = float(np.min(lib / roof))
    n = args.shapes
    per = {
        k: v / n * 1e6
        for k, v in (("step_predict", t_lib), ("predict_rows", t_rows), ("cli", t_cli),
                     ("numpy_roofline", t_roof))
    }
    groups = len(np.unique(shapes["model"] * len(MODES) + shapes["mode"]))

    print(
        f"gpusim fast path: {n} random shapes ({len(models)} models x {len(MODES)} modes"
        f" = {groups} groups) on {gpu.name}, calibration {cal.fitted_on}, "
        f"launch {args.launch}; median of {args.repeats}"
    )
    print(f"{'path':<32}{'total ms':>10}{'us/shape':>10}{'x roofline':>12}")
    for label, key, t in (
        ("gpusim step.predict (grouped)", "step_predict", t_lib),
        ("gpusim rows.predict_rows", "predict_rows", t_rows),
        ("gpusim predict --in (CSV->CSV)", "cli", t_cli),
        ("numpy roofline (baseline)", "numpy_roofline", t_roof),
    ):
        print(f"{label:<32}{t * 1e3:>10.2f}{per[key]:>10.3f}{t / t_roof:>12.1f}")
    verdict = "meets" if per["predict_rows"] <= TARGET_US_PER_SHAPE else "misses"
    print(
        f"target <= {TARGET_US_PER_SHAPE:g} us/shape (rows path): {verdict}; "
        f"min predicted/roofline time = {below:.3f}"
    )

    record = {
        "benchmark": "bench_predict",
        "command": "python benchmarks/bench_predict.py "
        + " ".join(argv if argv is not None else sys.argv[1:]).rstrip(),
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "config": {
            "shapes": n,
            "repeats": args.repeats,
            "seed": args.seed,
            "gpu": gpu.name,
            "calibration": cal.fitted_on,
            "launch": args.launch,
            "models": list(models),
            "groups": groups,
        },
        "seconds_median": {"step_predict": t_lib, "predict_rows": t_rows, "cli": t_cli,
                           "numpy_roofline": t_roof},
        "seconds_all": {
            "step_predict": lib_all,
            "predict_rows": rows_all,
            "cli": cli_all,
            "numpy_roofline": roof_all,
        },
        "us_per_shape": per,
        "ratio_to_numpy_roofline": {
            "step_predict": t_lib / t_roof,
            "predict_rows": t_rows / t_roof,
            "cli": t_cli / t_roof,
        },
        "target_us_per_shape": TARGET_US_PER_SHAPE,
        "meets_target": per["predict_rows"] <= TARGET_US_PER_SHAPE,
        "min_predicted_over_roofline_time": below,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    tmp.replace(args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
