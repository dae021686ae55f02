"""validation/harness/{fused_forward,quant_forward,moe_forward,bench_quant_moe}.py on the CPU.

The quantized forwards against the float32 forward of the unquantized weights (close,
but measurably further than bf16: quantization happened); each projection against its
own dequantized float32 oracle (tight: the kernel, packing and scales are right); the
MoE forward against a float32 per-token loop over its top-k experts; the campaign's
files. The same torch ops run here as on the GPU (the int4 ops under their CPU names).
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import shutil
import sys
import types
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

HARNESS = Path(__file__).resolve().parents[1] / "validation" / "harness"
if str(HARNESS) not in sys.path:
    sys.path.insert(0, str(HARNESS))

import bench_quant_moe as bq  # noqa: E402
import fused_forward as ff  # noqa: E402
import moe_forward as mf  # noqa: E402
import quant_forward as qf  # noqa: E402
import reference  # noqa: E402
from bench_common import KERNELS_COLUMNS, STEPS_COLUMNS  # noqa: E402

# (mode, batch, ctx, q)
STEPS = [("decode", 2, 7, 1), ("verify", 2, 5, 4), ("prefill", 2, 0, 6)]
MAX_LEN = 24
STEP_IDS = [s[0] for s in STEPS]


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref).norm() / ref.norm())


def _tokens(shape: reference.Shape, b: int, q: int) -> torch.Tensor:
    return torch.randint(0, shape.vocab_size, (b, q), generator=torch.Generator().manual_seed(5))


# ----------------------------------------------------------------------------- quantized

@pytest.fixture(scope="module")
def dense():
    shape = reference.Shape.from_dict(bq.TINY)
    return shape, reference.Weights(shape, "cpu", torch.bfloat16, seed=3)


def _run_dense(shape, w, stack: str, step, **opts):
    mode, b, ctx, q = step
    model = qf.from_weights(w, stack, **opts)
    cache = reference.KVCache(shape, b, MAX_LEN, "cpu", torch.bfloat16, seed=4)
    k0, v0 = cache.k.clone(), cache.v.clone()
    tokens = _tokens(shape, b, q)
    out = ff.forward(model, cache, tokens, ctx, mode)
    ref = reference.reference_forward_fp32(w, k0, v0, tokens, ctx, mode)
    return model, out, ref


# quantization error of the logits: fp8 e4m3 rounds weights and activations to 3
# mantissa bits (~3% here), int4 group 128 to 16 levels per group (~9%), int8 to 255
# levels (~0.8%); bf16 alone is ~0.5%
@pytest.mark.parametrize("step", STEPS, ids=STEP_IDS)
@pytest.mark.parametrize("stack,lo,hi", [("torch-fp8", 0.012, 0.08), ("torch-int4", 0.03, 0.2),
                                         ("torch-int8wo", 0.0055, 0.03)])
def test_quantized_forward_near_fp32_and_off_bf16(dense, step, stack, lo, hi):
    shape, w = dense
    _, base, ref = _run_dense(shape, w, "torch-fused", step)
    model, out, _ = _run_dense(shape, w, stack, step, int8wo_compiled=False)
    mode, b, _, q = step
    assert out.shape == ref.shape == ((b if mode == "prefill" else b * q), shape.vocab_size)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert model.weight_dtype == qf.WEIGHT_DTYPE[stack]
    err, err_bf16 = _rel(out, ref), _rel(base, ref)
    assert err_bf16 < 1e-2
    assert lo < err < hi, (err, err_bf16)
    assert err > 1.1 * err_bf16


def test_fused_forward_matches_reference_forward(dense):
    """torch-fused differs from reference.forward only in the fused norm's rounding."""
    shape, w = dense
    mode, b, ctx, q = STEPS[1]
    _, out, _ = _run_dense(shape, w, "torch-fused", STEPS[1])
    cache = reference.KVCache(shape, b, MAX_LEN, "cpu", torch.bfloat16, seed=4)
    base = reference.forward(w, cache, _tokens(shape, b, q), ctx, mode)
    assert _rel(out, base.float()) < 1e-2


