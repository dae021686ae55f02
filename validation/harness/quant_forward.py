"""Quantized Llama forwards: the four projection GEMMs in fp8, int4 or int8, the rest bf16.

The base is "torch-fused": reference.forward (static KV cache, SDPA, rotate-half RoPE)
with torch's fused ``F.rms_norm`` in place of the 8-kernel Hugging Face norm. The
quantized stacks replace the four projection GEMMs of every layer (qkv, o, gate_up,
down); embedding, LM head, norms, RoPE and attention stay as in torch-fused, in bf16.
The KV cache stays bf16.

Stacks (``STACKS``) and what each projection launches on CUDA (sm90, eager):

* ``torch-fused`` (``Bf16Linear``): ``F.linear`` -> one cuBLAS(Lt) GEMM (nvjet / sm90
  xmma kernels; a split-K reduce kernel where cuBLAS picks split-K).
* ``torch-fp8`` (``Fp8Linear``): per-tensor e4m3 weight [n, k] + one float32 scale; the
  activation scale is computed and the activation cast on every call:
  [pad: ``F.pad`` -> fill + copy, 2 kernels, only where T % pad_m != 0]; ``abs`` (1
  elementwise); ``amax`` (1 reduction); ``.float()``, ``/ 448``, ``clamp_`` on the 0-d
  scale (3 one-element elementwise kernels); ``x / scale``, ``clamp_``, ``.to(e4m3)``
  (3 elementwise over [T, k]); ``torch._scaled_mm`` (1 cuBLASLt fp8 GEMM, bf16 out).
  8 small kernels + the GEMM per projection (10 + GEMM when padded).
* ``torch-int4`` (``Int4Linear``): int4 weight-only, group 128, asymmetric, bf16
  scales-and-zeros: ``torch._weight_int4pack_mm`` -> 1 tinygemm kernel
  (``tinygemm_m16n8k16_chunk_kernel``), at every M (it is a decode kernel: slow at
  large M, which is the crossover the campaign looks for).
* ``torch-int8wo`` (``Int8WoLinear``): int8 per-channel weight-only, ``F.linear(x,
  w.to(bf16)) * scale`` compiled by Inductor (gpt-fast settings:
  coordinate_descent_tuning). At M == 1 Inductor decomposes the mm into a mul + sum
  reduction and fuses the dequant into it (1 Triton kernel); at M > 1 it calls cuBLAS
  on a dequantized weight (1 Triton dequant kernel writing [n, k] bf16 + 1 GEMM + the
  scale, a Triton pointwise kernel) unless max-autotune picks a Triton template with
  the dequant fused as a prologue. The profile phase records what it really emits.

Everything here is CUDA-graph capturable (no host sync, no data-dependent Python
control flow); the token padding depends only on the static token count.

Needs only torch (runs on the GPU machine, which has no gpusim installed). On the CPU
the int4 ops are named ``*_for_cpu`` and take the weight unpacked; ``Int4Linear``
dispatches on the device so CPU tests run the same code path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from reference import KVCache, Shape, Weights, apply_rope, rope_tables, verify_mask

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)   # 448
STACKS = ("torch-fused", "torch-fp8", "torch-int4", "torch-int8wo")
WEIGHT_DTYPE = {"torch-fused": "bf16", "torch-fp8": "fp8_e4m3", "torch-int4": "int4_g128",
                "torch-int8wo": "int8"}


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
    qkv_out = (s.num_attention_heads + 2 * s.num_key_value_heads) * d
    w.shape = shape
    w.embed = randn((s.vocab_size, h), 1.0, g, device, dtype)                  # [V, h]
    w.layers = []
    for _ in range(s.num_hidden_layers):
        w.layers.append({
            "norm1": 1.0 + randn((h,), 0.1, g, device, dtype),
            "wqkv": randn((qkv_out, h), 1 / math.sqrt(h), g, device, dtype),  # [(H+2Hkv)D, h]
            "wo": randn((h, s.num_attention_heads * d),
                        0.5 / math.sqrt(s.num_attention_heads * d), g, device, dtype),
            "norm2": 1.0 + randn((h,), 0.1, g, device, dtype),
            "wgu": randn((2 * s.intermediate_size, h), 1 / math.sqrt(h), g, device, dtype),
            "wd": randn((h, s.intermediate_size), 0.5 / math.sqrt(s.intermediate_size), g,
                        device, dtype),                                        # [h, I]
        })
    w.norm_f = 1.0 + randn((h,), 0.1, g, device, dtype)
    w.lm_head = w.embed if s.tie_word_embeddings else randn(
        (s.vocab_size, h), 1 / math.sqrt(h), g, device, dtype)                  # [V, h]
    w.inv_freq = 1.0 / (s.rope_theta ** (torch.arange(0, d, 2, device=device,
                                                      dtype=torch.float32) / d))
    return w


# ----------------------------------------------------------------------------- linears

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
        """float32 x @ w.T (the oracle of ``check_linear``)."""
        return x.float() @ self.w.float().T


def quantize_fp8_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor e4m3: (w_fp8 [n, k], scale float32 0-d) with w ~= w_fp8 * scale."""
    amax = w.detach().abs().amax().float()
    scale = (amax / FP8_MAX).clamp(min=1e-12)                                    # [] f32
    wq = (w.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)              # [n, k]
    return wq, scale


