"""vLLM's FULL_AND_PIECEWISE CUDA-graph mode in the serving step model: a mixed step of
up to the largest capture size pads its per-token ops to the next size and replays
num_hidden_layers + 1 piecewise graphs, attention and the ops that go with it eager
between them; decode-only steps as in FULL_DECODE_ONLY; larger mixed steps eager."""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gpusim.cost import Calibration
from gpusim.errors import ConfigError
from gpusim.io import loader
from gpusim.io.scenario import load_scenario
from gpusim.platform import Platform
from gpusim.serving.scenario import CUDAGRAPH_MODES, Scenario, SchedulerSpec
from gpusim.serving.simulate import build_engine, simulate
from gpusim.serving.step_time import StepTimeModel, build_step_time_model, used_capture_sizes
from gpusim.step import op_costs

GPU = loader.load_gpu("h100-sxm")
MODEL = loader.load_model("llama-3.1-8b")
STACK = loader.load_stack()
CAL = Calibration(
    gpu=GPU.name,
    physics={"hbm_bandwidth_efficiency": 0.85, "kernel_fixed_cost_s": 2e-6,
             "tensor_efficiency": 0.7, "attention_fixed_cost_s": 3e-6},
    host={"host_launch_cost_s": 5e-6, "host_graph_launch_cost_s": 2e-5})
# max_batched_tokens 300 is no capture size: piecewise steps pad up to 512
SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TOKENS, SEQS, CTX = 300, 12, 8192


@lru_cache(maxsize=8)
def model_for(mode: str, sizes: tuple[int, ...] = SIZES, stack: str = "",
              host_launch_s: float = 5e-6, graph_launch_s: float = 2e-5) -> StepTimeModel:
    cal = CAL.replace({"host.host_launch_cost_s": host_launch_s,
                       "host.host_graph_launch_cost_s": graph_launch_s})
    st_ = loader.load_stack(stack) if stack else STACK
    return build_step_time_model(Platform(GPU, st_, cal, "graph"), MODEL, TOKENS, SEQS,
                                 CTX, sizes, mode)


def attention_of(m: StepTimeModel, decode: int, ctx_sum: float,
                 chunks: list[tuple[int, int]]) -> tuple[float, float]:
    s, b = m.decode_attention(decode, ctx_sum / decode) if decode else (0.0, 0.0)
    for q, ctx in chunks:
        cs, cb = m.chunk_attention(q, ctx)
        s, b = s + cs, b + cb
    return s, b


def test_piecewise_sizes_reach_the_token_budget_and_decode_pads_as_before() -> None:
    pw, full = model_for("full_and_piecewise"), model_for("full_decode_only")
    assert pw.piecewise and not full.piecewise
    assert full.capture_sizes == (1, 2, 4, 8, 16)               # up to the first >= 12
    assert pw.capture_sizes == (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)  # ... >= 300
    assert used_capture_sizes(SIZES, TOKENS) == pw.capture_sizes
    assert len(pw.token_s) == 513 and len(full.token_s) == TOKENS + 1
    assert pw.token_s[:TOKENS + 1] == full.token_s
    assert [pw.padded_tokens(t) for t in (1, 3, 100, 129, 300)] == [1, 4, 128, 256, 512]
    assert full.padded_tokens(3) is None
    # a decode batch never pads past max_num_seqs' size, in either mode
    assert [pw.padded_batch(b) for b in range(1, SEQS + 1)] == \
        [full.padded_batch(b) for b in range(1, SEQS + 1)]
    assert pw.pieces == MODEL.num_hidden_layers + 1
    # the launches outside the graphs: the LM head always, attention (two kernels a
    # layer) for each part a step has: decoding rows, a fresh prompt, a later chunk
    probe = op_costs(Platform(GPU, STACK, CAL), MODEL, "decode", 1, 0, 1)
    by_name = {op.name: op.launches * op.repeat for op in probe}
    assert pw.seq_launches == by_name["lm_head"]
    assert pw.decode_launches == pw.fresh_launches == pw.chunk_launches == \
        by_name["attention"]
    assert pw.outside_launches(0, [(90, 0)]) == by_name["lm_head"] + by_name["attention"]
    assert pw.outside_launches(3, [(90, 0), (10, 700)]) == \
        by_name["lm_head"] + 3 * by_name["attention"]
    # an eager decode step launches every op of the decode forward once
    assert pw.launches(3) == sum(by_name.values())
    assert pw.outside_launches(3, [(90, 0)]) < pw.launches(3)


