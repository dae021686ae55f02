"""Other software stacks against their own measured steps: how well the GPU physics,
fitted without them, transfers to them, and how well each stack's own few parameters
(its file's ``calibrate``) predict models they were not fitted on. The physics is
fitted on the reference stack's steps with those of the stacks without parameters of
their own (``calibration.joint``); such a stack is judged with the physics fitted
without its steps.

* transfer: the physics with the reference stack's host costs and no parameter of the
  stack's own: the stack file alone, nothing fitted on its steps;
* leave-one-model-out: the stack's own parameters fitted (``fit.fit_stack``) on its
  other models' steps, the held-out model predicted;
* cross-stack (the target): the physics fitted without the stack's data and nothing of
  the predicted model's steps: leave-one-model-out for a stack with parameters of its
  own, the transfer for one without.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gpusim.calibration.die import hold
from gpusim.calibration.fit import fit_stack, make_groups, predict_groups
from gpusim.calibration.measurements import StepData
from gpusim.calibration.micro import MicroGroup
from gpusim.calibration.validate import Errors
from gpusim.cost import Calibration
from gpusim.io.profile_trace import read_trace
from gpusim.report import markdown_table
from gpusim.specs import GpuSpec, ModelSpec, StackSpec
from gpusim.stackgen.build import import_stack

Resolver = Callable[[str], ModelSpec]


@dataclass(frozen=True)
class StackEvaluation:
    """One stack's measured steps and the two predictions of them."""

    stack: StackSpec
    data: StepData
    transfer_s: np.ndarray
    lomo_s: np.ndarray          # NaN where a model could not be held out (one model)
    # each held-out model's calibration (fitted without it), by model name
    lomo_calibrations: dict[str, Calibration] = field(default_factory=dict)

    def errors(self, which: str, mask: np.ndarray) -> Errors:
        """MAPE and bias of ``which`` ("transfer", "lomo" or "cross") over ``mask``."""
        pred = {"transfer": self.transfer_s, "lomo": self.lomo_s,
                "cross": self.cross_stack_s}[which]
        m = mask & np.isfinite(pred)
        return Errors.of(pred[m], self.data.measured_s[m])

    @property
    def cross_stack_s(self) -> np.ndarray:
        """The stack predicted with the GPU physics fitted without its data: its own
        parameters (if it has any) fitted on its other models, so nothing of a held-out
        model's steps enters (the leave-one-model-out prediction); a stack without
        parameters of its own needs none of its steps (the transfer prediction)."""
        return self.lomo_s if self.stack.calibrate else self.transfer_s


def evaluate_stack(stack: StackSpec, data: StepData, gpu: GpuSpec, physics: Calibration,
                   resolve: Resolver, micro: Sequence[MicroGroup] = (),
                   fold_physics: Callable[[str], Calibration] | None = None,
                   held: Callable[[str], dict[str, float]] | None = None
                   ) -> StackEvaluation:
    """Transfer and leave-one-model-out predictions of ``stack``'s steps on ``gpu``
    (``physics``: the calibration fitted on the reference stack; ``micro``: kernel
    microbenchmarks each fit also takes, those of a held-out model's shapes left out;
    ``fold_physics``: the physics a held-out model's fit starts from, by its name,
    where it must not see that model's kernels either; default ``physics``; ``held``:
    by the held-out model's name, ``calibrate`` parameters its fit holds at the given
    values instead of fitting them: a same-die GPU's, fitted without that model,
    ``calibration.die``)."""
    plain = physics.replace({"stack": stack.name, "host_from": physics.stack})
    groups = make_groups(data, stack, resolve)
    transfer = predict_groups(groups, len(data), gpu, plain)
    lomo = np.full(len(data), np.nan)
    cals: dict[str, Calibration] = {}
    models = sorted(set(map(str, data.model)))
    if len(models) > 1:
        for model in models:
            out = data.model == model
            kept = [g for g in micro if model not in g.models]
            start = physics if fold_physics is None else fold_physics(model)
            fold_stack = stack
            if held is not None:
                fold_stack, start = hold(stack, start, held(model))
            own = fit_stack(data.subset(~out), gpu, fold_stack, start, resolve,
                            micro=kept).calibration
            lomo[out] = predict_groups(make_groups(data.subset(out), stack, resolve),
                                       int(out.sum()), gpu, own)
            cals[model] = own
    return StackEvaluation(stack, data, transfer, lomo, cals)


