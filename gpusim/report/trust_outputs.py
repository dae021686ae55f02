"""Error bands and envelope checks of the outputs made of many steps: a speculative
iteration (``spec``, ``spec-sweep``) and a serving run (``serve``, ``plan``'s winner).

Every step is assessed by ``Platform.assess`` (``cost.trust``) and the steps are joined
by ``cost.trust.combined``: the band is their time-weighted mean band, the envelope
the union of what lies outside, each prefixed with the step it belongs to.

Speculative iteration: draft steps (a draft model or EAGLE head decoding at batch b,
ctx L + depth; a tree level of several nodes in mode tree), weighted equally within
the drafting time, and the verify pass (mode verify, q = k + 1, batch b, ctx L; a
tree: mode tree, q = nodes), weighted by its time; Medusa heads run inside the verify
pass; prompt lookup (n-gram) is host work no calibration measured, so it carries no
weight. The host round trip takes the steps' band. The speedup (plain decode /
speculative, per token) is a ratio of two predictions of one calibration: its band is
``ratio_band_pct`` of the plain decode step's band and the iteration's, the worst case
(errors of opposite sign); the acceptance model is an input, outside every band.

Serving run: each distinct step shape of ``serving.shapes`` is assessed once: a
decode-only step as mode decode (batch, mean context); a step of fresh prompts as
prefill (batch = chunks, q = their mean length, ctx 0); chunks after cached tokens as
verify-shaped (the step-time model prices their attention so); a speculative step as
an iteration above. A step with both decoding sequences and chunks was never measured
as such (the step-time model adds its decode attention to token-wise costs at all its
tokens and the chunks' attention): it is outside the envelope (``mixed``), with the
larger of its decode and chunk parts' bands. The run's band is the step-time-weighted
mean of its steps' bands (steps without a band left out and counted).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from gpusim.cost.trust import NO_TRUST, Assessment, combined, ratio_band_pct
from gpusim.platform import Platform
from gpusim.serving.shapes import StepShape, StepShapes, bin_top
from gpusim.specs import ModelSpec
from gpusim.specs.enums import Mode
from gpusim.speculative.acceptance import IidAcceptance
from gpusim.speculative.drafts import Draft, EagleDraft, MedusaDraft, ModelDraft
from gpusim.speculative.iteration import Speculation, predict_iteration
from gpusim.speculative.overhead import SpecOverhead
from gpusim.speculative.trees import TokenTree

Part = tuple[str, Assessment, float]
SpecRun = tuple[Draft, float, SpecOverhead]   # a speculating run's draft, acceptance, host


# ---------------------------------------------------------------------------------
# a speculative iteration
# ---------------------------------------------------------------------------------
def iteration_parts(plat: Platform, spec: Speculation, batch: float, ctx: float,
                    draft_s: float, verify_s: float) -> list[Part]:
    """(label, assessment, seconds) of one iteration's GPU steps at (batch, ctx):
    draft steps sharing ``draft_s`` equally, then the verify pass (``verify_s``)."""
    d, tree, target = spec.draft, spec.tree, spec.target
    parts: list[Part] = []
    draft_model: ModelSpec | None = None
    if isinstance(d, ModelDraft):
        draft_model = d.model
    elif isinstance(d, EagleDraft):
        draft_model = d.head_model(target)
    if draft_model is not None:
        levels = tree.expanded_per_level()
        before = tree.nodes_before_level()
        for level, q in enumerate(levels):
            mode = "decode" if q == 1 else Mode.TREE.value
            a = plat.assess(float(draft_model.param_count), mode, batch,
                            ctx + before[level], q)
            parts.append((f"draft {draft_model.name}", a, draft_s / len(levels)))
    mode = "verify" if tree.is_chain else Mode.TREE.value
    heads_s = draft_s if isinstance(d, MedusaDraft) else 0.0
    parts.append(("verify", plat.assess(float(target.param_count), mode, batch, ctx,
                                        tree.nodes), verify_s + heads_s))
    return parts


def iteration_trust(plat: Platform, spec: Speculation, batch: float, ctx: float,
                    draft_s: float, verify_s: float) -> tuple[Assessment, Assessment,
                                                              float | None]:
    """(the iteration's assessment, the plain decode baseline's, the speedup's band in
    percent or None) at (batch, ctx). Raises nothing for a valid speculation."""
    it = combined(iteration_parts(plat, spec, batch, ctx, draft_s, verify_s))
    base = plat.assess(float(spec.target.param_count), "decode", batch, ctx, 1)
    return it, base, ratio_band_pct(base.band_pct, it.band_pct)


def _envelope(outside: Sequence[str], no_band: str) -> str:
    if outside:
        return "outside: " + "; ".join(outside)
    return "unknown" if no_band == NO_TRUST else "ok"


def spec_fields(plat: Platform, spec: Speculation, batch: float, ctx: float,
                rec: dict[str, Any]) -> dict[str, Any]:
    """The trust fields of one ``spec`` record (``rec``: ``IterationPrediction.record``'s
    keys): ``band_pct`` and ``band_low_ms``/``band_high_ms`` of ``iteration_ms``,
    ``speedup_band_pct`` with ``speedup_low``/``speedup_high``, ``envelope`` (target,
    draft and baseline shapes), ``no_band`` when there is none."""
    it, base, sp = iteration_trust(plat, spec, batch, ctx, float(rec["draft_ms"]) / 1e3,
                                   float(rec["verify_ms"]) / 1e3)
    out = it.as_dict(float(rec["iteration_ms"]))
    speedup = float(rec["speedup"])
    out["speedup_band_pct"] = sp
    out["speedup_low"] = None if sp is None else speedup / (1.0 + sp / 100.0)
    out["speedup_high"] = (None if sp is None else speedup / (1.0 - sp / 100.0)
                           if sp < 100.0 else math.inf)
    outside = tuple(dict.fromkeys((*it.outside,
                                   *(f"target decode: {o}" for o in base.outside))))
    out["envelope"] = _envelope(outside, it.no_band)
    if it.no_band or base.no_band:
        out["no_band"] = it.no_band or f"target decode: {base.no_band}"
    return out


SWEEP_COLUMNS = ("band_pct", "speedup_band_pct", "envelope")


def sweep_fields(plat: Platform, target: ModelSpec, spec: Speculation,
                 row: dict[str, Any]) -> dict[str, Any]:
    """``SWEEP_COLUMNS`` of one ``spec-sweep`` row (its k, batch, ctx, ``draft_ms``,
    ``verify_ms``): the iteration's band, the speedup's, the envelope."""
    k = int(row["k"])
    s = Speculation(target, spec.draft, TokenTree.chain(k), spec.acceptance)
    it, base, sp = iteration_trust(plat, s, float(row["batch"]), float(row["ctx"]),
                                   float(row["draft_ms"]) / 1e3,
                                   float(row["verify_ms"]) / 1e3)
    outside = tuple(dict.fromkeys((*it.outside,
                                   *(f"target decode: {o}" for o in base.outside))))
    return {"band_pct": it.band_pct, "speedup_band_pct": sp,
            "envelope": _envelope(outside, it.no_band)}


def warn(envelope: str, band_pct: float | None, no_band: str, what: str) -> None:
    """On stderr, as ``predict`` does: ``what`` outside its calibration's envelope, or
    without an error band."""
    if envelope.startswith("outside"):
        print(f"gpusim: warning: {what}: {envelope} (outside what the calibration was "
              "measured on; its error band is not a bound here)", file=sys.stderr)
    elif band_pct is None:
        print(f"gpusim: note: {what}: no error band: {no_band}", file=sys.stderr)


# ---------------------------------------------------------------------------------
# a serving run
# ---------------------------------------------------------------------------------
def _span(low: int) -> tuple[int, int]:
    return low, bin_top(low)


MIXED = "mixed prefill+decode step (never measured as such)"


class _Shapes:
    """Assessments of one run's step shapes (``plat.assess`` remembered: the shapes of
    a run share their parts)."""

    def __init__(self, plat: Platform, model: ModelSpec) -> None:
        self.plat, self.params = plat, float(model.param_count)
        self.memo: dict[tuple[str, float, float, float], Assessment] = {}

    def _assess(self, mode: str, batch: float, ctx: float, q: float) -> Assessment:
        key = (mode, batch, ctx, q)
        hit = self.memo.get(key)
        if hit is None:
            hit = self.memo[key] = self.plat.assess(self.params, mode, batch, ctx, q)
        return hit

    def span(self, label: str, mode: str, batch: float, ctx: tuple[int, int],
             q: tuple[int, int]) -> Assessment:
        """A binned shape's assessment, its messages prefixed ``label: ``: outside if
        either end of its bins is (a bin that straddles a measured range's end counts
        as outside, conservatively)."""
        lo = self._assess(mode, batch, ctx[0], q[0])
        hi = self._assess(mode, batch, ctx[1], q[1])
        outside = dict.fromkeys(f"{label}: {o}" for o in (*lo.outside, *hi.outside))
        return Assessment(lo.band_pct, tuple(outside), lo.no_band
                          if lo.no_band in ("", NO_TRUST) else f"{label}: {lo.no_band}")

    def chunk(self, s: StepShape) -> Assessment:
        q = _span(s.chunk_tokens)
        if s.chunk_ctx == 0:
            return self.span("prefill", "prefill", s.chunks, (0, 0), q)
        return self.span("chunk after cached tokens (verify-shaped)", "verify", s.chunks,
                         _span(s.chunk_ctx), q)

    def shape(self, s: StepShape) -> Assessment:
        """One non-speculative step shape's assessment (module docstring)."""
        dec = (self.span("decode", "decode", s.decode, _span(s.decode_ctx), (1, 1))
               if s.decode else None)
        chunk = self.chunk(s) if s.chunks else None
        if dec is None or chunk is None:
            a = dec or chunk
            assert a is not None   # a step does some work
            return a
        # without a trust section nothing is known of what was measured (as ``assess``)
        known = self.plat.calibration.trust is not None
        outside = ((MIXED,) if known else ()) + dec.outside + chunk.outside
        missing = next((a for a in (dec, chunk) if a.band_pct is None), None)
        if missing is not None:
            return Assessment(None, outside, missing.no_band)
        return Assessment(max(float(dec.band_pct), float(chunk.band_pct)),  # type: ignore[arg-type]
                          outside)


