"""Probe: a token-tree verify step (boolean tree mask) against the causal verify step.

    python3 validation/harness/probe_tree.py --out DIR [--models llama-3.1-8b,...]
        [--profile-only B:CTX:NODES,...]

For each (batch, ctx, nodes): CUDA-graph step time of the reference forward with
q = nodes under the causal lower-right mask (what FlashAttention-2 runs) and under a
tree mask (every cached token plus the node's ancestors: a boolean attn_mask, which
SDPA cannot hand to FlashAttention-2), every model's timings first; then one tree
step's kernels per model under torch.profiler (last: the profiler slows what follows).
A (batch, ctx) whose cache does not fit is skipped. Writes DIR/tree.csv,
DIR/tree_kernels.csv and DIR/tree_env.json. With ``--profile-only``, no timing: one tree
step of every model at each listed (batch, ctx, nodes) under torch.profiler, for the
kernels alone (cuDNN's masked kernel over thousands of query rows and keys, odd key
counts among them: the regime hf-transformers' captured prefill runs it in, reached
from the reference stack). Writes DIR/tree_kernels.csv and DIR/tree_env.json.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import bench_campaign as bc  # noqa: E402
import reference  # noqa: E402
from bench_steps import make_cache  # noqa: E402
from bench_timing import Clock, Policy, free_memory, measure, stats  # noqa: E402


def tree_mask(nodes: int, ctx: int, width: int, device: torch.device) -> torch.Tensor:
    """[nodes, ctx + nodes] bool: every cached token, then each node's ancestors and
    itself; node i's parent is (i - 1) // width (a complete ``width``-ary tree)."""
    m = torch.zeros(nodes, ctx + nodes, dtype=torch.bool)   # built on the host: no
    m[:, :ctx] = True                                        # launch per element
    for i in range(nodes):
        j = i
        while True:
            m[i, ctx + j] = True
            if j == 0:
                break
            j = (j - 1) // width
    return m.to(device)


def _time_model(model: str, ints: list[list[int]], dev: torch.device, dtype: torch.dtype,
                clock: Clock, policy: Policy, rows: list[dict[str, object]]) -> None:
    """Time every (batch, ctx, nodes) of ``model`` under both masks."""
    shape = bc.load_models([model], {}, bc.MODELS_DIR)[model]
    w = reference.Weights(shape, "cuda", dtype)
    for b in ints[0]:
        for c in ints[1]:
            try:
                cache = make_cache(shape, b, c + max(ints[2]), dev, dtype)
            except torch.OutOfMemoryError:
                print(f"{model} b={b} ctx={c}: the cache does not fit", flush=True)
                free_memory(dev)
                continue
            for n in ints[2]:
                tokens = torch.randint(0, shape.vocab_size, (b, n), device=dev)
                out: dict[str, object] = {"model": model, "batch": b, "ctx": c, "nodes": n}
                for label, mask in (("causal", reference.verify_mask(n, c + n)),
                                    ("tree", tree_mask(n, c, 2, dev))):
                    def fn(mask: object = mask, tokens: torch.Tensor = tokens,
                           cache: reference.KVCache = cache, c: int = c) -> torch.Tensor:
                        return reference.forward(w, cache, tokens, c, "verify", mask)

                    st = stats(measure(clock, fn, policy, graph=True), 1e3)
                    out[f"{label}_ms"] = round(st["median"], 5)
                rows.append(out)
                print(out, flush=True)
            del cache
            free_memory(dev)


def _profile_model(model: str, b: int, c: int, n: int, dev: torch.device,
                   dtype: torch.dtype, kernels: list[list[object]]) -> None:
    """One tree step's kernels under torch.profiler (after every timing: the profiler
    slows what follows it in the process)."""
    from torch.profiler import ProfilerActivity, profile
    shape = bc.load_models([model], {}, bc.MODELS_DIR)[model]
    w = reference.Weights(shape, "cuda", dtype)
    cache = make_cache(shape, b, c + n, dev, dtype)
    tokens = torch.randint(0, shape.vocab_size, (b, n), device=dev)
    mask = tree_mask(n, c, 2, dev)
    for _ in range(2):
        reference.forward(w, cache, tokens, c, "verify", mask)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        reference.forward(w, cache, tokens, c, "verify", mask)
        torch.cuda.synchronize()
    agg: dict[str, list[float]] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            a = agg.setdefault(e.name, [0, 0.0])
            a[0] += 1
            a[1] += e.time_range.elapsed_us()
    for name, (cnt, tot) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
        kernels.append([model, b, c, n, name, cnt, round(tot, 3)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--models", default="llama-3.1-8b")
    ap.add_argument("--batches", default="1,4,16,32")
    ap.add_argument("--ctxs", default="1024,4096")
    ap.add_argument("--nodes", default="4,8,16,32,64")
    ap.add_argument("--profile-only", default="", help="B:CTX:NODES,...: profile these "
                    "tree steps of every model, no timing")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda")
    dtype = torch.bfloat16
    clock, policy = Clock(dev), Policy(warmup=2, target=15, min_reps=5, max_s=0.3)
    ints = [[int(x) for x in s.split(",")] for s in (args.batches, args.ctxs, args.nodes)]
    rows: list[dict[str, object]] = []
    kernels: list[list[object]] = []
    models = args.models.split(",")
    only = [tuple(int(x) for x in t.split(":")) for t in args.profile_only.split(",") if t]
    for model in models if not only else ():
        try:
            _time_model(model, ints, dev, dtype, clock, policy, rows)
        except torch.OutOfMemoryError as exc:   # the next model may fit
            print(f"{model}: out of memory ({exc})", flush=True)
        free_memory(dev)
    for model in models:
        for b, c, n in only or [(ints[0][-1], ints[1][0], 16)]:
            try:
                _profile_model(model, b, c, n, dev, dtype, kernels)
            except torch.OutOfMemoryError as exc:
                print(f"{model}: out of memory in the profile ({exc})", flush=True)
            free_memory(dev)
    import datetime as dt
    import json
    env = {"utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
           "torch": torch.__version__, "cuda": torch.version.cuda,
           "gpu_name": torch.cuda.get_device_name(), "models": args.models,
           "command": sys.argv}
    (args.out / "tree_env.json").write_text(json.dumps(env, indent=2) + "\n")
    if rows:
        with (args.out / "tree.csv").open("w", newline="") as fh:
            wr = csv.DictWriter(fh, fieldnames=list(rows[0]))
            wr.writeheader()
            wr.writerows(rows)
    with (args.out / "tree_kernels.csv").open("w", newline="") as fh:
        wr2 = csv.writer(fh)
        wr2.writerow(["model", "batch", "ctx", "nodes", "kernel_name", "count", "total_us"])
        wr2.writerows(kernels)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
