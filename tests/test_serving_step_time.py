"""The tabulated serving step-time model against the step predictor it comes from."""

from __future__ import annotations

import itertools
from functools import lru_cache

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gpusim import step
from gpusim.cost import Calibration
from gpusim.io import loader
from gpusim.platform import Platform
from gpusim.serving.grids import chunk_grid, context_grid
from gpusim.serving.step_time import StepTimeModel, build_step_time_model

GPU = loader.load_gpu("h100-sxm")
MODEL = loader.load_model("llama-3.1-8b")
STACK = loader.load_stack()
CALS = {
    "datasheet": Calibration(gpu=GPU.name),
    # a plausible fitted calibration: every parameter away from its ideal default
    "fitted": Calibration(
        gpu=GPU.name,
        physics={
            "hbm_bandwidth_efficiency": 0.85,
            "dram_latency_s": 1e-6,
            "saturating_ctas_per_sm": 2.0,
            "kernel_fixed_cost_s": 2e-6,
            "tensor_efficiency": 0.7,
            "attention_bandwidth_efficiency": 0.8,
            "attention_fixed_cost_s": 3e-6,
            "overlap_exponent": 4.0,
        },
        host={"host_launch_cost_s": 5e-6, "host_graph_launch_cost_s": 2e-5},
        attention={
            "flash_decode": {"tensor_efficiency": 0.6},
            "cudnn_prefill": {"tensor_efficiency": 0.6},
        },
    ),
}
MAX_TOKENS, MAX_SEQS, MAX_CTX = 8192, 256, 131072


@lru_cache(maxsize=8)
def model_for(cal: str, launch: str) -> StepTimeModel:
    return build_step_time_model(
        Platform(GPU, STACK, CALS[cal], launch), MODEL, MAX_TOKENS, MAX_SEQS, MAX_CTX
    )


def predicted(cal: str, launch: str, mode: str, batch: int, ctx: int, q: int) -> float:
    p = step.predict(Platform(GPU, STACK, CALS[cal], launch), MODEL, mode, batch, ctx, q)
    return float(p.seconds[0])


CASES = [(c, la) for c in CALS for la in ("graph", "eager")]


@pytest.mark.parametrize(("cal", "launch"), CASES)
@pytest.mark.parametrize("batch", [1, 2, 3, 8, 17, 33, 64, 100, 177, 256])
def test_uniform_decode_matches_predict(cal: str, launch: str, batch: int) -> None:
    sm = model_for(cal, launch)
    for ctx in (0, 1, 37, 500, 1000, 4097, 12345, 30000, 77777, 131000):
        want = predicted(cal, launch, "decode", batch, ctx, 1)
        got = sm.decode_step(batch, batch * ctx)[0]
        assert got == pytest.approx(want, rel=0.02), (batch, ctx)
        assert sm.step(batch, batch * ctx, [])[0] == pytest.approx(got, rel=1e-12)


@pytest.mark.parametrize(("cal", "launch"), CASES)
def test_uniform_prefill_matches_predict(cal: str, launch: str) -> None:
    sm = model_for(cal, launch)
    for q in (1, 2, 31, 128, 129, 300, 640, 1000, 2048, 3000, 5555, 8192):
        want = predicted(cal, launch, "prefill", 1, 0, q)
        got = sm.step(0, 0, [(q, 0)])[0]
        assert got == pytest.approx(want, rel=0.02), q


@pytest.mark.parametrize("cal", list(CALS))
def test_chunk_attention_matches_kernel_cost(cal: str) -> None:
    """A chunk after cached context: its attention is the verify-shaped kernel's.

    Between context grid points the table interpolates; a short chunk's kernel jumps
    where the context crosses a key block and FA2 changes its split count, so the
    short chunk is checked on a grid point."""
    sm = model_for(cal, "graph")
    on_grid = min(sm.ctx_grid, key=lambda g: abs(g - 1000))
    for q, ctx in ((16, on_grid), (512, 3000), (1000, 20000), (8192, 60000), (129, 4096)):
        p = step.predict(Platform(GPU, STACK, CALS[cal]), MODEL, "verify", 1, ctx, q)
        want = float(p.by_op["attention"].seconds[0] - p.by_op["attention"].fixed_s[0])
        assert sm.chunk_attention(q, ctx)[0] == pytest.approx(want, rel=0.02), (q, ctx)