def quantize_fp8_activation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-tensor e4m3 cast of an activation: (x_fp8, scale f32 0-d).

    CUDA kernels: abs, amax (reduction), then on the 0-d scale float-cast, div, clamp,
    then over x: div, clamp, cast to e4m3 (8 kernels). No host sync.
    """
    amax = x.abs().amax()                                                        # [] bf16
    scale = (amax.float() / FP8_MAX).clamp_(min=1e-12)                           # [] f32
    xq = (x / scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)                     # [T, k] e4m3
    return xq, scale


class Fp8Linear:
    """fp8 e4m3 per-tensor weight and per-tensor dynamic activation, ``torch._scaled_mm``.

    ``pad_m``: pad the token count to a multiple of this before the cast and slice the
    output (0: never pad). cuBLASLt's fp8 GEMM needs k and n multiples of 16 (checked
    here, ValueError); whether it needs M padded too is probed on the device by
    ``scaled_mm_accepts_unpadded`` (bench_quant_moe.py --fp8-pad-m auto).
    """

    weight_dtype = "fp8_e4m3"

    def __init__(self, wq: torch.Tensor, w_scale: torch.Tensor, pad_m: int = 16):
        n, k = wq.shape
        if n % 16 or k % 16:
            raise ValueError(f"fp8 weight [{n}, {k}]: _scaled_mm needs n and k % 16 == 0")
        self.wq, self.w_scale, self.pad_m = wq, w_scale, pad_m                   # [n, k] e4m3
        self.n, self.k = n, k

    @classmethod
    def from_weight(cls, w: torch.Tensor, pad_m: int = 16) -> Fp8Linear:
        wq, scale = quantize_fp8_weight(w)
        return cls(wq, scale, pad_m)

    @property
    def nbytes(self) -> int:
        return self.wq.nbytes + self.w_scale.nbytes

    def dequantized(self) -> torch.Tensor:
        return self.wq.float() * self.w_scale                                    # [n, k] f32

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[0]
        pad = (-t) % self.pad_m if self.pad_m else 0     # static: depends on the shape only
        if pad:
            x = F.pad(x, (0, 0, 0, pad))                 # [Tp, k]; zero rows leave amax alone
        xq, x_scale = quantize_fp8_activation(x)
        # mat2 must be column-major: w [n, k] row-major, so w.t() is [k, n] column-major
        y = torch._scaled_mm(xq, self.wq.t(), scale_a=x_scale, scale_b=self.w_scale,
                             out_dtype=torch.bfloat16)                           # [Tp, n]
        return y[:t] if pad else y

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """float32 product of the same quantized activation and the dequantized weight."""
        xq, x_scale = quantize_fp8_activation(x)
        return (xq.float() * x_scale) @ self.dequantized().T


def quantize_int4_groupwise(w: torch.Tensor, group: int
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric 4-bit per group of ``group`` input channels (torchao's tinygemm form).

    Returns (q int32 [n, k] in 0..15, scales [n, k/group] f32, zeros [n, k/group] f32),
    w ~= (q - 8) * scale + zero (zero is in the float domain: min + 8 * scale).
    """
    n, k = w.shape
    wg = w.float().reshape(n, k // group, group)                                  # [n, G, g]
    lo, hi = wg.amin(-1), wg.amax(-1)                                             # [n, G]
    scales = (hi - lo).clamp(min=1e-6) / 15
    zeros = lo + 8 * scales
    q = ((wg - lo[..., None]) / scales[..., None]).round().clamp(0, 15).to(torch.int32)
    return q.reshape(n, k), scales, zeros


class Int4Linear:
    """int4 weight-only (group-wise asymmetric), ``torch._weight_int4pack_mm`` (tinygemm).

    The packed layout is device-specific: CUDA packs two nibbles per byte ([n, k/2]
    uint8, high nibble first, as torchao does) and ``_convert_weight_to_int4pack`` tiles
    it for tinygemm; the CPU op takes the int32 [n, k] values. Raises ValueError unless
    n % 8 == 0 and k % (inner_k_tiles * 16) == 0 and k % group == 0 (tinygemm's limits,
    checked on every device so the CPU refuses what the GPU would). ``keep_q``: keep
    the unpacked values (uint8 [n, k], ``self.q``) for ``dequantized`` (tests and the
    campaign's self-check of layer 0; else None: n*k bytes per projection).
    """

    weight_dtype = "int4_g128"

    def __init__(self, w: torch.Tensor, group: int = 128, inner_k_tiles: int = 8,
                 keep_q: bool = True):
        n, k = w.shape
        if n % 8 or k % (inner_k_tiles * 16) or k % group:
            raise ValueError(f"int4 weight [{n}, {k}]: needs n % 8 == 0, k % "
                             f"{inner_k_tiles * 16} == 0 and k % {group} == 0")
        q, scales, zeros = quantize_int4_groupwise(w, group)
        self.n, self.k, self.group = n, k, group
        self.weight_dtype = f"int4_g{group}"
        # tinygemm's scales_and_zeros: [k/group, n, 2] in the activation dtype
        self.sz = torch.stack((scales, zeros), -1).transpose(0, 1).contiguous().to(w.dtype)
        self.cpu = w.device.type == "cpu"
        if self.cpu:
            self.packed = torch._convert_weight_to_int4pack_for_cpu(q, inner_k_tiles)
        else:
            pairs = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)                 # [n, k/2]
            self.packed = torch._convert_weight_to_int4pack(pairs, inner_k_tiles)
        self.q = q.to(torch.uint8) if keep_q else None                             # [n, k]

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + self.sz.nbytes

    def dequantized(self) -> torch.Tensor:
        """float32 [n, k] weight the kernel computes with. Raises RuntimeError when the
        values were not kept (keep_q=False)."""
        if self.q is None:
            raise RuntimeError("Int4Linear built with keep_q=False: no dequantized weight")
        sz = self.sz.float().transpose(0, 1)                                      # [n, G, 2]
        q = self.q.float().reshape(self.n, -1, self.group)                       # [n, G, g]
        return ((q - 8) * sz[..., :1] + sz[..., 1:]).reshape(self.n, self.k)      # [n, k] f32

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.cpu:
            return torch._weight_int4pack_mm_for_cpu(x, self.packed, self.group, self.sz)
        return torch._weight_int4pack_mm(x, self.packed, self.group, self.sz)    # [T, n]

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() @ self.dequantized().T


