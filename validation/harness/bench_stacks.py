r"""Step times, kernel profiles and traces of the measured stacks (stacks_forward.py).

    python3 validation/harness/bench_stacks.py --out DIR --gpu NAME --stack NAME[,NAME...]
        [--device cuda|cpu] [--budget-s S] [--models m1,...] [--only steps,profile,trace]
        [--eager-only | --graph-only] [--step-shapes mode:batch:ctx:q,...]
        [--eager-shapes ...] [--profile-shapes ...] [--trace-shapes ...] [--trace-steps N]
        [--quick]

Phases, in this order (on a GPU run each in its own process: never time after
torch.profiler, validation/README.md):

* ``steps``: eager steps first (60 calls of each shape taken in turns, as
  bench_steps.py times them), then every shape of the grid captured in a CUDA graph and
  its replays timed (median of adaptive repeats). ``--eager-only`` / ``--graph-only``
  keep one kind. Writes ``steps.csv``: bench_common.STEPS_COLUMNS plus ``stack`` and
  ``cache_len`` (positions the cache holds: hf-transformers' attention reads them all).
* ``profile``: per model the ``--profile-shapes`` run eagerly (torch-compile: the
  compiled function without a CUDA graph; hf-transformers: its eager prefill reads
  only the prompt's keys, its captured one the whole cache) under torch.profiler:
  ``kernels.csv`` (KERNELS_COLUMNS plus ``stack``).
* ``trace``: per model and ``--trace-shapes`` entry, a torch.profiler Chrome trace
  (CPU and CUDA activities, record_shapes) of ``--trace-steps`` consecutive eager steps,
  each inside ``record_function("gpusim_step_<i>")`` and ending in a synchronize:
  ``traces/<stack>__<model>__<mode>_b<b>_ctx<c>_q<q>_n<N>.json.gz`` (Llama 3.2 1B on an
  H100: 45 KiB torch-compile, 170 KiB torch-fused, 230 KiB torch-hf, 310 KiB
  hf-transformers; 1-5 MB unpacked).

Also env.json, summary.json (with each torch-compile model's graphs and compile
seconds) and errors.log (if any). CSV rows are appended and flushed as measured; an
error is logged with its shape and the campaign goes on; no new measurement starts once
``--budget-s`` seconds have passed. Several stacks (comma list) run one after another.

The campaign on one GPU (~6 min on an H100; one DIR per process, as each writes its own
env.json and summary.json). torch.compile costs 16-31 s a graph for Llama 3.2 1B and
53 s for Llama 3.1 8B (cold caches; Inductor's on-disk caches make a later process's
compile of the same graph ~4 s), and batch 1 and each mode compile their own graph, so
torch-compile runs on the 1B alone at batch >= 2, decode and verify:

    D=OUT; G=h100-sxm; B="python3 validation/harness/bench_stacks.py --gpu $G"
    S=torch-hf,torch-fused,hf-transformers; M=llama-3.2-1b,llama-3.1-8b
    C1=decode:16:1024:1,decode:16:4096:1,decode:64:1024:1,decode:64:4096:1,decode:256:1024:1
    C2=verify:16:512:4,verify:16:4096:4,verify:64:512:4,verify:64:4096:4
    $B --out $D/graph --stack $S --only steps --graph-only --budget-s 170          # ~140 s
    $B --out $D/graph-compile --stack torch-compile --only steps --models llama-3.2-1b \
        --step-shapes $C1,$C2 --budget-s 90                                        # ~60 s
    $B --out $D/eager --stack $S --only steps --eager-only --models $M --budget-s 60 # ~45 s
    $B --out $D/eager-compile --stack torch-compile --only steps --eager-only \
        --models llama-3.2-1b --eager-shapes decode:64:1024:1,verify:16:1024:4     # ~25 s
    $B --out $D/profile --stack $S --only profile --models $M --budget-s 45        # ~35 s
    $B --out $D/trace --stack $S --only trace --models $M --budget-s 40            # ~30 s
    $B --out $D/compile-profile-trace --stack torch-compile --only profile,trace \
        --models llama-3.2-1b --profile-shapes decode:8:1024:1,verify:16:512:2 \
        --trace-shapes decode:8:1024:1,verify:16:512:4                             # ~25 s

Imports stdlib, numpy, yaml, torch, and transformers for hf-transformers.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import importlib.util
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

import bench  # noqa: E402
from bench_common import GRIDS, KERNELS_COLUMNS, STEPS_COLUMNS, Grid, Logged, Step  # noqa: E402
from bench_steps import (  # noqa: E402
    EAGER_ROUNDS,
    BatchPlan,
    StepShape,
    kv_budget_bytes,
    plan_steps,
    profile_kernels,
)
from bench_timing import Budget, Clock, CsvSink, GiB, Policy, free_memory, measure, stats  # noqa: E402
from reference import Shape  # noqa: E402
from stacks_forward import STACKS, CompileStack, StepFn  # noqa: E402
from stacks_forward import Stack as StackT  # noqa: E402

STACK_STEPS_COLUMNS = [*STEPS_COLUMNS, "stack", "cache_len"]
STACK_KERNELS_COLUMNS = [*KERNELS_COLUMNS, "stack"]
PHASES = ("steps", "profile", "trace")
PROFILE_SHAPES: tuple[Step, ...] = (("decode", 1, 1024, 1), ("decode", 8, 1024, 1),
                                    ("verify", 16, 512, 2), ("prefill", 1, 0, 512))
# The steps grid of one stack: the full grid's modes, batches and contexts thinned to 14
# CUDA-graph shapes a model (decode 4 batches x 2 ctx, verify 2 x 2 ctx at q 4, prefill
# of 512 and 2048 tokens; decode b=256 at ctx 4096 fits the KV budget of Llama 3.2 1B
# alone) and 3 eager ones. On an H100 (torch 2.11) the 5 default models take ~35 s
# with torch-hf or torch-fused and ~70 s with hf-transformers, whose batch 64-256 steps
# take 150-200 ms (it repeats the KV heads of its whole static cache): estimated from a
# measured run of 19 shapes (these, decode b=4, verify b=1, a 4 x 2048 prefill) that
# took 52 s and ~100 s.
STACKS_GRID = dataclasses.replace(
    GRIDS["full"], name="stacks",
    dec_b=(1, 16, 64, 256), dec_ctx=(1024, 4096),
    ver_b=(16, 64), ver_q=(4,), ver_ctx=(512, 4096),
    pre=((1, 512), (1, 2048)),
    eager=(("decode", 1, 1024, 1), ("decode", 64, 1024, 1), ("verify", 16, 1024, 4)),
    profile=PROFILE_SHAPES,
)
QUICK_GRID = dataclasses.replace(
    GRIDS["quick"], name="stacks-quick",
    dec_b=(1, 16), dec_ctx=(1024,), ver_b=(4,), ver_q=(4,), ver_ctx=(512,),
    pre=((1, 512),), eager=(("decode", 1, 1024, 1),), profile=(("decode", 8, 1024, 1),),
)
# CPU: tiny shapes, only to run every code path
CPU_GRID = dataclasses.replace(
    GRIDS["cpu"], name="stacks-cpu",
    dec_b=(1, 2), dec_ctx=(16,), ver_b=(2,), ver_q=(3,), ver_ctx=(16,), pre=((1, 8),),
    eager=(("decode", 1, 16, 1), ("verify", 2, 16, 3)),
    profile=(("decode", 2, 16, 1), ("verify", 2, 16, 3), ("prefill", 1, 0, 8)),
)
TRACE_SHAPES: dict[str, tuple[Step, ...]] = {
    "stacks": (("decode", 8, 1024, 1), ("verify", 16, 512, 4), ("prefill", 1, 0, 512)),
    "stacks-quick": (("decode", 8, 1024, 1),),
    "stacks-cpu": (("decode", 2, 16, 1), ("verify", 2, 16, 3), ("prefill", 1, 0, 8)),
}


@dataclass
class Run(Logged):
    """One campaign's state (duck-types bench_common.Ctx for bench_steps' helpers)."""

    out: Path
    device: torch.device
    grid: Grid
    budget: Budget
    clock: Clock
    policy: Policy
    models: dict[str, Shape]
    steps: CsvSink
    kernels: CsvSink
    trace_shapes: tuple[Step, ...]
    trace_steps: int
    kv_budget_bytes: int | None = None
    dtype: torch.dtype = torch.bfloat16
    n_errors: int = 0
    skipped: list[str] = field(default_factory=list)
    # stack -> model -> {"graphs": n, "compile_s": seconds of the calls that compiled}
    compiles: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    traces: list[dict[str, object]] = field(default_factory=list)
    _budget_logged: bool = False

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def graph_launch(self) -> str:
        """The launch label of graph-timed rows: ``cpu`` where there are no graphs."""
        return "graph" if self.cuda else "cpu"

    def stop(self) -> bool:
        """True once the budget is spent (logged once)."""
        if self.budget.over():
            if not self._budget_logged:
                self.log(f"budget of {self.budget.seconds:.0f} s reached: "
                         "no new measurements")
                self._budget_logged = True
            return True
        return False


def _label(s: StepShape) -> str:
    return f"{s.mode} b={s.batch} ctx={s.ctx} q={s.q}"


def first_call(run: Run, stack: StackT, model: str, what: str, fn: StepFn) -> float:
    """Time the first call of a new step (host wall time, synchronized). Where it
    compiled graphs (torch-compile), count them and their seconds for ``model``."""
    before = stack.graphs
    t = run.clock.wall(fn)
    new = stack.graphs - before
    if new:
        c = run.compiles.setdefault(stack.name, {}).setdefault(
            model, {"graphs": 0, "compile_s": 0.0})
        c["graphs"] += new
        c["compile_s"] += t
        run.log(f"{stack.name} {model} {what}: compiled {new} graph(s) in {t:.1f} s "
                f"({stack.graphs} for this model)")
    return t


def _write_step(run: Run, stack: StackT, model: str, s: StepShape, launch: str,
                cache_len: int, times: list[float]) -> None:
    st = stats(times, 1e3)
    run.steps.write(stack=stack.name, model=model, mode=s.mode, batch=s.batch, ctx=s.ctx,
                    q=s.q, launch=launch, median_ms=st["median"], p10_ms=st["p10"],
                    p90_ms=st["p90"], repeats=st["repeats"], kernels=None,
                    cache_len=cache_len)


def _graph_step(run: Run, stack: StackT, model: str, m: object, cache: object,
                s: StepShape) -> None:
    """One shape: first call (compiles where it must), then CUDA-graph replays timed."""
    fn = stack.step(m, cache, s.mode, s.batch, s.ctx, s.q)
    first_call(run, stack, model, _label(s), fn)
    times = measure(run.clock, fn, run.policy, graph=True)
    _write_step(run, stack, model, s, run.graph_launch, stack.cache_len(cache), times)


def _eager_round_robin(run: Run, stack: StackT, model: str, m: object, cache: object,
                       shapes: list[StepShape]) -> None:
    """Eager steps timed in turns, one call of each shape per round, as
    bench_steps._eager_round_robin: the host's speed drifts in phases of seconds, and
    taking turns spreads each phase over every shape."""
    fns = [stack.step(m, cache, s.mode, s.batch, s.ctx, s.q) for s in shapes]
    for s, fn in zip(shapes, fns, strict=True):
        first_call(run, stack, model, f"{_label(s)} eager", fn)
        for _ in range(run.policy.warmup):
            fn()
    run.clock.sync()
    times: list[list[float]] = [[] for _ in shapes]
    for _ in range(EAGER_ROUNDS):
        for i, fn in enumerate(fns):
            times[i].append(run.clock.time(fn))
        if run.stop():
            break
    for s, t in zip(shapes, times, strict=True):
        _write_step(run, stack, model, s, "eager", stack.cache_len(cache), t)


def run_steps(run: Run, stack: StackT, launches: tuple[str, ...]) -> None:
    """Eager steps of every model first (a fresh process's host path), then graphs."""
    for launch in launches:
        for model, shape in run.models.items():
            if run.stop():
                return
            run.guard(f"steps {stack.name} {model} {launch}",
                      lambda model=model, shape=shape, launch=launch:
                      _steps_model(run, stack, model, shape, launch))
            free_memory(run.device)


def _load(run: Run, stack: StackT, model: str, shape: Shape) -> object:
    t0 = time.perf_counter()
    m = stack.load(shape, run.device, run.dtype)
    run.log(f"{stack.name} {model}: model built in {time.perf_counter() - t0:.1f} s")
    return m


def _steps_model(run: Run, stack: StackT, model: str, shape: Shape, launch: str) -> None:
    """One model's ``launch`` ("eager" or "graph") shapes, one cache per batch."""
    m = _load(run, stack, model, shape)
    budget = kv_budget_bytes(run)  # type: ignore[arg-type]  (duck-typed Ctx)
    plans, skipped = plan_steps(run.grid, shape, budget, run.dtype.itemsize)
    skipped = [s for s in skipped if s.launch == launch]
    plans = [BatchPlan(p.batch, max(s.end for s in mine), mine) for p in plans
             if (mine := tuple(s for s in p.shapes if s.launch == launch))]
    n = sum(len(p.shapes) for p in plans)
    run.log(f"steps {stack.name} {model} {launch}: {n} shapes in {len(plans)} batches, "
            f"KV budget {budget / GiB:.1f} GiB, {len(skipped)} skipped (KV does not fit)")
    run.skipped += [f"steps {stack.name} {model} {_label(s)} {s.launch}: KV over budget"
                    for s in skipped]
    for p in plans:
        if run.stop():
            break
        holder: dict[str, object] = {}

        def alloc(p: BatchPlan = p, holder: dict = holder) -> None:
            holder["cache"] = stack.new_cache(m, p.batch, p.max_len, run.device, run.dtype)

        if not run.guard(f"steps {stack.name} {model} cache b={p.batch} len={p.max_len}",
                         alloc):
            continue
        cache = holder["cache"]
        if launch == "eager":
            run.guard(f"steps {stack.name} {model} eager b={p.batch}",
                      lambda p=p, cache=cache:
                      _eager_round_robin(run, stack, model, m, cache, list(p.shapes)))
        else:
            for s in p.shapes:
                if run.stop():
                    break
                run.guard(f"steps {stack.name} {model} {_label(s)} graph",
                          lambda s=s, cache=cache: _graph_step(run, stack, model, m, cache, s))
                if run.cuda:
                    torch.cuda.empty_cache()   # the graph's private pool
        holder.clear()
        del cache
        free_memory(run.device)


def _warm(run: Run, stack: StackT, model: str, m: object, step: Step, what: str
          ) -> StepFn:
    """The step's callable over a cache that just fits it (the callable holds the
    cache), called 1 + 3 times."""
    mode, b, c, q = step
    fn = stack.step(m, stack.new_cache(m, b, c + q, run.device, run.dtype), mode, b, c, q)
    first_call(run, stack, model, f"{mode} b={b} ctx={c} q={q} {what}", fn)
    for _ in range(3):
        fn()
    return fn


def run_profile(run: Run, stack: StackT) -> None:
    """kernels.csv: each profile shape's kernels (names, counts, GPU time) of one call."""
    for model, shape in run.models.items():
        if run.stop():
            return
        run.guard(f"profile {stack.name} {model}",
                  lambda model=model, shape=shape: _profile_model(run, stack, model, shape))
        free_memory(run.device)


def _profile_model(run: Run, stack: StackT, model: str, shape: Shape) -> None:
    m = _load(run, stack, model, shape)
    for step in run.grid.profile:
        if run.stop():
            break
        mode, b, c, q = step

        def one(step: Step = step) -> None:
            mode, b, c, q = step
            fn = _warm(run, stack, model, m, step, "profile")
            agg = profile_kernels(run, fn)  # type: ignore[arg-type]  (duck-typed Ctx)
            if not agg:
                raise RuntimeError("the profiler recorded no kernels")
            for name, (count, total) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
                run.kernels.write(stack=stack.name, model=model, mode=mode, batch=b, ctx=c,
                                  q=q, kernel_name=name, count=count, total_us=total)
            run.log(f"profile {stack.name} {model} {mode} b={b} ctx={c} q={q}: "
                    f"{int(sum(v[0] for v in agg.values()))} kernels, {len(agg)} distinct")

        run.guard(f"profile {stack.name} {model} {mode} b={b} ctx={c} q={q}", one)
        free_memory(run.device)


def trace_path(out: Path, stack: str, model: str, step: Step, n: int) -> Path:
    mode, b, c, q = step
    return out / "traces" / f"{stack}__{model}__{mode}_b{b}_ctx{c}_q{q}_n{n}.json.gz"


def record_trace(run: Run, fn: StepFn, path: Path) -> int:
    """Chrome trace (gzip) of ``run.trace_steps`` consecutive calls of ``fn``, each in
    ``record_function("gpusim_step_<i>")`` and synchronized before its range closes, so
    that its kernels end inside it. Returns the file's size in bytes."""
    from torch.profiler import ProfilerActivity, profile, record_function

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if run.cuda else [])
    run.clock.sync()
    with profile(activities=acts, record_shapes=True) as prof:
        for i in range(run.trace_steps):
            with record_function(f"gpusim_step_{i}"):
                fn()
                run.clock.sync()
    path.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(path))   # a .gz path: written gzip-compressed
    return path.stat().st_size


