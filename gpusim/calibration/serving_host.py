"""A serving engine's measured steps priced, and its host work fitted on them
(``gpusim serve --replay``): the step-time model's forward of a step's composition,
the kind of step (CUDA-graph decode, eager decode, mixed, mixed replaying piecewise
graphs), and the host work per step, per sequence, per prefill chunk and per prefill
token (non-negative least squares on each step's time outside its forward) and per
kernel launch of an eager step (the value that minimises the squared log error of the
stack's eager formula, max(GPU + h, launches x h + last kernel), on the forward times
of the steps that launch kernels one by one: eager steps, and piecewise steps, whose
attention, cache and last-position ops launch eagerly between and after the graphs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy.optimize import minimize_scalar, nnls

from gpusim.calibration.serving_measured import MeasuredStep, ServingRun
from gpusim.serving.simulate import Engine
from gpusim.serving.step_time import StepTimeModel


def step_seconds(model: StepTimeModel, composition: tuple[int, int, tuple],
                 longest: int = 0) -> float:
    """The model's time for a step of (decoding sequences, their cached tokens,
    chunks as (new, cached)); ``longest``: the longest decoding sequence's cached
    tokens (read by a stack that pads decode keys)."""
    decode, ctx, chunks = composition
    if chunks:
        return model.step(decode, ctx, list(chunks), longest)[0]
    return model.decode_step(decode, ctx, longest)[0]


PIECEWISE = "mixed, piecewise"


def step_kind(s: MeasuredStep) -> str:
    """What a measured step ran: ``decode, graph`` (a full graph; ``padded``: its CPU
    stand-in), ``decode, eager``, ``mixed`` (eager) or ``mixed, piecewise``."""
    if s.chunks:
        return PIECEWISE if s.launch == "piecewise" else "mixed"
    return "decode, graph" if s.launch in ("graph", "padded") else "decode, eager"


def step_parts(s: MeasuredStep) -> str:
    """The parts a mixed step holds, which set the kernels it launches (its decoding
    rows, fresh prompt chunks, chunks after cached tokens): e.g. ``decoding rows + after
    cache``; empty for a decode-only step."""
    if not s.chunks:
        return ""
    parts = ["decoding rows"] if s.decode else []
    if any(cached == 0 for _, cached, _ in s.chunks):
        parts.append("fresh")
    if any(cached > 0 for _, cached, _ in s.chunks):
        parts.append("after cache")
    return " + ".join(parts)


def without_host(model: StepTimeModel) -> StepTimeModel:
    """``model`` without the engine's host work: the forward alone."""
    return dataclasses.replace(model, host_step_s=0.0, host_seq_s=0.0, host_chunk_s=0.0,
                               host_prefill_token_s=0.0)


class HostFit(NamedTuple):
    """A serving engine's host work (seconds): per step, per sequence in it, per
    prefill chunk, per prefill token, and per kernel launch of an eager step (None: the
    calibration's)."""

    step_s: float
    seq_s: float
    chunk_s: float
    prefill_token_s: float
    launch_s: float | None = None

    def seconds(self, s: MeasuredStep) -> float:
        """The host work of measured step ``s``."""
        chunks, prefill = _prefill(s)
        return (self.step_s + self.seq_s * s.seqs + self.chunk_s * chunks
                + self.prefill_token_s * prefill)

    def fields(self) -> dict[str, float]:
        """As calibration fields (``Calibration.replace``)."""
        out = {"host.serving_step_host_s": self.step_s,
               "host.serving_seq_host_s": self.seq_s,
               "host.serving_chunk_host_s": self.chunk_s,
               "host.serving_prefill_token_host_s": self.prefill_token_s}
        if self.launch_s is not None:
            out["host.host_launch_cost_s"] = self.launch_s
        return out


def _prefill(s: MeasuredStep) -> tuple[int, int]:
    """(prefill chunks, prefill tokens) of a measured step."""
    return len(s.chunks), sum(n for _, _, n in s.chunks)


