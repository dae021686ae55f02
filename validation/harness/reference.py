"""The reference software stack: a plain PyTorch Llama forward with a static KV cache.

This file is the ground truth that ``stacks/torch-hf.yaml`` describes
kernel by kernel; change one, change the other (tests/test_harness_reference.py
counts the aten ops of this forward against the stack file).

Needs only torch (runs on the GPU machine, which has no gpusim installed).
All sequences of a batch sit at the same position: ``ctx`` tokens cached, ``q`` new.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Shape:
    """Llama-architecture sizes (Hugging Face config.json names)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    head_dim: int | None = None
    tie_word_embeddings: bool = False
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # Qwen3's per-head RMSNorm of q and k after the projection, before RoPE
    qk_norm: bool = False

    @property
    def d(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, cfg: dict) -> Shape:
        keys = cls.__dataclass_fields__.keys()
        return cls(**{k: cfg[k] for k in keys if k in cfg and cfg[k] is not None})


class Weights:
    """Random weights, scaled so activations stay O(1) through many layers."""

    def __init__(self, shape: Shape, device: str, dtype: torch.dtype, seed: int = 0):
        g = torch.Generator(device=device).manual_seed(seed)
        s, h, d = shape, shape.hidden_size, shape.d
        qkv_out = (s.num_attention_heads + 2 * s.num_key_value_heads) * d

        def rnd(*size: int, scale: float) -> torch.Tensor:
            return (torch.randn(*size, generator=g, device=device, dtype=torch.float32)
                    * scale).to(dtype)

        self.shape = shape
        self.embed = rnd(s.vocab_size, h, scale=1.0)  # [V, h]
        self.layers = []
        for _ in range(s.num_hidden_layers):
            self.layers.append({
                "norm1": 1.0 + rnd(h, scale=0.1),
                "wqkv": rnd(qkv_out, h, scale=1 / math.sqrt(h)),            # [(H+2Hkv)D, h]
                "wo": rnd(h, s.num_attention_heads * d,
                          scale=0.5 / math.sqrt(s.num_attention_heads * d)),  # [h, HD]
                "norm2": 1.0 + rnd(h, scale=0.1),
                "wgu": rnd(2 * s.intermediate_size, h, scale=1 / math.sqrt(h)),  # [2I, h]
                "wd": rnd(h, s.intermediate_size,
                          scale=0.5 / math.sqrt(s.intermediate_size)),       # [h, I]
            })
            if s.qk_norm:   # drawn after the layer's others: a Llama's weights unchanged
                self.layers[-1].update(q_norm=1.0 + rnd(d, scale=0.1),       # [D]
                                       k_norm=1.0 + rnd(d, scale=0.1))
        self.norm_f = 1.0 + rnd(h, scale=0.1)
        self.lm_head = self.embed if s.tie_word_embeddings else rnd(
            s.vocab_size, h, scale=1 / math.sqrt(h))                       # [V, h]
        inv = 1.0 / (s.rope_theta ** (torch.arange(0, d, 2, device=device,
                                                   dtype=torch.float32) / d))
        self.inv_freq = inv                                                 # [D/2]


class KVCache:
    """Static cache: k, v of shape [L, B, Hkv, S, D], filled with random values."""

    def __init__(self, shape: Shape, batch: int, max_len: int, device: str,
                 dtype: torch.dtype, seed: int = 1):
        g = torch.Generator(device=device).manual_seed(seed)
        size = (shape.num_hidden_layers, batch, shape.num_key_value_heads, max_len, shape.d)
        self.k = torch.randn(size, generator=g, device=device, dtype=torch.float32).to(dtype)
        self.v = torch.randn(size, generator=g, device=device, dtype=torch.float32).to(dtype)


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """Hugging Face LlamaRMSNorm: 8 kernels (cast, pow, mean, add, rsqrt, mul, cast, mul)."""
    xf = x.float()
    var = xf.pow(2).mean(-1, keepdim=True)
    xf = xf * torch.rsqrt(var + eps)
    return w * xf.to(x.dtype)


