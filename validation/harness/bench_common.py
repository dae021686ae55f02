"""Shared state of one campaign: measurement grids, the run context, CSV columns."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from bench_timing import Budget, Clock, CsvSink, GiB, KiB, Policy, free_memory
from reference import Shape

MICRO_COLUMNS = ["kind", "name", "m", "n", "k", "batch", "ctx", "q", "heads", "kv_heads",
                 "head_dim", "bytes", "flops", "launch", "median_us", "p10_us", "p90_us",
                 "repeats"]
STEPS_COLUMNS = ["model", "mode", "batch", "ctx", "q", "launch", "median_ms", "p10_ms",
                 "p90_ms", "repeats", "kernels"]
KERNELS_COLUMNS = ["model", "mode", "batch", "ctx", "q", "kernel_name", "count", "total_us"]

Step = tuple[str, int, int, int]  # (mode, batch, ctx, q)


@dataclass(frozen=True)
class Grid:
    """What to measure. ``full`` is the GPU campaign, ``quick`` a GPU sanity run,
    ``cpu`` a tiny grid whose only purpose is to run every code path on a CPU."""

    name: str
    # micro
    launch_n: int
    copy_bytes: tuple[int, ...]
    elem_sizes: tuple[int, ...]
    gemm_m: tuple[int, ...]
    attn_dec_b: tuple[int, ...]
    attn_dec_ctx: tuple[int, ...]
    attn_ver_q: tuple[int, ...]
    attn_ver_b: tuple[int, ...]
    attn_ver_ctx: tuple[int, ...]
    attn_pre: tuple[tuple[int, int], ...]  # (batch, q)
    # steps
    dec_b: tuple[int, ...]
    dec_ctx: tuple[int, ...]
    ver_q: tuple[int, ...]
    ver_b: tuple[int, ...]
    ver_ctx: tuple[int, ...]
    pre: tuple[tuple[int, int], ...]  # (batch, q)
    eager: tuple[Step, ...]
    profile: tuple[Step, ...]
    slot_cap: int = 16384  # most rotated buffers per micro measurement
    graph_steps: tuple[Step, ...] = ()  # extra CUDA-graph step shapes (--step-shapes)


def _eager_grid(dec_b: tuple[int, ...], dec_ctx: tuple[int, ...], ver_b: tuple[int, ...],
                ver_ctx: int, ver_q: int) -> tuple[Step, ...]:
    return (tuple(("decode", b, c, 1) for b in dec_b for c in dec_ctx)
            + tuple(("verify", b, ver_ctx, ver_q) for b in ver_b))


GRIDS: dict[str, Grid] = {
    "full": Grid(
        name="full",
        launch_n=1000,
        copy_bytes=tuple(8 * KiB * 2 ** i for i in range(19)),          # 8 KiB .. 2 GiB
        elem_sizes=tuple(1000 * 4 ** i for i in range(11)),             # 1e3 .. ~1e9
        gemm_m=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192),
        attn_dec_b=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        attn_dec_ctx=(256, 512, 1024, 2048, 4096, 8192, 16384),
        attn_ver_q=(2, 4, 6, 9),
        attn_ver_b=(1, 4, 16, 64),
        attn_ver_ctx=(256, 1024, 4096, 16384),
        attn_pre=((1, 128), (1, 512), (1, 2048), (1, 8192), (4, 512), (4, 2048)),
        dec_b=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        dec_ctx=(256, 1024, 4096, 16384),
        ver_q=(2, 4, 6, 9),
        ver_b=(1, 4, 16, 64),
        ver_ctx=(512, 4096),
        pre=((1, 128), (1, 512), (1, 2048), (1, 8192), (4, 512), (4, 2048)),
        eager=_eager_grid((1, 8, 64), (1024, 4096), (1, 16), 1024, 4),
        profile=(("decode", 8, 1024, 1), ("verify", 4, 1024, 4), ("prefill", 1, 0, 512)),
    ),
    "quick": Grid(
        name="quick",
        launch_n=1000,
        copy_bytes=(8 * KiB, 1024 * KiB, 64 << 20, 1 * GiB),
        elem_sizes=(1000, 1_024_000, 65_536_000),
        gemm_m=(1, 64, 4096),
        attn_dec_b=(1, 16),
        attn_dec_ctx=(1024, 4096),
        attn_ver_q=(4,),
        attn_ver_b=(4,),
        attn_ver_ctx=(1024,),
        attn_pre=((1, 512),),
        dec_b=(1, 16),
        dec_ctx=(1024, 4096),
        ver_q=(4,),
        ver_b=(4,),
        ver_ctx=(512,),
        pre=((1, 512),),
        eager=_eager_grid((1,), (1024,), (), 1024, 4),
        profile=(("decode", 8, 1024, 1), ("verify", 4, 1024, 4), ("prefill", 1, 0, 512)),
    ),
    "cpu": Grid(
        name="cpu",
        launch_n=100,
        copy_bytes=(8 * KiB, 64 * KiB),
        elem_sizes=(1000, 4000),
        gemm_m=(1, 16),
        attn_dec_b=(1, 2),
        attn_dec_ctx=(32, 64),
        attn_ver_q=(2, 4),
        attn_ver_b=(2,),
        attn_ver_ctx=(32,),
        attn_pre=((1, 16), (2, 8)),
        dec_b=(1, 2),
        dec_ctx=(16, 64),
        ver_q=(2, 4),
        ver_b=(1, 2),
        ver_ctx=(32,),
        pre=((1, 16), (2, 8)),
        eager=_eager_grid((1,), (16,), (2,), 32, 4),
        profile=(("decode", 2, 16, 1), ("verify", 2, 16, 4), ("prefill", 1, 0, 8)),
        slot_cap=8,
    ),
}


class Logged:
    """Logging and error containment shared by the campaigns' contexts (``StepRun``
    here, ``bench_spec.Run``). Needs ``out``, ``device``, ``budget`` and ``n_errors``."""

    out: Path
    device: torch.device
    budget: Budget
    n_errors: int

    def log(self, msg: str) -> None:
        print(f"[{self.budget.elapsed():7.1f}s] {msg}", file=sys.stderr, flush=True)

    def error(self, what: str, text: str) -> None:
        self.n_errors += 1
        first = text.strip().splitlines()[-1] if text.strip() else "?"
        self.log(f"ERROR in {what}: {first}")
        with open(self.out / "errors.log", "a") as f:
            f.write(f"=== {what} (t={self.budget.elapsed():.1f}s)\n{text}\n")

    def guard(self, what: str, fn: Callable[[], object]) -> bool:
        """Run ``fn``; on an exception log it, free memory, and carry on (False)."""
        err = None
        try:
            fn()
        except Exception:
            err = traceback.format_exc()
        if err is None:
            return True
        # the traceback (and the tensors its frames held) is gone here
        self.error(what, err)
        free_memory(self.device)
        return False


@dataclass(kw_only=True)
class StepRun(Logged):
    """The state every step campaign shares (bench.py's ``Ctx``, bench_stacks.py's
    ``Run``, bench_quant_moe.py's ``QCtx``): where rows go, the clock, the budget and
    what went wrong. bench_steps.py's helpers take any of them."""

    out: Path
    device: torch.device
    budget: Budget
    clock: Clock
    policy: Policy = field(default_factory=Policy)
    steps: CsvSink
    kernels: CsvSink
    kv_budget_bytes: int | None = None   # None: derived per model from free memory
    dtype: torch.dtype = torch.bfloat16
    n_errors: int = 0
    skipped: list[str] = field(default_factory=list)
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


@dataclass(kw_only=True)
class Ctx(StepRun):
    """Everything a phase of bench.py needs."""

    grid: Grid
    models: dict[str, Shape]
    micro: CsvSink
    l2_bytes: int
    mem_total: int
    micro_mem_bytes: int = 16 * GiB      # most memory one micro measurement may allocate
    attn_kv_bytes: int = 30 * GiB        # most KV bytes one attention micro may allocate
