"""validation/REPORT.md's multi-GPU section: the collective model against the
published all-reduce figures over 8 KB-1 GB (latency and bus bandwidth, with their
sources; every row in validation/COLLECTIVES.md), and Llama 3.1 70B and 405B steps on
2, 4 and 8 H100 and H200 (tensor-parallel) for decode, verify and prefill with the
collectives' share of each step.

``section`` writes it; ``calibration.validate.run_report`` appends it to the report.
The steps are predictions (no multi-GPU step has been measured yet): the shipped
calibration of each GPU, the collectives priced from its file's links.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpusim.calibration import collectives as coll
from gpusim.capacity import memory_plan
from gpusim.cost import Calibration
from gpusim.errors import ConfigError, FieldError
from gpusim.io import loader
from gpusim.kernels.quant import for_stack
from gpusim.platform import ParallelLayout, Platform
from gpusim.specs import GpuSpec, ModelSpec, StackSpec
from gpusim.step import layout_summary, predict

PUBLISHED_DIR = loader.ROOT / "validation" / "data" / "published"
MODELS = ("llama-3.1-70b", "llama-3.1-405b")
LAYOUT_GPUS = ("h100-sxm", "h200")
TPS = (2, 4, 8)


@dataclass(frozen=True)
class Shape:
    """One step shape of the table: ``batch`` sequences of ``q`` new tokens after
    ``ctx`` cached ones."""

    mode: str
    batch: int
    ctx: int
    q: int


SHAPES = (Shape("decode", 16, 4096, 1), Shape("verify", 16, 4096, 5),
          Shape("prefill", 1, 0, 4096))


def all_reduce_lines(published_dir: Path = PUBLISHED_DIR) -> list[str]:
    """The all-reduce's error against the published figures over 8 KB-1 GB per series
    (time and bus bandwidth: busbw = size x 2 (n - 1) / n / time, so its error is
    published time / model time - 1), and the sources. Empty when ``published_dir``
    has no nccl_*.csv. Raises ConfigError for a bad published file."""
    files = sorted(published_dir.glob("nccl_*.csv")) if published_dir.is_dir() else []
    points = [p for f in files for p in coll.read_published(f)]
    if not points:
        return []
    gpus = {name: loader.load_gpu(name) for name in sorted({p.gpu for p in points})}
    rows = [r for r in coll.judge(gpus, points) if r.point.judged
            and r.point.collective == "all_reduce" and coll.LOW <= r.point.size_bytes <= coll.HIGH]
    series: dict[tuple[object, ...], list[coll.Judged]] = {}
    for r in rows:
        p = r.point
        series.setdefault((p.gpu, p.gpus, p.implementation, p.algorithm, int(p.graph)),
                          []).append(r)
    out = ["| gpu | gpus | implementation | algorithm | graph | rows | latency: mean abs "
           "error | latency: worst | bus bandwidth: worst |",
           "|---|---|---|---|---|---|---|---|---|"]
    for key, rs in series.items():
        t = np.array([r.error for r in rs])
        bw = np.array([r.point.time_s / r.model_s - 1.0 for r in rs])
        out.append("| " + " | ".join(map(str, key)) + f" | {len(rs)} | "
                   f"{np.mean(np.abs(t)):.1%} | {t[np.argmax(np.abs(t))]:+.1%} | "
                   f"{bw[np.argmax(np.abs(bw))]:+.1%} |")
    t = np.array([r.error for r in rows])
    bw = np.array([r.point.time_s / r.model_s - 1.0 for r in rows])
    within = np.mean((np.abs(t) <= 0.15) & (np.abs(bw) <= 0.15))
    out += ["", f"{len(rows)} rows; latency mean absolute error {np.mean(np.abs(t)):.1%}, "
            f"worst {t[np.argmax(np.abs(t))]:+.1%}; bus bandwidth worst "
            f"{bw[np.argmax(np.abs(bw))]:+.1%}; both within 15%: {within:.0%}.", "",
            "Sources:", ""]
    seen: dict[str, str] = {}
    for r in rows:
        seen.setdefault(r.point.source, r.point.what)
    out += [f"- <{src}>: {what}" for src, what in seen.items()]
    return out


def _cell(platform: Platform, model: ModelSpec, s: Shape) -> str:
    """``12.3 ms (8.1%)``: the step's time and the collectives' share of it."""
    p = predict(platform, model, s.mode, s.batch, s.ctx, s.q)
    share = layout_summary(p, platform)["collectives_share"]
    return f"{float(p.seconds[0]) * 1e3:.2f} ms ({float(share):.1%})"  # type: ignore[arg-type]


def layout_rows(gpus: dict[str, GpuSpec], calibrations: dict[str, Calibration],
                stacks: Sequence[tuple[str, StackSpec]],
                resolve: Callable[[str], ModelSpec]) -> list[dict[str, object]]:
    """One row per model, weights (each of ``stacks``: a label and the stack that runs
    it, the model in the dtype the stack implies), GPU and GPU count (tensor-parallel):
    the weights per GPU and each shape's time with the collectives' share, or why the
    layout does not fit (weights plus the largest shape's KV, no reserve)."""
    rows: list[dict[str, object]] = []
    for name in MODELS:
        for label, stack in stacks:
            model = for_stack(resolve(name), stack, None, None)
            for gname in (g for g in LAYOUT_GPUS if g in gpus and g in calibrations):
                gpu = gpus[gname]
                for tp in TPS:
                    plat = Platform(gpu, stack, calibrations[gname],
                                    layout=ParallelLayout(tp=tp))
                    plan = memory_plan(gpu, model, reserve_fraction=0.0, tp=tp)
                    row: dict[str, object] = {
                        "model": name, "weights": label, "gpu": gname, "gpus": tp,
                        "weights_gb_per_gpu": f"{plan.weight_bytes / 1e9:.1f}"}
                    try:
                        for s in SHAPES:
                            plan.check_tokens(np.array([s.batch * (s.ctx + s.q)]))
                            row[s.mode] = _cell(plat, model, s)
                    except (ConfigError, FieldError):
                        row.update({s.mode: "does not fit" for s in SHAPES})
                    rows.append(row)
    return rows


def section(gpus: dict[str, GpuSpec], calibrations: dict[str, Calibration],
            stack: StackSpec, resolve: Callable[[str], ModelSpec],
            published_dir: Path = PUBLISHED_DIR) -> str:
    """The report's multi-GPU section (see the module's docstring): ``stack`` runs the
    bf16 rows, torch-fp8 the fp8 rows (its host costs those of ``calibrations``).
    Raises ConfigError for a bad published file or stack file."""
    from gpusim.report import markdown_table

    md = ["## Multi-GPU: collectives and tensor-parallel steps", "",
          "### All-reduce against published measurements, 8 KB-1 GB", "",
          "The collective model (`gpusim/cost/collectives.py`, parameters in each GPU "
          "file's `links.collectives`) against the published nccl-tests and custom "
          "all-reduce figures in `validation/data/published/`; every row, the held-out "
          "rows and the fit: [COLLECTIVES.md](COLLECTIVES.md) (`gpusim "
          "collectives-validate`).", ""]
    lines = all_reduce_lines(published_dir)
    md += lines if lines else ["No published rows found.", ""]
    shapes = ", ".join(f"{s.mode} batch {s.batch} ctx {s.ctx} q {s.q}" for s in SHAPES)
    md += ["", "### Llama 3.1 70B and 405B on 2, 4 and 8 GPUs (predicted)", "",
           f"Tensor-parallel steps (`--tp N`; {shapes}) with the shipped calibration; "
           "each cell is the step time and, in brackets, the collectives' share of it "
           "(all-reduces after the attention and MLP, the embedding's all-reduce, the "
           f"LM head's all-gather). bf16 weights run on stack {stack.name}, fp8 weights "
           "(per-tensor scales) on torch-fp8. A layout whose weights and KV cache exceed "
           "a GPU's HBM says so. No multi-GPU step has been measured yet: these are the "
           "model's predictions, reproduced by `gpusim predict --gpu G --model M --tp N "
           "--mode MODE --batch B --ctx C --q Q --stack S`.", ""]
    stacks = [("bf16", stack), ("fp8", loader.load_stack("torch-fp8"))]
    rows = layout_rows(gpus, calibrations, stacks, resolve)
    md.append(markdown_table(rows, ["model", "weights", "gpu", "gpus", "weights_gb_per_gpu",
                                    *(s.mode for s in SHAPES)]))
    return "\n".join(md) + "\n"
