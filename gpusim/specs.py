"""Frozen input records: GPU, model, software stack and calibration.

Every record rejects unknown keys (``extra="forbid"``) and checks ranges where it
enters, so the layers below never see a bad number. Loading from files, with file
and line in the errors, is ``gpusim.loader``'s job.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from gpusim.units import DTYPE_BYTES, HF_DTYPES

Pos = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNeg = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PosInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0, le=1.5, allow_inf_nan=False)]

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"


def field_error(field: str, message: str) -> PydanticCustomError:
    """A cross-field check's error that names ``field``: raise it in a model
    validator; ``gpusim.yamlfile.validate`` reports it at that key (file line, value)."""
    return PydanticCustomError("field_value", message, {"field": field})


def _numeric_kind(annotation: Any) -> str | None:
    """"integer" for an int field, "number" for a float one (None allowed or not),
    None for any other field."""
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, types.UnionType):
        args = [get_args(a)[0] if get_origin(a) is Annotated else a
                for a in get_args(annotation)]
    else:
        args = [annotation]
    kinds = {a for a in args if a is not type(None)}
    if kinds == {int}:
        return "integer"
    if kinds and kinds <= {int, float}:
        return "number"
    return None


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """Numeric fields refuse booleans (``true`` would be 1) and strings (``'32'``
        would be 32). Everything else is left to pydantic's lax number validation, so
        ints are fine where floats are expected and records built in code (Python or
        numpy numbers) keep working."""
        if isinstance(value, (bool, str, bytes)) and info.field_name is not None:
            kind = _numeric_kind(cls.model_fields[info.field_name].annotation)
            if kind is not None:
                what = "a boolean" if isinstance(value, bool) else \
                    "a string (write numbers without quotes)"
                raise PydanticCustomError(f"{'int' if kind == 'integer' else 'float'}_type",
                                          f"Input should be a valid {kind}, not {what}")
        return value


class LinkSpec(_Frozen):
    """A GPU-to-GPU or host link: per-direction bandwidth and one-way latency."""

    bandwidth_bytes_per_s: Pos
    latency_s: NonNeg


class TensorFlops(_Frozen):
    """Dense (no sparsity) tensor-core throughput per dtype; None where unsupported."""

    bf16: Pos
    fp16: Pos | None = None
    fp8: Pos | None = None
    int8: Pos | None = None


class Links(_Frozen):
    nvlink: LinkSpec | None = None
    pcie: LinkSpec


class GpuSpec(_Frozen):
    """One GPU as its datasheet describes it (SI units, names carry the unit)."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    display_name: str
    vendor: Literal["nvidia", "amd"]
    architecture: str
    hbm_capacity_bytes: Pos
    hbm_bandwidth_bytes_per_s: Pos
    l2_bytes: Pos
    sram_per_sm_bytes: Pos
    sm_count: PosInt
    boost_clock_hz: Pos
    fp32_flops_per_s: Pos
    tensor_flops_per_s: TensorFlops
    links: Links
    price_usd_per_gpu_hour: Pos
    sources: dict[str, str] = Field(default_factory=dict)

    def tensor_peak_flops_per_s(self, dtype: str) -> float:
        """Dense tensor throughput for ``dtype``; raises ValueError if unsupported."""
        value = getattr(self.tensor_flops_per_s, dtype, None)
        if value is None:
            raise ValueError(f"{self.name} has no tensor throughput for dtype {dtype!r}")
        return float(value)


class ModelSpec(_Frozen):
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


# ----------------------------------------------------------------------------------
# Software stack: what kernels one forward launches. Data, so a fused stack is a file.
# ----------------------------------------------------------------------------------
TensorName = Literal[
    "hidden", "q", "kv", "attn_out", "intermediate", "gate_up", "rope_table", "logits",
    "positions",
]
WeightName = Literal["qkv", "o", "gate_up", "down", "lm_head"]


class StackOp(_Frozen):
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
    # attention: the modes whose kernel reads each KV head once for its whole GQA group
    # (query heads packed into one CTA); in the others each query head re-reads it
    shares_kv_in_group: tuple[Literal["decode", "verify", "prefill", "tree"], ...] = (
        "decode", "verify", "prefill", "tree")

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