def fit_host(steps: Sequence[MeasuredStep]) -> HostFit:
    """Host work per step, per sequence, per prefill chunk and per prefill token
    (seconds, >= 0) by non-negative least squares on the steps' measured host time
    (``MeasuredStep.host_s``); no launch cost. A mixed step's host work (its chunks'
    metadata, positions, slots and token ids) is what the last two stand for: decode
    steps alone leave them 0."""
    if not steps:
        return HostFit(0.0, 0.0, 0.0, 0.0)
    rows = []
    for s in steps:
        chunks, prefill = _prefill(s)
        rows.append((1.0, s.seqs, chunks, prefill))
    a = np.array(rows, dtype=float)
    b = np.array([s.host_s for s in steps])
    # each column scaled to O(1) so the solver weighs them alike (tokens run to 1e4)
    scale = 1.0 / np.maximum(a.max(axis=0), 1.0)
    x, _ = nnls(a * scale, b)   # Lawson-Hanson: exact, no solver tolerance in the answer
    x = x * scale
    return HostFit(float(x[0]), float(x[1]), float(x[2]), float(x[3]))


LAUNCH_BOUNDS_S = (0.0, 200e-6)   # a fitted eager host cost per launch stays in here


def eager_terms(run: ServingRun, engine: Engine) -> np.ndarray:
    """[n, 4] per step of ``run`` that launches kernels one by one (every step but a
    full-graph decode): (GPU seconds the model gives it, its launches, its last
    kernel's seconds, the measured forward) such that the model's forward at a host
    cost ``h`` per launch is max(GPU + h, launches x h + last): the eager formula
    (``StepTimeModel._eager``) read back at three host costs. A piecewise step
    (``StepTimeModel._piecewise``) has that shape too: its launches are those outside
    the graphs, its "last" the graph replays plus the last kernel."""
    fm = without_host(engine.step_model)
    gpu_model = dataclasses.replace(fm, host_launch_s=0.0, graph_launch_s=0.0)
    rows = []
    for s in run.steps:
        if step_kind(s) == "decode, graph":
            continue
        f0 = step_seconds(gpu_model, s.composition, s.longest)   # its GPU end alone
        # at a host cost of twice that span per launch, a step of two or more launches
        # is host-bound at both probes: the formula's host end is read exactly
        h1 = max(1e-3, 2.0 * f0)
        h2 = 2.0 * h1
        f1, f2 = (step_seconds(dataclasses.replace(fm, host_launch_s=h), s.composition,
                               s.longest) for h in (h1, h2))
        launches = (f2 - f1) / (h2 - h1)
        rows.append((f0, launches, f1 - launches * h1, s.gpu_s))
    return np.array(rows, dtype=float).reshape(-1, 4)


def eager_forward_s(terms: np.ndarray, launch_s: float) -> np.ndarray:
    """The model's forward of each ``eager_terms`` row at ``launch_s`` per launch."""
    return np.maximum(terms[:, 0] + launch_s, terms[:, 1] * launch_s + terms[:, 2])


def fit_launch(terms: np.ndarray) -> float | None:
    """The host cost per launch (seconds, within LAUNCH_BOUNDS_S) that minimises the
    squared log error of ``eager_forward_s`` on ``terms``' measured forwards; None
    without eager steps."""
    terms = terms[terms[:, 3] > 0]
    if not len(terms):
        return None
    meas = np.log(terms[:, 3])

    def loss(h: float) -> float:
        return float(np.sum((np.log(eager_forward_s(terms, h)) - meas) ** 2))

    res = minimize_scalar(loss, bounds=LAUNCH_BOUNDS_S, method="bounded",
                          options={"xatol": 1e-12})
    # the cost per launch each step implies were it host-bound: their median is the
    # exact answer when the steps follow the formula (a run of gpusim itself), which a
    # bounded search reaches only to its tolerance
    lo, hi = LAUNCH_BOUNDS_S
    implied = np.clip(np.median((terms[:, 3] - terms[:, 2]) / terms[:, 1]), lo, hi)
    return float(min((float(res.x), float(implied)), key=loss))
