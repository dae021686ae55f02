"""What a capacity plan searches: the records of a deployment and the space of them.

A deployment is ``replicas`` copies of one serving engine, each on ``tp`` GPUs of one
type (tensor parallel within a node), under one software stack (its dtypes: the model as
the stack stores it), scheduler limits (``max_num_seqs``, ``max_num_batched_tokens``)
and speculation (off, or a draft proposing ``k`` tokens). Traffic splits evenly: each
replica sees rate / replicas. Its price is the GPU file's list rental price per
GPU-hour times the GPUs. ``options`` enumerates the (GPU, stack, tp, speculation)
combinations whose weights fit, and says why the others do not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gpusim.capacity import MemoryPlan, memory_plan
from gpusim.errors import ConfigError, FieldError
from gpusim.platform import ParallelLayout, Platform
from gpusim.serving.step_tables import check_servable
from gpusim.specs import ModelSpec
from gpusim.speculative.drafts import Draft, extra_weight_bytes, kv_bytes_per_token
from gpusim.speculative.overhead import SpecOverhead

TP_DEGREES = (1, 2, 4, 8, 16, 32, 64)     # tensor-parallel degrees tried (within a node)
DEFAULT_MAX_NUM_SEQS = (64, 128, 256)
DEFAULT_MAX_NUM_BATCHED_TOKENS = (2048, 8192)


@dataclass(frozen=True)
class Slo:
    """Latency targets at the offered load: p99 time to first token and p99 time per
    output token, in seconds (``inf``: not constrained). Raises FieldError for a target
    that is not a positive number, or when neither is constrained."""

    ttft_p99_s: float = float("inf")
    tpot_p99_s: float = float("inf")

    def __post_init__(self) -> None:
        for name in ("ttft_p99_s", "tpot_p99_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise FieldError(name, f"{name}={v!r} must be a number > 0 (seconds)")
        if self.ttft_p99_s == float("inf") and self.tpot_p99_s == float("inf"):
            raise FieldError("slo", "slo: give at least one of ttft_p99_s, tpot_p99_s")

    def scaled(self, factor: float) -> Slo:
        """Both targets times ``factor`` (a looser SLO for factor > 1)."""
        return Slo(self.ttft_p99_s * factor, self.tpot_p99_s * factor)

    def meets(self, ttft_p99_s: float, tpot_p99_s: float) -> bool:
        return ttft_p99_s <= self.ttft_p99_s and tpot_p99_s <= self.tpot_p99_s

    def describe(self) -> str:
        parts = [f"{name} <= {v:g} s" for name, v in (("TTFT p99", self.ttft_p99_s),
                                                       ("TPOT p99", self.tpot_p99_s))
                 if v != float("inf")]
        return ", ".join(parts)


@dataclass(frozen=True)
class SpecChoice:
    """Speculative decoding as a plan option: ``draft`` (resolved), named ``name`` as
    ``--spec-draft`` spells it, ``k`` draft tokens per iteration, i.i.d. ``acceptance``."""

    name: str
    draft: Draft
    k: int
    acceptance: float

    @property
    def label(self) -> str:
        return f"{self.name} k={self.k} a={self.acceptance:g}"


@dataclass(frozen=True)
class Hardware:
    """One GPU type under one stack, as the caller resolved it: the platform (one GPU,
    its calibration and launch mode), the model as that stack stores it, the drafts to
    try and the speculative loop's host overhead on this GPU (None: no speculation)."""

    platform: Platform
    model: ModelSpec
    specs: tuple[SpecChoice, ...] = ()
    overhead: SpecOverhead | None = None

    def __post_init__(self) -> None:
        """Raises FieldError (field ``stack``) for a stack serving cannot price."""
        check_servable(self.platform.stack)

    @property
    def gpu_name(self) -> str:
        return self.platform.gpu.name

    @property
    def stack_name(self) -> str:
        return self.platform.stack.name

    @property
    def price_per_gpu_hour(self) -> float:
        return float(self.platform.gpu.price_usd_per_gpu_hour)


@dataclass(frozen=True)
class Option:
    """A hardware option: GPU type, stack, tensor-parallel degree and speculation (an
    MoE model's experts split over the tensor-parallel GPUs, ep = tp). Raises
    FieldError (``tp``, ``ep``) for a layout the model does not allow."""

    hardware: Hardware
    tp: int
    spec: SpecChoice | None = None
    platform: Platform = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # an MoE model's experts are split over the tensor-parallel GPUs (ep = tp)
        ep = self.tp if self.hardware.model.is_moe else 1
        object.__setattr__(self, "platform", self.hardware.platform.with_layout(
            ParallelLayout(tp=self.tp, ep=ep)))

    @property
    def key(self) -> str:
        spec = "off" if self.spec is None else f"{self.spec.name}@{self.spec.k}"
        return f"{self.hardware.gpu_name}/{self.hardware.stack_name}/tp{self.tp}/spec-{spec}"

    @property
    def gpu_name(self) -> str:
        return self.hardware.gpu_name

    @property
    def model(self) -> ModelSpec:
        return self.hardware.model


@dataclass(frozen=True, order=True)
class Limits:
    """Scheduler limits (vLLM names). Raises FieldError unless both are integers >= 1
    and the token budget covers one decode token per sequence."""

    max_num_seqs: int
    max_num_batched_tokens: int

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 131072:
                raise FieldError(name, f"{name}={v!r} must be an integer in 1..131072")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise FieldError("max_num_batched_tokens",
                             f"max_num_batched_tokens={self.max_num_batched_tokens} must be"
                             f" >= max_num_seqs={self.max_num_seqs}")


