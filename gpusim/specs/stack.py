"""A software stack: what kernels one forward launches (``stacks/<name>.yaml``).
Data, so a fused stack is a file."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from gpusim.specs.base import NAME_PATTERN, Frozen, NonNeg, field_error
from gpusim.specs.enums import Mode
from gpusim.specs.model import Quantization

# what an elementwise op streams, per step: per token (hidden, q, kv, attn_out,
# intermediate, gate_up, logits of the positions that need them), per new position
# (rope_table, positions), one per token (tokens: a norm's per-row statistics), per
# cached position of a static cache (kv_cache: one layer's
# K or V, batch x cache_len x kv_dim; kv_cache_expanded: the same repeated to every
# query head, batch x cache_len x q_dim; mask: batch x q x cache_len), or one element
# (scalar: bookkeeping kernels of fixed size)
TensorName = Literal[
    "hidden", "q", "kv", "attn_out", "intermediate", "gate_up", "rope_table", "logits",
    "positions", "tokens", "kv_cache", "kv_cache_expanded", "mask", "scalar",
    # an MoE layer's (kernels.moe.tensor_elements): router logits [T, E], token-slots
    # [T, k], the slots' rows [T k, h] and activations [T k, 2I] / [T k, I], counts [E]
    "router_logits", "routing", "routed_hidden", "routed_gate_up", "routed_intermediate",
    "experts",
]
# fused (qkv, gate_up) or separate (q, k, v, gate, up) projections
WeightName = Literal["qkv", "q", "k", "v", "o", "gate_up", "gate", "up", "down", "lm_head",
                     # an MoE layer's: router, experts, a shared expert's sigmoid gate
                     "router", "experts_gate_up", "experts_down", "shared_gate"]


# the tensors with one row per token (an elementwise op over one walks token rows)
ROW_TENSORS = ("hidden", "q", "kv", "attn_out", "intermediate", "gate_up")
# the tensors whose rows can be heads (head_dim elements each: ``StackOp.row``)
HEAD_TENSORS = ("q", "kv", "attn_out")


class StackOp(Frozen):
    """One operation of the forward and the kernels it becomes.

    ``op``: gemm (``weight`` names the matrix), attention, elementwise (``tensor``
    names what it streams; ``bytes_per_element`` is HBM bytes read plus written per
    element of that tensor summed over its ``kernels`` launches), embedding, dense_mlp
    (in a stack's ``moe:`` section: the layer's dense MLP ops, at the shared expert's
    size).
    """

    op: Literal["gemm", "attention", "elementwise", "embedding", "dense_mlp"]
    name: Annotated[str, Field(pattern=r"^[a-z0-9_]+$")]
    weight: WeightName | None = None
    tensor: TensorName | None = None
    kernels: Annotated[int, Field(ge=0, le=64)] = 1
    bytes_per_element: NonNeg = 0.0
    # a second tensor the op streams, and its bytes per element of that tensor (a copy
    # that reads one layout and writes another: repeat_kv reads kv_cache and writes
    # kv_cache_expanded)
    reads: TensorName | None = None
    read_bytes_per_element: NonNeg = 0.0
    # the fraction of a vectorised pointwise kernel's bandwidth this op's kernels reach,
    # where profiles show them far from the strided-path model (a 5-D strided copy);
    # None: the model's (vectorised or strided) bandwidth
    bandwidth_fraction: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    # its kernels read what the kernel before them just wrote, so the part of each
    # kernel's traffic that fits in L2 moves at L2 speed (cost.pointwise.l2_aware_s);
    # false for an op that streams a tensor no kernel just wrote (repeat_kv's copy of a
    # whole static cache): all of its traffic at its HBM bandwidth
    l2_chain: bool = True
    # pointwise ops: CUDA-core work per element of ``tensor``, priced at the GPU's fp32
    # rate and overlapped with the op's bytes (1: a flop per element, nothing next to
    # its bytes). More for a kernel bound by its per-element instructions rather than
    # by HBM: repeat_kv's non-vectorised copy of a five-dimensional expanded view, whose
    # index arithmetic over five dimensions per element runs as long on an H200 as on an
    # H100 (stacks/hf-transformers.yaml)
    flops_per_element: Annotated[float, Field(gt=0.0, le=1e4)] = 1.0
    # only positions whose logits are needed (prefill: last position) for lm_head
    last_position_only_in_prefill: bool = False
    # kernels of this op that take PyTorch's non-vectorised path (strided views,
    # broadcasts, reductions), and how many of those vectorise when the step has a
    # single token (views and broadcasts over one row degenerate to contiguous)
    strided_kernels: Annotated[int, Field(ge=0, le=64)] = 0
    # row reductions over the tensor's last dimension among its kernels (RMSNorm's mean)
    reduction_kernels: Annotated[int, Field(ge=0, le=64)] = 0
    # what those reductions reduce: each row (rows: RMSNorm's mean) or the whole tensor to
    # one value (tensor: fp8's per-tensor amax), whose CTA walk follows PyTorch's reduce
    # config (kernels.quant.whole_tensor_walk)
    reduces: Literal["rows", "tensor"] = "rows"
    # one of its kernels sorts the whole tensor as one row in one CTA (torch.sort or
    # argsort of up to 4096 elements; cost.pointwise.sort_s): its time follows the
    # sort's passes, not its bytes
    sorts: bool = False
    # one of its kernels is a PyTorch index kernel (index_select, index_add_) over the
    # T*k token-slots: with at most 16 indices its SmallIndex kernel walks them one
    # after another, each this long (read off profiles); past 16 the LargeIndex kernel
    # takes them in parallel (cost.pointwise.small_index_s)
    small_index_s: Annotated[float, Field(ge=0.0, le=1e-4)] = 0.0
    # one of its kernels adds every element of its tensor into another tensor with
    # atomic adds (index_add_, scatter_add_): the adds run at the L2's atomic rate
    # (physics.atomic_add_s_per_element), overlapped with its bytes, whatever the bytes
    atomic_adds: bool = False
    # one of its kernels is a known kernel whose CTA walks one token row serially, rows
    # side by side on the SMs (torch_layer_norm: torch's vectorized_layer_norm_kernel,
    # F.rms_norm): its time follows the row's width whatever the rows, until their
    # bytes bind (cost.pointwise.row_walk_s)
    row_walk: Literal["torch_layer_norm"] | None = None
    # the rows its row reductions and row walks take: a token's row of the tensor (a
    # norm of the hidden state) or a head's (Qwen3's per-head q/k norms: rows of
    # head_dim elements, tokens x heads of them)
    row: Literal["token", "head"] = "token"
    vectorized_at_one_token: Annotated[int, Field(ge=0, le=64)] = 0
    # the op launches nothing in a step of one token: a .contiguous() copy of a view
    # that a single token row already leaves contiguous (torch-fused's copy of q's or
    # k's heads before its per-head norm: profiled, absent from batch-1 decodes)
    skipped_at_one_token: bool = False
    # attention: the keys it reads: the sequence's cached and new positions (context),
    # or the whole allocated cache under a mask (allocated_cache: a static cache as
    # Hugging Face runs it); and its K/V heads: the model's (grouped) or repeated to
    # every query head before the kernel (expanded: GQA undone by a copy)
    keys: Literal["context", "allocated_cache"] = "context"
    # the op runs only for grouped-query models (fewer KV heads than query heads):
    # repeat_kv is a no-op, launching nothing, for multi-head attention
    only_grouped: bool = False
    kv_heads: Literal["grouped", "expanded"] = "grouped"
    # attention in decode: the query heads sharing a K/V head run as rows of one head (group
    # rows, one head per K/V head: the harness's decode folds [B, H, 1, D] into
    # [B, Hkv, H/Hkv, D] before SDPA), so a kernel that tiles query rows sees that shape
    decode_packs_gqa: bool = False
    # gemm: the GEMM kernel family that runs it (gpusim.cost.gemm_families: cublas when
    # not given; scaled_mm, tinygemm, int8wo for quantized projections, grouped_mm,
    # fused_moe for experts); gemm and elementwise: tokens padded to a multiple of this
    # first (fp8's _scaled_mm); the model feature an op runs for (an MoE section's
    # shared-expert and top-k renormalisation ops); dense_mlp: the layer's dense MLP ops
    # here, sized to the model's shared expert
    family: Annotated[str, Field(pattern=r"^[a-z0-9_]+$")] | None = None
    pad_tokens_to: Annotated[int, Field(ge=1, le=4096)] = 1
    requires: Literal["shared_expert", "shared_expert_gate", "norm_topk_prob"] | None = None
    # the step modes the op runs in (None: every mode): a stack whose forward differs by
    # mode, as the serving harness's, which gathers and masks its decoding rows' keys
    # for cuDNN's kernel but repeats a prompt chunk's cached keys to every query head
    # for FlashAttention-2's
    modes: tuple[Mode, ...] | None = None

    def runs_in(self, mode: str) -> bool:
        """Whether the op launches in a step of ``mode``."""
        return self.modes is None or mode in self.modes

    @model_validator(mode="after")
    def _fields_for_op(self) -> StackOp:
        if self.modes is not None and not self.modes:
            raise ValueError(f"op {self.name!r}: 'modes' lists no mode (leave it out for "
                             "every mode)")
        if self.family is not None and self.op != "gemm":
            raise ValueError(f"op {self.name!r}: 'family' is for gemm ops")
        if self.op == "gemm" and self.weight is None:
            raise ValueError(f"op {self.name!r}: gemm needs 'weight'")
        if self.op == "elementwise" and self.tensor is None:
            raise ValueError(f"op {self.name!r}: elementwise needs 'tensor'")
        if (self.reads is None) != (self.read_bytes_per_element == 0.0):
            raise ValueError(f"op {self.name!r}: 'reads' and 'read_bytes_per_element' go "
                             "together")
        if self.strided_kernels > self.kernels:
            raise ValueError(f"op {self.name!r}: strided_kernels ({self.strided_kernels}) "
                             f"exceeds kernels ({self.kernels})")
        if self.reduces == "tensor" and self.reduction_kernels == 0:
            raise ValueError(f"op {self.name!r}: 'reduces: tensor' needs reduction_kernels")
        if self.row_walk is not None and (self.op != "elementwise"
                                          or self.tensor not in ROW_TENSORS):
            raise ValueError(f"op {self.name!r}: 'row_walk' is for elementwise ops over a "
                             f"tensor of token rows ({', '.join(ROW_TENSORS)})")
        if self.row == "head" and (self.op != "elementwise" or self.tensor not in HEAD_TENSORS):
            raise ValueError(f"op {self.name!r}: 'row: head' is for elementwise ops over a "
                             f"tensor of heads ({', '.join(HEAD_TENSORS)})")
        if self.skipped_at_one_token and self.op != "elementwise":
            raise ValueError(f"op {self.name!r}: 'skipped_at_one_token' is for elementwise "
                             "ops (a copy PyTorch skips when its view is contiguous)")
        if self.vectorized_at_one_token > self.strided_kernels:
            raise ValueError(f"op {self.name!r}: vectorized_at_one_token "
                             f"({self.vectorized_at_one_token}) exceeds strided_kernels "
                             f"({self.strided_kernels})")
        return self


# The attention kernel family each mode runs under PyTorch's SDPA on Hopper (profiled:
# validation/data/*/kernels*.csv): cuDNN's split-KV flash kernel for decode, FlashAttention-2
# for a causal verify, cuDNN's flash prefill, cuDNN's fused kernel for a boolean mask.
TORCH_SDPA_FAMILIES: dict[str, str] = {
    "decode": "flash_decode", "verify": "fa2", "prefill": "cudnn_prefill",
    "tree": "cudnn_masked"}
FAMILY_PATTERN = r"^[a-z0-9_]+$"
# old stack names that still resolve (to the stack they were renamed to)
STACK_ALIASES: dict[str, str] = {"torch-bf16-static-kv": "torch-hf"}


class StackSpec(Frozen):
    """A software stack: the ops run once per forward and once per layer, and the
    attention kernel family each step mode runs (``gpusim.cost.attention`` knows the
    families; the loader refuses an unknown name)."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    description: str = ""
    attention: dict[Literal["decode", "verify", "prefill", "tree"],
                    Annotated[str, Field(pattern=FAMILY_PATTERN)]] = Field(
        default_factory=lambda: dict(TORCH_SDPA_FAMILIES))
    # the stack whose measured host costs (per-stack calibration) this one uses when a
    # calibration has none of its own: said in every output, never silent
    host_costs_from: Annotated[str, Field(pattern=NAME_PATTERN)] | None = None
    # measured: its kernel list was read off profiles of the real thing and its steps
    # measured; described: written from the engine's public source, never run here (every
    # output that uses it says so)
    status: Literal["measured", "described"] = "measured"
    # calibration parameters (dotted paths: physics.<name>, attention.<family>.<name>)
    # this stack's kernels genuinely run differently from the GPU physics fitted on the
    # reference stack; `gpusim calibrate` fits them on this stack's own measured steps
    calibrate: tuple[Annotated[str, Field(pattern=r"^[a-z0-9_.]+$")], ...] = ()
    prologue: tuple[StackOp, ...]
    layer: tuple[StackOp, ...]
    epilogue: tuple[StackOp, ...]
    # kernel-name patterns (regular expressions) of profiled kernels per class, for
    # calibration from torch.profiler output; unmatched names count as elementwise
    profile_classes: dict[Literal["gemm", "attention"], tuple[str, ...]] = Field(
        default_factory=dict)
    # the weights its projections' kernels take unless the model or --weight-dtype says
    # otherwise (torch-fp8: fp8 per tensor); KV cache dtypes it stores besides the
    # activations' (none: the cache is in the activations' dtype)
    quantization: Quantization | None = None
    kv_dtypes: tuple[Literal["bf16", "fp16", "fp32", "fp8"], ...] = ()
    # the all-reduce of a tensor-parallel step: NCCL's (torch.distributed), or the stack's
    # own one/two-shot kernel up to its buffer size (vLLM's custom all-reduce);
    # gpusim.cost.collectives prices both from the GPU's links
    all_reduce: Literal["nccl", "custom"] = "nccl"
    # an MoE model's MLP (None: plain PyTorch's grouped-GEMM path,
    # kernels.variants.TORCH_MOE) and a Qwen3 model's q/k norms after the qkv projection
    # (None: torch's fused F.rms_norm, kernels.variants.TORCH_QK_NORM)
    moe: tuple[StackOp, ...] | None = None
    qk_norm: tuple[StackOp, ...] | None = None
    # decoding sequences attended as one padded batch: each one's keys gathered from
    # the paged cache up to the batch's longest context rounded up to a multiple of
    # this many tokens (masked past its own end), so decode attention and the ops over
    # ``kv_cache`` tensors cost that key length for every decoding row
    # (validation/harness/serve_model.py); None: each sequence its own context
    padded_decode_keys: Annotated[int, Field(ge=1, le=65536)] | None = None
    # a padded decode's gather (ops that read ``kv_cache``) reads the key positions no
    # sequence holds from one scratch block, which stays in cache: only the cached keys
    # cost their HBM reads (the harness's padded graphs, profiled: rows of rising
    # lengths, half the positions padding, take the 8B's gather 21-23% less time)
    padding_reads_cached: bool = False
    # ... but that gather takes at least this long per key position a layer, padding or
    # not (index-bound: the harness's 1B, whose rows are 1 KB, saves only a fifth of its
    # gather where half the positions are padding; profiled 1.26-1.27 ns a position)
    padded_gather_min_s_per_key: Annotated[float, Field(ge=0.0, le=1e-6)] = 0.0
    # a serving step of several parts (decoding rows, prompt chunks) runs each part's
    # attention on its own and concatenates their outputs: a cat kernel a layer (the
    # harness's torch.cat of the parts; a few microseconds of copying, its GPU time not
    # priced). False: one attention call over every part (vLLM's varlen kernel)
    concat_attention_parts: bool = False
    # kernels a piecewise mixed step launches a layer between its graphs besides its
    # attention and cache ops (the harness copies attention's output into the next
    # piece's static input buffer: 1)
    piecewise_copies: Annotated[int, Field(ge=0, le=8)] = 0

    @model_validator(mode="after")
    def _every_mode_has_a_family(self) -> StackSpec:
        missing = [m for m in TORCH_SDPA_FAMILIES if m not in self.attention]
        if missing:
            raise field_error("attention", f"no attention family for mode(s) "
                              f"{', '.join(missing)}: give one per decode, verify, prefill, tree")
        return self

    @model_validator(mode="after")
    def _runs_a_forward(self) -> StackSpec:
        """A forward needs each layer's attention and projections (q, k, v or a fused
        qkv; o; gate and up or a fused gate_up; down) and the LM head: a stack missing
        one would price a step without it, silently fast."""
        layer = {o.weight for o in self.layer if o.op == "gemm"}
        attention = {m: [o.name for o in self.layer if o.op == "attention" and o.runs_in(m)]
                     for m in Mode}
        for mode, names in attention.items():
            if len(names) > 1:
                raise field_error("layer", f"a layer runs one attention op a step; in "
                                  f"{mode} it would run {', '.join(names)} (give each "
                                  "its modes)")
        bare = [m for m, names in attention.items() if not names]
        needs = [("attention" if len(bare) == len(attention)
                  else f"attention in {' and '.join(bare)} steps", not bare),
                 ("gemm weight qkv (or q, k and v)",
                  "qkv" in layer or {"q", "k", "v"} <= layer),
                 ("gemm weight o", "o" in layer),
                 ("gemm weight gate_up (or gate and up)",
                  "gate_up" in layer or {"gate", "up"} <= layer),
                 ("gemm weight down", "down" in layer)]
        missing = [what for what, ok in needs if not ok]
        if missing:
            raise field_error("layer", f"a layer must run {', '.join(missing)}: a forward "
                              "without them is not a forward (ops: "
                              f"{', '.join(o.name for o in self.layer) or 'none'})")
        if not any(o.op == "gemm" and o.weight == "lm_head" for o in self.epilogue):
            raise field_error("epilogue", "the epilogue must run the gemm of weight lm_head")
        return self

    def family(self, mode: str) -> str:
        """The attention kernel family this stack runs ``mode`` with."""
        return self.attention[mode]  # type: ignore[index]

    @property
    def attends_allocated_cache(self) -> bool:
        """Whether its attention reads every position its KV cache holds (a static cache
        under a mask: ``keys: allocated_cache``), so that a step's time follows the
        cache's length, not ctx + q alone."""
        ops = (*self.prologue, *self.layer, *self.epilogue, *(self.moe or ()),
               *(self.qk_norm or ()))
        return any(o.op == "attention" and o.keys == "allocated_cache" for o in ops)
