"""Quantized projections and the model a stack runs: which weights each GEMM kernel
family takes, a GEMM op's kernel record in its family, and ``for_stack``.

A stack's gemm op names its family (``family:``, cublas when not given) as its
attention op names one per mode. A family reads its weights in given dtypes and scale
layouts; the model says how its weights are stored (``ModelSpec.quantization``). A
stack that implies a quantization (torch-fp8, torch-int4) gives it to a model stored in
the activations' dtype (``for_stack``); a model the stack cannot run is refused, never
priced as something else (``check_stack``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from gpusim.errors import FieldError
from gpusim.kernels.moe import experts_kernel
from gpusim.kernels.records import GemmShape, Kernel, Section, gemm_kernel
from gpusim.kernels.variants import layer_ops
from gpusim.specs import ModelSpec, StackOp, StackSpec
from gpusim.specs.enums import KernelKind
from gpusim.specs.model import EXPERT_WEIGHTS, KV_DTYPES, WEIGHT_DTYPES, Quantization
from gpusim.units import DTYPE_BYTES


@dataclass(frozen=True)
class Takes:
    """What a GEMM kernel family reads: unquantized weights (in the activations'
    dtype) or not, the quantized dtypes and scale layouts it takes, and whether it runs
    the routed experts (a grouped GEMM) or one dense projection."""

    unquantized: bool
    quantized: frozenset[str]
    scales: frozenset[str]
    experts: bool
    what: str


GEMM_FAMILIES: dict[str, Takes] = {
    "cublas": Takes(True, frozenset(), frozenset(), False,
                    "unquantized weights (F.linear)"),
    "scaled_mm": Takes(False, frozenset({"fp8"}), frozenset({"tensor", "channel"}), False,
                       "fp8 weights with per-tensor or per-channel scales "
                       "(torch._scaled_mm)"),
    "tinygemm": Takes(False, frozenset({"int4"}), frozenset({"group"}), False,
                      "int4 weights in groups of 32 to 256 with bf16 scales and zero "
                      "points (torch._weight_int4pack_mm)"),
    "int8wo": Takes(False, frozenset({"int8"}), frozenset({"channel"}), False,
                    "int8 weights with per-channel scales (weight-only, Inductor)"),
    "grouped_mm": Takes(True, frozenset(), frozenset(), True,
                        "unquantized expert weights (torch._grouped_mm)"),
    "fused_moe": Takes(True, frozenset({"fp8", "int8", "int4", "fp4"}),
                       frozenset({"tensor", "channel", "block", "group"}), True,
                       "expert weights, unquantized or quantized (a fused-MoE "
                       "Triton/CUTLASS kernel)"),
}
TINYGEMM_GROUPS = (32, 64, 128, 256)
# the quantization a --weight-dtype gets when neither the stack nor the model says more
DEFAULT_QUANTIZATION: dict[str, Quantization] = {
    "fp8": Quantization(weight_dtype="fp8", scales="tensor"),
    "int8": Quantization(weight_dtype="int8", scales="channel"),
    "int4": Quantization(weight_dtype="int4", scales="group", group_size=128,
                         zero_points=True),
    "fp4": Quantization(weight_dtype="fp4", scales="group", group_size=32),
}
_HF_NAME = {"bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class QuantGemmShape(GemmShape):
    """A projection GEMM of a non-cuBLAS family: ``rows`` the tokens before padding
    (``m`` is padded to the stack's multiple), ``group_size`` of its weight's scales."""

    rows: np.ndarray | None = None
    group_size: int = 0


def padded(tokens: np.ndarray, multiple: int) -> np.ndarray:
    """``tokens`` rounded up to a multiple of ``multiple``."""
    return tokens if multiple <= 1 else np.ceil(tokens / multiple) * multiple


# PyTorch's reduce config for a contiguous tensor reduced to one value (Reduce.cuh,
# setReduceConfig): one CTA of 512 threads, each walking values_per_thread = N / 512
# elements, until that reaches MAX_VALUES_PER_THREAD; then the input is split over
# max(min(target grid, vpt / MIN_VALUES_PER_THREAD), vpt / MAX_VALUES_PER_THREAD) CTAs
# (target grid: 4 CTAs of 512 threads per SM) finishing through global memory (a
# memset of its semaphores first). Profiled on H100 for fp8's amax (torch-fp8
# kernels.csv): 8.9 us a launch at 16 tokens (three one-CTA walks of 65536 elements)
# against 6.5 at 128 tokens (split), and a memset per launch from 131072 elements.
REDUCE_THREADS = 512
MIN_VALUES_PER_THREAD, MAX_VALUES_PER_THREAD = 16, 256
REDUCE_CTAS_PER_SM = 4


def whole_tensor_walk(elements: np.ndarray, sm_count: int = 132) -> np.ndarray:
    """Elements the busiest CTA walks when PyTorch reduces a whole tensor of
    ``elements`` to one value: all of them in one CTA below 256 values a thread, else
    its share of the split (the GPU's latency-bound walk rate prices them:
    ``cost.pointwise.reduction_s`` with one row). ``sm_count``: the H100's and H200's
    132, as the kernel list is built before a GPU is chosen; on a GPU with other SMs
    the split's size moves a little, which is not priced."""
    n = np.asarray(elements, dtype=np.float64)
    vpt = np.ceil(n / REDUCE_THREADS)
    ctas = np.maximum(np.minimum(REDUCE_CTAS_PER_SM * sm_count,
                                 np.ceil(vpt / MIN_VALUES_PER_THREAD)),
                      np.ceil(vpt / MAX_VALUES_PER_THREAD))
    return np.where(vpt >= MAX_VALUES_PER_THREAD,
                    np.ceil(vpt / ctas) * REDUCE_THREADS, n)


def whole_tensor_splits(elements: np.ndarray) -> np.ndarray:
    """1 where PyTorch splits the reduction of a whole tensor of ``elements`` over
    CTAs (256 values a thread or more: ``whole_tensor_walk``), else 0, per shape."""
    vpt = np.ceil(np.asarray(elements, dtype=np.float64) / REDUCE_THREADS)
    return (vpt >= MAX_VALUES_PER_THREAD).astype(np.float64)


def _nk(weight: str, model: ModelSpec) -> tuple[int, int]:
    """(n, k) of a projection's or an MoE layer's weight W[n, k]."""
    h, i = model.hidden_size, model.mlp_intermediate_size
    return {"qkv": (model.q_dim + 2 * model.kv_dim, h), "q": (model.q_dim, h),
            "k": (model.kv_dim, h), "v": (model.kv_dim, h), "o": (h, model.q_dim),
            "gate_up": (2 * i, h), "gate": (i, h), "up": (i, h), "down": (h, i),
            "lm_head": (model.vocab_size, h), "router": (model.num_experts, h),
            "shared_gate": (1, h)}[weight]


def needs_family_kernel(op: StackOp, model: ModelSpec) -> bool:
    """Whether a gemm op is more than a plain cuBLAS GEMM of the model's dtype: another
    family, a quantized weight, padded tokens, or an MoE layer's weight."""
    return (op.family not in (None, "cublas") or op.pad_tokens_to > 1
            or model.quantized(op.weight or "")
            or op.weight in ("router", "shared_gate", *EXPERT_WEIGHTS))


def gemm_op_kernel(op: StackOp, model: ModelSpec, section: Section, repeat: int,
                   m_tok: np.ndarray, tokens: np.ndarray) -> Kernel:
    """The kernel record of a gemm op in its family: ``m_tok`` rows (padded to the
    op's multiple), the weight's stored bytes (scales included), fp8 activations for
    ``scaled_mm``, the activations' dtype otherwise; expert weights as the grouped GEMM
    of the experts the step's ``tokens`` touch."""
    family = op.family or "cublas"
    weight = op.weight or ""
    if weight in EXPERT_WEIGHTS:
        return experts_kernel(op.name, weight, family, model, section, repeat, tokens,
                              op.kernels)
    n, k = _nk(weight, model)
    m = padded(np.asarray(m_tok, dtype=np.float64), op.pad_tokens_to)
    if family == "cublas" and not model.quantized(weight):
        return gemm_kernel(m, n, k, model.dtype, name=op.name, section=section,
                           launches=op.kernels, repeat=repeat)
    w_dtype = model.weight_dtype if model.quantized(weight) else model.dtype
    x_dtype = "fp8" if family == "scaled_mm" else model.dtype
    group = (model.quantization.group_size or 0) if model.quantization else 0
    return Kernel(name=op.name, kind=KernelKind.GEMM, section=section, launches=op.kernels,
                  repeat=repeat, flops=2.0 * m * n * k,
                  weight_bytes=np.full_like(m, model.matrix_bytes(weight, n, k)),
                  kv_bytes=np.zeros_like(m),
                  act_bytes=m * k * DTYPE_BYTES[x_dtype] + m * n * DTYPE_BYTES[model.dtype],
                  dtype=x_dtype,
                  gemm=QuantGemmShape(m=m, n=n, k=k, x_dtype=x_dtype, w_dtype=w_dtype,
                                      family=family, rows=np.asarray(m_tok, dtype=np.float64),
                                      group_size=group))


def _gemm_ops(model: ModelSpec, stack: StackSpec) -> list[StackOp]:
    ops = (*stack.prologue, *layer_ops(model, stack), *stack.epilogue)
    return [op for op in ops if op.op == "gemm"]


def _weights_of(model: ModelSpec) -> str:
    return (f"{model.weight_dtype} ({model.quantization.describe()})" if model.quantization
            else model.dtype)


def check_stack(model: ModelSpec, stack: StackSpec) -> None:
    """Raise FieldError (``weight_dtype``, ``kv_dtype``) when ``stack``'s kernels cannot
    run ``model``'s weights or KV cache as stored, and ValueError for a stack whose
    gemm op names an unknown family or puts expert weights in a dense family."""
    for op in _gemm_ops(model, stack):
        family = op.family or "cublas"
        takes = GEMM_FAMILIES.get(family)
        if takes is None:
            raise ValueError(f"stack {stack.name}: op {op.name!r}: unknown GEMM family "
                             f"{family!r}; known: {', '.join(GEMM_FAMILIES)}")
        if (op.weight in EXPERT_WEIGHTS) != takes.experts:
            raise ValueError(f"stack {stack.name}: op {op.name!r}: {family} runs "
                             f"{'experts' if takes.experts else 'dense projections'}, "
                             f"not {op.weight}")
        qz = model.quantization if model.quantized(op.weight or "") else None
        ok = (takes.unquantized if qz is None else
              qz.weight_dtype in takes.quantized and qz.scales in takes.scales)
        if ok and family == "tinygemm" and qz is not None:
            ok = (qz.group_size in TINYGEMM_GROUPS and qz.zero_points
                  and qz.scale_dtype_eff == "bf16")
        if not ok:
            raise FieldError("weight_dtype", f"weight_dtype={model.weight_dtype!r}: "
                             f"{model.name}'s weights are {_weights_of(model)}; stack "
                             f"{stack.name} runs {op.name} with {family}, which takes "
                             f"{takes.what}")
    kv = model.kv_dtype_eff
    if kv != model.dtype and kv not in stack.kv_dtypes:
        raise FieldError("kv_dtype", f"kv_dtype={kv!r}: stack {stack.name} stores its KV "
                         f"cache in the activations' dtype ({model.dtype})"
                         + (f" or {', '.join(stack.kv_dtypes)}" if stack.kv_dtypes else "")
                         + "; a stack whose attention reads another lists it in kv_dtypes")


def for_stack(model: ModelSpec, stack: StackSpec, weight_dtype: str | None = None,
              kv_dtype: str | None = None) -> ModelSpec:
    """``model`` as ``stack`` runs it: its weights in ``weight_dtype`` when given (bf16,
    fp16: unquantized, the activations' dtype too; fp8, int8, int4, fp4: quantized as
    the stack's or the model's own quantization of that dtype, else
    ``DEFAULT_QUANTIZATION``), else as stored, else as the stack implies; its KV cache
    in ``kv_dtype`` when given. Raises FieldError (``weight_dtype``, ``kv_dtype``) for
    an unknown dtype or one the stack cannot run (``check_stack``)."""
    update: dict[str, object] = {}
    if weight_dtype is not None:
        if weight_dtype not in WEIGHT_DTYPES:
            raise FieldError("weight_dtype", f"weight_dtype={weight_dtype!r} must be one of "
                             f"{', '.join(WEIGHT_DTYPES)}")
        if weight_dtype in _HF_NAME:
            update.update(torch_dtype=_HF_NAME[weight_dtype], quantization=None)
        else:
            same = [q for q in (stack.quantization, model.quantization)
                    if q is not None and q.weight_dtype == weight_dtype]
            update["quantization"] = same[0] if same else DEFAULT_QUANTIZATION[weight_dtype]
    elif model.quantization is None and stack.quantization is not None:
        update["quantization"] = stack.quantization
    if kv_dtype is not None:
        if kv_dtype not in KV_DTYPES:
            raise FieldError("kv_dtype", f"kv_dtype={kv_dtype!r} must be one of "
                             f"{', '.join(KV_DTYPES)}")
        update["kv_dtype"] = kv_dtype
    if update:
        data = {**model.model_dump(), **{k: v.model_dump() if isinstance(v, Quantization)
                                         else v for k, v in update.items()}}
        try:
            model = ModelSpec.model_validate(data)
        except ValueError as exc:  # pydantic's ValidationError: a group that does not fit
            first = exc.errors()[0] if hasattr(exc, "errors") else {"msg": str(exc)}
            raise FieldError("weight_dtype", f"weight_dtype={weight_dtype!r}: "
                             f"{first['msg']}") from None
    check_stack(model, stack)
    return model


def kv_stored(kernel: Kernel, model: ModelSpec) -> Kernel:
    """An attention kernel reading its KV cache as ``model`` stores it (``kv_dtype``):
    the KV bytes at the cache's element size; its arithmetic stays in the
    activations' dtype (the kernel converts as it loads). The stack's own ops that write
    the cache move the bytes its file gives them (a stack listing fp8 in ``kv_dtypes``
    writes them for its fp8 cache)."""
    if model.kv_dtype_eff == model.dtype:
        return kernel
    scale = DTYPE_BYTES[model.kv_dtype_eff] / DTYPE_BYTES[model.dtype]
    return replace(kernel, kv_bytes=kernel.kv_bytes * scale)
