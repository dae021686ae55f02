"""Predicted against measured: error tables, leave-one-model-out, cross-GPU transfer.

Every figure here is out-of-sample unless labelled "in-sample": leave-one-model-out
(LOMO) fits on all models but one and predicts that one; cross-GPU fits on one GPU's
data and predicts another GPU from its datasheet plus the transferred calibration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from gpusim.calibrate import fit, make_groups, predict_groups
from gpusim.measurements import StepData
from gpusim.specs import Calibration, GpuSpec, ModelSpec, StackSpec

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
            for mode in ("decode", "verify", "prefill"):
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
                        resolve: Resolver) -> Evaluation:
    """Each model's rows predicted by a calibration fitted without that model."""
    pred = np.full(len(data), np.nan)
    cals = {}
    for model in sorted(set(data.model)):
        held = data.model == model
        res = fit(data.subset(~held), gpu, stack, resolve, note=f"LOMO without {model}")
        groups = make_groups(data.subset(held), stack, resolve)
        pred[held] = predict_groups(groups, int(held.sum()), gpu, res.calibration)
        cals[model] = res.calibration
    return Evaluation("leave-one-model-out", gpu.name, data, pred, cals)


def cross_gpu(train: StepData, train_gpu: GpuSpec, test: StepData, test_gpu: GpuSpec,
              stack: StackSpec, resolve: Resolver) -> Evaluation:
    """Fit on ``train`` (one GPU), predict ``test`` on another GPU's datasheet."""
    res = fit(train, train_gpu, stack, resolve, note=f"fitted on {train_gpu.name}")
    groups = make_groups(test, stack, resolve)
    pred = predict_groups(groups, len(test), test_gpu, res.calibration)
    return Evaluation(f"fitted on {train_gpu.name}", test_gpu.name, test, pred,
                      {"all": res.calibration})
