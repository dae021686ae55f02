r"""Tensor-parallel step times and collective sweeps, one process per GPU (issue 18).

    python3 validation/harness/bench_tp.py --out DIR --gpu NAME --tp N
        [--device cuda|cpu] [--budget-s S] [--stack torch-fused|torch-hf] [--models m1,...]
        [--only steps,collectives] [--eager-only | --graph-only]
        [--step-shapes mode:batch:ctx:q,...] [--eager-shapes ...] [--kv-budget-gb G]
        [--collectives all_reduce,all_gather,all_to_all] [--coll-sizes LO:HI | s1,s2,...]
        [--coll-modes graph,eager] [--nccl-algo Ring] [--timeout-s S] [--quick]

Starts ``--tp`` processes (torch.multiprocessing's spawn; under torchrun, each process
is one rank already), one per GPU (rank r on cuda:r), joined by NCCL on GPUs and gloo
on the CPU, plus a gloo group for the ranks' agreement (when to stop, whether a step
failed somewhere, the KV budget, gathering times). NVLink multicast stays off: before
any process starts, NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1 and
NVSHMEM_DISABLE_NVLS=1 are set (``MULTICAST_OFF``: the device notes' rule; a
program that uses multicast can put a shared host's GPUs out of service).

Phases (``--only``; default all three, in this order):

* ``check``: tp_forward.check_rank: small models split over these ranks, run in float32
  with the real collectives, against the unsharded forward (logits and the KV entries
  each rank writes); summary.json's ``check`` holds each case's largest relative
  difference over the ranks, and a case over tp_forward.CHECK_TOLERANCE is an error.
* ``steps``: each model's decode, verify and prefill steps on its ranks, tp_forward.py's
  Megatron-style split of the torch-fused (or torch-hf) forward, over the same grid as
  bench_stacks.py (STACKS_GRID: 14 CUDA-graph shapes and 3 eager ones a model; the
  CPU's tiny grid there), eager shapes first (60 calls in turns), then each CUDA-graph
  shape captured on every rank and replayed. Shapes whose per-rank KV does not fit the
  smallest rank's budget are skipped. Writes ``steps.csv``: bench_stacks's columns
  (STEPS_COLUMNS, ``stack``, ``cache_len``) plus ``tp`` and ``rank_spread``.
* ``collectives``: torch.distributed's all-reduce, all-gather and all-to-all (the
  expert-parallel dispatch) of bf16 buffers over 1 KiB-1 GiB (powers of two), in a
  CUDA graph and eagerly, as nccl-tests times them: a loop of back-to-back ops between
  two CUDA events, its time over the ops. Writes ``nccl_<op>.csv`` (``gloo_<op>.csv``
  on the CPU) in validation/data/published/'s columns (``COLL_COLUMNS``), which
  ``gpusim collectives-validate --data-dir`` reads.

Timing across ranks: before each timed call every rank enqueues a one-element
all-reduce and records its start event after it, so the ranks' clocks start when the
slowest rank arrives (on the GPU: no host skew inside the time); every rank times the
same fixed number of repeats (``TP_POLICY``); a row's repeat is the slowest rank's
time of it (the step ends when its last rank does), and ``rank_spread`` is the median
over repeats of (slowest - fastest) / slowest.

A rank's error (an out-of-memory, say) is logged in errors.log with its rank and the
ranks agree to skip the shape; a rank that dies inside a collective leaves the others
waiting until ``--timeout-s`` (NCCL's watchdog then ends them). Also env.json (the
shared provenance plus world size, NCCL version, the environment's NCCL, TORCH and
NVSHMEM variables, ``nvidia-smi topo -m`` and each rank's GPU) and summary.json.

Imports stdlib, numpy, yaml, torch (the GPU machine has no gpusim).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # imported from tests (run as a script, it is there already)
    sys.path.insert(0, str(HERE))

import bench_campaign as bc  # noqa: E402
import bench_stacks  # noqa: E402
import bench_steps as bs  # noqa: E402
import numpy as np  # noqa: E402
import reference  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from bench_common import Grid, StepRun  # noqa: E402
from bench_timing import Budget, Clock, CsvSink, GiB, KiB, Policy, free_memory, repeat  # noqa: E402
from fused_forward import Model  # noqa: E402
from fused_forward import forward as fused_forward  # noqa: E402
from reference import Shape  # noqa: E402
from stacks_forward import check_step, random_tokens  # noqa: E402
from tp_forward import (  # noqa: E402
    CHECK_TOLERANCE,
    STACKS,
    DistComm,
    check_rank,
    gather_into,
    random_rank_weights,
    rank_shape,
    rank_split,
    tp_model,
)

PHASES = ("check", "steps", "collectives")
TP_STEPS_COLUMNS = [*bench_stacks.STACK_STEPS_COLUMNS, "tp", "rank_spread"]
# validation/data/published/ (gpusim.calibration.collectives.COLUMNS)
COLL_COLUMNS = ["gpu", "gpus", "collective", "implementation", "algorithm", "graph",
                "size_bytes", "time_us", "busbw_gb_per_s", "host_floor_us", "judged",
                "source", "what"]
COLLECTIVES = ("all_reduce", "all_gather", "all_to_all")
# the device notes' multicast rule (KINDS.md): set for every process this script starts
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                 "NVSHMEM_DISABLE_NVLS": "1"}
# every rank takes the same repeats (an adaptive count would leave ranks out of step)
TP_POLICY = {"cuda": Policy(warmup=3, target=20, min_reps=20, max_s=math.inf),
             "cpu": Policy(warmup=1, target=3, min_reps=3, max_s=math.inf)}
DEFAULT_MODELS = ("llama-3.1-8b",)
GPU_SIZES = (KiB, GiB)       # the sweep's default range, powers of two
CPU_SIZES = (KiB, 16 * KiB)
COLL_WARMUP, COLL_REPS = 2, 5
EAGER_JUDGED_OVER_FLOOR = 2.0  # an eager row below 2x its series' floor times the host


def coll_iters(size: int, cuda: bool) -> int:
    """Back-to-back ops in one timed loop: enough that the loop outlasts the events'
    resolution at small sizes, few at large ones (a 1 GiB all-reduce on 8 H100s takes
    ~6 ms)."""
    if not cuda:
        return 5
    return 20 if size <= 16 << 20 else 10 if size <= 128 << 20 else 4


def bus_factor(op: str, n: int) -> float:
    """nccl-tests' bus bandwidth over algorithm bandwidth for ``op`` among ``n``."""
    return 2.0 * (n - 1) / n if op == "all_reduce" else (n - 1) / n


