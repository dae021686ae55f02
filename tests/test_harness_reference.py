"""validation/harness/reference.py: the bf16 static-KV forward against its float32 oracle."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

HARNESS = Path(__file__).resolve().parents[1] / "validation" / "harness"
if str(HARNESS) not in sys.path:
    sys.path.insert(0, str(HARNESS))

import reference  # noqa: E402

GQA = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
       "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 96, "vocab_size": 128,
       "rope_theta": 10000.0, "rms_norm_eps": 1e-5}
MHA = {**GQA, "num_key_value_heads": 4, "head_dim": None, "hidden_size": 48}  # D = 12
TIED = {**GQA, "tie_word_embeddings": True, "num_key_value_heads": 1, "rope_theta": 5e5}
QWEN3 = {**GQA, "qk_norm": True, "rms_norm_eps": 1e-6}   # per-head q/k norms
SHAPES = {"gqa": GQA, "mha": MHA, "tied": TIED, "qwen3": QWEN3}
# (mode, batch, ctx, q)
STEPS = [("decode", 2, 7, 1), ("decode", 1, 0, 1), ("verify", 2, 5, 2), ("verify", 1, 9, 3),
         ("verify", 3, 4, 4), ("verify", 2, 11, 5), ("prefill", 2, 0, 6), ("prefill", 1, 0, 1)]
MAX_LEN = 24


def _run(shape_cfg: dict, dtype: torch.dtype, mode: str, b: int, ctx: int, q: int):
    shape = reference.Shape.from_dict(shape_cfg)
    w = reference.Weights(shape, "cpu", dtype, seed=3)
    cache = reference.KVCache(shape, b, MAX_LEN, "cpu", dtype, seed=4)
    k0, v0 = cache.k.clone(), cache.v.clone()
    tokens = torch.randint(0, shape.vocab_size, (b, q), generator=torch.Generator().manual_seed(5))
    out = reference.forward(w, cache, tokens, ctx, mode)
    ref = reference.reference_forward_fp32(w, k0, v0, tokens, ctx, mode)
    return shape, w, cache, k0, v0, tokens, out, ref


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref).norm() / ref.norm())


@pytest.mark.parametrize("name", sorted(SHAPES))
@pytest.mark.parametrize("step", STEPS, ids=lambda s: f"{s[0]}-b{s[1]}-c{s[2]}-q{s[3]}")
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float32, 1e-5)],
                         ids=["bf16", "fp32"])
def test_forward_matches_fp32_oracle(name, step, dtype, tol):
    mode, b, ctx, q = step
    _, _, _, _, _, _, out, ref = _run(SHAPES[name], dtype, mode, b, ctx, q)
    rows = b if mode == "prefill" else b * q
    assert out.shape == ref.shape == (rows, SHAPES[name]["vocab_size"])
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    assert _rel(out, ref) < tol


@pytest.mark.parametrize("name", sorted(SHAPES))
@pytest.mark.parametrize("step", [("decode", 2, 7, 1), ("verify", 2, 5, 4),
                                  ("prefill", 1, 0, 6)], ids=lambda s: s[0])
def test_cache_written_at_ctx_with_rotated_k(name, step):
    """Positions ctx..ctx+q-1 of every layer get the new k (rotated) and v; nothing else
    changes. Layer 0's values are recomputed here from the embedding."""
    mode, b, ctx, q = step
    shape, w, cache, k0, v0, tokens, _, _ = _run(SHAPES[name], torch.float32, mode, b, ctx, q)
    end = ctx + q
    outside = torch.ones(MAX_LEN, dtype=torch.bool)
    outside[ctx:end] = False
    assert torch.equal(cache.k[:, :, :, outside], k0[:, :, :, outside])
    assert torch.equal(cache.v[:, :, :, outside], v0[:, :, :, outside])
    assert not torch.equal(cache.k[:, :, :, ctx:end], k0[:, :, :, ctx:end])
    assert not torch.equal(cache.v[:, :, :, ctx:end], v0[:, :, :, ctx:end])

    h_, hkv, d = shape.num_attention_heads, shape.num_key_value_heads, shape.d
    x = w.embed[tokens.reshape(-1)]
    lw = w.layers[0]
    hn = lw["norm1"] * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + shape.rms_norm_eps)
    qkv = hn @ lw["wqkv"].T
    k = qkv[:, h_ * d:(h_ + hkv) * d].view(b, q, hkv, d)
    if shape.qk_norm:   # each head normed before RoPE
        k = lw["k_norm"] * k * torch.rsqrt(k.pow(2).mean(-1, keepdim=True) + shape.rms_norm_eps)
    k = k.transpose(1, 2)
    v = qkv[:, (h_ + hkv) * d:].view(b, q, hkv, d).transpose(1, 2)
    pos = torch.arange(ctx, end, dtype=torch.float64)
    ang = pos[:, None] * w.inv_freq.double()[None, :]
    cos = torch.cat((ang, ang), -1).cos().float()
    sin = torch.cat((ang, ang), -1).sin().float()
    k_rot = k * cos + torch.cat((-k[..., d // 2:], k[..., : d // 2]), -1) * sin
    torch.testing.assert_close(cache.k[0, :, :, ctx:end], k_rot, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache.v[0, :, :, ctx:end], v, rtol=1e-5, atol=1e-5)


def test_rejects_bad_modes():
    shape = reference.Shape.from_dict(GQA)
    w = reference.Weights(shape, "cpu", torch.float32)
    cache = reference.KVCache(shape, 1, 8, "cpu", torch.float32)
    with pytest.raises(ValueError, match="decode needs q == 1"):
        reference.forward(w, cache, torch.zeros(1, 2, dtype=torch.long), 0, "decode")
    with pytest.raises(ValueError, match="prefill needs ctx == 0"):
        reference.forward(w, cache, torch.zeros(1, 2, dtype=torch.long), 3, "prefill")


def test_verify_mask_is_lower_right():
    dense = reference.verify_mask(3, 7)._materialize(torch.device("cpu"))
    expect = torch.arange(7)[None, :] <= (4 + torch.arange(3))[:, None]
    assert torch.equal(dense, expect)


# ------------------------------------------------ aten ops against the stack description
STACK = Path(__file__).resolve().parents[1] / "stacks" / "torch-hf.yaml"
VIEW_OPS = {"slice", "view", "_unsafe_view", "t", "transpose", "select", "unsqueeze",
            "squeeze", "split", "expand", "reshape", "alias", "as_strided", "detach"}
# CPU materializes the verify CausalBias (flash / efficient attention on a GPU do not)
CPU_MASK_OPS = {"ones", "tril", "where", "scalar_tensor", "logical_not"}


def _count_ops(shape_cfg: dict, layers: int, mode: str, b: int, ctx: int, q: int
               ) -> dict[str, int]:
    """gemm / attention / elementwise aten ops (views left out) of one bf16 forward."""
    from torch.utils._python_dispatch import TorchDispatchMode

    counts = {"gemm": 0, "attention": 0, "elementwise": 0}

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name in {"mm", "addmm", "bmm", "matmul"}:
                counts["gemm"] += 1
            elif "scaled_dot_product" in name or "attention" in name:
                counts["attention"] += 1
            elif name not in VIEW_OPS | CPU_MASK_OPS:
                counts["elementwise"] += 1
            return func(*args, **(kwargs or {}))

    shape = reference.Shape.from_dict({**shape_cfg, "num_hidden_layers": layers})
    w = reference.Weights(shape, "cpu", torch.bfloat16)
    cache = reference.KVCache(shape, b, ctx + q, "cpu", torch.bfloat16)
    tokens = torch.zeros(b, q, dtype=torch.long)
    mask = reference.verify_mask(q, ctx + q) if mode == "verify" else None  # a tensor subclass
    with Count():
        reference.forward(w, cache, tokens, ctx, mode, mask)
    return counts


def _stack_counts(section: list[dict]) -> dict[str, int]:
    """gemm / attention ops, and the kernels of every other op (elementwise, embedding)."""
    out = {"gemm": 0, "attention": 0, "elementwise": 0}
    for op in section:
        if op["op"] in ("gemm", "attention"):
            out[op["op"]] += 1
        else:
            out["elementwise"] += op["kernels"]
    return out


@pytest.mark.skipif(not STACK.exists(), reason="no stacks/torch-hf.yaml")
@pytest.mark.parametrize("step", [("decode", 2, 5, 1), ("verify", 2, 5, 3),
                                  ("prefill", 1, 0, 4)], ids=lambda s: s[0])
def test_aten_ops_match_stack_file(step):
    yaml = pytest.importorskip("yaml")
    stack = yaml.safe_load(STACK.read_text())
    one = _count_ops(GQA, 1, *step)
    two = _count_ops(GQA, 2, *step)
    layer = {k: two[k] - one[k] for k in one}
    ends = {k: one[k] - layer[k] for k in one}
    assert layer == _stack_counts(stack["layer"])
    want = _stack_counts(stack["prologue"] + stack["epilogue"])
    assert ends == want


@pytest.mark.skipif(not STACK.exists(), reason="no stacks/torch-hf.yaml")
@pytest.mark.parametrize("step", [("decode", 2, 5, 1), ("verify", 2, 5, 3),
                                  ("prefill", 1, 0, 4)], ids=lambda s: s[0])
def test_qk_norm_ops_match_stack_file(step):
    """A Qwen3 layer runs the stack file's layer and its qk_norm section (the per-head
    q and k norms, each reference.rms_norm's 8 kernels); the ends are a Llama's."""
    yaml = pytest.importorskip("yaml")
    stack = yaml.safe_load(STACK.read_text())
    one = _count_ops(QWEN3, 1, *step)
    two = _count_ops(QWEN3, 2, *step)
    layer = {k: two[k] - one[k] for k in one}
    assert layer == _stack_counts(stack["layer"] + stack["qk_norm"])
    assert {k: one[k] - layer[k] for k in one} == _stack_counts(stack["prologue"]
                                                                + stack["epilogue"])