def test_the_harness_stacks_piecewise_launches_follow_the_parts_of_a_step() -> None:
    """Its decoding rows launch their gathers, mask and attention outside the graphs,
    a fresh prompt only its attention, a chunk after cached tokens its gathers, the
    repeat of its keys to every query head and its attention (profiled: 2 kernels a
    layer with a fresh prompt alone, about 10 with decoding rows beside it;
    probe_2026-12-07/chunk_attention: 4 more a layer with a chunk after cached tokens
    than with a fresh one, and its key slots' 3 once)."""
    m = model_for("full_and_piecewise", stack="harness-serve")
    layers = MODEL.num_hidden_layers
    assert m.fresh_launches == layers                          # FlashAttention-2
    # cuDNN's kernel and its memset, K and V gathers and the mask's two kernels a
    # layer, the rows' key slots once
    assert m.decode_launches == 6 * layers + 5
    # K and V gathered, K and V repeated, FlashAttention-2; the chunk's key slots once
    assert m.chunk_launches == 5 * layers + 3
    # two parts or more: their outputs concatenated, a cat a layer
    assert m.parts_cat_launches == layers
    fresh, both = m.outside_launches(0, [(300, 0)]), m.outside_launches(4, [(300, 0)])
    assert both - fresh == m.decode_launches + layers
    cached = m.outside_launches(0, [(300, 500)])
    assert cached - fresh == 4 * layers + 3
    # and between its pieces, the copy of attention's output into the next one's buffer
    assert m.piecewise_copy_launches == layers


def test_an_eager_mixed_step_launches_the_kernels_of_the_parts_it_has() -> None:
    """Host-bound, an eager step's time follows its launches: a chunk after cached
    tokens launches more than a fresh prompt (its gathers and repeats), and decoding
    rows beside a chunk add their own attention and cache ops."""
    m = model_for("full_decode_only", stack="harness-serve")
    h = 1e-3                                    # host-bound at any GPU time here
    slow = dataclasses.replace(m, host_launch_s=h)
    fresh = slow.step(0, 0.0, [(64, 0)])[0]
    cached = slow.step(0, 0.0, [(64, 500)])[0]
    both = slow.step(4, 4000.0, [(64, 500)], longest=1100)[0]
    assert cached - fresh == pytest.approx((m.chunk_launches - m.fresh_launches) * h,
                                           rel=1e-9)
    assert both - cached == pytest.approx((m.decode_launches + m.parts_cat_launches) * h,
                                          rel=1e-3)
    assert m.launches(4, [(64, 500)]) == (m.token_launches + m.seq_launches
                                          + m.decode_launches + m.chunk_launches
                                          + m.parts_cat_launches)


def test_a_piecewise_step_is_the_eager_formula_with_the_graphs_folded_in() -> None:
    m = model_for("full_and_piecewise")
    chunks = [(90, 0), (10, 700)]            # 3 decodes + 100 chunk tokens -> 128 rows
    attn, attn_bytes = attention_of(m, 3, 3000.0, chunks)
    gpu = attn + m.token_s[128] + m.seq_s[5]
    h, g = m.host_launch_s, m.graph_launch_s
    tail = m.tail_by_tokens_s[103] + m.tail_by_seqs_s[5]
    want = max(gpu + m.attention_fixed_s + h,
               m.outside_launches(3, chunks) * h + m.pieces * g + tail)
    got, moved = m.step(3, 3000.0, chunks)
    assert got == pytest.approx(want, rel=1e-12)
    assert moved == pytest.approx(attn_bytes + m.token_bytes[128] + m.seq_bytes[5],
                                  rel=1e-12)


