"""Predicted against measured: error tables, leave-one-model-out, cross-GPU transfer.

Every figure here is out-of-sample unless labelled "in-sample": leave-one-model-out
(LOMO) fits on all models but one and predicts that one; cross-GPU fits on one GPU's
data and predicts another GPU from its datasheet plus the transferred calibration.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from gpusim.calibration.attention_points import AttentionPoint
from gpusim.calibration.die_physics import PhysicsDieSource
from gpusim.calibration.fit import fit, make_groups, predict_groups
from gpusim.calibration.gemm_picks import SweptPoint
from gpusim.calibration.held_out import HeldOut, lease_spread
from gpusim.calibration.joint import Joint, without_model, without_stack
from gpusim.calibration.measurements import StepData
from gpusim.calibration.micro import MicroGroup, without_models
from gpusim.calibration.profiles import ProfileData
from gpusim.calibration.steady_clocks import SteadyClocks
from gpusim.cost import Calibration
from gpusim.specs import GpuSpec, ModelSpec, StackSpec
from gpusim.specs.enums import Mode

BATCH_RANGES: tuple[tuple[str, int, int], ...] = (
    ("1", 1, 1), ("2-8", 2, 8), ("9-32", 9, 32), ("33-128", 33, 128), ("129+", 129, 10**9),
)


@dataclass(frozen=True)
class Errors:
    """Relative errors (predicted/measured - 1) of a set of rows."""

    n: int
    mape: float
    p90: float
    max: float
    bias: float

    @staticmethod
    def of(pred: np.ndarray, meas: np.ndarray) -> Errors:
        if len(pred) == 0:
            return Errors(0, float("nan"), float("nan"), float("nan"), float("nan"))
        e = pred / meas - 1.0
        a = np.abs(e)
        return Errors(len(e), float(a.mean()), float(np.percentile(a, 90)), float(a.max()),
                      float(e.mean()))


@dataclass
class Evaluation:
    """One way of predicting one GPU's data: per-row predictions and their errors."""

    label: str
    gpu: str
    data: StepData
    predicted_s: np.ndarray
    calibrations: dict[str, Calibration] = field(default_factory=dict)

    def errors(self, mask: np.ndarray | None = None) -> Errors:
        m = np.ones(len(self.data), bool) if mask is None else mask
        return Errors.of(self.predicted_s[m], self.data.measured_s[m])

    def by_mode(self) -> list[dict[str, object]]:
        rows = []
        for launch in ("graph", "eager"):
            for mode in (m.value for m in Mode):
                m = (self.data.mode == mode) & (self.data.launch == launch)
                if m.any():
                    rows.append({"launch": launch, "mode": mode, **self.errors(m).__dict__})
        return rows

    def by_batch(self, launch: str = "graph") -> list[dict[str, object]]:
        rows = []
        for name, lo, hi in BATCH_RANGES:
            m = (self.data.batch >= lo) & (self.data.batch <= hi) & (self.data.launch == launch)
            if m.any():
                rows.append({"batch": name, **self.errors(m).__dict__})
        return rows

    def by_model(self, launch: str = "graph") -> list[dict[str, object]]:
        rows = []
        for model in sorted(set(self.data.model)):
            m = (self.data.model == model) & (self.data.launch == launch)
            if m.any():
                rows.append({"model": model, **self.errors(m).__dict__})
        return rows


Resolver = Callable[[str], ModelSpec]


def in_sample(data: StepData, gpu: GpuSpec, stack: StackSpec, cal: Calibration,
              resolve: Resolver, label: str) -> Evaluation:
    """Predict every row with one given calibration."""
    groups = make_groups(data, stack, resolve)
    return Evaluation(label, gpu.name, data, predict_groups(groups, len(data), gpu, cal),
                      {"all": cal})