# ----------------------------------------------------------------------------- the run

class NullSink:
    """A CsvSink for ranks other than 0 (only rank 0 writes rows)."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def write(self, **row: object) -> None:
        self.rows.append(dict(row))

    def close(self) -> None:
        """Nothing to close."""


@dataclass(kw_only=True)
class TpRun(StepRun):
    """One rank's state: bench_steps.py's StepRun whose decisions (stop, a failed
    shape, the KV budget) every rank takes together over the gloo group ``ctrl``."""

    rank: int
    world: int
    gpu: str
    ctrl: object
    comm: DistComm
    grid: Grid
    models: dict[str, Shape]
    stack: str
    backend: str
    coll_ops: tuple[str, ...] = ()
    coll_sizes: tuple[int, ...] = ()
    coll_modes: tuple[str, ...] = ()
    nccl_algo: str = ""
    coll_sinks: dict[str, object] = field(default_factory=dict)
    coll_rows: int = 0
    source: str = ""
    checks: list[dict] = field(default_factory=list)

    def log(self, msg: str) -> None:
        if self.rank == 0:
            super().log(msg)

    def error(self, what: str, text: str) -> None:
        """Every rank logs its own errors (errors.log, its rank in the title)."""
        self.n_errors += 1
        first = text.strip().splitlines()[-1] if text.strip() else "?"
        print(f"[{self.budget.elapsed():7.1f}s] rank {self.rank}: ERROR in {what}: {first}",
              file=sys.stderr, flush=True)
        with open(self.out / "errors.log", "a") as f:
            f.write(f"=== rank {self.rank}: {what} (t={self.budget.elapsed():.1f}s)\n{text}\n")

    def stop(self) -> bool:
        """True once rank 0's budget is spent (every rank gets rank 0's answer)."""
        flag = torch.tensor([1 if self.budget.over() else 0])
        dist.broadcast(flag, 0, group=self.ctrl)
        if not flag.item():
            return False
        self.budget.hit = True
        if not self._budget_logged:
            self.log(f"budget of {self.budget.seconds:.0f} s reached: no new measurements")
            self._budget_logged = True
        return True

    def guard(self, what: str, fn: Callable[[], object]) -> bool:
        """Run ``fn`` (errors logged as StepRun.guard does); True only where it ran
        without error on every rank."""
        ok = super().guard(what, fn)
        failed = torch.tensor([0 if ok else 1])
        dist.all_reduce(failed, op=dist.ReduceOp.MAX, group=self.ctrl)
        if ok and failed.item():
            self.log(f"{what}: failed on another rank")
        return not failed.item()

    def gather(self, obj: object) -> list:
        """Every rank's ``obj``, rank by rank."""
        out: list = [None] * self.world
        dist.all_gather_object(out, obj, group=self.ctrl)
        return out

    def agree_min(self, value: float) -> float:
        t = torch.tensor([float(value)], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.ctrl)
        return float(t.item())