def _int8wo_mm(x: torch.Tensor, wq: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x @ dequant(w).T: torchao's int8 weight-only form, for Inductor to fuse."""
    return F.linear(x, wq.to(x.dtype)) * scale


_COMPILED: dict[str, Callable] = {}


def compiled_int8wo(mode: str | None) -> Callable:
    """``_int8wo_mm`` under torch.compile with gpt-fast's Inductor settings (one compiled
    function per mode, shared by every layer; graphs are keyed by weight shape: see
    Int8WoLinear). Sets process-wide dynamo/inductor options (this campaign compiles
    nothing else)."""
    key = str(mode)
    if key not in _COMPILED:
        import torch._dynamo
        import torch._inductor.config as ic
        ic.coordinate_descent_tuning = True     # M == 1: mm -> mul + sum, dequant fused
        # one static graph per weight shape (n, k), M marked dynamic when > 1: without
        # this, the second weight shape would make n and k symbolic for every layer
        torch._dynamo.config.automatic_dynamic_shapes = False
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, max(64, getattr(torch._dynamo.config,
                                                                    name)))
        _COMPILED[key] = torch.compile(_int8wo_mm, mode=mode, fullgraph=True)
    return _COMPILED[key]


class Int8WoLinear:
    """int8 per-output-channel symmetric weight-only, the GEMM compiled by Inductor.

    ``compile_mode``: torch.compile mode (None: default; "max-autotune-no-cudagraphs"
    lets Inductor pick Triton GEMM templates with the dequant fused as a prologue, at a
    much longer compile); ``compiled=False`` runs the same expression eagerly (tests).
    """

    weight_dtype = "int8"

    def __init__(self, w: torch.Tensor, compiled: bool = True, compile_mode: str | None = None):
        wf = w.float()
        scale = (wf.abs().amax(-1) / 127).clamp(min=1e-12)                        # [n] f32
        self.wq = (wf / scale[:, None]).round().clamp(-127, 127).to(torch.int8)   # [n, k]
        self.scale = scale.to(w.dtype)                                             # [n]
        self.n, self.k = w.shape
        self.fn = compiled_int8wo(compile_mode) if compiled else _int8wo_mm

    @property
    def nbytes(self) -> int:
        return self.wq.nbytes + self.scale.nbytes

    def dequantized(self) -> torch.Tensor:
        return self.wq.float() * self.scale.float()[:, None]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1 and self.fn is not _int8wo_mm:
            import torch._dynamo
            torch._dynamo.maybe_mark_dynamic(x, 0)   # one graph for every M > 1
        return self.fn(x, self.wq, self.scale)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() @ self.wq.float().T) * self.scale.float()


