"""Whole-step timings of reference.forward (steps.csv) and kernel profiles (kernels.csv)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import reference
import torch
from bench_common import Ctx, Grid
from bench_timing import GiB, MiB, free_memory, measure, stats
from reference import Shape


@dataclass(frozen=True)
class StepShape:
    mode: str
    batch: int
    ctx: int
    q: int
    launch: str  # "graph" or "eager"

    @property
    def end(self) -> int:
        return self.ctx + self.q


@dataclass(frozen=True)
class BatchPlan:
    batch: int
    max_len: int               # cache length: the largest ctx + q of the shapes
    shapes: tuple[StepShape, ...]


def kv_bytes_per_token(shape: Shape, itemsize: int = 2) -> int:
    """K and V bytes of one token of one sequence, all layers."""
    return 2 * shape.num_hidden_layers * shape.num_key_value_heads * shape.d * itemsize


def plan_steps(grid: Grid, shape: Shape, kv_budget: int, itemsize: int = 2
               ) -> tuple[list[BatchPlan], list[StepShape]]:
    """Shapes grouped by batch (one cache per batch), and those whose KV does not fit."""
    wanted = [StepShape("decode", b, c, 1, "graph") for b in grid.dec_b for c in grid.dec_ctx]
    wanted += [StepShape("verify", b, c, q, "graph") for b in grid.ver_b for q in grid.ver_q
               for c in grid.ver_ctx]
    wanted += [StepShape("prefill", b, 0, q, "graph") for b, q in grid.pre]
    wanted += [StepShape(m, b, c, q, "eager") for m, b, c, q in grid.eager]
    wanted += [StepShape(m, b, c, q, "graph") for m, b, c, q in grid.graph_steps]
    per_tok = kv_bytes_per_token(shape, itemsize)
    fits = [s for s in wanted if s.batch * s.end * per_tok <= kv_budget]
    skipped = [s for s in wanted if s not in fits]
    order = {"decode": 0, "verify": 1, "prefill": 2}
    plans = []
    for b in sorted({s.batch for s in fits}):
        mine = sorted((s for s in fits if s.batch == b),
                      key=lambda s: (s.launch != "graph", order[s.mode], s.ctx, s.q))
        plans.append(BatchPlan(b, max(s.end for s in mine), tuple(mine)))
    return plans, skipped


def make_cache(shape: Shape, batch: int, max_len: int, device: torch.device,
               dtype: torch.dtype, seed: int = 1) -> reference.KVCache:
    """A reference.KVCache filled with N(0, 1) values drawn directly in ``dtype``
    (reference.KVCache draws in float32 first, which needs 3x the memory at the peak)."""
    cache = reference.KVCache.__new__(reference.KVCache)
    size = (shape.num_hidden_layers, batch, shape.num_key_value_heads, max_len, shape.d)
    g = torch.Generator(device=device).manual_seed(seed)
    cache.k = torch.empty(size, device=device, dtype=dtype).normal_(generator=g)
    cache.v = torch.empty(size, device=device, dtype=dtype).normal_(generator=g)
    return cache


def kv_budget_bytes(ctx: Ctx) -> int:
    """KV bytes a model may use now: ~half the GPU memory, less if little is free."""
    if ctx.kv_budget_bytes is not None:
        return ctx.kv_budget_bytes
    if not ctx.cuda:
        return 256 * MiB
    free, total = torch.cuda.mem_get_info()
    reserve = max(8 * GiB, int(0.12 * total))     # activations, graph pools, workspaces
    return max(0, min(int(0.5 * total), free - reserve))


# aten ops that launch no kernel of their own (views, allocations, dispatch helpers)
_CPU_NO_KERNEL = frozenset({
    "view", "_unsafe_view", "reshape", "slice", "select", "transpose", "t", "expand",
    "as_strided", "unsqueeze", "squeeze", "split", "chunk", "narrow", "alias", "detach",
    "empty", "empty_like", "empty_strided", "resize_", "lift_fresh", "unbind", "to",
    "_to_copy", "resolve_conj", "resolve_neg", "result_type", "contiguous", "linear",
    "matmul", "scaled_dot_product_attention", "_reshape_alias", "clone", "zeros",
})


def _cpu_kernel(e: object) -> bool:
    """A CPU op that stands for a kernel: a compute aten op with no compute op below it."""
    def compute(x: object) -> bool:
        return x.name.startswith("aten::") and x.name[6:] not in _CPU_NO_KERNEL

    def below(x: object) -> bool:
        return any(compute(c) or below(c) for c in x.cpu_children)

    return compute(e) and not below(e)


def profile_kernels(ctx: Ctx, fn: Callable[[], object]) -> dict[str, list[float]]:
    """kernel name -> [count, total_us] of one call of ``fn`` under torch.profiler.

    GPU: every device activity (kernels, memcpy, memset). CPU: the innermost compute
    aten ops (a stand-in for kernels, so that the code path runs without a GPU).
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ctx.cuda else [])
    ctx.clock.sync()
    with profile(activities=acts) as prof:
        fn()
        ctx.clock.sync()
    agg: dict[str, list[float]] = {}
    for e in prof.events():
        if ctx.cuda:
            # kernels, memcpy, memset; not the "Context Sync" of the synchronize above
            keep = e.device_type == DeviceType.CUDA and " Sync" not in e.name
        else:
            keep = e.device_type == DeviceType.CPU and _cpu_kernel(e)
        if keep:
            a = agg.setdefault(e.name, [0, 0.0])
            a[0] += 1
            a[1] += e.time_range.elapsed_us()
    return agg


