"""The torch-fused forward: reference.forward's Llama step with torch's fused RMSNorm.

One forward serves every measured stack that is not reference.py itself (torch-hf) or
transformers (hf-transformers): torch-fused and torch-compile (stacks_forward.py), the
quantized stacks (quant_forward.py) and the MoE models (moe_forward.py). It is
reference.forward op for op (static KV cache, SDPA, rotate-half RoPE, the same order of
calls; tests/test_harness_stacks.py checks the order) with two changes:

* RMSNorm is torch's ``F.rms_norm`` with the weight (one kernel on CUDA, not eight);
* the projections are objects (``Layer.qkv``, ``Layer.o``, ``Layer.mlp``): ``Bf16Linear``
  here (one cuBLAS GEMM, ``F.linear``), a quantized one (quant_forward.py) or an MoE
  layer (moe_forward.py) in its place; Qwen3's per-head q/k norms are optional.

A Model may also replace the token lookup, the LM head and the RMSNorm (``Model.lookup``,
``Model.head``, ``Model.norm``; None: ``F.embedding``, ``F.linear`` and ``F.rms_norm``):
tp_forward.py's tensor-parallel ranks look up and score their vocabulary slice and join
them with collectives, and its torch-hf ranks norm with reference.rms_norm.

How the KV cache is written and read is the ``kv`` object's: ``StaticKV`` writes a
reference.KVCache by slice copies at ``ctx..ctx+q-1`` as reference.forward does
(``forward``); stacks_forward.IndexKV writes by ``index_copy_`` at a positions tensor,
so that torch.compile sees no Python int that changes from step to step.

Needs only torch (runs on the GPU machine, which has no gpusim installed).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from reference import KVCache, Shape, Weights, apply_rope, rope_tables, verify_mask

MODES = ("decode", "verify", "prefill")
PROJECTIONS = ("wqkv", "wo", "wgu", "wd")   # reference.Weights' per-layer GEMM weights


def check_mode(mode: str, q: int, ctx: int) -> None:
    """Raises ValueError for an unknown mode, decode with q != 1 or prefill with ctx != 0."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
    if mode == "decode" and q != 1:
        raise ValueError(f"decode needs q == 1 (got {q})")
    if mode == "prefill" and ctx != 0:
        raise ValueError(f"prefill needs ctx == 0 (got {ctx})")


# ----------------------------------------------------------------------------- weights

def randn(size: tuple[int, ...], scale: float, g: torch.Generator, device: str | torch.device,
          dtype: torch.dtype) -> torch.Tensor:
    """N(0, scale^2) drawn directly in ``dtype`` (no float32 copy: memory)."""
    return torch.empty(size, device=device, dtype=dtype).normal_(0.0, scale, generator=g)


def random_weights(shape: Shape, device: str | torch.device, dtype: torch.dtype = torch.bfloat16,
                   seed: int = 0) -> Weights:
    """A reference.Weights with the same scales, drawn directly in ``dtype``.

    reference.Weights draws in float32 and casts (3x the memory at the peak), which an
    8B model on a GPU can afford but a 30B one cannot.
    """
    w = Weights.__new__(Weights)
    g = torch.Generator(device=device).manual_seed(seed)
    s, h, d = shape, shape.hidden_size, shape.d
    hd, inter = s.num_attention_heads * d, s.intermediate_size

    def rnd(*size: int, scale: float) -> torch.Tensor:
        return randn(size, scale, g, device, dtype)

    w.shape = shape
    w.embed = rnd(s.vocab_size, h, scale=1.0)                                  # [V, h]
    w.layers = [{"norm1": 1.0 + rnd(h, scale=0.1),
                 "wqkv": rnd(hd + 2 * s.num_key_value_heads * d, h, scale=1 / math.sqrt(h)),
                 "wo": rnd(h, hd, scale=0.5 / math.sqrt(hd)),                  # [h, HD]
                 "norm2": 1.0 + rnd(h, scale=0.1),
                 "wgu": rnd(2 * inter, h, scale=1 / math.sqrt(h)),             # [2I, h]
                 "wd": rnd(h, inter, scale=0.5 / math.sqrt(inter))}            # [h, I]
                for _ in range(s.num_hidden_layers)]
    if s.qk_norm:   # Qwen3's per-head q/k norms, drawn after the rest: Llama's unchanged
        for lw in w.layers:
            lw.update(q_norm=1.0 + rnd(d, scale=0.1), k_norm=1.0 + rnd(d, scale=0.1))
    w.norm_f = 1.0 + rnd(h, scale=0.1)
    w.lm_head = w.embed if s.tie_word_embeddings else rnd(s.vocab_size, h,
                                                          scale=1 / math.sqrt(h))
    w.inv_freq = 1.0 / (s.rope_theta ** (torch.arange(0, d, 2, device=device,
                                                      dtype=torch.float32) / d))
    return w


