"""Measure a real continuous-batching serving engine (serve_engine.py) at several loads.

    python3 validation/harness/bench_serve_engine.py --out DIR --gpu NAME --model M
        [--rates 1,2,4,8] [--duration-s 120] [--prompt DIST] [--output DIST]
        [--trace FILE [--time-scales 1,0.5]] [--max-num-seqs 256]
        [--max-num-batched-tokens 8192] [--block-size 16] [--max-model-len 4096]
        [--kv-blocks N | --gpu-memory-utilization 0.9] [--capture-sizes vllm|none|1,2,4]
        [--cudagraph-mode full_decode_only|full_and_piecewise]
        [--kv-bucket-tokens 256] [--eager-sdpa no-cudnn|default] [--prefix-caching]
        [--warmup-requests 8] [--warmup-s 0]
        [--shared-prefix-tokens N]
        [--prefix-prompts K] [--conversation-turns T] [--turn-think-s S]
        [--device cuda|cpu] [--dtype bfloat16|float32] [--seed 0]

One model, loaded once (random weights: timing needs no trained ones): the KV cache
sized from the memory left (or ``--kv-blocks``), every decode graph captured, a short
warm-up run; then one run per load (``--rates`` for Poisson arrivals, ``--time-scales``
for a trace), each into DIR/<model>/<load>/ (serve_record.py: run.json, config.json,
steps.csv, requests.jsonl), checked for consistency, and DIR/<model>/summary.json with
every run's vLLM-benchmark metrics (merged with the summary already there, so the
loads can be split over several commands). ``gpusim serve --replay DIR/<model>/<load> ...``
compares gpusim against them. ``--tiny``: a 3-layer model for CPU smoke runs.

Imports only stdlib, numpy, yaml, torch (the GPU machine has no gpusim).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # imported from tests (run as a script, it is there already)
    sys.path.insert(0, str(HERE))

from reference import Shape  # noqa: E402
from serve_engine import CUDAGRAPH_MODES, Engine, EngineConfig  # noqa: E402
from serve_model import ModelRunner  # noqa: E402
from serve_record import check_run, metrics, read_run, write_run  # noqa: E402
from serve_workload import Workload, WorkloadSpec  # noqa: E402

MODELS_DIR = HERE.parents[1] / "workloads" / "models"
VLLM_CAPTURE_SIZES = (1, 2, 4, *range(8, 513, 8))   # vLLM's default (cuda_graph_sizes 512)
TINY = {"hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128,
        "vocab_size": 256}
SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "intermediate_size", "vocab_size",
              "tie_word_embeddings", "rms_norm_eps", "rope_theta")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--gpu", required=True, help="the GPU as gpusim names it (h100-sxm); "
                   "cpu for a CPU run")
    p.add_argument("--model", default="llama-3.2-1b",
                   help="workloads/models/<name>.yaml, a config.json path, or tiny")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rates", default="2", help="Poisson arrival rates (req/s), comma list")
    p.add_argument("--duration-s", type=float, default=120.0, help="arrival window")
    p.add_argument("--prompt", default="lognormal:median=500,sigma=0.8,max=2048")
    p.add_argument("--output", default="lognormal:median=200,sigma=0.7,max=1024")
    p.add_argument("--trace", default=None, help="CSV/JSONL trace instead of Poisson")
    p.add_argument("--time-scales", default="1", help="trace: arrival time scales")
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--kv-blocks", type=int, default=None)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--capture-sizes", default="vllm", help="vllm | none | 1,2,4,...")
    p.add_argument("--cudagraph-mode", choices=CUDAGRAPH_MODES, default="full_decode_only",
                   help="full_and_piecewise: mixed steps of up to the largest capture "
                   "size replay piecewise graphs (attention eager between them)")
    p.add_argument("--kv-bucket-tokens", type=int, default=256)
    p.add_argument("--eager-sdpa", choices=("no-cudnn", "default"), default="no-cudnn",
                   help="eager steps' SDPA backends (serve_model.EAGER_SDPA)")
    p.add_argument("--prefix-caching", action="store_true")
    p.add_argument("--shared-prefix-tokens", type=int, default=0)
    p.add_argument("--prefix-prompts", type=int, default=1)
    p.add_argument("--conversation-turns", type=int, default=1)
    p.add_argument("--turn-think-s", type=float, default=0.0)
    p.add_argument("--warmup-requests", type=int, default=8)
    p.add_argument("--warmup-s", type=float, default=0.0,
                   help="then the first load for this long (its own seed, not "
                   "recorded): the first load a process ran measured its "
                   "eager steps 25-40%% slower than its later loads")
    p.add_argument("--max-wall-s", type=float, default=600.0,
                   help="per load: stop taking arrivals after this (then drain)")
    return p.parse_args(argv)


def load_shape(name: str) -> tuple[str, Shape, dict]:
    """(name, Shape, the HF config keys) of a model name, YAML or config.json path."""
    if name == "tiny":
        return "tiny", Shape.from_dict(TINY), dict(TINY)
    path = Path(name) if Path(name).suffix in (".json", ".yaml") else MODELS_DIR / f"{name}.yaml"
    if path.suffix == ".json":
        raw = json.loads(path.read_text())
    else:
        import yaml
        raw = yaml.safe_load(path.read_text())
    cfg = {k: raw[k] for k in SHAPE_KEYS if raw.get(k) is not None}
    return str(raw.get("name", path.stem)), Shape.from_dict(cfg), cfg


def capture_sizes(text: str, max_num_seqs: int) -> tuple[int, ...]:
    """The sizes up to the first that holds ``max_num_seqs`` (as gpusim uses them; a
    piecewise run passes its token budget)."""
    if text == "none":
        return ()
    sizes = VLLM_CAPTURE_SIZES if text == "vllm" else tuple(int(x) for x in text.split(","))
    out = []
    for s in sorted(set(sizes)):
        out.append(s)
        if s >= max_num_seqs:
            break
    return tuple(out)


def activation_reserve_bytes(shape: Shape, cfg: EngineConfig, dtype: torch.dtype) -> int:
    """Memory a step may need besides weights and KV cache: a decode batch's gathered
    keys and values (one layer at a time), the largest packed step's activations and
    logits, and 2 GiB of slack (graph pool, allocator, workspaces)."""
    e = torch.finfo(dtype).bits // 8
    s = shape
    keys = -(-cfg.max_model_len // cfg.kv_bucket_tokens) * cfg.kv_bucket_tokens
    gather = 2 * max(cfg.max_num_seqs, 1) * keys * s.num_key_value_heads * s.d * e
    t = cfg.max_num_batched_tokens
    width = 3 * s.hidden_size + 3 * s.intermediate_size + (
        s.num_attention_heads + 2 * s.num_key_value_heads) * s.d
    pieces = 0
    if cfg.cudagraph_mode == "full_and_piecewise":
        # every piecewise size's pieces keep their outputs (x, qkv, q and k after RoPE)
        # and its attention buffer in the graph pool
        qkv = (s.num_attention_heads + 2 * s.num_key_value_heads) * s.d
        row = ((s.num_hidden_layers + 1) * (s.hidden_size + qkv + (s.num_attention_heads
               + s.num_key_value_heads) * s.d) + s.num_attention_heads * s.d)
        pieces = sum(cfg.capture_sizes) * row * e
    return (2 * gather + 2 * t * width * e + cfg.max_num_seqs * s.vocab_size * 4 + pieces
            + (2 << 30))


def kv_blocks(args: argparse.Namespace, shape: Shape, cfg: EngineConfig,
              dtype: torch.dtype, device: torch.device) -> int:
    if args.kv_blocks is not None:
        return args.kv_blocks
    if device.type != "cuda":
        return 512
    free, total = torch.cuda.mem_get_info()
    used = total - free
    budget = args.gpu_memory_utilization * total - used - activation_reserve_bytes(
        shape, cfg, dtype)
    per_block = (2 * shape.num_hidden_layers * cfg.block_size * shape.num_key_value_heads
                 * shape.d * (torch.finfo(dtype).bits // 8))
    return max(1, int(budget // per_block))


def provenance(device: torch.device, argv: list[str]) -> dict[str, object]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"torch": torch.__version__, "cuda": torch.version.cuda or "",
            "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                            else platform.processor() or "cpu"),
            "host": platform.node(), "python": platform.python_version(),
            "started_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": "python3 validation/harness/bench_serve_engine.py " + " ".join(argv),
            "git_commit": commit}


def loads(args: argparse.Namespace) -> list[tuple[str, dict[str, object]]]:
    """(directory name, workload fields) per load."""
    if args.trace:
        return [(f"trace-x{s}", {"trace": args.trace, "time_scale": float(s)})
                for s in args.time_scales.split(",")]
    return [(f"rate-{r}", {"rate_per_s": float(r)}) for r in args.rates.split(",")]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    if device.type == "cpu":
        # tiny CPU steps gain nothing from threads, and spinning OpenMP threads on a
        # busy machine stall ops for up to ~100 ms
        torch.set_num_threads(1)
    name, shape, hf = load_shape(args.model)
    piecewise = args.cudagraph_mode == "full_and_piecewise"
    decode_sizes = capture_sizes(args.capture_sizes, args.max_num_seqs)
    token_sizes = capture_sizes(args.capture_sizes, args.max_num_batched_tokens)
    base = EngineConfig(args.max_num_seqs, args.max_num_batched_tokens, args.block_size, 1,
                        args.max_model_len, args.prefix_caching,
                        token_sizes if piecewise else decode_sizes,
                        args.kv_bucket_tokens, args.cudagraph_mode)
    t0 = time.perf_counter()
    runner = ModelRunner(shape, device, dtype, args.block_size, args.max_model_len,
                         decode_sizes, args.kv_bucket_tokens, args.seed,
                         args.eager_sdpa, token_sizes if piecewise else ())
    blocks = kv_blocks(args, shape, base, dtype, device)   # what the weights left
    runner.allocate_kv(blocks)
    cfg = EngineConfig(**{**base.__dict__, "num_blocks": blocks})
    graphs = runner.capture_all()
    print(f"[{time.perf_counter() - t0:7.1f}s] {name}: {blocks} KV blocks, {graphs} graphs "
          f"captured in {runner.capture_s:.1f} s", file=sys.stderr, flush=True)
    common = {"vocab": shape.vocab_size, "seed": args.seed, "duration_s": args.duration_s,
              "prompt": args.prompt, "output": args.output,
              "shared_prefix_tokens": args.shared_prefix_tokens,
              "prefix_prompts": args.prefix_prompts,
              "conversation_turns": args.conversation_turns,
              "turn_think_s": args.turn_think_s}
    if args.warmup_requests:
        warm = Workload(WorkloadSpec(**{**common, "rate_per_s": 1e6, "duration_s":
                                        args.warmup_requests * 1e-6, "trace": None}))
        Engine(cfg, runner).run(warm)
    if args.warmup_s > 0:
        first = loads(args)[0][1]     # a trace's first time scale: the trace again
        spec = WorkloadSpec(**{**common, **first, "seed": args.seed + 1000,
                               "duration_s": args.warmup_s})
        Engine(cfg, runner).run(Workload(spec), args.max_wall_s)
        print(f"[{time.perf_counter() - t0:7.1f}s] warm-up load of {args.warmup_s:g} s "
              "done", file=sys.stderr, flush=True)
    out_root = Path(args.out) / name
    # loads split over several commands share one summary
    previous = out_root / "summary.json"
    summary = json.loads(previous.read_text()) if previous.is_file() else {}
    config = {**hf, "_name_or_path": name, "max_position_embeddings": args.max_model_len,
              "torch_dtype": args.dtype}
    for index, (label, fields) in enumerate(loads(args)):
        spec = WorkloadSpec(**{**common, **fields})
        engine = Engine(cfg, runner)
        late = runner.late_captures
        engine.run(Workload(spec), args.max_wall_s)
        meta = {"device": device.type, "gpu": args.gpu, "model": name,
                "stack": "torch-fused", "dtype": args.dtype, "load": label,
                "engine": {**cfg.__dict__, "capture_sizes": list(cfg.capture_sizes),
                           "eager_sdpa": args.eager_sdpa},
                "workload": spec.describe(), "graphs": graphs,
                "late_captures": runner.late_captures - late,
                # what ran in this process before the load: its first load pays the
                # process's first pass over new shapes (validation/data/h100-sxm/
                # probe_2026-12-07_s27/) unless a warm-up load ran first
                "process": {"load_index": index, "warmup_s": args.warmup_s,
                            "warmup_requests": args.warmup_requests},
                "provenance": provenance(device, argv)}
        write_run(out_root / label, meta, config, engine)
        problems = check_run(out_root / label)
        _, steps, requests = read_run(out_root / label)
        makespan = max((r["finish_s"] for r in requests), default=0.0)
        summary[label] = {"problems": problems, "requests": len(requests),
                          "steps": len(steps), "makespan_s": makespan,
                          **metrics(requests, makespan)}
        m = summary[label]
        print(f"[{time.perf_counter() - t0:7.1f}s] {label}: {len(requests)} requests, "
              f"{len(steps)} steps, {m['requests_per_s']:.3f} req/s, TTFT p50 "
              f"{m['ttft_s'].get('p50', float('nan')) * 1e3:.1f} ms, TPOT p50 "
              f"{m['tpot_s'].get('p50', float('nan')) * 1e3:.2f} ms"
              + (f", {len(problems)} PROBLEMS" if problems else ""), file=sys.stderr,
              flush=True)
    (out_root / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True)
                                           + "\n")
    return 1 if any(summary[label]["problems"] for label, _ in loads(args)) else 0


if __name__ == "__main__":
    sys.exit(main())