@dataclass(frozen=True)
class Deployment:
    """``replicas`` engines of ``option`` under ``limits``."""

    option: Option
    limits: Limits
    replicas: int

    @property
    def gpus(self) -> int:
        return self.option.tp * self.replicas

    @property
    def cost_per_hour(self) -> float:
        """List rental price of its GPUs, USD per hour."""
        return self.gpus * self.option.hardware.price_per_gpu_hour

    @property
    def key(self) -> tuple[str, int, int, int]:
        return (self.option.key, self.limits.max_num_seqs,
                self.limits.max_num_batched_tokens, self.replicas)

    def describe(self) -> str:
        """``2 x h100-sxm (tp=1) torch-compile, seqs 256, tokens 8192, no speculation``."""
        o = self.option
        spec = "no speculation" if o.spec is None else f"speculation {o.spec.label}"
        return (f"{self.replicas} x {o.gpu_name} (tp={o.tp}) {o.hardware.stack_name}, "
                f"max_num_seqs {self.limits.max_num_seqs}, max_num_batched_tokens "
                f"{self.limits.max_num_batched_tokens}, {spec}")


def limits_grid(max_num_seqs: tuple[int, ...], max_num_batched_tokens: tuple[int, ...]
                ) -> tuple[Limits, ...]:
    """Every pair whose token budget covers its sequences, sorted. Raises FieldError for
    a bad value, or when no pair is valid."""
    for s in max_num_seqs:
        Limits(s, 131072)             # checks each value where it entered
    for t in max_num_batched_tokens:
        Limits(1, t)
    out = sorted({Limits(s, t) for s in max_num_seqs for t in max_num_batched_tokens
                  if t >= s})
    if not out:
        raise FieldError("max_num_batched_tokens", "no max_num_batched_tokens is >= any "
                         f"max_num_seqs (got {list(max_num_batched_tokens)} and "
                         f"{list(max_num_seqs)})")
    return tuple(out)


@dataclass(frozen=True)
class Unfit:
    """A (GPU, stack, tp, speculation) combination left out, and why (``kind``: memory
    or layout)."""

    gpu: str
    stack: str
    tp: int
    spec: str
    kind: str
    reason: str


def _extra_memory(hw: Hardware, spec: SpecChoice | None) -> tuple[float, float]:
    if spec is None:
        return 0.0, 0.0
    return (extra_weight_bytes(spec.draft, hw.model),
            kv_bytes_per_token(spec.draft, hw.model))


def _fits_from(hw: Hardware, spec: SpecChoice | None, reserve_fraction: float,
               longest_tokens: int) -> int | None:
    """The least tensor-parallel degree within a node that holds the model and the
    longest request (None: none does)."""
    extra_w, extra_kv = _extra_memory(hw, spec)
    for tp in (t for t in TP_DEGREES if t <= hw.platform.gpu.links.node_gpus):
        try:
            plan = memory_plan(hw.platform.gpu, hw.model, reserve_fraction, extra_w,
                               extra_kv, tp=tp)
        except (FieldError, ConfigError):
            continue
        if plan.kv_tokens() >= longest_tokens:
            return tp
    return None


def _memory_reason(plan: MemoryPlan, longest_tokens: int, fits_from: int | None) -> str:
    """Why ``plan`` holds no request of ``longest_tokens``, in one phrase."""
    gb = 1e9
    if plan.kv_capacity_bytes <= 0:
        text = (f"{plan.model} needs {plan.weight_bytes / gb:.1f} GB of weights per GPU "
                f"on {plan.where}, over its {plan.usable_bytes / gb:.1f} GB of HBM less "
                "the reserve")
    else:
        text = (f"{plan.where}: KV cache for {plan.kv_tokens()} tokens beside "
                f"{plan.weight_bytes / gb:.1f} GB of weights < the longest request's "
                f"{longest_tokens} tokens")
    if fits_from is None:
        return text + "; no tensor-parallel layout within a node holds it"
    return text + f"; it fits from tp={fits_from}"


def options(hardware: list[Hardware], max_gpus: int, reserve_fraction: float,
            longest_request_tokens: int) -> tuple[list[Option], list[Unfit]]:
    """Every option whose weights fit with room for the longest request's KV cache on
    each GPU of its tensor-parallel group (tp: powers of two up to the node's GPUs and
    ``max_gpus``; speculation off and each of the hardware's drafts), and the
    combinations left out with their reason. Raises FieldError for ``max_gpus`` < 1."""
    if isinstance(max_gpus, bool) or not isinstance(max_gpus, int) or max_gpus < 1:
        raise FieldError("max_gpus", f"max_gpus={max_gpus!r} must be an integer >= 1")
    found: list[Option] = []
    unfit: list[Unfit] = []
    for hw in hardware:
        node = hw.platform.gpu.links.node_gpus
        for tp in (t for t in TP_DEGREES if t <= min(node, max_gpus)):
            for spec in (None, *hw.specs):
                label = "off" if spec is None else spec.label
                extra_w, extra_kv = _extra_memory(hw, spec)
                try:
                    plan = memory_plan(hw.platform.gpu, hw.model, reserve_fraction,
                                       extra_w, extra_kv, tp=tp)
                    option = Option(hw, tp, spec)
                except (FieldError, ConfigError) as exc:
                    unfit.append(Unfit(hw.gpu_name, hw.stack_name, tp, label, "layout",
                                       str(exc)))
                    continue
                if plan.kv_tokens() < longest_request_tokens:
                    unfit.append(Unfit(hw.gpu_name, hw.stack_name, tp, label, "memory",
                                       _memory_reason(plan, longest_request_tokens, _fits_from(
                                           hw, spec, reserve_fraction,
                                           longest_request_tokens))))
                    continue
                found.append(option)
    return found, unfit