Linear = Bf16Linear | Fp8Linear | Int4Linear | Int8WoLinear


def make_linear(w: torch.Tensor, stack: str, fp8_pad_m: int = 16, int4_group: int = 128,
                int8wo_compiled: bool = True, int8wo_mode: str | None = None) -> Linear:
    """The projection of ``stack`` for weight ``w`` [n, k]. Raises ValueError for an
    unknown stack or a weight the stack's kernel cannot take."""
    if stack == "torch-fused":
        return Bf16Linear(w)
    if stack == "torch-fp8":
        return Fp8Linear.from_weight(w, fp8_pad_m)
    if stack == "torch-int4":
        return Int4Linear(w, int4_group)
    if stack == "torch-int8wo":
        return Int8WoLinear(w, int8wo_compiled, int8wo_mode)
    raise ValueError(f"unknown stack {stack!r} (known: {', '.join(STACKS)})")


def check_linear(lin: Linear, x: torch.Tensor) -> float:
    """Relative error (Frobenius) of ``lin(x)`` against its float32 oracle: what a
    wrong packing layout, scale or transposition would show as O(1)."""
    y, ref = lin(x).float(), lin.reference(x)
    return float((y - ref).norm() / ref.norm().clamp(min=1e-30))


def scaled_mm_accepts_unpadded(device: torch.device | str) -> bool:
    """True when ``torch._scaled_mm`` takes a token count that is not a multiple of 16
    (probed with M = 1, k = n = 32). False where it raises."""
    try:
        a = torch.ones(1, 32, device=device).to(FP8_DTYPE)
        b = torch.ones(32, 32, device=device).to(FP8_DTYPE)
        one = torch.ones((), device=device)
        torch._scaled_mm(a, b.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
        return True
    except (RuntimeError, ValueError):
        return False


# ----------------------------------------------------------------------------- model

class DenseMlp:
    """SwiGLU: gate_up GEMM -> silu(gate) * up (2 elementwise kernels) -> down GEMM."""

    def __init__(self, gu: Linear, d: Linear):
        self.gu, self.d = gu, d

    def __call__(self, hn: torch.Tensor) -> torch.Tensor:
        gate, up = self.gu(hn).chunk(2, dim=-1)                                   # [T, I] x2
        return self.d(F.silu(gate) * up)                                          # [T, h]


@dataclass
class Layer:
    """One decoder layer. ``mlp``: a DenseMlp or a moe_forward.MoeLayer. ``q_norm`` /
    ``k_norm`` [D]: Qwen3's per-head RMSNorm of q and k before RoPE (None: Llama)."""

    norm1: torch.Tensor
    qkv: Linear
    o: Linear
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

    @property
    def device(self) -> torch.device:
        return self.embed.device


def from_weights(w: Weights, stack: str, free: bool = False, **opts: object) -> Model:
    """The ``stack`` model of reference weights ``w`` (projections quantized layer by
    layer). ``free``: drop each bf16 projection from ``w`` once quantized, so the peak
    is the bf16 model, not bf16 + quantized. ``opts``: make_linear's options. Raises
    ValueError as make_linear does."""
    layers = []
    for i, lw in enumerate(w.layers):
        lin = {k: make_linear(lw[k], stack, **opts) for k in ("wqkv", "wo", "wgu", "wd")}
        for v in lin.values():
            if i > 0 and isinstance(v, Int4Linear):
                v.q = None          # layer 0 keeps its values for check_model only
        if free and stack != "torch-fused":
            for k in lin:
                lw[k] = None
        layers.append(Layer(norm1=lw["norm1"], qkv=lin["wqkv"], o=lin["wo"],
                            norm2=lw["norm2"], mlp=DenseMlp(lin["wgu"], lin["wd"])))
    return Model(shape=w.shape, stack=stack, weight_dtype=layers[0].qkv.weight_dtype
                 if layers else WEIGHT_DTYPE[stack], embed=w.embed, layers=layers,
                 norm_f=w.norm_f, lm_head=w.lm_head, inv_freq=w.inv_freq)


def build_dense(shape: Shape, stack: str, device: str | torch.device, seed: int = 0,
                **opts: object) -> Model:
    """Random bf16 weights on ``device`` (drawn in bf16), then the stack's projections."""
    w = random_weights(shape, device, torch.bfloat16, seed)
    return from_weights(w, stack, free=True, **opts)


def forward(m: Model, cache: KVCache, tokens: torch.Tensor, ctx: int, mode: str,
            mask: object = None) -> torch.Tensor:
    """One step, as reference.forward but with fused norms and the model's projections.

    tokens [B, q]; ``ctx`` tokens already cached per sequence. mode: ``decode`` (q == 1),
    ``verify`` (causal mask aligned to the end of the cache; ``mask`` prebuilt or built
    here), ``prefill`` (ctx == 0; logits of the last position only). Returns logits
    [B*q, V] (prefill [B, V]). Raises ValueError for a mode/q/ctx mismatch.
    Per layer on CUDA: rms_norm (1 fused kernel), qkv projection, [q/k norm: 2 fused
    norms, each after a contiguous copy of its strided view], RoPE (5 + 5 kernels),
    2 cache copies, SDPA (flash), a copy for the transpose-reshape, o projection, add,
    rms_norm, the MLP, add.
    """
    s = m.shape
    b, q = tokens.shape
    h_, hkv, d, eps = s.num_attention_heads, s.num_key_value_heads, s.d, s.rms_norm_eps
    if mode == "decode" and q != 1:
        raise ValueError(f"decode needs q == 1 (got {q})")
    if mode == "prefill" and ctx != 0:
        raise ValueError(f"prefill needs ctx == 0 (got {ctx})")
    if mode not in ("decode", "verify", "prefill"):
        raise ValueError(f"unknown mode {mode!r}")
    x = F.embedding(tokens.reshape(-1), m.embed)                                  # [T, h]
    hdim = (x.shape[-1],)
    cos, sin = rope_tables(m.inv_freq, ctx, q, x.dtype)                           # [q, D]
    end = ctx + q
    if mode == "verify" and mask is None:
        mask = verify_mask(q, end)
    for i, lw in enumerate(m.layers):
        hn = F.rms_norm(x, hdim, lw.norm1, eps)
        qkv = lw.qkv(hn)                                                          # [T, (H+2Hkv)D]
        xq = qkv[:, : h_ * d].view(b, q, h_, d)                                   # [B, q, H, D]
        xk = qkv[:, h_ * d: (h_ + hkv) * d].view(b, q, hkv, d)                    # [B, q, Hkv, D]
        xv = qkv[:, (h_ + hkv) * d:].view(b, q, hkv, d).transpose(1, 2)           # [B, Hkv, q, D]
        if lw.q_norm is not None:
            xq = F.rms_norm(xq, (d,), lw.q_norm, eps)
            xk = F.rms_norm(xk, (d,), lw.k_norm, eps)
        xq = apply_rope(xq.transpose(1, 2), cos, sin)                             # [B, H, q, D]
        xk = apply_rope(xk.transpose(1, 2), cos, sin)                             # [B, Hkv, q, D]
        cache.k[i, :, :, ctx:end].copy_(xk)
        cache.v[i, :, :, ctx:end].copy_(xv)
        keys = cache.k[i, :, :, :end]                                             # [B, Hkv, S, D]
        values = cache.v[i, :, :, :end]
        if mode == "decode":
            o = F.scaled_dot_product_attention(xq, keys, values, enable_gqa=True)
        elif mode == "prefill":
            o = F.scaled_dot_product_attention(xq, keys, values, is_causal=True,
                                               enable_gqa=True)
        else:
            o = F.scaled_dot_product_attention(xq, keys, values, attn_mask=mask,
                                               enable_gqa=True)
        o = o.transpose(1, 2).reshape(b * q, h_ * d)                              # [T, HD]
        x = x + lw.o(o)
        x = x + lw.mlp(F.rms_norm(x, hdim, lw.norm2, eps))
    x = F.rms_norm(x, hdim, m.norm_f, eps)
    if mode == "prefill":
        x = x.view(b, q, -1)[:, -1]                                               # [B, h]
    return F.linear(x, m.lm_head)                                                 # [T_out, V]


def check_model(m: Model, tokens: int = 16, seed: int = 0) -> dict[str, float]:
    """check_linear on layer 0's four projections with N(0, 1) activations: name ->
    relative error. A dense model only (an MoE layer: moe_forward.check_layer)."""
    g = torch.Generator(device=m.device).manual_seed(seed)
    lw = m.layers[0]
    out = {}
    for name, lin in (("qkv", lw.qkv), ("o", lw.o), ("gate_up", lw.mlp.gu),
                      ("down", lw.mlp.d)):
        x = randn((tokens, lin.k), 1.0, g, m.device, m.embed.dtype)
        out[name] = check_linear(lin, x)
    return out
