"""A model's sizes (``workloads/models/<name>.yaml`` or a Hugging Face config.json): a
Llama-architecture decoder, dense or a mixture of experts, its projection weights in the
activations' dtype or quantized (``Quantization``), its KV cache in either."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, model_validator

from gpusim.specs.base import NAME_PATTERN, Frozen, Pos, PosInt, field_error
from gpusim.units import DTYPE_BYTES, HF_DTYPES

# what --weight-dtype and the rows' weight_dtype column take: the activations' dtype
# (bf16, fp16: unquantized) or a quantized storage dtype
WEIGHT_DTYPES = ("bf16", "fp16", "fp8", "int8", "int4", "fp4")
KV_DTYPES = ("bf16", "fp16", "fp32", "fp8")
# bytes of one scale (or zero point) entry; e8m0: MXFP4's power-of-two scale
SCALE_BYTES: dict[str, float] = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "e8m0": 1.0}
# the scale layouts each quantized dtype is stored with, and their default scale dtype
# (fp8: float32 scales, as torch._scaled_mm takes them; int8 / int4 weight-only: the
# activations' dtype, as torchao's tinygemm layout and the harness store them; fp4:
# MXFP4's e8m0 block scales)
SCALES_FOR: dict[str, tuple[str, ...]] = {
    "fp8": ("tensor", "channel", "block"), "int8": ("channel", "group"),
    "int4": ("group",), "fp4": ("group",)}
DEFAULT_SCALE_DTYPE = {"fp8": "fp32", "int8": "bf16", "int4": "bf16", "fp4": "e8m0"}
# weights a "projections" quantization covers (attention, dense MLP, shared and routed
# experts); "experts" covers the routed experts only. Embedding, LM head, router and
# norms stay in the activations' dtype.
PROJECTION_WEIGHTS = frozenset({"qkv", "q", "k", "v", "o", "gate_up", "gate", "up", "down",
                                "experts_gate_up", "experts_down"})
EXPERT_WEIGHTS = frozenset({"experts_gate_up", "experts_down"})


class Quantization(Frozen):
    """How projection weights are stored: ``weight_dtype`` with one scale per tensor,
    per output channel, per ``group_size`` x ``group_size`` block (fp8, DeepSeek-style)
    or per ``group_size`` input channels of each output channel (int4, fp4, int8), each
    ``scale_dtype``; ``zero_points``: an asymmetric zero per scale (tinygemm's int4).
    ``modules``: every projection (attention, MLP, experts) or the routed experts only
    (gpt-oss's MXFP4 experts)."""

    weight_dtype: Literal["fp8", "int8", "int4", "fp4"]
    scales: Literal["tensor", "channel", "block", "group"]
    group_size: Annotated[int, Field(ge=1, le=65536)] | None = None
    scale_dtype: Literal["fp32", "bf16", "fp16", "e8m0"] | None = None
    zero_points: bool = False
    modules: Literal["projections", "experts"] = "projections"

    @model_validator(mode="after")
    def _consistent(self) -> Quantization:
        allowed = SCALES_FOR[self.weight_dtype]
        if self.scales not in allowed:
            raise field_error("scales", f"{self.weight_dtype} weights take scales per "
                              f"{' or '.join(allowed)}, not per {self.scales}")
        grouped = self.scales in ("block", "group")
        if grouped and self.group_size is None:
            raise field_error("group_size", f"scales per {self.scales} need group_size")
        if not grouped and self.group_size is not None:
            raise field_error("group_size", f"scales per {self.scales} take no group_size")
        if self.zero_points and self.weight_dtype not in ("int4", "int8"):
            raise field_error("zero_points", f"zero points are for integer weights, not "
                              f"{self.weight_dtype}")
        return self

    @property
    def scale_dtype_eff(self) -> str:
        return self.scale_dtype or DEFAULT_SCALE_DTYPE[self.weight_dtype]

    def scale_count(self, n: int, k: int) -> int:
        """Scales of one [n, k] weight (out[m, n] = x[m, k] @ W[n, k]^T)."""
        g = self.group_size or 1
        return {"tensor": 1, "channel": n, "block": math.ceil(n / g) * math.ceil(k / g),
                "group": n * math.ceil(k / g)}[self.scales]

    def scale_bytes(self, n: int, k: int) -> float:
        """Bytes of the scales (and zero points) of one [n, k] weight."""
        per = SCALE_BYTES[self.scale_dtype_eff] * (2 if self.zero_points else 1)
        return self.scale_count(n, k) * per

    def matrix_bytes(self, n: int, k: int) -> float:
        """Bytes of one quantized [n, k] weight, scales included."""
        return n * k * DTYPE_BYTES[self.weight_dtype] + self.scale_bytes(n, k)

    def covers(self, weight: str) -> bool:
        """Whether the weight called ``weight`` (a stack's weight name) is quantized."""
        return weight in (PROJECTION_WEIGHTS if self.modules == "projections"
                          else EXPERT_WEIGHTS)

    def describe(self) -> str:
        """``fp8 per tensor``, ``int4 g128`` and the like."""
        if self.scales == "group":
            return f"{self.weight_dtype} g{self.group_size}"
        if self.scales == "block":
            return f"{self.weight_dtype} block {self.group_size}x{self.group_size}"
        return f"{self.weight_dtype} per {self.scales}"


class ModelSpec(Frozen):
    """A Llama-architecture decoder, dense or a mixture of experts (MoE). Keys follow
    Hugging Face config.json names (Qwen3-MoE's for experts)."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    source: str = ""
    # Ceilings are far above any real model (405B: 16384 / 126 / 128 / 53248 / 128256)
    # and only catch typos; a value above one is refused with a one-line error.
    hidden_size: Annotated[PosInt, Field(le=1_000_000)]
    num_hidden_layers: Annotated[PosInt, Field(le=10_000)]
    num_attention_heads: Annotated[PosInt, Field(le=100_000)]
    num_key_value_heads: Annotated[PosInt, Field(le=100_000)]
    head_dim: Annotated[PosInt, Field(le=4096)] | None = None
    # the dense MLP's (a dense model's; an MoE model has none: its experts and shared
    # expert say their own sizes)
    intermediate_size: Annotated[PosInt, Field(le=10_000_000)] | None = None
    vocab_size: Annotated[PosInt, Field(le=10_000_000)]
    tie_word_embeddings: bool = False
    torch_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    rms_norm_eps: Pos = 1e-5
    rope_theta: Pos = 10000.0
    max_position_embeddings: Annotated[PosInt, Field(le=1_000_000_000)] = 131072
    # Qwen3's RMSNorm of each query and key head before RoPE
    qk_norm: bool = False
    # mixture of experts (0 experts: dense): routed experts per layer, the top-k each
    # token goes to, each expert's intermediate size; a shared expert every token goes
    # through (its intermediate size; DeepSeek's n_shared_experts x
    # moe_intermediate_size), optionally scaled by a sigmoid gate (Qwen2-MoE);
    # norm_topk_prob: the top-k weights renormalised (two more kernels)
    num_experts: Annotated[int, Field(ge=0, le=100_000)] = 0
    num_experts_per_tok: Annotated[PosInt, Field(le=1024)] | None = None
    moe_intermediate_size: Annotated[PosInt, Field(le=10_000_000)] | None = None
    shared_expert_intermediate_size: Annotated[int, Field(ge=0, le=10_000_000)] = 0
    shared_expert_gate: bool = False
    norm_topk_prob: bool = False
    # how unevenly tokens route: expert i (by popularity) gets a token with probability
    # proportional to (i + 1)^-routing_skew (0: uniform); kernels.moe.expected_experts
    routing_skew: Annotated[float, Field(ge=0.0, le=8.0, allow_inf_nan=False)] = 0.0
    # projection weights stored quantized (None: in torch_dtype); KV cache dtype (None:
    # torch_dtype's)
    quantization: Quantization | None = None
    kv_dtype: Literal["bf16", "fp16", "fp32", "fp8"] | None = None

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelSpec:
        if self.num_attention_heads % self.num_key_value_heads:
            raise field_error(
                "num_key_value_heads",
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise field_error(
                "hidden_size",
                f"hidden_size ({self.hidden_size}) is not divisible by num_attention_heads "
                f"({self.num_attention_heads}); give head_dim")
        if self.head_dim_eff % 2:
            raise field_error(
                "head_dim" if self.head_dim is not None else "hidden_size",
                f"head_dim ({self.head_dim_eff}) must be even: RoPE rotates pairs of a "
                "head's dimensions")
        return self

    @model_validator(mode="after")
    def _dense_or_moe(self) -> ModelSpec:
        if not self.num_experts:
            if self.intermediate_size is None:
                raise field_error("intermediate_size", "a dense model needs "
                                  "intermediate_size (an MoE model: num_experts > 0)")
            for key in ("num_experts_per_tok", "moe_intermediate_size"):
                if getattr(self, key) is not None:
                    raise field_error(key, "only for an MoE model (num_experts > 0)")
            if self.shared_expert_intermediate_size or self.shared_expert_gate:
                raise field_error("shared_expert_intermediate_size",
                                  "only for an MoE model (num_experts > 0)")
            return self
        if self.intermediate_size is not None:
            raise field_error("intermediate_size", "an MoE model's MLP is its experts "
                              "(moe_intermediate_size) and shared expert "
                              "(shared_expert_intermediate_size): no dense MLP layers "
                              "are modelled")
        for key in ("num_experts_per_tok", "moe_intermediate_size"):
            if getattr(self, key) is None:
                raise field_error(key, "an MoE model (num_experts > 0) needs it")
        if (self.num_experts_per_tok or 0) > self.num_experts:
            raise field_error("num_experts_per_tok", f"num_experts_per_tok "
                              f"({self.num_experts_per_tok}) exceeds num_experts "
                              f"({self.num_experts})")
        if self.shared_expert_gate and not self.shared_expert_intermediate_size:
            raise field_error("shared_expert_gate", "a gate needs a shared expert "
                              "(shared_expert_intermediate_size > 0)")
        return self

    @model_validator(mode="after")
    def _quantization_fits(self) -> ModelSpec:
        qz = self.quantization
        if qz is None:
            return self
        if qz.modules == "experts" and not self.num_experts:
            raise field_error("quantization", "modules: experts needs an MoE model")
        if qz.scales == "group":
            ks = {k for name, (_, k, _) in self.layer_matrices().items() if qz.covers(name)}
            uneven = sorted(k for k in ks if k % (qz.group_size or 1))
            if uneven:
                raise field_error("quantization", f"group_size {qz.group_size} does not "
                                  f"divide the input width {uneven[0]} of a quantized "
                                  "weight")
        return self

    # --- derived sizes -------------------------------------------------------------
    @property
    def dtype(self) -> str:
        """The activations' dtype (and unquantized weights')."""
        return HF_DTYPES[self.torch_dtype]

    @property
    def dtype_bytes(self) -> float:
        return DTYPE_BYTES[self.dtype]

    @property
    def kv_dtype_eff(self) -> str:
        """The KV cache's dtype."""
        return self.kv_dtype or self.dtype

    @property
    def weight_dtype(self) -> str:
        """The projections' storage dtype (``--weight-dtype``'s spelling)."""
        return self.quantization.weight_dtype if self.quantization else self.dtype

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def mlp_intermediate_size(self) -> int:
        """The dense MLP's intermediate size: a dense model's, an MoE model's shared
        expert's (0: none)."""
        if self.is_moe:
            return self.shared_expert_intermediate_size
        return self.intermediate_size or 0

    @property
    def head_dim_eff(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim_eff

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim_eff

    def layer_matrices(self) -> dict[str, tuple[int, int, int]]:
        """Each layer's weight matrices: name -> (n, k, how many), W[n, k]."""
        h = self.hidden_size
        out = {"qkv": (self.q_dim + 2 * self.kv_dim, h, 1), "o": (h, self.q_dim, 1)}
        i = self.mlp_intermediate_size
        if i:
            out.update({"gate_up": (2 * i, h, 1), "down": (h, i, 1)})
        if self.is_moe:
            e, im = self.num_experts, self.moe_intermediate_size or 0
            out.update({"router": (e, h, 1), "experts_gate_up": (2 * im, h, e),
                        "experts_down": (h, im, e)})
            if self.shared_expert_gate:
                out["shared_gate"] = (1, h, 1)
        return out

    def layer_weight_params(self) -> dict[str, int]:
        """Parameters of each per-layer weight matrix (norm vectors included)."""
        out = {name: n * k * count for name, (n, k, count) in self.layer_matrices().items()}
        out["norms"] = 2 * self.hidden_size + (2 * self.head_dim_eff if self.qk_norm else 0)
        return out

    def quantized(self, weight: str) -> bool:
        """Whether the weight called ``weight`` is stored quantized."""
        return self.quantization is not None and self.quantization.covers(weight)

    def matrix_bytes(self, weight: str, n: int, k: int) -> float:
        """Bytes of one [n, k] weight called ``weight``, quantization scales included."""
        if self.quantization is not None and self.quantization.covers(weight):
            return self.quantization.matrix_bytes(n, k)
        return n * k * self.dtype_bytes

    @property
    def param_count(self) -> int:
        per_layer = sum(self.layer_weight_params().values())
        emb = self.vocab_size * self.hidden_size
        head = 0 if self.tie_word_embeddings else emb
        return self.num_hidden_layers * per_layer + emb + head + self.hidden_size

    @property
    def active_param_count(self) -> int:
        """Parameters one token's forward uses (an MoE model: its top-k experts)."""
        if not self.is_moe:
            return self.param_count
        _, _, e = self.layer_matrices()["experts_gate_up"]
        k = self.num_experts_per_tok or 0
        routed = (self.layer_weight_params()["experts_gate_up"]
                  + self.layer_weight_params()["experts_down"])
        return self.param_count - self.num_hidden_layers * routed * (e - k) // e

    @property
    def weight_bytes(self) -> float:
        """HBM bytes of every weight (all experts), quantization scales included."""
        if self.quantization is None:
            return self.param_count * self.dtype_bytes
        layer = sum(count * self.matrix_bytes(name, n, k)
                    for name, (n, k, count) in self.layer_matrices().items())
        layer += self.layer_weight_params()["norms"] * self.dtype_bytes
        emb = self.vocab_size * self.hidden_size
        head = 0 if self.tie_word_embeddings else emb
        return (self.num_hidden_layers * layer
                + (emb + head + self.hidden_size) * self.dtype_bytes)

    @property
    def kv_bytes_per_token(self) -> float:
        """K and V of one token across all layers, in the KV cache's dtype."""
        return 2 * self.num_hidden_layers * self.kv_dim * DTYPE_BYTES[self.kv_dtype_eff]
