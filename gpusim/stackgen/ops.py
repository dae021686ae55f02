"""Launch units -> stack ops: which weight a GEMM multiplies, which tensor a run of
pointwise kernels streams and how many bytes per element, which attention kernel family
runs the traced mode, and how it reads its keys.

The traced step's shape comes from its attention call: batch, new tokens, and the keys
it attends (the cache length). A pointwise run between two anchors (GEMMs, attention)
becomes one op on the model tensor whose size is closest to the largest input its
kernels touch, its bytes per element those kernels' recorded bytes over that tensor's
elements; a run whose kernels recorded no shapes gets 4 bytes per element per kernel
and says so.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from gpusim.kernels.build import gemm_nk as model_gemm_nk
from gpusim.specs import ModelSpec, StackOp
from gpusim.specs.stack import ROW_TENSORS
from gpusim.stackgen.units import Unit, gemm_nk

WEIGHTS = ("qkv", "q", "k", "v", "o", "gate_up", "gate", "up", "down", "lm_head")
ORDER = {4: ("qkv", "o", "gate_up", "down"), 7: ("q", "k", "v", "o", "gate", "up", "down"),
         5: ("qkv", "o", "gate", "up", "down"), 6: ("q", "k", "v", "o", "gate_up", "down")}
VECTORIZED = re.compile(r"vectorized|^triton_|layer_norm|Memset", re.IGNORECASE)
REDUCTION = re.compile(r"reduce_kernel")
# PyTorch's in-CTA sort (torch.sort / argsort up to 4096 elements): priced by its passes
SORT = re.compile(r"radixSortKVInPlace")
# known kernels whose CTA walks a token row serially (cost.pointwise.ROW_WALKS)
ROW_WALK = {"torch_layer_norm": re.compile(r"vectorized_layer_norm_kernel")}


@dataclass(frozen=True)
class Shape:
    """The traced step: batch, new tokens per sequence, cached keys attended."""

    batch: int
    q: int
    keys: int

    @property
    def tokens(self) -> int:
        return self.batch * self.q


def traced_shape(attention: Unit, model: ModelSpec) -> tuple[Shape, str, bool, bool]:
    """(shape, mode, keys over the allocated cache?, K/V expanded to every head?) of a
    step from its attention call's inputs (cuDNN: [b, h, q, d]; FlashAttention:
    [b, q, h, d]). Raises ValueError without recorded shapes."""
    d = [x for x in attention.dims if isinstance(x, tuple) and len(x) == 4]
    if len(d) < 3:
        raise ValueError(f"attention op {attention.op or attention.kernels[0].name!r} has "
                         "no recorded shapes: profile with record_shapes=True")
    q_in, k_in = d[0], d[1]
    flash = "flash" in attention.op
    b, q, s = q_in[0], (q_in[1] if flash else q_in[2]), (k_in[1] if flash else k_in[2])
    k_heads = k_in[2] if flash else k_in[1]
    masked = len(d) >= 4   # an explicit mask: the whole given cache is attended
    mode = "decode" if q == 1 else ("prefill" if q == s else "verify")
    expanded = (k_heads == model.num_attention_heads
                and model.num_key_value_heads < model.num_attention_heads)
    return Shape(b, q, s), mode, masked, expanded


def family(attention: Unit, mode: str, masked: bool) -> str:
    """The attention kernel family of a traced attention call."""
    names = " ".join(k.name for k in attention.kernels)
    if "flash_fwd" in names or ("flash" in attention.op and "cudnn" not in attention.op):
        return "fa2"
    if masked and mode != "decode":
        return "cudnn_masked"
    return {"decode": "flash_decode", "prefill": "cudnn_prefill"}.get(mode, "cudnn_masked")


def _elements(model: ModelSpec, shape: Shape) -> dict[str, float]:
    t, h = shape.tokens, model.hidden_size
    return {"hidden": t * h, "q": t * model.q_dim, "kv": t * model.kv_dim,
            "intermediate": t * model.intermediate_size,
            "gate_up": 2 * t * model.intermediate_size,
            "kv_cache": shape.batch * shape.keys * model.kv_dim,
            "kv_cache_expanded": shape.batch * shape.keys * model.q_dim,
            "mask": t * shape.keys, "rope_table": shape.q * model.head_dim_eff,
            "tokens": t, "scalar": 1.0}


def _shapes(dims: tuple) -> list[tuple]:
    """Every tensor shape among an op's inputs (a tensor list's members one by one)."""
    out = []
    for d in dims:
        if isinstance(d, tuple) and d and all(isinstance(x, int) for x in d):
            out.append(d)
        elif isinstance(d, tuple):
            out += _shapes(d)
    return out


def _largest(u: Unit) -> int:
    """The elements of the largest tensor a unit streams (an embedding's gathered rows,
    not its table; a Triton kernel's buffers far larger than its other arguments are
    indexed, not streamed); 0 for a unit of scalars or without recorded shapes."""
    shapes = _shapes(u.dims)
    sizes = sorted(math.prod(d) for d in shapes)
    if not sizes:
        return 0
    if u.cls == "embedding" and len(shapes) > 1:
        table = max(shapes, key=math.prod)
        return min(math.prod(d) for d in shapes if d is not table) * table[-1]
    if (u.op.startswith("triton_") or u.kernels[0].name.startswith("triton_")) \
            and len(sizes) > 1:
        small = sizes[len(sizes) // 2]
        sizes = [s for s in sizes if s < 32 * max(small, 1)] or sizes
    return sizes[-1]


# how a tensor's size scales: per token, per cached position, per new position, fixed
SCALING = {"hidden": "token", "q": "token", "kv": "token", "intermediate": "token",
           "gate_up": "token", "kv_cache": "cache", "kv_cache_expanded": "cache",
           "mask": "cache", "rope_table": "position", "tokens": "token", "scalar": "fixed"}


def tensor_of(u: Unit, elements: dict[str, float], keys: int | None = None) -> str:
    """The model tensor whose size is closest to what ``u`` streams ("scalar" for a
    unit of a few elements); a tensor that scales with the cache only when the unit's
    tensors have a dimension of the ``keys`` attended."""
    largest = _largest(u)
    if u.cls == "embedding":
        return "hidden"
    if largest <= 1 or not u.dims:
        return "scalar" if u.dims or u.op else "hidden"
    dims = {x for d in _shapes(u.dims) for x in d}
    pool = {n: v for n, v in elements.items()
            if SCALING[n] != "cache" or (keys is not None and keys in dims)}
    return min(pool, key=lambda n: abs(math.log(largest / max(pool[n], 1.0))))


# PyTorch's copy of a five-dimensional expanded view (repeat_kv's expand + reshape) is
# bound by its per-element index arithmetic, not by HBM: about 135 fp32-operation
# equivalents per element written, 2.0 ps at 67 TFLOP/s (profiled: Llama 3.2 1B and
# 3.1 8B decode at batch 1 and 8, cache 1025, on H100 and H200 alike, whose HBM is 43%
# faster: 37.4 and 37.1 us per 16.8M elements, 71.0 and 71.4 us per 33.6M;
# stacks/hf-transformers.yaml)
EXPANDED_COPY_FLOPS_PER_ELEMENT = 135.0


def expand_op(name: str, run: list[Unit]) -> StackOp:
    """repeat_kv: copies of K and V expanded to every query head. Each reads its cache
    (2 B per kv_cache element) and writes the expansion (2 B per kv_cache_expanded
    element), from a cache no kernel just wrote (no L2 chain), its time set by its
    per-element work; a model with as many KV heads as query heads skips it."""
    kernels = [k for u in run for k in u.kernels]
    strided = sum(1 for k in kernels if not VECTORIZED.search(k.name))
    return StackOp(op="elementwise", name=name, tensor="kv_cache_expanded",
                   kernels=len(kernels), bytes_per_element=2.0 * len(kernels),
                   reads="kv_cache", read_bytes_per_element=2.0 * len(kernels),
                   strided_kernels=strided, only_grouped=True, bandwidth_fraction=1.0,
                   l2_chain=False,
                   flops_per_element=EXPANDED_COPY_FLOPS_PER_ELEMENT * len(kernels))


# without recorded shapes, the tensor a pointwise run works on is the output of the
# anchor before it (RoPE after the QKV projection, SiLU*up after gate/up)
OUTPUT_OF = {"qkv": "q", "q": "q", "k": "kv", "v": "kv", "o": "hidden",
             "gate_up": "intermediate", "gate": "intermediate", "up": "intermediate",
             "down": "hidden", "lm_head": "hidden", "attention": "q"}


def head_rows(run: list[Unit], head_dim: int) -> bool:
    """Whether the run's row reductions and row walks take a head's row, not a token's:
    every one of them reads [..., heads, head_dim] (Qwen3's per-head q/k norms), as its
    recorded shapes show."""
    rowed = [u for u in run if any(REDUCTION.search(k.name) or
                                   any(p.search(k.name) for p in ROW_WALK.values())
                                   for k in u.kernels)]
    firsts = [shapes[0] for u in rowed if (shapes := _shapes(u.dims))]
    return bool(firsts) and len(firsts) == len(rowed) and all(
        len(d) >= 3 and d[-1] == head_dim for d in firsts)


def pointwise_op(name: str, run: list[Unit], shape: Shape, notes: list[str],
                 elements: dict[str, float], after: str = "hidden",
                 head_dim: int = 0) -> StackOp:
    """One elementwise (or embedding) op for a run of pointwise units (``elements``: the
    candidate tensors' sizes in the traced step; ``after``: the tensor the anchor
    before the run wrote, for kernels that recorded no shapes; ``head_dim``: the
    model's, whose rows per-head norms reduce)."""
    kernels = [k for u in run for k in u.kernels if not k.name.startswith(("Memset",
                                                                            "Memcpy"))]
    embedding = run[0].cls == "embedding"
    heads = head_dim > 0 and not embedding and head_rows(run, head_dim)
    # per-head norms work on q or k (another tensor may be as large: Qwen3 1.7B's hidden
    # state is as wide as its q)
    pool = {n: elements[n] for n in ("q", "kv")} if heads else elements
    tensor = tensor_of(max(run, key=_largest), pool, shape.keys)
    moved = [u.moved_bytes for u in run]
    if any(m is None for m in moved):
        per_element = 4.0 * len(kernels)
        tensor = "hidden" if run[0].cls == "embedding" else after
        notes.append(f"{name}: no recorded shapes; {tensor}, 4 B per element per kernel "
                     "assumed")
    else:
        per_element = float(sum(moved)) / elements[tensor]  # type: ignore[arg-type]
    strided = sum(1 for k in kernels if not VECTORIZED.search(k.name))
    reductions = sum(1 for k in kernels if REDUCTION.search(k.name))
    # the known row walk one of its kernels is; more than one is priced by bytes alone
    walks = [walk for k in kernels for walk, pattern in ROW_WALK.items()
             if pattern.search(k.name)]
    if walks and (embedding or (tensor not in ROW_TENSORS and not heads) or len(walks) > 1):
        notes.append(f"{name}: {len(walks)} row-walking kernels on {tensor}: priced by "
                     "their bytes alone")
        walks = []
    return StackOp(op="embedding" if embedding else "elementwise",
                   name=name, tensor=tensor, kernels=len(kernels),
                   bytes_per_element=round(per_element, 3), strided_kernels=strided,
                   reduction_kernels=reductions,
                   sorts=any(SORT.search(k.name) for k in kernels),
                   row_walk=walks[0] if walks else None, row="head" if heads else "token")


def weight_of(u: Unit, model: ModelSpec, index: int, count: int, used: set[str],
              after_attention: bool, section: str = "layer") -> str | None:
    """Which model weight a GEMM unit multiplies: by its recorded (n, k) (where shapes
    coincide, a square model's q and o, k and v, gate and up: o after the attention,
    else the first not yet used in launch order), else by its place among the layer's
    ``count`` GEMMs; None for a GEMM of no model weight (a small one the engine runs
    for itself)."""
    nk = gemm_nk(u.dims)
    if nk is None:
        order = {"layer": ORDER.get(count), "epilogue": ("lm_head",) if count == 1
                 else None}.get(section)
        return order[index] if order and index < len(order) else None
    fits = [w for w in WEIGHTS if model_gemm_nk(w, model) == nk]
    if after_attention and "o" in fits:
        return "o"
    fits = [w for w in fits if w != "o" or after_attention]
    fresh = [w for w in fits if w not in used]
    return (fresh or fits or [None])[0]


def _snake(text: str) -> str:
    if "<" in text or ("::" in text and not text.startswith("aten::")):
        # a CUDA kernel's signature: its function's own name
        text = re.sub(r"[<(].*", "", text.removeprefix("void ")).split("::")[-1]
    base = re.sub(r"^aten::|^triton_(poi|red|per)_fused_*", "", text)
    return re.sub(r"[^a-z0-9]+", "_", base.lower()).strip("_")[:24] or "op"


def section_ops(section: str, run_units: list[Unit], model: ModelSpec, shape: Shape,
                attention: tuple[bool, bool], notes: list[str]) -> list[StackOp]:
    """The ops of one section (prologue, layer, epilogue): GEMMs and attention as
    anchors, each run of pointwise units between them one op."""
    return [op for op, _ in section_groups(section, run_units, model, shape, attention,
                                           notes)]


def section_groups(section: str, run_units: list[Unit], model: ModelSpec, shape: Shape,
                   attention: tuple[bool, bool], notes: list[str]
                   ) -> list[tuple[StackOp, list[Unit]]]:
    """``section_ops``, each op with the traced units it stands for."""
    ops: list[tuple[StackOp, list[Unit]]] = []
    run: list[Unit] = []
    gemms = [u for u in run_units if u.cls == "gemm"]
    g_index = 0
    used: set[str] = set()
    seen_attention = False
    after = "hidden"   # what the last anchor wrote

    elements = _elements(model, shape)
    masked, _ = attention
    if not masked:   # no allocated cache attended: nothing scales with it
        elements = {k: v for k, v in elements.items() if SCALING[k] != "cache"}

    def flush() -> None:
        # one op per stretch of units whose tensors scale alike (with tokens, cached
        # positions, new positions, or not at all): their bytes follow that tensor
        # when batch, context or cache change
        def scaling(u: Unit) -> str:
            if u.expands or u.cls == "embedding":
                return "expand" if u.expands else "embedding"
            return SCALING[tensor_of(u, elements, shape.keys)]

        i = 0
        while i < len(run):
            kind = scaling(run[i])
            j = i + 1
            while j < len(run) and scaling(run[j]) == kind:
                j += 1
            name = f"{section}_{len(ops)}_{_snake(run[i].op or run[i].kernels[0].name)}"
            ops.append((expand_op(name, run[i:j]) if kind == "expand" else
                        pointwise_op(name, run[i:j], shape, notes, elements, after,
                                     model.head_dim_eff),
                        run[i:j]))
            i = j
        run.clear()

    for u in run_units:
        if u.cls == "gemm":
            w = weight_of(u, model, g_index, len(gemms), used,
                          seen_attention and section == "layer", section)
            g_index += 1
            if w is not None:
                used.add(w)
            if w is None:   # not a model weight: a small GEMM among pointwise kernels
                notes.append(f"{section}: a GEMM of no model weight "
                             f"({u.op or u.kernels[0].name}, shapes {u.dims}) priced as "
                             "a pointwise op")
                run.append(Unit("pointwise", u.op, u.dims, u.kernels, u.moved_bytes))
                continue
            flush()
            after = OUTPUT_OF[w]
            # one launch: the GEMM model carries cuBLAS's split-K reduce (the physics was
            # fitted that way on the reference stack)
            ops.append((StackOp(op="gemm", name=f"{w}_proj" if w != "lm_head" else w,
                                weight=w, kernels=1,
                                last_position_only_in_prefill=w == "lm_head"), [u]))
        elif u.cls == "attention":
            seen_attention = True
            flush()
            after = OUTPUT_OF["attention"]
            masked, expanded = attention
            ops.append((StackOp(op="attention", name="attention", kernels=u.launches,
                                keys="allocated_cache" if masked else "context",
                                kv_heads="expanded" if expanded else "grouped"), [u]))
        else:
            run.append(u)
    flush()
    return ops