class TpClock(Clock):
    """bench_timing.Clock whose every timed call starts when the slowest rank arrives:
    on the GPU a one-element NCCL all-reduce is enqueued before the start event (the
    stream waits for it, so the event fires once every rank has launched); on the CPU
    a gloo barrier."""

    def __init__(self, device: torch.device, world: int, ctrl: object):
        super().__init__(device)
        self.world, self.ctrl = world, ctrl
        self._flag = torch.zeros(1, device=device) if self.cuda else None

    def align(self) -> None:
        if self.world == 1:
            return
        if self.cuda:
            dist.all_reduce(self._flag)
        else:
            dist.barrier(group=self.ctrl)

    def time(self, fn: Callable[[], object]) -> float:
        self.align()
        return super().time(fn)


def capture_tp(fn: Callable[[], object], warmup: int = 2) -> torch.cuda.CUDAGraph:
    """bench_timing.capture with the capture's error mode thread-local: NCCL's
    watchdog thread queries events while a rank captures, which a global capture would
    turn into an error."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, capture_error_mode="thread_local"):
        fn()
    torch.cuda.synchronize()
    return g


def time_graph_tp(run: TpRun, fn: Callable[[], object]) -> list[float]:
    """This rank's seconds of each timed replay of ``fn`` captured in a CUDA graph
    (the CPU: eager calls)."""
    if not run.cuda:
        return repeat(run.clock, fn, run.policy)
    g = capture_tp(fn)
    try:
        return repeat(run.clock, g.replay, run.policy)
    finally:
        del g


def slowest(run: TpRun, times: list[float]) -> tuple[list[float], float]:
    """(per repeat the slowest rank's seconds, the median relative spread between the
    slowest and the fastest rank)."""
    per_rank = run.gather(list(times))
    n = min(len(t) for t in per_rank)
    a = np.array([t[:n] for t in per_rank], dtype=np.float64)
    top = a.max(axis=0)
    spread = float(np.median((top - a.min(axis=0)) / np.maximum(top, 1e-12))) if n else 0.0
    return top.tolist(), spread


# ----------------------------------------------------------------------------- steps

def write_tp_step(run: TpRun, model: str, s: bs.StepShape, launch: str, times: list[float],
                  cache_len: int) -> None:
    """One steps.csv row (rank 0) from every rank's ``times``."""
    top, spread = slowest(run, times)
    if run.rank == 0 and top:
        bs.write_step(run, model, s, launch, top, stack=run.stack, cache_len=cache_len,
                      tp=run.world, rank_spread=spread)


