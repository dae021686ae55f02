"""Quantized Llama forwards: the four projection GEMMs in fp8, int4 or int8, the rest bf16.

The base is "torch-fused" (fused_forward.py: reference.forward with torch's fused
``F.rms_norm`` in place of the 8-kernel Hugging Face norm); ``fused_forward.forward``
runs every model built here. The quantized stacks replace the four projection GEMMs of
every layer (qkv, o, gate_up, down); embedding, LM head, norms, RoPE and attention stay
as in torch-fused, in bf16. The KV cache stays bf16.

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

from collections.abc import Callable

import torch
import torch.nn.functional as F
from fused_forward import Bf16Linear, Model, model_from, randn, random_weights
from reference import Shape, Weights

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)   # 448
STACKS = ("torch-fused", "torch-fp8", "torch-int4", "torch-int8wo")
WEIGHT_DTYPE = {"torch-fused": "bf16", "torch-fp8": "fp8_e4m3", "torch-int4": "int4_g128",
                "torch-int8wo": "int8"}


# ----------------------------------------------------------------------------- linears

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

def from_weights(w: Weights, stack: str, free: bool = False, **opts: object) -> Model:
    """The ``stack`` model of reference weights ``w`` (projections quantized layer by
    layer; int4 keeps its unpacked values in layer 0 alone, for check_model). ``free``:
    drop each bf16 projection from ``w`` once quantized, so the peak is the bf16 model,
    not bf16 + quantized. ``opts``: make_linear's options. Raises ValueError as
    make_linear does."""
    def linear(i: int, t: torch.Tensor) -> Linear:
        lin = make_linear(t, stack, **opts)
        if i > 0 and isinstance(lin, Int4Linear):
            lin.q = None
        return lin

    return model_from(w, stack, linear, free=free and stack != "torch-fused")


def build_dense(shape: Shape, stack: str, device: str | torch.device, seed: int = 0,
                **opts: object) -> Model:
    """Random bf16 weights on ``device`` (drawn in bf16), then the stack's projections."""
    w = random_weights(shape, device, torch.bfloat16, seed)
    return from_weights(w, stack, free=True, **opts)


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