def leave_one_model_out(data: StepData, gpu: GpuSpec, stack: StackSpec,
                        resolve: Resolver, micro: Sequence[MicroGroup] = (),
                        profiles: ProfileData | None = None,
                        sweep: Sequence[SweptPoint] = (),
                        clocks: SteadyClocks | None = None,
                        attention: Sequence[AttentionPoint] = (),
                        also: Joint = (), die: PhysicsDieSource | None = None
                        ) -> Evaluation:
    """Each model's rows predicted by a calibration fitted without that model (its
    steps, the other stacks' steps that fit the physics (``also``), and the kernel
    microbenchmarks, profiles, slow GEMM picks, probed clocks and profiled attention
    kernels of its shapes, left out; ``die``: where the die-level attention fields come
    from, that GPU's fit without the model)."""
    pred = np.full(len(data), np.nan)
    cals = {}
    for model in sorted(set(data.model)):
        held = data.model == model
        res = fit(data.subset(~held), gpu, stack, resolve, note=f"LOMO without {model}",
                  micro=without_models(list(micro), {model}), profiles=profiles,
                  sweep=sweep, clocks=clocks, attention=attention,
                  also=without_model(also, model),
                  held=die.without_model(model) if die is not None else None)
        groups = make_groups(data.subset(held), stack, resolve)
        pred[held] = predict_groups(groups, int(held.sum()), gpu, res.calibration)
        cals[model] = res.calibration
    return Evaluation("leave-one-model-out", gpu.name, data, pred, cals)


def fit_without_stack(data: StepData, gpu: GpuSpec, stack: StackSpec, resolve: Resolver,
                      name: str, micro: Sequence[MicroGroup] = (),
                      profiles: ProfileData | None = None,
                      sweep: Sequence[SweptPoint] = (), clocks: SteadyClocks | None = None,
                      attention: Sequence[AttentionPoint] = (), also: Joint = (),
                      die: PhysicsDieSource | None = None) -> Calibration:
    """The GPU physics fitted without stack ``name``'s profiled attention kernels and
    steps (its cross-stack transfer: nothing of its own measurements; ``die``: where
    the die-level attention fields come from, that GPU's fit without them)."""
    return fit(data, gpu, stack, resolve, note="without " + name, micro=micro,
               profiles=profiles, sweep=sweep, clocks=clocks,
               attention=[p for p in attention if p.stack != name],
               also=without_stack(also, name),
               held=die.without_stack(name) if die is not None else None).calibration


def judging_physics(shipped: Calibration, data: StepData, gpu: GpuSpec, stack: StackSpec,
                    resolve: Resolver, micro: Sequence[MicroGroup] = (),
                    profiles: ProfileData | None = None,
                    sweep: Sequence[SweptPoint] = (), clocks: SteadyClocks | None = None,
                    attention: Sequence[AttentionPoint] = (), also: Joint = (),
                    die: PhysicsDieSource | None = None) -> Callable[[str], Calibration]:
    """By a stack's name, the GPU physics its steps are judged with: ``shipped``, or for
    a stack whose profiled attention kernels or steps went into it (here or, through
    the die-level fields, on ``die``'s GPU), the physics fitted without them
    (``fit_without_stack``)."""
    fitted_with = {p.stack for p in attention} | {s.name for _, s in also}
    if die is not None:
        fitted_with |= die.stacks()

    def physics(name: str) -> Calibration:
        if name not in fitted_with:
            return shipped
        return fit_without_stack(data, gpu, stack, resolve, name, micro, profiles, sweep,
                                 clocks, attention, also, die)

    return physics


def cross_gpu(train: StepData, train_gpu: GpuSpec, test: StepData, test_gpu: GpuSpec,
              stack: StackSpec, resolve: Resolver,
              micro: Sequence[MicroGroup] = (), profiles: ProfileData | None = None,
              sweep: Sequence[SweptPoint] = (), clocks: SteadyClocks | None = None,
              attention: Sequence[AttentionPoint] = (), also: Joint = ()) -> Evaluation:
    """Fit on ``train`` (one GPU, with its microbenchmarks, GEMM sweep, probed clocks
    and other stacks' steps, ``also``), predict ``test`` on another GPU's datasheet
    (without the train GPU's slow GEMM picks, as a transferred calibration is used)."""
    res = fit(train, train_gpu, stack, resolve, note=f"fitted on {train_gpu.name}",
              micro=micro, profiles=profiles, sweep=sweep, clocks=clocks,
              attention=attention, also=also)
    cal = res.calibration.transferred(test_gpu.name,
                                      train_gpu.architecture == test_gpu.architecture)
    groups = make_groups(test, stack, resolve)
    pred = predict_groups(groups, len(test), test_gpu, cal)
    return Evaluation(f"fitted on {train_gpu.name}", test_gpu.name, test, pred,
                      {"all": cal})


