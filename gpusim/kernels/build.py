"""(model, stack, step shape) -> the kernels one forward step launches.

Pure and vectorised: ``batch``, ``ctx`` and ``q`` may be numpy arrays of equal length
(one entry per step shape) and every size in the returned kernels is an array over
those shapes. Layers are identical, so a per-layer op appears once with
``repeat = num_hidden_layers``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from gpusim.specs import ModelSpec, StackOp, StackSpec

Mode = Literal["decode", "verify", "prefill"]
MODES: tuple[str, ...] = ("decode", "verify", "prefill")
# a verify step of a token tree: q tree nodes under a boolean tree mask (each node sees
# the cache and its ancestors); a mode of the kernel model, not of the rows contract
TREE_MODE = "tree"
KERNEL_MODES: tuple[str, ...] = (*MODES, TREE_MODE)
Section = Literal["prologue", "layer", "epilogue"]


@dataclass(frozen=True)
class GemmShape:
    """out[m, n] = x[m, k] @ W[n, k]^T; m varies per step shape."""

    m: np.ndarray
    n: int
    k: int


@dataclass(frozen=True)
class AttentionShape:
    """SDPA over a KV cache: q new queries per sequence against kv_len keys.

    ``mode``: decode, verify (causal), prefill, or tree (a verify step under a boolean
    token-tree mask).
    """

    mode: str
    batch: np.ndarray
    q: np.ndarray
    kv_len: np.ndarray
    heads: int
    kv_heads: int
    head_dim: int
    shares_kv: bool = True  # one read of each KV head per GQA group


@dataclass(frozen=True)
class Kernel:
    """One op of the forward: ``launches`` kernels, run ``repeat`` times per step.

    Sizes are per occurrence (one layer), as arrays over step shapes. ``*_bytes`` are
    the least HBM traffic: each weight, KV entry and activation read or written once.
    """

    name: str
    kind: Literal["gemm", "attention", "elementwise", "embedding"]
    section: Section
    launches: int
    repeat: int
    flops: np.ndarray
    weight_bytes: np.ndarray
    kv_bytes: np.ndarray
    act_bytes: np.ndarray
    gemm: GemmShape | None = None
    attention: AttentionShape | None = None
    # launches (per occurrence) on PyTorch's non-vectorised path, per step shape
    strided_launches: np.ndarray | None = None
    # row reductions: [rows, row_elements] per step shape (times reduction kernels)
    reduction: np.ndarray | None = None

    @property
    def bytes(self) -> np.ndarray:
        return self.weight_bytes + self.kv_bytes + self.act_bytes


def _as_arrays(batch: object, ctx: object, q: object) -> tuple[np.ndarray, ...]:
    b, c, qq = (np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (batch, ctx, q))
    b, c, qq = np.broadcast_arrays(b, c, qq)
    return b, c, qq


def check_shape(mode: str, batch: np.ndarray, ctx: np.ndarray, q: np.ndarray) -> None:
    """Raise ValueError naming the first bad value of a step shape."""
    if mode not in KERNEL_MODES:
        raise ValueError(f"mode={mode!r} must be one of {', '.join(KERNEL_MODES)}")
    for name, arr, low in (("batch", batch, 1), ("q", q, 1), ("ctx", ctx, 0)):
        bad = ~np.isfinite(arr) | (arr < low) | (arr != np.round(arr))
        if bad.any():
            raise ValueError(f"{name}={arr[bad][0]:g} must be an integer >= {low}")
    if mode == "decode" and (q != 1).any():
        raise ValueError(f"q={q[q != 1][0]:g} must be 1 for decode")
    if mode == "prefill" and (ctx != 0).any():
        raise ValueError(f"ctx={ctx[ctx != 0][0]:g} must be 0 for prefill "
                         "(prefill with a cached prefix is a verify-shaped step)")


def _tensor_elements(op: StackOp, model: ModelSpec, b: np.ndarray, q: np.ndarray,
                     tokens: np.ndarray, out_tokens: np.ndarray) -> np.ndarray:
    per_token = {
        "hidden": model.hidden_size,
        "q": model.q_dim,
        "kv": model.kv_dim,
        "attn_out": model.q_dim,
        "intermediate": model.intermediate_size,
        "gate_up": 2 * model.intermediate_size,
    }
    if op.tensor in per_token:
        return tokens * per_token[op.tensor]
    if op.tensor == "rope_table":
        return q * model.head_dim_eff
    if op.tensor == "positions":
        return q
    if op.tensor == "logits":
        return out_tokens * model.vocab_size
    raise ValueError(f"op {op.name!r}: unknown tensor {op.tensor!r}")


def _reduction(op: StackOp, elements: np.ndarray, rows: np.ndarray) -> np.ndarray | None:
    """[rows, row_elements x reduction kernels] of an op's row reductions, or None."""
    if op.reduction_kernels == 0:
        return None
    row = elements / np.maximum(rows, 1.0)
    return np.stack([rows, row * op.reduction_kernels])


