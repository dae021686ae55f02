"""A profiled step's kernels as launch units: the kernels one CPU op launched (a GEMM
and its split-K reduce, an attention kernel and its memset), each classified (GEMM,
attention, embedding, pointwise) with the bytes it moves, read from the op's recorded
input shapes, types and strides.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass

from gpusim.io.profile_trace import TracedKernel

GEMM_OPS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear",
                      "aten::_scaled_mm", "aten::_weight_int4pack_mm", "aten::_grouped_mm"})
GEMM_NAME = re.compile(r"nvjet|gemm|gemv|cutlass|splitKreduce|xmma|cublas", re.IGNORECASE)
ATTENTION_NAME = re.compile(r"flash_fwd|fmha|sdpa|attention", re.IGNORECASE)
EMBEDDING_OPS = frozenset({"aten::embedding", "aten::index_select"})
# element sizes of the profiler's type names
TYPE_BYTES = {"c10::BFloat16": 2, "c10::Half": 2, "float": 4, "double": 8, "long int": 8,
              "int": 4, "short int": 2, "bool": 1, "unsigned char": 1, "signed char": 1,
              "c10::Float8_e4m3fn": 1, "c10::Float8_e5m2": 1}
COPY_OPS = frozenset({"aten::copy_", "aten::index_copy_", "aten::index_put_"})
REDUCTIONS = frozenset({"aten::mean", "aten::sum", "aten::amax", "aten::max", "aten::min",
                        "aten::norm", "aten::var"})


@dataclass(frozen=True)
class Unit:
    """The kernels of one launching op: ``cls`` gemm | attention | embedding | pointwise,
    the op's name (a Triton kernel's name for compiled code), its input dims, and the
    bytes its kernels move (None when the trace recorded no shapes)."""

    cls: str
    op: str
    dims: tuple
    kernels: tuple[TracedKernel, ...]
    moved_bytes: float | None

    @property
    def launches(self) -> int:
        """Kernels launched, memsets and copies of the runtime left out (a GEMM's
        split-K reduce and an attention kernel's combine count)."""
        return sum(1 for k in self.kernels if not k.name.startswith(("Memset", "Memcpy")))

    @property
    def expands(self) -> bool:
        """A copy of an expanded view (a zero stride: repeat_kv's K/V to every head)."""
        return self.op == "aten::copy_" and any(
            isinstance(s, tuple) and 0 in s for k in self.kernels for s in k.strides)

    @property
    def signature(self) -> tuple:
        """What repeats layer after layer: class, op (a Triton kernel's name without its
        instance number) and a GEMM's (n, k)."""
        base = re.sub(r"_\d+$", "", self.op or self.kernels[0].name)
        if base.startswith("triton_"):
            # Inductor fuses different neighbours into a layer's kernels (the first
            # layers' norms recompute the embedding): its kind is what repeats
            base = "_".join(base.split("_")[:2])
        if self.cls == "gemm":
            return ("gemm", gemm_nk(self.dims))
        return (self.cls, base if self.cls == "pointwise" else "")


def _numel(dims: object) -> int:
    return math.prod(dims) if isinstance(dims, tuple) and all(
        isinstance(d, int) for d in dims) else 0


def gemm_nk(dims: tuple) -> tuple[int, int] | None:
    """(n, k) of a recorded GEMM call: the weight-like matrix among its inputs (mm and
    addmm take [k, n] after the activations, linear [n, k]); None without shapes."""
    mats = [d for d in dims if isinstance(d, tuple) and len(d) == 2
            and all(isinstance(x, int) for x in d)]
    for m_k, w in itertools.pairwise(mats):   # an out= argument may follow
        if m_k[1] == w[0]:
            return (w[1], w[0])
        if m_k[1] == w[1]:   # linear: weight [n, k]
            return (w[0], w[1])
    return None


def _footprint(dims: object, strides: object) -> int:
    """Distinct elements a tensor argument covers (an expanded view repeats elements:
    its zero strides do not count)."""
    if not isinstance(dims, tuple):
        return 0
    if isinstance(strides, (list, tuple)) and len(strides) == len(dims):
        return math.prod(d for d, s in zip(dims, strides, strict=True) if s != 0)
    return _numel(dims)


def _is_shape(d: object) -> bool:
    return isinstance(d, tuple) and bool(d) and all(isinstance(x, int) for x in d)


def _tensors(k: TracedKernel, strides: tuple):
    """(dims, element bytes, strides) of each tensor argument, a tensor list's members
    (torch.cat's inputs) one by one."""
    for i, d in enumerate(k.dims):
        size = TYPE_BYTES.get(k.types[i] if i < len(k.types) else "", 2)
        stride = strides[i] if i < len(strides) else None
        if _is_shape(d):
            yield d, size, stride
        elif isinstance(d, tuple) and d and all(_is_shape(x) for x in d):
            for member in d:
                yield member, size, None


def moved_bytes(k: TracedKernel, strides: tuple = ()) -> float | None:
    """Bytes a pointwise kernel reads and writes, from its op's inputs: every tensor
    input read once (its distinct elements), the output written (the largest input's
    size; a copy writes its destination, a reduction a row per row). None without
    recorded shapes."""
    if not k.op:
        return None   # no CPU side recorded: nothing to read the bytes from
    tensors = list(_tensors(k, strides))
    if not tensors:
        return 0.0    # scalars only (an arange, a fill of a few elements)
    if k.op in EMBEDDING_OPS:   # gathers rows: reads and writes index x row elements
        table = max(tensors, key=lambda t: _numel(t[0]))
        rows = min((_numel(d) for d, _, _ in tensors if d is not table[0]), default=1)
        return float(2 * rows * table[0][-1] * table[1])
    reads = sum(_footprint(d, s) * b for d, b, s in tensors)
    if k.op.startswith("triton_"):
        # Inductor passes outputs as arguments: each moved once; but a buffer far larger
        # than the others (an embedding table gathered from, a KV cache written at the
        # new positions) is indexed, not streamed: count it as one more write of the
        # largest of the rest
        sizes = sorted(_numel(d) for d, _, _ in tensors)
        small = sizes[len(sizes) // 2] if len(sizes) > 1 else sizes[0]
        kept = [t for t in tensors if _numel(t[0]) < 32 * max(small, 1)]
        if len(kept) < len(tensors) and kept:
            rest = max(kept, key=lambda t: _numel(t[0]))
            return float(sum(_footprint(d, s) * b for d, b, s in kept)
                         + _numel(rest[0]) * rest[1])
        return float(reads)
    if k.op in COPY_OPS:
        if k.op == "aten::copy_":   # copy_(dst, src): write dst, read src
            dst, src = tensors[0], tensors[-1]
            return float(_numel(dst[0]) * dst[1] + _footprint(src[0], src[2]) * src[1])
        src = tensors[-1]          # index_copy_(self, dim, index, source)
        return float(2 * _numel(src[0]) * src[1])
    if k.op in REDUCTIONS:
        return float(reads)
    largest = max(tensors, key=lambda t: _numel(t[0]))
    return float(reads + _numel(largest[0]) * largest[1])


def _cls(k: TracedKernel, first: bool) -> str:
    if k.op.startswith("triton_") or k.name.startswith("triton_"):
        # Inductor's kernels are pointwise or row reductions whatever their names say
        # (triton_poi_fused__scaled_dot_product_cudnn_attention_... ropes q)
        return "embedding" if first and "embedding" in k.op else "pointwise"
    if k.op in GEMM_OPS or (not k.op and GEMM_NAME.search(k.name)):
        return "gemm"
    if "attention" in k.op or (not k.op and ATTENTION_NAME.search(k.name)):
        return "attention"
    if k.op in EMBEDDING_OPS or (first and ("embedding" in k.op or "indexSelect" in k.name)):
        return "embedding"
    return "pointwise"


# kernels that finish the previous kernel's work: grouped with it when the trace has no
# CPU side to say so (a GEMM's split-K reduce, an attention kernel's combine)
TRAILING = re.compile(r"splitKreduce|lean_reduction|splitkv_combine", re.IGNORECASE)


def units(kernels: tuple[TracedKernel, ...]) -> list[Unit]:
    """Consecutive kernels of one launching op grouped into a unit, in launch order."""
    out: list[Unit] = []
    group: list[TracedKernel] = []

    def close() -> None:
        if not group:
            return
        lead = next((k for k in group if not k.name.startswith(("Memset", "Memcpy"))),
                    group[0])
        cls = _cls(lead, first=not out)
        moved: float | None = 0.0
        if cls == "pointwise" or cls == "embedding":
            parts = [moved_bytes(k, k.strides) for k in group
                     if not k.name.startswith(("Memset", "Memcpy"))]
            moved = None if any(p is None for p in parts) else float(sum(parts))  # type: ignore[arg-type]
        out.append(Unit(cls, lead.op, lead.dims, tuple(group), moved))
        group.clear()

    for k in kernels:
        if k.external_id is None:
            if k.name.startswith(("Memset", "Memcpy")):
                continue   # no op to belong to; not a launch the stack counts
            if group and TRAILING.search(k.name):
                group.append(k)
                continue
        if group and (k.external_id is None or k.external_id != group[-1].external_id):
            close()
        group.append(k)
    close()
    return out