def shape_trust(plat: Platform, model: ModelSpec, s: StepShape) -> Assessment:
    """One non-speculative serving step shape's assessment (module docstring)."""
    return _Shapes(plat, model).shape(s)


def _spec_assessments(plat: Platform, model: ModelSpec, spec: SpecRun | None,
                      shapes: list[StepShape]) -> dict[StepShape, Assessment]:
    """Speculative step shapes' assessments: their iterations predicted once per k
    (vectorised over the shapes) for the draft/verify split, then ``iteration_trust``."""
    if spec is None:
        return {s: Assessment(None, ("speculative step (its draft unknown)",),
                              "speculative step: its draft is unknown") for s in shapes}
    draft, acceptance, overhead = spec
    out: dict[StepShape, Assessment] = {}
    for k in sorted({s.spec_k for s in shapes}):
        group = [s for s in shapes if s.spec_k == k]
        sp = Speculation(model, draft, TokenTree.chain(k), IidAcceptance(acceptance))
        b = np.array([s.decode for s in group], float)
        c = np.array([s.decode_ctx for s in group], float)
        p = predict_iteration(plat, overhead, sp, b, c)
        for i, s in enumerate(group):
            out[s] = iteration_trust(plat, sp, s.decode, s.decode_ctx,
                                     float(p.draft_s[i]), float(p.verify_s[i]))[0]
    return out


