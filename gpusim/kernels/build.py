"""(model, stack, step shape) -> the kernels one forward step launches.

Pure and vectorised: ``batch``, ``ctx`` and ``q`` may be numpy arrays of equal length
(one entry per step shape) and every size in the returned kernels is an array over
those shapes. Layers are identical, so a per-layer op appears once with
``repeat = num_hidden_layers``. The stack says which ops a forward runs and which
attention kernel family runs each mode; the model says their sizes and dtype.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

import numpy as np

from gpusim.errors import FieldError
from gpusim.kernels.moe import MOE_TENSORS
from gpusim.kernels.moe import tensor_elements as moe_tensor_elements
from gpusim.kernels.quant import (
    check_stack,
    gemm_op_kernel,
    kv_stored,
    needs_family_kernel,
    padded,
)
from gpusim.kernels.records import Kernel, Section, attention_kernel, gemm_kernel
from gpusim.kernels.shape import as_arrays, check_shape
from gpusim.kernels.variants import layer_ops
from gpusim.specs import ModelSpec, StackOp, StackSpec
from gpusim.specs.enums import KernelKind, Mode


def _per_token(model: ModelSpec) -> dict[str, int]:
    """Elements per token of the tensors that have one row per token."""
    return {
        "hidden": model.hidden_size,
        "q": model.q_dim,
        "kv": model.kv_dim,
        "attn_out": model.q_dim,
        "intermediate": model.mlp_intermediate_size,
        "gate_up": 2 * model.mlp_intermediate_size,
    }


def _tensor_elements(op: StackOp, model: ModelSpec, b: np.ndarray, q: np.ndarray,
                     tokens: np.ndarray, out_tokens: np.ndarray, cache: np.ndarray
                     ) -> np.ndarray:
    per_token = _per_token(model)
    if op.tensor in per_token:
        return tokens * per_token[op.tensor]
    if op.tensor == "rope_table":
        return q * model.head_dim_eff
    if op.tensor == "positions":
        return q
    if op.tensor == "logits":
        return out_tokens * model.vocab_size
    if op.tensor == "kv_cache":
        return b * cache * model.kv_dim
    if op.tensor == "kv_cache_expanded":
        return b * cache * model.q_dim
    if op.tensor == "mask":
        return tokens * cache
    if op.tensor == "tokens":
        return tokens
    if op.tensor == "scalar":
        return np.ones_like(b)
    if op.tensor in MOE_TENSORS:
        return moe_tensor_elements(op.tensor, model, tokens)
    raise ValueError(f"op {op.name!r}: unknown tensor {op.tensor!r}")


def _reduction(op: StackOp, elements: np.ndarray, rows: np.ndarray) -> np.ndarray | None:
    """[rows, row_elements x reduction kernels] of an op's row reductions, or None."""
    if op.reduction_kernels == 0:
        return None
    row = elements / np.maximum(rows, 1.0)
    return np.stack([rows, row * op.reduction_kernels])


def gemm_nk(weight: str, model: ModelSpec) -> tuple[int, int]:
    """(n, k) of one of the model's weight matrices: out[m, n] = x[m, k] @ W[n, k]^T."""
    h, i = model.hidden_size, model.mlp_intermediate_size
    return {
        "qkv": (model.q_dim + 2 * model.kv_dim, h),
        "q": (model.q_dim, h),
        "k": (model.kv_dim, h),
        "v": (model.kv_dim, h),
        "o": (h, model.q_dim),
        "gate_up": (2 * i, h),
        "gate": (i, h),
        "up": (i, h),
        "down": (h, i),
        "lm_head": (model.vocab_size, h),
    }[weight]


# tensors an op can read that live in the KV cache (no kernel just wrote them; the
# serving tables, above this layer, add the length mask: serving.step_ops.CACHE_TENSORS)
_KV_CACHE_TENSORS = ("kv_cache", "kv_cache_expanded")

# the kernel kind of a streaming op (a dict: an enum call per op showed in the fast path)
_STREAM_KINDS = {"elementwise": KernelKind.ELEMENTWISE, "embedding": KernelKind.EMBEDDING}


def _slots(op: StackOp, model: ModelSpec, tokens: np.ndarray) -> np.ndarray | None:
    """The token-slots an index op's kernel takes as indices (None: no index kernel).
    Raises FieldError for a dense model, which has no token-slots."""
    if not op.small_index_s:
        return None
    if not model.is_moe:
        raise FieldError("small_index_s", f"op {op.name}: small_index_s prices an index "
                         f"kernel over an MoE layer's token-slots; {model.name} is dense")
    return moe_tensor_elements("routing", model, tokens)


