"""The GPU physics fitted across stacks (calibration.joint): which stacks' steps join
the reference's, how a held-out model or stack is kept out, and that the joined steps
move the fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gpusim.calibration import fit as cal_fit
from gpusim.calibration import measurements
from gpusim.calibration.joint import (
    described,
    joins_physics,
    joint_steps,
    without_model,
    without_stack,
)
from gpusim.io import loader

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def joint():
    return joint_steps(ROOT / "validation/data/h100-sxm", "torch-hf", loader.load_stack)


def test_stacks_without_parameters_of_their_own_join_the_physics(joint):
    assert [s.name for _, s in joint] == ["torch-compile", "torch-fused"]
    for data, _ in joint:
        assert set(data.launch) == {"graph"} and "tree" not in set(data.mode)
    for name in ("torch-fp8", "torch-int4", "hf-transformers"):
        stack = loader.load_stack(name)
        assert stack.calibrate and not joins_physics(stack, "torch-hf")
    assert not joins_physics(loader.load_stack("torch-hf"), "torch-hf")
    assert described(joint).startswith(" + graph steps of torch-compile (")
    assert described([]) == ""


def test_a_held_out_model_and_a_held_out_stack_are_left_out(joint):
    kept = without_model(joint, "llama-3.2-1b")
    assert all("llama-3.2-1b" not in set(d.model) for d, _ in kept)
    assert sum(len(d) for d, _ in kept) < sum(len(d) for d, _ in joint)
    assert [s.name for _, s in without_stack(joint, "torch-fused")] == ["torch-compile"]
    # a stack all of whose steps are of the held-out model drops out
    only = [(d.subset(d.model == "llama-3.2-1b"), s) for d, s in joint]
    assert without_model(only, "llama-3.2-1b") == []


def test_the_joined_steps_move_the_graph_fit(joint):
    ref = measurements.read_step_dir(ROOT / "validation/data/h100-sxm/steps.csv")
    # a small fit: two models' decode graph steps, so it runs in seconds
    small = ref.subset(np.isin(ref.model, ["llama-3.2-1b", "llama-3.1-8b"])
                       & (ref.mode == "decode") & (ref.launch == "graph"))
    gpu, stack = loader.load_gpu("h100-sxm"), loader.load_stack("torch-hf")
    alone = cal_fit.fit(small, gpu, stack, loader.load_model).calibration
    fused = [(d.subset(d.mode == "decode"), s) for d, s in joint if s.name == "torch-fused"]
    both = cal_fit.fit(small, gpu, stack, loader.load_model, also=fused).calibration
    assert alone.physics != both.physics
    # and the joint fit prices the joined stack's steps better than the reference's alone
    data, fused_stack = fused[0]
    groups = cal_fit.make_groups(data, fused_stack, loader.load_model)

    def mape(cal):
        plain = cal.replace({"stack": fused_stack.name, "host_from": "torch-hf"})
        pred = cal_fit.predict_groups(groups, len(data), gpu, plain)
        return float(np.mean(np.abs(pred / data.measured_s - 1)))

    assert mape(both) < mape(alone)
