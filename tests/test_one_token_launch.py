"""An op that launches nothing in a step of one token (StackOp.skipped_at_one_token:
torch-fused's copy of q's or k's heads before its per-head norm, which PyTorch skips
when one token row leaves the view contiguous): it costs nothing and counts no launch
at such a shape, in the closed form, the event simulation, the per-op breakdown and
the host work of an eager step, whether the shape is predicted alone or beside
others."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from gpusim.io import calibrations, loader
from gpusim.kernels import build_kernels, kernel_launches, launches_per_shape
from gpusim.platform import Platform
from gpusim.specs import StackOp
from gpusim.step import breakdown, predict, simulate

MODEL = "qwen3-0.6b"     # 28 layers with q/k norms


@pytest.fixture(scope="module")
def platforms():
    gpu, stack = loader.load_gpu("h100-sxm"), loader.load_stack("torch-fused")
    cal = calibrations.load_calibration("auto", gpu, stack)
    return {launch: Platform(gpu, stack, cal, launch) for launch in ("graph", "eager")}


def test_the_copies_launch_only_past_one_token():
    """28 layers x (q's copy + k's copy) fewer launches at batch 1 than at batch 8; a
    prefill or verify of one sequence (several tokens) launches them."""
    m, stack = loader.load_model(MODEL), loader.load_stack("torch-fused")
    ks = build_kernels(m, stack, "decode", np.array([1, 8]), np.array([1024, 1024]), 1)
    per = launches_per_shape(ks, 2)
    assert per[1] == kernel_launches(ks) and per[0] == per[1] - 2 * m.num_hidden_layers
    ks = build_kernels(m, stack, "verify", np.array([1]), np.array([512]), np.array([4]))
    assert launches_per_shape(ks, 1)[0] == kernel_launches(ks)


@pytest.mark.parametrize("launch", ["graph", "eager"])
def test_a_shape_priced_alone_or_beside_others_is_the_same(platforms, launch):
    p = platforms[launch]
    m = loader.load_model(MODEL)
    b, c = np.array([1, 8, 1, 64]), np.array([1024, 1024, 4096, 512])
    together = predict(p, m, "decode", b, c, 1)
    for i in range(len(b)):
        alone = predict(p, m, "decode", int(b[i]), int(c[i]), 1)
        assert together.seconds[i] == pytest.approx(alone.seconds[0], rel=1e-12)
        assert together.shape_launches[i] == alone.shape_launches[0]


@pytest.mark.parametrize("launch", ["graph", "eager"])
@pytest.mark.parametrize("batch", [1, 8])
def test_the_event_simulation_agrees(platforms, launch, batch):
    """SimPy, launch by launch, issues no copy at one token and ends where the closed
    form does (an eager step's host issues 56 launches fewer)."""
    p = platforms[launch]
    m = loader.load_model(MODEL)
    closed = predict(p, m, "decode", batch, 1024, 1)
    tl = simulate(p, m, "decode", batch, 1024, 1, record=True)
    assert tl.end_s == pytest.approx(float(closed.seconds[0]), rel=1e-9)
    copies = [iv for iv in tl.intervals if iv.resource == "sm"
              and iv.name.endswith("_norm_copy")]
    assert len(copies) == (0 if batch == 1 else 2 * m.num_hidden_layers)


def test_eager_host_work_counts_the_launches_of_the_shape(platforms):
    p = platforms["eager"]
    m = loader.load_model(MODEL)
    pred = predict(p, m, "decode", np.array([1, 8]), np.array([1024, 1024]), 1)
    host_per_launch = p.calibration.host.host_launch_cost_s
    assert pred.host_s[1] - pred.host_s[0] == pytest.approx(
        2 * m.num_hidden_layers * host_per_launch)


def test_the_breakdown_shows_no_copy_at_one_token(platforms):
    p = platforms["graph"]
    m = loader.load_model(MODEL)
    pred = predict(p, m, "decode", np.array([1, 8]), np.array([1024, 1024]), 1)
    one = {r["op"]: r for r in breakdown(pred, p.gpu, 0)}
    eight = {r["op"]: r for r in breakdown(pred, p.gpu, 1)}
    assert one["q_norm_copy"]["launches"] == 0 and one["q_norm_copy"]["ms"] == 0.0
    assert eight["q_norm_copy"]["launches"] == m.num_hidden_layers
    assert eight["q_norm_copy"]["ms"] > 0.0
    assert one["q_norm"]["launches"] == m.num_hidden_layers


def test_only_elementwise_ops_skip():
    with pytest.raises(ValidationError, match="skipped_at_one_token"):
        StackOp(op="gemm", name="g", weight="q", skipped_at_one_token=True)


def test_a_speculative_loop_issues_the_launches_of_each_shape(platforms):
    """An eager draft or decode step of one token issues no copy (its host issue time,
    speculative.iteration.step_times), one of several tokens does."""
    from gpusim.speculative.iteration import step_times
    from gpusim.speculative.loop_steps import PlannedStep
    from gpusim.step import forward_kernels

    p = platforms["eager"]
    m = loader.load_model(MODEL)
    ks = forward_kernels(m, p, "decode", np.array([1, 8]), np.array([1024, 1024]), 1)
    t = step_times(PlannedStep("decode", "decode", m, ks), p)
    per_launch = p.calibration.host.host_launch_cost_s
    assert t.issue_s[1] - t.issue_s[0] == pytest.approx(2 * m.num_hidden_layers * per_launch)


def test_a_pipelined_step_counts_each_stage_once_a_microbatch(platforms):
    """Per-shape launches of a pipelined step: its stages' launches times its
    microbatches, as its ``launches`` (a Llama model: nothing skipped)."""
    from dataclasses import replace

    p = platforms["graph"]
    pp = p.with_layout(replace(p.layout, pp=2, micro_batches=2))
    pred = predict(pp, loader.load_model("llama-3.2-1b"), "decode", np.array([2, 8]),
                   np.array([1024, 1024]), 1)
    assert pred.pipeline.micro_batches == 2
    assert list(pred.shape_launches) == [pred.launches, pred.launches]
    assert pred.launches == 2 * launches_per_shape(pred.kernels, 2)[0]
