r"""Step times, kernel profiles and traces of the measured stacks (stacks_forward.py).

    python3 validation/harness/bench_stacks.py --out DIR --gpu NAME --stack NAME[,NAME...]
        [--device cuda|cpu] [--budget-s S] [--models m1,...]
        [--only steps,profile,trace,graph_profile] [--eager-only | --graph-only]
        [--step-shapes mode:batch:ctx:q,...] [--eager-shapes ...] [--profile-shapes ...]
        [--trace-shapes ...] [--trace-steps N] [--graph-profile-shapes ...] [--replays N]
        [--compile-backend inductor|eager] [--quick]

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
* ``graph_profile``: per model the ``--graph-profile-shapes`` (default: the profile
  shapes) captured in a CUDA graph as the steps phase captures them, over a cache that
  just fits the shape, and ``--replays`` replays profiled kernel by kernel
  (graph_profile.py): ``graph_kernels.csv`` (graph_profile.GRAPH_KERNELS_COLUMNS plus
  ``stack`` and ``cache_len``): what a judged step runs, each kernel's in-graph
  duration and the gap before it. Needs CUDA (skipped, and logged, without it).

Also env.json, summary.json (with each torch-compile model's graphs and compile
seconds) and errors.log (if any). CSV rows are appended and flushed as measured; an
error is logged with its shape and the campaign goes on; no new measurement starts once
``--budget-s`` seconds have passed. Several stacks (comma list) run one after another.

One GPU lease runs these as campaign.py's parts, each in its own process (one DIR per
process, as each writes its own env.json and summary.json). Costs on an H100 (torch
2.11; measured, or estimated from measured runs as STACKS_GRID's comment says), which
campaign.py's budgets are drawn from: the CUDA-graph steps of
torch-hf, torch-fused and hf-transformers on the 5 default models ~140 s (hf-transformers
half of it); torch.compile 16-31 s a graph for Llama 3.2 1B and 53 s for Llama 3.1 8B
(cold caches; Inductor's on-disk caches make a later process's compile of the same
graph ~4 s), and batch 1 and each mode compile their own graph, so torch-compile runs
on the 1B alone at batch >= 2, decode and verify (~60 s with its compiles); eager steps
of three stacks on two models ~45 s; their profiles ~35 s and traces ~30 s.
``--compile-backend eager`` traces with Dynamo alone (CPU runs of the code path).

Imports stdlib, numpy, yaml, torch, and transformers for hf-transformers.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # imported from tests (run as a script, it is there already)
    sys.path.insert(0, str(HERE))

import bench  # noqa: E402
import bench_campaign as bc  # noqa: E402
import bench_steps as bs  # noqa: E402
from bench_common import GRIDS, KERNELS_COLUMNS, STEPS_COLUMNS, Grid, Step, StepRun  # noqa: E402
from bench_timing import Clock, CsvSink, capture  # noqa: E402
from graph_profile import GRAPH_KERNELS_COLUMNS, profile_replays  # noqa: E402
from reference import Shape  # noqa: E402
from stacks_forward import STACKS, CompileStack, StepFn  # noqa: E402
from stacks_forward import Stack as StackT  # noqa: E402

STACK_STEPS_COLUMNS = [*STEPS_COLUMNS, "stack", "cache_len"]
STACK_KERNELS_COLUMNS = [*KERNELS_COLUMNS, "stack"]
STACK_GRAPH_KERNELS_COLUMNS = [*GRAPH_KERNELS_COLUMNS, "stack", "cache_len"]
PHASES = ("steps", "profile", "trace", "graph_profile")
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


@dataclass(kw_only=True)
class Run(StepRun):
    """One campaign's state."""

    grid: Grid
    models: dict[str, Shape]
    trace_shapes: tuple[Step, ...]
    trace_steps: int
    graph_profile_shapes: tuple[Step, ...] = ()
    replays: int = 3
    graph_kernels: CsvSink | None = None   # graph_kernels.csv (graph_profile on CUDA)
    # stack -> model -> {"graphs": n, "compile_s": seconds of the calls that compiled}
    compiles: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    traces: list[dict[str, object]] = field(default_factory=list)


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