def test_mixed_step_adds_up() -> None:
    sm = model_for("fitted", "graph")
    dec_s, _ = sm.decode_attention(40, 900.0)
    ch_s, _ = sm.chunk_attention(700, 0)
    got = sm.step(40, 40 * 900, [(700, 0)])[0]
    want = sm.token_s[740] + sm.seq_s[41] + dec_s + ch_s + sm.step_overhead_s
    assert got == pytest.approx(want, rel=1e-12)


def test_bytes_track_weights_and_kv() -> None:
    sm = model_for("datasheet", "graph")
    b, ctx = 32, 4000
    p = step.predict(Platform(GPU, STACK, CALS["datasheet"]), MODEL, "decode", b, ctx, 1)
    assert sm.decode_step(b, b * ctx)[1] == pytest.approx(float(p.total.bytes[0]), rel=0.01)


@settings(max_examples=200, deadline=None)
@given(
    b=st.integers(1, MAX_SEQS - 3),
    ctx=st.integers(0, 100_000),
    more_ctx=st.integers(1, 20_000),
    q=st.integers(1, 4000),
    more_q=st.integers(1, 4000),
    chunk_ctx=st.integers(0, 20_000),
    cal=st.sampled_from(list(CALS)),
)
def test_monotone_in_tokens_and_context(
    b: int, ctx: int, more_ctx: int, q: int, more_q: int, chunk_ctx: int, cal: str
) -> None:
    """More sequences, tokens or context never make a step faster (a chunk's
    context within 1%: FA2 may split a verify-shaped kernel's keys more ways once
    they fill another block, and run it a little faster)."""
    # the model is tabulated up to MAX_TOKENS tokens a step (the scheduler's budget)
    assume(b + 1 + q + more_q + 1 <= MAX_TOKENS)
    sm = model_for(cal, "graph")
    t = sm.step(b, b * ctx, [(q, chunk_ctx)])[0] * (1 - 1e-12)
    assert sm.step(b + 1, (b + 1) * ctx, [(q, chunk_ctx)])[0] >= t
    assert sm.step(b, b * (ctx + more_ctx), [(q, chunk_ctx)])[0] >= t
    if chunk_ctx > 0:  # from 0 to 1 the kernel changes (prefill -> verify-shaped)
        assert sm.step(b, b * ctx, [(q, chunk_ctx + more_ctx)])[0] >= t * 0.99
    assert sm.step(b, b * ctx, [(q, chunk_ctx), (1, 0)])[0] >= t
    if cal == "datasheet":  # see test_longer_chunks_inherit_the_cost_model for "fitted"
        assert sm.step(b, b * ctx, [(q + more_q, chunk_ctx)])[0] >= t


def test_longer_chunks_inherit_the_cost_model() -> None:
    """With a latency-bound calibration the cost model's verify/prefill attention gets
    faster when a chunk crosses a 128-query tile (the same KV bytes spread over twice
    the CTAs); the step model reproduces exactly that and nothing else."""
    sm = model_for("fitted", "graph")
    for ctx in (0, 5000, 30000):
        qs = list(range(1, 2050))
        ours = [sm.chunk_attention(q, ctx)[0] for q in qs]
        mode = "prefill" if ctx == 0 else "verify"
        p = step.predict(Platform(GPU, STACK, CALS["fitted"]), MODEL, mode, 1, ctx, qs)
        ref = (p.by_op["attention"].seconds - p.by_op["attention"].fixed_s).tolist()
        for i in range(len(qs) - 1):
            if ours[i + 1] < ours[i] * (1 - 1e-9):
                assert ref[i + 1] / ref[i] == pytest.approx(ours[i + 1] / ours[i], abs=0.01)


