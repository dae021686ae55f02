"""Tensor parallelism (gpusim/kernels/parallel.py through step.predict): tp = 1 is
today's step; per-rank weights, KV heads, flops and collectives of Llama 3.1 70B at
tp 2, 4 and 8 worked by hand; the memory planner per GPU; refusals; and physical
properties (more link bandwidth never slower; the collectives' share grows with tp)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import with_link
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpusim.capacity import memory_plan
from gpusim.errors import ConfigError, FieldError
from gpusim.io import calibrations, loader
from gpusim.kernels import build_kernels
from gpusim.kernels.parallel import (
    rank_kv_bytes_per_token,
    rank_sizes,
    rank_weight_bytes,
    shard,
    stage_layers,
)
from gpusim.platform import ParallelLayout, Platform
from gpusim.specs.enums import KernelKind
from gpusim.step import predict, predict_kernels

L70 = "llama-3.1-70b"
# Llama 3.1 70B: h 8192, 64 heads, 8 KV heads, head_dim 128, I 28672, vocab 128256, 80
# layers, bf16. Per rank (hand-worked): qkv n = (64/tp + 2 x KV heads per rank) x 128,
# o k = 64/tp x 128, gate_up n = 2 x 28672/tp, down k = 28672/tp, vocab 128256/tp rows.
HAND = {
    # tp: (bytes of one layer's four matrices on a rank, embedding rows per rank,
    #      weights per GPU, KV bytes per token per GPU)
    2: (83_886_080 + 67_108_864 + 469_762_048 + 234_881_024, 64_128, 70_555_025_408,
        163_840),
    4: (41_943_040 + 33_554_432 + 234_881_024 + 117_440_512, 32_064, 35_278_831_616,
        81_920),
    8: (20_971_520 + 16_777_216 + 117_440_512 + 58_720_256, 16_032, 17_640_734_720,
        40_960),
}


@pytest.fixture(scope="module")
def m70():
    return loader.load_model(L70)


@pytest.fixture(scope="module")
def plat():
    g, st_ = loader.load_gpu("h100-sxm"), loader.load_stack(loader.REFERENCE_STACK)
    return Platform(g, st_, calibrations.load_calibration("auto", g, st_))


def on(platform: Platform, **layout: int) -> Platform:
    return platform.with_layout(ParallelLayout(**layout))


def test_tp1_is_the_single_gpu_step(plat, m70):
    kernels = build_kernels(m70, plat.stack, "decode", [1, 64], [1024, 4096], 1)
    assert shard(kernels, m70, plat.stack, 1) is kernels
    a = predict(plat, m70, "decode", [1, 64], [1024, 4096], 1)
    b = predict_kernels(kernels, m70, plat)
    np.testing.assert_array_equal(a.seconds, b.seconds)
    assert list(a.by_op) == list(b.by_op)
    assert memory_plan(plat.gpu, m70, 0.1).weight_bytes == m70.weight_bytes


@pytest.mark.parametrize("tp", [2, 4, 8])
def test_per_rank_weights_and_kv_by_hand(tp, m70):
    layer, vocab_rows, weights, kv = HAND[tp]
    r = rank_sizes(m70, tp)
    assert (r.heads, r.kv_heads, r.intermediate, r.vocab) == (
        64 // tp, 8 // tp, 28672 // tp, vocab_rows)
    norms = 2 * 8192 * 2
    assert weights == 80 * (layer + norms) + 2 * vocab_rows * 8192 * 2 + 8192 * 2
    assert rank_weight_bytes(m70, tp, 1) == weights
    assert rank_kv_bytes_per_token(m70, tp, 1) == kv == 2 * 80 * (8 // tp) * 128 * 2


@pytest.mark.parametrize("tp", [2, 4, 8])
def test_per_rank_step_bytes_flops_and_collectives_by_hand(tp, plat, m70):
    layer, vocab_rows, _, _ = HAND[tp]
    b, ctx = 4, 1000
    ks = shard(build_kernels(m70, plat.stack, "decode", b, ctx, 1), m70, plat.stack, tp)
    by = {k.name: k for k in ks}
    gemm_w = sum(float(k.weight_bytes[0]) * k.repeat for k in ks if k.kind == KernelKind.GEMM)
    assert gemm_w == 80 * layer + vocab_rows * 8192 * 2
    # a GEMM's flops: 2 m n k with m = 4 tokens; bf16 weights: 2 bytes per n k
    gemm_f = sum(float(k.flops[0]) * k.repeat for k in ks if k.kind == KernelKind.GEMM)
    assert gemm_f == pytest.approx(b * gemm_w)
    att = by["attention"]
    assert (att.attention.heads, att.attention.kv_heads) == (64 // tp, 8 // tp)
    # K and V of ctx + 1 positions, this rank's KV heads
    assert float(att.kv_bytes[0]) == 2 * b * (ctx + 1) * (8 // tp) * 128 * 2
    # two all-reduces per layer of the 4 tokens' hidden states, one after the embedding;
    # the LM head gathers the logits
    for name in ("o_proj_all_reduce", "down_proj_all_reduce", "embedding_all_reduce"):
        c = by[name].collective
        assert (c.op, c.group, float(c.size_bytes[0])) == ("all_reduce", tp, b * 8192 * 2)
    assert by["o_proj_all_reduce"].repeat == 80
    gather = by["lm_head_all_gather"].collective
    assert float(gather.size_bytes[0]) == b * vocab_rows * tp * 2
    names = [k.name for k in ks]
    assert names.index("o_proj_all_reduce") == names.index("o_proj") + 1


def test_kv_heads_replicate_past_their_count(plat, m70):
    # tp 16 > 8 KV heads: each rank holds one KV head (replicated twice) and 4 query heads
    ks = shard(build_kernels(m70, plat.stack, "decode", 1, 100, 1), m70, plat.stack, 16)
    by = {k.name: k for k in ks}
    assert by["qkv_proj"].gemm.n == (4 + 2) * 128
    assert by["attention"].attention.kv_heads == 1
    assert rank_kv_bytes_per_token(m70, 16, 1) == 2 * 80 * 1 * 128 * 2


def test_splits_the_model_does_not_allow_are_refused(plat, m70):
    for tp, text in ((3, "64 attention heads"), (128, "")):
        with pytest.raises(FieldError) as exc:
            rank_sizes(m70, tp)
        assert exc.value.field == "tp" and text in str(exc.value)
    with pytest.raises(FieldError, match="expert parallelism"):
        predict(on(plat, tp=2, ep=2), m70, "decode", 1, 10, 1)
    with pytest.raises(FieldError) as exc:
        predict(on(plat, pp=81), m70, "decode", 1, 10, 1)
    assert exc.value.field == "pp"


def test_a_layout_beyond_a_node_needs_a_network(plat):
    from conftest import toy_gpu

    with pytest.raises(FieldError, match=r"no links\.network"):
        Platform(toy_gpu(), plat.stack, layout=ParallelLayout(tp=2))


def test_memory_per_gpu_and_the_smallest_layout_that_fits(plat, m70):
    g = plat.gpu
    with pytest.raises(ConfigError) as exc:
        memory_plan(g, m70, 0.1).check_weights()
    assert "141.11 GB" in str(exc.value) and "tp=2, pp=1 on 2 GPUs" in str(exc.value)
    memory_plan(g, m70, 0.1, tp=2).check_weights()
    m405 = loader.load_model("llama-3.1-405b")
    with pytest.raises(ConfigError, match=r"8 x h100-sxm \(tp=8, pp=1, per GPU\)"):
        memory_plan(g, m405, 0.1, tp=8).check_weights()
    memory_plan(loader.load_gpu("h200"), m405, 0.1, tp=8).check_weights()


def test_stage_layers_follow_vllm():
    assert stage_layers(80, 2) == [40, 40]
    assert stage_layers(126, 4) == [31, 32, 32, 31]
    assert stage_layers(10, 3) == [3, 4, 3]
    assert sum(stage_layers(126, 5)) == 126


def test_pipeline_weights_split_by_stage(m70):
    # 2 stages of 40 layers: the first holds the embedding, the last the LM head
    w = rank_weight_bytes(m70, 1, 2)
    layer = 2 * HAND[2][0] + 2 * 8192 * 2          # tp 1: twice a tp-2 rank's matrices
    assert w == 40 * layer + 128256 * 8192 * 2 + 8192 * 2


# --- properties ------------------------------------------------------------------------
SETTINGS = settings(max_examples=25, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


@SETTINGS
@given(st.sampled_from([2, 4, 8]), st.sampled_from(["decode", "verify", "prefill"]),
       st.integers(1, 64), st.integers(0, 4096), st.floats(1.0, 8.0),
       st.sampled_from(["graph", "eager"]))
def test_more_link_bandwidth_is_never_slower(plat, m70, tp, mode, b, ctx, factor, launch):
    q = {"decode": 1, "verify": 4, "prefill": 256}[mode]
    ctx = 0 if mode == "prefill" else ctx
    base = on(plat, tp=tp).with_launch(launch)
    slow = predict(base, m70, mode, b, ctx, q).seconds[0]
    fast = predict(with_link(base, factor), m70, mode, b, ctx, q).seconds[0]
    assert fast <= slow * (1 + 1e-12)


@SETTINGS
@given(st.sampled_from(["llama-3.1-8b", L70, "llama-3.1-405b"]), st.integers(0, 8192),
       st.sampled_from(["h100-sxm", "h200"]))
def test_collectives_share_grows_with_tp_at_batch_1(plat, model_name, ctx, gpu_name):
    m = loader.load_model(model_name)
    g = loader.load_gpu(gpu_name)
    base = Platform(g, plat.stack, plat.calibration.model_copy(update={"gpu": g.name}))
    shares = []
    for tp in (1, 2, 4, 8):
        p = predict(on(base, tp=tp), m, "decode", 1, ctx, 1)
        coll = sum(float(c.seconds[0]) for n, c in p.by_op.items()
                   if n.endswith(("all_reduce", "all_gather")))
        shares.append(coll / float(p.seconds[0]))
    assert shares[0] == 0.0
    assert all(a < b for a, b in itertools.pairwise(shares)), shares


# --- the predict contract's tp column and the command line -------------------------------
def _rows(tmp_path, text: str) -> list[dict[str, str]]:
    import csv

    from gpusim.cli import main

    src, out = tmp_path / "rows.csv", tmp_path / "preds.csv"
    src.write_text(text)
    assert main(["predict", "--gpu", "h100-sxm", "--in", str(src), "--out", str(out)]) == 0
    return list(csv.DictReader(out.open()))


def test_rows_tp_column(tmp_path):
    plain = _rows(tmp_path, "model,mode,batch,ctx,q\nllama-3.1-8b,decode,4,1024,1\n")
    rows = _rows(tmp_path, "model,mode,batch,ctx,q,tp\nllama-3.1-8b,decode,4,1024,1,1\n"
                 f"{L70},decode,4,1024,1,8\n{L70},prefill,1,0,512,4\n"
                 "llama-3.1-8b,decode,4,1024,1,\n")
    assert rows[0]["predicted_ms"] == plain[0]["predicted_ms"] == rows[3]["predicted_ms"]
    assert [r["tp"] for r in rows] == ["1", "8", "4", ""]
    # 70B at tp 8: one rank's weights (the step streams them all but the embedding)
    assert float(rows[1]["weight_bytes"]) == pytest.approx(80 * HAND[8][0] + 16_032 * 8192 * 2,
                                                           rel=1e-5)


def test_rows_whose_layout_does_not_fit_name_their_line(tmp_path, capsys):
    from gpusim.cli import main

    src = tmp_path / "rows.csv"
    src.write_text(f"model,mode,batch,ctx,q,tp\n{L70},decode,1,1024,1,8\n"
                   f"{L70},decode,1,1024,1,1\n")
    assert main(["predict", "--gpu", "h100-sxm", "--in", str(src), "--out",
                 str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{src}:3: model: {L70} does not fit on h100-sxm" in err
    assert "tp=2, pp=1 on 2 GPUs" in err and "\n" not in err


def test_predict_command_shows_the_collectives(capsys):
    import json

    from gpusim.cli import main

    assert main(["predict", "--gpu", "h200", "--model", L70, "--tp", "4", "--batch", "8",
                 "--stack", "torch-hf", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tp"] == 4 and 0.0 < out["collectives_share"] < 1.0
    links = [op for op in out["ops"] if op["bound"] == "link"]
    assert {op["op"] for op in links} == {"embedding_all_reduce", "o_proj_all_reduce",
                                          "down_proj_all_reduce", "lm_head_all_gather"}
    assert main(["predict", "--gpu", "h100-sxm", "--model", L70, "--tp", "4", "--pp", "2",
                 "--micro-batches", "2", "--batch", "8", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["gpus"] == 8 and len(out["send_ms"]) == 1 and 0 < out["bubble"] < 1


@pytest.mark.parametrize(("argv", "flag"), [
    (["predict", "--gpu", "h100-sxm", "--model", L70, "--tp", "3"], "--tp"),
    (["predict", "--gpu", "h100-sxm", "--model", L70], "--model"),
    (["predict", "--gpu", "h100-sxm", "--model", L70, "--tp", "2", "--ep", "2"], "--ep"),
    (["predict", "--gpu", "l40s", "--model", L70, "--tp", "16"], "--tp"),
    (["spec", "--gpu", "h100-sxm", "--target", L70, "--draft", "llama-3.2-1b", "--tp", "4",
      "--pp", "2"], "--pp"),
    (["serve", "--gpu", "h100-sxm", "--model", L70, "--rate", "1", "--duration-s", "1",
      "--prompt-dist", "16", "--output-dist", "4", "--quiet"], "--"),
])
def test_bad_layouts_are_one_line_and_exit_2(argv, flag, capsys):
    from gpusim.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpusim: error: ") and "\n" not in err
    assert flag in err or "does not fit" in err


# --- expert parallelism's pieces -------------------------------------------------------
def _moe(skew: float = 0.0):
    from gpusim.specs import ModelSpec

    return ModelSpec(name="toy-moe", hidden_size=2048, num_hidden_layers=2,
                     num_attention_heads=16, num_key_value_heads=4, vocab_size=1000,
                     num_experts=64, num_experts_per_tok=8, moe_intermediate_size=768,
                     routing_skew=skew)


def test_expert_split_uniform_routing_by_hand():
    from gpusim.kernels.parallel import expert_split

    s = expert_split(_moe(), 8, [1, 64])
    # 8 ranks x T tokens x 8 picks spread evenly: T x 8 slots on each rank
    np.testing.assert_allclose(s.busiest_slots, [8.0, 512.0])
    # 8 slots over a rank's 8 experts, each taken with p = 1/8: 8 (1 - (7/8)^8)
    np.testing.assert_allclose(s.busiest_touched[0], 8 * (1 - (1 - 1 / 8) ** 8))
    assert s.experts_per_rank == 8
    np.testing.assert_allclose(s.dispatch_bytes, np.array([1, 64]) * 8 * 2048 * 2)


def test_routing_skew_loads_the_busiest_rank():
    from gpusim.kernels.parallel import expert_split

    even = expert_split(_moe(), 8, [64]).busiest_slots[0]
    spread = expert_split(_moe(1.0), 8, [64]).busiest_slots[0]
    packed = expert_split(_moe(1.0), 8, [64], "contiguous").busiest_slots[0]
    assert even < spread < packed <= 64 * 8 * 8
    with pytest.raises(FieldError):
        expert_split(_moe(), 3, [1])
    with pytest.raises(FieldError, match="dense"):
        expert_split(loader.load_model(L70), 2, [1])


@pytest.mark.parametrize("name", ["llama-3.1-8b", "llama-3.2-1b", "qwen2.5-7b", L70])
def test_one_gpu_holds_the_whole_model(name):
    # llama-3.2-1b ties its embeddings: one table on one GPU, one per end of a pipeline
    m = loader.load_model(name)
    assert rank_weight_bytes(m, 1, 1) == m.weight_bytes
    table = m.vocab_size * m.hidden_size * m.dtype_bytes
    two = rank_weight_bytes(m, 1, 2)
    assert two < m.weight_bytes and two >= m.weight_bytes / 2 - table