@pytest.mark.parametrize("stack", ["torch-fp8", "torch-int4", "torch-int8wo"])
def test_projection_matches_dequantized_oracle(stack):
    """Each quantized projection computes x @ dequant(w).T (fp8: of the quantized x) to
    bf16 rounding: a wrong packing, scale or transposition would be O(1) off."""
    g = torch.Generator().manual_seed(0)
    w = ff.randn((256, 384), 0.05, g, "cpu", torch.bfloat16)
    x = ff.randn((7, 384), 1.0, g, "cpu", torch.bfloat16)
    lin = qf.make_linear(w, stack, fp8_pad_m=16, int8wo_compiled=False)
    y = lin(x)
    assert y.shape == (7, 256) and y.dtype == torch.bfloat16
    assert qf.check_linear(lin, x) < 1e-2
    # the dequantized weight is the bf16 one up to the format's rounding
    werr = _rel(lin.dequantized(), w.float())
    assert {"torch-fp8": 0.01 < werr < 0.05, "torch-int4": 0.05 < werr < 0.15,
            "torch-int8wo": 0.002 < werr < 0.02}[stack], werr


def test_int4_quantizer_is_asymmetric_per_group():
    """Every group's values land within half a step of their level; a group of
    positive values uses all 16 levels (asymmetric: zero is not pinned to level 8)."""
    g = torch.Generator().manual_seed(1)
    w = torch.rand((8, 256), generator=g) * 3 + 1.0          # all positive, per-group range
    q, scales, zeros = qf.quantize_int4_groupwise(w, 128)
    assert q.dtype == torch.int32 and int(q.min()) == 0 and int(q.max()) == 15
    deq = ((q.reshape(8, 2, 128).float() - 8) * scales[..., None] + zeros[..., None])
    assert ((deq.reshape(8, 256) - w).abs() <= scales.repeat_interleave(128, 1) / 2 + 1e-5).all()


def test_int4_refuses_shapes_tinygemm_cannot_take():
    for n, k in ((256, 64), (100, 128), (256, 192)):
        with pytest.raises(ValueError, match="int4 weight"):
            qf.Int4Linear(torch.zeros(n, k, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="n and k % 16"):
        qf.Fp8Linear.from_weight(torch.ones(24, 40, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="unknown stack"):
        qf.make_linear(torch.ones(16, 16), "torch-fp4")
    lin = qf.Int4Linear(torch.ones(16, 128, dtype=torch.bfloat16), keep_q=False)
    with pytest.raises(RuntimeError, match="keep_q"):
        lin.dequantized()


def test_fp8_pads_token_count_to_16(monkeypatch):
    """5 tokens: _scaled_mm sees 16 rows (zero rows, which leave the activation's amax
    alone), the output is sliced back to 5 and equals the unpadded product."""
    g = torch.Generator().manual_seed(2)
    w = ff.randn((64, 128), 0.1, g, "cpu", torch.bfloat16)
    x = ff.randn((5, 128), 1.0, g, "cpu", torch.bfloat16)
    padded, plain = qf.Fp8Linear.from_weight(w, pad_m=16), qf.Fp8Linear.from_weight(w, pad_m=0)
    rows = []
    real = torch._scaled_mm

    def spy(a, b, **kw):
        rows.append(a.shape[0])
        return real(a, b, **kw)

    monkeypatch.setattr(torch, "_scaled_mm", spy)
    y16, y0 = padded(x), plain(x)
    assert rows == [16, 5]
    assert y16.shape == (5, 64) and y16.is_contiguous()
    assert torch.equal(y16, y0)
    rows.clear()
    padded(ff.randn((32, 128), 1.0, g, "cpu", torch.bfloat16))
    assert rows == [32]                                     # a multiple of 16: no pad


def test_fp8_activation_quantizer():
    x = torch.tensor([[0.5, -3.0, 1e-3, 2.0]], dtype=torch.bfloat16)
    xq, scale = qf.quantize_fp8_activation(x)
    assert xq.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32
    assert scale.item() == pytest.approx(3.0 / 448)
    assert float(xq.float().abs().max()) == 448.0          # amax maps to e4m3's largest
    back = xq.float() * scale
    assert torch.allclose(back[0, [0, 1, 3]], x.float()[0, [0, 1, 3]], rtol=2 ** -4)


def test_scaled_mm_probe_runs_here():
    assert qf.scaled_mm_accepts_unpadded("cpu") in (True, False)


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("clang++")),
                    reason="Inductor's CPU backend needs a C++ compiler")
