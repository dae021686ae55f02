"""Mixture-of-experts forwards (Mixtral, Qwen3-MoE, Qwen2-MoE) as plain PyTorch runs them.

Attention is fused_forward's torch-fused block (fused RMSNorm, rotate-half RoPE, static
bf16 KV cache, SDPA; Qwen3's q/k norms); the MLP of every layer is ``MoeLayer``:

    router GEMM [T, E] -> softmax -> top-k -> renormalise
    -> sort the T*k token-slots by expert, count per expert (histc), cumulative offsets
    -> gather the tokens -> gate_up grouped GEMM -> silu(gate) * up -> down grouped GEMM
    -> scale each slot by its routing weight -> index_add back to its token
    [+ a shared expert, a dense SwiGLU MLP every token goes through]

with ``torch._grouped_mm`` (one CUTLASS grouped GEMM per call on sm90: no custom MoE
kernels). No host sync and no data-dependent Python control flow: a step is CUDA-graph
capturable. Where ``torch._grouped_mm`` has no kernel (old torch, some devices and
dtypes), ``impl="loop"`` runs one matmul per expert, which syncs (``offs.tolist()``)
and so is refused on CUDA.

Kernels of one MoeLayer call on CUDA (eager; names as the profiler shows them may
differ, the profile phase of bench_quant_moe.py records them):

* router: 1 cuBLAS GEMM [T, h] x [h, E].
* Qwen (``softmax_topk``): softmax in float32 (1), topk (1-2: a radix-select
  ``gatherTopK`` and, for sorted output, a sort of the k values), [norm_topk_prob:
  sum (1), div (1)], cast to bf16 (1). Mixtral (``topk_softmax``): topk on the logits
  (1-2), softmax of the k values in float32 (1), cast (1).
* permutation: stable argsort of the T*k expert ids (1 kernel up to a few thousand
  slots, else cub's segmented radix sort, several), floor-divide slot -> token (1),
  index_select of the tokens (1), float cast of the ids (1), histc (memset + 1),
  cumsum (1) and int32 cast (1) of the counts.
* experts: grouped GEMM gate_up (1 CUTLASS kernel, maybe + 1 small kernel that turns
  the offsets into per-group problem sizes), silu (1), mul (1), grouped GEMM down (1+).
* combine: index_select of the weights by slot (1), mul (1), zeros (1 fill),
  index_add_ (1, atomics).
* shared expert: gate_up GEMM, silu, mul, down GEMM, add [Qwen2-MoE: a [T, 1] gate
  GEMM, sigmoid, mul].

Needs only torch (runs on the GPU machine, which has no gpusim installed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from fused_forward import Bf16Linear, DenseMlp, Layer, Model, randn
from reference import Shape

MODEL_TYPES = ("qwen3_moe", "qwen2_moe", "mixtral")


@dataclass(frozen=True)
class MoeSpec:
    """The MoE part of an HF config.

    scoring: ``softmax_topk`` (Qwen: softmax over all E, top-k, renormalise if
    ``renormalize``) or ``topk_softmax`` (Mixtral: top-k logits, softmax over those k;
    the same numbers as HF's softmax-topk-renormalise). ``shared_intermediate``: the
    shared expert's intermediate size (0: none); ``shared_gate``: Qwen2-MoE's sigmoid
    gate on it. ``qk_norm``: Qwen3's per-head q/k RMSNorm.
    """

    num_experts: int
    top_k: int
    intermediate: int
    scoring: str = "softmax_topk"
    renormalize: bool = True
    shared_intermediate: int = 0
    shared_gate: bool = False
    qk_norm: bool = False


def parse_config(cfg: dict) -> tuple[Shape, MoeSpec]:
    """(attention Shape, MoeSpec) of an HF config dict (qwen3_moe, qwen2_moe, mixtral).

    A shared expert comes from ``shared_expert_intermediate_size`` (Qwen2-MoE, with its
    sigmoid gate) or ``n_shared_experts`` x ``moe_intermediate_size`` (DeepSeek's key,
    no gate) on any of these types. Raises ValueError for another model_type (DeepSeek
    V2/V3's MLA attention and grouped sigmoid routing are not implemented) or a layer
    layout this forward does not build (dense layers among the MoE ones).
    """
    mt = cfg.get("model_type")
    if mt not in MODEL_TYPES:
        raise ValueError(f"model_type {mt!r}: MoE forward knows {', '.join(MODEL_TYPES)}")
    if cfg.get("mlp_only_layers") or cfg.get("decoder_sparse_step", 1) != 1:
        raise ValueError("dense layers among the MoE layers are not built")
    shape = Shape.from_dict(cfg)
    if mt == "mixtral":
        spec = MoeSpec(num_experts=cfg["num_local_experts"], top_k=cfg["num_experts_per_tok"],
                       intermediate=cfg["intermediate_size"], scoring="topk_softmax")
    else:
        spec = MoeSpec(num_experts=cfg["num_experts"], top_k=cfg["num_experts_per_tok"],
                       intermediate=cfg["moe_intermediate_size"],
                       renormalize=bool(cfg.get("norm_topk_prob", mt == "qwen3_moe")),
                       qk_norm=mt == "qwen3_moe")
    shared, gate = int(cfg.get("shared_expert_intermediate_size") or 0), False
    if shared:
        gate = mt == "qwen2_moe"
    elif cfg.get("n_shared_experts"):
        shared = int(cfg["n_shared_experts"]) * int(cfg.get("moe_intermediate_size")
                                                     or spec.intermediate)
    spec = MoeSpec(**{**spec.__dict__, "shared_intermediate": shared, "shared_gate": gate})
    if spec.top_k > spec.num_experts:
        raise ValueError(f"top_k {spec.top_k} > {spec.num_experts} experts")
    return shape, spec


def moe_param_count(shape: Shape, spec: MoeSpec) -> int:
    """Parameters of the whole model (router, experts, shared expert, attention, norms,
    embedding and head): what its random weights take in bf16 is 2x this."""
    h, d = shape.hidden_size, shape.d
    attn = h * (shape.num_attention_heads + 2 * shape.num_key_value_heads) * d \
        + shape.num_attention_heads * d * h
    moe = spec.num_experts * (h + 3 * h * spec.intermediate) + 3 * h * spec.shared_intermediate \
        + (h if spec.shared_gate else 0)
    norms = 2 * h + (2 * d if spec.qk_norm else 0)
    head = 0 if shape.tie_word_embeddings else shape.vocab_size * h
    return shape.num_hidden_layers * (attn + moe + norms) + shape.vocab_size * h + head + h


def grouped_mm_loop(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """What ``torch._grouped_mm(a, b, offs=offs)`` computes, one matmul per group:
    rows offs[e-1]:offs[e] of a [S, K] times b[e] [K, N]. Syncs with the host."""
    out = a.new_zeros(a.shape[0], b.shape[-1])                                    # [S, N]
    start = 0
    for e, end in enumerate(offs.tolist()):
        if end > start:
            out[start:end] = a[start:end] @ b[e]
        start = end
    return out


def grouped_mm_supported(device: torch.device | str, dtype: torch.dtype) -> bool:
    """True when ``torch._grouped_mm`` runs here and agrees with ``grouped_mm_loop`` on
    a small case with an empty group (E 4, K 32, N 48, 40 rows)."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    try:
        g = torch.Generator(device=device).manual_seed(0)
        a = randn((40, 32), 1.0, g, device, dtype)
        b = randn((4, 48, 32), 1.0, g, device, dtype).transpose(-2, -1)          # [E, K, N]
        offs = torch.tensor([8, 8, 20, 40], device=device, dtype=torch.int32)
        got = torch._grouped_mm(a, b, offs=offs, out_dtype=dtype).float()
        ref = grouped_mm_loop(a.float(), b.float(), offs)
        return bool((got - ref).norm() <= 2e-2 * ref.norm())
    except (RuntimeError, NotImplementedError, TypeError):
        return False


def distinct_experts(topi: torch.Tensor, num_experts: int) -> int:
    """How many of the ``num_experts`` experts the tokens of ``topi`` [T, k] use."""
    hit = torch.zeros(num_experts, dtype=torch.bool, device=topi.device)
    hit[topi.reshape(-1)] = True
    return int(hit.sum())


class MoeLayer:
    """Routed experts [+ shared expert] of one layer; ``__call__(hn [T, h]) -> [T, h]``.

    Weights (nn.Linear layout, stacked over experts): ``router`` [E, h], ``w_gu``
    [E, 2I, h] (gate rows then up rows), ``w_d`` [E, h, I]. ``impl``: ``grouped_mm``
    (torch._grouped_mm; CUDA-graph capturable) or ``loop`` (grouped_mm_loop; host sync,
    refused on CUDA: ValueError). ``record``: a list to append each call's top-k expert
    ids to (None: off; set it outside a timed or captured region only).
    """

    def __init__(self, spec: MoeSpec, router: torch.Tensor, w_gu: torch.Tensor,
                 w_d: torch.Tensor, shared: DenseMlp | None = None,
                 shared_gate: torch.Tensor | None = None, impl: str = "grouped_mm"):
        if impl not in ("grouped_mm", "loop"):
            raise ValueError(f"impl {impl!r}: grouped_mm or loop")
        if impl == "loop" and w_gu.device.type == "cuda":
            raise ValueError("impl 'loop' syncs with the host: not on CUDA")
        self.spec, self.impl = spec, impl
        self.router, self.w_gu, self.w_d = router, w_gu, w_d      # [E, h], [E, 2I, h], [E, h, I]
        self.shared, self.shared_gate = shared, shared_gate       # DenseMlp, [1, h]
        self.record: list[torch.Tensor] | None = None

    def route(self, hn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights [T, k] in hn's dtype, expert ids [T, k] int64)."""
        k = self.spec.top_k
        logits = F.linear(hn, self.router)                                        # [T, E]
        if self.spec.scoring == "topk_softmax":
            top, topi = logits.topk(k, dim=-1)                                    # [T, k]
            topw = torch.softmax(top, dim=-1, dtype=torch.float32)                # [T, k] f32
        else:
            probs = torch.softmax(logits, dim=-1, dtype=torch.float32)            # [T, E] f32
            topw, topi = probs.topk(k, dim=-1)                                    # [T, k]
            if self.spec.renormalize:
                topw = topw / topw.sum(-1, keepdim=True)
        return topw.to(hn.dtype), topi

    def _gmm(self, a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
        if self.impl == "loop":
            return grouped_mm_loop(a, b, offs)
        return torch._grouped_mm(a, b, offs=offs, out_dtype=a.dtype)

    def __call__(self, hn: torch.Tensor) -> torch.Tensor:
        e, k = self.spec.num_experts, self.spec.top_k
        topw, topi = self.route(hn)                                               # [T, k]
        if self.record is not None:
            self.record.append(topi)
        flat = topi.reshape(-1)                                                   # [S = T*k]
        order = flat.argsort(stable=True)             # [S] slot ids, grouped by expert
        src = order.div(k, rounding_mode="floor")     # [S] the token of each sorted slot
        xs = hn.index_select(0, src)                                              # [S, h]
        # counts per expert without a sync (bincount sizes its output from a max on the
        # host); float because histc takes floating input on every device
        counts = torch.histc(flat.float(), bins=e, min=0, max=e)                  # [E]
        offs = counts.cumsum(0).to(torch.int32)                                   # [E] ends
        # b as a transposed view [E, h, 2I] of the [E, 2I, h] weights (column-major,
        # as torchtitan passes it)
        gate, up = self._gmm(xs, self.w_gu.transpose(-2, -1), offs).chunk(2, -1)  # [S, I] x2
        y = self._gmm(F.silu(gate) * up, self.w_d.transpose(-2, -1), offs)        # [S, h]
        y = y * topw.reshape(-1).index_select(0, order).unsqueeze(1)              # [S, h]
        out = torch.zeros_like(hn).index_add_(0, src, y)                          # [T, h]
        if self.shared is not None:
            s = self.shared(hn)                                                   # [T, h]
            if self.shared_gate is not None:
                s = s * torch.sigmoid(F.linear(hn, self.shared_gate))            # [T, 1]
            out = out + s
        return out

    def reference(self, hn: torch.Tensor) -> torch.Tensor:
        """float32 per-token loop over the layer's own top-k choice (route() in hn's
        dtype, so a near tie cannot pick other experts than ``__call__`` does)."""
        topw, topi = self.route(hn)
        x = hn.float()
        out = torch.zeros_like(x)
        i = self.spec.intermediate
        for t in range(x.shape[0]):
            for j in range(self.spec.top_k):
                ex = int(topi[t, j])
                gu = self.w_gu[ex].float() @ x[t]                                 # [2I]
                a = F.silu(gu[:i]) * gu[i:]
                out[t] += float(topw[t, j]) * (self.w_d[ex].float() @ a)
        if self.shared is not None:
            gu = x @ self.shared.gu.w.float().T
            si = gu.shape[-1] // 2
            s = (F.silu(gu[:, :si]) * gu[:, si:]) @ self.shared.d.w.float().T
            if self.shared_gate is not None:
                s = s * torch.sigmoid(x @ self.shared_gate.float().T)
            out += s
        return out


def check_layer(layer: MoeLayer, hn: torch.Tensor) -> float:
    """Relative error of ``layer(hn)`` against ``layer.reference(hn)`` (float32, one
    token and expert at a time): a wrong offset, permutation or weight layout in the
    grouped path shows as O(1)."""
    got, ref = layer(hn).float(), layer.reference(hn)
    return float((got - ref).norm() / ref.norm().clamp(min=1e-30))


def build_moe(cfg: dict, device: str | torch.device, dtype: torch.dtype = torch.bfloat16,
              seed: int = 0, impl: str | None = None) -> Model:
    """Random weights (drawn directly in ``dtype`` on ``device``) of an HF MoE config.

    ``impl``: MoeLayer's (None: ``grouped_mm`` where grouped_mm_supported, else
    ``loop`` off CUDA). Raises ValueError as parse_config does, or when CUDA lacks
    torch._grouped_mm for ``dtype``.
    """
    shape, spec = parse_config(cfg)
    device = torch.device(device)
    if impl is None:
        impl = "grouped_mm" if grouped_mm_supported(device, dtype) else "loop"
        if impl == "loop" and device.type == "cuda":
            raise ValueError(f"torch._grouped_mm does not run on {device} for {dtype}")
    g = torch.Generator(device=device).manual_seed(seed)
    h, d, hq, hkv = shape.hidden_size, shape.d, shape.num_attention_heads, \
        shape.num_key_value_heads
    e, i = spec.num_experts, spec.intermediate

    def rnd(*size: int, scale: float) -> torch.Tensor:
        return randn(size, scale, g, device, dtype)

    layers = []
    for _ in range(shape.num_hidden_layers):
        shared = gate = None
        if spec.shared_intermediate:
            si = spec.shared_intermediate
            shared = DenseMlp(Bf16Linear(rnd(2 * si, h, scale=1 / math.sqrt(h))),
                              Bf16Linear(rnd(h, si, scale=0.5 / math.sqrt(si))))
            if spec.shared_gate:
                gate = rnd(1, h, scale=1 / math.sqrt(h))                          # [1, h]
        mlp = MoeLayer(spec,
                       router=rnd(e, h, scale=1 / math.sqrt(h)),                 # [E, h]
                       w_gu=rnd(e, 2 * i, h, scale=1 / math.sqrt(h)),            # [E, 2I, h]
                       w_d=rnd(e, h, i, scale=0.5 / math.sqrt(i)),               # [E, h, I]
                       shared=shared, shared_gate=gate, impl=impl)
        layers.append(Layer(
            norm1=1.0 + rnd(h, scale=0.1),
            qkv=Bf16Linear(rnd((hq + 2 * hkv) * d, h, scale=1 / math.sqrt(h))),
            o=Bf16Linear(rnd(h, hq * d, scale=0.5 / math.sqrt(hq * d))),
            norm2=1.0 + rnd(h, scale=0.1),
            mlp=mlp,
            q_norm=1.0 + rnd(d, scale=0.1) if spec.qk_norm else None,
            k_norm=1.0 + rnd(d, scale=0.1) if spec.qk_norm else None,
        ))
    embed = rnd(shape.vocab_size, h, scale=1.0)                                   # [V, h]
    norm_f = 1.0 + rnd(h, scale=0.1)
    lm_head = embed if shape.tie_word_embeddings else rnd(shape.vocab_size, h,
                                                          scale=1 / math.sqrt(h))
    inv_freq = 1.0 / (shape.rope_theta ** (torch.arange(0, d, 2, device=device,
                                                        dtype=torch.float32) / d))
    return Model(shape=shape, stack="torch-fused", weight_dtype="bf16", embed=embed,
                 layers=layers, norm_f=norm_f, lm_head=lm_head, inv_freq=inv_freq,
                 extra={"moe": spec, "impl": impl})


def moe_layers(m: Model) -> list[MoeLayer]:
    return [lw.mlp for lw in m.layers if isinstance(lw.mlp, MoeLayer)]


def experts_touched(m: Model, step: object) -> float | None:
    """Mean over layers of the distinct experts one call of ``step`` routes its tokens
    to (None for a dense model). Runs ``step`` once, eagerly, with recording on: call it
    outside any timed or captured region."""
    layers = moe_layers(m)
    if not layers:
        return None
    for lay in layers:
        lay.record = []
    try:
        step()
        counts = [distinct_experts(t, lay.spec.num_experts)
                  for lay in layers for t in lay.record]
    finally:
        for lay in layers:
            lay.record = None
    return sum(counts) / len(counts)