# ----------------------------------------------------------------------------------
# the whole report
# ----------------------------------------------------------------------------------
ERR_COLS = ["n", "mape", "p90", "max", "bias"]
PCT = ("mape", "p90", "max", "bias")


def points(ev: Evaluation) -> list[dict[str, object]]:
    """Per-row records (for CSV and figures)."""
    d = ev.data
    return [{"gpu": ev.gpu, "evaluation": ev.label, "model": str(d.model[i]),
             "mode": str(d.mode[i]), "launch": str(d.launch[i]), "batch": int(d.batch[i]),
             "ctx": int(d.ctx[i]), "q": int(d.q[i]),
             "measured_ms": float(d.measured_s[i] * 1e3),
             "predicted_ms": float(ev.predicted_s[i] * 1e3),
             "error": float(ev.predicted_s[i] / d.measured_s[i] - 1)}
            for i in range(len(d))]


def section(ev: Evaluation, title: str) -> str:
    """Markdown: errors by mode/launch, by batch range and by model."""
    from gpusim.report import markdown_table

    parts = [f"### {title}", "",
             markdown_table(ev.by_mode(), ["launch", "mode", *ERR_COLS], PCT), ""]
    if (ev.data.launch == "graph").any():
        parts += ["CUDA-graph rows by batch range:", "",
                  markdown_table(ev.by_batch("graph"), ["batch", *ERR_COLS], PCT), "",
                  "CUDA-graph rows by model:", "",
                  markdown_table(ev.by_model("graph"), ["model", *ERR_COLS], PCT), ""]
    return "\n".join(parts)


def acceptance(lomo: Evaluation, cross: Evaluation | None) -> list[dict[str, object]]:
    """The calibration issue's targets against this GPU's out-of-sample errors."""
    d = lomo.data
    rows = []

    def add(what: str, mask: np.ndarray, stat: str, target: float,
            ev: Evaluation = lomo) -> None:
        e = ev.errors(mask)
        value = getattr(e, stat)
        rows.append({"target": what, "value": value, "limit": target,
                     "met": "yes" if e.n and value <= target else "NO"})

    graph = d.launch == "graph"
    add("LOMO decode MAPE (graph)", graph & (d.mode == "decode"), "mape", 0.03)
    add("LOMO verify MAPE (graph)", graph & (d.mode == "verify"), "mape", 0.05)
    add("LOMO prefill MAPE (graph)", graph & (d.mode == "prefill"), "mape", 0.05)
    add("LOMO worst row (graph)", graph, "max", 0.15)
    add("LOMO eager decode MAPE", (d.launch == "eager") & (d.mode == "decode"), "mape", 0.10)
    if cross is not None:
        add(f"cross-GPU MAPE ({cross.label})", np.ones(len(cross.data), bool), "mape", 0.10,
            cross)
    return rows


