"""ops: the kernels one forward launches, checked against hand arithmetic.

Every expected number below is worked out by hand from the models' published sizes
(the arithmetic is in the comments), never from gpusim's own helpers, and launch
counts are read off stacks/torch-hf.yaml (itself checked against
validation/harness/reference.py).

llama-3.2-1b: h=2048, L=16, H=32, Hkv=8, D=64, I=8192, V=128256, tied embeddings
  q_dim = 32*64 = 2048, kv_dim = 8*64 = 512
llama-2-7b:   h=4096, L=32, H=32, Hkv=32, D=128, I=11008, V=32000, untied
  q_dim = kv_dim = 32*128 = 4096
bf16 everywhere: 2 bytes per element.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpusim.kernels import build_kernels, check_shape, kernel_launches, step_totals

# ---------------------------------------------------------------------------------
# launches (stack file)
#   prologue: embedding 1 + rope_tables 8                                   = 9
#   layer:    input_norm 8, qkv_proj 1, rope_q 5, rope_k 5, kv_write 2,
#             attention 2, o_proj 1, residual_attn 1, post_norm 8,
#             gate_up_proj 1, silu_mul 2, down_proj 1, residual_mlp 1        = 38
#   epilogue: final_norm 8 + lm_head 1                                      = 9
#   step = 9 + 38*L + 9
# ---------------------------------------------------------------------------------
LAUNCHES = {
    "llama-3.2-1b": 9 + 38 * 16 + 9,   # = 626
    "llama-2-7b": 9 + 38 * 32 + 9,     # = 1234
}
PER_OP_LAUNCHES = {
    "embedding": 1, "rope_tables": 8, "input_norm": 8, "qkv_proj": 1, "rope_q": 5,
    "rope_k": 5, "kv_write": 2, "attention": 2, "o_proj": 1, "residual_attn": 1,
    "post_norm": 8, "gate_up_proj": 1, "silu_mul": 2, "down_proj": 1, "residual_mlp": 1,
    "final_norm": 8, "lm_head": 1,
}
LAYER_OPS = ("input_norm", "qkv_proj", "rope_q", "rope_k", "kv_write", "attention",
             "o_proj", "residual_attn", "post_norm", "gate_up_proj", "silu_mul",
             "down_proj", "residual_mlp")

# GEMM (n, k) and weight bytes n*k*2, by hand
GEMMS = {
    "llama-3.2-1b": {
        # qkv: n = q_dim + 2*kv_dim = 2048 + 1024 = 3072, k = h = 2048
        "qkv_proj": (3072, 2048, 12_582_912),       # 3072*2048*2
        "o_proj": (2048, 2048, 8_388_608),          # 2048*2048*2
        "gate_up_proj": (16384, 2048, 67_108_864),  # n = 2*I = 16384; 16384*2048*2
        "down_proj": (2048, 8192, 33_554_432),      # 2048*8192*2
        "lm_head": (128256, 2048, 525_336_576),     # 128256*2048*2 (tied: same table)
    },
    "llama-2-7b": {
        "qkv_proj": (12288, 4096, 100_663_296),     # n = 3*4096; 12288*4096*2
        "o_proj": (4096, 4096, 33_554_432),         # 4096*4096*2
        "gate_up_proj": (22016, 4096, 180_355_072),  # n = 2*11008; 22016*4096*2
        "down_proj": (4096, 11008, 90_177_536),     # 4096*11008*2
        "lm_head": (32000, 4096, 262_144_000),      # 32000*4096*2
    },
}

# whole-step weight bytes:
# llama-3.2-1b: per layer 12,582,912 + 8,388,608 + 67,108,864 + 33,554,432
#               = 121,634,816; x16 = 1,946,157,056; + lm_head 525,336,576
#               = 2,471,493,632
#   cross-check from the parameter count (1,235,814,400 params, the published 1.24B):
#     per layer params 3072*2048 + 2048*2048 + 16384*2048 + 2048*8192 + 2*2048 (norms)
#       = 6,291,456 + 4,194,304 + 33,554,432 + 16,777,216 + 4,096 = 60,821,504
#     x16 = 973,144,064; + embedding 128256*2048 = 262,668,288; + final norm 2048
#       = 1,235,814,400
#     read per step = params - embedding table (the lookup reads T rows, counted as
#     activations) + lm_head (tied: the same table read again as a GEMM weight)
#     - norm vectors (read by the elementwise kernels, not counted as weights:
#     16*4096 + 2048 = 67,584)
#       = (1,235,814,400 - 262,668,288 + 262,668,288 - 67,584) * 2 = 2,471,493,632
# llama-2-7b:   per layer 100,663,296 + 33,554,432 + 180,355,072 + 90,177,536
#               = 404,750,336; x32 = 12,952,010,752; + lm_head 262,144,000
#               = 13,214,154,752
#   params: per layer 12288*4096 + 4096*4096 + 22016*4096 + 4096*11008 + 8192
#       = 50,331,648 + 16,777,216 + 90,177,536 + 45,088,768 + 8,192 = 202,383,360
#     x32 = 6,476,267,520; + embedding 131,072,000 + lm_head 131,072,000 + 4096
#       = 6,738,415,616 (the published 6.74B)
#     read = (6,738,415,616 - 131,072,000 (embedding table) - (32*8192 + 4096)) * 2
#          = 13,214,154,752 (lm_head is already among the params: untied)
STEP_WEIGHT_BYTES = {"llama-3.2-1b": 2_471_493_632, "llama-2-7b": 13_214_154_752}
PARAM_COUNT = {"llama-3.2-1b": 1_235_814_400, "llama-2-7b": 6_738_415_616}


def _by_name(kernels):
    out = {k.name: k for k in kernels}
    assert len(out) == len(kernels), "op names must be unique within a stack"
    return out


def _one(x) -> float:
    arr = np.asarray(x, dtype=np.float64).ravel()
    assert arr.size == 1
    return float(arr[0])


CASES = [
    # (model, mode, batch, ctx, q)
    ("llama-3.2-1b", "decode", 4, 1000, 1),
    ("llama-3.2-1b", "verify", 2, 500, 5),
    ("llama-3.2-1b", "prefill", 1, 0, 128),
    ("llama-2-7b", "decode", 4, 1000, 1),
    ("llama-2-7b", "verify", 2, 500, 5),
    ("llama-2-7b", "prefill", 1, 0, 128),
]


@pytest.mark.parametrize(("model", "mode", "batch", "ctx", "q"), CASES)
def test_launch_counts(models, stack, model, mode, batch, ctx, q):
    kernels = build_kernels(models[model], stack, mode, batch, ctx, q)
    assert kernel_launches(kernels) == LAUNCHES[model]
    by = _by_name(kernels)
    assert {n: k.launches for n, k in by.items()} == PER_OP_LAUNCHES
    layers = models[model].num_hidden_layers
    for name, k in by.items():
        assert k.section == ("layer" if name in LAYER_OPS else
                             "prologue" if name in ("embedding", "rope_tables") else
                             "epilogue")
        assert k.repeat == (layers if name in LAYER_OPS else 1)
    # the layer's ops appear in the order the forward runs them
    assert [k.name for k in kernels if k.section == "layer"] == list(LAYER_OPS)


@pytest.mark.parametrize(("model", "mode", "batch", "ctx", "q"), CASES)
def test_gemm_shapes_and_weight_bytes(models, stack, model, mode, batch, ctx, q):
    by = _by_name(build_kernels(models[model], stack, mode, batch, ctx, q))
    tokens = batch * q
    for name, (n, k, wbytes) in GEMMS[model].items():
        g = by[name].gemm
        assert g is not None
        # prefill keeps only the last position's logits: lm_head m = batch
        m = batch if (name == "lm_head" and mode == "prefill") else tokens
        assert (_one(g.m), g.n, g.k) == (m, n, k), name
        assert _one(by[name].weight_bytes) == wbytes, name
        assert _one(by[name].flops) == 2 * m * n * k, name
        # x [m, k] read, out [m, n] written, bf16
        assert _one(by[name].act_bytes) == (m * k + m * n) * 2, name
        assert _one(by[name].kv_bytes) == 0
    # no weight bytes outside the GEMMs (embedding reads rows: activations)
    for name, kern in by.items():
        if name not in GEMMS[model]:
            assert _one(kern.weight_bytes) == 0, name


def test_gemm_flops_by_hand_examples(models, stack):
    # llama-3.2-1b decode batch 4: qkv 2*4*3072*2048 = 50,331,648
    by = _by_name(build_kernels(models["llama-3.2-1b"], stack, "decode", 4, 1000, 1))
    assert _one(by["qkv_proj"].flops) == 50_331_648
    # lm_head 2*4*128256*2048 = 2,101,346,304
    assert _one(by["lm_head"].flops) == 2_101_346_304
    # prefill batch 1, q 128: lm_head only the last position: 2*1*128256*2048
    by = _by_name(build_kernels(models["llama-3.2-1b"], stack, "prefill", 1, 0, 128))
    assert _one(by["lm_head"].flops) == 525_336_576
    # ... but qkv runs on all 128 tokens: 2*128*3072*2048 = 1,610,612,736
    assert _one(by["qkv_proj"].flops) == 1_610_612_736
    # llama-2-7b verify batch 2 q 5 (10 tokens): gate_up 2*10*22016*4096 = 1,803,550,720
    by = _by_name(build_kernels(models["llama-2-7b"], stack, "verify", 2, 500, 5))
    assert _one(by["gate_up_proj"].flops) == 1_803_550_720


# attention: KV bytes 2 (K and V) * batch * (ctx + q) * kv_heads * head_dim * 2 bytes;
# flops 4 * batch * H * D * (q*ctx + q(q+1)/2); activations: read q, write o
ATTENTION = {
    # 2*4*1001*8*64*2 = 8,200,192;  4*4*32*64 = 32,768 x (1000 + 1) = 32,800,768
    ("llama-3.2-1b", "decode"): (8_200_192, 32_800_768),
    # 2*2*505*8*64*2 = 2,068,480;   4*2*32*64 = 16,384 x (5*500 + 15) = 41,205,760
    ("llama-3.2-1b", "verify"): (2_068_480, 41_205_760),
    # 2*1*128*8*64*2 = 262,144;     4*1*32*64 = 8,192 x (0 + 128*129/2 = 8256) = 67,633,152
    ("llama-3.2-1b", "prefill"): (262_144, 67_633_152),
    # 2*4*1001*32*128*2 = 65,601,536; 4*4*32*128 = 65,536 x 1001 = 65,601,536
    ("llama-2-7b", "decode"): (65_601_536, 65_601_536),
    # 2*2*505*32*128*2 = 16,547,840;  4*2*32*128 = 32,768 x 2515 = 82,411,520
    ("llama-2-7b", "verify"): (16_547_840, 82_411_520),
    # 2*1*128*32*128*2 = 2,097,152;   4*1*32*128 = 16,384 x 8256 = 135,266,304
    ("llama-2-7b", "prefill"): (2_097_152, 135_266_304),
}


@pytest.mark.parametrize(("model", "mode", "batch", "ctx", "q"), CASES)
def test_attention_bytes_and_flops(models, stack, model, mode, batch, ctx, q):
    att = _by_name(build_kernels(models[model], stack, mode, batch, ctx, q))["attention"]
    kv, flops = ATTENTION[(model, mode)]
    assert _one(att.kv_bytes) == kv
    assert _one(att.flops) == flops
    q_dim = {"llama-3.2-1b": 2048, "llama-2-7b": 4096}[model]
    assert _one(att.act_bytes) == 2 * batch * q * q_dim * 2  # q read + o written, bf16
    assert _one(att.weight_bytes) == 0
    a = att.attention
    assert a is not None
    assert a.mode == mode
    assert (_one(a.batch), _one(a.q), _one(a.kv_len)) == (batch, q, ctx + q)
    assert (a.heads, a.kv_heads, a.head_dim) == {
        "llama-3.2-1b": (32, 8, 64), "llama-2-7b": (32, 32, 128)}[model]


def test_elementwise_bytes_llama_1b_decode(models, stack):
    # decode batch 4: T = 4 tokens, h = 2048, q_dim = 2048, kv_dim = 512, I = 8192
    by = _by_name(build_kernels(models["llama-3.2-1b"], stack, "decode", 4, 1000, 1))
    expected = {
        "embedding": 4 * 2048 * 4,       # read row 2 B + write 2 B per element = 32,768
        "rope_tables": 1 * 64 * 32,      # [q, D] table, 32 B/element = 2,048
        "input_norm": 4 * 2048 * 36,     # 294,912
        "rope_q": 4 * 2048 * 20,         # 163,840
        "rope_k": 4 * 512 * 20,          # 40,960
        "kv_write": 4 * 512 * 8,         # K and V: 2 x (2 read + 2 write) = 16,384
        "residual_attn": 4 * 2048 * 6,   # 49,152
        "post_norm": 4 * 2048 * 36,
        "silu_mul": 4 * 8192 * 10,       # 327,680
        "residual_mlp": 4 * 2048 * 6,
        "final_norm": 4 * 2048 * 36,
    }
    for name, value in expected.items():
        assert _one(by[name].act_bytes) == value, name
        assert _one(by[name].bytes) == value, name


def test_elementwise_bytes_llama_2_7b_prefill(models, stack):
    # prefill batch 1, q 128: T = 128, h = 4096, kv_dim = 4096, I = 11008
    by = _by_name(build_kernels(models["llama-2-7b"], stack, "prefill", 1, 0, 128))
    assert _one(by["input_norm"].act_bytes) == 128 * 4096 * 36     # 18,874,368
    assert _one(by["rope_k"].act_bytes) == 128 * 4096 * 20         # 10,485,760
    assert _one(by["silu_mul"].act_bytes) == 128 * 11008 * 10      # 14,090,240
    assert _one(by["rope_tables"].act_bytes) == 128 * 128 * 32     # [q, D], D = 128
    # the final norm runs on every position (only lm_head is cut to the last one)
    assert _one(by["final_norm"].act_bytes) == 128 * 4096 * 36


@pytest.mark.parametrize(("model", "mode", "batch", "ctx", "q"), CASES)
def test_step_totals(models, stack, model, mode, batch, ctx, q):
    kernels = build_kernels(models[model], stack, mode, batch, ctx, q)
    tot = step_totals(kernels)
    # weights: every GEMM weight once per step, whatever the shape
    assert _one(tot["weight_bytes"]) == STEP_WEIGHT_BYTES[model]
    # KV: the attention kernel's bytes x layers
    kv, att_flops = ATTENTION[(model, mode)]
    layers = {"llama-3.2-1b": 16, "llama-2-7b": 32}[model]
    assert _one(tot["kv_bytes"]) == kv * layers
    # flops: 2 per GEMM weight per token (lm_head: per output position) + attention
    # + 1 per streamed element of the elementwise ops
    tokens = batch * q
    out_tokens = batch if mode == "prefill" else tokens
    g = GEMMS[model]
    layer_gemm_params = sum(n * k for name, (n, k, _) in g.items() if name != "lm_head")
    gemm_flops = 2 * tokens * layer_gemm_params * layers + 2 * out_tokens * g["lm_head"][0] \
        * g["lm_head"][1]
    elementwise = sum(_one(k.flops) * k.repeat for k in kernels
                      if k.kind in ("elementwise", "embedding"))
    assert _one(tot["flops"]) == gemm_flops + att_flops * layers + elementwise
    assert _one(tot["bytes"]) == _one(tot["weight_bytes"] + tot["kv_bytes"]
                                      + tot["act_bytes"])


@pytest.mark.parametrize("model", ["llama-3.2-1b", "llama-2-7b"])
def test_weight_bytes_match_parameter_count(models, stack, model):
    spec = models[model]
    # the model's own parameter count agrees with the published one (hand numbers)
    assert spec.param_count == PARAM_COUNT[model]
    h, layers, vocab = spec.hidden_size, spec.num_hidden_layers, spec.vocab_size
    embedding_table = vocab * h
    lm_head = vocab * h
    norms = layers * 2 * h + h
    tied_extra = lm_head if spec.tie_word_embeddings else 0
    expected = (spec.param_count - embedding_table + tied_extra - norms) * 2
    tot = step_totals(build_kernels(spec, stack, "decode", 1, 0, 1))
    assert _one(tot["weight_bytes"]) == expected == STEP_WEIGHT_BYTES[model]


def test_vectorised_equals_one_call_per_shape(models, stack):
    rng = np.random.default_rng(7)
    for model in ("llama-3.2-1b", "llama-2-7b"):
        for mode in ("decode", "verify", "prefill"):
            n = 9
            b = rng.integers(1, 64, n)
            c = np.zeros(n, int) if mode == "prefill" else rng.integers(0, 4000, n)
            q = np.ones(n, int) if mode == "decode" else rng.integers(1, 300, n)
            vec = build_kernels(models[model], stack, mode, b, c, q)
            for i in range(n):
                one = build_kernels(models[model], stack, mode, int(b[i]), int(c[i]),
                                    int(q[i]))
                assert [k.name for k in one] == [k.name for k in vec]
                for kv, k1 in zip(vec, one, strict=True):
                    assert kv.flops.shape == (n,)
                    for field in ("flops", "weight_bytes", "kv_bytes", "act_bytes"):
                        assert getattr(kv, field)[i] == _one(getattr(k1, field)), \
                            (model, mode, kv.name, field)
                    if kv.gemm is not None:
                        assert kv.gemm.m[i] == _one(k1.gemm.m)
                    if kv.attention is not None:
                        assert kv.attention.kv_len[i] == _one(k1.attention.kv_len)


def test_scalars_broadcast_against_arrays(models, stack):
    # one array argument, the others scalars: broadcast to the array's length
    ks = build_kernels(models["llama-3.2-1b"], stack, "decode", np.array([1, 2, 3]), 100, 1)
    att = _by_name(ks)["attention"]
    # 2 * b * 101 * 512 * 2 = 206,848 * b
    np.testing.assert_array_equal(att.kv_bytes, [206_848, 413_696, 620_544])


def test_kernels_are_pure(models, stack):
    a = build_kernels(models["llama-3.2-1b"], stack, "verify", 3, 77, 4)
    b = build_kernels(models["llama-3.2-1b"], stack, "verify", 3, 77, 4)
    for ka, kb in zip(a, b, strict=True):
        assert ka.name == kb.name
        np.testing.assert_array_equal(ka.bytes, kb.bytes)
        np.testing.assert_array_equal(ka.flops, kb.flops)


# ---------------------------------------------------------------------------------
# check_shape: ValueError naming the field and the bad value
# ---------------------------------------------------------------------------------
def _arr(v):
    return np.atleast_1d(np.asarray(v, dtype=np.float64))


@pytest.mark.parametrize(("mode", "batch", "ctx", "q", "field", "shown"), [
    ("decode", 0, 10, 1, "batch", "batch=0"),
    ("decode", -3, 10, 1, "batch", "batch=-3"),
    ("decode", 1.5, 10, 1, "batch", "batch=1.5"),
    ("decode", float("nan"), 10, 1, "batch", "batch=nan"),
    ("decode", float("inf"), 10, 1, "batch", "batch=inf"),
    ("verify", 1, -1, 3, "ctx", "ctx=-1"),
    ("verify", 1, 2.5, 3, "ctx", "ctx=2.5"),
    ("verify", 1, 10, 0, "q", "q=0"),
    ("decode", 1, 10, 2, "q", "q=2"),
    ("prefill", 1, 5, 16, "ctx", "ctx=5"),
])
def test_check_shape_errors_name_field_and_value(mode, batch, ctx, q, field, shown):
    with pytest.raises(ValueError, match=field) as err:
        check_shape(mode, _arr(batch), _arr(ctx), _arr(q))
    assert str(err.value).startswith(shown)


def test_check_shape_bad_mode():
    with pytest.raises(ValueError, match=r"mode='train'.*decode, verify, prefill"):
        check_shape("train", _arr(1), _arr(0), _arr(1))


def test_check_shape_reports_first_bad_entry_of_an_array():
    with pytest.raises(ValueError, match=r"^batch=-2 "):
        check_shape("decode", _arr([1, 4, -2, 0]), _arr([0, 0, 0, 0]), _arr([1, 1, 1, 1]))


def test_build_kernels_checks_shapes(models, stack):
    with pytest.raises(ValueError, match="q=3 must be 1 for decode"):
        build_kernels(models["llama-3.2-1b"], stack, "decode", 1, 10, 3)
    with pytest.raises(ValueError, match="ctx=7 must be 0 for prefill"):
        build_kernels(models["llama-3.2-1b"], stack, "prefill", 1, 7, 3)


def test_valid_edge_shapes_accepted():
    check_shape("decode", _arr(1), _arr(0), _arr(1))      # empty cache
    check_shape("verify", _arr(1), _arr(0), _arr(1))      # verify with q 1 is allowed
    check_shape("prefill", _arr(1), _arr(0), _arr(1))


def test_tree_mode_is_a_verify_step_with_a_tree_attention(models, stack):
    # a token tree's verify: every kernel as the causal verify's, the attention's mode
    # "tree" (its boolean mask takes another kernel); rows keep decode/verify/prefill
    m = models["llama-3.2-1b"]
    tree = build_kernels(m, stack, "tree", [4, 16], [1024, 4096], [7, 31])
    verify = build_kernels(m, stack, "verify", [4, 16], [1024, 4096], [7, 31])
    assert [k.name for k in tree] == [k.name for k in verify]
    for kt, kv in zip(tree, verify, strict=True):
        np.testing.assert_array_equal(kt.flops, kv.flops)
        np.testing.assert_array_equal(kt.bytes, kv.bytes)
        if kt.attention is not None:
            assert (kt.attention.mode, kv.attention.mode) == ("tree", "verify")
            # each runs the family the stack names for its mode
            assert (kt.attention.family, kv.attention.family) == ("cudnn_masked", "fa2")
    from gpusim.specs.enums import ROW_MODES as MODES
    assert "tree" not in MODES