def serving_trust(plat: Platform, model: ModelSpec, shapes: StepShapes,
                  spec: SpecRun | None = None) -> dict[str, Any]:
    """A serving run's ``trust`` object: ``band_pct`` (the step-time-weighted mean band
    of its steps that have one), ``banded_time_fraction`` (their share of the step
    time), ``outside_step_fraction`` and ``outside_time_fraction`` (steps outside the
    envelope), ``outside`` (each dimension -> its share of steps, most first),
    ``envelope`` (ok | unknown | outside: the three most common), ``shapes``
    (distinct shapes assessed). ``spec``: the run's (draft, acceptance rate, host
    overhead) when it speculates. Raises nothing for a finished run's tally."""
    judge = _Shapes(plat, model)
    items = shapes.items()
    total_s = sum(t for _, t, _ in items)
    steps = sum(n for _, _, n in items)
    spec_shapes = [s for s, _, _ in items if s.spec_k]
    assessed = _spec_assessments(plat, model, spec, spec_shapes) if spec_shapes else {}
    banded_s = band_s = out_steps = out_s = 0.0
    dims: dict[str, int] = {}
    no_band = ""
    for s, t, n in items:
        a = assessed.get(s) or judge.shape(s)
        if a.band_pct is not None:
            banded_s += t
            band_s += a.band_pct * t
        elif not no_band:
            no_band = a.no_band
        if a.outside:
            out_steps += n
            out_s += t
            for key in dict.fromkeys(_dimension(o) for o in a.outside):
                dims[key] = dims.get(key, 0) + n
    ranked = sorted(dims.items(), key=lambda kv: -kv[1])
    unknown = plat.calibration.trust is None
    return {
        "band_pct": band_s / banded_s if banded_s > 0 else None,
        "band_weighting": "step-time-weighted mean of the steps' bands",
        "banded_time_fraction": banded_s / total_s if total_s > 0 else 0.0,
        "outside_step_fraction": out_steps / steps if steps else 0.0,
        "outside_time_fraction": out_s / total_s if total_s > 0 else 0.0,
        "outside": {d: c / steps for d, c in ranked},
        "envelope": ("unknown" if unknown else "ok" if not ranked else
                     "outside: " + "; ".join(
                         f"{d} ({100.0 * c / steps:.0f}% of steps)" for d, c in ranked[:3])),
        "no_band": NO_TRUST if unknown else no_band,
        "shapes": len(items), "steps": steps,
    }