def test_int8wo_compiled_matches_eager(monkeypatch):
    """torch.compile (Inductor's CPU backend here) of the int8 weight-only GEMM. The
    process-wide options compiled_int8wo sets are put back afterwards."""
    import torch._dynamo
    import torch._inductor.config as ic

    for mod, name in ((ic, "coordinate_descent_tuning"),
                      (torch._dynamo.config, "automatic_dynamic_shapes"),
                      (torch._dynamo.config, "recompile_limit"),
                      (torch._dynamo.config, "cache_size_limit")):
        if hasattr(mod, name):
            monkeypatch.setattr(mod, name, getattr(mod, name))
    monkeypatch.setattr(qf, "_COMPILED", {})
    g = torch.Generator().manual_seed(4)
    w = ff.randn((64, 128), 0.1, g, "cpu", torch.bfloat16)
    x = ff.randn((3, 128), 1.0, g, "cpu", torch.bfloat16)
    eager = qf.Int8WoLinear(w, compiled=False)
    comp = qf.Int8WoLinear(w, compiled=True)
    assert comp.fn is not eager.fn
    assert _rel(comp(x), eager(x).float()) < 1e-2


# ----------------------------------------------------------------------------- MoE

MOE_CFGS = {name: bq.BUILTIN_MOE[name] for name in ("tiny-moe", "tiny-moe-shared",
                                                     "tiny-mixtral")}


def _ref_moe(layer: mf.MoeLayer, x: torch.Tensor, topi: torch.Tensor | None = None
             ) -> torch.Tensor:
    """Float32 MoE, one token and one expert at a time, routed as Hugging Face does
    (softmax over all experts, top-k, renormalise: Mixtral always, Qwen if asked).
    ``topi`` [T, k]: take these experts instead of the top-k (weights still computed
    here): a bf16 forward's choice, which a near tie may make differently in float32."""
    spec, i = layer.spec, layer.spec.intermediate
    probs = torch.softmax(x @ layer.router.float().T, -1)                 # [T, E]
    if topi is None:
        topw, topi = probs.topk(spec.top_k, -1)
    else:
        topw = probs.gather(1, topi)
    if spec.scoring == "topk_softmax" or spec.renormalize:
        topw = topw / topw.sum(-1, keepdim=True)
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(spec.top_k):
            e = int(topi[t, j])
            gate = x[t] @ layer.w_gu[e, :i].float().T
            up = x[t] @ layer.w_gu[e, i:].float().T
            out[t] += topw[t, j] * ((F.silu(gate) * up) @ layer.w_d[e].float().T)
    if layer.shared is not None:
        sw, sd = layer.shared.gu.w.float(), layer.shared.d.w.float()
        si = sd.shape[1]
        s = (F.silu(x @ sw[:si].T) * (x @ sw[si:].T)) @ sd.T
        if layer.shared_gate is not None:
            s = s * torch.sigmoid(x @ layer.shared_gate.float().T)
        out += s
    return out