# ----------------------------------------------------------------------------- model

class Bf16Linear:
    """y = x @ w.T in the activation dtype: one cuBLAS GEMM."""

    weight_dtype = "bf16"

    def __init__(self, w: torch.Tensor):
        self.w = w                                                               # [n, k]
        self.n, self.k = w.shape

    @property
    def nbytes(self) -> int:
        return self.w.nbytes

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.w)                                               # [T, n]

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """float32 x @ w.T (the oracle of quant_forward.check_linear)."""
        return x.float() @ self.w.float().T


class DenseMlp:
    """SwiGLU: gate_up GEMM -> silu(gate) * up (2 elementwise kernels) -> down GEMM."""

    def __init__(self, gu: Callable[[torch.Tensor], torch.Tensor],
                 d: Callable[[torch.Tensor], torch.Tensor]):
        self.gu, self.d = gu, d

    def __call__(self, hn: torch.Tensor) -> torch.Tensor:
        gate, up = self.gu(hn).chunk(2, dim=-1)                                   # [T, I] x2
        return self.d(F.silu(gate) * up)                                          # [T, h]


@dataclass
class Layer:
    """One decoder layer. ``mlp``: a DenseMlp or a moe_forward.MoeLayer. ``q_norm`` /
    ``k_norm`` [D]: Qwen3's per-head RMSNorm of q and k before RoPE (None: Llama)."""

    norm1: torch.Tensor
    qkv: Callable[[torch.Tensor], torch.Tensor]
    o: Callable[[torch.Tensor], torch.Tensor]
    norm2: torch.Tensor
    mlp: Callable[[torch.Tensor], torch.Tensor]
    q_norm: torch.Tensor | None = None
    k_norm: torch.Tensor | None = None


@dataclass
class Model:
    """Weights of one forward: ``forward(model, ...)`` runs it."""

    shape: Shape
    stack: str
    weight_dtype: str
    embed: torch.Tensor                 # [V, h]
    layers: list[Layer]
    norm_f: torch.Tensor                # [h]
    lm_head: torch.Tensor               # [V, h] (bf16 in every stack)
    inv_freq: torch.Tensor              # [D/2] f32
    extra: dict = field(default_factory=dict)
    # replacements (None: F.embedding over ``embed``, F.linear over ``lm_head``,
    # F.rms_norm): token ids [T] -> [T, h]; [T, h] -> logits; (x, weight, eps) -> x
    lookup: Callable[[torch.Tensor], torch.Tensor] | None = None
    head: Callable[[torch.Tensor], torch.Tensor] | None = None
    norm: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor] | None = None

    @property
    def device(self) -> torch.device:
        return self.embed.device


def model_from(w: Weights, stack: str = "torch-fused",
               linear: Callable[[int, torch.Tensor], object] = lambda i, t: Bf16Linear(t),
               free: bool = False) -> Model:
    """The Model over reference weights ``w``: ``linear(layer index, weight [n, k])``
    makes each projection (default: Bf16Linear, no copy). ``free``: drop each weight
    from ``w`` once made, so that the peak is one model, not two."""
    layers = []
    for i, lw in enumerate(w.layers):
        lin = {k: linear(i, lw[k]) for k in PROJECTIONS}
        if free:
            for k in PROJECTIONS:
                lw[k] = None
        layers.append(Layer(norm1=lw["norm1"], qkv=lin["wqkv"], o=lin["wo"],
                            norm2=lw["norm2"], mlp=DenseMlp(lin["wgu"], lin["wd"]),
                            q_norm=lw.get("q_norm"), k_norm=lw.get("k_norm")))
    dtype = getattr(layers[0].qkv, "weight_dtype", "bf16") if layers else "bf16"
    return Model(shape=w.shape, stack=stack, weight_dtype=dtype, embed=w.embed,
                 layers=layers, norm_f=w.norm_f, lm_head=w.lm_head, inv_freq=w.inv_freq)


def fused_model(w: Weights) -> Model:
    """``w``'s torch-fused Model (its own tensors), made once per Weights object so that
    every step of a model (and torch.compile's guards) sees the same one."""
    m = getattr(w, "_fused_model", None)
    if m is None:
        m = model_from(w)
        w._fused_model = m  # type: ignore[attr-defined]
    return m


# ----------------------------------------------------------------------------- forward

