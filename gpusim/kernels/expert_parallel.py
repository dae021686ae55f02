"""Expert parallelism: an MoE layer's experts split over ``ep`` GPUs, the tokens' slots
sent to the GPUs holding their experts and the outputs sent back.

How it combines with tensor parallelism (the only MoE split modelled): ``ep`` = ``tp``,
the experts spread over the same GPUs as the attention's tensor-parallel group (each
pipeline stage's group, with ``pp`` > 1), as vLLM's ``--enable-expert-parallel`` places
them; the MoE layer's tensor parallelism is replaced by expert parallelism. Attention,
the embedding and the LM head stay tensor-parallel (``kernels.parallel.shard``). The
tokens move as all-to-all EP kernels move them (DeepEP, pplx-kernels: each rank
dispatches its own tokens' slots); vLLM without data parallelism instead keeps every
token on every rank, runs its local experts on them and all-reduces the MoE output,
which is not modelled. Per layer:

1. The attention's all-reduce leaves every rank with all T tokens; each rank routes
   its own share, ceil(T / ep) tokens (a slice: no copy): router, top-k, permutation,
   and a shared expert (its weights replicated on every rank) on that share.
2. ``moe_dispatch`` (all-to-all): each token-slot's hidden row goes to the rank holding
   its expert. Each rank holds experts / ep experts (``placement`` round robin over the
   experts ranked by popularity). The step waits for the busiest rank: its buffer is
   its received slots (``ExpertSplit.busiest_slots`` x hidden x dtype bytes; with
   balanced routing T k / ep slots, every rank's send buffer).
3. The expert GEMMs and their activation run on the busiest rank's slots and its
   expected distinct experts (``busiest_touched``): routing skew is load imbalance.
4. ``moe_combine`` (all-to-all, the same bytes): the outputs return to their tokens'
   ranks, which scale and sum them (and add the shared expert's).
5. ``moe_all_gather``: the layer's output rows [T, hidden] gathered onto every rank
   for the next layer's tensor-parallel attention.

Not modelled (refused with one FieldError, field ``ep``): ep on a dense model, ep != tp
on an MoE model with tp or ep > 1 (tensor-parallel experts, experts split over a subset
of the group or across pipeline stages, data-parallel attention), ep not dividing the
experts, and a stack's MoE section without expert GEMMs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from gpusim.errors import FieldError
from gpusim.kernels.moe import ExpertGemmShape, inclusion_probabilities
from gpusim.kernels.records import Kernel, collective_kernel
from gpusim.kernels.variants import is_expert_op, moe_section
from gpusim.specs import ModelSpec, StackSpec

# tensors whose elements are per token (the rest, e.g. ``experts``, per layer)
_PER_TOKEN = frozenset({"hidden", "intermediate", "gate_up", "router_logits", "routing",
                        "routed_hidden", "routed_gate_up", "routed_intermediate"})


@dataclass(frozen=True)
class ExpertSplit:
    """An MoE layer's experts over ``ep`` ranks: experts per rank, and per step shape
    the busiest rank's routed token-slots and expected distinct experts (the step waits
    for it: routing skew is load imbalance), and each rank's all-to-all buffer for the
    dispatch (and again for the combine) of its ``tokens``' slots."""

    ep: int
    experts_per_rank: int
    busiest_slots: np.ndarray
    busiest_touched: np.ndarray
    dispatch_bytes: np.ndarray


