"""Speedup over plain decoding across batch and context: best k, and where it stops paying.

Iteration times do not depend on the acceptance model, so each k is predicted once
(vectorised over the whole (batch, ctx) grid) and every acceptance model reuses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gpusim.capacity import DEFAULT_RESERVE_FRACTION
from gpusim.errors import FieldError
from gpusim.platform import Platform
from gpusim.specs import ModelSpec
from gpusim.speculative.acceptance import Acceptance
from gpusim.speculative.drafts import Draft, MedusaDraft
from gpusim.speculative.iteration import (
    IterationPrediction,
    Speculation,
    predict_iteration,
)
from gpusim.speculative.overhead import SpecOverhead
from gpusim.speculative.trees import TokenTree

DEFAULT_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DEFAULT_CTXS = (1024, 4096, 16384)
DEFAULT_KS = (1, 2, 3, 4, 5, 6, 7, 8)
MAX_DENSE_BATCH = 1024


@dataclass(frozen=True)
class SweepResult:
    """``rows``: one per (acceptance, ctx, batch, k); ``best``: the best k per
    (acceptance, ctx, batch); ``break_even``: per (acceptance, ctx), the smallest batch
    at which even the best k is slower than plain decoding."""

    rows: list[dict[str, object]]
    best: list[dict[str, object]]
    break_even: list[dict[str, object]]


def _check_grid(name: str, values: Sequence[int], low: int, high: int) -> list[int]:
    vals = sorted({int(v) for v in values})
    if not vals:
        raise FieldError(name, f"{name}=() must list at least one value")
    bad = [v for v in vals if not low <= v <= high]
    if bad:
        raise FieldError(name, f"{name}={bad[0]} must be in {low}..{high}")
    return vals


@dataclass(frozen=True)
class SweepGrid:
    """What a sweep covers: batches, contexts and chain lengths, the dense batch range
    of the break-even search (default: the largest batch), and the HBM reserve."""

    batches: Sequence[int] = DEFAULT_BATCHES
    ctxs: Sequence[int] = DEFAULT_CTXS
    ks: Sequence[int] = DEFAULT_KS
    max_dense_batch: int | None = None
    reserve_fraction: float = DEFAULT_RESERVE_FRACTION


@dataclass(frozen=True)
class _Loop:
    """The fixed part of every prediction of a sweep."""

    platform: Platform
    overhead: SpecOverhead
    target: ModelSpec
    draft: Draft
    reserve_fraction: float

    def predict_ks(self, acceptance: Acceptance, ks: list[int], batch: np.ndarray,
                   ctx: np.ndarray) -> dict[int, IterationPrediction]:
        out = {}
        for k in ks:
            spec = Speculation(self.target, self.draft, TokenTree.chain(k), acceptance)
            out[k] = predict_iteration(self.platform, self.overhead, spec, batch, ctx,
                                       self.reserve_fraction)
        return out


def sweep(platform: Platform, overhead: SpecOverhead, target: ModelSpec, draft: Draft,
          acceptances: Sequence[Acceptance], grid: SweepGrid = SweepGrid()) -> SweepResult:
    """Speedup of every (acceptance, ctx, batch, k); best k; break-even batch per ctx.

    The break-even search evaluates every integer batch from 1 to
    ``grid.max_dense_batch`` and stops where memory runs out. Raises ValueError for an
    empty or out-of-range grid or an impossible k.
    """
    if not acceptances:
        raise ValueError("acceptances=() must list at least one acceptance model")
    bs = _check_grid("batch", grid.batches, 1, 1 << 20)
    cs = _check_grid("ctx", grid.ctxs, 0, 1 << 24)
    kk = _check_grid("k", grid.ks, 1, 64)
    if isinstance(draft, MedusaDraft):
        kk = [k for k in kk if k <= draft.heads] or [draft.heads]
    for acc in acceptances:
        if kk[-1] > acc.max_k():
            raise ValueError(f"k={kk[-1]} is beyond what {acc.label} describes "
                             f"(k <= {acc.max_k()})")
    loop = _Loop(platform, overhead, target, draft, grid.reserve_fraction)
    bgrid, cgrid = (a.ravel() for a in np.meshgrid(bs, cs, indexing="xy"))
    preds = loop.predict_ks(acceptances[0], kk, bgrid, cgrid)
    rows, best = [], []
    for acc in acceptances:
        tokens = {k: acc.expected_tokens(k) for k in kk}
        for i, (b, c) in enumerate(zip(bgrid, cgrid, strict=True)):
            cell = []
            for k in kk:
                p = preds[k]
                ms_tok = float(p.iteration_s[i]) / tokens[k] * 1e3
                base = float(p.baseline_s_per_token[i]) * 1e3
                r = {"acceptance": acc.label, "ctx": int(c), "batch": int(b), "k": k,
                     "iteration_ms": float(p.iteration_s[i]) * 1e3,
                     "tokens_per_iteration": tokens[k], "ms_per_token": ms_tok,
                     "baseline_ms_per_token": base, "speedup": base / ms_tok,
                     "fits_in_memory": bool(p.fits[i]),
                     "draft_ms": float(p.draft_s[i]) * 1e3,
                     "verify_ms": float(p.verify_s[i]) * 1e3}
                rows.append(r)
                cell.append(r)
            top = max(cell, key=lambda r: r["speedup"])  # type: ignore[arg-type,return-value]
            best.append({"acceptance": acc.label, "ctx": int(c), "batch": int(b),
                         "best_k": top["k"], "speedup": top["speedup"],
                         "ms_per_token": top["ms_per_token"],
                         "baseline_ms_per_token": top["baseline_ms_per_token"],
                         "fits_in_memory": top["fits_in_memory"]})
    dense_max = grid.max_dense_batch if grid.max_dense_batch is not None else max(bs)
    breaks = _break_even(loop, acceptances, cs, kk, dense_max)
    return SweepResult(rows=rows, best=best, break_even=breaks)


def _break_even(loop: _Loop, acceptances: Sequence[Acceptance], ctxs: list[int],
                ks: list[int], dense_max: int) -> list[dict[str, object]]:
    if not 1 <= dense_max <= MAX_DENSE_BATCH * 64:
        raise FieldError("max_batch",
                         f"max_batch={dense_max} must be in 1..{MAX_DENSE_BATCH * 64}")
    dense = np.arange(1, dense_max + 1, dtype=np.float64)
    out = []
    for c in ctxs:
        preds = loop.predict_ks(acceptances[0], ks, dense, np.full_like(dense, c))
        fits = preds[ks[-1]].fits          # the longest chain needs the most KV
        max_fit = int(dense[fits].max()) if fits.any() else 0
        for acc in acceptances:
            sp = np.stack([preds[k].speedup * acc.expected_tokens(k)
                           / preds[k].spec.expected_tokens() for k in ks])   # [k, batch]
            best_sp = sp.max(axis=0)
            best_k = np.asarray(ks)[sp.argmax(axis=0)]
            losing = np.flatnonzero((best_sp < 1.0) & fits)
            be = int(dense[losing[0]]) if len(losing) else None
            if max_fit == 0:
                verdict = "does not fit in memory at batch 1"
            elif be is None:
                verdict = (f"pays at every batch that fits (<= {max_fit})"
                           if max_fit < dense_max else f"pays up to batch {dense_max}")
            elif be == 1:
                verdict = "never pays"
            else:
                verdict = f"stops paying at batch {be}"
            out.append({"acceptance": acc.label, "ctx": c, "break_even_batch": be,
                        "max_batch_in_memory": max_fit if max_fit < dense_max else None,
                        "best_k_at_batch_1": int(best_k[0]),
                        "speedup_at_batch_1": float(best_sp[0]),
                        "verdict": verdict})
    return out