def _op_kernel(op: StackOp, model: ModelSpec, stack: StackSpec, mode: Mode,
               section: Section, repeat: int, b: np.ndarray, c: np.ndarray,
               qq: np.ndarray, tokens: np.ndarray, cache: np.ndarray) -> Kernel:
    if op.pad_tokens_to > 1 and op.op != "gemm":  # rows padded for fp8's _scaled_mm
        tokens = padded(tokens, op.pad_tokens_to)   # (a gemm pads its own: kernels.quant)
    m_tok = b if (op.last_position_only_in_prefill and mode == Mode.PREFILL) else tokens
    dtype = model.dtype
    if op.op == "gemm":
        if needs_family_kernel(op, model):  # quantized, another family, MoE (kernels.quant)
            return gemm_op_kernel(op, model, section, repeat, m_tok, tokens)
        n, k = gemm_nk(op.weight or "", model)
        return gemm_kernel(m_tok, n, k, dtype, name=op.name, section=section,
                           launches=op.kernels, repeat=repeat)
    if op.op == "attention":
        keys = cache if op.keys == "allocated_cache" else c + qq
        kv_heads = (model.num_attention_heads if op.kv_heads == "expanded"
                    else model.num_key_value_heads)
        heads, rows = model.num_attention_heads, qq
        if op.decode_packs_gqa and mode == Mode.DECODE:   # query heads as rows
            group = model.num_attention_heads // kv_heads
            heads, rows = kv_heads, qq * group
        return kv_stored(attention_kernel(op.name, mode, stack.family(mode), b, rows, keys,
                                          heads, kv_heads, model.head_dim_eff, dtype,
                                          section, op.kernels, repeat), model)
    # elementwise, embedding: stream a tensor
    strided = np.where(tokens == 1, op.strided_kernels - op.vectorized_at_one_token,
                       op.strided_kernels).astype(np.float64)
    elements = _tensor_elements(op, model, b, qq, tokens, m_tok, cache)
    moved = elements * op.bytes_per_element
    cache_read = None
    if op.reads is not None:
        read_op = op.model_copy(update={"tensor": op.reads})
        read = (_tensor_elements(read_op, model, b, qq, tokens, m_tok, cache)
                * op.read_bytes_per_element)
        moved = moved + read
        if op.reads in _KV_CACHE_TENSORS:
            cache_read = read
    zeros = np.zeros_like(b)
    # one value from the whole tensor: priced from its elements, not as rows
    whole = op.reduces == "tensor" and op.reduction_kernels > 0
    # rows of a row reduction or walk: a token's, or a head's (per-head q/k norms)
    heads = op.row == "head"
    rows = elements / model.head_dim_eff if heads else m_tok
    launches = 0 if op.only_grouped and model.num_key_value_heads == model.num_attention_heads \
        else op.kernels
    return Kernel(name=op.name, kind=_STREAM_KINDS[op.op], section=section,
                  launches=launches, repeat=repeat, flops=elements * op.flops_per_element,
                  weight_bytes=zeros,
                  kv_bytes=zeros, act_bytes=moved, dtype=dtype,
                  strided_launches=strided,
                  reduction=None if whole else _reduction(op, elements, rows),
                  tensor_reductions=op.reduction_kernels if whole else 0,
                  reduced_elements=elements if whole else None,
                  sort_elements=elements if op.sorts else None,
                  index_count=_slots(op, model, tokens),
                  small_index_s=op.small_index_s,
                  atomic_elements=elements if op.atomic_adds else None,
                  row_walk=op.row_walk,
                  row_walk_elements=(None if op.row_walk is None else
                                     np.full_like(elements, float(model.head_dim_eff))
                                     if heads else elements / np.maximum(tokens, 1.0)),
                  row_walk_rows=None if op.row_walk is None else rows,
                  bandwidth_fraction=op.bandwidth_fraction, l2_chain=op.l2_chain,
                  cache_read_bytes=cache_read,
                  launched=(np.where(tokens == 1, 0.0, 1.0) if op.skipped_at_one_token
                            else None))


def build_kernels(model: ModelSpec, stack: StackSpec, mode: str, batch: object,
                  ctx: object, q: object, cache_len: object = None) -> list[Kernel]:
    """The kernels of one forward step for every shape in (batch, ctx, q).

    ``cache_len``: positions each sequence's KV cache holds (default ctx + q); only
    stacks that read their whole allocated cache (a static cache: attention
    ``keys: allocated_cache``, ``kv_cache`` tensors) depend on it.
    Raises FieldError for an impossible shape (negative sizes, decode with q != 1, a
    cache shorter than ctx + q, ...) or an unknown mode.
    """
    b, c, qq = as_arrays(batch, ctx, q)
    m = check_shape(mode, b, c, qq)
    check_stack(model, stack)  # weights and KV cache the stack's kernels can run
    cache = c + qq if cache_len is None else np.broadcast_to(
        np.asarray(cache_len, dtype=np.float64), b.shape)
    if cache_len is not None and bool((cache < c + qq).any()):
        short = cache < c + qq
        raise FieldError("cache_len", f"cache_len={cache[short][0]:g} must hold ctx + q "
                         f"= {(c + qq)[short][0]:g} positions")
    sections: tuple[tuple[Section, tuple[StackOp, ...], int], ...] = (
        ("prologue", stack.prologue, 1),
        ("layer", layer_ops(model, stack), model.num_hidden_layers),
        ("epilogue", stack.epilogue, 1),
    )
    tokens = b * qq
    per_token = _per_token(model)
    # a streaming op the same as an earlier one but for its name (the norm before
    # attention and the one before the MLP) launches the same kernels: built once, its
    # twin shares their arrays, so the cost model prices them once (cost.steps)
    built: dict[tuple[StackOp, object], Kernel] = {}
    kernels = []
    for section, ops, repeat in sections:
        for op in ops:
            if not op.runs_in(m):
                continue
            if op.op not in _STREAM_KINDS:
                kernels.append(_op_kernel(op, model, stack, m, section, repeat, b, c, qq,
                                          tokens, cache))
                continue
            key = (_unnamed(op), per_token.get(op.tensor or "", op.tensor))
            twin = built.get(key)
            if twin is None:
                twin = built[key] = _op_kernel(op, model, stack, m, section, repeat, b, c,
                                               qq, tokens, cache)
                kernels.append(twin)
            else:
                kernels.append(replace(twin, name=op.name, section=section, repeat=repeat))
    return kernels


@lru_cache(maxsize=4096)
def _unnamed(op: StackOp) -> StackOp:
    """``op`` without its name and the tensor it streams (what makes two streaming ops
    twins, with the tensor's width per token)."""
    return op.model_copy(update={"name": "op", "tensor": None})
