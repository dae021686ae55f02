"""Whole-step timings (steps.csv), kernel profiles (kernels.csv) and Chrome traces.

The first half is what every step campaign shares (bench.py, bench_stacks.py,
bench_quant_moe.py); each passes its own state, a bench_common.StepRun:

* planning: ``plan_batches`` groups step shapes by batch (one KV cache a batch) and
  leaves out those whose KV does not fit ``kv_budget_bytes``;
* timing: ``steps_model`` walks the plans, allocating each batch's cache and timing its
  shapes, CUDA-graph ones one at a time (``time_graph``: captured, replays timed) and
  eager ones together in turns (``time_round_robin``), each row written by
  ``write_step``;
* profiling (never in a process that still times anything: validation/README.md):
  ``profile_kernels`` / ``write_profile`` (kernels.csv) and ``record_trace`` (a gzip'd
  Chrome trace whose steps are marked ``gpusim_step_<i>``);
* ``each``: a list of guarded jobs, memory freed after each, until the budget is spent.

The second half measures the reference stack (reference.forward) for bench.py:
``run_steps`` and ``run_profile``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import reference
import torch
from bench_common import Ctx, Grid, Step, StepRun
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
    token_bytes: int = 0       # KV bytes of one token of one sequence

    @property
    def kv_bytes(self) -> int:
        return self.batch * self.max_len * self.token_bytes


def label(s: StepShape | Step) -> str:
    """``decode b=8 ctx=1024 q=1`` for a StepShape or a (mode, batch, ctx, q) tuple."""
    mode, b, c, q = (s.mode, s.batch, s.ctx, s.q) if isinstance(s, StepShape) else s
    return f"{mode} b={b} ctx={c} q={q}"


def kv_bytes_per_token(shape: Shape, itemsize: int = 2) -> int:
    """K and V bytes of one token of one sequence, all layers."""
    return 2 * shape.num_hidden_layers * shape.num_key_value_heads * shape.d * itemsize


# ----------------------------------------------------------------------------- planning

def grid_shapes(grid: Grid) -> list[StepShape]:
    """Every step shape of a bench_common.Grid, CUDA-graph and eager."""
    wanted = [StepShape("decode", b, c, 1, "graph") for b in grid.dec_b for c in grid.dec_ctx]
    wanted += [StepShape("verify", b, c, q, "graph") for b in grid.ver_b for q in grid.ver_q
               for c in grid.ver_ctx]
    wanted += [StepShape("prefill", b, 0, q, "graph") for b, q in grid.pre]
    wanted += [StepShape(m, b, c, q, "eager") for m, b, c, q in grid.eager]
    wanted += [StepShape(m, b, c, q, "graph") for m, b, c, q in grid.graph_steps]
    return wanted


def plan_batches(wanted: Iterable[StepShape], shape: Shape, kv_budget: int, itemsize: int = 2
                 ) -> tuple[list[BatchPlan], list[StepShape]]:
    """Shapes grouped by batch (one cache per batch: graph shapes first, then by mode,
    ctx, q), and those whose KV does not fit ``kv_budget`` bytes."""
    wanted = list(wanted)
    per_tok = kv_bytes_per_token(shape, itemsize)
    fits = [s for s in wanted if s.batch * s.end * per_tok <= kv_budget]
    skipped = [s for s in wanted if s not in fits]
    order = {"decode": 0, "verify": 1, "prefill": 2}
    plans = []
    for b in sorted({s.batch for s in fits}):
        mine = sorted((s for s in fits if s.batch == b),
                      key=lambda s: (s.launch != "graph", order.get(s.mode, 3), s.ctx, s.q))
        plans.append(BatchPlan(b, max(s.end for s in mine), tuple(mine), per_tok))
    return plans, skipped


def plan_steps(grid: Grid, shape: Shape, kv_budget: int, itemsize: int = 2
               ) -> tuple[list[BatchPlan], list[StepShape]]:
    """plan_batches of every shape of ``grid``."""
    return plan_batches(grid_shapes(grid), shape, kv_budget, itemsize)


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


def kv_budget_bytes(run: StepRun, reserve: float = 0.12, reserve_min: int = 8 * GiB) -> int:
    """KV bytes a model may use now: free memory less a reserve (activations, graph
    pools, workspaces: ``reserve`` of the GPU, at least ``reserve_min``), at most half
    the GPU; ``run.kv_budget_bytes`` where set; 256 MiB on the CPU."""
    if run.kv_budget_bytes is not None:
        return run.kv_budget_bytes
    if not run.cuda:
        return 256 * MiB
    free, total = torch.cuda.mem_get_info()
    return max(0, min(int(0.5 * total), free - max(reserve_min, int(reserve * total))))


# ----------------------------------------------------------------------------- timing

def each(run: StepRun, jobs: Iterable[tuple[str, Callable[[], object]]]) -> None:
    """Each ``(what, fn)`` under run.guard, memory freed after it, until the budget is
    spent. ``jobs`` may be a generator: nothing of a job is built before its turn."""
    for what, fn in jobs:
        if run.stop():
            return
        run.guard(what, fn)
        free_memory(run.device)


def write_step(run: StepRun, model: str, s: StepShape, launch: str, times: list[float],
               **extra: object) -> None:
    """One steps.csv row: the median, p10 and p90 of ``times`` (seconds) in ms."""
    st = stats(times, 1e3)
    run.steps.write(model=model, mode=s.mode, batch=s.batch, ctx=s.ctx, q=s.q, launch=launch,
                    median_ms=st["median"], p10_ms=st["p10"], p90_ms=st["p90"],
                    repeats=st["repeats"], kernels=None, **extra)


def time_graph(run: StepRun, fn: Callable[[], object]) -> list[float]:
    """Seconds of each timed replay of ``fn`` captured in a CUDA graph (CPU: eager calls)."""
    return measure(run.clock, fn, run.policy, graph=True)


EAGER_ROUNDS = 60


def time_round_robin(run: StepRun, fns: list[Callable[[], object]]) -> list[list[float]]:
    """Eager calls timed in turns, one call of each per round, ``EAGER_ROUNDS`` rounds
    (fewer once the budget is spent), after each one's warm-up calls.

    Eager step time is host-bound, and the host's speed drifts in phases of seconds
    (seen on the lent VMs: the same step 22 ms in one phase, 35 ms in the next);
    taking turns spreads each phase over every shape instead of over one. No kernel
    count here: torch.profiler, once used in a process, leaves CUPTI hooks that slow
    every later launch and graph replay (ab_steps.py --profiler-check), so timing
    phases never profile.
    """
    for fn in fns:
        for _ in range(run.policy.warmup):
            fn()
    run.clock.sync()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(EAGER_ROUNDS):
        for i, fn in enumerate(fns):
            times[i].append(run.clock.time(fn))
        if run.stop():
            break
    return times


def steps_model(run: StepRun, what: str, shape: Shape, wanted: Iterable[StepShape],
                alloc: Callable[[BatchPlan], object],
                graph: Callable[[object, StepShape], None],
                eager: Callable[[object, list[StepShape]], None],
                kv_budget: int | None = None) -> None:
    """One model's ``wanted`` shapes, batch by batch: ``alloc(plan)`` makes the batch's
    cache, then ``graph(cache, shape)`` times each CUDA-graph shape alone and
    ``eager(cache, shapes)`` the eager ones together. Shapes whose KV does not fit
    (``kv_budget``, default kv_budget_bytes) are listed in ``run.skipped``; an error
    is logged with its shape and the next one goes on."""
    budget = kv_budget_bytes(run) if kv_budget is None else kv_budget
    plans, skipped = plan_batches(wanted, shape, budget, run.dtype.itemsize)
    n = sum(len(p.shapes) for p in plans)
    run.log(f"{what}: {n} shapes in {len(plans)} batches, KV budget {budget / GiB:.1f} GiB, "
            f"{len(skipped)} skipped (KV does not fit)")
    run.skipped += [f"{what} {label(s)} {s.launch}: KV over budget" for s in skipped]
    for p in plans:
        if run.stop():
            break
        holder: dict[str, object] = {}
        if not run.guard(f"{what} cache b={p.batch} len={p.max_len}",
                         lambda p=p, holder=holder: holder.update(cache=alloc(p))):
            continue
        cache = holder.pop("cache")
        run.log(f"{what} batch={p.batch}: {len(p.shapes)} shapes, cache {p.max_len} tokens "
                f"({p.kv_bytes / GiB:.2f} GiB)")
        eager_shapes = [s for s in p.shapes if s.launch == "eager"]
        if eager_shapes and not run.stop():
            run.guard(f"{what} eager b={p.batch}", partial(eager, cache, eager_shapes))
        for s in p.shapes:
            if s.launch == "eager":
                continue
            if run.stop():
                break
            run.guard(f"{what} {label(s)} graph", partial(graph, cache, s))
            if run.cuda:
                torch.cuda.empty_cache()   # the graph's private pool
        del cache
        free_memory(run.device)


# ----------------------------------------------------------------------------- profiling

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


def _activities(run: StepRun) -> list:
    from torch.profiler import ProfilerActivity
    return [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if run.cuda else [])


def profile_kernels(run: StepRun, fn: Callable[[], object]) -> dict[str, list[float]]:
    """kernel name -> [count, total_us] of one call of ``fn`` under torch.profiler.

    GPU: every device activity (kernels, memcpy, memset). CPU: the innermost compute
    aten ops (a stand-in for kernels, so that the code path runs without a GPU).
    """
    from torch.autograd import DeviceType
    from torch.profiler import profile

    run.clock.sync()
    with profile(activities=_activities(run)) as prof:
        fn()
        run.clock.sync()
    agg: dict[str, list[float]] = {}
    for e in prof.events():
        if run.cuda:
            # kernels, memcpy, memset; not the "Context Sync" of the synchronize above
            keep = e.device_type == DeviceType.CUDA and " Sync" not in e.name
        else:
            keep = e.device_type == DeviceType.CPU and _cpu_kernel(e)
        if keep:
            a = agg.setdefault(e.name, [0, 0.0])
            a[0] += 1
            a[1] += e.time_range.elapsed_us()
    return agg


def write_profile(run: StepRun, fn: Callable[[], object], model: str, step: Step,
                  what: str, note: str = "", **extra: object) -> None:
    """kernels.csv rows (longest first) of one call of ``fn``, a warmed-up step of shape
    ``step`` (``extra``: more columns). Raises RuntimeError where nothing was recorded."""
    agg = profile_kernels(run, fn)
    if not agg:
        raise RuntimeError("the profiler recorded no kernels")
    mode, b, c, q = step
    for name, (count, total) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
        run.kernels.write(model=model, mode=mode, batch=b, ctx=c, q=q, kernel_name=name,
                          count=count, total_us=total, **extra)
    run.log(f"profile {what} {label(step)}: {int(sum(v[0] for v in agg.values()))} kernels, "
            f"{len(agg)} distinct{note}")


def record_trace(run: StepRun, fn: Callable[[], object], path: Path, steps: int) -> int:
    """Chrome trace (gzip) of ``steps`` consecutive calls of ``fn``, each in
    ``record_function("gpusim_step_<i>")`` and synchronized before its range closes, so
    that its kernels end inside it (CPU and CUDA activities, record_shapes). Returns
    the file's size in bytes."""
    from torch.profiler import profile, record_function

    run.clock.sync()
    with profile(activities=_activities(run), record_shapes=True) as prof:
        for i in range(steps):
            with record_function(f"gpusim_step_{i}"):
                fn()
                run.clock.sync()
    path.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(path))   # a .gz path: written gzip-compressed
    return path.stat().st_size


