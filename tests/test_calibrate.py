"""calibrate: the fit recovers a model it generated, and its stages stay apart."""

from __future__ import annotations

import numpy as np
import pytest

from gpusim.calibration import fit as cm
from gpusim.calibration.measurements import StepData
from gpusim.calibration.space import family_space, graph_space
from gpusim.calibration.steady_clocks import SteadyClocks
from gpusim.io import calibrations, loader

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


TRUE = calibrations.load_calibration("auto", GPU, loader.load_stack())


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
    for v in graph_space(["flash_decode", "fa2", "cudnn_prefill"]):
        assert with_trees.get(v.name) == without.get(v.name), v.name
    moved = [v.name for v in family_space(["cudnn_masked"])
             if with_trees.get(v.name) != without.get(v.name)]
    assert moved   # the tree stage ran


def test_report_sections_for_data_never_fitted():
    # one GPU, two models fitted leave-one-out; a second lease and a third model are
    # predicted by the shipped calibration, which generated every number here
    from gpusim.calibration.validate import HeldOut, run_report

    data = _measured(_shapes(("decode",)), TRUE)
    extra = data.subset(data.model == "llama-3.2-1b")
    unseen = _measured(StepData(np.array(["qwen2.5-0.5b"] * 3), np.array(["decode"] * 3),
                                np.array([1.0, 8, 64]), np.array([1024.0] * 3),
                                np.ones(3), np.array(["graph"] * 3), np.ones(3), "u"), TRUE)
    held = [HeldOut("another machine", "Another lease", {"h100-sxm": extra}),
            HeldOut("models never fitted", "Unseen models", {"h100-sxm": unseen})]
    md, pts = run_report({"h100-sxm": data}, {"h100-sxm": GPU}, STACK, loader.load_model,
                         {"h100-sxm": TRUE}, "test", held_out=held)
    assert "### Another lease" in md and "### Unseen models" in md
    never = [p for p in pts if p["evaluation"] == "models never fitted"]
    assert [p["model"] for p in never] == ["qwen2.5-0.5b"] * 3
    assert max(abs(p["error"]) for p in never) < 1e-9
    assert "| h100-sxm | models never fitted | 3 | 0.0% |" in md


def _probe(cal) -> SteadyClocks:
    """Probed steps (batch-64 verify passes and a decode step) whose steady clocks
    ``cal``'s power rule set."""
    steps = StepData(np.array(["llama-3.1-8b", "llama-3.1-8b", "llama-3.2-1b", "llama-3.1-8b"]),
                     np.array(["verify", "verify", "verify", "decode"]),
                     np.array([64.0, 64, 64, 1]), np.array([4096.0, 512, 4096, 1024]),
                     np.array([2.0, 9, 2, 1]), np.full(4, "graph"), np.ones(4), "probe")
    cf = cm.make_clock_fit(SteadyClocks(steps, np.ones(4), np.zeros(4), np.ones(4)), STACK,
                           loader.load_model)
    assert cf is not None
    return SteadyClocks(steps, cm.predict_clocks(cf, GPU, cal), np.zeros(4), np.ones(4))


def test_probed_clocks_pin_the_power_cap():
    capped = TRUE.replace({"physics.power_cap_tensor_share": 0.3})
    probe = _probe(capped)
    assert probe.clock_fraction[0] < 1.0 and probe.clock_fraction[3] == 1.0
    data = _measured(_shapes(("decode", "verify")), capped)
    res = cm.fit(data, GPU, STACK, loader.load_model, clocks=probe)
    assert res.calibration.physics.power_cap_tensor_share == pytest.approx(0.3, rel=0.05)
    # leave-one-model-out drops a held-out model's probed shapes
    kept = cm.make_clock_fit(probe, STACK, loader.load_model, {"llama-3.2-1b"})
    assert kept is not None and kept.n == 1
    assert cm.make_clock_fit(probe, STACK, loader.load_model, {"qwen2.5-7b"}) is None
