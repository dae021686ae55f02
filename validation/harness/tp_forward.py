"""Tensor parallelism over the torch-fused and torch-hf forwards, Megatron style.

One rank of ``tp`` runs fused_forward.run_layers over its slice of the weights, exactly
as gpusim/kernels/parallel.py assumes (tests/test_harness_tp.py checks the collectives'
sizes against its ``shard``):

* column-parallel QKV (the rank's query heads and their KV heads) and gate/up (its
  slice of the intermediate), no communication;
* row-parallel O and down projections, each followed by an all-reduce of its output
  [T, h] (``RowParallel``);
* a vocab-parallel embedding (``VocabParallelEmbedding``: each rank looks up the tokens
  that fall in its rows, zeroes the others, an all-reduce sums them, as Megatron-LM's
  and vLLM's VocabParallelEmbedding do) and LM head (``VocabParallelHead``: each rank
  scores its rows, an all-gather joins the logits; vLLM's LogitsProcessor);
* attention over the rank's query heads and KV heads; with more ranks than KV heads,
  each KV head is replicated on tp / kv_heads ranks (vLLM's rule, as
  ``gpusim.kernels.parallel.rank_sizes``); norms, residuals and RoPE tables replicated.

The vocabulary is split in ceil(V / tp) rows a rank; rows past V (the last rank's
padding) are zero and their logits dropped. What a real rank runs beside gpusim's
model: the masked lookup's five small elementwise kernels before the embedding (the
range test, the shift, two masked fills) and the copy that orders the gathered logits.

``random_rank_weights`` draws one rank's weights directly (a 70B model never exists
whole on one GPU); ``shard_weights`` cuts them out of a whole model's reference.Weights
(the tests compare the sharded forward's logits with the unsharded one's). A rank's
weights are a reference.Weights whose ``shape`` is the rank's (``rank_shape``: its
heads, KV heads, intermediate and vocabulary rows), so every single-GPU helper (the
KV cache, the planning by KV bytes) works on a rank unchanged.

Needs only torch (runs on the GPU machine, which has no gpusim installed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Protocol

import reference
import torch
import torch.nn.functional as F
from fused_forward import Bf16Linear, DenseMlp, Model, model_from, randn
from reference import Shape, Weights

STACKS = ("torch-fused", "torch-hf")


@dataclass(frozen=True)
class RankSplit:
    """Rank ``rank`` of ``tp``'s share of a model: query heads ``head_start`` ..
    ``head_start + heads - 1``, KV heads ``kv_start`` .. (one, replicated, when tp
    exceeds the KV heads), the MLP intermediate slice, and vocabulary rows
    ``vocab_start`` .. ``vocab_start + vocab - 1`` of ``full_vocab``."""

    tp: int
    rank: int
    heads: int
    head_start: int
    kv_heads: int
    kv_start: int
    intermediate: int
    intermediate_start: int
    vocab: int
    vocab_start: int
    full_vocab: int

    @property
    def vocab_end(self) -> int:
        """One past the last real vocabulary row of this rank (padding excluded; the
        start itself where the rank holds padding alone)."""
        return max(self.vocab_start, min(self.vocab_start + self.vocab, self.full_vocab))


def rank_split(shape: Shape, tp: int, rank: int) -> RankSplit:
    """``shape``'s split over ``tp`` ranks, rank ``rank``'s share. Raises ValueError
    where gpusim.kernels.parallel.rank_sizes refuses the split (tp not dividing the
    heads or the intermediate; the KV heads neither divided by tp nor dividing it) or
    the rank is not one of them."""
    if not isinstance(tp, int) or tp < 1 or not 0 <= rank < tp:
        raise ValueError(f"need tp >= 1 and 0 <= rank < tp (got tp={tp}, rank={rank})")
    heads, kv, inter = (shape.num_attention_heads, shape.num_key_value_heads,
                        shape.intermediate_size)
    if heads % tp:
        raise ValueError(f"tp={tp} must divide the {heads} attention heads")
    if kv % tp and tp % kv:
        raise ValueError(f"tp={tp} must divide the {kv} KV heads or be a multiple of them")
    if inter % tp:
        raise ValueError(f"tp={tp} must divide the MLP's intermediate size {inter}")
    kv_r = max(1, kv // tp)
    kv_start = rank * kv_r if kv >= tp else rank // (tp // kv)
    vocab_r = math.ceil(shape.vocab_size / tp)
    return RankSplit(tp=tp, rank=rank, heads=heads // tp, head_start=rank * (heads // tp),
                     kv_heads=kv_r, kv_start=kv_start, intermediate=inter // tp,
                     intermediate_start=rank * (inter // tp), vocab=vocab_r,
                     vocab_start=rank * vocab_r, full_vocab=shape.vocab_size)


def rank_shape(shape: Shape, split: RankSplit) -> Shape:
    """The Shape one rank's tensors have: its heads, KV heads, intermediate slice and
    vocabulary rows (head_dim given explicitly: hidden / heads no longer yields it)."""
    return replace(shape, num_attention_heads=split.heads,
                   num_key_value_heads=split.kv_heads,
                   intermediate_size=split.intermediate, vocab_size=split.vocab,
                   head_dim=shape.d)


def rank_weight_numel(shape: Shape, split: RankSplit) -> int:
    """Elements of one rank's weights (all layers, norms, the vocabulary rows with their
    padding, the LM head unless tied): what ``random_rank_weights`` allocates."""
    h, d = shape.hidden_size, shape.d
    qkv = (split.heads + 2 * split.kv_heads) * d * h
    layer = qkv + h * split.heads * d + 3 * split.intermediate * h + 2 * h
    table = split.vocab * h
    return (shape.num_hidden_layers * layer + h + table
            + (0 if shape.tie_word_embeddings else table))


def _inv_freq(shape: Shape, device: str | torch.device) -> torch.Tensor:
    d = shape.d
    return 1.0 / (shape.rope_theta ** (torch.arange(0, d, 2, device=device,
                                                    dtype=torch.float32) / d))


def random_rank_weights(shape: Shape, split: RankSplit, device: str | torch.device,
                        dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> Weights:
    """One rank's weights drawn directly in ``dtype`` on ``device``, at the whole
    model's scales (reference.Weights'): a reference.Weights of ``rank_shape``. Each
    rank draws its own values (seeded by ``seed`` and the rank); the vocabulary's
    padding rows are zero."""
    w = Weights.__new__(Weights)
    g = torch.Generator(device=device).manual_seed(seed + 7919 * split.rank)
    s, h, d = shape, shape.hidden_size, shape.d
    hd_full, inter_full = s.num_attention_heads * d, s.intermediate_size

    def rnd(*size: int, scale: float) -> torch.Tensor:
        return randn(size, scale, g, device, dtype)

    def table(scale: float) -> torch.Tensor:
        t = rnd(split.vocab, h, scale=scale)
        t[split.vocab_end - split.vocab_start:].zero_()
        return t

    w.shape = rank_shape(shape, split)
    w.embed = table(1.0)
    w.layers = [{"norm1": 1.0 + rnd(h, scale=0.1),
                 "wqkv": rnd((split.heads + 2 * split.kv_heads) * d, h, scale=1 / math.sqrt(h)),
                 "wo": rnd(h, split.heads * d, scale=0.5 / math.sqrt(hd_full)),
                 "norm2": 1.0 + rnd(h, scale=0.1),
                 "wgu": rnd(2 * split.intermediate, h, scale=1 / math.sqrt(h)),
                 "wd": rnd(h, split.intermediate, scale=0.5 / math.sqrt(inter_full))}
                for _ in range(s.num_hidden_layers)]
    w.norm_f = 1.0 + rnd(h, scale=0.1)
    w.lm_head = w.embed if s.tie_word_embeddings else table(1 / math.sqrt(h))
    w.inv_freq = _inv_freq(shape, device)
    return w


def shard_weights(w: Weights, split: RankSplit) -> Weights:
    """Rank ``split.rank``'s slices (copies) of a whole model's weights ``w``: the
    rank's rows of the fused QKV (its query heads, then its KV heads' keys and values),
    its columns of O, its gate and up rows, its columns of down, its vocabulary rows of
    the embedding and LM head (zero rows past the vocabulary); norms and RoPE shared."""
    s, d = w.shape, w.shape.d
    h_full, kv_full, inter = s.num_attention_heads, s.num_key_value_heads, s.intermediate_size
    q0, q1 = split.head_start * d, (split.head_start + split.heads) * d
    k0 = (h_full + split.kv_start) * d
    v0 = (h_full + kv_full + split.kv_start) * d
    kvn = split.kv_heads * d
    i0, i1 = split.intermediate_start, split.intermediate_start + split.intermediate

    def rows(t: torch.Tensor) -> torch.Tensor:
        out = t.new_zeros((split.vocab, t.shape[1]))
        real = split.vocab_end - split.vocab_start
        out[:real] = t[split.vocab_start:split.vocab_end]
        return out

    r = Weights.__new__(Weights)
    r.shape = rank_shape(s, split)
    r.layers = [{"norm1": lw["norm1"],
                 "wqkv": torch.cat((lw["wqkv"][q0:q1], lw["wqkv"][k0:k0 + kvn],
                                    lw["wqkv"][v0:v0 + kvn])),
                 "wo": lw["wo"][:, q0:q1].contiguous(),
                 "norm2": lw["norm2"],
                 "wgu": torch.cat((lw["wgu"][i0:i1], lw["wgu"][inter + i0:inter + i1])),
                 "wd": lw["wd"][:, i0:i1].contiguous()}
                for lw in w.layers]
    r.embed = rows(w.embed)
    r.lm_head = r.embed if s.tie_word_embeddings else rows(w.lm_head)
    r.norm_f = w.norm_f
    r.inv_freq = w.inv_freq
    return r


def shard_cache(cache: reference.KVCache, split: RankSplit) -> reference.KVCache:
    """Rank ``split.rank``'s KV heads (a copy) of a whole model's cache."""
    out = reference.KVCache.__new__(reference.KVCache)
    kv = slice(split.kv_start, split.kv_start + split.kv_heads)
    out.k = cache.k[:, :, kv].clone()
    out.v = cache.v[:, :, kv].clone()
    return out


# ----------------------------------------------------------------------------- collectives

class Comm(Protocol):
    """The collectives a rank's forward issues among its ``tp`` ranks."""

    tp: int

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of every rank's ``x`` (in place; returns ``x``)."""
        ...

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's ``x`` [n, ...] stacked rank by rank: [tp * n, ...]."""
        ...


