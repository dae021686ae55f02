"""Measure real speculative-decoding loops with the reference forward (reference.py).

    python3 validation/harness/bench_spec.py --out DIR --gpu NAME [--device cuda|cpu]
        [--budget-s 290] [--quick] [--pairs T:D,T:D] [--ks 1-8] [--batches 1,4,16,64]
        [--ctxs 1024,4096] [--shapes-json FILE]

For every draft/target pair, batch and context, one "group": both KV caches, one CUDA
graph per draft step (ctx L+i: decode, greedy argmax written into the next input),
one per verify pass (q = k+1 at ctx L: argmax, accept the longest matching prefix,
gather the next root token, copy results for the host) and one plain decode step
(argmax into the next input). Then, at that shape:

* alone (CUDA events around one replay, as bench_steps times graph steps): the first
  draft step, each verify pass, the plain decode step;
* the plain decoding loop, wall clock per token: replay, copy the tokens to the host;
* the speculative loop for each k, wall clock per iteration: k draft replays, the
  verify replay, copy the accepted counts and tokens to the host (the host sync),
  host bookkeeping; the KV pointer then moves back to L (rollback by position: the
  static cache needs no kernel), so every iteration runs at context L.

Writes DIR/spec.csv (one row per pair, k, batch, ctx; appended and flushed as
measured), spec_env.json, spec_summary.json and errors.log (if any); the names leave
bench.py's env.json and summary.json alone when both write into one directory. No new
group starts once --budget-s seconds have passed. The kernels launched here for
sampling and acceptance are the ones gpusim/speculative/kernels.py prices.

Imports only stdlib, numpy, yaml, torch (the GPU machine has no gpusim).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # imported from tests (run as a script, it is there already)
    sys.path.insert(0, str(HERE))

import bench_campaign as bc  # noqa: E402
import reference  # noqa: E402
from bench_common import Logged  # noqa: E402
from bench_steps import kv_bytes_per_token, make_cache  # noqa: E402
from bench_timing import Budget, Clock, CsvSink, GiB, Policy, free_memory, repeat, stats  # noqa: E402
from reference import Shape  # noqa: E402
from spec_drafts import (  # noqa: E402
    DraftKind,
    EagleWeights,
    MedusaHeads,
    PromptLookup,
    eagle_shape,
    parse_kind,
)

SPEC_COLUMNS = ["pair", "target", "draft", "k", "batch", "ctx", "launch", "iteration_ms",
                "iteration_p10_ms", "iteration_p90_ms", "repeats", "draft_step_ms",
                "verify_ms", "target_step_ms", "plain_iteration_ms", "plain_p10_ms",
                "plain_p90_ms", "accepted_mean"]
DEFAULT_PAIRS = (("llama-3.1-8b", "llama-3.2-1b"), ("llama-3.2-3b", "llama-3.2-1b"),
                 ("qwen2.5-7b", "qwen2.5-0.5b"))
TINY_TARGET = {"hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
               "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128,
               "vocab_size": 256}
TINY_DRAFT = {**TINY_TARGET, "num_hidden_layers": 1, "hidden_size": 32, "head_dim": 8,
              "intermediate_size": 64}
ALONE = Policy(warmup=2, target=15, min_reps=5, max_s=0.15)
LOOP = Policy(warmup=3, target=30, min_reps=10, max_s=0.4)
CPU_ALONE = Policy(warmup=1, target=3, min_reps=2, max_s=0.01)   # CPU: code paths only
CPU_LOOP = Policy(warmup=1, target=4, min_reps=3, max_s=0.02)
GRAPH_POOL_RESERVE = 4 * GiB     # graph pools, logits, workspaces, allocator slack


@dataclass(frozen=True)
class Grid:
    pairs: tuple[tuple[str, str], ...]
    ks: tuple[int, ...]
    batches: tuple[int, ...]
    ctxs: tuple[int, ...]


GRIDS = {
    "full": Grid(DEFAULT_PAIRS, tuple(range(1, 9)), (1, 4, 16, 64), (1024, 4096)),
    "quick": Grid(DEFAULT_PAIRS[:1], (1, 4), (1, 16), (1024,)),
    "cpu": Grid((("tiny-target", "tiny-draft"),), (1, 3), (1, 2), (16,)),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bc.add_run_args(p, budget_s=290.0, budget_help="no new group starts after this many seconds",
                    quick_help="small grid (sanity run)")
    p.add_argument("--pairs", default="", help="comma list of target:draft model names")
    p.add_argument("--ks", default="", help="draft lengths, e.g. 1-8 or 1,2,4")
    p.add_argument("--batches", default="", help="e.g. 1,4,16,64")
    p.add_argument("--ctxs", default="", help="e.g. 1024,4096")
    bc.add_model_args(p)
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    p.add_argument("--self-check", action="store_true",
                   help="only check the loop: draft = target must accept every token")
    return p.parse_args(argv)


def _ints(text: str) -> tuple[int, ...]:
    out: list[int] = []
    for part in (t.strip() for t in text.split(",") if t.strip()):
        if "-" in part:
            lo, hi = (int(x) for x in part.split("-", 1))
            out += range(lo, hi + 1)
        else:
            out.append(int(part))
    return tuple(sorted(set(out)))


def select_grid(args: argparse.Namespace, cuda: bool) -> Grid:
    """The default grid for the device and --quick, with any list overridden."""
    g = GRIDS["cpu"] if not cuda else GRIDS["quick" if args.quick else "full"]
    pairs = g.pairs
    if args.pairs:
        try:
            pairs = tuple((t.strip(), d.strip()) for t, d in
                          (item.split(":") for item in args.pairs.split(",") if item.strip()))
        except ValueError:
            raise SystemExit(f"--pairs: expected target:draft[,target:draft] "
                             f"(got {args.pairs!r})") from None
    try:
        return Grid(pairs, _ints(args.ks) or g.ks, _ints(args.batches) or g.batches,
                    _ints(args.ctxs) or g.ctxs)
    except ValueError:
        raise SystemExit("--ks/--batches/--ctxs: expected integers like 1,2,4 or 1-8") \
            from None


# ----------------------------------------------------------------------------------
# the loop's steps
# ----------------------------------------------------------------------------------
@dataclass
class Group:
    """Buffers and step callables of one (pair, batch, ctx)."""

    batch: int
    ctx: int
    ks: tuple[int, ...]
    tok: torch.Tensor                     # [B, kmax+1]: root token, then the drafts
    ptok: torch.Tensor                    # [B, 1]: plain decoding's input/output
    results: dict[int, torch.Tensor]      # k -> [B, k+2]: accepted count, target tokens
    draft_fns: list[Callable[[], None]]
    verify_fns: dict[int, Callable[[], None]]
    plain_fn: Callable[[], None]
    graphs: dict[str, object] = field(default_factory=dict)
    kind: DraftKind | None = None         # None: a draft model
    lookup: PromptLookup | None = None    # n-gram: the host's token histories
    staged: dict[int, torch.Tensor] = field(default_factory=dict)  # n-gram: pinned [B, k]

    @property
    def loop_drafts(self) -> bool:
        """Whether the draft steps run in the loop (Medusa's heads run inside the
        verify; prompt lookup is host work)."""
        return self.kind is None or self.kind.kind == "eagle"


def make_group(wt: reference.Weights, wd: reference.Weights | MedusaHeads | None,
               ct: reference.KVCache, cd: reference.KVCache | None, batch: int, ctx: int,
               ks: tuple[int, ...], device: torch.device, seed: int = 7,
               kind: DraftKind | None = None) -> Group:
    """Static buffers and the three kinds of step as closures over them. ``kind``:
    None for a draft model ``wd`` with cache ``cd``; an EAGLE head (``wd`` its
    EagleWeights, ``cd`` its cache), Medusa heads (``wd`` the MedusaHeads, no cache)
    or prompt lookup (neither)."""
    kmax = max(ks)
    # a draft with its own LM head (a model; an EAGLE head shares the target's)
    own_vocab = wd.shape.vocab_size if isinstance(wd, reference.Weights) else None
    vocab = min(wt.shape.vocab_size, own_vocab or wt.shape.vocab_size)
    # a pair whose vocabularies are padded to different sizes (Qwen2.5 7B vs 0.5B):
    # pick tokens from the shared range only (a view; the argmax stays one kernel)
    t_cut = vocab if wt.shape.vocab_size > vocab else None
    d_cut = vocab if own_vocab is not None and own_vocab > vocab else None
    h = wt.shape.hidden_size
    # EAGLE's feature and Medusa's hidden state: static buffers (timing only)
    hidden = torch.zeros(batch, h, dtype=wt.embed.dtype, device=device)     # [B, h]
    g = torch.Generator(device="cpu").manual_seed(seed)
    tok = torch.randint(0, vocab, (batch, kmax + 1), generator=g).to(device)
    ptok = tok[:, :1].clone()
    results = {k: torch.zeros(batch, k + 2, dtype=torch.int64, device=device) for k in ks}

    eagle = kind is not None and kind.kind == "eagle"
    medusa = wd if isinstance(wd, MedusaHeads) else None

    def draft_step(i: int) -> Callable[[], None]:
        def fn() -> None:
            logits = reference.forward(wd, cd, tok[:, i:i + 1], ctx + i, "decode",  # type: ignore[arg-type]
                                       feature=hidden if eagle else None)   # [B, V]
            tok[:, i + 1].copy_(logits[:, :d_cut].argmax(-1))   # argmax, copy: 2 kernels
        return fn

    def verify_step(k: int) -> Callable[[], None]:
        q = k + 1
        mask = reference.verify_mask(q, ctx + q)
        res = results[k]

        def fn() -> None:
            logits = reference.forward(wt, ct, tok[:, :q], ctx, "verify", mask)  # [B*q, V]
            pred = logits[:, :t_cut].argmax(-1).view(batch, q)                 # argmax
            match = pred[:, :k] == tok[:, 1:q]                                   # eq
            accepted = match.to(torch.int64).cumprod(1).sum(1)           # cast, cumprod, sum
            nxt = pred.gather(1, accepted[:, None])                              # gather
            tok[:, :1].copy_(nxt)                                                # copy
            res[:, 0].copy_(accepted)                                            # copy
            res[:, 1:].copy_(pred)                                               # copy
            if medusa is not None:
                medusa.run(hidden, tok, k, t_cut)      # next iteration's k guesses
        return fn

    def plain() -> None:
        logits = reference.forward(wt, ct, ptok, ctx, "decode")                  # [B, V]
        ptok.copy_(logits[:, :t_cut].argmax(-1, keepdim=True))                   # 2 kernels

    if kind is None or eagle:
        drafts = [draft_step(i) for i in range(kmax)]
    elif medusa is not None:
        drafts = [lambda: medusa.run(hidden, tok, 1, t_cut)]   # one head, timed alone
    else:
        drafts = []
    lookup = PromptLookup(batch, ctx) if kind is not None and kind.kind == "ngram" else None
    staged = {}
    if lookup is not None:   # pinned, one per k: the copy to the GPU is asynchronous
        staged = {k: torch.zeros(batch, k, dtype=torch.int64,
                                 pin_memory=device.type == "cuda") for k in ks}
    return Group(batch, ctx, ks, tok, ptok, results, drafts,
                 {k: verify_step(k) for k in ks}, plain, kind=kind, lookup=lookup,
                 staged=staged)


def capture_all(group: Group, device: torch.device) -> None:
    """One CUDA graph per step, all sharing one memory pool (replayed one at a time on
    one stream; every value read later lives in a static buffer outside the pool)."""
    if device.type != "cuda":
        return
    pool = torch.cuda.graph_pool_handle()
    fns: dict[str, Callable[[], None]] = {f"draft{i}": f for i, f in enumerate(group.draft_fns)}
    fns.update({f"verify{k}": f for k, f in group.verify_fns.items()})
    fns["plain"] = group.plain_fn
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for fn in fns.values():
            fn()                                   # warm-up: lazy init, cuBLAS workspaces
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    for name, fn in fns.items():
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            fn()
        group.graphs[name] = graph
    torch.cuda.synchronize()


def _runner(group: Group, name: str, fn: Callable[[], None]) -> Callable[[], None]:
    graph = group.graphs.get(name)
    return graph.replay if graph is not None else fn  # type: ignore[attr-defined]


def spec_iteration(group: Group, k: int) -> Callable[[], list[int]]:
    """One speculative iteration: k draft steps (or a host lookup and its copy), the
    verify, host sync and bookkeeping."""
    drafts = ([_runner(group, f"draft{i}", group.draft_fns[i]) for i in range(k)]
              if group.loop_drafts else [])
    verify = _runner(group, f"verify{k}", group.verify_fns[k])
    res = group.results[k]
    ctx = group.ctx
    lookup, staged = group.lookup, group.staged.get(k)

    def fn() -> list[int]:
        if lookup is not None and staged is not None:
            staged.copy_(torch.from_numpy(lookup.propose(k)))
            group.tok[:, 1:k + 1].copy_(staged, non_blocking=True)            # H2D
        for d in drafts:
            d()
        verify()
        host = res.cpu()                          # D2H copy: waits for the GPU
        accepted = host[:, 0].tolist()
        if lookup is not None:   # the next root token joins each history
            lookup.accept(host[:, 1:].gather(1, host[:, :1]).numpy()[:, 0])
        # per-sequence bookkeeping: new length, then roll the pointer back to ctx
        ends = [ctx + a + 1 for a in accepted]
        _ = [e - (e - ctx) for e in ends]
        return accepted
    return fn


def plain_iteration(group: Group) -> Callable[[], list[int]]:
    """One plain decoding step: replay, copy the tokens to the host."""
    step = _runner(group, "plain", group.plain_fn)

    def fn() -> list[int]:
        step()
        return group.ptok.cpu()[:, 0].tolist()
    return fn


def self_check(shape: Shape, batch: int, ctx: int, ks: tuple[int, ...],
               device: torch.device, dtype: torch.dtype, iterations: int = 3
               ) -> dict[int, float]:
    """Draft = target (same weights, identical caches): every draft token must be
    accepted. Returns {k: mean accepted per sequence and iteration} (ideally k); runs
    the same (graph-captured on a GPU) loop as the measurements."""
    w = reference.Weights(shape, str(device), dtype, seed=5)
    ct = make_cache(shape, batch, ctx + max(ks) + 1, device, dtype, seed=6)
    cd = reference.KVCache.__new__(reference.KVCache)
    cd.k, cd.v = ct.k.clone(), ct.v.clone()
    group = make_group(w, w, ct, cd, batch, ctx, ks, device)
    capture_all(group, device)
    out = {}
    for k in ks:
        fn = spec_iteration(group, k)
        acc = [a for _ in range(iterations) for a in fn()]
        out[k] = sum(acc) / len(acc)
    group.graphs.clear()
    return out


def wall_times(fn: Callable[[], object], policy: Policy, sync: Callable[[], None]
               ) -> tuple[list[float], list[object]]:
    """Warm-up, then wall-clock seconds per call (each call ends synchronised)."""
    for _ in range(policy.warmup):
        fn()
    sync()
    times, outs = [], []
    t_start = time.perf_counter()
    while len(times) < policy.target:
        t0 = time.perf_counter()
        outs.append(fn())
        times.append(time.perf_counter() - t0)
        if len(times) >= policy.min_reps and time.perf_counter() - t_start >= policy.max_s:
            break
    return times, outs


# ----------------------------------------------------------------------------------
# the campaign
# ----------------------------------------------------------------------------------
@dataclass
class Run(Logged):
    out: Path
    device: torch.device
    dtype: torch.dtype
    budget: Budget
    clock: Clock
    sink: CsvSink
    alone: Policy = ALONE
    loop: Policy = LOOP
    n_errors: int = 0
    groups_done: int = 0
    skipped: list[str] = field(default_factory=list)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"



def measure_group(run: Run, pair: str, tname: str, dname: str, group: Group) -> None:
    capture_all(group, run.device)
    launch = "graph" if run.cuda else "cpu"
    alone = lambda name, fn: stats(repeat(run.clock, _runner(group, name, fn), run.alone), 1e3)  # noqa: E731
    if group.lookup is not None:   # prompt lookup: host wall time of one proposal
        lk, kmax = group.lookup, max(group.ks)
        draft = stats(wall_times(lambda: lk.propose(kmax), run.alone, lambda: None)[0], 1e3)
    else:
        draft = alone("draft0", group.draft_fns[0])
    target = alone("plain", group.plain_fn)
    plain_t, _ = wall_times(plain_iteration(group), run.loop, run.clock.sync)
    plain = stats(plain_t, 1e3)
    for k in group.ks:
        verify = alone(f"verify{k}", group.verify_fns[k])
        times, outs = wall_times(spec_iteration(group, k), run.loop, run.clock.sync)
        it = stats(times, 1e3)
        acc = [a for o in outs for a in o]  # type: ignore[attr-defined]
        run.sink.write(pair=pair, target=tname, draft=dname, k=k, batch=group.batch,
                       ctx=group.ctx, launch=launch, iteration_ms=it["median"],
                       iteration_p10_ms=it["p10"], iteration_p90_ms=it["p90"],
                       repeats=it["repeats"], draft_step_ms=draft["median"],
                       verify_ms=verify["median"], target_step_ms=target["median"],
                       plain_iteration_ms=plain["median"], plain_p10_ms=plain["p10"],
                       plain_p90_ms=plain["p90"], accepted_mean=sum(acc) / max(len(acc), 1))
    run.groups_done += 1
    run.log(f"{pair} b={group.batch} ctx={group.ctx}: draft {draft['median']:.3f} ms, "
            f"target {target['median']:.3f} ms, plain loop {plain['median']:.3f} ms, "
            f"k={group.ks[-1]} iteration {it['median']:.3f} ms")


def _free_bytes(run: Run) -> int:
    if not run.cuda:
        return 2 * GiB
    free, _ = torch.cuda.mem_get_info()
    return free


def draft_shape(dname: str, target: Shape, shapes: dict[str, Shape]) -> Shape | None:
    """The shape of the draft's decoder (its KV cache): a model's, an EAGLE head's,
    None for Medusa heads and prompt lookup."""
    kind = parse_kind(dname)
    if kind is None:
        return shapes[dname]
    return eagle_shape(target, kind.size) if kind.kind == "eagle" else None


def measure_pair(run: Run, grid: Grid, tname: str, dname: str, shapes: dict[str, Shape]
                 ) -> None:
    pair = f"{tname}+{dname}"
    kind = parse_kind(dname)
    ts = shapes[tname]
    ds = draft_shape(dname, ts, shapes)
    run.log(f"{pair}: random weights")
    wt = reference.Weights(ts, str(run.device), run.dtype)
    wd: reference.Weights | MedusaHeads | None = None
    if kind is None:
        wd = reference.Weights(shapes[dname], str(run.device), run.dtype, seed=1)
    elif kind.kind == "eagle":
        wd = EagleWeights(wt, kind.size, str(run.device), run.dtype)
    elif kind.kind == "medusa":
        wd = MedusaHeads(ts, kind.size, str(run.device), run.dtype)
    label = kind.label if kind is not None else dname
    kmax, cmax = max(grid.ks), max(grid.ctxs)
    if kind is not None and kind.kind == "medusa" and kmax > kind.size:
        run.skipped += [f"{pair}: k up to {kmax} needs as many heads"]
        run.log(run.skipped[-1])
        return
    item = torch.tensor([], dtype=run.dtype).element_size()
    for b in grid.batches:
        if run.budget.over():
            return
        need = b * ((cmax + kmax + 1) * kv_bytes_per_token(ts, item)
                    + (0 if ds is None else (cmax + kmax) * kv_bytes_per_token(ds, item)))
        if need + (GRAPH_POOL_RESERVE if run.cuda else 0) > _free_bytes(run):
            run.skipped += [f"{pair} b={b}: KV ({need / GiB:.1f} GiB) does not fit"]
            run.log(run.skipped[-1])
            continue
        holder: dict[str, reference.KVCache] = {}

        def alloc(b: int = b, holder: dict = holder) -> None:
            holder["t"] = make_cache(ts, b, cmax + kmax + 1, run.device, run.dtype)
            if ds is not None:
                holder["d"] = make_cache(ds, b, cmax + kmax, run.device, run.dtype, seed=2)

        if not run.guard(f"{pair} caches b={b}", alloc):
            continue
        for c in grid.ctxs:
            if run.budget.over():
                break

            def one(b: int = b, c: int = c, holder: dict = holder) -> None:
                grp = make_group(wt, wd, holder["t"], holder.get("d"), b, c, grid.ks,
                                 run.device, kind=kind)
                try:
                    measure_group(run, pair, tname, label, grp)
                finally:
                    grp.graphs.clear()

            run.guard(f"{pair} b={b} ctx={c}", one)
            free_memory(run.device)
        holder.clear()
        free_memory(run.device)


def estimate_s(grid: Grid, shapes: dict[str, Shape], cuda: bool) -> tuple[int, int, float]:
    """(groups, rows, rough seconds): per group, capture every graph (a warm-up and a
    capture each), time the alone steps and loops within their policies' time caps."""
    groups = len(grid.pairs) * len(grid.batches) * len(grid.ctxs)
    rows = groups * len(grid.ks)
    if not cuda:
        return groups, rows, groups * 2.0
    total = 0.0
    for t, d in grid.pairs:
        for b in grid.batches:
            for c in grid.ctxs:
                def step_s(s: Shape, q: int, b: int = b, c: int = c) -> float:
                    params = s.num_hidden_layers * (4 * s.hidden_size ** 2 + 3 * s.hidden_size
                                                    * s.intermediate_size) \
                        + 2 * s.vocab_size * s.hidden_size
                    kv = b * c * kv_bytes_per_token(s, 2)
                    return (2 * params + kv) / 2.6e12 + s.num_hidden_layers * 40 * 4e-6 \
                        + 2 * params * b * q / 6e14
                kmax = max(grid.ks)
                ds = draft_shape(d, shapes[t], shapes)
                draft_s = step_s(ds, 1) if ds is not None else 0.0
                eager = 3.0   # eager forward ~ 3x the graph replay (launch-bound)
                capture = eager * (2 * kmax * draft_s
                                   + sum(2 * step_s(shapes[t], k + 1) for k in grid.ks)
                                   + 2 * step_s(shapes[t], 1)) + 0.05 * (kmax + len(grid.ks))
                alone = (2 + len(grid.ks)) * (ALONE.max_s + ALONE.warmup * 0.01)
                loops = sum(min(LOOP.max_s, LOOP.target * (k * draft_s
                                                           + step_s(shapes[t], k + 1)))
                            + LOOP.warmup * (k * draft_s + step_s(shapes[t], k + 1))
                            for k in grid.ks) + LOOP.max_s
                total += capture + alone + loops
        total += 5.0  # random weights
    return groups, rows, total