def _ref_forward(m: ff.Model, k0, v0, tokens, ctx: int, mode: str,
                 routing: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Float32 forward of a ff.Model with an MoE MLP: explicit softmax attention,
    repeated KV heads, Qwen3's q/k norms, _ref_moe (``routing``: its topi per layer)."""
    s = m.shape
    b, q = tokens.shape
    h_, hkv, d, eps = s.num_attention_heads, s.num_key_value_heads, s.d, s.rms_norm_eps
    f = torch.float32
    x = m.embed.to(f)[tokens.reshape(-1)]
    ang = torch.arange(ctx, ctx + q, dtype=f)[:, None] * m.inv_freq.to(f)[None, :]
    cos, sin = torch.cat((ang, ang), -1).cos(), torch.cat((ang, ang), -1).sin()
    end = ctx + q

    def norm(v, g):
        return g.to(f) * v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps)

    def rope(v):
        return v * cos + torch.cat((-v[..., d // 2:], v[..., : d // 2]), -1) * sin

    allowed = torch.arange(end)[None, :] <= (ctx + torch.arange(q))[:, None]
    for i, lw in enumerate(m.layers):
        qkv = norm(x, lw.norm1) @ lw.qkv.w.to(f).T
        xq = qkv[:, : h_ * d].view(b, q, h_, d)
        xk = qkv[:, h_ * d: (h_ + hkv) * d].view(b, q, hkv, d)
        xv = qkv[:, (h_ + hkv) * d:].view(b, q, hkv, d).transpose(1, 2)
        if lw.q_norm is not None:
            xq, xk = norm(xq, lw.q_norm), norm(xk, lw.k_norm)
        xq, xk = rope(xq.transpose(1, 2)), rope(xk.transpose(1, 2))
        keys = torch.cat((k0[i, :, :, :ctx].to(f), xk), 2).repeat_interleave(h_ // hkv, 1)
        vals = torch.cat((v0[i, :, :, :ctx].to(f), xv), 2).repeat_interleave(h_ // hkv, 1)
        sc = (xq @ keys.transpose(-1, -2) / math.sqrt(d)).masked_fill(~allowed, float("-inf"))
        o = (torch.softmax(sc, -1) @ vals).transpose(1, 2).reshape(b * q, h_ * d)
        x = x + o @ lw.o.w.to(f).T
        x = x + _ref_moe(lw.mlp, norm(x, lw.norm2), None if routing is None else routing[i])
    x = norm(x, m.norm_f)
    if mode == "prefill":
        x = x.view(b, q, -1)[:, -1]
    return x @ m.lm_head.to(f).T


def _run_moe(name: str, dtype: torch.dtype, step, impl: str | None = None,
             same_routing: bool = False):
    mode, b, ctx, q = step
    m = mf.build_moe(MOE_CFGS[name], "cpu", dtype, seed=11, impl=impl)
    cache = bq.make_cache(m.shape, b, MAX_LEN, torch.device("cpu"), dtype, seed=4)
    k0, v0 = cache.k.clone(), cache.v.clone()
    tokens = _tokens(m.shape, b, q)
    for lay in mf.moe_layers(m):
        lay.record = []
    out = ff.forward(m, cache, tokens, ctx, mode)
    routing = [lay.record[0] for lay in mf.moe_layers(m)] if same_routing else None
    return m, out, _ref_forward(m, k0, v0, tokens, ctx, mode, routing)


@pytest.mark.parametrize("step", STEPS, ids=STEP_IDS)
@pytest.mark.parametrize("name", sorted(MOE_CFGS))
def test_moe_forward_matches_per_token_loop(name, step):
    """float32 weights: the grouped path (sort, histc offsets, _grouped_mm, index_add)
    equals the loop to rounding, routing included; the Mixtral path's
    top-k-then-softmax equals HF's softmax-top-k-renormalise."""
    m, out, ref = _run_moe(name, torch.float32, step)
    mode, b, _, q = step
    assert m.extra["impl"] == "grouped_mm"
    assert out.shape == ref.shape == ((b if mode == "prefill" else b * q), m.shape.vocab_size)
    assert _rel(out, ref) < 1e-5


@pytest.mark.parametrize("step", STEPS, ids=STEP_IDS)
@pytest.mark.parametrize("name", sorted(MOE_CFGS))
def test_moe_forward_bf16_near_fp32(name, step):
    """bf16 weights, the float32 loop on the experts the bf16 router chose (in float32
    a near tie can pick another expert: an O(1) change of that token, not an error)."""
    _, out, ref = _run_moe(name, torch.bfloat16, step, same_routing=True)
    assert out.dtype == torch.bfloat16
    assert _rel(out, ref) < 2e-2


@pytest.mark.parametrize("name", sorted(MOE_CFGS))
def test_moe_layer_grouped_mm_equals_loop_fallback(name):
    """The CPU fallback (one matmul per expert) and torch._grouped_mm agree, and
    check_layer (the campaign's on-device self-check) passes on both."""
    m = mf.build_moe(MOE_CFGS[name], "cpu", torch.bfloat16, seed=2, impl="grouped_mm")
    lay = m.layers[0].mlp
    loop = mf.MoeLayer(lay.spec, lay.router, lay.w_gu, lay.w_d, lay.shared, lay.shared_gate,
                       impl="loop")
    x = ff.randn((37, m.shape.hidden_size), 1.0, torch.Generator().manual_seed(3), "cpu",
                 torch.bfloat16)
    assert torch.allclose(lay(x).float(), loop(x).float(), atol=1e-2, rtol=1e-2)
    assert mf.check_layer(lay, x) < 2e-2 and mf.check_layer(loop, x) < 2e-2
    assert mf.grouped_mm_supported("cpu", torch.bfloat16)


def test_moe_layer_makes_no_host_sync(monkeypatch):
    """No .item(), .tolist() or tensor truth value in the forward: nothing that would
    break CUDA-graph capture on the Python side."""
    m = mf.build_moe(MOE_CFGS["tiny-moe-shared"], "cpu", torch.bfloat16, seed=2)
    cache = bq.make_cache(m.shape, 2, MAX_LEN, torch.device("cpu"), torch.bfloat16)
    tokens = _tokens(m.shape, 2, 4)

    def sync(*a, **k):
        raise AssertionError("host sync in the forward")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, sync)
    ff.forward(m, cache, tokens, 5, "verify")
    monkeypatch.undo()
    # the fallback loop syncs (offs.tolist()): refused for CUDA weights
    fake_cuda = types.SimpleNamespace(device=torch.device("cuda"))
    with pytest.raises(ValueError, match="syncs"):
        mf.MoeLayer(mf.MoeSpec(2, 1, 2), None, fake_cuda, None, impl="loop")


def test_distinct_experts_hand_example():
    # tokens routed to {0,1}, {1,2}, {0,1}, {5,1}: experts 0, 1, 2, 5 -> 4 of 8
    topi = torch.tensor([[0, 1], [1, 2], [0, 1], [5, 1]])
    assert mf.distinct_experts(topi, 8) == 4
    assert mf.distinct_experts(topi[:1], 8) == 2
    assert mf.distinct_experts(torch.tensor([[3, 7]]), 8) == 2


def test_experts_touched_of_a_step():
    """One token touches exactly top_k experts per layer; many touch at most all E, and
    at least top_k; the count matches the routing recomputed by hand."""
    m = mf.build_moe(MOE_CFGS["tiny-moe"], "cpu", torch.bfloat16, seed=5)
    e, k = m.extra["moe"].num_experts, m.extra["moe"].top_k
    one = _tokens(m.shape, 1, 1)
    cache1 = bq.make_cache(m.shape, 1, MAX_LEN, torch.device("cpu"), torch.bfloat16)
    assert mf.experts_touched(m, lambda: ff.forward(m, cache1, one, 3, "decode")) == k
    cache = bq.make_cache(m.shape, 4, MAX_LEN, torch.device("cpu"), torch.bfloat16)
    many = _tokens(m.shape, 4, 4)
    got = mf.experts_touched(m, lambda: ff.forward(m, cache, many, 3, "verify"))
    assert k <= got <= e
    # the mean of per-layer counts taken by hand from the same step's routing
    for lay in mf.moe_layers(m):
        lay.record = []
    ff.forward(m, cache, many, 3, "verify")
    per_layer = [len(set(lay.record[0].reshape(-1).tolist())) for lay in mf.moe_layers(m)]
    for lay in mf.moe_layers(m):
        assert lay.record[0].shape == (16, k)
        lay.record = None
    assert got == sum(per_layer) / len(per_layer)
    assert all(lay.record is None for lay in mf.moe_layers(m))
    assert mf.experts_touched(qf.from_weights(
        reference.Weights(reference.Shape.from_dict(bq.TINY), "cpu", torch.bfloat16),
        "torch-fused"), lambda: None) is None


def test_moe_configs():
    cfgs = json.loads(bq.MOE_JSON.read_text())
    shape, spec = mf.parse_config(cfgs["qwen3-30b-a3b"])
    assert (shape.hidden_size, shape.num_hidden_layers, shape.d, spec.num_experts,
            spec.top_k, spec.intermediate) == (2048, 48, 128, 128, 8, 768)
    assert spec.qk_norm and spec.renormalize and spec.scoring == "softmax_topk"
    assert 30.0e9 < mf.moe_param_count(shape, spec) < 31.0e9        # "30B", ~61 GB bf16
    shape, spec = mf.parse_config(cfgs["mixtral-8x7b-8l"])
    assert (spec.num_experts, spec.top_k, spec.intermediate, spec.scoring) == \
        (8, 2, 14336, "topk_softmax")
    full = mf.moe_param_count(reference.Shape.from_dict(
        {**cfgs["mixtral-8x7b-8l"], "num_hidden_layers": 32}), spec)
    assert 46.0e9 < full < 47.5e9                                    # Mixtral's 46.7B
    shape, spec = mf.parse_config(cfgs["qwen1.5-moe-a2.7b"])
    assert spec.shared_intermediate == 5632 and spec.shared_gate and not spec.renormalize
    _, spec = mf.parse_config({**cfgs["qwen3-30b-a3b"], "n_shared_experts": 2})
    assert spec.shared_intermediate == 2 * 768 and not spec.shared_gate
    for bad in ({**cfgs["qwen3-30b-a3b"], "model_type": "deepseek_v3"},
                {**cfgs["qwen3-30b-a3b"], "mlp_only_layers": [0]}):
        with pytest.raises(ValueError):
            mf.parse_config(bad)


# ----------------------------------------------------------------------------- campaign

def _read(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        return list(r.fieldnames or []), list(r)


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    out = tmp_path_factory.mktemp("bq")
    # small profiled shapes: the CPU's _grouped_mm is a loop whose every op the
    # profiler records (seconds per MoE step otherwise)
    rc = bq.main(["--out", str(out), "--gpu", "cpu-test", "--device", "cpu", "--quick",
                  "--models", "tiny,tiny-moe", "--stack", "torch-fused,torch-int4",
                  "--profile-shapes", "decode:1:8:1,verify:1:8:2,prefill:1:0:3"])
    return rc, out


def test_campaign_writes_every_file(campaign):
    rc, out = campaign
    assert rc == 0
    assert not (out / "errors.log").exists()
    header, steps = _read(out / "steps.csv")
    assert header == [*STEPS_COLUMNS, "stack", "weight_dtype", "experts_touched_mean"]
    header, kernels = _read(out / "kernels.csv")
    assert header == [*KERNELS_COLUMNS, "stack"]
    env = json.loads((out / "env.json").read_text())
    assert env["gpu"] == "cpu-test" and env["stacks"] == ["torch-fused", "torch-int4"]
    assert env["command"][1].endswith("bench_quant_moe.py")
    assert env["models"]["tiny-moe"]["kind"] == "moe"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["errors"] == 0 and summary["phases_run"] == ["steps", "profile", "trace"]
    assert summary["skipped"] == ["torch-int4 tiny-moe: MoE models run with torch-fused only"] * 3
    assert set(summary["checks"]) == {"torch-int4/tiny", "torch-fused/tiny-moe"}

    grid = bq.GRIDS["cpu"]
    assert len(steps) == 3 * len(grid.steps)              # tiny x 2 stacks + tiny-moe
    for r in steps:
        assert r["launch"] == "cpu"
        assert float(r["p10_ms"]) <= float(r["median_ms"]) <= float(r["p90_ms"])
        moe = r["model"] == "tiny-moe"
        assert r["stack"] == ("torch-fused" if moe else r["stack"])
        assert r["weight_dtype"] == ("int4_g128" if r["stack"] == "torch-int4" else "bf16")
        if moe:   # at least top_k, at most all experts; one token: exactly top_k
            v = float(r["experts_touched_mean"])
            assert 2 <= v <= 8
            if int(r["batch"]) * int(r["q"]) == 1:
                assert v == 2
        else:
            assert r["experts_touched_mean"] == ""

    assert {(r["stack"], r["model"], r["mode"]) for r in kernels} == {
        (s, m, mode) for s, m in (("torch-fused", "tiny"), ("torch-int4", "tiny"),
                                  ("torch-fused", "tiny-moe"))
        for mode in ("decode", "verify", "prefill")}
    names = {(r["stack"], r["model"]): set() for r in kernels}
    for r in kernels:
        names[(r["stack"], r["model"])].add(r["kernel_name"])
    assert "aten::_weight_int4pack_mm_for_cpu" in names[("torch-int4", "tiny")]
    # the innermost ops on the CPU (its _grouped_mm is a loop of mm under the hood)
    assert {"aten::topk", "aten::_softmax", "aten::silu", "aten::mm"} <= \
        names[("torch-fused", "tiny-moe")]


def test_campaign_traces(campaign):
    _, out = campaign
    files = sorted((out / "traces").iterdir())
    assert [f.name for f in files] == sorted(
        bq.trace_name(s, m, bq.GRIDS["cpu"].trace[0])
        for s, m in (("torch-fused", "tiny"), ("torch-int4", "tiny"), ("torch-fused", "tiny-moe")))
    with gzip.open(files[0], "rt") as f:
        trace = json.load(f)
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"gpusim_step_0", "gpusim_step_1"} <= names
    assert any("Input Dims" in e.get("args", {}) for e in trace["traceEvents"])  # shapes


def test_campaign_fp8_padded_steps(tmp_path):
    rc = bq.main(["--out", str(tmp_path), "--gpu", "cpu-test", "--device", "cpu",
                  "--models", "tiny", "--stack", "torch-fp8", "--only", "steps",
                  "--fp8-pad-m", "16", "--step-shapes", "verify:1:16:3"])
    assert rc == 0 and not (tmp_path / "errors.log").exists()
    _, rows = _read(tmp_path / "steps.csv")
    assert [(r["mode"], r["q"], r["weight_dtype"]) for r in rows] == [
        ("verify", "3", "fp8_e4m3")]
    env = json.loads((tmp_path / "env.json").read_text())
    assert env["options"]["fp8_pad_m"] == 16 and "scaled_mm_unpadded_ok" in env["probes"]
    checks = json.loads((tmp_path / "summary.json").read_text())["checks"]["torch-fp8/tiny"]
    assert set(checks) == {"qkv", "o", "gate_up", "down"}
    assert max(checks.values()) < bq.CHECK_TOL
    # a second run into the same DIR keeps the first run's env.json
    assert bq.main(["--out", str(tmp_path), "--gpu", "cpu-test", "--device", "cpu",
                    "--models", "tiny", "--budget-s", "0"]) == 0
    assert (tmp_path / "env.2.json").exists() and (tmp_path / "summary.2.json").exists()
    assert json.loads((tmp_path / "env.json").read_text())["stacks"] == ["torch-fp8"]


def test_campaign_budget_zero_writes_headers_only(tmp_path):
    rc = bq.main(["--out", str(tmp_path), "--gpu", "cpu-test", "--device", "cpu",
                  "--models", "tiny-moe", "--budget-s", "0"])
    assert rc == 0
    for name in ("steps.csv", "kernels.csv"):
        header, rows = _read(tmp_path / name)
        assert header and rows == []
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped_by_budget"] and summary["phases_run"] == []


def test_campaign_refuses_unknown_stack_and_phase(tmp_path):
    with pytest.raises(SystemExit):
        bq.main(["--out", str(tmp_path), "--gpu", "x", "--device", "cpu", "--stack", "fp4"])
    with pytest.raises(SystemExit):
        bq.main(["--out", str(tmp_path), "--gpu", "x", "--device", "cpu", "--only", "micro"])