def gather_into(out: torch.Tensor, x: torch.Tensor, group: object = None) -> None:
    """torch.distributed's all-gather into one tensor (``all_gather_single`` where this
    torch has it, else ``all_gather_into_tensor``: one NCCL all-gather either way)."""
    import torch.distributed as dist

    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    fn(out, x, group=group)


class DistComm:
    """``Comm`` over torch.distributed's process group ``group`` (None: the default)."""

    def __init__(self, tp: int, group: object = None):
        self.tp, self.group = tp, group

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        dist.all_reduce(x, group=self.group)
        return x

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        out = x.new_empty((self.tp * x.shape[0], *x.shape[1:]))
        gather_into(out, x.contiguous(), self.group)
        return out


class RowParallel:
    """A row-parallel projection: the rank's partial product, then the all-reduce that
    sums the ranks' partials."""

    def __init__(self, linear: Bf16Linear, comm: Comm):
        self.linear, self.comm = linear, comm
        self.weight_dtype = getattr(linear, "weight_dtype", "bf16")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.comm.all_reduce(self.linear(x))


class VocabParallelEmbedding:
    """The token lookup over the rank's vocabulary rows ``table`` [V_r, h] (starting at
    ``start``, real up to ``end``): tokens outside them look up row 0 and are zeroed,
    and an all-reduce sums the ranks' rows (vLLM's VocabParallelEmbedding)."""

    def __init__(self, table: torch.Tensor, start: int, end: int, comm: Comm):
        self.table, self.start, self.end, self.comm = table, start, end, comm

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        outside = (ids < self.start) | (ids >= self.end)                          # [T]
        local = (ids - self.start).masked_fill(outside, 0)
        x = F.embedding(local, self.table)                                        # [T, h]
        x.masked_fill_(outside.unsqueeze(-1), 0)
        return self.comm.all_reduce(x)