def main(argv: list[str] | None = None, shapes: dict[str, dict] | None = None) -> int:
    """CLI entry; ``shapes`` ({name: shape dict}) lets tests skip workloads/."""
    argv, args, budget, out = bc.start(argv, parse_args)
    device = bc.open_device(args.device)
    if device is None:
        return 2
    grid = select_grid(args, device.type == "cuda")
    all_shapes = {"tiny-target": TINY_TARGET, "tiny-draft": TINY_DRAFT, **(shapes or {})}
    if args.shapes_json:
        all_shapes.update(json.loads(Path(args.shapes_json).read_text()))
    names = list(dict.fromkeys(n for p in grid.pairs for n in p if parse_kind(n) is None))
    models = bc.load_models(names, all_shapes, Path(args.models_dir))
    if args.self_check:
        shape = models[grid.pairs[0][1]]
        res = self_check(shape, max(grid.batches[:2]), min(grid.ctxs), grid.ks, device,
                         getattr(torch, args.dtype))
        print(json.dumps({"self_check": grid.pairs[0][1], "mean_accepted": res}))
        return 0 if all(v >= 0.9 * k for k, v in res.items()) else 1
    groups, rows, est = estimate_s(grid, models, device.type == "cuda")
    env = bc.environment(args, argv, device, __file__)
    env.update({"models": {n: vars(s) for n, s in models.items()},
                "grid": {"pairs": grid.pairs, "ks": grid.ks, "batches": grid.batches,
                         "ctxs": grid.ctxs},
                "dtype": args.dtype, "estimated": {"groups": groups, "rows": rows,
                                                   "seconds": round(est)},
                "policies": {"alone": vars(ALONE if device.type == "cuda" else CPU_ALONE),
                             "loop": vars(LOOP if device.type == "cuda" else CPU_LOOP)}})
    (out / "spec_env.json").write_text(json.dumps(env, indent=2, default=str) + "\n")
    run = Run(out=out, device=device, dtype=getattr(torch, args.dtype), budget=budget,
              clock=Clock(device), sink=CsvSink(out / "spec.csv", SPEC_COLUMNS),
              alone=ALONE if device.type == "cuda" else CPU_ALONE,
              loop=LOOP if device.type == "cuda" else CPU_LOOP)
    run.log(f"bench_spec on {env.get('gpu_name') or device} ({args.gpu}): "
            f"{len(grid.pairs)} pairs x {len(grid.batches)} batches x {len(grid.ctxs)} ctxs "
            f"= {groups} groups, {rows} rows (k in {grid.ks}); estimated ~{est:.0f} s, "
            f"budget {args.budget_s:.0f} s -> {out}")
    t0 = time.monotonic()
    try:
        for t, d in grid.pairs:
            if budget.over():
                run.log("budget reached: no new groups")
                break
            run.guard(f"pair {t}+{d}", lambda t=t, d=d: measure_pair(run, grid, t, d, models))
            free_memory(device)
    finally:
        run.sink.close()
        summary = {"elapsed_s": round(budget.elapsed(), 1), "budget_s": budget.seconds,
                   "stopped_by_budget": budget.hit, "groups": run.groups_done,
                   "rows": len(run.sink.rows), "errors": run.n_errors,
                   "skipped": run.skipped, "estimated_s": round(est)}
        (out / "spec_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    run.log(f"done in {time.monotonic() - t0:.1f} s: {len(run.sink.rows)} rows, "
            f"{run.n_errors} errors")
    for r in run.sink.rows:
        print(f"  {r['pair']:<28} k={r['k']} b={r['batch']:<3} ctx={r['ctx']:<5} "
              f"iter {r['iteration_ms']:8.3f} ms  draft {r['draft_step_ms']:7.3f}  "
              f"verify {r['verify_ms']:7.3f}  target {r['target_step_ms']:7.3f}  "
              f"plain loop {r['plain_iteration_ms']:7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