def _forward(w: reference.Weights, cache: reference.KVCache, s: StepShape, device: torch.device
             ) -> Callable[[], torch.Tensor]:
    if s.end > cache.k.shape[3]:
        raise ValueError(f"KV write {s.ctx}..{s.end} outside a cache of {cache.k.shape[3]}")
    tokens = torch.randint(0, w.shape.vocab_size, (s.batch, s.q), device=device)
    mask = reference.verify_mask(s.q, s.end) if s.mode == "verify" else None
    return lambda: reference.forward(w, cache, tokens, s.ctx, s.mode, mask)


def _step_one(ctx: Ctx, model: str, w: reference.Weights, cache: reference.KVCache,
                s: StepShape) -> None:
    """One CUDA-graph step shape (eager shapes: ``_eager_round_robin``)."""
    times = measure(ctx.clock, _forward(w, cache, s, ctx.device), ctx.policy, graph=True)
    st = stats(times, 1e3)
    ctx.steps.write(model=model, mode=s.mode, batch=s.batch, ctx=s.ctx, q=s.q,
                    launch=ctx.graph_launch,
                    median_ms=st["median"], p10_ms=st["p10"], p90_ms=st["p90"],
                    repeats=st["repeats"], kernels=None)


EAGER_ROUNDS = 60


def _eager_round_robin(ctx: Ctx, model: str, w: reference.Weights,
                       cache: reference.KVCache, shapes: list[StepShape]) -> None:
    """Eager steps timed in turns, one call of each shape per round.

    Eager step time is host-bound, and the host's speed drifts in phases of seconds
    (seen on the lent VMs: the same step 22 ms in one phase, 35 ms in the next);
    taking turns spreads each phase over every shape instead of over one.
    """
    # no kernel count here: torch.profiler, once used in a process, leaves CUPTI hooks
    # that slow every later launch and graph replay (ab_steps.py --profiler-check), so
    # the steps phase never profiles; kernels.csv (the profile phase, last) counts them
    fns = [_forward(w, cache, s, ctx.device) for s in shapes]
    for fn in fns:
        for _ in range(ctx.policy.warmup):
            fn()
    ctx.clock.sync()
    times: list[list[float]] = [[] for _ in shapes]
    for _ in range(EAGER_ROUNDS):
        for i, fn in enumerate(fns):
            times[i].append(ctx.clock.time(fn))
        if ctx.stop():
            break
    for s, t in zip(shapes, times, strict=True):
        st = stats(t, 1e3)
        ctx.steps.write(model=model, mode=s.mode, batch=s.batch, ctx=s.ctx, q=s.q,
                        launch="eager", median_ms=st["median"], p10_ms=st["p10"],
                        p90_ms=st["p90"], repeats=st["repeats"], kernels=None)