def test_above_the_largest_size_a_mixed_step_runs_eagerly() -> None:
    small = (1, 2, 4, 8, 16, 32, 64, 128)
    pw, full = model_for("full_and_piecewise", small), model_for("full_decode_only", small)
    assert pw.padded_tokens(128) == 128 and pw.padded_tokens(129) is None
    for decode, chunks in ((0, [(129, 0)]), (4, [(200, 50), (40, 0)]), (11, [(289, 9)])):
        assert pw.step(decode, 1000.0 * decode, chunks) == full.step(
            decode, 1000.0 * decode, chunks)


@pytest.mark.parametrize("stack", ["", "harness-serve"])
def test_decode_only_steps_are_unchanged(stack: str) -> None:
    pw, full = model_for("full_and_piecewise", stack=stack), model_for("full_decode_only",
                                                                        stack=stack)
    for batch in range(1, SEQS + 1):
        for ctx in (0, 700, 5000):
            longest = ctx + 300
            assert pw.decode_step(batch, batch * ctx, longest) == full.decode_step(
                batch, batch * ctx, longest)


def test_a_stack_that_pads_decode_keys_runs_a_piecewise_steps_decode_part_padded() -> None:
    """The serving harness pads a piecewise step's decode rows to their capture size
    (3 rows run as 4), as its decode graphs do; an eager mixed step runs them as they
    are."""
    m = model_for("full_and_piecewise", stack="harness-serve")
    assert m.padded_batch(3) == 4
    attn, _ = m.padded_attention(4, 3, 3000.0, 1500)
    assert attn > m.padded_attention(3, 3, 3000.0, 1500)[0]
    chunk, _ = m.chunk_attention(60, 0)
    gpu = attn + chunk + m.token_s[64] + m.seq_s[4]
    h = m.host_launch_s
    tail = m.tail_by_tokens_s[63] + m.tail_by_seqs_s[4]
    want = max(gpu + m.attention_fixed_s + h,
               m.outside_launches(3, [(60, 0)]) * h + m.pieces * m.graph_launch_s + tail)
    assert m.step(3, 3000.0, [(60, 0)], 1500)[0] == pytest.approx(want, rel=1e-12)


CASES = dict(decode=st.integers(0, SEQS - 2), ctx=st.integers(0, 6000),
             q=st.integers(1, 250), chunk_ctx=st.integers(0, 6000))


@settings(max_examples=150, deadline=None)
@given(**CASES)
def test_per_token_ops_run_at_the_padded_size(decode: int, ctx: int, q: int,
                                              chunk_ctx: int) -> None:
    """With no host cost and no graph replay cost a piecewise step is the eager step's
    GPU-bound end with its per-token ops at the padded size: exactly the difference
    of the token table at the two sizes (nothing else pads)."""
    tokens = decode + q
    assume(tokens <= TOKENS)
    pw = model_for("full_and_piecewise", host_launch_s=0.0, graph_launch_s=0.0)
    eager = model_for("full_decode_only", host_launch_s=0.0, graph_launch_s=0.0)
    pad = pw.padded_tokens(tokens)
    assert pad is not None and pad >= tokens
    chunks = [(q, chunk_ctx)]
    a, a_bytes = pw.step(decode, decode * ctx, chunks)
    b, b_bytes = eager.step(decode, decode * ctx, chunks)
    assert a - b == pytest.approx(pw.token_s[pad] - pw.token_s[tokens], abs=1e-15)
    assert a_bytes - b_bytes == pytest.approx(
        pw.token_bytes[pad] - pw.token_bytes[tokens], rel=1e-9, abs=1e-3)
    if pad == tokens:      # nothing padded: the eager formula's GPU-bound end itself
        assert a == pytest.approx(b, rel=1e-12)


@settings(max_examples=150, deadline=None)
@given(**CASES)
def test_a_piecewise_step_is_never_cheaper_than_its_work_and_grows_with_decodes(
        decode: int, ctx: int, q: int, chunk_ctx: int) -> None:
    """Never under the eager formula's GPU-bound end (the unpadded GPU work plus one
    launch); one more decoding sequence never makes it faster."""
    assume(decode + 1 + q <= TOKENS)
    pw = model_for("full_and_piecewise")
    gpu_end = model_for("full_decode_only", host_launch_s=0.0, graph_launch_s=0.0)
    chunks = [(q, chunk_ctx)]
    t = pw.step(decode, decode * ctx, chunks)[0]
    assert t >= (gpu_end.step(decode, decode * ctx, chunks)[0]
                 + pw.host_launch_s) * (1 - 1e-12)
    assert pw.step(decode + 1, (decode + 1) * ctx, chunks)[0] >= t * (1 - 1e-12)