def rope_tables(inv_freq: torch.Tensor, start: int, q: int, dtype: torch.dtype
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [q, D] for positions start..start+q-1: built once per forward."""
    pos = torch.arange(start, start + q, device=inv_freq.device)          # [q] int64
    freqs = pos[:, None].float() * inv_freq[None, :]                      # [q, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)                               # [q, D]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on x [B, h, q, D]: 5 kernels (neg, cat, mul, mul, add)."""
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rot * sin


def verify_mask(q: int, end: int) -> object:
    """torch's causal_lower_right bias: query i sees keys 0..end-q+i."""
    from torch.nn.attention.bias import causal_lower_right
    return causal_lower_right(q, end)


def forward(w: Weights, cache: KVCache, tokens: torch.Tensor, ctx: int, mode: str,
            mask: object = None, feature: torch.Tensor | None = None) -> torch.Tensor:
    """One step. tokens [B, q]; ctx tokens already cached per sequence.

    mode: ``decode`` (q == 1), ``verify`` (q new tokens, causal mask aligned to the end
    of the cache), ``prefill`` (ctx == 0, causal over the prompt; logits of the last
    position only). ``mask``: a prebuilt verify mask (else built here). ``feature``
    [B*q, h]: an EAGLE head's input, fc(concat(embedding, feature)) with ``w.fc``.
    Returns logits [B*q, V] (prefill: [B, V]).
    """
    s = w.shape
    b, q = tokens.shape
    h_, hkv, d = s.num_attention_heads, s.num_key_value_heads, s.d
    if mode == "decode" and q != 1:
        raise ValueError(f"decode needs q == 1 (got {q})")
    if mode == "prefill" and ctx != 0:
        raise ValueError(f"prefill needs ctx == 0 (got {ctx})")
    x = F.embedding(tokens.reshape(-1), w.embed)                           # [T, h]
    if feature is not None:
        x = F.linear(torch.cat((x, feature), -1), w.fc)  # type: ignore[attr-defined]
    cos, sin = rope_tables(w.inv_freq, ctx, q, x.dtype)                    # [q, D]
    end = ctx + q
    if mode == "verify" and mask is None:
        mask = verify_mask(q, end)
    for i, lw in enumerate(w.layers):
        hn = rms_norm(x, lw["norm1"], s.rms_norm_eps)
        qkv = F.linear(hn, lw["wqkv"])                                     # [T, (H+2Hkv)D]
        # Qwen3 norms each head of q and k (on [B, q, H, D], as transformers'
        # Qwen3Attention does) before the transpose
        xq = qkv[:, : h_ * d].view(b, q, h_, d)                            # [B, q, H, D]
        if s.qk_norm:
            xq = rms_norm(xq, lw["q_norm"], s.rms_norm_eps)
        xq = xq.transpose(1, 2)                                            # [B, H, q, D]
        xk = qkv[:, h_ * d: (h_ + hkv) * d].view(b, q, hkv, d)
        if s.qk_norm:
            xk = rms_norm(xk, lw["k_norm"], s.rms_norm_eps)
        xk = xk.transpose(1, 2)                                            # [B, Hkv, q, D]
        xv = qkv[:, (h_ + hkv) * d:].view(b, q, hkv, d).transpose(1, 2)    # [B, Hkv, q, D]
        xq = apply_rope(xq, cos, sin)
        xk = apply_rope(xk, cos, sin)
        cache.k[i, :, :, ctx:end].copy_(xk)
        cache.v[i, :, :, ctx:end].copy_(xv)
        keys = cache.k[i, :, :, :end]                                      # [B, Hkv, S, D]
        values = cache.v[i, :, :, :end]
        if mode == "decode":
            o = F.scaled_dot_product_attention(xq, keys, values, enable_gqa=True)
        elif mode == "prefill":
            o = F.scaled_dot_product_attention(xq, keys, values, is_causal=True,
                                               enable_gqa=True)
        else:
            o = F.scaled_dot_product_attention(xq, keys, values, attn_mask=mask,
                                               enable_gqa=True)
        o = o.transpose(1, 2).reshape(b * q, h_ * d)                       # [T, HD]
        x = x + F.linear(o, lw["wo"])
        hn = rms_norm(x, lw["norm2"], s.rms_norm_eps)
        gu = F.linear(hn, lw["wgu"])                                       # [T, 2I]
        gate, up = gu.chunk(2, dim=-1)
        x = x + F.linear(F.silu(gate) * up, lw["wd"])
    x = rms_norm(x, w.norm_f, s.rms_norm_eps)
    if mode == "prefill":
        x = x.view(b, q, -1)[:, -1]                                        # [B, h]
    return F.linear(x, w.lm_head)                                          # [T_out, V]


def reference_forward_fp32(w: Weights, cache_k: torch.Tensor, cache_v: torch.Tensor,
                           tokens: torch.Tensor, ctx: int, mode: str) -> torch.Tensor:
    """Straightforward float32 forward (explicit softmax, repeated KV heads) for tests.

    cache_k/v: [L, B, Hkv, S, D] copies of the cache *before* the step.
    """
    s = w.shape
    b, q = tokens.shape
    h_, hkv, d = s.num_attention_heads, s.num_key_value_heads, s.d
    f = torch.float32
    x = w.embed.to(f)[tokens.reshape(-1)]
    pos = torch.arange(ctx, ctx + q, dtype=f)
    ang = pos[:, None] * w.inv_freq.to(f)[None, :]
    cos, sin = torch.cat((ang, ang), -1).cos(), torch.cat((ang, ang), -1).sin()
    end = ctx + q

    def norm(v: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return g.to(f) * v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + s.rms_norm_eps)

    def rope(v: torch.Tensor) -> torch.Tensor:
        v1, v2 = v[..., : d // 2], v[..., d // 2:]
        return v * cos + torch.cat((-v2, v1), -1) * sin

    # query i (0-based among the q new ones) sees keys 0..ctx+i
    allowed = torch.arange(end)[None, :] <= (ctx + torch.arange(q))[:, None]   # [q, S]
    for i, lw in enumerate(w.layers):
        hn = norm(x, lw["norm1"])
        qkv = hn @ lw["wqkv"].to(f).T
        xq = qkv[:, : h_ * d].view(b, q, h_, d)
        xk = qkv[:, h_ * d: (h_ + hkv) * d].view(b, q, hkv, d)
        if s.qk_norm:
            xq, xk = norm(xq, lw["q_norm"]), norm(xk, lw["k_norm"])
        xq, xk = rope(xq.transpose(1, 2)), rope(xk.transpose(1, 2))
        xv = qkv[:, (h_ + hkv) * d:].view(b, q, hkv, d).transpose(1, 2)
        keys = torch.cat((cache_k[i, :, :, :ctx].to(f), xk), dim=2)
        vals = torch.cat((cache_v[i, :, :, :ctx].to(f), xv), dim=2)
        keys = keys.repeat_interleave(h_ // hkv, dim=1)                    # [B, H, S, D]
        vals = vals.repeat_interleave(h_ // hkv, dim=1)
        scores = xq @ keys.transpose(-1, -2) / math.sqrt(d)                # [B, H, q, S]
        scores = scores.masked_fill(~allowed, float("-inf"))
        o = torch.softmax(scores, -1) @ vals
        x = x + o.transpose(1, 2).reshape(b * q, h_ * d) @ lw["wo"].to(f).T
        gu = norm(x, lw["norm2"]) @ lw["wgu"].to(f).T
        gate, up = gu.chunk(2, -1)
        x = x + (F.silu(gate) * up) @ lw["wd"].to(f).T
    x = norm(x, w.norm_f)
    if mode == "prefill":
        x = x.view(b, q, -1)[:, -1]
    return x @ w.lm_head.to(f).T
