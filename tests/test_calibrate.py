"""calibrate: the fit recovers a model it generated, and its stages stay apart."""

from __future__ import annotations

import numpy as np
import pytest

from gpusim import calibrate as cm
from gpusim import loader
from gpusim.measurements import StepData

GPU = loader.load_gpu("h100-sxm")
STACK = loader.load_stack()
MODELS = ("llama-3.2-1b", "llama-3.1-8b")


def _shapes(modes: tuple[str, ...]) -> StepData:
    rows = []
    for m in MODELS:
        for mode in modes:
            for b in (1, 4, 16, 64):
                for c in (512, 4096):
                    q = {"decode": 1, "verify": 4, "tree": 24}[mode]
                    rows.append((m, mode, b, c, q))
    model, mode, b, c, q = zip(*rows, strict=True)
    n = len(rows)
    return StepData(np.array(model), np.array(mode), np.array(b, float), np.array(c, float),
                    np.array(q, float), np.full(n, "graph"), np.ones(n), "synthetic")


def _measured(data: StepData, cal) -> StepData:
    groups = cm.make_groups(data, STACK, loader.load_model)
    t = cm.predict_groups(groups, len(data), GPU, cal)
    return StepData(data.model, data.mode, data.batch, data.ctx, data.q, data.launch, t,
                    data.source)


TRUE = loader.load_calibration("auto", GPU)


@pytest.fixture(scope="module")
def fits():
    with_trees = _measured(_shapes(("decode", "verify", "tree")), TRUE)
    without = with_trees.subset(with_trees.mode != "tree")
    return (cm.fit(with_trees, GPU, STACK, loader.load_model),
            cm.fit(without, GPU, STACK, loader.load_model))


def test_the_fit_reproduces_steps_its_own_model_generated(fits):
    res, _ = fits
    assert res.rows == 48 and res.mape < 0.01


def test_tree_rows_fit_only_the_tree_kernel(fits):
    with_trees, without = (r.calibration for r in fits)
    for name in cm.FIT_SPACE:
        assert getattr(with_trees, name) == getattr(without, name), name
    moved = [n for n in cm.TREE_SPACE if getattr(with_trees, n) != getattr(without, n)]
    assert moved   # the tree stage ran
