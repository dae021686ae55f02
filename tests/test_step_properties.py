"""Physical properties of step.predict over shipped GPUs, models, modes, launch modes
and random calibrations drawn from physical ranges (hypothesis, bounded inputs).

Monotonicity is checked on contiguous runs of shapes (one vectorised call per run), so
a sawtooth at a tile or block boundary cannot hide between two random points. A
property that fails exposes a model flaw: the pinned counterexamples at the bottom
reproduce the ones found so far; the properties are not weakened to pass. One is
scoped: FlashAttention-2's split heuristic is itself not monotone (a verify may run
faster with one more key block, split more ways), so verify's monotonicity is checked
between shapes FA2 splits alike; ``test_fa2_split_change_may_be_faster`` pins one.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import PROPERTY_MODELS, SHIPPED_GPUS, calibrations
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpusim.cost import Calibration, kernel_cost
from gpusim.cost.attention.fa2 import num_splits as fa2_num_splits
from gpusim.kernels import build_kernels
from gpusim.platform import Platform
from gpusim.specs import GpuSpec, ModelSpec
from gpusim.step import predict

SETTINGS = settings(max_examples=40, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
REL = 1e-12   # float noise allowed in an inequality

MODES = ("decode", "verify", "prefill")
LAUNCH = ("graph", "eager")


def one_shape(mode: str) -> st.SearchStrategy[tuple[int, int, int]]:
    if mode == "decode":
        return st.tuples(st.integers(1, 256), st.integers(0, 8192), st.just(1))
    if mode == "verify":
        return st.tuples(st.integers(1, 64), st.integers(0, 8192), st.integers(2, 16))
    return st.tuples(st.integers(1, 8), st.just(0), st.integers(1, 2048))


@st.composite
def cases(draw):
    """(gpu name, model name, mode, launch, calibration)."""
    return (draw(st.sampled_from(SHIPPED_GPUS)), draw(st.sampled_from(PROPERTY_MODELS)),
            draw(st.sampled_from(MODES)), draw(st.sampled_from(LAUNCH)), draw(calibrations()))


@st.composite
def cases_with_shapes(draw):
    gpu, model, mode, launch, cal = draw(cases())
    shapes = draw(st.lists(one_shape(mode), min_size=1, max_size=8))
    b, c, q = (np.array(v, dtype=np.float64) for v in zip(*shapes, strict=True))
    return gpu, model, mode, launch, cal, b, c, q


def fa2_splits(gpu: GpuSpec, model: ModelSpec, stack, mode: str, b, c, q) -> np.ndarray | None:
    """FlashAttention-2's split counts of verify shapes (None for other modes): the
    library's own heuristic is not monotone (one more key block can let it split the
    keys more ways and finish sooner, as profiled), so verify's monotonicity holds
    between shapes that FA2 splits alike."""
    if mode != "verify":
        return None
    att = next(k for k in build_kernels(model, stack, mode, b, c, q) if k.attention)
    return fa2_num_splits(att.attention, float(gpu.sm_count))


def _first_drop(x: np.ndarray, seconds: np.ndarray,
                same: np.ndarray | None = None) -> str | None:
    """None if seconds never decreases along x (between neighbours whose ``same``
    labels agree, when given), else the first drop, readable."""
    d = np.diff(seconds)
    alike = np.ones(len(d), bool) if same is None else np.diff(same) == 0
    bad = np.nonzero((d < -REL * seconds[:-1]) & alike)[0]
    if bad.size == 0:
        return None
    i = int(bad[0])
    return (f"{x[i]:g} -> {x[i + 1]:g}: {seconds[i] * 1e6:.4f} us -> "
            f"{seconds[i + 1] * 1e6:.4f} us ({(seconds[i] - seconds[i + 1]) / seconds[i]:.3%}"
            " faster)")


def gemm_weight_bytes(model: ModelSpec) -> float:
    """Every GEMM weight (layers' qkv, o, gate_up, down and lm_head), from the sizes."""
    h, i, d = model.hidden_size, model.intermediate_size, model.head_dim_eff
    q_dim, kv_dim = model.num_attention_heads * d, model.num_key_value_heads * d
    layer = h * (q_dim + 2 * kv_dim) + q_dim * h + h * 2 * i + i * h
    return (model.num_hidden_layers * layer + model.vocab_size * h) * model.dtype_bytes


# ---------------------------------------------------------------------------------
# (a) more bandwidth is never slower
# ---------------------------------------------------------------------------------
@SETTINGS
@given(case=cases_with_shapes(), factor=st.floats(1.0, 4.0))
def test_more_bandwidth_never_slower(gpus, models, stack, case, factor):
    gpu_name, model, mode, launch, cal, b, c, q = case
    gpu = gpus[gpu_name]
    faster = gpu.model_copy(update={"hbm_bandwidth_bytes_per_s":
                                    gpu.hbm_bandwidth_bytes_per_s * factor})
    base = predict(Platform(gpu, stack, cal, launch), models[model], mode, b, c, q).seconds
    more = predict(Platform(faster, stack, cal, launch), models[model], mode, b, c, q).seconds
    assert np.all(more <= base * (1 + REL))


# ---------------------------------------------------------------------------------
# (b) a larger batch never makes a step faster
# ---------------------------------------------------------------------------------
def check_batch_monotone(gpu: GpuSpec, model: ModelSpec, stack, cal: Calibration, mode: str,
                         b0: int, ctx: int, q: int, launch: str, span: int = 48) -> None:
    b = np.arange(b0, b0 + span, dtype=np.float64)
    s = predict(Platform(gpu, stack, cal, launch), model, mode, b, ctx, q).seconds
    drop = _first_drop(b, s, fa2_splits(gpu, model, stack, mode, b, ctx, q))
    assert drop is None, f"{gpu.name} {model.name} {mode} ctx={ctx} q={q} {launch}: " \
        f"batch {drop} under {cal!r}"


@SETTINGS
@given(case=cases(), data=st.data())
def test_larger_batch_never_faster(gpus, models, stack, case, data):
    gpu, model, mode, launch, cal = case
    b0, ctx, q = data.draw(one_shape(mode))
    check_batch_monotone(gpus[gpu], models[model], stack, cal, mode, b0, ctx, q, launch)


# ---------------------------------------------------------------------------------
# (c) a longer context never makes a step faster (prefill: a longer prompt); nor do
# more new tokens per sequence in verify
# ---------------------------------------------------------------------------------
def check_ctx_monotone(gpu: GpuSpec, model: ModelSpec, stack, cal: Calibration, mode: str,
                       batch: int, c0: int, q: int, launch: str, span: int = 256) -> None:
    if mode == "prefill":
        qq = np.arange(max(q, 1), max(q, 1) + span // 4, dtype=np.float64)
        s = predict(Platform(gpu, stack, cal, launch), model, mode, batch, 0, qq).seconds
        drop, what = _first_drop(qq, s), "prompt length q"
    else:
        c = np.arange(c0, c0 + span, dtype=np.float64)
        s = predict(Platform(gpu, stack, cal, launch), model, mode, batch, c, q).seconds
        drop = _first_drop(c, s, fa2_splits(gpu, model, stack, mode, batch, c, q))
        what = "ctx"
    assert drop is None, f"{gpu.name} {model.name} {mode} batch={batch} q={q} {launch}: " \
        f"{what} {drop} under {cal!r}"


@SETTINGS
@given(case=cases(), data=st.data())
def test_longer_context_never_faster(gpus, models, stack, case, data):
    gpu, model, mode, launch, cal = case
    batch, c0, q = data.draw(one_shape(mode))
    check_ctx_monotone(gpus[gpu], models[model], stack, cal, mode, batch, c0, q, launch)


@SETTINGS
@given(case=cases(), batch=st.integers(1, 32), ctx=st.integers(0, 4096))
def test_more_verify_tokens_never_faster(gpus, models, stack, case, batch, ctx):
    gpu, model, _, launch, cal = case
    q = np.arange(1, 33, dtype=np.float64)
    plat = Platform(gpus[gpu], stack, cal, launch)
    s = predict(plat, models[model], "verify", batch, ctx, q).seconds
    drop = _first_drop(q, s, fa2_splits(gpus[gpu], models[model], stack, "verify", batch, ctx, q))
    assert drop is None, (
        f"{gpu} {model} verify batch={batch} ctx={ctx} {launch}: q {drop} under {cal!r}"
    )


# ---------------------------------------------------------------------------------
# (d) batch-1 decode can't beat streaming every weight once at peak bandwidth
# ---------------------------------------------------------------------------------
@SETTINGS
@given(case=cases(), ctx=st.lists(st.integers(0, 32768), min_size=1, max_size=8))
def test_batch1_decode_not_faster_than_weights_over_peak_bandwidth(gpus, models, stack, case, ctx):
    gpu_name, model, _, launch, cal = case
    gpu, spec = gpus[gpu_name], models[model]
    p = predict(Platform(gpu, stack, cal, launch), spec, "decode", 1, np.array(ctx, float), 1)
    w = gemm_weight_bytes(spec)
    np.testing.assert_allclose(p.weight_bytes, w, rtol=1e-12)
    assert np.all(p.seconds >= w / gpu.hbm_bandwidth_bytes_per_s * (1 - REL))
    # and the GPU side alone, too
    assert np.all(p.gpu_s >= w / gpu.hbm_bandwidth_bytes_per_s * (1 - REL))


# ---------------------------------------------------------------------------------
# (e) more tensor FLOPs are never slower
# ---------------------------------------------------------------------------------
@SETTINGS
@given(case=cases_with_shapes(), factor=st.floats(1.0, 8.0))
def test_more_tensor_flops_never_slower(gpus, models, stack, case, factor):
    gpu_name, model, mode, launch, cal, b, c, q = case
    gpu = gpus[gpu_name]
    tf = gpu.tensor_flops_per_s
    faster = gpu.model_copy(
        update={"tensor_flops_per_s": tf.model_copy(update={"bf16": tf.bf16 * factor})}
    )
    base = predict(Platform(gpu, stack, cal, launch), models[model], mode, b, c, q).seconds
    more = predict(Platform(faster, stack, cal, launch), models[model], mode, b, c, q).seconds
    assert np.all(more <= base * (1 + REL))


# ---------------------------------------------------------------------------------
# (f) eager is never faster than a CUDA graph when a graph launch is no dearer than
# one eager launch
# ---------------------------------------------------------------------------------
@SETTINGS
@given(case=cases_with_shapes(), graph_share=st.floats(0.0, 1.0))
def test_eager_never_faster_than_graph(gpus, models, stack, case, graph_share):
    gpu_name, model, mode, _, cal, b, c, q = case
    cal = cal.replace({"host.host_graph_launch_cost_s": cal.host.host_launch_cost_s * graph_share})
    gpu, spec = gpus[gpu_name], models[model]
    graph = predict(Platform(gpu, stack, cal, "graph"), spec, mode, b, c, q)
    eager = predict(Platform(gpu, stack, cal, "eager"), spec, mode, b, c, q)
    assert np.all(eager.seconds >= graph.seconds * (1 - REL))
    # eager: at least every launch issued, and at least the GPU work after the first
    n = eager.launches
    assert np.all(eager.seconds >= n * cal.host.host_launch_cost_s * (1 - REL))
    assert np.all(eager.seconds >= (eager.gpu_s + cal.host.host_launch_cost_s) * (1 - REL))
    # ... and no more than issuing everything, then running everything
    assert np.all(eager.seconds <= (eager.gpu_s + n * cal.host.host_launch_cost_s) * (1 + REL))
    np.testing.assert_allclose(graph.gpu_s, eager.gpu_s, rtol=1e-15)


# ---------------------------------------------------------------------------------
# (g) conservation: the step is the sum of its ops; no op beats its own roofline
# ---------------------------------------------------------------------------------
@SETTINGS
@given(case=cases_with_shapes())
def test_step_time_conserves_op_costs(gpus, models, stack, case):
    gpu_name, model, mode, launch, cal, b, c, q = case
    gpu, spec = gpus[gpu_name], models[model]
    p = predict(Platform(gpu, stack, cal, launch), spec, mode, b, c, q)
    costs = [kernel_cost(k, gpu, cal) for k in p.kernels]
    per_op_sum = sum(c_.seconds * k.repeat for k, c_ in zip(p.kernels, costs, strict=True))
    floor = sum(
        np.maximum(c_.memory_s, c_.compute_s) * k.repeat
        for k, c_ in zip(p.kernels, costs, strict=True)
    )
    np.testing.assert_allclose(p.total.seconds, per_op_sum, rtol=1e-12)
    np.testing.assert_allclose(p.gpu_s, per_op_sum, rtol=1e-12)
    np.testing.assert_allclose(sum(v.seconds for v in p.by_op.values()), p.gpu_s, rtol=1e-12)
    np.testing.assert_allclose(sum(v.bytes for v in p.by_op.values()), p.total.bytes, rtol=1e-12)
    np.testing.assert_allclose(sum(v.flops for v in p.by_op.values()), p.total.flops, rtol=1e-12)
    assert np.all(p.seconds >= floor * (1 - REL))
    assert np.all(p.gpu_s >= floor * (1 - REL))
    # the step's own roofline at datasheet peaks is a floor too (efficiencies <= 1)
    roof = np.maximum(
        p.total.bytes / gpu.hbm_bandwidth_bytes_per_s,
        p.total.flops / gpu.tensor_peak_flops_per_s("bf16"),
    )
    assert np.all(p.seconds >= roof * (1 - REL))
    if launch == "graph":
        np.testing.assert_allclose(
            p.seconds, cal.host.host_graph_launch_cost_s + p.gpu_s, rtol=1e-12
        )
    assert np.all(p.seconds > 0) and np.all(np.isfinite(p.seconds))


# ---------------------------------------------------------------------------------
# counterexamples found by the properties above, pinned so they always run
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("gpu", "model", "mode", "batch", "ctx", "q", "cal"),
    [
        # datasheet calibration: decode attention's split-KV at the 128-key block boundary;
        # h100: 744.178 us at ctx 127, 741.957 us at ctx 128
        ("h100-sxm", "llama-3.2-1b", "decode", 1, 127, 1, {}),
        ("a100-sxm-80gb", "qwen2.5-7b", "decode", 1, 255, 1, {}),
        ("l40s", "llama-3.1-8b", "decode", 1, 127, 1, {}),
        # saturating_ctas_per_sm > 0: the split-KV CTA count (batch x kv_heads x split)
        # grows at the block boundary, so the attention gets more bandwidth; this one stays
        # even once the critical path counts whole key blocks
        ("h100-sxm", "llama-3.2-1b", "decode", 2, 127, 1, {"saturating_ctas_per_sm": 0.5}),
    ],
    ids=["h100-1b-decode", "a100-qwen7b-decode", "l40s-8b-decode", "h100-1b-decode-sat"],
)
def test_pinned_context_counterexample(gpus, models, stack, gpu, model, mode, batch, ctx, q, cal):
    check_ctx_monotone(
        gpus[gpu],
        models[model],
        stack,
        Calibration(physics=cal),
        mode,
        batch,
        ctx,
        q,
        "graph",
        span=2,
    )


@pytest.mark.parametrize(
    ("gpu", "model", "mode", "batch", "ctx", "q", "cal"),
    [
        # elementwise CTAs = ceil(elements / launches / 4096): rms_norm over 16 x 2048 -> 1
        # CTA per launch, over 17 x 2048 -> 2: h100 1394.19 us at batch 16, 1224.27 us at 17
        ("h100-sxm", "llama-3.2-1b", "decode", 16, 1000, 1, {"saturating_ctas_per_sm": 0.25}),
        # verify q 5: 1241.92 us at batch 3, 1145.76 us at batch 4
        ("h100-sxm", "llama-3.2-1b", "verify", 3, 500, 5, {"saturating_ctas_per_sm": 0.25}),
        ("h200", "llama-3.1-8b", "decode", 8, 1000, 1, {"saturating_ctas_per_sm": 0.25}),
    ],
    ids=["h100-1b-decode-b16", "h100-1b-verify-b3", "h200-8b-decode-b8"],
)
def test_pinned_batch_counterexample(gpus, models, stack, gpu, model, mode, batch, ctx, q, cal):
    check_batch_monotone(
        gpus[gpu],
        models[model],
        stack,
        Calibration(physics=cal),
        mode,
        batch,
        ctx,
        q,
        "graph",
        span=2,
    )


def test_pinned_prefill_counterexample(gpus, models, stack):
    # prefill batch 1 over a 16- vs 17-token prompt, h100, llama-3.2-1b, saturating
    # 0.25 CTA/SM: 1237.16 us -> 1057.42 us
    check_ctx_monotone(
        gpus["h100-sxm"],
        models["llama-3.2-1b"],
        stack,
        Calibration(physics={"saturating_ctas_per_sm": 0.25}),
        "prefill",
        1,
        0,
        16,
        "graph",
        span=8,
    )


def test_fa2_split_change_may_be_faster(gpus, models, stack):
    # Llama 3.2 1B (head_dim 64: 256-key blocks), batch 1, 2 new tokens: 256 keys are one
    # block, which FA2 cannot split (32 CTAs on 132 SMs); 257 keys are two, split in two
    # (64 CTAs): the step is faster with the longer context, as FA2 runs it
    gpu, m = gpus["h100-sxm"], models["llama-3.2-1b"]
    cal = Calibration(gpu="h100-sxm")
    c = np.array([254.0, 255.0])
    assert list(fa2_splits(gpu, m, stack, "verify", 1, c, 2)) == [1.0, 2.0]
    s = predict(Platform(gpu, stack, cal), m, "verify", 1, c, 2).seconds
    assert s[1] < s[0]
