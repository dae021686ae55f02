"""A model split over GPUs: tensor parallelism as Megatron-LM does it, pipeline stages,
and each GPU's share of the weights and KV cache.

Tensor parallelism (``shard``) is a post-pass over one forward step's kernels, so every
stack gets it: column-parallel QKV and gate/up projections (each rank computes its
heads and its slice of the intermediate), row-parallel O and down projections followed
by an all-reduce of their output, a vocab-parallel embedding (each rank looks its rows
up, an all-reduce sums them) and LM head (each rank scores its slice of the vocabulary,
an all-gather joins the logits). Attention runs each rank's query heads and KV heads;
with more ranks than KV heads each KV head is replicated on tp / kv_heads ranks (vLLM's
rule). Norms, residuals and RoPE tables are replicated. The collectives are kernels of
kind ``collective`` on the timeline, priced by ``gpusim.cost.collectives``.

Pipeline parallelism (``stage_kernels``) gives each stage its layers (vLLM's split:
even, the remainder to the stages before the last), the first stage the prologue and
the last the epilogue; ``activation_send`` is what one stage sends the next.

An MoE model's experts split over the tensor-parallel GPUs by expert parallelism
(``ep`` = ``tp``; ``kernels.expert_parallel``: experts per rank, the busiest rank's
load, the all-to-all dispatch and combine); its attention stays tensor-parallel.

Refused with one line (FieldError, field ``tp``, ``pp`` or ``ep``): a split that does
not divide the model's heads or MLP, an expert split ``kernels.expert_parallel`` does
not model, and any op this module does not know how to shard.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from gpusim.errors import FieldError
from gpusim.kernels.expert_parallel import (  # noqa: F401  (expert_split: re-exported)
    ExpertSplit,
    check_ep,
    expert_split,
    rank_expert_bytes,
    split_experts,
)
from gpusim.kernels.records import Kernel, collective_kernel
from gpusim.kernels.variants import layer_ops
from gpusim.specs import ModelSpec, StackOp, StackSpec
from gpusim.specs.enums import KernelKind
from gpusim.units import DTYPE_BYTES


@dataclass(frozen=True)
class RankSizes:
    """One tensor-parallel rank's share of a model: query heads, KV heads (replicated
    when tp exceeds them), MLP intermediate and vocabulary rows."""

    tp: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int


def rank_sizes(model: ModelSpec, tp: int) -> RankSizes:
    """``model``'s per-rank sizes at tensor-parallel degree ``tp``. Raises FieldError
    (field ``tp``) when tp does not divide the attention heads or the MLP, or neither
    divides nor is a multiple of the KV heads."""
    if not isinstance(tp, int) or tp < 1:
        raise FieldError("tp", f"tp={tp!r} must be an integer >= 1")
    heads, kv = model.num_attention_heads, model.num_key_value_heads
    if heads % tp:
        raise FieldError("tp", f"tp={tp} must divide the {heads} attention heads of "
                         f"{model.name}")
    if kv % tp and tp % kv:
        raise FieldError("tp", f"tp={tp} must divide the {kv} KV heads of {model.name} "
                         "or be a multiple of them (each KV head then replicated)")
    inter = model.mlp_intermediate_size
    if model.is_moe:   # a shared expert is replicated (kernels.expert_parallel)
        return RankSizes(tp=tp, heads=heads // tp, kv_heads=max(1, kv // tp),
                         intermediate=inter, vocab=math.ceil(model.vocab_size / tp))
    if inter % tp:
        raise FieldError("tp", f"tp={tp} must divide the MLP's intermediate size {inter} "
                         f"of {model.name}")
    return RankSizes(tp=tp, heads=heads // tp, kv_heads=max(1, kv // tp),
                     intermediate=inter // tp, vocab=math.ceil(model.vocab_size / tp))


# per weight: which GEMM dimension a rank holds a slice of, and the collective after it
_COLUMN = {"qkv", "q", "k", "v", "gate_up", "gate", "up", "lm_head"}
_ROW = {"o", "down"}


def _gemm_nk(weight: str, model: ModelSpec, r: RankSizes) -> tuple[int, int]:
    """(n, k) of a rank's slice of ``weight``: W[n, k], out = x @ W^T."""
    hd, h = model.head_dim_eff, model.hidden_size
    return {
        "qkv": ((r.heads + 2 * r.kv_heads) * hd, h), "q": (r.heads * hd, h),
        "k": (r.kv_heads * hd, h), "v": (r.kv_heads * hd, h), "o": (h, r.heads * hd),
        "gate_up": (2 * r.intermediate, h), "gate": (r.intermediate, h),
        "up": (r.intermediate, h), "down": (h, r.intermediate),
        "lm_head": (r.vocab, h),
    }[weight]