class VocabParallelHead:
    """The LM head over the rank's vocabulary rows ``table`` [V_r, h]: its logits
    [T, V_r], an all-gather of every rank's, ordered into [T, V] (padding dropped)."""

    def __init__(self, table: torch.Tensor, full_vocab: int, comm: Comm):
        self.table, self.full_vocab, self.comm = table, full_vocab, comm

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        part = F.linear(x, self.table)                                            # [T, V_r]
        t, vr = part.shape
        full = self.comm.all_gather(part).view(self.comm.tp, t, vr)               # [tp, T, V_r]
        full = full.permute(1, 0, 2).reshape(t, self.comm.tp * vr)                # [T, tp V_r]
        return full if full.shape[1] == self.full_vocab else full[:, :self.full_vocab]


def tp_model(w: Weights, split: RankSplit, comm: Comm, stack: str = "torch-fused") -> Model:
    """The fused_forward.Model of one rank over its weights ``w`` (``shard_weights`` or
    ``random_rank_weights``): O and down row-parallel, the embedding and LM head
    vocab-parallel (tp > 1; tp = 1 is the single-GPU stack itself). ``stack``:
    ``torch-fused`` (F.rms_norm) or ``torch-hf`` (reference.rms_norm: then the forward
    is reference.forward op for op). Raises ValueError for another stack."""
    if stack not in STACKS:
        raise ValueError(f"unknown stack {stack!r} (tensor parallel: {', '.join(STACKS)})")
    m = model_from(w, stack=stack)
    if stack == "torch-hf":
        m.norm = reference.rms_norm
    if split.tp == 1:
        return m
    for layer in m.layers:
        layer.o = RowParallel(layer.o, comm)
        mlp = layer.mlp
        assert isinstance(mlp, DenseMlp)
        layer.mlp = DenseMlp(mlp.gu, RowParallel(mlp.d, comm))
    m.lookup = VocabParallelEmbedding(w.embed, split.vocab_start, split.vocab_end, comm)
    m.head = VocabParallelHead(w.lm_head, split.full_vocab, comm)
    m.extra["tp"] = split
    return m