def _rows(ev: StackEvaluation) -> list[dict[str, object]]:
    d = ev.data
    rows = []
    for launch in ("graph", "eager"):
        for mode in ("decode", "verify", "prefill"):
            m = (d.launch == launch) & (d.mode == mode)
            if not m.any():
                continue
            t, lo = ev.errors("transfer", m), ev.errors("lomo", m)
            rows.append({"launch": launch, "mode": mode, "n": t.n, "transfer_mape": t.mape,
                         "transfer_bias": t.bias, "lomo_n": lo.n, "lomo_mape": lo.mape,
                         "lomo_max": lo.max})
    return rows


def acceptance(ev: StackEvaluation) -> list[dict[str, object]]:
    """The stacks issue's targets for one stack: leave-one-model-out decode <= 3%,
    verify and prefill <= 5%; cross-stack (the physics fitted without the stack,
    ``StackEvaluation.cross_stack_s``) <= 5%."""
    d = ev.data
    graph = d.launch == "graph"
    out = []
    for label, which, mask, limit in (
            ("LOMO decode MAPE (graph)", "lomo", graph & (d.mode == "decode"), 0.03),
            ("LOMO verify MAPE (graph)", "lomo", graph & (d.mode == "verify"), 0.05),
            ("LOMO prefill MAPE (graph)", "lomo", graph & (d.mode == "prefill"), 0.05),
            ("cross-stack MAPE (graph)", "cross", graph, 0.05)):
        e = ev.errors(which, mask)
        if e.n:
            out.append({"stack": ev.stack.name, "target": label, "n": e.n, "value": e.mape,
                        "limit": limit, "met": "yes" if e.mape <= limit else "NO"})
    return out


def section(gpu: str, evaluations: Sequence[StackEvaluation]) -> str:
    """Markdown: every stack's errors by mode, and the acceptance rows."""
    if not evaluations:
        return ""
    parts = [f"## Software stacks on {gpu}", "",
             "Each stack's measured steps (`validation/data/<gpu>/stacks/<stack>/`) "
             "predicted from the GPU physics fitted without them: the physics is "
             "fitted on the reference stack's (torch-hf) steps with the CUDA-graph steps "
             "of the stacks that have no parameters of their own (torch-fused, "
             "torch-compile: `calibration.joint`), and each of those is predicted from "
             "the physics fitted without its steps. *transfer*: the stack file and the "
             "physics, nothing fitted on the stack's steps (eager rows with torch-hf's "
             "host cost per launch). *lomo*: "
             "the stack's own parameters (its file's `calibrate`, and its host cost per "
             "launch from its eager rows) fitted on its other models, each model "
             "predicted in turn (n/a with one model). *cross-stack* (the target): the "
             "physics fitted without the stack's data, and nothing of the predicted "
             "model's steps: a stack with parameters of its own (`calibrate`) is its "
             "lomo, one without is its transfer. The transfer column is the stricter "
             "test of a stack with its own parameters: every one at its ideal-kernel "
             "default, what a stack file gives before any of its steps is measured: "
             "the gap between the two columns is what the stack's fitted parameters "
             "are worth.", ""]
    acc = [r for ev in evaluations for r in acceptance(ev)]
    parts += ["Acceptance targets (out-of-sample):", "",
              markdown_table(acc, ["stack", "target", "n", "value", "limit", "met"],
                             ("value", "limit")), ""]
    for ev in evaluations:
        models = ", ".join(sorted(set(map(str, ev.data.model))))
        own = ", ".join(ev.stack.calibrate) or "none"
        parts += [f"### {ev.stack.name} ({len(ev.data)} steps; models: {models}; own "
                  f"parameters: {own})", "",
                  markdown_table(_rows(ev), ["launch", "mode", "n", "transfer_mape",
                                             "transfer_bias", "lomo_n", "lomo_mape",
                                             "lomo_max"],
                                 ("transfer_mape", "transfer_bias", "lomo_mape",
                                  "lomo_max")), ""]
    return "\n".join(parts)