def _tensor_share(tensor: str, model: ModelSpec, r: RankSizes) -> float:
    """A rank's share of the elements an elementwise op streams."""
    heads = r.heads / model.num_attention_heads
    kv = r.kv_heads / model.num_key_value_heads
    inter = r.intermediate / max(model.mlp_intermediate_size, 1)
    share = {"hidden": 1.0, "positions": 1.0, "rope_table": 1.0, "mask": 1.0, "scalar": 1.0,
             "q": heads, "attn_out": heads, "kv_cache_expanded": heads, "kv": kv,
             "kv_cache": kv, "intermediate": inter, "gate_up": inter,
             "logits": r.vocab / model.vocab_size}
    if tensor not in share:
        raise FieldError("tp", f"tp={r.tp}: gpusim does not shard the tensor {tensor!r} "
                         "over tensor-parallel ranks")
    return share[tensor]


def _collective(after: Kernel, op: str, size_bytes: np.ndarray, tp: int, library: str
                ) -> Kernel:
    """The collective that follows ``after``: it reads and writes its buffer in HBM."""
    return collective_kernel(f"{after.name}_{op}", op, size_bytes, tp, library,
                             after.section, after.repeat, after.dtype)


def _shard_gemm(k: Kernel, op: StackOp, model: ModelSpec, r: RankSizes, library: str
                ) -> list[Kernel]:
    g = k.gemm
    weight = op.weight or ""
    if g is None or weight not in _COLUMN | _ROW:
        raise FieldError("tp", f"tp={r.tp}: gpusim does not shard the GEMM {op.name!r} "
                         f"(weight {weight!r}) over tensor-parallel ranks")
    n, kk = _gemm_nk(weight, model, r)
    x_bytes = DTYPE_BYTES[g.x_dtype]
    # weight bytes scale with the slice (quantization scales included)
    shard = replace(k, flops=2.0 * g.m * n * kk,
                    weight_bytes=k.weight_bytes * (n * kk) / (g.n * g.k),
                    act_bytes=(g.m * kk + g.m * n) * x_bytes, gemm=replace(g, n=n, k=kk))
    if weight in _ROW:
        return [shard, _collective(shard, "all_reduce", g.m * n * x_bytes, r.tp, library)]
    if weight == "lm_head":
        gathered = g.m * r.vocab * r.tp * x_bytes
        return [shard, _collective(shard, "all_gather", gathered, r.tp, library)]
    return [shard]


def shard(kernels: list[Kernel], model: ModelSpec, stack: StackSpec, tp: int,
          library: str = "nccl", ep: int = 1) -> list[Kernel]:
    """One tensor-parallel rank's kernels of a forward step (``kernels`` from
    ``build_kernels`` for ``model`` on ``stack``), collectives added after the
    row-parallel GEMMs, the embedding and the LM head (``library``: nccl, or a stack's
    custom all-reduce); an MoE model's experts split over ``ep`` = ``tp`` ranks
    (``kernels.expert_parallel.split_experts``: the busiest rank's). ``tp`` = ``ep`` =
    1 returns ``kernels`` itself. Raises FieldError (field ``tp``) for a split the
    model does not allow or an op this module cannot shard, (field ``ep``) for an
    expert split that is not modelled (``check_ep``)."""
    if tp == 1 and ep == 1:
        return kernels
    check_ep(model, tp, ep)
    kernels, done = split_experts(kernels, model, stack, ep, library)
    r = rank_sizes(model, tp)
    ops = {(sec, op.name): op for sec, ops_ in (("prologue", stack.prologue),
                                                ("layer", layer_ops(model, stack)),
                                                ("epilogue", stack.epilogue))
           for op in ops_}
    out: list[Kernel] = []
    for k in kernels:
        if k.section == "layer" and k.name in done:   # the experts' split: as it is
            out.append(k)
            continue
        op = ops.get((k.section, k.name))
        if op is None:
            raise FieldError("tp", f"tp={tp}: gpusim does not shard {model.name}'s "
                             f"{k.name!r} kernels over tensor-parallel ranks yet")
        if k.kind == KernelKind.GEMM:
            out += _shard_gemm(k, op, model, r, library)
        elif k.kind == KernelKind.ATTENTION and k.attention is not None:
            a = k.attention
            kv = r.heads if a.kv_heads == model.num_attention_heads else r.kv_heads
            h_share, kv_share = r.heads / a.heads, kv / a.kv_heads
            out.append(replace(k, flops=k.flops * h_share, kv_bytes=k.kv_bytes * kv_share,
                               act_bytes=k.act_bytes * h_share,
                               attention=replace(a, heads=r.heads, kv_heads=kv)))
        elif k.kind == KernelKind.EMBEDDING:
            # each rank looks up the tokens in its vocabulary rows (the others masked);
            # the stream kernels' flops are their elements: tokens x hidden
            out += [k, _collective(k, "all_reduce", k.flops * DTYPE_BYTES[k.dtype], tp,
                                   library)]
        elif k.kind == KernelKind.ELEMENTWISE:
            f = _tensor_share(op.tensor or "", model, r)
            red = None if k.reduction is None else k.reduction * np.array([[1.0], [f]])
            reduced = None if k.reduced_elements is None else k.reduced_elements * f
            srt = None if k.sort_elements is None else k.sort_elements * f
            atom = None if k.atomic_elements is None else k.atomic_elements * f
            # (an index kernel's indices, the token-slots, are every rank's alike)
            out.append(k if f == 1.0 else
                       replace(k, flops=k.flops * f, act_bytes=k.act_bytes * f, reduction=red,
                               sort_elements=srt, reduced_elements=reduced,
                               atomic_elements=atom))
        else:
            raise FieldError("tp", f"tp={tp}: gpusim does not shard the {k.kind} kernel "
                             f"{k.name!r} over tensor-parallel ranks")
    return out