class KV(Protocol):
    """Where one step's keys and values go and come from (see the module docstring)."""

    mode: str

    def rope(self, inv_freq: torch.Tensor, dtype: torch.dtype
             ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def attend(self, i: int, xq: torch.Tensor, xk: torch.Tensor, xv: torch.Tensor
               ) -> torch.Tensor: ...


def sdpa(xq: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mode: str,
         mask: object = None) -> torch.Tensor:
    """reference.forward's attention call of ``mode``: decode unmasked, prefill causal,
    verify with ``mask`` (a CausalBias or a boolean [q, S] tensor)."""
    if mode == "verify":
        return F.scaled_dot_product_attention(xq, keys, values, attn_mask=mask,
                                              enable_gqa=True)
    return F.scaled_dot_product_attention(xq, keys, values, is_causal=mode == "prefill",
                                          enable_gqa=True)


class StaticKV:
    """A reference.KVCache written at ``ctx..ctx+q-1`` by slice copies and read up to
    its end, as reference.forward does; ``mask``: a prebuilt verify mask (else built)."""

    def __init__(self, cache: KVCache, ctx: int, q: int, mode: str, mask: object = None):
        self.cache, self.ctx, self.q, self.mode = cache, ctx, q, mode
        self.mask = verify_mask(q, ctx + q) if mode == "verify" and mask is None else mask

    def rope(self, inv_freq: torch.Tensor, dtype: torch.dtype
             ) -> tuple[torch.Tensor, torch.Tensor]:
        return rope_tables(inv_freq, self.ctx, self.q, dtype)                     # [q, D]

    def attend(self, i: int, xq: torch.Tensor, xk: torch.Tensor, xv: torch.Tensor
               ) -> torch.Tensor:
        k, v, start, end = self.cache.k, self.cache.v, self.ctx, self.ctx + self.q
        k[i, :, :, start:end].copy_(xk)
        v[i, :, :, start:end].copy_(xv)
        return sdpa(xq, k[i, :, :, :end], v[i, :, :, :end], self.mode, self.mask)


def _heads(qkv: torch.Tensor, first: int, n: int, b: int, q: int, d: int,
           norm: torch.Tensor | None, eps: float) -> torch.Tensor:
    """Heads first..first+n-1 of the fused qkv output [T, (H+2Hkv)D] as [B, n, q, D],
    after the per-head RMSNorm ``norm`` where there is one (on the strided view)."""
    x = qkv[:, first * d: (first + n) * d].view(b, q, n, d)                      # [B, q, n, D]
    if norm is not None:
        x = F.rms_norm(x, (d,), norm, eps)
    return x.transpose(1, 2)                                                      # [B, n, q, D]


def run_layers(m: Model, tokens: torch.Tensor, kv: KV) -> torch.Tensor:
    """The step over ``kv``: logits [B*q, V] (prefill: [B, V], the last position's).

    Per layer on CUDA: rms_norm (1 fused kernel), qkv projection, [q/k norm: 2 fused
    norms], RoPE (5 + 5 kernels), the KV write and attention (``kv``), a copy for the
    transpose-reshape, o projection, add, rms_norm, the MLP, add.
    """
    s = m.shape
    b, q = tokens.shape
    h_, hkv, d, eps = s.num_attention_heads, s.num_key_value_heads, s.d, s.rms_norm_eps
    ids = tokens.reshape(-1)
    x = F.embedding(ids, m.embed) if m.lookup is None else m.lookup(ids)          # [T, h]
    hdim = (x.shape[-1],)

    def norm(v: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(v, hdim, weight, eps) if m.norm is None else m.norm(v, weight, eps)

    cos, sin = kv.rope(m.inv_freq, x.dtype)                                       # [q, D]
    for i, lw in enumerate(m.layers):
        qkv = lw.qkv(norm(x, lw.norm1))                                          # [T, (H+2Hkv)D]
        xq = _heads(qkv, 0, h_, b, q, d, lw.q_norm, eps)                         # [B, H, q, D]
        xk = _heads(qkv, h_, hkv, b, q, d, lw.k_norm, eps)                       # [B, Hkv, q, D]
        xv = _heads(qkv, h_ + hkv, hkv, b, q, d, None, eps)
        o = kv.attend(i, apply_rope(xq, cos, sin), apply_rope(xk, cos, sin), xv)  # [B, H, q, D]
        x = x + lw.o(o.transpose(1, 2).reshape(b * q, h_ * d))                   # [T, h]
        x = x + lw.mlp(norm(x, lw.norm2))
    x = norm(x, m.norm_f)
    if kv.mode == "prefill":
        x = x.view(b, q, -1)[:, -1]                                               # [B, h]
    return F.linear(x, m.lm_head) if m.head is None else m.head(x)               # [T_out, V]


def forward(m: Model, cache: KVCache, tokens: torch.Tensor, ctx: int, mode: str,
            mask: object = None) -> torch.Tensor:
    """One step, as reference.forward: tokens [B, q], ``ctx`` tokens already cached per
    sequence; ``decode`` (q == 1), ``verify`` (causal mask aligned to the end of the
    cache; ``mask`` prebuilt or built here), ``prefill`` (ctx == 0; logits of the last
    position only). Returns logits [B*q, V] (prefill [B, V]). Raises ValueError for a
    mode/q/ctx mismatch."""
    q = tokens.shape[1]
    check_mode(mode, q, ctx)
    return run_layers(m, tokens, StaticKV(cache, ctx, q, mode, mask))