def _dimension(outside: str) -> str:
    """An outside message without its numbers' specifics where they vary by step:
    ``batch 300 > 256`` -> ``batch > 256``, ``ctx 90 < 256`` -> ``ctx < 256``."""
    words = outside.split(" ")
    for i, w in enumerate(words):
        if w in ("<", ">") and i >= 1 and _number(words[i - 1]):
            return " ".join((*words[:i - 1], *words[i:]))
    return outside


def _number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def serving_warning(trust: dict[str, Any]) -> None:
    """One stderr line when a serving run's steps lie outside the envelope or carry no
    band."""
    if trust["outside_step_fraction"] > 0:
        print(f"gpusim: warning: {100.0 * trust['outside_step_fraction']:.0f}% of the "
              f"simulated steps ({100.0 * trust['outside_time_fraction']:.0f}% of step time) "
              f"lie outside what the calibration was measured on: "
              f"{trust['envelope'].removeprefix('outside: ')}; the run's error band "
              f"({_pct(trust['band_pct'])}) is not a bound there", file=sys.stderr)
    elif trust["band_pct"] is None:
        print(f"gpusim: note: no error band for the run: {trust['no_band']}",
              file=sys.stderr)


def _pct(band: float | None) -> str:
    return "none" if band is None else f"+-{band:.1f}%"


def summary_line(trust: dict[str, Any] | None) -> str:
    """One line of a serving run's trust, for ``plan``'s summary."""
    if trust is None:
        return "trust: not assessed (the winner's run was not confirmed over the full window)"
    frac = trust["outside_step_fraction"]
    where = ("inside the calibration's envelope" if frac == 0 and trust["envelope"] == "ok"
             else "envelope unknown" if trust["envelope"] == "unknown"
             else f"{100.0 * frac:.0f}% of steps outside the envelope "
                  f"({trust['envelope'].removeprefix('outside: ')})")
    return f"trust: step-time band {_pct(trust['band_pct'])}; {where}"


def warn_rows(rows: Sequence[dict[str, Any]]) -> None:
    """One stderr line for ``spec-sweep``: how many rows lie outside the envelope, and
    the dimensions of the first such row (or how many rows carry no band)."""
    out = [r for r in rows if str(r.get("envelope", "")).startswith("outside")]
    if out:
        print(f"gpusim: warning: {len(out)} of {len(rows)} rows lie outside what the "
              f"calibration was measured on (column envelope), e.g. batch {out[0]['batch']} "
              f"ctx {out[0]['ctx']} k {out[0]['k']}: "
              f"{str(out[0]['envelope']).removeprefix('outside: ')}", file=sys.stderr)
    elif any(r.get("band_pct") is None for r in rows):
        print("gpusim: note: some rows carry no error band (column band_pct blank)",
              file=sys.stderr)
