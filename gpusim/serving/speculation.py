"""Speculative decoding inside the serving engine: iteration-time tables and k choice.

A step with speculation (see ``simulate``) runs one speculative iteration for the
whole decoding batch: the draft proposes k tokens per sequence (a draft model or
EAGLE head: k decode steps; Medusa heads inside the verify pass; n-gram lookup on the
host), the target verifies q = k + 1 positions per sequence, and the host round trip
follows (``gpusim.speculative.iteration.predict_iteration``). Each sequence then
advances by its sampled accepted length + 1 (capped by what it still has to
generate); accepted lengths are drawn i.i.d. per request and step with rate a.

Only steps with no prefill chunk speculate (and only when the KV cache has room for
k more tokens per decoding sequence); steps with prefill chunks run as plain mixed
steps. So speculation changes decode-only steps, the common case at moderate load.

``SpecStepModel`` tabulates the iteration time for every decode batch size 1..B and a
context grid, for each candidate k, once at engine build; ``k=auto`` picks per step the
k that maximises expected tokens per second for the batch (and context) from a table.
The draft's weights reduce the KV budget and its KV cache scales the bytes per token
(``draft_memory``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpusim.errors import bad
from gpusim.platform import Platform
from gpusim.serving.grids import grid_position
from gpusim.specs import ModelSpec
from gpusim.speculative.acceptance import IidAcceptance
from gpusim.speculative.drafts import (
    Draft,
    MedusaDraft,
    extra_weight_bytes,
    kv_bytes_per_token,
)
from gpusim.speculative.iteration import Speculation, iteration_bytes, predict_iteration
from gpusim.speculative.overhead import SpecOverhead
from gpusim.speculative.trees import TokenTree

AUTO_K_MAX = 8          # k=auto considers 1..AUTO_K_MAX
SPEC_CTX_POINTS = 24    # geometric context grid of the iteration-time tables


def draft_memory(draft: Draft, target: ModelSpec) -> tuple[float, float]:
    """(extra weight bytes, extra KV bytes per token) the draft adds on the GPU."""
    return extra_weight_bytes(draft, target), kv_bytes_per_token(draft, target)


def _ctx_grid(max_ctx: int) -> list[int]:
    hi = max(int(max_ctx), 2)
    pts = {0, hi, *(round(float(x)) for x in np.geomspace(16, hi, SPEC_CTX_POINTS))}
    return sorted(p for p in pts if 0 <= p <= hi)


@dataclass(frozen=True)
class SpecStepModel:
    """Iteration times of speculative steps, tabulated per (k, batch, context)."""

    draft_label: str
    acceptance_rate: float
    k_fixed: int | None            # None: k=auto
    ks: tuple[int, ...]            # candidate ks (tabulated)
    ctx_grid: list[int]
    iter_s: dict[int, list[list[float]]]     # k -> [batch][ctx index]
    iter_bytes: dict[int, list[list[float]]]
    expected: dict[int, float]               # k -> expected tokens per sequence
    best: list[list[int]]                    # [batch][ctx index] -> k (auto)
    acceptance: IidAcceptance

    def _ctx_index(self, ctx: float) -> tuple[int, float]:
        return grid_position(self.ctx_grid, ctx)

    def choose_k(self, batch: int, mean_ctx: float) -> int:
        """The fixed k, or (auto) the tabulated best k at the nearest grid context."""
        if self.k_fixed is not None:
            return self.k_fixed
        i, f = self._ctx_index(mean_ctx)
        return self.best[batch][i + 1 if f >= 0.5 else i]

    def iteration(self, k: int, batch: int, mean_ctx: float) -> tuple[float, float]:
        """(seconds, HBM bytes) of one iteration with ``k`` drafts for ``batch``."""
        i, f = self._ctx_index(mean_ctx)
        row, brow = self.iter_s[k][batch], self.iter_bytes[k][batch]
        return (row[i] + f * (row[i + 1] - row[i]), brow[i] + f * (brow[i + 1] - brow[i]))

    def sample_accepted(self, k: int, batch: int, rng: np.random.Generator) -> np.ndarray:
        """Accepted draft tokens (0..k) for each of ``batch`` sequences."""
        return self.acceptance.sample_tokens(k, batch, rng) - 1

    def describe(self) -> dict[str, object]:
        return {"draft": self.draft_label, "k": "auto" if self.k_fixed is None
                else self.k_fixed, "acceptance": self.acceptance_rate,
                "speculate_only_without_prefill_chunks": True}


def build_spec_step_model(platform: Platform, target: ModelSpec, overhead: SpecOverhead,
                          draft: Draft, k: int | None, acceptance: float, max_num_seqs: int,
                          max_ctx: int, reserve_fraction: float) -> SpecStepModel:
    """Tabulate iteration times for k (or 1..AUTO_K_MAX for auto). Raises ConfigError
    (fields ``spec_acceptance``, ``spec_k``)."""
    try:
        acc = IidAcceptance(acceptance)
    except ValueError as exc:
        raise bad("", str(exc), field="spec_acceptance") from None
    k_cap = draft.heads if isinstance(draft, MedusaDraft) else AUTO_K_MAX
    if k is not None:
        if isinstance(draft, MedusaDraft) and k > draft.heads:
            raise bad("", f"{draft.heads} Medusa heads guess at most {draft.heads} tokens "
                      "ahead", field="spec_k", value=k)
        ks: tuple[int, ...] = (k,)
    else:
        ks = tuple(range(1, k_cap + 1))
    grid = _ctx_grid(max_ctx)
    b = np.repeat(np.arange(1, max_num_seqs + 1, dtype=np.float64), len(grid))
    c = np.tile(np.asarray(grid, dtype=np.float64), max_num_seqs)
    iter_s: dict[int, list[list[float]]] = {}
    iter_bytes: dict[int, list[list[float]]] = {}
    expected: dict[int, float] = {}
    for kk in ks:
        spec = Speculation(target, draft, TokenTree.chain(kk), acc)
        pred = predict_iteration(platform, overhead, spec, b, c, reserve_fraction)
        moved = iteration_bytes(spec, platform, b, c)
        secs = pred.iteration_s.reshape(max_num_seqs, len(grid))
        byts = np.broadcast_to(moved, b.shape).reshape(max_num_seqs, len(grid))
        # row 0 unused (batch sizes start at 1)
        iter_s[kk] = [[0.0] * len(grid)] + [list(map(float, r)) for r in secs]
        iter_bytes[kk] = [[0.0] * len(grid)] + [list(map(float, r)) for r in byts]
        expected[kk] = spec.expected_tokens()
    best = [[ks[0]] * len(grid)]
    for bb in range(1, max_num_seqs + 1):
        row = []
        for i in range(len(grid)):
            row.append(max(ks, key=lambda kk, bb=bb, i=i: expected[kk] / iter_s[kk][bb][i]))
        best.append(row)
    return SpecStepModel(draft_label=draft.label, acceptance_rate=acc.rate, k_fixed=k,
                         ks=ks, ctx_grid=grid, iter_s=iter_s, iter_bytes=iter_bytes,
                         expected=expected, best=best, acceptance=acc)