def step_fn(m: Model, cache: reference.KVCache, s: bs.StepShape, vocab: int,
            device: torch.device) -> Callable[[], torch.Tensor]:
    """One step of a rank's model over its cache; every rank draws the same tokens.
    Raises ValueError (stacks_forward.check_step)."""
    check_step(s.mode, s.batch, s.ctx, s.q, cache.k.shape[1], cache.k.shape[3])
    tokens = random_tokens(vocab, s.batch, s.q, device)
    mask = reference.verify_mask(s.q, s.end) if s.mode == "verify" else None
    return lambda: fused_forward(m, cache, tokens, s.ctx, s.mode, mask)


def _graph_step(run: TpRun, model: str, m: Model, vocab: int, cache: reference.KVCache,
                s: bs.StepShape) -> None:
    fn = step_fn(m, cache, s, vocab, run.device)
    write_tp_step(run, model, s, run.graph_launch, time_graph_tp(run, fn), cache.k.shape[3])


def _eager_steps(run: TpRun, model: str, m: Model, vocab: int, cache: reference.KVCache,
                 shapes: list[bs.StepShape]) -> None:
    fns = [step_fn(m, cache, s, vocab, run.device) for s in shapes]
    for s, t in zip(shapes, bs.time_round_robin(run, fns), strict=True):
        write_tp_step(run, model, s, "eager", t, cache.k.shape[3])


def _steps_model(run: TpRun, model: str, shape: Shape, launch: str) -> None:
    """One model's ``launch`` shapes on this rank's slice, one cache per batch."""
    split = rank_split(shape, run.world, run.rank)
    rshape = rank_shape(shape, split)
    w = random_rank_weights(shape, split, run.device, run.dtype)
    m = tp_model(w, split, run.comm, run.stack)
    budget = int(run.agree_min(bs.kv_budget_bytes(run)))
    run.log(f"{run.stack} {model} tp {run.world}: rank weights "
            f"{sum(t.nbytes for lw in w.layers for t in lw.values()) / GiB:.2f} GiB "
            "in layers")
    bs.steps_model(
        run, f"steps {run.stack} {model} tp{run.world}", rshape,
        [s for s in bs.grid_shapes(run.grid) if s.launch == launch],
        alloc=lambda p: bs.make_cache(rshape, p.batch, p.max_len, run.device, run.dtype),
        graph=lambda cache, s: _graph_step(run, model, m, shape.vocab_size, cache, s),
        eager=lambda cache, shapes: _eager_steps(run, model, m, shape.vocab_size, cache,
                                                 shapes),
        kv_budget=budget)


def run_steps(run: TpRun, launches: tuple[str, ...]) -> None:
    """Eager steps of every model first (a fresh process's host path), then graphs."""
    bs.each(run, ((f"steps {model} {launch}", partial(_steps_model, run, model, shape, launch))
                  for launch in launches for model, shape in run.models.items()))


# ----------------------------------------------------------------------------- check

def run_check(run: TpRun) -> None:
    """tp_forward.check_rank on every rank; ``run.checks``: each case with its largest
    difference over the ranks. Raises RuntimeError naming the cases over tolerance."""
    per_rank = run.gather(check_rank(run.comm, run.rank, run.device))
    worst = []
    for cases in zip(*per_rank, strict=True):
        row = dict(cases[0])
        row["shape_ok"] = all(c["shape_ok"] for c in cases)
        row["logits"] = max(c["logits"] for c in cases)
        row["kv"] = max(c["kv"] for c in cases)
        worst.append(row)
    run.checks = worst
    bad = [f"{r['model']} {r['mode']}: logits {r['logits']:.2g}, kv {r['kv']:.2g}"
           for r in worst if not r["shape_ok"] or max(r["logits"], r["kv"]) > CHECK_TOLERANCE]
    run.log(f"check: {len(worst)} cases, worst logits "
            f"{max(r['logits'] for r in worst):.2g}, kv {max(r['kv'] for r in worst):.2g}")
    if bad:
        raise RuntimeError("sharded forward differs from the unsharded one: " + "; ".join(bad))


# ----------------------------------------------------------------------------- collectives