# ----------------------------------------------------------------------------- the check

# small Llama shapes that every tp up to 8 splits: GQA with several KV heads a rank and
# a vocabulary that 2, 4 and 8 do not divide (padding rows); one KV head replicated on
# every rank with tied embeddings, over torch-hf's norm
CHECK_SHAPES: dict[str, tuple[Shape, str]] = {
    "gqa-padded-vocab": (Shape(hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                               num_key_value_heads=4, intermediate_size=96, vocab_size=251,
                               head_dim=16), "torch-fused"),
    "kv-replicated-tied": (Shape(hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                                 num_key_value_heads=1, intermediate_size=128, vocab_size=256,
                                 head_dim=8, tie_word_embeddings=True), "torch-hf"),
}
CHECK_STEPS = (("decode", 2, 5, 1), ("verify", 2, 5, 3), ("prefill", 2, 0, 6))
CHECK_TOLERANCE = 1e-3   # float32; the sums' order differs between ranks and a whole GEMM


def _unsharded(w: Weights, stack: str) -> object:
    """The single-GPU forward of ``stack``: reference.forward (torch-hf) or the fused
    forward over ``w``."""
    from fused_forward import forward as fused_forward

    if stack == "torch-hf":
        return lambda cache, tokens, ctx, mode: reference.forward(w, cache, tokens, ctx, mode)
    m = model_from(w)
    return lambda cache, tokens, ctx, mode: fused_forward(m, cache, tokens, ctx, mode)


def check_rank(comm: Comm, rank: int, device: torch.device) -> list[dict[str, object]]:
    """This rank's sharded forward (float32) against the unsharded one, for every
    CHECK_SHAPES model and CHECK_STEPS step: each rank builds the same whole model and
    cache (the same seeds), shards them, runs its share with ``comm``'s collectives,
    and compares the logits and the KV entries it wrote. Returns one row a case:
    the largest absolute difference over the largest reference value (``logits``,
    ``kv``). Raises nothing; ``CHECK_TOLERANCE`` is the caller's to apply."""
    from fused_forward import forward as fused_forward

    rows = []
    f32 = torch.float32
    for name, (shape, stack) in CHECK_SHAPES.items():
        split = rank_split(shape, comm.tp, rank)
        w = reference.Weights(shape, str(device), f32, seed=0)
        m = tp_model(shard_weights(w, split), split, comm, stack)
        whole = _unsharded(w, stack)
        for mode, b, ctx, q in CHECK_STEPS:
            cache = reference.KVCache(shape, b, ctx + q, str(device), f32, seed=1)
            mine = shard_cache(cache, split)
            g = torch.Generator(device=device).manual_seed(2)
            tokens = torch.randint(0, shape.vocab_size, (b, q), device=device, generator=g)
            ref = whole(cache, tokens, ctx, mode)
            out = fused_forward(m, mine, tokens, ctx, mode)
            kv = slice(split.kv_start, split.kv_start + split.kv_heads)
            new_k = cache.k[:, :, kv, ctx:ctx + q]
            new_v = cache.v[:, :, kv, ctx:ctx + q]
            kv_err = max(float((mine.k[:, :, :, ctx:ctx + q] - new_k).abs().max()),
                         float((mine.v[:, :, :, ctx:ctx + q] - new_v).abs().max()))
            rows.append({
                "model": name, "stack": stack, "mode": mode, "batch": b, "ctx": ctx, "q": q,
                "shape_ok": tuple(out.shape) == tuple(ref.shape),
                "logits": float((out - ref).abs().max() / ref.abs().max())
                if out.shape == ref.shape else float("inf"),
                "kv": kv_err / max(float(new_k.abs().max()), 1e-30)})
    return rows
