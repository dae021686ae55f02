"""Stack parameters fitted once per die (calibration.die): which parameters, from which
GPU, and that a held-out model's fit holds its source's values fitted without it."""

from __future__ import annotations

import pytest

from gpusim.calibration import die
from gpusim.calibration.measurements import read_steps
from gpusim.calibration.stacks_report import evaluate_stack
from gpusim.io import calibrations, loader

DATA = loader.ROOT / "validation" / "data"
INT4 = "gemm.tinygemm.dequant_flops_per_element"


def test_only_a_familys_arithmetic_is_die_level() -> None:
    # tinygemm's dequantize work and scaled_mm's tensor efficiency are the SMs'; their
    # bandwidths, L2 overlap and fixed costs are each GPU's own
    assert die.die_fields(loader.load_stack("torch-int4")) == (INT4,)
    assert die.die_fields(loader.load_stack("torch-fp8")) == (
        "gemm.scaled_mm.tensor_efficiency_ratio",)
    assert die.die_fields(loader.load_stack("torch-fused")) == ()


def test_the_same_die_gpu_with_more_models_is_the_source() -> None:
    h100, h200 = loader.load_gpu("h100-sxm"), loader.load_gpu("h200")
    assert h100.die == h200.die == "gh100-132sm"
    int4 = loader.load_stack("torch-int4")
    src = die.die_source(h200, int4, {"llama-3.1-8b", "llama-3.2-1b"}, DATA)
    assert src is not None and src.gpu == "h100-sxm" and len(src.models) == 4
    shipped = calibrations.load_calibration(
        str(calibrations.CALIBRATIONS_DIR / "h100-sxm.yaml"), h100, int4)
    assert src.shipped() == {INT4: pytest.approx(float(shipped.get(INT4)))}
    # the GPU with the most models fits them itself; a GPU of no stated die too
    assert die.die_source(h100, int4, set(src.models), DATA) is None
    assert die.die_source(h200.model_copy(update={"die": None}), int4, set(), DATA) is None
    assert die.die_source(h200, int4, set(), DATA / "no-such-folder") is None


def test_hold_takes_the_parameters_out_of_the_fit() -> None:
    int4 = loader.load_stack("torch-int4")
    cal = calibrations.load_calibration("none", loader.load_gpu("h200"), int4)
    stack, held = die.hold(int4, cal, {INT4: 7.5})
    assert INT4 not in stack.calibrate and len(stack.calibrate) == len(int4.calibrate) - 1
    assert held.get(INT4) == 7.5


def test_a_held_out_models_fit_holds_the_source_fitted_without_it() -> None:
    h200, int4 = loader.load_gpu("h200"), loader.load_stack("torch-int4")
    data = read_steps(DATA / "h200" / "stacks" / "torch-int4" / "steps.csv", int4.name)
    # two of its models: the H100 measured more, so it is their source
    models = {"llama-3.1-8b", "llama-3.2-1b"}
    data = data.subset((data.model == "llama-3.1-8b") | (data.model == "llama-3.2-1b"))
    held = die.fold_values(h200, int4, models, DATA)
    assert held is not None
    physics = calibrations.load_calibration("auto", h200, loader.load_stack("torch-fused"))
    ev = evaluate_stack(int4, data, h200, physics, loader.load_model, held=held)
    for model in models:
        value = float(ev.lomo_calibrations[model].get(INT4))
        assert value == pytest.approx(held(model)[INT4])
    # the source's folds differ from each other: each is fitted without its model
    a, b = sorted(models)
    assert held(a)[INT4] != held(b)[INT4]