def test_grids() -> None:
    g = context_grid(131072)
    assert g[0] == 0 and g[-1] == 131072 and g == sorted(set(g))
    assert max(b - a for a, b in itertools.pairwise(g)) < 0.02 * 131072
    q = chunk_grid(1000)
    assert q[:128] == list(range(1, 129)) and q[-1] == 1000 and {256, 257, 896, 897} <= set(q)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        build_step_time_model(Platform(GPU, STACK, CALS["datasheet"], "lazy"), MODEL)
    with pytest.raises(ValueError):
        build_step_time_model(Platform(GPU, STACK, CALS["datasheet"]), MODEL, max_num_seqs=0)


# --- CUDA-graph padding and the engine's host work (issue 21) -----------------------
@lru_cache(maxsize=4)
def captured(host_step_s: float = 0.0, host_seq_s: float = 0.0, host_chunk_s: float = 0.0,
             host_prefill_token_s: float = 0.0) -> StepTimeModel:
    cal = CALS["fitted"].replace({"host.serving_step_host_s": host_step_s,
                                  "host.serving_seq_host_s": host_seq_s,
                                  "host.serving_chunk_host_s": host_chunk_s,
                                  "host.serving_prefill_token_host_s": host_prefill_token_s})
    return build_step_time_model(Platform(GPU, STACK, cal, "graph"), MODEL, 512, 12, 8192,
                                 (1, 2, 4, 8, 16, 32))


def test_decode_steps_replay_the_graph_of_the_next_size_up() -> None:
    m, eager = captured(), model_for("fitted", "eager")
    assert m.capture_sizes == (1, 2, 4, 8, 16)          # up to the first >= 12
    assert [m.padded_batch(b) for b in (1, 3, 5, 9, 12)] == [1, 4, 8, 16, 16]
    # batch 5 at 1000 tokens each: the token and per-sequence ops of 8 rows, the
    # attention of 5, one graph replay
    attn = m.decode_attention(5, 1000.0)[0]
    want = (m.token_s[8] + m.seq_s[8] + attn + m.attention_fixed_s
            + CALS["fitted"].host.host_graph_launch_cost_s)
    assert m.decode_step(5, 5000.0)[0] == pytest.approx(want, rel=1e-12)
    # a mixed step runs eagerly: the eager model's step
    chunks = [(300, 0), (40, 700)]
    assert m.step(3, 3000.0, chunks)[0] == pytest.approx(eager.step(3, 3000.0, chunks)[0],
                                                         rel=1e-9)


def test_host_work_adds_per_step_and_per_sequence() -> None:
    plain, host = captured(), captured(100e-6, 10e-6)
    assert host.decode_step(5, 5000.0)[0] == pytest.approx(
        plain.decode_step(5, 5000.0)[0] + 100e-6 + 5 * 10e-6, rel=1e-12)
    chunks = [(300, 0), (40, 700)]
    assert host.step(3, 3000.0, chunks)[0] == pytest.approx(
        plain.step(3, 3000.0, chunks)[0] + 100e-6 + 5 * 10e-6, rel=1e-12)
    # a prefill's chunks and tokens: only steps that hold chunks pay them
    pre = captured(100e-6, 10e-6, 200e-6, 0.5e-6)
    assert pre.decode_step(5, 5000.0)[0] == pytest.approx(host.decode_step(5, 5000.0)[0],
                                                          rel=1e-12)
    assert pre.step(3, 3000.0, chunks)[0] == pytest.approx(
        host.step(3, 3000.0, chunks)[0] + 2 * 200e-6 + 340 * 0.5e-6, rel=1e-12)
    # without capture sizes as well
    cal = CALS["fitted"].replace({"host.serving_step_host_s": 1e-4})
    m = build_step_time_model(Platform(GPU, STACK, cal, "graph"), MODEL, 512, 12, 8192)
    base = build_step_time_model(Platform(GPU, STACK, CALS["fitted"], "graph"), MODEL, 512,
                                 12, 8192)
    assert m.decode_step(4, 400.0)[0] == pytest.approx(base.decode_step(4, 400.0)[0] + 1e-4)
