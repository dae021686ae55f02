"""Profiled times of the attention kernel families steps alone cannot pin down: the
kernel-level evidence their physics is fitted on across stacks (issue 16, item 3).

cuDNN's masked SDPA kernel (``cudnn_masked``) runs in three regimes that steps alone
cannot tell apart: a token tree's verify (the reference stack, few query rows a head),
hf-transformers' captured prefill over a whole static cache (many row tiles a head:
the keys come from L2, the MMAs bound it) and the serving harness's padded decode (the
query heads of a KV head as rows of one tile, every CTA streaming its own keys). cuDNN's
causal prefill kernel (``cudnn_prefill``) costs a prologue per CTA at short prompts and
a quadratic key walk at long ones, which a step's total hides among its GEMMs. Each
profile row gives the kernel's GPU time for a shape; the point prices the stack's
attention op for that shape with the same kernel builder as a step, so a fit can hold
its prediction to the profiled time. Files, under a GPU's data folder:

* ``tree_kernels.csv`` and ``probe_*/tree*/tree_kernels.csv`` (model, batch, ctx,
  nodes, kernel_name, count, total_us): the reference stack (torch-hf) in tree mode;
* ``probe_*/hf_prefill*/kernels.csv.gz`` (model, q, cache_len, kernel_name, count,
  total_us; per replay): hf-transformers, captured prefill of batch 1;
* ``probe_*/serve_graphs/kernels.csv`` (lease, model, graph, kernel_name, count,
  total_us; ``graph`` = ROWSxKEYS, a trailing ``r`` for ragged rows, skipped):
  harness-serve, padded decode graphs;
* ``kernels*.csv`` and ``probe_*/prefill*/kernels.csv`` (``profiles.profile_paths``: model,
  mode, batch, ctx, q, kernel_name, count, total_us): the reference stack's profiled
  steps, whose prefill rows time the causal prefill kernel. A step whose matrix work at
  the GPU's peak takes longer than ``profiles.CAPPED_STEP_S`` is left out: the profiler
  runs it back to back with its warm-up, long enough for the power cap to lower the
  clock (a point is priced at full clock).

The measured time of a point is the cuDNN kernel's per call, plus the memset SDPA
launches beside it where the stack's attention op counts two kernels.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpusim.calibration.profiles import CAPPED_STEP_S, peak_s, profile_paths
from gpusim.cost import Calibration, busy_s, kernel_cost
from gpusim.errors import bad, read_text
from gpusim.kernels import Kernel, build_kernels
from gpusim.kernels.quant import for_stack
from gpusim.specs import GpuSpec, ModelSpec, StackSpec
from gpusim.specs.enums import KernelKind

CUDNN = "cudnn_generated_fort_native_sdpa"
PREFILL = "flash_fprop"      # in the causal prefill kernel's name
MEMSET = "Memset"
REFERENCE = "torch-hf"


@dataclass(frozen=True)
class AttentionPoint:
    """One profiled shape: the stack's attention kernel for it and its measured GPU
    seconds per call."""

    model: str
    stack: str
    source: str
    kernel: Kernel
    measured_s: float


@dataclass(frozen=True)
class _Profiled:
    stack: str
    model: str
    mode: str
    batch: int
    ctx: int
    q: int
    cache_len: int | None
    kernel_s: float     # the cuDNN kernel, per call
    memset_s: float     # the memset beside it, per call (0 where none was recorded)
    source: str
    family: str = "cudnn_masked"   # the family the stack's op must run for the point


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(read_text(path).splitlines()))


def _per_call(rows: Iterable[dict[str, str]], match: str) -> float:
    """Mean GPU seconds per call of the kernels whose name holds ``match``."""
    got = [(float(r["count"]), float(r["total_us"])) for r in rows if match in r["kernel_name"]]
    calls = sum(c for c, _ in got)
    return sum(t for _, t in got) / calls * 1e-6 if calls else 0.0


def _grouped(rows: list[dict[str, str]], keys: Sequence[str]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def _tree(path: Path) -> list[_Profiled]:
    out = []
    for (model, b, ctx, nodes), rows in _grouped(_rows(path),
                                                 ("model", "batch", "ctx", "nodes")).items():
        k = _per_call(rows, CUDNN)
        if k > 0:
            out.append(_Profiled("torch-hf", model, "tree", int(b), int(ctx), int(nodes), None,
                                 k, _per_call(rows, MEMSET), f"{path.parent.name}:{model}"))
    return out


def _hf_prefill(path: Path) -> list[_Profiled]:
    out = []
    for (model, q, cache), rows in _grouped(_rows(path), ("model", "q", "cache_len")).items():
        k = _per_call(rows, CUDNN)
        if k > 0:
            out.append(_Profiled("hf-transformers", model, "prefill", 1, 0, int(q), int(cache),
                                 k, 0.0, f"{path.parent.name}:{model}"))
    return out


def _serve(path: Path) -> list[_Profiled]:
    out = []
    for (lease, model, graph), rows in _grouped(_rows(path),
                                                ("lease", "model", "graph")).items():
        if graph.endswith("r"):
            continue
        rows_n, keys = (int(x) for x in graph.split("x"))
        k = _per_call(rows, CUDNN)
        if k > 0:
            out.append(_Profiled("harness-serve", model, "decode", rows_n, keys - 1, 1, None,
                                 k, _per_call(rows, MEMSET), f"{path.parent.name}:{lease}"))
    return out


def _prefill(path: Path) -> list[_Profiled]:
    out = []
    rows = [r for r in _rows(path) if r["mode"] == "prefill"]
    for (model, b, ctx, q), got in _grouped(rows, ("model", "batch", "ctx", "q")).items():
        k = _per_call([r for r in got if PREFILL in r["kernel_name"]], CUDNN)
        if k > 0:
            out.append(_Profiled(REFERENCE, model, "prefill", int(b), int(ctx), int(q), None,
                                 k, 0.0, f"{path.parent.name}:{model}", "cudnn_prefill"))
    return out


def read_attention_points(gpu_dir: Path, gpu: GpuSpec, resolve: Callable[[str], ModelSpec],
                          load_stack: Callable[[str], StackSpec]) -> list[AttentionPoint]:
    """Every profiled cuDNN masked and causal prefill kernel under ``gpu_dir``, the data
    of ``gpu`` (see the module docstring), priced through its stack's attention op.
    Raises ConfigError for a file that cannot be read or lacks a column."""
    found: list[_Profiled] = []
    trees = [gpu_dir / "tree_kernels.csv", *sorted(gpu_dir.glob("probe_*/tree*/tree_kernels.csv"))]
    try:
        for tree in trees:
            if tree.is_file():
                found += _tree(tree)
        for p in sorted(gpu_dir.glob("probe_*/hf_prefill*/kernels.csv.gz")):
            found += _hf_prefill(p)
        for p in sorted(gpu_dir.glob("probe_*/serve_graphs/kernels.csv")):
            found += _serve(p)
        for p in profile_paths(gpu_dir):
            found += _prefill(p)
    except (KeyError, ValueError) as exc:
        raise bad(str(gpu_dir), f"unreadable attention profile: {exc}") from None
    out = []
    seen: set[tuple] = set()
    for f in found:
        shape = (f.stack, f.model, f.mode, f.batch, f.ctx, f.q)
        if f.family == "cudnn_prefill" and shape in seen:   # the first file's profile
            continue
        seen.add(shape)
        stack = load_stack(f.stack)
        model = for_stack(resolve(f.model), stack)
        kernels = build_kernels(model, stack, f.mode, [float(f.batch)], float(f.ctx),
                                float(f.q), None if f.cache_len is None else float(f.cache_len))
        attn = [k for k in kernels if k.kind == KernelKind.ATTENTION]
        if (len(attn) != 1 or attn[0].attention is None
                or attn[0].attention.family != f.family):
            continue
        if f.family == "cudnn_prefill" and float(peak_s(kernels, gpu)[0]) > CAPPED_STEP_S:
            continue
        k = attn[0]
        measured = f.kernel_s + (f.memset_s if k.launches > 1 else 0.0)
        out.append(AttentionPoint(f.model, f.stack, f.source, k, measured))
    return out


def predict_points(points: Sequence[AttentionPoint], gpu: GpuSpec, cal: Calibration
                   ) -> np.ndarray:
    """Predicted GPU seconds per call of every point's kernel (one profiled call from
    idle: full clock), as the profiler sees it (without the idle gaps before it)."""
    out = np.empty(len(points))
    for i, p in enumerate(points):
        k = p.kernel
        out[i] = float(busy_s(k, kernel_cost(k, gpu, cal), cal)[0])
    return out