# --- pipeline stages -------------------------------------------------------------------
def stage_layers(layers: int, pp: int) -> list[int]:
    """Layers per pipeline stage: even, the remainder one each to the stages before the
    last (vLLM's get_pp_indices: the last stage also runs the LM head). Raises
    FieldError (field ``pp``) when a stage would get no layer."""
    if not isinstance(pp, int) or pp < 1:
        raise FieldError("pp", f"pp={pp!r} must be an integer >= 1")
    if pp > layers:
        raise FieldError("pp", f"pp={pp} stages need at least as many layers; the model "
                         f"has {layers}")
    out = [layers // pp] * pp
    for i in range(2, layers % pp + 2):
        out[-i] += 1
    return out


def stage_kernels(kernels: list[Kernel], layers: int, pp: int, stage: int) -> list[Kernel]:
    """Stage ``stage`` of ``pp``'s kernels: its layers (``repeat``), the prologue on the
    first stage, the epilogue on the last. Raises FieldError as ``stage_layers``."""
    n_layers = stage_layers(layers, pp)[stage]
    out = []
    for k in kernels:
        ends = (k.section == "prologue" and stage == 0) or (
            k.section == "epilogue" and stage == pp - 1)
        if ends:
            out.append(k)
        elif k.section == "layer":
            out.append(k if k.repeat == n_layers else replace(k, repeat=n_layers))
    return out


def activation_send(model: ModelSpec, tokens: object) -> np.ndarray:
    """Bytes one stage sends the next per step shape (``tokens`` = batch x q): the
    hidden states and the residual, as vLLM's Llama passes them between stages. Each
    tensor-parallel rank sends its own copy to its peer in parallel."""
    return 2.0 * np.asarray(tokens, dtype=np.float64) * model.hidden_size * model.dtype_bytes


# --- memory per GPU --------------------------------------------------------------------
def rank_weight_bytes(model: ModelSpec, tp: int, pp: int, ep: int | None = None
                      ) -> float:
    """Weight bytes on the fullest GPU: one tensor-parallel rank of the pipeline stage
    holding the most (its layers, plus the embedding on the first stage and the final
    norm and LM head on the last; tied embeddings count on both ends). An MoE model's
    rank holds experts / ``ep`` routed experts whole, and the router and a shared
    expert whole (``kernels.expert_parallel``); ``ep`` None: the split modelled, ep =
    tp for an MoE model, 1 for a dense one. Raises FieldError as ``rank_sizes``,
    ``stage_layers`` and ``check_ep``."""
    if ep is None:
        ep = tp if model.is_moe else 1
    check_ep(model, tp, ep)
    r = rank_sizes(model, tp)
    layer = rank_expert_bytes(model, ep) if model.is_moe else 0.0
    for name, (n, k, count) in model.layer_matrices().items():
        if name in ("experts_gate_up", "experts_down"):
            continue
        if name in ("qkv", "o") or (name in _COLUMN | _ROW and not model.is_moe):
            n_r, k_r = _gemm_nk(name, model, r)
        else:  # router, a shared expert and its gate: replicated
            n_r, k_r = n, k
        layer += count * model.matrix_bytes(name, n_r, k_r)
    layer += model.layer_weight_params()["norms"] * model.dtype_bytes
    table = r.vocab * model.hidden_size * model.dtype_bytes
    first = table
    # a tied LM head is the embedding table: one copy unless the ends are two stages
    head = 0.0 if (model.tie_word_embeddings and pp == 1) else table
    last = model.hidden_size * model.dtype_bytes + head
    per_stage = stage_layers(model.num_hidden_layers, pp)
    ends = [0.0] * pp
    ends[0] += first
    ends[-1] += last
    return max(n * layer + e for n, e in zip(per_stage, ends, strict=True))


def rank_kv_bytes_per_token(model: ModelSpec, tp: int, pp: int) -> float:
    """KV cache bytes per cached token on the fullest GPU: its stage's layers, its
    (possibly replicated) KV heads."""
    r = rank_sizes(model, tp)
    most = max(stage_layers(model.num_hidden_layers, pp))
    return (model.kv_bytes_per_token * most / model.num_hidden_layers
            * r.kv_heads / model.num_key_value_heads)
