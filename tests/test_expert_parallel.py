"""Expert parallelism (gpusim/kernels/expert_parallel.py through step.predict): ep = 1
is today's step; a toy MoE model's per-rank expert weights, all-to-all and all-gather
bytes and busiest-rank expert GEMM worked by hand at ep = tp = 2; the memory planner;
refusals; and properties (more link bandwidth never slower; balanced routing gives
every rank tokens x top_k / ep slots; the experts' bytes per rank fall as 1 / ep)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import with_link
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpusim.capacity import memory_plan
from gpusim.errors import FieldError
from gpusim.io import calibrations, loader
from gpusim.kernels import build_kernels
from gpusim.kernels.expert_parallel import check_ep, expert_split, rank_expert_bytes
from gpusim.kernels.parallel import rank_weight_bytes, shard
from gpusim.platform import ParallelLayout, Platform
from gpusim.specs import ModelSpec
from gpusim.specs.enums import KernelKind
from gpusim.step import layout_summary, predict, predict_kernels, simulate

Q30 = "qwen3-30b-a3b"
SETTINGS = settings(max_examples=25, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


def toy(skew: float = 0.0, experts: int = 64, top_k: int = 8) -> ModelSpec:
    # h 2048, 16 heads of 128, 4 KV heads, 64 experts of I 768, top-8, 2 layers, bf16
    return ModelSpec(name="toy-moe", hidden_size=2048, num_hidden_layers=2,
                     num_attention_heads=16, num_key_value_heads=4, vocab_size=1000,
                     num_experts=experts, num_experts_per_tok=top_k,
                     moe_intermediate_size=768, routing_skew=skew)


@pytest.fixture(scope="module")
def plat():
    g, st_ = loader.load_gpu("h100-sxm"), loader.load_stack(loader.REFERENCE_STACK)
    return Platform(g, st_, calibrations.load_calibration("auto", g, st_))


def on(platform: Platform, **layout: int) -> Platform:
    return platform.with_layout(ParallelLayout(**layout))


# --- ep = 1 is today's step -------------------------------------------------------------
@pytest.mark.parametrize("name", [Q30, "qwen1.5-moe-a2.7b", "mixtral-8x7b"])
def test_ep1_is_the_single_gpu_step(plat, name):
    m = loader.load_model(name)
    ks = build_kernels(m, plat.stack, "decode", [1, 16], [1024, 4096], [1, 1])
    assert shard(ks, m, plat.stack, 1, "nccl", 1) is ks
    alone = predict_kernels(ks, m, plat).seconds
    np.testing.assert_array_equal(predict(on(plat, ep=1), m, "decode", [1, 16],
                                          [1024, 4096], [1, 1]).seconds, alone)
    assert memory_plan(plat.gpu, m).weight_bytes == m.weight_bytes


# --- by hand: the toy model at ep = tp = 2 ------------------------------------------------
def test_per_rank_expert_weights_by_hand():
    m = toy()
    expert = (2 * 768 * 2048 + 2048 * 768) * 2          # gate_up and down, bf16
    assert expert == 9_437_184
    assert rank_expert_bytes(m, 2) == 32 * expert == 301_989_888
    # a rank's layer: qkv (8 + 2 x 2 heads) x 128 x 2048, o 2048 x 1024, the router
    # 64 x 2048 and the norms whole, 32 experts; the ends: 500 vocabulary rows twice
    # (embedding, untied LM head) and the final norm
    layer = (1536 * 2048 + 2048 * 1024 + 64 * 2048 + 2 * 2048) * 2 + 301_989_888
    assert layer == 312_745_984
    assert rank_weight_bytes(m, 2, 1) == rank_weight_bytes(m, 2, 1, 2) \
        == 2 * layer + (2 * 500 * 2048 + 2048) * 2 == 629_592_064


def test_per_rank_step_kernels_and_collectives_by_hand(plat):
    m = toy()
    ks = build_kernels(m, plat.stack, "decode", [16], [1024], [1])
    rank = {k.name: k for k in shard(ks, m, plat.stack, 2, "nccl", 2)}
    # 16 tokens, 8 routed by each rank: 64 slots; uniform routing over 64 experts,
    # 32 each: the busiest rank receives 16 x 8 / 2 = 64 slots of 2048 x 2 bytes
    for name in ("moe_dispatch", "moe_combine"):
        c = rank[name].collective
        assert c.op == "all_to_all" and c.group == 2 and rank[name].kind == KernelKind.COLLECTIVE
        np.testing.assert_allclose(c.size_bytes, [64 * 2048 * 2])      # 262,144
    g = rank["moe_all_gather"].collective
    assert g.op == "all_gather"
    np.testing.assert_allclose(g.size_bytes, [16 * 2048 * 2])          # 65,536
    up = rank["experts_gate_up"]
    np.testing.assert_allclose(up.gemm.m, [64.0])
    assert up.gemm.experts == 32
    touched = 32 * (1 - (7 / 8) ** 16)      # each expert: p = 8/64 per token, 16 tokens
    np.testing.assert_allclose(up.gemm.touched, [touched])
    np.testing.assert_allclose(up.weight_bytes, [touched * 1536 * 2048 * 2])
    np.testing.assert_allclose(up.flops, [2 * 64 * 1536 * 2048])
    np.testing.assert_allclose(rank["router"].gemm.m, [8.0])          # its own 8 tokens
    assert rank["router"].weight_bytes[0] == 64 * 2048 * 2            # replicated
    # attention stays tensor-parallel, with its all-reduce
    assert rank["attention"].attention.heads == 8
    assert "o_proj_all_reduce" in rank
    names = list(rank)
    assert names.index("moe_dispatch") == names.index("experts_gate_up") - 1
    assert names.index("moe_combine") == names.index("experts_down") + 1


def test_routing_skew_loads_the_busiest_rank_in_the_step(plat):
    ks = {s: build_kernels(toy(s), plat.stack, "decode", [64], [1024], [1])
          for s in (0.0, 1.0)}
    slots = {s: {k.name: k for k in shard(ks[s], toy(s), plat.stack, 4, "nccl", 4)}
             ["experts_down"].gemm.m[0] for s in ks}
    assert slots[0.0] == pytest.approx(64 * 8 / 4)
    assert slots[1.0] > slots[0.0]


# --- the step and the planner ------------------------------------------------------------
def test_ep_step_on_qwen3(plat):
    m = loader.load_model(Q30)
    one = predict(plat, m, "decode", 16, 1024, 1)
    two = predict(on(plat, tp=2, ep=2), m, "decode", 16, 1024, 1)
    names = {k.name for k in two.kernels if k.kind == KernelKind.COLLECTIVE}
    assert {"moe_dispatch", "moe_combine", "moe_all_gather"} <= names
    assert float(two.weight_bytes[0]) < float(one.weight_bytes[0])
    tl = simulate(on(plat, tp=2, ep=2), m, "decode", 16, 1024, 1)
    assert tl.end_s == pytest.approx(float(two.seconds[0]), rel=1e-6)
    staged = on(plat, tp=2, pp=2, ep=2)      # each stage's two GPUs split its experts
    piped = predict(staged, m, "decode", 16, 1024, 1)
    assert layout_summary(piped, staged)["ep"] == 2
    assert simulate(staged, m, "decode", 16, 1024, 1).end_s == pytest.approx(
        float(piped.seconds[0]), rel=1e-6)
    plan = memory_plan(plat.gpu, m, tp=2)
    assert plan.ep == 2 and "ep=2" in plan.where
    assert plan.weight_bytes == memory_plan(plat.gpu, m, tp=2, ep=2).weight_bytes


@pytest.mark.parametrize(("model", "layout", "match"), [
    ("llama-3.1-8b", {"tp": 2, "ep": 2}, "dense"),
    (Q30, {"tp": 2}, "ep=1 with tp=2"),
    (Q30, {"tp": 4, "ep": 2}, "ep=2 with tp=4"),
    (Q30, {"tp": 1, "pp": 2, "ep": 2}, "ep=2 with tp=1"),
])
def test_splits_not_modelled_are_refused(plat, model, layout, match):
    m = loader.load_model(model)
    with pytest.raises(FieldError, match=match) as exc:
        predict(on(plat, **layout), m, "decode", 4, 128, 1)
    assert exc.value.field == "ep"


def test_ep_must_divide_the_experts():
    with pytest.raises(FieldError, match="divide the 60 experts"):
        check_ep(loader.load_model("qwen1.5-moe-a2.7b"), 8, 8)
    with pytest.raises(FieldError, match="divide"):
        rank_weight_bytes(toy(experts=6, top_k=2), 4, 1)


# --- properties ------------------------------------------------------------------------


@SETTINGS
@given(st.sampled_from([2, 4, 8]), st.sampled_from(["decode", "verify", "prefill"]),
       st.integers(1, 64), st.integers(0, 4096), st.floats(1.0, 8.0),
       st.sampled_from([0.0, 1.0]))
def test_more_link_bandwidth_is_never_slower(plat, ep, mode, b, ctx, factor, skew):
    m = loader.load_model(Q30).model_copy(update={"routing_skew": skew})
    q = {"decode": 1, "verify": 4, "prefill": 256}[mode]
    ctx = 0 if mode == "prefill" else ctx
    base = on(plat, tp=ep, ep=ep)
    slow = predict(base, m, mode, b, ctx, q).seconds[0]
    fast = predict(with_link(base, factor), m, mode, b, ctx, q).seconds[0]
    assert fast <= slow * (1 + 1e-12)


@SETTINGS
@given(st.sampled_from([1, 2, 4, 8, 16]), st.integers(1, 8), st.integers(1, 4),
       st.integers(1, 4096), st.sampled_from(["round_robin", "contiguous"]))
def test_balanced_routing_gives_every_rank_tokens_top_k_over_ep(ep, per_rank, top_k,
                                                                 tokens, placement):
    m = toy(0.0, experts=ep * per_rank * 2, top_k=min(top_k, ep * per_rank * 2))
    k = m.num_experts_per_tok
    s = expert_split(m, ep, tokens / ep, placement)
    np.testing.assert_allclose(s.busiest_slots, [tokens * k / ep], rtol=1e-9)
    np.testing.assert_allclose(s.dispatch_bytes, [tokens / ep * k * 2048 * 2], rtol=1e-9)
    assert s.experts_per_rank == m.num_experts // ep


@SETTINGS
@given(st.sampled_from([1, 2, 4, 8, 16, 32, 64]), st.sampled_from(
    [Q30, "qwen3-235b-a22b", "mixtral-8x7b", "deepseek-v3-style", "gpt-oss-120b"]))
def test_experts_bytes_per_rank_fall_as_one_over_ep(ep, name):
    m = loader.load_model(name)
    if m.num_experts % ep:
        with pytest.raises(FieldError):
            rank_expert_bytes(m, ep)
        return
    assert rank_expert_bytes(m, ep) * ep == pytest.approx(rank_expert_bytes(m, 1), rel=1e-12)


# --- the command line --------------------------------------------------------------------
def test_predict_command_shows_the_all_to_all(capsys):
    import json

    from gpusim.cli import main

    assert main(["predict", "--model", Q30, "--gpu", "h100-sxm", "--tp", "2", "--ep", "2",
                 "--batch", "16", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ep"] == 2 and 0.0 < out["collectives_share"] < 1.0
    links = {op["op"] for op in out["ops"] if op["bound"] == "link"}
    assert {"moe_dispatch", "moe_combine", "moe_all_gather", "o_proj_all_reduce"} <= links


@pytest.mark.parametrize("argv", [
    ["predict", "--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--tp", "2", "--ep", "2"],
    ["predict", "--model", Q30, "--gpu", "h100-sxm", "--tp", "2"],
])
def test_refused_splits_are_one_line_and_exit_2(argv, capsys):
    from gpusim.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpusim: error: --ep") and "\n" not in err


def test_spec_with_an_expert_parallel_target_and_a_dense_draft(capsys):
    import json

    from gpusim.cli import main

    argv = ["spec", "--gpu", "h100-sxm", "--target", Q30, "--draft", "qwen2.5-0.5b",
            "--k", "4", "--batch", "8", "--ctx", "1024", "--acceptance", "0.7",
            "--format", "json"]
    assert main([*argv, "--tp", "2", "--ep", "2"]) == 0
    two = json.loads(capsys.readouterr().out)
    assert main(argv) == 0
    one = json.loads(capsys.readouterr().out)
    assert two["verify_ms"] != one["verify_ms"] and two["draft_step_ms"] > 0
