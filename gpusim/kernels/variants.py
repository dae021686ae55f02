"""The ops a model's architecture changes in a stack's layer: an MoE layer's router,
permutation, expert GEMMs and combine in place of the dense MLP, and Qwen3's q/k norms
after the qkv projection.

A stack says how it runs them in its ``moe:`` and ``qk_norm:`` sections; a stack
without them runs plain PyTorch's (``TORCH_MOE``, ``TORCH_QK_NORM``: what
``validation/harness/moe_forward.py`` and ``quant_forward.forward`` launch on CUDA).
A dense Llama model's layer is the stack's own, op for op.
"""

from __future__ import annotations

from gpusim.specs import ModelSpec, StackOp, StackSpec

# the dense MLP's ops in a stack's layer: those reading its weights or activations
DENSE_MLP_WEIGHTS = frozenset({"gate_up", "gate", "up", "down"})
DENSE_MLP_TENSORS = frozenset({"intermediate", "gate_up"})
QKV_WEIGHTS = ("qkv", "q", "k", "v")


def _op(**kw: object) -> StackOp:
    return StackOp.model_validate(kw)


# moe_forward.MoeLayer on CUDA, eager (the profile phase of bench_quant_moe.py records
# what each really launches). Bytes are HBM bytes read plus written per element of the
# op's tensor over its kernels. Kernel counts and which kernels take PyTorch's
# non-vectorised path (``strided_kernels``: top-k, sorts, index and atomic kernels, a
# block or a thread per row or element) as profiled on H100, torch 2.11
# (validation/data/h100-sxm/moe/kernels.csv: Qwen3-30B-A3B at decode 1, decode 64 and a
# 512-token prefill, 48 layers; per-launch times below are its means).
TORCH_MOE: tuple[StackOp, ...] = (
    # F.linear(hn, router): one cuBLAS GEMM [T, h] x [h, E]
    _op(op="gemm", name="router", weight="router"),
    # softmax in float32 over [T, E] (read 2, write 4; softmax_warp_forward), topk (a
    # radix select reading the 4-byte scores, sbtopk::gatherTopK, 5.4-9.5 us, and a
    # bitonic sort of the k picks, bitonicSortKVInPlace, 4.2-5.0 us: both one block per
    # row, non-vectorised), cast of the weights to bf16
    _op(op="elementwise", name="route_topk", tensor="router_logits", kernels=4,
        bytes_per_element=10, strided_kernels=2),
    # norm_topk_prob: sum (a reduce_kernel, 2.3-2.5 us) and div over the [T, k] weights
    _op(op="elementwise", name="route_renorm", tensor="routing", kernels=2,
        bytes_per_element=12, strided_kernels=1, requires="norm_topk_prob"),
    # stable argsort of the T*k int64 expert ids: one radixSortKVInPlace kernel, a single
    # CTA sorting keys and values in shared memory (read and write 8 + 8 B per slot) up
    # to 4096 slots (6.7 us at 8 slots, 27.1 at 512, 33.8 at 4096): its time follows the
    # CTA's serial radix passes (cost.pointwise.sort_s), not its bytes
    _op(op="elementwise", name="permute_sort", tensor="routing", kernels=1,
        bytes_per_element=32, strided_kernels=1, sorts=True),
    # three device-to-device copies of the [T, k] slots a layer (Memcpy DtoD, 1.0-1.3 us
    # each in every MoE profile on H100: Qwen3, Mixtral, Qwen1.5-MoE), two of them the
    # in-CTA sort's in-place path (past 4096 slots, cub's device sort, one copy is left:
    # priced as three throughout, 2 us a layer against a prefill's milliseconds)
    _op(op="elementwise", name="permute_copies", tensor="routing", kernels=3,
        bytes_per_element=16),
    # the sort's index fill (arange), slot -> token floor-div, float cast of the ids,
    # histc (a fill and kernelHistogram1D: atomics, 1.6-2.8 us), cumsum (cub's scan init
    # and scan) and int32 cast of the per-expert counts: 8 kernels
    _op(op="elementwise", name="permute_index", tensor="routing", kernels=8,
        bytes_per_element=40, strided_kernels=1),
    # index_select of the tokens' rows into expert order: read 2, write 2
    # (at most 16 slots: indexSelectSmallIndex, each slot in turn, 0.3 us a slot: 2.0,
    # 3.6 and 6.1 us at 2, 8 and 16 slots in the H100 profiles of Mixtral, Qwen3 and
    # Qwen1.5-MoE)
    _op(op="elementwise", name="permute_gather", tensor="routed_hidden", kernels=1,
        bytes_per_element=4, small_index_s=0.3e-6),
    # torch._grouped_mm: one CUTLASS grouped GEMM over the touched experts
    _op(op="gemm", name="experts_gate_up", weight="experts_gate_up", family="grouped_mm"),
    # silu (read 2 write 2) and mul (read 4 write 2) on chunk views of [T k, 2I]
    _op(op="elementwise", name="experts_silu_mul", tensor="routed_intermediate",
        kernels=2, bytes_per_element=10, strided_kernels=2),
    _op(op="gemm", name="experts_down", weight="experts_down", family="grouped_mm"),
    # index_select of each slot's routing weight (indexSelectSmallIndex or a
    # scatter-gather kernel, 3.0-6.8 us) and the [T k, h] rows scaled by it (a
    # broadcast): both PyTorch's non-vectorised path
    _op(op="elementwise", name="combine_scale", tensor="routed_hidden", kernels=2,
        bytes_per_element=4, strided_kernels=2),
    # zeros [T, h], then index_add_ of the slots into their tokens: a non-vectorised
    # kernel (indexFuncSmallIndex / LargeIndex) reads each slot row from HBM (2 B an
    # element) and adds it into its token's row with bf16 atomic adds, which the L2
    # runs (the token rows stay there). The adds bound it: profiled on H100, 125-136 G
    # adds/s from 0.7 to 67 M adds whatever the top-k (2 to 8) and hidden size (2048,
    # 4096), and the H200 times them the same (61.5 us against 61.8 for Qwen3-30B-A3B's
    # 512-token prefill) though its HBM is 43% faster (physics.atomic_add_s_per_element)
    _op(op="elementwise", name="combine_zero", tensor="hidden", kernels=1,
        bytes_per_element=2),
    # At most 16 slots, indexFuncSmallIndex adds them one after another: 2.8, 3.6-3.7,
    # 5.6 and 9.7-9.9 us at 2, 4, 8 and 16 slots in the same profiles, 0.42 us a slot
    # above what the stream alone gives; from 17 slots 2.7-4 us again (LargeIndex)
    _op(op="elementwise", name="combine_add", tensor="routed_hidden", kernels=1,
        bytes_per_element=2, strided_kernels=1, atomic_adds=True, small_index_s=0.42e-6),
    # a shared expert: the stack's dense MLP at the shared expert's size
    _op(op="dense_mlp", name="shared_expert", requires="shared_expert"),
    # Qwen2-MoE's gate on it: a [T, h] x [h, 1] GEMM, sigmoid, broadcast mul
    _op(op="gemm", name="shared_gate", weight="shared_gate", requires="shared_expert_gate"),
    _op(op="elementwise", name="shared_gate_scale", tensor="hidden", kernels=2,
        bytes_per_element=4, strided_kernels=1, requires="shared_expert_gate"),
    # routed + shared: read 4, write 2
    _op(op="elementwise", name="shared_add", tensor="hidden", kernels=1,
        bytes_per_element=6, requires="shared_expert"),
)

