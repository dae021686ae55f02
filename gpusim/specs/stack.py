"""A software stack: what kernels one forward launches (``stacks/<name>.yaml``).
Data, so a fused stack is a file."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from gpusim.specs.base import NAME_PATTERN, Frozen, NonNeg, field_error

# what an elementwise op streams, per step: per token (hidden, q, kv, attn_out,
# intermediate, gate_up, logits of the positions that need them), per new position
# (rope_table, positions), per cached position of a static cache (kv_cache: one layer's
# K or V, batch x cache_len x kv_dim; kv_cache_expanded: the same repeated to every
# query head, batch x cache_len x q_dim; mask: batch x q x cache_len), or one element
# (scalar: bookkeeping kernels of fixed size)
TensorName = Literal[
    "hidden", "q", "kv", "attn_out", "intermediate", "gate_up", "rope_table", "logits",
    "positions", "kv_cache", "kv_cache_expanded", "mask", "scalar",
]
# fused (qkv, gate_up) or separate (q, k, v, gate, up) projections
WeightName = Literal["qkv", "q", "k", "v", "o", "gate_up", "gate", "up", "down", "lm_head"]


class StackOp(Frozen):
    """One operation of the forward and the kernels it becomes.

    ``op``: gemm (``weight`` names the matrix), attention, elementwise (``tensor``
    names what it streams; ``bytes_per_element`` is HBM bytes read plus written per
    element of that tensor summed over its ``kernels`` launches), embedding.
    """

    op: Literal["gemm", "attention", "elementwise", "embedding"]
    name: Annotated[str, Field(pattern=r"^[a-z0-9_]+$")]
    weight: WeightName | None = None
    tensor: TensorName | None = None
    kernels: Annotated[int, Field(ge=0, le=64)] = 1
    bytes_per_element: NonNeg = 0.0
    # only positions whose logits are needed (prefill: last position) for lm_head
    last_position_only_in_prefill: bool = False
    # kernels of this op that take PyTorch's non-vectorised path (strided views,
    # broadcasts, reductions), and how many of those vectorise when the step has a
    # single token (views and broadcasts over one row degenerate to contiguous)
    strided_kernels: Annotated[int, Field(ge=0, le=64)] = 0
    # row reductions over the tensor's last dimension among its kernels (RMSNorm's mean)
    reduction_kernels: Annotated[int, Field(ge=0, le=64)] = 0
    vectorized_at_one_token: Annotated[int, Field(ge=0, le=64)] = 0
    # attention: the keys it reads: the sequence's cached and new positions (context),
    # or the whole allocated cache under a mask (allocated_cache: a static cache as
    # Hugging Face runs it); and its K/V heads: the model's (grouped) or repeated to
    # every query head before the kernel (expanded: GQA undone by a copy)
    keys: Literal["context", "allocated_cache"] = "context"
    kv_heads: Literal["grouped", "expanded"] = "grouped"

    @model_validator(mode="after")
    def _fields_for_op(self) -> StackOp:
        if self.op == "gemm" and self.weight is None:
            raise ValueError(f"op {self.name!r}: gemm needs 'weight'")
        if self.op == "elementwise" and self.tensor is None:
            raise ValueError(f"op {self.name!r}: elementwise needs 'tensor'")
        if self.strided_kernels > self.kernels:
            raise ValueError(f"op {self.name!r}: strided_kernels ({self.strided_kernels}) "
                             f"exceeds kernels ({self.kernels})")
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
    prologue: tuple[StackOp, ...]
    layer: tuple[StackOp, ...]
    epilogue: tuple[StackOp, ...]
    # kernel-name patterns (regular expressions) of profiled kernels per class, for
    # calibration from torch.profiler output; unmatched names count as elementwise
    profile_classes: dict[Literal["gemm", "attention"], tuple[str, ...]] = Field(
        default_factory=dict)

    @model_validator(mode="after")
    def _every_mode_has_a_family(self) -> StackSpec:
        missing = [m for m in TORCH_SDPA_FAMILIES if m not in self.attention]
        if missing:
            raise field_error("attention", f"no attention family for mode(s) "
                              f"{', '.join(missing)}: give one per decode, verify, prefill, tree")
        return self

    def family(self, mode: str) -> str:
        """The attention kernel family this stack runs ``mode`` with."""
        return self.attention[mode]  # type: ignore[index]

