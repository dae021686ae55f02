"""How far to trust a prediction: the error band and measured envelope of a calibration.

A calibration file may carry a ``trust`` section (``Trust``), written from the
leave-one-model-out (held-out) errors of the fit that produced it
(``gpusim.calibration.bands``):

* ``bands``: per stack, launch mode, step mode and batch range, a quantile of
  |predicted/measured - 1| over held-out rows (``error_pct``);
* ``envelope``: what the calibration was measured on: the GPU, the stacks, the model
  sizes (parameter counts) and, per (launch, mode), the batch, context and q ranges.

``assess`` looks a shape up: its band (or why there is none) and the dimensions in
which it lies outside the envelope; ``combined`` joins the assessments of several steps
(a speculative iteration, a serving run) into one, ``ratio_band_pct`` gives the band
of a ratio of two predictions (a speedup). A calibration without a trust section (an old
file, ``--calibration none``) has no band, and ``assess`` says so: never an error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from pydantic import Field, model_validator

from gpusim.specs import Frozen
from gpusim.specs.base import NonNeg, PosInt, field_error

Pct = Annotated[float, Field(ge=0.0, le=1000.0, allow_inf_nan=False)]


class Band(Frozen):
    """The held-out error of one cell: steps of ``stack`` launched ``launch`` in
    ``mode`` with batch in [batch_min, batch_max]; ``error_pct``: the band's half-width,
    a quantile of |predicted/measured - 1| in percent over ``rows`` held-out rows."""

    stack: str
    launch: str
    mode: str
    batch_min: PosInt
    batch_max: PosInt
    error_pct: Pct
    rows: PosInt

    @model_validator(mode="after")
    def _ordered(self) -> Band:
        if self.batch_max < self.batch_min:
            raise field_error("batch_max", f"batch_max={self.batch_max} < batch_min="
                              f"{self.batch_min}")
        return self


class ShapeRange(Frozen):
    """The measured step shapes of one (stack, launch, mode): min and max of each
    dimension."""

    stack: str
    launch: str
    mode: str
    batch: tuple[NonNeg, NonNeg]
    ctx: tuple[NonNeg, NonNeg]
    q: tuple[NonNeg, NonNeg]


class Envelope(Frozen):
    """What a calibration was measured on: the GPU, the stacks (the first: the one
    the GPU's physics was fitted on), the models' parameter counts, the shapes."""

    gpu: str
    stacks: tuple[str, ...]
    model_params: tuple[NonNeg, NonNeg]
    shapes: tuple[ShapeRange, ...] = ()


class Trust(Frozen):
    """A calibration file's ``trust`` section: error bands and the measured envelope;
    ``quantile``: which quantile of the held-out errors a band is; ``source``: how the
    bands were computed."""

    quantile: Annotated[float, Field(gt=0.0, le=1.0)]
    source: str = ""
    bands: tuple[Band, ...] = ()
    envelope: Envelope


@dataclass(frozen=True)
class Assessment:
    """One shape's trust: ``band_pct`` (None with ``no_band`` saying why) and the
    envelope dimensions it lies outside (empty: inside)."""

    band_pct: float | None
    outside: tuple[str, ...]
    no_band: str = ""

    @property
    def envelope(self) -> str:
        """``ok``, ``unknown`` (no trust section) or ``outside: ...`` (one line)."""
        if self.outside:
            return "outside: " + "; ".join(self.outside)
        return "unknown" if self.no_band == NO_TRUST else "ok"

    def interval_ms(self, predicted_ms: float) -> tuple[float, float] | None:
        """The measured times the band allows: error = predicted/measured - 1 within
        +-band, so measured in [predicted/(1+band), predicted/(1-band)] (no upper
        bound from a band of 100% or more). None without a band."""
        if self.band_pct is None:
            return None
        b = self.band_pct / 100.0
        return predicted_ms / (1.0 + b), (predicted_ms / (1.0 - b) if b < 1.0
                                          else float("inf"))

    def as_dict(self, predicted_ms: float) -> dict[str, object]:
        """The fields every output carries: band_pct, band_low_ms, band_high_ms,
        envelope (and no_band when there is none)."""
        iv = self.interval_ms(predicted_ms)
        out: dict[str, object] = {
            "band_pct": self.band_pct,
            "band_low_ms": None if iv is None else iv[0],
            "band_high_ms": None if iv is None else iv[1],
            "envelope": self.envelope}
        if self.no_band:
            out["no_band"] = self.no_band
        return out


NO_TRUST = "the calibration has no error bands (no trust section)"


def _range(name: str, value: float, lo: float, hi: float) -> str | None:
    if value < lo:
        return f"{name} {value:g} < {lo:g}"
    if value > hi:
        return f"{name} {value:g} > {hi:g}"
    return None


def assess(trust: Trust | None, *, gpu: str, stack: str, launch: str, mode: str,
           batch: float, ctx: float, q: float, model_params: float) -> Assessment:
    """The band and envelope check of one step shape under a calibration's ``trust``
    (None: no band, envelope unknown). Pure; raises nothing."""
    if trust is None:
        return Assessment(None, (), NO_TRUST)
    common, shape, bands = _shared(trust, gpu=gpu, stack=stack, launch=launch, mode=mode,
                                   model_params=model_params)
    outside = tuple(common + _shape_outside(shape, batch, ctx, q))
    band = next((b for b in bands if b.batch_min <= batch <= b.batch_max), None)
    if band is None:
        return Assessment(None, outside,
                          f"no band for stack {stack}, {launch} {mode}, batch {batch:g}")
    return Assessment(band.error_pct, outside)


def _shared(trust: Trust, *, gpu: str, stack: str, launch: str, mode: str,
            model_params: float) -> tuple[list[str], ShapeRange | None, list[Band]]:
    """What every shape of one (GPU, stack, launch, mode, model) shares: the envelope
    dimensions they all lie outside, the measured ranges of their mode (None: not
    measured) and the bands of their stack, launch and mode."""
    env = trust.envelope
    common: list[str] = []
    if gpu != env.gpu:
        common.append(f"gpu {gpu} (measured on {env.gpu})")
    if stack not in env.stacks:
        common.append(f"stack {stack} (measured: {', '.join(env.stacks)})")
    hit = _range("model", model_params / 1e9, env.model_params[0] / 1e9,
                 env.model_params[1] / 1e9)
    if hit:
        common.append(hit.replace("model", "model params (1e9)", 1))
    # an unmeasured stack's shapes are checked against the first (reference) stack's
    measured = stack if stack in env.stacks else (env.stacks[0] if env.stacks else "")
    shape = next((s for s in env.shapes if s.stack == measured and s.launch == launch
                  and s.mode == mode), None)
    if shape is None:
        common.append(f"mode {mode} launched {launch} (not measured)")
    bands = [b for b in trust.bands if b.stack == stack and b.launch == launch
             and b.mode == mode]
    return common, shape, bands


def _format_g(values: np.ndarray) -> np.ndarray:
    """``f"{v:g}"`` of each value, as a numpy string array: integral values below 1e6
    (which ``:g`` writes as the integer) converted in C, any other one by one."""
    if bool(((values == np.floor(values)) & (np.abs(values) < 1e6)).all()):
        return values.astype(np.int64).astype(str)
    return np.array([f"{v:g}" for v in values.tolist()])


def _shape_outside(shape: ShapeRange | None, batch: float, ctx: float, q: float) -> list[str]:
    if shape is None:
        return []
    return [h for h in (_range("batch", batch, *shape.batch), _range("ctx", ctx, *shape.ctx),
                        _range("q", q, *shape.q)) if h]


@dataclass(frozen=True)
class TrustColumns:
    """``assess`` of many shapes as columns: ``band_pct`` (NaN: no band),
    ``band_low_ms``/``band_high_ms`` (NaN without a band; inf: no upper bound) and
    ``envelope`` (Assessment.envelope's text per shape)."""

    band_pct: np.ndarray
    band_low_ms: np.ndarray
    band_high_ms: np.ndarray
    envelope: list[str]


def assess_columns(trust: Trust | None, *, gpu: str, stack: str, launch: str, mode: str,
                   batch: np.ndarray, ctx: np.ndarray, q: np.ndarray, model_params: float,
                   predicted_ms: np.ndarray, extra_outside: tuple[str, ...] = ()
                   ) -> TrustColumns:
    """``assess`` followed by ``Assessment.as_dict`` for every shape, as numpy columns:
    the bands and the envelope test are array operations, and only a shape outside the
    measured ranges gets its own envelope text (what a table of many rows needs; the
    same values as ``assess``). ``extra_outside``: dimensions every
    shape lies outside (a parallel layout), ignored without a trust section. Pure;
    raises nothing."""
    n = len(batch)
    band = np.full(n, np.nan)
    if trust is None:
        return TrustColumns(band, band.copy(), band.copy(), ["unknown"] * n)
    common, shape, bands = _shared(trust, gpu=gpu, stack=stack, launch=launch, mode=mode,
                                   model_params=model_params)
    common += extra_outside
    unset = np.ones(n, bool)
    for b in bands:  # the first band holding the batch, as assess's next()
        hit = unset & (batch >= b.batch_min) & (batch <= b.batch_max)
        band[hit] = b.error_pct
        unset &= ~hit
    frac = band / 100.0
    low = predicted_ms / (1.0 + frac)
    with np.errstate(divide="ignore", invalid="ignore"):
        high = np.where(frac < 1.0, predicted_ms / (1.0 - frac), np.inf)
    high[np.isnan(band)] = np.nan
    head = "outside: " + "; ".join(common) if common else "ok"
    if shape is None:
        return TrustColumns(band, low, high, [head] * n)
    # each dimension's text where it lies outside its range, joined as Python strings
    # in an object array (a table of many rows: each distinct value formatted once, in C
    # where it can be, the numbers as _range writes them)
    joined = np.full(n, "outside: " + "; ".join(common), dtype=object)
    started = np.full(n, bool(common))
    for name, vals, (lo, hi) in (("batch", batch, shape.batch), ("ctx", ctx, shape.ctx),
                                 ("q", q, shape.q)):
        out = (vals < lo) | (vals > hi)
        if not out.any():
            continue
        values, which = np.unique(vals[out], return_inverse=True)
        text = (f"{name} " + _format_g(values).astype(object)
                + np.where(values < lo, f" < {lo:g}", f" > {hi:g}").astype(object))
        sep = np.where(started[out], "; ", "").astype(object)
        joined[out] = joined[out] + sep + text[which]
        started |= out
    envelope = np.where(started, joined, "ok")
    return TrustColumns(band, low, high, envelope.tolist())


def combined(parts: Sequence[tuple[str, Assessment, float]]) -> Assessment:
    """One band and envelope check for work made of several steps: ``parts`` are
    (label, the step's assessment, its predicted seconds).

    The band is the time-weighted mean of the steps' ``band_pct``: the relative error
    of a sum of steps whose errors share a sign (they come from one calibration's
    physics, so they mostly do) is exactly that mean, and it never exceeds the largest
    step's band (taking the largest instead would charge a short step's wide band to
    the whole). Any step without a band: no band (``no_band`` names it). Outside: each
    step's dimensions, prefixed with its label, in order, once per (label, dimension). Raises
    ValueError for no parts or a negative or non-finite weight."""
    if not parts:
        raise ValueError("no steps to combine")
    if any(not math.isfinite(w) or w < 0.0 for _, _, w in parts):
        raise ValueError(f"step times must be finite and >= 0: {[w for *_, w in parts]}")
    # one message per (step label, dimension): a chain's draft steps at ctx L .. L+k-1
    # name the first beyond the range, not each
    first: dict[tuple[str, str], str] = {}
    for label, a, _ in parts:
        for o in a.outside:
            first.setdefault((label, o.split(" ", 1)[0]), f"{label}: {o}" if label else o)
    outside = tuple(first.values())
    missing = next(((label, a) for label, a, _ in parts if a.band_pct is None), None)
    if missing is not None:
        label, a = missing
        return Assessment(None, outside, a.no_band if a.no_band == NO_TRUST
                          else f"{label}: {a.no_band}" if label else a.no_band)
    total = sum(w for *_, w in parts)
    band = (sum(float(a.band_pct) * w for _, a, w in parts) / total if total > 0  # type: ignore[arg-type]
            else max(float(a.band_pct) for _, a, _ in parts))  # type: ignore[arg-type]
    return Assessment(band, outside)


def ratio_band_pct(num_pct: float | None, den_pct: float | None) -> float | None:
    """The band of a ratio of two predictions (a speedup: baseline time / speculative
    time), conservatively: their errors are taken as independent and of opposite
    signs, the worst case, so predicted/true ratio lies in [(1-a)/(1+b), (1+a)/(1-b)]
    for bands a, b (fractions); returns the larger deviation in percent, None when
    either has no band (inf from a band of 100% or more). Errors of one calibration
    partly cancel in a ratio, so the true spread is usually narrower. Raises nothing."""
    if num_pct is None or den_pct is None:
        return None
    a, b = num_pct / 100.0, den_pct / 100.0
    if b >= 1.0:
        return math.inf
    return 100.0 * max((1.0 + a) / (1.0 - b) - 1.0, 1.0 - (1.0 - a) / (1.0 + b))