def run_trace(run: Run, stack: StackT) -> None:
    for model, shape in run.models.items():
        if run.stop():
            return
        run.guard(f"trace {stack.name} {model}",
                  lambda model=model, shape=shape: _trace_model(run, stack, model, shape))
        free_memory(run.device)


def _trace_model(run: Run, stack: StackT, model: str, shape: Shape) -> None:
    m = _load(run, stack, model, shape)
    for step in run.trace_shapes:
        if run.stop():
            break

        def one(step: Step = step) -> None:
            fn = _warm(run, stack, model, m, step, "trace")
            path = trace_path(run.out, stack.name, model, step, run.trace_steps)
            size = record_trace(run, fn, path)
            run.traces.append({"file": str(path.relative_to(run.out)), "bytes": size})
            run.log(f"trace {path.name}: {size / 1024:.0f} KiB")

        run.guard(f"trace {stack.name} {model} {step}", one)
        free_memory(run.device)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output directory (created; appended to)")
    p.add_argument("--gpu", required=True, help="GPU name as the project calls it (h100-sxm)")
    p.add_argument("--stack", required=True,
                   help=f"comma list of stacks ({', '.join(STACKS)})")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--budget-s", type=float, default=300.0,
                   help="no new measurement starts after this many seconds")
    p.add_argument("--quick", action="store_true", help="tiny grid (sanity run)")
    p.add_argument("--only", default="", help="comma list of: steps, profile, trace "
                                              "(default: all, in that order)")
    p.add_argument("--models", default="",
                   help="comma list of model names (workloads/models/<name>.yaml, "
                        "--shapes-json keys, or 'tiny')")
    p.add_argument("--shapes-json", default=None,
                   help="JSON file {name: {hidden_size: ..., ...}} of model shapes")
    p.add_argument("--models-dir", default=str(bench.MODELS_DIR))
    launch = p.add_mutually_exclusive_group()
    launch.add_argument("--eager-only", action="store_true",
                        help="steps phase: measure only the eager shapes")
    launch.add_argument("--graph-only", action="store_true",
                        help="steps phase: measure only the CUDA-graph shapes")
    p.add_argument("--step-shapes", default="",
                   help="replace the steps grid by these CUDA-graph steps: comma list of "
                        "mode:batch:ctx:q")
    p.add_argument("--eager-shapes", default="",
                   help="replace the eager steps: comma list of mode:batch:ctx:q")
    p.add_argument("--profile-shapes", default="",
                   help="replace the profiled steps: comma list of mode:batch:ctx:q")
    p.add_argument("--trace-shapes", default="",
                   help="replace the traced steps: comma list of mode:batch:ctx:q")
    p.add_argument("--trace-steps", type=int, default=2,
                   help="consecutive steps in each trace")
    p.add_argument("--kv-budget-gb", type=float, default=None,
                   help="KV cache bytes per model in steps (default: ~half the GPU memory)")
    return p.parse_args(argv)