# fused_forward's q/k norms (torch-fused, the quantized stacks, the MoE models): a
# contiguous copy of the strided head view (read 2, write 2) and torch's fused RMSNorm
# (read 2, write 2), whose CTAs each walk one head's row of head_dim elements (as
# torch-fused's norms walk a token's: cost.pointwise.row_walk_s; profiled on a Qwen3
# 1.7B decode, about 2 us a q or k norm at one token and at eight). At one token the
# head view is contiguous and the copy is not launched (validation/data/h100-sxm/
# qwen3_2026-12-07/: 56 copies fewer a 28-layer Qwen3 1.7B step at batch 1 than at 8;
# moe/: 96 fewer a 48-layer Qwen3-30B-A3B step at batch 1 than at 64)
TORCH_QK_NORM: tuple[StackOp, ...] = (
    _op(op="elementwise", name="q_norm_copy", tensor="q", kernels=1, bytes_per_element=4,
        strided_kernels=1, skipped_at_one_token=True),
    _op(op="elementwise", name="q_norm", tensor="q", kernels=1, bytes_per_element=4,
        row_walk="torch_layer_norm", row="head"),
    _op(op="elementwise", name="k_norm_copy", tensor="kv", kernels=1, bytes_per_element=4,
        strided_kernels=1, skipped_at_one_token=True),
    _op(op="elementwise", name="k_norm", tensor="kv", kernels=1, bytes_per_element=4,
        row_walk="torch_layer_norm", row="head"),
)


def is_dense_mlp(op: StackOp) -> bool:
    """Whether ``op`` belongs to the layer's dense MLP (its weights or activations)."""
    return op.weight in DENSE_MLP_WEIGHTS or op.tensor in DENSE_MLP_TENSORS