class StackSpec(_Frozen):
    """A software stack: the ops run once per forward and once per layer."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    description: str = ""
    prologue: tuple[StackOp, ...]
    layer: tuple[StackOp, ...]
    epilogue: tuple[StackOp, ...]
    # kernel-name patterns (regular expressions) of profiled kernels per class, for
    # calibration from torch.profiler output; unmatched names count as elementwise
    profile_classes: dict[Literal["gemm", "attention"], tuple[str, ...]] = Field(
        default_factory=dict)


class SlowPick(_Frozen):
    """A GEMM shape for which cuBLAS picks a kernel far slower than its neighbours' in
    m, and by how much (measured: ``gemm_picks``)."""

    n: PosInt
    k: PosInt
    m: PosInt
    slowdown: Annotated[float, Field(ge=1.0, le=100.0)]


# ----------------------------------------------------------------------------------
# Calibration: the cost model's parameters. Defaults are the datasheet (ideal) model.
# ----------------------------------------------------------------------------------
class Calibration(_Frozen):
    """Cost-model parameters for one GPU and stack.

    The defaults describe an ideal GPU: full datasheet bandwidth and tensor rate, no
    fixed costs. ``gpusim calibrate`` fits them from measurements.
    """

    gpu: str | None = None
    fitted_on: str = "datasheet"
    # HBM: sustained fraction of the datasheet bandwidth, and the latency that a
    # kernel's first bytes pay (Little's law: small transfers don't reach peak).
    hbm_bandwidth_efficiency: Fraction = 1.0
    dram_latency_s: NonNeg = 0.0
    # CTAs per SM a kernel needs in flight to reach full bandwidth (0: no limit).
    saturating_ctas_per_sm: NonNeg = 0.0
    # Per-kernel GPU-side cost inside the kernel (prologue/epilogue, tail).
    kernel_fixed_cost_s: NonNeg = 0.0
    # Idle time on the GPU between two kernels of a stream (the next kernel's launch
    # by the front end): in a step's time, not in any kernel's profiled duration.
    launch_gap_s: NonNeg = 0.0
    # Achievable fraction of dense tensor throughput in large GEMMs.
    tensor_efficiency: Fraction = 1.0
    # GEMM output tile (cuBLAS-like) for wave quantisation.
    gemm_tile_m: PosInt = 128
    gemm_tile_n: PosInt = 128
    # Shapes where cuBLAS's kernel pick is measured far slower than the smooth model's
    # (gemm_picks); empty for a GPU without a GEMM sweep.
    gemm_slow_picks: tuple[SlowPick, ...] = ()
    # Attention: bandwidth fraction for KV streaming; tensor fraction for prefill.
    attention_bandwidth_efficiency: Fraction = 1.0
    attention_tensor_efficiency: Fraction = 1.0
    # verify runs a different kernel (FA2, padded 128/64-row query tiles) than decode
    verify_attention_tensor_efficiency: Fraction = 1.0
    attention_fixed_cost_s: NonNeg = 0.0
    # Per-CTA prologue/epilogue of an attention kernel, on its critical path.
    attention_cta_overhead_s: NonNeg = 0.0
    # FA2 verify: work per attention score besides its MMAs (softmax: scale, max, exp,
    # sum on the CUDA cores), in tensor-flop equivalents; MMAs are 4 x head_dim per score.
    verify_attention_score_flops: NonNeg = 0.0
    # FA2 verify, unsplit kernel: extra time per launch (its first round of CTAs
    # starts together and waits on memory together).
    verify_attention_unsplit_fixed_s: NonNeg = 0.0
    # FA2 verify, split kernel: the combine kernel's time per split it merges.
    verify_attention_combine_s_per_split: NonNeg = 0.0
    # A token tree's verify (a boolean mask: cuDNN's fused kernel, 64-row query tiles
    # over every key): tensor fraction, softmax-and-mask work per score (tensor-flop
    # equivalents), time per wave of CTAs (prologue, epilogue) and per launch.
    tree_attention_tensor_efficiency: Fraction = 1.0
    tree_attention_score_flops: NonNeg = 0.0
    tree_attention_wave_overhead_s: NonNeg = 0.0
    tree_attention_fixed_s: NonNeg = 0.0
    # Fraction of a KV head's re-reads by the other query heads of its group that L2
    # serves, in kernels that don't share KV across the group (1: all, as one read).
    attention_l2_reuse: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    # The same in FA2's unsplit verify kernel while the KV streamed between two query
    # heads' reads of a KV head fits in L2 (``attention.attention_bandwidth``)
    attention_l2_reuse_multiwave: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    # L2 bandwidth over sustained HBM bandwidth, for pointwise chains whose tensors
    # stay in L2 between kernels (1: L2 ignored, the datasheet model).
    l2_bandwidth_ratio: Annotated[float, Field(ge=1.0, le=20.0)] = 1.0
    # Row reductions: time per element of one row, and the rows after which more rows
    # run in parallel (see cost.reduction_s).
    reduction_s_per_element: NonNeg = 0.0
    reduction_parallel_rows: Annotated[float, Field(ge=1.0, le=4096.0)] = 16.0
    # Bandwidth of a non-vectorised (strided) pointwise kernel, as a fraction of a
    # vectorised one's (element-wide loads instead of 16-byte vectors).
    strided_bandwidth_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    # Extra fixed time of a non-vectorised (strided, broadcast, reduction) kernel.
    strided_kernel_extra_s: NonNeg = 0.0
    # Extra fixed time per GEMM (pipeline fill and drain, split-K reduction).
    gemm_fixed_cost_s: NonNeg = 0.0
    # Host side: cost to launch one kernel from eager PyTorch, and one graph replay.
    host_launch_cost_s: NonNeg = 0.0
    host_graph_launch_cost_s: NonNeg = 0.0
    # Power cap: the share of a back-to-back step's time its matrix work keeps the
    # tensor cores busy at peak (at full clock) before the power manager lowers the SM
    # clock (1: never); see cost.power_clock.
    power_cap_tensor_share: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    # HBM streaming's power against the tensor cores': a step's load on the cap is its
    # tensor share plus this times its HBM share (cost.power_load).
    power_memory_weight: Annotated[float, Field(ge=0.0, le=2.0)] = 0.0
    # How FA2's verify kernel's arithmetic stretches with the SM clock: time at clock f
    # goes as f^-s (1: like a GEMM; 0: set by its KV loads' latency, not the clock).
    verify_attention_clock_sensitivity: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    # How memory and compute overlap inside a kernel: time = (m^p + c^p)^(1/p).
    overlap_exponent: Annotated[float, Field(ge=1.0, le=64.0)] = 64.0
    notes: str = ""