def _buffers(op: str, size: int, world: int, device: torch.device
             ) -> tuple[Callable[[], object], Callable[[], None], int]:
    """(one op, a refill of its input, the size it moves in nccl-tests' convention) for
    ``size`` bytes of bf16 (rounded down to whole elements per rank)."""
    per = max(1, size // (2 * world))
    n = per * world                      # elements of the buffer nccl-tests sizes
    if op == "all_reduce":
        x = torch.empty(n, device=device, dtype=torch.bfloat16)
        return (lambda: dist.all_reduce(x)), (lambda: x.normal_()), 2 * n
    if op == "all_gather":
        x = torch.empty(per, device=device, dtype=torch.bfloat16)
        out = torch.empty(n, device=device, dtype=torch.bfloat16)
        return (lambda: gather_into(out, x)), (lambda: x.normal_()), 2 * n
    if op == "all_to_all":
        x = torch.empty(n, device=device, dtype=torch.bfloat16)
        out = torch.empty(n, device=device, dtype=torch.bfloat16)
        return (lambda: dist.all_to_all_single(out, x)), (lambda: x.normal_()), 2 * n
    raise ValueError(f"unknown collective {op!r} (known: {', '.join(COLLECTIVES)})")


def time_collective(run: TpRun, op: str, size: int, graph: bool) -> tuple[int, float, int]:
    """(bytes moved, seconds per op: the median over COLL_REPS loops of the slowest
    rank's, ops a loop). The input is redrawn before each loop (sums of sums would
    overflow)."""
    one, refill, moved = _buffers(op, size, run.world, run.device)
    iters = coll_iters(size, run.cuda)

    def loop() -> None:
        for _ in range(iters):
            one()

    g = capture_tp(loop) if graph else None
    try:
        fn = g.replay if g is not None else loop
        times = []
        for i in range(COLL_WARMUP + COLL_REPS):
            refill()
            run.clock.sync()
            t = run.clock.time(fn)
            if i >= COLL_WARMUP:
                times.append(t / iters)
    finally:
        del g
    top, _ = slowest(run, times)
    return moved, float(np.median(top)), iters


def _collective_row(run: TpRun, op: str, graph: bool, moved: int, seconds: float, iters: int,
                    floor_us: float) -> None:
    """One row of ``<backend>_<op>.csv`` (rank 0)."""
    if run.rank != 0:
        return
    us = seconds * 1e6
    judged = graph or us >= EAGER_JUDGED_OVER_FLOOR * floor_us
    algo = run.nccl_algo.lower() if run.nccl_algo else "auto"
    clock = ("two CUDA events started after an all-reduce that lines the ranks up"
             if run.cuda else "the host's clock started after a barrier")
    what = (f"bench_tp.py: torch.distributed {op} of bf16, {run.backend}, one process per "
            f"{'GPU' if run.cuda else 'rank'}, {iters} back-to-back ops "
            f"{'captured in one CUDA graph' if graph else 'launched eagerly'} between "
            f"{clock}; time per op: the median of {COLL_REPS} loops of the slowest rank")
    if run.backend == "nccl":
        what += (f"; NCCL_ALGO {run.nccl_algo or 'unset (the tuner picks)'}, NVLink SHARP "
                 "off (NCCL_NVLS_ENABLE=0)")
    if not judged:
        what += (f"; not judged: under {EAGER_JUDGED_OVER_FLOOR:g}x the series' smallest "
                 "size's time, the host's launches bound the eager loop")
    sink = run.coll_sinks[op]
    sink.write(gpu=run.gpu, gpus=run.world,
               collective=op, implementation=run.backend, algorithm=algo,
               graph=1 if graph else 0, size_bytes=moved, time_us=us,
               busbw_gb_per_s=moved / seconds * bus_factor(op, run.world) / 1e9,
               host_floor_us=None if graph else floor_us, judged=1 if judged else 0,
               source=run.source, what=what)
    run.coll_rows += 1


def run_collectives(run: TpRun) -> None:
    """Every op, mode and size (ascending: an eager series' first row is its floor)."""
    for op in run.coll_ops:
        for mode in run.coll_modes:
            graph = mode == "graph"
            floor: list[float] = []

            def one(op: str = op, size: int = 0, graph: bool = graph,
                    floor: list[float] = floor) -> None:
                moved, sec, iters = time_collective(run, op, size, graph)
                if not floor:
                    floor.append(sec * 1e6)
                _collective_row(run, op, graph, moved, sec, iters, floor[0])

            for size in run.coll_sizes:
                if run.stop():
                    return
                run.guard(f"{op} {size} B {mode}", partial(one, size=size))
                free_memory(run.device)
            run.log(f"{op} {mode}: {len(run.coll_sizes)} sizes done")


# ----------------------------------------------------------------------------- options

def parse_sizes(text: str) -> tuple[int, ...]:
    """``"1024:1073741824"`` (the powers of two from the first to the last) or a comma
    list of byte counts. Raises ValueError."""
    if ":" in text:
        lo, hi = (int(x) for x in text.split(":"))
        if lo < 1 or hi < lo:
            raise ValueError(f"{text!r}: expected LO:HI with 1 <= LO <= HI")
        out, s = [], 1 << max(0, (lo - 1).bit_length())
        while s <= hi:
            out.append(s)
            s *= 2
        return tuple(out)
    sizes = tuple(sorted({int(x) for x in text.split(",") if x.strip()}))
    if not sizes or sizes[0] < 1:
        raise ValueError(f"{text!r}: expected positive byte counts")
    return sizes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bc.add_run_args(p, budget_s=300.0)
    p.add_argument("--tp", type=int, required=True,
                   help="tensor-parallel degree: processes (GPUs) to start")
    p.add_argument("--stack", default="torch-fused", choices=STACKS)
    p.add_argument("--only", default="", help="comma list of: steps, collectives "
                                              "(default: both, in that order)")
    bc.add_model_args(p, "comma list of model names (workloads/models/<name>.yaml, "
                         "--shapes-json keys, or 'tiny')")
    launch = p.add_mutually_exclusive_group()
    launch.add_argument("--eager-only", action="store_true",
                        help="steps phase: measure only the eager shapes")
    launch.add_argument("--graph-only", action="store_true",
                        help="steps phase: measure only the CUDA-graph shapes")
    bc.add_kv_arg(p, "the smallest rank's, ~half its GPU")
    bc.add_shape_args(p, "step", "eager")
    p.add_argument("--collectives", default=",".join(COLLECTIVES),
                   help="comma list of collectives to sweep")
    p.add_argument("--coll-sizes", default="",
                   help="LO:HI (powers of two) or a comma list of bytes (default "
                        f"{GPU_SIZES[0]}:{GPU_SIZES[1]}; CPU {CPU_SIZES[0]}:{CPU_SIZES[1]})")
    p.add_argument("--coll-modes", default="graph,eager",
                   help="comma list of graph, eager (the CPU runs eager only)")
    p.add_argument("--nccl-algo", default="",
                   help="NCCL_ALGO for every process (e.g. Ring; default: unset)")
    p.add_argument("--timeout-s", type=float, default=180.0,
                   help="a collective waiting longer than this fails (the process group's "
                        "timeout)")
    args = p.parse_args(argv)
    if args.tp < 1:
        p.error("--tp must be >= 1")
    ops = bc.split_names(args.collectives)
    if not ops or any(o not in COLLECTIVES for o in ops):
        p.error(f"--collectives: known {', '.join(COLLECTIVES)} (got {args.collectives!r})")
    modes = bc.split_names(args.coll_modes)
    if not modes or any(m not in ("graph", "eager") for m in modes):
        p.error(f"--coll-modes: graph and/or eager (got {args.coll_modes!r})")
    try:
        if args.coll_sizes:
            parse_sizes(args.coll_sizes)
        for text in (args.step_shapes, args.eager_shapes):
            if text:
                bc.parse_steps(text)
    except ValueError as e:
        p.error(str(e))
    return args


def select_grid(args: argparse.Namespace, cuda: bool) -> Grid:
    """bench_stacks.select_grid's grid for these options (no profile shapes here)."""
    return bench_stacks.select_grid(argparse.Namespace(**{**vars(args), "profile_shapes": ""}),
                                    cuda)


# ----------------------------------------------------------------------------- processes

def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def topology() -> str | None:
    """``nvidia-smi topo -m``: how the GPUs are linked (None where it fails)."""
    try:
        r = subprocess.run(["nvidia-smi", "topo", "-m"], capture_output=True, text=True,
                           timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


def _environment(run: TpRun, args: argparse.Namespace, argv: list[str]) -> dict | None:
    """env.json's record on rank 0 (None on the others, which only give their GPU's
    name and free memory: bench_campaign.environment reads GPU 0, where another rank
    would open a context)."""
    ranks = run.gather({"rank": run.rank, "device": str(run.device),
                        "gpu_name": torch.cuda.get_device_name(run.device) if run.cuda else None,
                        "free_memory": torch.cuda.mem_get_info(run.device)[0]
                        if run.cuda else None})
    if run.rank != 0:
        return None
    env = bc.environment(args, argv, run.device, __file__)
    env.update({
        "tp": run.world, "backend": run.backend, "stack": run.stack,
        "nccl_version": ".".join(map(str, torch.cuda.nccl.version()))
        if run.cuda else None,
        "environment": {k: v for k, v in sorted(os.environ.items())
                        if k.startswith(("NCCL_", "TORCH_", "NVSHMEM_", "CUDA_", "OMP_"))},
        "topology": topology() if run.cuda else None,
        "ranks": ranks,
        "models": {n: vars(s) for n, s in run.models.items()},
        "grid": run.grid.name, "graph_steps": run.grid.graph_steps,
        "eager_steps": run.grid.eager,
        "launches": "eager-only" if args.eager_only else
                    "graph-only" if args.graph_only else "eager+graph",
        "collectives": {"ops": run.coll_ops, "sizes": run.coll_sizes,
                        "modes": run.coll_modes, "warmup_loops": COLL_WARMUP,
                        "loops": COLL_REPS, "nccl_algo": run.nccl_algo or None},
        "policy": dataclasses.asdict(run.policy),
        "statistic": "per repeat the slowest rank's time; rank_spread: median (slowest - "
                     "fastest) / slowest",
    })
    return env


def worker(rank: int, args: argparse.Namespace, argv: list[str], world: int, port: int,
           start: float, utc: str, shapes: dict[str, dict] | None = None) -> None:
    """One rank: joins the group, measures, rank 0 writes the files."""
    cuda = args.device == "cuda"
    local = int(os.environ.get("LOCAL_RANK", rank))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    backend = "nccl" if cuda else "gloo"
    init = "env://" if "TORCHELASTIC_RUN_ID" in os.environ else f"tcp://127.0.0.1:{port}"
    timeout = dt.timedelta(seconds=args.timeout_s)
    kw = {"device_id": device} if cuda else {}
    dist.init_process_group(backend, init_method=init, rank=rank, world_size=world,
                            timeout=timeout, **kw)
    try:
        ctrl = dist.new_group(backend="gloo", timeout=timeout)
        _measure(rank, args, argv, world, device, backend, ctrl, start, utc, shapes)
    finally:
        dist.destroy_process_group()


def _measure(rank: int, args: argparse.Namespace, argv: list[str], world: int,
             device: torch.device, backend: str, ctrl: object, start: float, utc: str,
             shapes: dict[str, dict] | None) -> None:
    out = Path(args.out)
    cuda = device.type == "cuda"
    models = bc.select_models(args, shapes, DEFAULT_MODELS)
    grid = select_grid(args, cuda)
    phases = bc.select_phases(args.only, PHASES)
    sizes = parse_sizes(args.coll_sizes) if args.coll_sizes else parse_sizes(
        "{}:{}".format(*(GPU_SIZES if cuda else CPU_SIZES)))
    modes = tuple(m for m in bc.split_names(args.coll_modes) if cuda or m == "eager")
    ops = tuple(bc.split_names(args.collectives))
    steps = CsvSink(out / "steps.csv", TP_STEPS_COLUMNS) if rank == 0 else NullSink()
    coll_sinks: dict[str, object] = {
        op: (CsvSink(out / f"{backend}_{op}.csv", COLL_COLUMNS) if rank == 0 else NullSink())
        for op in ops if "collectives" in phases}
    run = TpRun(out=out, device=device, budget=Budget(args.budget_s, start=start),
                clock=TpClock(device, world, ctrl), policy=TP_POLICY[device.type],
                steps=steps, kernels=NullSink(),  # type: ignore[arg-type]
                kv_budget_bytes=bc.kv_budget_arg(args.kv_budget_gb), rank=rank,
                world=world, gpu=args.gpu, ctrl=ctrl, comm=DistComm(world), grid=grid,
                models=models, stack=args.stack, backend=backend, coll_ops=ops, coll_sizes=sizes,
                coll_modes=modes, nccl_algo=args.nccl_algo, coll_sinks=coll_sinks)
    env = _environment(run, args, argv) or {}
    run.source = (f"gpusim harness validation/harness/bench_tp.py, {utc}, "
                  f"{env.get('gpu_name') or 'cpu'} x{world}, torch {torch.__version__}"
                  + (f", NCCL {env['nccl_version']}" if env.get("nccl_version") else ""))
    if rank == 0:
        bc.write_json(out / "env.json", env)
    run.log(f"bench_tp on {env.get('gpu_name') or device} ({args.gpu}) x{world}: stack "
            f"{run.stack}, models {', '.join(models)}, phases {', '.join(phases)}, budget "
            f"{args.budget_s:.0f} s -> {out}")
    launches = tuple(x for x in ("eager", "graph")
                     if not (x == "eager" and args.graph_only)
                     and not (x == "graph" and args.eager_only))
    runners = {"check": lambda: run_check(run), "steps": lambda: run_steps(run, launches),
               "collectives": lambda: run_collectives(run)}
    done: list[str] = []
    try:
        for ph in phases:
            if run.stop():
                break
            run.guard(f"phase {ph}", runners[ph])
            done.append(ph)
    finally:
        errors = sum(run.gather(run.n_errors))
        for sink in [steps, *coll_sinks.values()]:
            sink.close()  # type: ignore[union-attr]
        if rank == 0:
            summary = {**bc.base_summary(run, done), "errors": errors, "tp": world,
                       "backend": backend, "check": run.checks,
                       "rows": {"steps": len(steps.rows), "collectives": run.coll_rows}}
            bc.write_json(out / "summary.json", summary)
            run.log(f"done in {run.budget.elapsed():.1f} s")
            bc.print_header("bench_tp", summary)
            bc.print_steps(steps.rows, ("stack", "model", "tp", "mode", "launch"))


def main(argv: list[str] | None = None, shapes: dict[str, dict] | None = None) -> int:
    """CLI entry: starts the ranks (or, under torchrun, is one); ``shapes`` ({name:
    shape dict}) lets tests skip workloads/. Returns 1 where a rank failed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for k, v in MULTICAST_OFF.items():
        os.environ[k] = v
    if args.nccl_algo:
        os.environ["NCCL_ALGO"] = args.nccl_algo
    if args.device == "cpu":
        os.environ.setdefault("OMP_NUM_THREADS", "1")   # tp processes share the cores
    start = time.monotonic()   # Budget's clock: one clock for every process of the host
    utc = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")  # noqa: UP017 (py3.10)
    if "TORCHELASTIC_RUN_ID" in os.environ:            # torchrun: this process is a rank
        world = int(os.environ["WORLD_SIZE"])
        if world != args.tp:
            raise SystemExit(f"--tp {args.tp} but torchrun started {world} processes")
        worker(int(os.environ["RANK"]), args, argv, world, 0, start, utc, shapes)
        return 0
    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("--device cuda but torch.cuda.is_available() is False", file=sys.stderr)
            return 2
        if torch.cuda.device_count() < args.tp:
            print(f"--tp {args.tp} needs {args.tp} GPUs; {torch.cuda.device_count()} visible",
                  file=sys.stderr)
            return 2
    import torch.multiprocessing as mp

    try:
        mp.spawn(worker, args=(args, argv, args.tp, free_port(), start, utc, shapes),
                 nprocs=args.tp, join=True)
    except mp.ProcessRaisedException as e:
        print(f"a rank failed: {e}", file=sys.stderr)
        return 1
    except mp.ProcessExitedException as e:
        print(f"a rank exited: {e}", file=sys.stderr)
        return 1
    return 0

if __name__ == "__main__":
    sys.exit(main())