def _gemm_nk(weight: str, model: ModelSpec) -> tuple[int, int]:
    h, i = model.hidden_size, model.intermediate_size
    return {
        "qkv": (model.q_dim + 2 * model.kv_dim, h),
        "o": (h, model.q_dim),
        "gate_up": (2 * i, h),
        "down": (h, i),
        "lm_head": (model.vocab_size, h),
    }[weight]


def attention_flops(mode: str, b: np.ndarray, q: np.ndarray, kv_len: np.ndarray,
                    heads: int, head_dim: int) -> np.ndarray:
    """QK^T and PV multiply-adds of the unmasked score entries (causal counted once)."""
    ctx = kv_len - q
    # query i (1-based) of the q new ones sees ctx + i keys
    scores = q * ctx + q * (q + 1) / 2
    return 4.0 * b * heads * head_dim * scores


def gemm_kernel(m: np.ndarray, n: int, k: int, dtype_bytes: float, name: str = "gemm",
                section: Section = "layer", launches: int = 1, repeat: int = 1) -> Kernel:
    """``launches`` GEMMs out[m, n] = x[m, k] @ W[n, k]^T (``m`` an array over step
    shapes): each reads the weight and its input once and writes its output once."""
    m = np.asarray(m, dtype=np.float64)
    return Kernel(name=name, kind="gemm", section=section, launches=launches, repeat=repeat,
                  flops=2.0 * m * n * k, weight_bytes=np.full_like(m, float(n) * k * dtype_bytes),
                  kv_bytes=np.zeros_like(m), act_bytes=(m * k + m * n) * dtype_bytes,
                  gemm=GemmShape(m=m, n=n, k=k))


def build_kernels(model: ModelSpec, stack: StackSpec, mode: str, batch: object,
                  ctx: object, q: object) -> list[Kernel]:
    """The kernels of one forward step for every shape in (batch, ctx, q).

    Raises ValueError for an impossible shape (negative sizes, decode with q != 1, ...).
    """
    b, c, qq = _as_arrays(batch, ctx, q)
    check_shape(mode, b, c, qq)
    dt = model.dtype_bytes
    tokens = b * qq
    zeros = np.zeros_like(b)
    kernels: list[Kernel] = []
    sections: tuple[tuple[Section, tuple[StackOp, ...], int], ...] = (
        ("prologue", stack.prologue, 1),
        ("layer", stack.layer, model.num_hidden_layers),
        ("epilogue", stack.epilogue, 1),
    )
    for section, ops, repeat in sections:
        for op in ops:
            m_tok = b if (op.last_position_only_in_prefill and mode == "prefill") else tokens
            strided = np.where(tokens == 1, op.strided_kernels - op.vectorized_at_one_token,
                               op.strided_kernels).astype(np.float64)
            if op.op == "gemm":
                n, k = _gemm_nk(op.weight or "", model)
                kernels.append(gemm_kernel(m_tok, n, k, dt, name=op.name, section=section,
                                           launches=op.kernels, repeat=repeat))
            elif op.op == "attention":
                kv_len = c + qq
                kernels.append(Kernel(
                    name=op.name, kind="attention", section=section, launches=op.kernels,
                    repeat=repeat,
                    flops=attention_flops(mode, b, qq, kv_len, model.num_attention_heads,
                                          model.head_dim_eff),
                    weight_bytes=zeros,
                    # K and V of every cached and new position (new ones written before)
                    kv_bytes=2.0 * b * kv_len * model.kv_dim * dt,
                    act_bytes=2.0 * tokens * model.q_dim * dt,
                    attention=AttentionShape(
                        mode=mode, batch=b, q=qq, kv_len=kv_len,
                        heads=model.num_attention_heads,
                        kv_heads=model.num_key_value_heads, head_dim=model.head_dim_eff,
                        shares_kv=mode in op.shares_kv_in_group)))
            else:  # elementwise, embedding: stream a tensor
                elements = _tensor_elements(op, model, b, qq, tokens, m_tok)
                kernels.append(Kernel(
                    name=op.name, kind=op.op, section=section, launches=op.kernels,
                    repeat=repeat, flops=elements, weight_bytes=zeros, kv_bytes=zeros,
                    act_bytes=elements * op.bytes_per_element, strided_launches=strided,
                    reduction=_reduction(op, elements, m_tok)))
    return kernels


def kernel_launches(kernels: list[Kernel]) -> int:
    """Kernel launches in one step."""
    return sum(k.launches * k.repeat for k in kernels)


def step_totals(kernels: list[Kernel]) -> dict[str, np.ndarray]:
    """flops and bytes of the whole step (arrays over shapes)."""
    out = {"flops": 0.0, "weight_bytes": 0.0, "kv_bytes": 0.0, "act_bytes": 0.0}
    for k in kernels:
        out["flops"] = out["flops"] + k.flops * k.repeat
        out["weight_bytes"] = out["weight_bytes"] + k.weight_bytes * k.repeat
        out["kv_bytes"] = out["kv_bytes"] + k.kv_bytes * k.repeat
        out["act_bytes"] = out["act_bytes"] + k.act_bytes * k.repeat
    out["bytes"] = out["weight_bytes"] + out["kv_bytes"] + out["act_bytes"]
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}