def _graph_step(run: Run, stack: StackT, model: str, m: object, cache: object,
                s: bs.StepShape) -> None:
    """One shape: first call (compiles where it must), then CUDA-graph replays timed."""
    fn = stack.step(m, cache, s.mode, s.batch, s.ctx, s.q)
    first_call(run, stack, model, bs.label(s), fn)
    bs.write_step(run, model, s, run.graph_launch, bs.time_graph(run, fn), stack=stack.name,
                  cache_len=stack.cache_len(cache))


def _eager_steps(run: Run, stack: StackT, model: str, m: object, cache: object,
                 shapes: list[bs.StepShape]) -> None:
    """Eager steps timed in turns (bench_steps.time_round_robin), after each one's
    first call (where torch-compile compiles)."""
    fns = [stack.step(m, cache, s.mode, s.batch, s.ctx, s.q) for s in shapes]
    for s, fn in zip(shapes, fns, strict=True):
        first_call(run, stack, model, f"{bs.label(s)} eager", fn)
    for s, t in zip(shapes, bs.time_round_robin(run, fns), strict=True):
        bs.write_step(run, model, s, "eager", t, stack=stack.name,
                      cache_len=stack.cache_len(cache))


def _load(run: Run, stack: StackT, model: str, shape: Shape) -> object:
    t0 = time.perf_counter()
    m = stack.load(shape, run.device, run.dtype)
    run.log(f"{stack.name} {model}: model built in {time.perf_counter() - t0:.1f} s")
    return m


def run_steps(run: Run, stack: StackT, launches: tuple[str, ...]) -> None:
    """Eager steps of every model first (a fresh process's host path), then graphs."""
    bs.each(run, ((f"steps {stack.name} {model} {launch}",
                   partial(_steps_model, run, stack, model, shape, launch))
                  for launch in launches for model, shape in run.models.items()))


def _steps_model(run: Run, stack: StackT, model: str, shape: Shape, launch: str) -> None:
    """One model's ``launch`` ("eager" or "graph") shapes, one cache per batch."""
    m = _load(run, stack, model, shape)
    bs.steps_model(
        run, f"steps {stack.name} {model}", shape,
        [s for s in bs.grid_shapes(run.grid) if s.launch == launch],
        alloc=lambda p: stack.new_cache(m, p.batch, p.max_len, run.device, run.dtype),
        graph=lambda cache, s: _graph_step(run, stack, model, m, cache, s),
        eager=lambda cache, shapes: _eager_steps(run, stack, model, m, cache, shapes))


def _warm(run: Run, stack: StackT, model: str, m: object, step: Step, what: str
          ) -> StepFn:
    """The step's callable over a cache that just fits it (the callable holds the
    cache), called 1 + 3 times."""
    mode, b, c, q = step
    fn = stack.step(m, stack.new_cache(m, b, c + q, run.device, run.dtype), mode, b, c, q)
    first_call(run, stack, model, f"{bs.label(step)} {what}", fn)
    for _ in range(3):
        fn()
    return fn


def _each_shape(run: Run, stack: StackT, phase: str, shapes: tuple[Step, ...],
                job: Callable[[str, Step, StepFn], None]) -> None:
    """Per model (built once) and shape: ``job(model, shape, step)`` on a warmed-up step."""
    def per_model(model: str, shape: Shape) -> None:
        m = _load(run, stack, model, shape)
        bs.each(run, ((f"{phase} {stack.name} {model} {bs.label(st)}",
                       lambda st=st: job(model, st, _warm(run, stack, model, m, st, phase)))
                      for st in shapes))

    bs.each(run, ((f"{phase} {stack.name} {model}", partial(per_model, model, shape))
                  for model, shape in run.models.items()))


def run_profile(run: Run, stack: StackT) -> None:
    """kernels.csv: each profile shape's kernels (names, counts, GPU time) of one call."""
    _each_shape(run, stack, "profile", run.grid.profile,
                lambda model, step, fn: bs.write_profile(
                    run, fn, model, step, f"{stack.name} {model}", stack=stack.name))