# ----------------------------------------------------------------------------- reference

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
    write_step(ctx, model, s, ctx.graph_launch, time_graph(ctx, _forward(w, cache, s, ctx.device)))


def _eager_round_robin(ctx: Ctx, model: str, w: reference.Weights,
                       cache: reference.KVCache, shapes: list[StepShape]) -> None:
    """Eager steps timed in turns (time_round_robin); kernels.csv (the profile phase,
    last) counts their kernels."""
    times = time_round_robin(ctx, [_forward(w, cache, s, ctx.device) for s in shapes])
    for s, t in zip(shapes, times, strict=True):
        write_step(ctx, model, s, "eager", t)


def run_steps(ctx: Ctx) -> None:
    """Eager steps of every model first, then the CUDA-graph steps.

    Eager steps are host-bound, and the host path slows down in a process that has
    captured and replayed many CUDA graphs: on one H100 lease the same eager steps took
    1.0-2.1x longer after the graph campaign than in a fresh process (validation/data/
    README.md). Timing them first keeps them in a fresh process's state.
    """
    each(ctx, ((f"steps {model} {launch}", partial(_steps_model, ctx, model, shape, launch))
               for launch in ("eager", "graph") for model, shape in ctx.models.items()))


def _steps_model(ctx: Ctx, model: str, shape: Shape, launch: str) -> None:
    """One model's ``launch`` ("eager" or "graph") shapes, batch by batch."""
    ctx.log(f"steps {model} {launch}: random weights")
    w = reference.Weights(shape, str(ctx.device), ctx.dtype)
    steps_model(
        ctx, f"steps {model}", shape,
        [s for s in grid_shapes(ctx.grid) if s.launch == launch],
        alloc=lambda p: make_cache(shape, p.batch, p.max_len, ctx.device, ctx.dtype),
        graph=lambda cache, s: _step_one(ctx, model, w, cache, s),
        eager=lambda cache, shapes: _eager_round_robin(ctx, model, w, cache, shapes))


def run_profile(ctx: Ctx) -> None:
    each(ctx, ((f"profile {model}", partial(_profile_model, ctx, model, shape))
               for model, shape in ctx.models.items()))


def _profile_model(ctx: Ctx, model: str, shape: Shape) -> None:
    w = reference.Weights(shape, str(ctx.device), ctx.dtype)

    def one(step: Step) -> None:
        s = StepShape(*step, "eager")
        fn = _forward(w, make_cache(shape, s.batch, s.end, ctx.device, ctx.dtype), s,
                      ctx.device)
        for _ in range(3):
            fn()
        write_profile(ctx, fn, model, step, model)

    each(ctx, ((f"profile {model} {label(st)}", partial(one, st)) for st in ctx.grid.profile))
