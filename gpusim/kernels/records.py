"""What a forward step launches, as records the cost model prices.

A ``Kernel`` is one op of the forward: ``launches`` kernels run ``repeat`` times per
step (layers are identical, so a per-layer op appears once with ``repeat`` = layers).
Sizes are arrays over step shapes, so thousands of shapes are built and priced at once.
Every kernel carries the dtype its arithmetic runs in (a GEMM also its operands'), so
the cost model uses that dtype's throughput and element size.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Literal

import numpy as np

from gpusim.specs.enums import KernelKind
from gpusim.units import DTYPE_BYTES

Section = Literal["prologue", "layer", "epilogue"]


@dataclass(frozen=True)
class GemmShape:
    """out[m, n] = x[m, k] @ W[n, k]^T; m varies per step shape. ``x_dtype`` and
    ``w_dtype`` are the operands' storage dtypes (a weight-only quantized GEMM reads
    int4 weights and bf16 activations). ``family``: the GEMM kernel family that runs
    it (``gpusim.cost.gemm_families``; cublas: ``cost.gemm``'s model)."""

    m: np.ndarray
    n: int
    k: int
    x_dtype: str = "bf16"
    w_dtype: str = "bf16"
    family: str = "cublas"


@dataclass(frozen=True)
class AttentionShape:
    """Attention over a KV cache: q new queries per sequence against kv_len keys.

    ``mode``: decode, verify (causal), prefill, or tree (a verify step under a boolean
    token-tree mask). ``family``: the attention kernel family that runs it
    (``gpusim.cost.attention``), chosen by the stack per mode.
    """

    mode: str
    family: str
    batch: np.ndarray
    q: np.ndarray
    kv_len: np.ndarray
    heads: int
    kv_heads: int
    head_dim: int

    @property
    def group(self) -> int:
        """Query heads per KV head (GQA)."""
        return self.heads // self.kv_heads


@dataclass(frozen=True)
class CollectiveShape:
    """A collective among ``group`` GPUs (``gpusim.kernels.parallel`` adds them):
    ``op`` all_reduce | all_gather | reduce_scatter | all_to_all | send, over buffers of
    ``size_bytes`` per step shape (nccl-tests' convention: all_gather's gathered
    output), by ``library`` nccl | custom (vLLM's one/two-shot all-reduce)."""

    op: str
    size_bytes: np.ndarray
    group: int
    library: str = "nccl"


@dataclass(frozen=True)
class Kernel:
    """One op of the forward: ``launches`` kernels, run ``repeat`` times per step.

    Sizes are per occurrence (one layer), as arrays over step shapes. ``*_bytes`` are
    the least HBM traffic: each weight, KV entry and activation read or written once.
    ``dtype``: the dtype its arithmetic runs in (its tensor-core or CUDA-core rate).
    """

    name: str
    kind: KernelKind
    section: Section
    launches: int
    repeat: int
    flops: np.ndarray
    weight_bytes: np.ndarray
    kv_bytes: np.ndarray
    act_bytes: np.ndarray
    dtype: str = "bf16"
    gemm: GemmShape | None = None
    attention: AttentionShape | None = None
    # launches (per occurrence) on PyTorch's non-vectorised path, per step shape
    strided_launches: np.ndarray | None = None
    # row reductions: [rows, row_elements] per step shape (times reduction kernels)
    reduction: np.ndarray | None = None
    # its whole-tensor reductions (one value from a whole tensor): how many, and the
    # elements each reads (per step shape; None: it has none); their walk and whether
    # they split over CTAs follow from the elements (cost.pointwise.tensor_reduction_s)
    tensor_reductions: int = 0
    reduced_elements: np.ndarray | None = None
    # keys one of its kernels sorts in one CTA (torch.sort / argsort), per step shape
    sort_elements: np.ndarray | None = None
    # indices one of its kernels walks one by one when they are few (PyTorch's SmallIndex
    # kernels), per step shape, and the time each takes
    index_count: np.ndarray | None = None
    small_index_s: float = 0.0
    # elements one of its kernels adds into another tensor atomically (per step shape;
    # None: none)
    atomic_elements: np.ndarray | None = None
    # one of its kernels is a known kernel whose CTA walks one token row serially, rows
    # side by side (a StackOp's row_walk; None: none is), the elements of that row and
    # the rows it walks (per step shape)
    row_walk: str | None = None
    row_walk_elements: np.ndarray | None = None
    row_walk_rows: np.ndarray | None = None
    # the fraction of a vectorised kernel's bandwidth this op's kernels reach, when its
    # stack file gives one (read off a profile), in place of the strided-path model
    bandwidth_fraction: float | None = None
    # a pointwise op whose input the kernel before it just wrote (its L2-resident part
    # streams at L2 speed), or one that streams a tensor from HBM (false)
    l2_chain: bool = True
    # of its bytes, those it reads from the KV cache, which no kernel just wrote: they
    # stream from HBM even in an L2 chain (per step shape; None: none)
    cache_read_bytes: np.ndarray | None = None
    # a collective between GPUs (tensor/pipeline/expert parallelism): what it moves
    collective: CollectiveShape | None = None
    # per step shape, 1 where its kernels launch and 0 where they do not (a copy PyTorch
    # skips at one token: StackOp.skipped_at_one_token); None: at every shape
    launched: np.ndarray | None = None

    @property
    def bytes(self) -> np.ndarray:
        return self.weight_bytes + self.kv_bytes + self.act_bytes

    def shape_launches(self) -> int | np.ndarray:
        """Its launches per occurrence at each shape: ``launches``, or none where it does
        not launch (``launched``)."""
        return self.launches if self.launched is None else self.launches * self.launched

    def cost_key(self) -> tuple[object, ...]:
        """What its cost depends on: the identity of every field but where and how
        often it runs (name, section, repeat). Two kernels with equal keys share those
        objects, so they cost the same (a twin ``kernels.build`` made); two equal but
        separately built kernels merely get different keys. The key holds only while
        both are alive (identities are reused once freed)."""
        return tuple(map(id, _cost_fields(self)))


_cost_fields = attrgetter(*(f.name for f in fields(Kernel)
                            if f.name not in ("name", "section", "repeat")))


def gemm_kernel(m: object, n: int, k: int, dtype: str = "bf16", name: str = "gemm",
                section: Section = "layer", launches: int = 1, repeat: int = 1,
                w_dtype: str | None = None) -> Kernel:
    """``launches`` GEMMs out[m, n] = x[m, k] @ W[n, k]^T (``m`` an array over step
    shapes, or a number) in ``dtype`` (activations and output; weights in ``w_dtype``,
    the same by default): each reads the weight and its input once and writes its
    output once. Raises KeyError for an unknown dtype."""
    m = np.atleast_1d(np.asarray(m, dtype=np.float64))
    w_dtype = w_dtype or dtype
    x_bytes, w_bytes = DTYPE_BYTES[dtype], DTYPE_BYTES[w_dtype]
    return Kernel(name=name, kind=KernelKind.GEMM, section=section, launches=launches,
                  repeat=repeat, flops=2.0 * m * n * k,
                  weight_bytes=np.full_like(m, float(n) * k * w_bytes),
                  kv_bytes=np.zeros_like(m), act_bytes=(m * k + m * n) * x_bytes,
                  dtype=dtype, gemm=GemmShape(m=m, n=n, k=k, x_dtype=dtype, w_dtype=w_dtype))


def collective_kernel(name: str, op: str, size_bytes: np.ndarray, group: int,
                      library: str = "nccl", section: Section = "layer", repeat: int = 1,
                      dtype: str = "bf16") -> Kernel:
    """One collective ``op`` among ``group`` GPUs over buffers of ``size_bytes`` (per
    step shape; ``CollectiveShape``'s convention): no arithmetic, it reads and writes its
    buffer in HBM once."""
    size = np.asarray(size_bytes, dtype=np.float64)
    zero = np.zeros_like(size)
    return Kernel(name=name, kind=KernelKind.COLLECTIVE, section=section, launches=1,
                  repeat=repeat, flops=zero, weight_bytes=zero, kv_bytes=zero,
                  act_bytes=2.0 * size, dtype=dtype,
                  collective=CollectiveShape(op=op, size_bytes=size, group=group,
                                             library=library))


def attention_flops(b: np.ndarray, q: np.ndarray, kv_len: np.ndarray, heads: int,
                    head_dim: int) -> np.ndarray:
    """QK^T and PV multiply-adds of the unmasked score entries (causal counted once):
    query i (1-based) of the q new ones sees ctx + i keys."""
    ctx = kv_len - q
    scores = q * ctx + q * (q + 1) / 2
    return 4.0 * b * heads * head_dim * scores


def attention_kernel(name: str, mode: str, family: str, b: np.ndarray, q: np.ndarray,
                     kv_len: np.ndarray, heads: int, kv_heads: int, head_dim: int,
                     dtype: str = "bf16", section: Section = "layer", launches: int = 1,
                     repeat: int = 1) -> Kernel:
    """An attention op over ``b`` sequences of ``q`` new queries against ``kv_len``
    keys: reads K and V of every cached and new position (the new ones written just
    before) and its queries, writes its output."""
    dt = DTYPE_BYTES[dtype]
    return Kernel(
        name=name, kind=KernelKind.ATTENTION, section=section, launches=launches,
        repeat=repeat, flops=attention_flops(b, q, kv_len, heads, head_dim),
        weight_bytes=np.zeros_like(b),
        kv_bytes=2.0 * b * kv_len * (kv_heads * head_dim) * dt,
        act_bytes=2.0 * (b * q) * (heads * head_dim) * dt, dtype=dtype,
        attention=AttentionShape(mode=mode, family=family, batch=b, q=q, kv_len=kv_len,
                                 heads=heads, kv_heads=kv_heads, head_dim=head_dim))


def kernel_launches(kernels: list[Kernel]) -> int:
    """Kernel launches in one step (of its shapes that launch the most: see
    ``launches_per_shape``)."""
    return sum(k.launches * k.repeat for k in kernels)


def launches_per_shape(kernels: list[Kernel], n: int) -> np.ndarray:
    """Kernel launches in one step, for each of its ``n`` shapes (a kernel that does
    not launch at a shape, ``Kernel.launched``, counts nothing there)."""
    return sum((k.shape_launches() * k.repeat for k in kernels), np.zeros(n))


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