def trace_path(out: Path, stack: str, model: str, step: Step, n: int) -> Path:
    mode, b, c, q = step
    return out / "traces" / f"{stack}__{model}__{mode}_b{b}_ctx{c}_q{q}_n{n}.json.gz"


def run_trace(run: Run, stack: StackT) -> None:
    """traces/: each trace shape's Chrome trace of ``run.trace_steps`` steps."""
    def job(model: str, step: Step, fn: StepFn) -> None:
        path = trace_path(run.out, stack.name, model, step, run.trace_steps)
        size = bs.record_trace(run, fn, path, run.trace_steps)
        run.traces.append({"file": str(path.relative_to(run.out)), "bytes": size})
        run.log(f"trace {path.name}: {size / 1024:.0f} KiB")

    _each_shape(run, stack, "trace", run.trace_shapes, job)


def run_graph_profile(run: Run, stack: StackT) -> None:
    """graph_kernels.csv: each graph-profile shape captured and its replays profiled
    kernel by kernel (a shape whose replays' kernels do not split evenly raises
    ValueError: logged with the shape, the phase goes on)."""
    if run.graph_kernels is None:
        run.log(f"graph_profile {stack.name}: needs CUDA graphs, skipped")
        return
    sink = run.graph_kernels

    def job(model: str, step: Step, fn: StepFn) -> None:
        mode, b, c, q = step
        per_replay = profile_replays(capture(fn).replay, run.replays)
        for rows in per_replay:
            for row in rows:
                sink.write(model=model, mode=mode, batch=b, ctx=c, q=q, stack=stack.name,
                           cache_len=c + q, **row)
        run.log(f"graph_profile {stack.name} {model} {bs.label(step)}: "
                f"{len(per_replay[0])} kernels a replay, {run.replays} replays")

    _each_shape(run, stack, "graph_profile", run.graph_profile_shapes, job)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bc.add_run_args(p, budget_s=300.0)
    p.add_argument("--stack", required=True,
                   help=f"comma list of stacks ({', '.join(STACKS)})")
    p.add_argument("--only", default="", help="comma list of: steps, profile, trace, "
                                              "graph_profile (default: all, in that order)")
    bc.add_model_args(p, "comma list of model names (workloads/models/<name>.yaml, "
                         "--shapes-json keys, or 'tiny')")
    launch = p.add_mutually_exclusive_group()
    launch.add_argument("--eager-only", action="store_true",
                        help="steps phase: measure only the eager shapes")
    launch.add_argument("--graph-only", action="store_true",
                        help="steps phase: measure only the CUDA-graph shapes")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch-compile's backend (inductor; 'eager' or 'aot_eager' trace "
                        "with Dynamo alone, for CPU runs of the code path)")
    bc.add_kv_arg(p, "~half the GPU memory")
    bc.add_shape_args(p, "step", "eager", "profile", "trace")
    p.add_argument("--trace-steps", type=int, default=2,
                   help="consecutive steps in each trace")
    p.add_argument("--graph-profile-shapes", default="",
                   help="graph_profile's steps (default: the profile shapes): comma list "
                        "of mode:batch:ctx:q")
    p.add_argument("--replays", type=int, default=3,
                   help="graph replays profiled per graph_profile shape")
    return p.parse_args(argv)


def select_stacks(text: str) -> list[str]:
    """``--stack`` -> stack names. Raises SystemExit for an unknown one, or for
    hf-transformers where transformers is not installed."""
    names = bc.split_names(text)
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
                                   graph_steps=bc.parse_steps(args.step_shapes))
    if args.eager_shapes:
        grid = dataclasses.replace(grid, eager=bc.parse_steps(args.eager_shapes))
    if args.profile_shapes:
        grid = dataclasses.replace(grid, profile=bc.parse_steps(args.profile_shapes))
    if args.eager_only:
        grid = dataclasses.replace(grid, dec_b=(), ver_b=(), pre=(), graph_steps=())
    if args.graph_only:
        grid = dataclasses.replace(grid, eager=())
    return grid