def run_steps(ctx: Ctx) -> None:
    """Eager steps of every model first, then the CUDA-graph steps.

    Eager steps are host-bound, and the host path slows down in a process that has
    captured and replayed many CUDA graphs: on one H100 lease the same eager steps took
    1.0-2.1x longer after the graph campaign than in a fresh process (validation/data/
    README.md). Timing them first keeps them in a fresh process's state.
    """
    for launch in ("eager", "graph"):
        for model, shape in ctx.models.items():
            if ctx.stop():
                return
            ctx.guard(f"steps {model} {launch}", lambda model=model, shape=shape,
                      launch=launch: _steps_model(ctx, model, shape, launch))
            free_memory(ctx.device)


def _steps_model(ctx: Ctx, model: str, shape: Shape, launch: str) -> None:
    """One model's ``launch`` ("eager" or "graph") shapes, batch by batch."""
    ctx.log(f"steps {model} {launch}: random weights")
    w = reference.Weights(shape, str(ctx.device), ctx.dtype)
    budget = kv_budget_bytes(ctx)
    plans, skipped = plan_steps(ctx.grid, shape, budget, ctx.dtype.itemsize)
    skipped = [s for s in skipped if s.launch == launch]
    plans = [BatchPlan(p.batch, max(s.end for s in mine), mine) for p in plans
             if (mine := tuple(s for s in p.shapes if s.launch == launch))]
    n = sum(len(p.shapes) for p in plans)
    ctx.log(f"steps {model}: {n} shapes in {len(plans)} batches, KV budget "
            f"{budget / GiB:.1f} GiB, {len(skipped)} skipped (KV does not fit)")
    ctx.skipped += [f"steps {model} {s.mode} b={s.batch} ctx={s.ctx} q={s.q} {s.launch}: "
                    "KV over budget" for s in skipped]
    for p in plans:
        if ctx.stop():
            break
        holder: dict[str, reference.KVCache] = {}

        def alloc(p: BatchPlan = p, holder: dict = holder) -> None:
            holder["cache"] = make_cache(shape, p.batch, p.max_len, ctx.device, ctx.dtype)

        if not ctx.guard(f"steps {model} cache b={p.batch} len={p.max_len}", alloc):
            continue
        ctx.log(f"steps {model} batch={p.batch}: {len(p.shapes)} shapes, cache "
                f"{p.max_len} tokens ({2 * holder['cache'].k.nbytes / GiB:.2f} GiB)")
        if launch == "eager":
            if not ctx.stop():
                ctx.guard(f"steps {model} eager b={p.batch}",
                          lambda p=p, holder=holder:
                          _eager_round_robin(ctx, model, w, holder["cache"], list(p.shapes)))
        else:
            for s in p.shapes:
                if ctx.stop():
                    break
                ctx.guard(f"steps {model} {s.mode} b={s.batch} ctx={s.ctx} q={s.q} graph",
                          lambda s=s, holder=holder:
                          _step_one(ctx, model, w, holder["cache"], s))
                if ctx.cuda:
                    torch.cuda.empty_cache()   # the graph's private pool
        holder.clear()
        free_memory(ctx.device)


def run_profile(ctx: Ctx) -> None:
    for model, shape in ctx.models.items():
        if ctx.stop():
            return
        ctx.guard(f"profile {model}", lambda model=model, shape=shape:
                  _profile_model(ctx, model, shape))
        free_memory(ctx.device)


def _profile_model(ctx: Ctx, model: str, shape: Shape) -> None:
    w = reference.Weights(shape, str(ctx.device), ctx.dtype)
    for mode, b, c, q in ctx.grid.profile:
        if ctx.stop():
            break

        def one(mode: str = mode, b: int = b, c: int = c, q: int = q) -> None:
            s = StepShape(mode, b, c, q, "eager")
            cache = make_cache(shape, b, s.end, ctx.device, ctx.dtype)
            fn = _forward(w, cache, s, ctx.device)
            for _ in range(3):
                fn()
            agg = profile_kernels(ctx, fn)
            if not agg:
                raise RuntimeError("the profiler recorded no kernels")
            for name, (count, total) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
                ctx.kernels.write(model=model, mode=mode, batch=b, ctx=c, q=q,
                                  kernel_name=name, count=count, total_us=total)
            ctx.log(f"profile {model} {mode} b={b} ctx={c} q={q}: "
                    f"{int(sum(v[0] for v in agg.values()))} kernels, {len(agg)} distinct")

        ctx.guard(f"profile {model} {mode} b={b} ctx={c} q={q}", one)
        free_memory(ctx.device)