def _runs(op: StackOp, model: ModelSpec) -> bool:
    """Whether an op with a ``requires`` runs for ``model``."""
    return {None: True, "shared_expert": model.shared_expert_intermediate_size > 0,
            "shared_expert_gate": model.shared_expert_gate,
            "norm_topk_prob": model.norm_topk_prob}[op.requires]


def layer_ops(model: ModelSpec, stack: StackSpec) -> tuple[StackOp, ...]:
    """The ops of one layer of ``model`` on ``stack``, in launch order: the stack's
    layer, with q/k norms after the qkv projection (a model with ``qk_norm``; a norm
    op named as a layer op replaces it: the norm fused into that kernel) and the
    MoE section in place of the dense MLP (an MoE model; its ``dense_mlp`` op expands
    to the dense MLP's ops, sized to the shared expert). Raises ValueError where the
    stack's layer has no place for them (no qkv projection, no MLP ops)."""
    ops = stack.layer
    if not model.qk_norm and not model.is_moe:
        return ops
    out = list(ops)
    if model.qk_norm:
        at = [i for i, op in enumerate(out) if op.weight in QKV_WEIGHTS]
        if not at:
            raise ValueError(f"stack {stack.name}: no qkv projection to put {model.name}'s "
                             "q/k norms after")
        norms = stack.qk_norm if stack.qk_norm is not None else TORCH_QK_NORM
        # an op named as one of the layer's runs in its place: that kernel with the
        # norm fused in (Inductor's rope kernels); the others are kernels of their own
        names = {op.name: i for i, op in enumerate(out)}
        for op in norms:
            if op.name in names:
                out[names[op.name]] = op
        out[at[-1] + 1:at[-1] + 1] = [op for op in norms if op.name not in names]
    if model.is_moe:
        moe = moe_section(model, stack)   # raises without dense MLP ops to replace
        first = out.index(next(op for op in out if is_dense_mlp(op)))
        out = [op for op in out if not is_dense_mlp(op)]
        out[first:first] = moe
    return tuple(out)


def moe_section(model: ModelSpec, stack: StackSpec) -> tuple[StackOp, ...]:
    """The ops of ``model``'s MoE section on ``stack``, in launch order (what
    ``layer_ops`` puts in place of the dense MLP): the stack's ``moe:`` section (else
    ``TORCH_MOE``) without the ops ``model`` does not run, its ``dense_mlp`` op expanded
    to the stack's dense MLP ops renamed ``shared_*``. Raises ValueError for a dense
    model or a stack whose layer has no dense MLP ops to replace."""
    if not model.is_moe:
        raise ValueError(f"{model.name} is dense: no MoE section")
    mlp = [op for op in stack.layer if is_dense_mlp(op)]
    if not mlp:
        raise ValueError(f"stack {stack.name}: no dense MLP ops for {model.name}'s "
                         "experts to replace")
    section = stack.moe if stack.moe is not None else TORCH_MOE
    moe: list[StackOp] = []
    for op in section:
        if not _runs(op, model):
            continue
        moe.extend([m.model_copy(update={"name": f"shared_{m.name}"}) for m in mlp]
                   if op.op == "dense_mlp" else [op])
    return tuple(moe)


def is_expert_op(op: StackOp) -> bool:
    """Whether an MoE section's op runs on the experts' side (their GEMMs and the
    activation between them), not on the tokens' (routing, permutation, combine)."""
    return op.weight in ("experts_gate_up", "experts_down") \
        or op.tensor in ("routed_gate_up", "routed_intermediate")


def op_roles(model: ModelSpec, stack: StackSpec) -> dict[str, str]:
    """Op name -> what it is for, for the ops that exist because the model is quantized
    or a mixture of experts: ``quantize`` (a stack's activation scale-and-cast ops,
    named ``*quant*``), ``experts`` (the expert GEMMs and the activation between them)
    and ``routing`` (every other op of the MoE section: router, top-k, permutation,
    combine, a shared expert's gate). A tinygemm projection's dequantize runs inside its
    GEMM and shows in that op's time."""
    roles: dict[str, str] = {}
    for op in (*stack.prologue, *stack.layer, *stack.epilogue):
        if "quant" in op.name and op.op == "elementwise":
            roles[op.name] = "quantize"
    if model.is_moe:
        for op in stack.moe if stack.moe is not None else TORCH_MOE:
            if op.op == "dense_mlp":
                continue
            roles[op.name] = "experts" if is_expert_op(op) else "routing"
    return roles