def run_report(datasets: dict[str, StepData], gpus: dict[str, GpuSpec], stack: StackSpec,
               resolve: Resolver, shipped: dict[str, Calibration],
               command: str, micro: dict[str, list[MicroGroup]] | None = None,
               profiles: dict[str, ProfileData | None] | None = None,
               held_out: Sequence[HeldOut] = (),
               sweeps: dict[str, list[SweptPoint]] | None = None,
               clocks: dict[str, SteadyClocks | None] | None = None,
               multi_gpu: bool = True,
               attention: dict[str, list[AttentionPoint]] | None = None,
               joint: dict[str, list[tuple[StepData, StackSpec]]] | None = None,
               die: dict[str, PhysicsDieSource | None] | None = None
               ) -> tuple[str, list[dict[str, object]]]:
    """Markdown report and per-row points for every GPU's measurements.

    ``datasets``/``gpus``: keyed by GPU name; ``shipped``: calibrations to report
    in-sample (keyed by GPU name, may be empty); ``held_out``: data no calibration was
    fitted on (another lease, models or shapes outside the fit), each predicted by the
    shipped calibration in its own section; ``sweeps``: each GPU's swept GEMMs (their
    slow cuBLAS picks go into every fit); ``clocks``: each GPU's power probe (its
    steady clocks go into every fit); ``attention``: each GPU's profiled attention
    kernels under every stack (``calibration.attention_points``: into every fit);
    ``joint``: each GPU's other stacks' steps that fit its physics
    (``calibration.joint``: into every fit, a held-out model's left out); ``die``:
    each GPU's source of die-level attention fields (``calibration.die_physics``: its
    fit without the held-out model). The
    "Error bands" section
    (``calibration.bands``: coverage of the held-out errors by the bands) follows;
    ``multi_gpu``: append the multi-GPU section
    (``calibration.multi_gpu``: the all-reduce against published figures, Llama 3.1
    70B and 405B on 2-8 GPUs with the shipped calibrations).
    """
    from gpusim.calibration.bands import coverage_rows
    from gpusim.calibration.bands import section as bands_section
    from gpusim.calibration.multi_gpu import section as multi_gpu_section
    from gpusim.report import markdown_table

    md = ["# gpusim validation report", "",
          f"Generated by `{command}` from the committed measurements; every number below "
          "is reproduced by that command. Errors are predicted/measured - 1; MAPE is the "
          "mean of their absolute values, p90 and max of the absolute values, bias the "
          "mean signed error. A measured CUDA-graph step is the median of its timed "
          "replays; an eager step the 10th percentile of its 60 calls (host-bound, "
          "disturbed in phases on shared VMs: validation/README.md).", ""]
    pts: list[dict[str, object]] = []
    summary: list[dict[str, object]] = []
    band_rows: list[dict[str, object]] = []
    names = sorted(datasets)
    for name in names:
        data, gpu = datasets[name], gpus[name]
        micro = micro or {}
        profiles = profiles or {}
        sweeps = sweeps or {}
        clocks = clocks or {}
        attention = attention or {}
        joint = joint or {}
        lomo = leave_one_model_out(data, gpu, stack, resolve, micro.get(name, []),
                                   profiles.get(name), sweeps.get(name, []),
                                   clocks.get(name), attention.get(name, []),
                                   joint.get(name, []), (die or {}).get(name))
        cross = None
        others = [o for o in names if o != name]
        if others:
            src = others[0]
            cross = cross_gpu(datasets[src], gpus[src], data, gpu, stack, resolve,
                              micro.get(src, []), profiles.get(src), sweeps.get(src, []),
                              clocks.get(src), attention.get(src, []), joint.get(src, []))
        sheet = in_sample(data, gpu, stack, Calibration(gpu=gpu.name), resolve,
                          "datasheet only")
        md += [f"## {name} ({len(data)} measured steps, {len(set(data.model))} models)", ""]
        md += ["Acceptance targets (out-of-sample):", "",
               markdown_table(acceptance(lomo, cross), ["target", "value", "limit", "met"],
                              ("value", "limit")), ""]
        md.append(section(lomo, "Leave-one-model-out (fit on the other models)"))
        if cross is not None:
            md.append(section(cross, f"Cross-GPU: calibration {cross.label}, "
                                     f"{name} datasheet"))
        md.append(section(sheet, "Datasheet only (`--calibration none`)"))
        held_sets = []
        for h in held_out:
            if name in shipped and name in h.data:
                ev = in_sample(h.data[name], gpu, stack, shipped[name], resolve, h.label)
                md.append(section(ev, h.title))
                spread = lease_spread(h.against.get(name, data), h.data[name])
                if spread:
                    md.append(spread)
                summary.append({"gpu": name, "evaluation": ev.label, **ev.errors().__dict__})
                pts += points(ev)
                held_sets.append((h.label, h.data[name], ev.predicted_s))
        band_rows += coverage_rows(name, stack.name, data, lomo.predicted_s,
                                   shipped[name].trust if name in shipped else None,
                                   held_sets, resolve)
        if name in shipped:
            ins = in_sample(data, gpu, stack, shipped[name], resolve,
                            "shipped calibration (in-sample)")
            md.append(section(ins, "Shipped calibration, in-sample (for reference only)"))
            pts += points(ins)
        for ev in (lomo, cross, sheet):
            if ev is not None:
                pts += points(ev)
                summary.append({"gpu": name, "evaluation": ev.label, **ev.errors().__dict__})
    table = markdown_table(summary, ["gpu", "evaluation", *ERR_COLS], PCT)
    md = [*md[:4], "## Summary (all rows)", "", table, "", *md[4:]]
    md.append(bands_section(band_rows))
    if multi_gpu:
        md.append(multi_gpu_section(gpus, shipped, stack, resolve))
    return "\n".join(md) + "\n", pts