def main(argv: list[str] | None = None, shapes: dict[str, dict] | None = None) -> int:
    """CLI entry; ``shapes`` ({name: shape dict}) lets tests skip workloads/."""
    argv, args, budget, out = bc.start(argv, parse_args)
    stacks = select_stacks(args.stack)
    phases = bc.select_phases(args.only, PHASES)
    if args.trace_steps < 1:
        raise SystemExit("--trace-steps must be >= 1")
    if args.replays < 1:
        raise SystemExit("--replays must be >= 1")
    device = bc.open_device(args.device)
    if device is None:
        return 2
    models = bc.select_models(args, shapes, bench.DEFAULT_MODELS)
    grid = select_grid(args, device.type == "cuda")
    trace_shapes = (bc.parse_steps(args.trace_shapes) if args.trace_shapes
                    else TRACE_SHAPES[grid.name])
    graph_profile_shapes = (bc.parse_steps(args.graph_profile_shapes)
                            if args.graph_profile_shapes else grid.profile)

    env = bc.environment(args, argv, device, __file__)
    env.update({
        "stacks": stacks, "models": {n: vars(s) for n, s in models.items()},
        "phases": phases, "grid": grid.name, "graph_steps": grid.graph_steps,
        "launches": "eager-only" if args.eager_only else
                    "graph-only" if args.graph_only else "eager+graph",
        "trace_shapes": trace_shapes, "trace_steps": args.trace_steps,
        "graph_profile_shapes": graph_profile_shapes, "replays": args.replays,
    })
    if "torch-compile" in stacks:
        stack = STACKS["torch-compile"]
        assert isinstance(stack, CompileStack)
        stack.backend = args.compile_backend
        env["compile"] = stack.settings()
    bc.write_json(out / "env.json", env)

    run = Run(out=out, device=device, grid=grid, budget=budget, clock=Clock(device),
              models=models, steps=CsvSink(out / "steps.csv", STACK_STEPS_COLUMNS),
              kernels=CsvSink(out / "kernels.csv", STACK_KERNELS_COLUMNS),
              trace_shapes=trace_shapes, trace_steps=args.trace_steps,
              graph_profile_shapes=graph_profile_shapes, replays=args.replays,
              graph_kernels=(CsvSink(out / "graph_kernels.csv", STACK_GRAPH_KERNELS_COLUMNS)
                             if "graph_profile" in phases and device.type == "cuda"
                             else None),
              kv_budget_bytes=bc.kv_budget_arg(args.kv_budget_gb))
    run.log(f"bench_stacks on {env.get('gpu_name') or device} ({args.gpu}): stacks "
            f"{', '.join(stacks)}, grid {grid.name}, models {', '.join(models)}, phases "
            f"{', '.join(phases)}, budget {args.budget_s:.0f} s -> {out}")
    launches = tuple(x for x in ("eager", "graph")
                     if not (x == "eager" and args.graph_only)
                     and not (x == "graph" and args.eager_only))
    runners: dict[str, Callable[[Run, StackT], None]] = {
        "steps": lambda r, st: run_steps(r, st, launches),
        "profile": run_profile, "trace": run_trace, "graph_profile": run_graph_profile,
    }

    def phase(ph: str) -> None:
        for name in stacks:
            if run.stop():
                break
            run.guard(f"phase {ph} {name}", lambda name=name: runners[ph](run, STACKS[name]))

    summary = bc.run_phases(
        run, phases, phase,
        lambda done: {**bc.base_summary(run, done),
                      "rows": {"steps": len(run.steps.rows), "kernels": len(run.kernels.rows),
                               "traces": len(run.traces),
                               "graph_kernels": (0 if run.graph_kernels is None
                                                 else len(run.graph_kernels.rows))},
                      "compiles": run.compiles, "traces": run.traces},
        out / "summary.json",
        tuple(s for s in (run.steps, run.kernels, run.graph_kernels) if s is not None))
    bc.print_header("bench_stacks", summary)
    bc.print_steps(run.steps.rows, ("stack", "model", "mode", "launch"))
    for st, per_model in run.compiles.items():
        for m, c in per_model.items():
            print(f"  {st} {m}: {c['graphs']:.0f} graphs compiled, {c['compile_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