def expert_split(model: ModelSpec, ep: int, tokens: object,
                 placement: str = "round_robin") -> ExpertSplit:
    """``model``'s experts split over ``ep`` ranks, each rank holding ``tokens`` tokens
    (an array over step shapes). Experts ranked by popularity
    (``kernels.moe.inclusion_probabilities``: the routing skew) are placed
    ``round_robin`` (popular experts spread, as an expert-placement balancer aims for)
    or ``contiguous`` (the most popular together: the worst case). Raises FieldError
    (field ``ep``) for a dense model or ep not dividing the experts, (``placement``)
    for another placement."""
    if not model.is_moe:
        raise FieldError("ep", f"ep={ep}: {model.name} is dense (no experts to split)")
    e, k = model.num_experts, model.num_experts_per_tok or 0
    if not isinstance(ep, int) or ep < 1 or e % ep:
        raise FieldError("ep", f"ep={ep!r} must divide the {e} experts of {model.name}")
    if placement not in ("round_robin", "contiguous"):
        raise FieldError("placement", f"placement={placement!r} must be round_robin or "
                         "contiguous")
    pi = inclusion_probabilities(e, k, model.routing_skew)
    owner = (np.arange(e) % ep) if placement == "round_robin" else (np.arange(e) // (e // ep))
    t = np.atleast_1d(np.asarray(tokens, dtype=np.float64))
    total = t * ep   # every rank's tokens route over all experts
    share = np.array([pi[owner == r].sum() for r in range(ep)])
    busiest = int(np.argmax(share))
    touched = np.sum(1.0 - np.power(1.0 - pi[owner == busiest], total[..., None]), axis=-1)
    return ExpertSplit(ep=ep, experts_per_rank=e // ep, busiest_slots=total * share[busiest],
                       busiest_touched=touched,
                       dispatch_bytes=t * k * model.hidden_size * model.dtype_bytes)


def check_ep(model: ModelSpec, tp: int, ep: int) -> None:
    """Raise FieldError (field ``ep``) for a split this module does not model: ep > 1
    on a dense model, ep != tp on an MoE model split over GPUs, ep not dividing the
    experts."""
    if not isinstance(ep, int) or ep < 1:
        raise FieldError("ep", f"ep={ep!r} must be an integer >= 1")
    if not model.is_moe:
        if ep > 1:
            raise FieldError("ep", f"ep={ep}: {model.name} is dense (no experts to split); "
                             "expert parallelism is for MoE models")
        return
    if ep != tp:
        raise FieldError("ep", f"ep={ep} with tp={tp}: gpusim splits {model.name}'s "
                         f"experts over the tensor-parallel GPUs only (ep = tp = {tp}); "
                         "tensor-parallel experts and other expert splits are not "
                         "modelled")
    if model.num_experts % ep:
        raise FieldError("ep", f"ep={ep} must divide the {model.num_experts} experts of "
                         f"{model.name}")


def _rows_scaled(k: Kernel, f: np.ndarray) -> Kernel:
    """``k`` over ``f`` times its rows (per step shape): flops, activations, a GEMM's
    rows, a reduction's rows, a whole-tensor reduction's elements and a sort's keys
    scale; weights do not."""
    red = None if k.reduction is None else k.reduction * np.stack(
        [f, np.ones_like(f)])
    reduced = None if k.reduced_elements is None else k.reduced_elements * f
    g = k.gemm
    if g is not None:
        g = replace(g, m=g.m * f)
        if getattr(g, "rows", None) is not None:
            g = replace(g, rows=g.rows * f)
    srt = None if k.sort_elements is None else k.sort_elements * f
    idx = None if k.index_count is None else k.index_count * f
    atom = None if k.atomic_elements is None else k.atomic_elements * f
    return replace(k, flops=k.flops * f, act_bytes=k.act_bytes * f, reduction=red, gemm=g,
                   sort_elements=srt, index_count=idx, reduced_elements=reduced,
                   atomic_elements=atom)


def _on_busiest(k: Kernel, f: np.ndarray, s: ExpertSplit) -> Kernel:
    """An expert-side kernel on the busiest rank: ``f`` of the step's slots, and (an
    expert GEMM) that rank's experts and the ones its slots touch."""
    out = _rows_scaled(k, f)
    g = out.gemm
    if isinstance(g, ExpertGemmShape) and g.touched is not None:
        ratio = s.busiest_touched / np.maximum(g.touched, 1e-300)
        out = replace(out, weight_bytes=k.weight_bytes * ratio,
                      gemm=replace(g, experts=s.experts_per_rank, touched=s.busiest_touched))
    return out


def split_experts(kernels: list[Kernel], model: ModelSpec, stack: StackSpec, ep: int,
                  library: str = "nccl") -> tuple[list[Kernel], frozenset[str]]:
    """The busiest expert-parallel rank's kernels (see the module's docstring):
    ``kernels`` (a forward's, ``build_kernels``) with the MoE section's kernels on that
    rank's tokens and slots and its all-to-all dispatch, combine and all-gather added,
    and the names of the kernels it took care of (``kernels.parallel.shard`` leaves
    them as they are). ep = 1 returns ``kernels`` itself. Raises FieldError (field
    ``ep``) as ``expert_split``, or for a stack whose MoE section has no expert GEMM."""
    if ep == 1:
        return kernels, frozenset()
    ops = {op.name: op for op in moe_section(model, stack)}
    layer = [k for k in kernels if k.section == "layer" and k.name in ops]
    experts = [k for k in layer if isinstance(k.gemm, ExpertGemmShape)]
    if not experts:
        raise FieldError("ep", f"ep={ep}: stack {stack.name}'s MoE section has no expert "
                         "GEMM to split over expert-parallel ranks")
    top_k = model.num_experts_per_tok or 1
    tokens = np.asarray(experts[0].gemm.m, dtype=np.float64) / top_k   # [shapes]
    split = expert_split(model, ep, tokens / ep)
    own = np.ceil(tokens / ep - 1e-9) / np.maximum(tokens, 1e-300)   # a rank's share
    busy = split.busiest_slots / np.maximum(tokens * top_k, 1e-300)
    side = {name: is_expert_op(op) for name, op in ops.items()}
    row_bytes = model.hidden_size * model.dtype_bytes
    a2a = split.busiest_slots * row_bytes
    first = next(k.name for k in layer if side[k.name])
    last = [k.name for k in layer if side[k.name]][-1]
    end = layer[-1].name

    def coll(name: str, op: str, size: np.ndarray, after: Kernel) -> Kernel:
        return collective_kernel(name, op, size, ep, library, after.section, after.repeat,
                                 model.dtype)

    out: list[Kernel] = []
    for k in kernels:
        if k.section != "layer" or k.name not in ops:
            out.append(k)
            continue
        if k.name == first:
            out.append(coll("moe_dispatch", "all_to_all", a2a, k))
        per_token = ops[k.name].op == "gemm" or ops[k.name].tensor in _PER_TOKEN
        f = (busy if side[k.name] else own) if per_token else np.ones_like(tokens)
        out.append(_on_busiest(k, f, split) if side[k.name] else _rows_scaled(k, f))
        if k.name == last:
            out.append(coll("moe_combine", "all_to_all", a2a, k))
        if k.name == end:
            out.append(coll("moe_all_gather", "all_gather", tokens * row_bytes, k))
    return out, frozenset(ops) | {"moe_dispatch", "moe_combine", "moe_all_gather"}


def rank_expert_bytes(model: ModelSpec, ep: int) -> float:
    """One rank's routed-expert weight bytes per layer: experts / ep experts' gate_up
    and down (quantization scales included). Raises FieldError as ``check_ep`` would
    for ep not dividing the experts."""
    if model.num_experts % ep:
        raise FieldError("ep", f"ep={ep} must divide the {model.num_experts} experts of "
                         f"{model.name}")
    mats = model.layer_matrices()
    return sum(count // ep * model.matrix_bytes(name, n, k)
               for name, (n, k, count) in mats.items()
               if name in ("experts_gate_up", "experts_down"))