def points(gpu: str, ev: StackEvaluation) -> list[dict[str, object]]:
    """Per-row records (for the points CSV)."""
    d = ev.data
    out = []
    for label, pred in (("stack transfer", ev.transfer_s), ("stack lomo", ev.lomo_s)):
        for i in range(len(d)):
            if np.isfinite(pred[i]):
                out.append({"gpu": gpu, "evaluation": f"{label}: {ev.stack.name}",
                            "model": str(d.model[i]), "mode": str(d.mode[i]),
                            "launch": str(d.launch[i]), "batch": int(d.batch[i]),
                            "ctx": int(d.ctx[i]), "q": int(d.q[i]),
                            "measured_ms": float(d.measured_s[i] * 1e3),
                            "predicted_ms": float(pred[i] * 1e3),
                            "error": float(pred[i] / d.measured_s[i] - 1)})
    return out



TRACE_NAME = re.compile(r"^(?P<stack>[a-z0-9_-]+)__(?P<model>[a-z0-9._-]+)__.*_n(?P<steps>\d+)"
                        r"\.json(\.gz)?$")


@dataclass(frozen=True)
class ImportAgreement:
    """A stack imported from its committed traces against its hand-checked file: both
    predict the stack's measured graph steps under one calibration."""

    stack: str
    traces: tuple[str, ...]
    n: int
    mean_abs: float
    max_abs: float
    bias: float


def traces_of(gpu_dir: Path) -> dict[str, list[Path]]:
    """The committed profiler traces under a GPU's data folder (``*/traces/``), by stack:
    files named ``<stack>__<model>__<shape>_n<steps>.json.gz`` as the harness writes."""
    out: dict[str, list[Path]] = {}
    for path in sorted(gpu_dir.glob("*/traces/*.json*")):
        m = TRACE_NAME.match(path.name)
        if m:
            out.setdefault(m["stack"], []).append(path)
    return out


def import_agreement(stack: StackSpec, traces: Sequence[Path], data: StepData,
                     gpu: GpuSpec, cal: Calibration, resolve: Resolver,
                     like: StackSpec) -> ImportAgreement:
    """``stack`` imported from ``traces`` (``stack import``'s path: the last step of
    each) and priced against the hand-checked file on ``data``'s graph steps, both with
    ``cal`` (the hand stack's calibration). Raises ConfigError for an unreadable trace
    and ValueError for one whose layers cannot be found."""
    names = [TRACE_NAME.match(p.name) for p in traces]
    model = resolve(names[0]["model"])   # type: ignore[index]
    steps = [read_trace(p, int(m["steps"]))[-1]   # type: ignore[index]
             for p, m in zip(traces, names, strict=True)]
    imported = import_stack(steps, model, f"{stack.name}-imported", like).stack
    graph = data.subset(data.launch == "graph")
    hand = predict_groups(make_groups(graph, stack, resolve), len(graph), gpu, cal)
    ours = predict_groups(make_groups(graph, imported, resolve), len(graph), gpu,
                          cal.replace({"stack": imported.name}))
    rel = ours / hand - 1
    return ImportAgreement(stack.name, tuple(p.name for p in traces), len(rel),
                           float(np.mean(np.abs(rel))), float(np.max(np.abs(rel))),
                           float(np.mean(rel)))


def import_section(agreements: Sequence[ImportAgreement]) -> str:
    """Markdown: each imported stack's predictions against its hand-checked file's."""
    if not agreements:
        return ""
    rows = [{"stack": a.stack, "traces": len(a.traces), "steps": a.n,
             "mean_abs_diff": a.mean_abs, "max_abs_diff": a.max_abs, "bias": a.bias,
             "within_3pct": "yes" if a.mean_abs <= 0.03 else "NO"} for a in agreements]
    return "\n".join([
        "### `gpusim stack import` against the hand-checked stack files", "",
        "Each stack imported from its committed profiler traces of llama-3.2-1b "
        "(`*/traces/<stack>__*.json.gz`; a decode step, and a verify step where "
        "traced) and the hand-checked file both predict the shapes of the stack's "
        "measured graph steps (all its models; the reference stack's shapes for a "
        "stack measured eager only) under the hand-checked stack's calibration; the "
        "difference is the imported prediction over the hand-checked one.", "",
        markdown_table(rows, ["stack", "traces", "steps", "mean_abs_diff", "max_abs_diff",
                              "bias", "within_3pct"],
                       ("mean_abs_diff", "max_abs_diff", "bias")), ""])