def select_phases(only: str) -> list[str]:
    """``--only`` -> phases in campaign order. Raises SystemExit for an unknown one."""
    want = {t.strip() for t in only.split(",") if t.strip()}
    unknown = want - set(PHASES)
    if unknown:
        raise SystemExit(f"--only: unknown phase(s) {sorted(unknown)} (known: "
                         f"{', '.join(PHASES)})")
    return [ph for ph in PHASES if ph in want or not want]


def select_stacks(text: str) -> list[str]:
    """``--stack`` -> stack names. Raises SystemExit for an unknown one, or for
    hf-transformers where transformers is not installed."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in STACKS]
    if unknown or not names:
        raise SystemExit(f"--stack: unknown {unknown or text!r} (known: {', '.join(STACKS)})")
    if "hf-transformers" in names and importlib.util.find_spec("transformers") is None:
        raise SystemExit("--stack hf-transformers needs the transformers package")
    return list(dict.fromkeys(names))


def select_grid(args: argparse.Namespace, cuda: bool) -> Grid:
    """The device's grid with the options' replacements: ``--step-shapes`` replaces the
    CUDA-graph shapes and, as in bench.py, drops the eager ones; ``--eager-shapes`` and
    ``--profile-shapes`` replace theirs; ``--eager-only`` / ``--graph-only`` drop the
    other kind of step. Raises ValueError for a malformed shape list."""
    grid = (QUICK_GRID if args.quick else STACKS_GRID) if cuda else CPU_GRID
    if args.step_shapes:
        grid = dataclasses.replace(grid, dec_b=(), ver_b=(), pre=(), eager=(),
                                   graph_steps=bench.parse_steps(args.step_shapes))
    if args.eager_shapes:
        grid = dataclasses.replace(grid, eager=bench.parse_steps(args.eager_shapes))
    if args.profile_shapes:
        grid = dataclasses.replace(grid, profile=bench.parse_steps(args.profile_shapes))
    if args.eager_only:
        grid = dataclasses.replace(grid, dec_b=(), ver_b=(), pre=(), graph_steps=())
    if args.graph_only:
        grid = dataclasses.replace(grid, eager=())
    return grid


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _summary(run: Run, phases_done: list[str]) -> dict:
    return {
        "elapsed_s": round(run.budget.elapsed(), 1),
        "budget_s": run.budget.seconds,
        "stopped_by_budget": run.budget.hit,
        "phases_run": phases_done,
        "rows": {"steps": len(run.steps.rows), "kernels": len(run.kernels.rows),
                 "traces": len(run.traces)},
        "errors": run.n_errors,
        "skipped": run.skipped,
        "compiles": run.compiles,
        "traces": run.traces,
    }


def print_table(run: Run, summary: dict) -> None:
    print(f"bench_stacks: {summary['elapsed_s']} s, budget {summary['budget_s']:.0f} s"
          f"{' (stopped by budget)' if summary['stopped_by_budget'] else ''}, "
          f"{summary['errors']} errors, {len(summary['skipped'])} shapes skipped")
    print(f"rows: steps {summary['rows']['steps']}, kernels {summary['rows']['kernels']}, "
          f"traces {summary['rows']['traces']}")
    groups: dict[tuple, list[float]] = {}
    for r in run.steps.rows:
        key = (r["stack"], r["model"], r["mode"], r["launch"])
        groups.setdefault(key, []).append(r["median_ms"])
    if groups:
        print(f"  {'stack':<16} {'model':<16} {'mode':<8} {'launch':<6} {'rows':>4} "
              f"{'min ms':>9} {'max ms':>9}")
    for (st, m, mode, launch), v in groups.items():
        print(f"  {st:<16} {m:<16} {mode:<8} {launch:<6} {len(v):>4} "
              f"{min(v):9.3f} {max(v):9.3f}")
    for st, per_model in run.compiles.items():
        for m, c in per_model.items():
            print(f"  {st} {m}: {c['graphs']:.0f} graphs compiled, {c['compile_s']:.1f} s")


def main(argv: list[str] | None = None, shapes: dict[str, dict] | None = None) -> int:
    """CLI entry; ``shapes`` ({name: shape dict}) lets tests skip workloads/."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    stacks = select_stacks(args.stack)
    phases = select_phases(args.only)
    if args.trace_steps < 1:
        raise SystemExit("--trace-steps must be >= 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2

    shapes = dict(shapes or {})
    if args.shapes_json:
        shapes.update(json.loads(Path(args.shapes_json).read_text()))
    if args.models:
        names = [m.strip() for m in args.models.split(",") if m.strip()]
    elif shapes:
        names = list(shapes)
    else:
        names = ["tiny"] if device.type == "cpu" else list(bench.DEFAULT_MODELS)
    models = bench.load_models(names, shapes, Path(args.models_dir))
    grid = select_grid(args, device.type == "cuda")
    trace_shapes = (bench.parse_steps(args.trace_shapes) if args.trace_shapes
                    else TRACE_SHAPES[grid.name])

    env = bench.environment(args, argv, device)
    env["command"] = [sys.executable, str(Path(__file__)), *argv]
    env.update({
        "stacks": stacks, "models": {n: vars(s) for n, s in models.items()},
        "phases": phases, "grid": grid.name, "graph_steps": grid.graph_steps,
        "transformers": _version("transformers"), "triton": _version("triton"),
        "launches": "eager-only" if args.eager_only else
                    "graph-only" if args.graph_only else "eager+graph",
        "trace_shapes": trace_shapes, "trace_steps": args.trace_steps,
    })
    if "torch-compile" in stacks:
        stack = STACKS["torch-compile"]
        assert isinstance(stack, CompileStack)
        env["compile"] = stack.settings()
    (out / "env.json").write_text(json.dumps(env, indent=2, default=str) + "\n")

    run = Run(out=out, device=device, grid=grid, budget=budget, clock=Clock(device),
              policy=Policy(), models=models,
              steps=CsvSink(out / "steps.csv", STACK_STEPS_COLUMNS),
              kernels=CsvSink(out / "kernels.csv", STACK_KERNELS_COLUMNS),
              trace_shapes=trace_shapes, trace_steps=args.trace_steps,
              kv_budget_bytes=None if args.kv_budget_gb is None
              else int(args.kv_budget_gb * GiB))
    run.log(f"bench_stacks on {env.get('gpu_name') or device} ({args.gpu}): stacks "
            f"{', '.join(stacks)}, grid {grid.name}, models {', '.join(models)}, phases "
            f"{', '.join(phases)}, budget {args.budget_s:.0f} s -> {out}")
    launches = tuple(x for x in ("eager", "graph")
                     if not (x == "eager" and args.graph_only)
                     and not (x == "graph" and args.eager_only))
    runners: dict[str, Callable[[Run, StackT], None]] = {
        "steps": lambda r, st: run_steps(r, st, launches),
        "profile": run_profile, "trace": run_trace,
    }
    done = []
    try:
        for ph in phases:
            if run.stop():
                break
            for name in stacks:
                if run.stop():
                    break
                run.guard(f"phase {ph} {name}",
                          lambda ph=ph, name=name: runners[ph](run, STACKS[name]))
            done.append(ph)
    finally:
        summary = _summary(run, done)
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        run.steps.close()
        run.kernels.close()
    run.log(f"done in {budget.elapsed():.1f} s")
    print_table(run, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
