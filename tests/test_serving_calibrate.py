"""The serving harness's host work shipped in a GPU's calibration
(calibration.serving_calibrate): which runs it is fitted on, that the shipped entry is
what a fit on them gives, and that `serve --stack harness-serve` prices it."""

from __future__ import annotations

import pytest

from gpusim.calibration import serving_calibrate as sc
from gpusim.calibration.serving_replay import fit_runs
from gpusim.io import calibrations, loader

SERVING = loader.ROOT / "validation" / "data" / "serving"


def test_the_gpus_runs_in_the_default_graph_mode_are_fitted() -> None:
    runs = sc.serving_runs(SERVING, "h100-sxm")
    assert len(runs) == 16
    assert {r.gpu for r in runs} == {"h100-sxm"}
    assert {r.cudagraph_mode for r in runs} == {sc.DEFAULT_MODE}
    # the piecewise runs of the same GPU pay other host costs: not mixed in
    assert all(r.path.parent.parent.name == "h100-sxm" for r in runs)
    assert sc.serving_runs(SERVING, "b200") == []
    assert sc.serving_runs(SERVING / "no-such-folder", "h100-sxm") == []
    with pytest.raises(ValueError):
        sc.serving_stack_params([], loader.load_gpu("h100-sxm"), None)  # type: ignore[arg-type]


def test_the_shipped_entry_is_the_fit_on_those_runs() -> None:
    gpu = loader.load_gpu("h200")
    stack = loader.load_stack(sc.SERVING_STACK)
    cal = calibrations.load_calibration("auto", gpu, stack)
    runs = sc.serving_runs(SERVING, gpu.name)
    # the same fit the replay makes, on all of the runs instead of all but one
    from gpusim.platform import Platform

    fit = fit_runs(runs, Platform(gpu, stack, cal),
                   lambda run: loader.load_model(run.config_path))
    for path, value in fit.fields().items():
        assert float(cal.get(path)) == pytest.approx(value, rel=1e-9), path
    # the piecewise runs' own fit, apart
    pw = fit_runs(sc.serving_runs(SERVING, gpu.name, sc.PIECEWISE_MODE),
                  Platform(gpu, stack, cal.model_copy(update={"host_piecewise": None})),
                  lambda run: loader.load_model(run.config_path))
    assert cal.host_piecewise is not None
    for path, value in pw.fields().items():
        got = getattr(cal.host_piecewise, path.removeprefix("host."))
        assert got == pytest.approx(value, rel=1e-9), path
    assert cal.host_from is None  # its own entry, no longer torch-fused's host costs
    assert cal.host.serving_step_host_s > 50e-6 and cal.host.serving_seq_host_s > 0


def test_serving_with_the_harness_stack_pays_its_host_work() -> None:
    gpu = loader.load_gpu("h100-sxm")
    stack = loader.load_stack(sc.SERVING_STACK)
    shipped = calibrations.load_calibration("auto", gpu, stack)
    fused = calibrations.load_calibration("auto", gpu, loader.load_stack("torch-fused"))
    # the kernels' stack has no engine: nothing per step; the engine's stack does
    assert fused.host.serving_step_host_s == 0.0
    assert shipped.host.serving_step_host_s > 0.0
    assert shipped.host.host_graph_launch_cost_s == fused.host.host_graph_launch_cost_s


def test_a_piecewise_engine_pays_the_piecewise_runs_host_work() -> None:
    from gpusim.platform import Platform
    from gpusim.serving.step_time import build_step_time_model

    gpu = loader.load_gpu("h100-sxm")
    stack = loader.load_stack(sc.SERVING_STACK)
    cal = calibrations.load_calibration("auto", gpu, stack)
    pw = cal.host_piecewise
    assert pw is not None
    # fitted on the piecewise runs alone: more per launch outside the graphs, less per
    # step than the default mode's (SERVING_REPORT_piecewise.md)
    assert pw.host_launch_cost_s > cal.host.host_launch_cost_s
    assert pw.serving_step_host_s < cal.host.serving_step_host_s
    model = loader.load_model("llama-3.2-1b")
    sizes = (1, 2, 4, 8, 16, 32, 64, 128, 256)

    def step_model(c, mode):
        return build_step_time_model(Platform(gpu, stack, c), model, 512, 16, 4096,
                                     sizes, mode)

    piece = step_model(cal, sc.PIECEWISE_MODE)
    full = step_model(cal, sc.DEFAULT_MODE)
    assert piece.host_step_s == pw.serving_step_host_s
    assert piece.host_launch_s == pw.host_launch_cost_s
    assert full.host_step_s == cal.host.serving_step_host_s
    assert full.host_launch_s == cal.host.host_launch_cost_s
    # without piecewise costs, both modes take the default ones
    plain = step_model(cal.model_copy(update={"host_piecewise": None}), sc.PIECEWISE_MODE)
    assert plain.host_step_s == cal.host.serving_step_host_s
    runs = sc.serving_runs(SERVING, "h100-sxm", sc.PIECEWISE_MODE)
    assert runs and {r.cudagraph_mode for r in runs} == {sc.PIECEWISE_MODE}
