"""Twin streaming ops: an op the same as an earlier one but for its name (and the
tensor it streams, where that tensor has the same width) is built once and priced once,
and the step's numbers are what pricing each op on its own gives."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import gpusim.cost.steps as steps
from gpusim.cost import distinct_costs, kernel_cost
from gpusim.io import calibrations, loader
from gpusim.kernels import build_kernels
from gpusim.kernels.quant import for_stack
from gpusim.platform import Platform
from gpusim.step import predict
from gpusim.step.predict import predict_kernels

B = np.array([1, 3, 40])
C = np.array([0, 500, 4000])


def _kernels(stack_name: str, model_name: str = "llama-3.1-8b", mode: str = "decode"):
    stack = loader.load_stack(stack_name)
    model = for_stack(loader.load_model(model_name), stack)
    return build_kernels(model, stack, mode, B, C, np.ones(3)), stack


def test_the_norms_of_torch_fused_are_twins_with_their_own_names_and_places():
    ks, _ = _kernels("torch-fused")
    by = {k.name: k for k in ks}
    first, post, final = by["input_norm"], by["post_norm"], by["final_norm"]
    assert post.act_bytes is first.act_bytes and final.act_bytes is first.act_bytes
    assert (post.section, post.repeat) == ("layer", 32)
    assert (final.section, final.repeat) == ("epilogue", 1)
    assert post.cost_key() == first.cost_key() == final.cost_key()
    # the residual adds are twins of each other, not of the norms (other bytes)
    assert by["residual_mlp"].cost_key() == by["residual_attn"].cost_key()
    assert by["residual_mlp"].cost_key() != first.cost_key()


def test_ops_over_tensors_of_one_width_are_twins_and_of_other_widths_are_not():
    # fp8's activation quantisation: before qkv (hidden, 4096 wide) and before o
    # (attn_out, q_dim = 4096 on Llama 3.1 8B) are the same kernels; before down
    # (intermediate, 14336) are not
    ks, _ = _kernels("torch-fp8")
    by = {k.name: k for k in ks}
    assert by["o_act_quant_div"].cost_key() == by["qkv_act_quant_div"].cost_key()
    assert by["down_act_quant_div"].cost_key() != by["qkv_act_quant_div"].cost_key()
    np.testing.assert_array_equal(by["down_act_quant_div"].act_bytes,
                                  by["qkv_act_quant_div"].act_bytes * 14336 / 4096)


def test_equal_but_separately_built_kernels_are_not_taken_for_twins():
    ks, _ = _kernels("torch-fused")
    k = ks[2]
    copy = dataclasses.replace(k, act_bytes=k.act_bytes.copy())
    assert copy.cost_key() != k.cost_key()


def test_distinct_costs_prices_each_twin_group_once_and_gives_each_kernel_its_cost(
        monkeypatch):
    ks, stack = _kernels("torch-fp8")
    gpu = loader.load_gpu("h100-sxm")
    cal = calibrations.load_calibration("auto", gpu, stack)
    calls = []

    def counting(k, g, c, clock=1.0):
        calls.append(k.name)
        return kernel_cost(k, g, c, clock)

    monkeypatch.setattr(steps, "kernel_cost", counting)
    costs = distinct_costs(ks, gpu, cal)
    assert len(calls) == len({k.cost_key() for k in ks}) < len(ks)
    for k, c in zip(ks, costs, strict=True):
        alone = kernel_cost(k, gpu, cal)
        for f in dataclasses.fields(c):
            np.testing.assert_array_equal(getattr(c, f.name), getattr(alone, f.name))


@pytest.mark.parametrize("stack_name", ["torch-fused", "torch-fp8", "torch-hf"])
@pytest.mark.parametrize("mode,q", [("decode", 1), ("verify", 6), ("prefill", 300)])
def test_a_step_with_twins_costs_what_pricing_every_op_alone_costs(stack_name, mode, q):
    stack = loader.load_stack(stack_name)
    gpu = loader.load_gpu("h100-sxm")
    platform = Platform(gpu, stack, calibrations.load_calibration("auto", gpu, stack),
                        "graph")
    model = for_stack(loader.load_model("llama-3.1-8b"), stack)
    ctx = C * 0 if mode == "prefill" else C
    pred = predict(platform, model, mode, B, ctx, np.full(3, q))
    # the same kernels, each priced on its own (what the step cost before twins)
    alone = predict_kernels(pred.kernels, model, platform, full_clock=[
        kernel_cost(k, gpu, platform.calibration) for k in pred.kernels])
    np.testing.assert_array_equal(pred.seconds, alone.seconds)
    for name, c in alone.by_op.items():
        np.testing.assert_array_equal(pred.by_op[name].seconds, c.seconds)
