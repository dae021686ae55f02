"""What-if: the batch at which a quantized stack stops beating its unquantized
baseline, for one model on one GPU.

Each stack runs the model as it stores it (``kernels.quant.for_stack``: torch-fp8 in
fp8, torch-int4 in int4, the baseline in the model's own dtype) over the same step
shapes; a quantized stack "beats" the baseline at a batch where its step is faster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gpusim.errors import FieldError
from gpusim.kernels.quant import for_stack
from gpusim.platform import Platform
from gpusim.specs import ModelSpec
from gpusim.step.predict import predict

DEFAULT_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class Crossover:
    """One stack against the baseline: its step times and speedups per batch (baseline
    over it: > 1 where it wins), the last batch it wins at and the first batch from
    which it no longer does (None: it wins at every batch given, or never)."""

    stack: str
    weights: str
    step_ms: tuple[float, ...]
    speedup: tuple[float, ...]
    wins_up_to: int | None
    stops_at: int | None


@dataclass(frozen=True)
class CrossoverTable:
    """The baseline and each stack over ``batches`` (decode or verify at ``ctx``)."""

    model: str
    gpu: str
    mode: str
    ctx: int
    q: int
    batches: tuple[int, ...]
    baseline: Crossover
    others: tuple[Crossover, ...]

    def rows(self) -> list[dict[str, object]]:
        """One row per batch: each stack's step time and speedup over the baseline."""
        out = []
        for i, b in enumerate(self.batches):
            row: dict[str, object] = {"batch": b, f"{self.baseline.stack}_ms":
                                      self.baseline.step_ms[i]}
            for c in self.others:
                row[f"{c.stack}_ms"] = c.step_ms[i]
                row[f"{c.stack}_speedup"] = c.speedup[i]
            out.append(row)
        return out

    def summary(self) -> list[dict[str, object]]:
        """One row per stack: its weights, speedup at the smallest batch, the last
        batch it wins at and the first it loses (or ties) at."""
        return [{"stack": c.stack, "weights": c.weights, "baseline": self.baseline.stack,
                 "speedup_at_first_batch": c.speedup[0], "wins_up_to_batch": c.wins_up_to,
                 "stops_winning_at_batch": c.stops_at} for c in self.others]


def _weights(model: ModelSpec) -> str:
    return model.quantization.describe() if model.quantization else model.dtype


def where_it_stops(batches: Sequence[int], speedup: Sequence[float] | np.ndarray
                   ) -> tuple[int | None, int | None]:
    """(the last batch a stack wins at, the first batch after its first win at which it
    no longer does) from its speedups over the baseline per batch (> 1: it wins); None
    where it never wins, or never stops. Raises FieldError when the two lengths differ."""
    s = np.asarray(speedup, dtype=np.float64)
    if len(s) != len(batches):
        raise FieldError("speedup", f"speedup has {len(s)} values for {len(batches)} "
                         "batches")
    wins = np.flatnonzero(s > 1.0)
    if not len(wins):
        return None, None
    stops = next((int(i) for i in np.flatnonzero(s <= 1.0) if i > wins[0]), None)
    return int(batches[int(wins[-1])]), None if stops is None else int(batches[stops])


def crossover(baseline: Platform, others: Sequence[Platform], model: ModelSpec,
              mode: str = "decode", ctx: int = 1024, q: int = 1,
              batches: Sequence[int] = DEFAULT_BATCHES) -> CrossoverTable:
    """Step times of ``model`` on the ``baseline`` platform and on each of ``others``
    (same GPU, other stacks) over ``batches``, and where each stops beating the
    baseline. Raises FieldError for an empty or unsorted batch list, a platform of
    another GPU, or a model a stack cannot run (``for_stack``)."""
    bs = tuple(int(b) for b in batches)
    if not bs or any(b < 1 for b in bs) or list(bs) != sorted(set(bs)):
        raise FieldError("batches", f"batches={list(bs)} must be increasing integers >= 1")
    for p in others:
        if p.gpu.name != baseline.gpu.name:
            raise FieldError("gpu", f"gpu={p.gpu.name!r}: every stack is compared on "
                             f"{baseline.gpu.name}")
    b = np.asarray(bs, dtype=np.float64)

    def run(platform: Platform) -> tuple[ModelSpec, np.ndarray]:
        m = for_stack(model, platform.stack)
        return m, predict(platform, m, mode, b, ctx, q).seconds * 1e3

    base_model, base_ms = run(baseline)

    def versus(platform: Platform) -> Crossover:
        m, ms = run(platform)
        speedup = base_ms / ms
        wins_up_to, stops_at = where_it_stops(bs, speedup)
        return Crossover(platform.stack.name, _weights(m), tuple(ms.tolist()),
                         tuple(speedup.tolist()), wins_up_to, stops_at)

    base = Crossover(baseline.stack.name, _weights(base_model), tuple(base_ms.tolist()),
                     tuple(1.0 for _ in bs), None, None)
    return CrossoverTable(model.name, baseline.gpu.name, mode, ctx, q, bs, base,
                          tuple(versus(p) for p in others))
