"""A model's sizes (``workloads/models/<name>.yaml`` or a Hugging Face config.json)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from gpusim.specs.base import NAME_PATTERN, Frozen, Pos, PosInt, field_error
from gpusim.units import DTYPE_BYTES, HF_DTYPES


class ModelSpec(Frozen):
    """A Llama-architecture decoder. Keys follow Hugging Face config.json names."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    source: str = ""
    # Ceilings are far above any real model (405B: 16384 / 126 / 128 / 53248 / 128256)
    # and only catch typos; a value above one is refused with a one-line error.
    hidden_size: Annotated[PosInt, Field(le=1_000_000)]
    num_hidden_layers: Annotated[PosInt, Field(le=10_000)]
    num_attention_heads: Annotated[PosInt, Field(le=100_000)]
    num_key_value_heads: Annotated[PosInt, Field(le=100_000)]
    head_dim: Annotated[PosInt, Field(le=4096)] | None = None
    intermediate_size: Annotated[PosInt, Field(le=10_000_000)]
    vocab_size: Annotated[PosInt, Field(le=10_000_000)]
    tie_word_embeddings: bool = False
    torch_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    rms_norm_eps: Pos = 1e-5
    rope_theta: Pos = 10000.0
    max_position_embeddings: Annotated[PosInt, Field(le=1_000_000_000)] = 131072

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
        return self

    # --- derived sizes -------------------------------------------------------------
    @property
    def dtype(self) -> str:
        return HF_DTYPES[self.torch_dtype]

    @property
    def dtype_bytes(self) -> float:
        return DTYPE_BYTES[self.dtype]

    @property
    def head_dim_eff(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim_eff

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim_eff

    def layer_weight_params(self) -> dict[str, int]:
        """Parameters of each per-layer weight matrix (norm vectors included)."""
        h, i = self.hidden_size, self.intermediate_size
        return {
            "qkv": h * (self.q_dim + 2 * self.kv_dim),
            "o": self.q_dim * h,
            "gate_up": h * 2 * i,
            "down": i * h,
            "norms": 2 * h,
        }

    @property
    def param_count(self) -> int:
        per_layer = sum(self.layer_weight_params().values())
        emb = self.vocab_size * self.hidden_size
        head = 0 if self.tie_word_embeddings else emb
        return self.num_hidden_layers * per_layer + emb + head + self.hidden_size

    @property
    def weight_bytes(self) -> float:
        return self.param_count * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> float:
        """K and V of one token across all layers."""
        return 2 * self.num_hidden_layers * self.kv_dim * self.dtype_bytes