def test_the_model_refuses_piecewise_without_sizes_and_unknown_modes() -> None:
    plat = Platform(GPU, STACK, CAL)
    with pytest.raises(ValueError, match="capture_sizes"):
        build_step_time_model(plat, MODEL, 64, 8, 4096, None, "full_and_piecewise")
    with pytest.raises(ValueError, match="full_decode_only, full_and_piecewise"):
        build_step_time_model(plat, MODEL, 64, 8, 4096, (1, 2), "piecewise")


# --- the scenario and the engine -------------------------------------------------------
def test_the_scenario_refuses_piecewise_without_sizes_and_reports_the_mode() -> None:
    assert CUDAGRAPH_MODES == ("full_decode_only", "full_and_piecewise")
    with pytest.raises(ValueError, match="full_and_piecewise needs cudagraph_capture_sizes"):
        SchedulerSpec(cudagraph_mode="full_and_piecewise")
    with pytest.raises(ValueError):
        SchedulerSpec(cudagraph_mode="FULL")
    assert "cudagraph_mode" not in SchedulerSpec(cudagraph_capture_sizes=(1, 2)).describe()
    pw = SchedulerSpec(cudagraph_capture_sizes=(1, 2), cudagraph_mode="full_and_piecewise")
    assert pw.describe()["cudagraph_mode"] == "full_and_piecewise"


def test_a_scenario_file_names_the_line_of_a_bad_mode(tmp_path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("duration_s: 5\narrival: {process: poisson, rate_per_s: 1}\n"
                    "prompt: {dist: fixed, tokens: 64}\noutput: {dist: fixed, tokens: 8}\n"
                    "scheduler:\n  max_num_seqs: 8\n  cudagraph_mode: full_and_piecewise\n")
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    assert info.value.line == 7 and "cudagraph_capture_sizes" in str(info.value)
    path.write_text(path.read_text() + "  cudagraph_capture_sizes: [1, 2, 4, 8]\n")
    assert load_scenario(path).scheduler.cudagraph_mode == "full_and_piecewise"


def scenario(mode: str) -> Scenario:
    return Scenario.model_validate({
        "seed": 3, "duration_s": 4, "arrival": {"process": "poisson", "rate_per_s": 6},
        "prompt": {"dist": "uniform", "low_tokens": 20, "high_tokens": 200},
        "output": {"dist": "uniform", "low_tokens": 2, "high_tokens": 40},
        "scheduler": {"max_num_seqs": 16, "max_num_batched_tokens": 256,
                      "cudagraph_capture_sizes": [1, 2, 4, 8, 16, 32, 64, 128, 256],
                      "cudagraph_mode": mode}})


def test_a_piecewise_run_is_faster_where_mixed_steps_are_host_bound() -> None:
    """The reference stack's eager mixed steps are host-bound on an H100 (hundreds of
    launches); piecewise graphs launch attention's alone, so TTFT falls, decode alone
    is unchanged, and an engine of the other mode is refused."""
    plat = Platform(GPU, STACK, CAL.replace({"host.host_launch_cost_s": 20e-6}))
    model = loader.load_model("llama-3.2-1b")
    out = {}
    for mode in CUDAGRAPH_MODES:
        engine = build_engine(plat, model, scenario(mode))
        assert engine.step_model.piecewise == (mode == "full_and_piecewise")
        out[mode] = simulate(engine, scenario(mode))
    full, pw = out["full_decode_only"], out["full_and_piecewise"]
    assert pw["scheduler"]["cudagraph_mode"] == "full_and_piecewise"
    assert "cudagraph_mode" not in full["scheduler"]
    assert pw["latency_s"]["ttft_s"]["mean"] < full["latency_s"]["ttft_s"]["mean"]
    other = build_engine(plat, model, scenario("full_decode_only"))
    with pytest.raises(ValueError, match="CUDA-graph mode"):
        simulate(other, scenario("full_and_piecewise"))
