"""Serving scenarios: workload, scheduler and SLOs (``gpusim.io.scenario`` reads them
from YAML or command-line options).

A scenario file (``workloads/scenarios/*.yaml``) is checked by pydantic with unknown
keys rejected; every problem becomes a one-line ConfigError with file, line and field.
CLI options override the file's values. Length distributions on the command line use
a compact syntax (``parse_length``): ``512``, ``fixed:512``, ``uniform:100-1000``,
``lognormal:median=500,sigma=0.8,max=4096``, ``empirical:100,200,300``.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from gpusim.capacity import DEFAULT_RESERVE_FRACTION
from gpusim.serving.kv_cache import DEFAULT_BLOCK_SIZE_TOKENS

Pos = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNeg = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Tokens = Annotated[int, Field(ge=1, le=10_000_000)]

DEFAULT_MAX_NUM_SEQS = 256             # vLLM's default
DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192  # vLLM V1's default for online serving
MAX_BATCHED_TOKENS_LIMIT = 131072
DEFAULT_SLO_TTFT_S = 2.0               # lenient chat SLOs; override per scenario
DEFAULT_SLO_TPOT_S = 0.1
# what runs as CUDA graphs (vLLM's CUDAGraphMode names, lower-case): decode-only steps,
# or mixed steps too as piecewise graphs (vLLM V1's default; serving.step_time)
CudagraphMode = Literal["full_decode_only", "full_and_piecewise"]
CUDAGRAPH_MODES: tuple[str, ...] = get_args(CudagraphMode)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LengthSpec(_Strict):
    """A token-count distribution; the fields a ``dist`` uses are required for it.

    fixed: ``tokens``. uniform: ``low_tokens``..``high_tokens`` inclusive. lognormal:
    ``median_tokens`` and ``sigma`` (of the log). empirical: ``values_tokens`` with
    optional ``weights``. ``min_tokens``/``max_tokens`` clip lognormal draws.
    """

    dist: Literal["fixed", "uniform", "lognormal", "empirical"]
    tokens: Tokens | None = None
    low_tokens: Tokens | None = None
    high_tokens: Tokens | None = None
    median_tokens: Pos | None = None
    sigma: Annotated[float, Field(ge=0, le=5, allow_inf_nan=False)] | None = None
    min_tokens: Tokens = 1
    max_tokens: Tokens | None = None
    values_tokens: list[Tokens] | None = None
    weights: list[NonNeg] | None = None

    @model_validator(mode="after")
    def _fields_for_dist(self) -> LengthSpec:
        need = {"fixed": ("tokens",), "uniform": ("low_tokens", "high_tokens"),
                "lognormal": ("median_tokens", "sigma"), "empirical": ("values_tokens",)}
        for name in need[self.dist]:
            if getattr(self, name) is None:
                raise ValueError(f"dist {self.dist} needs {name}")
        used = {"dist", "min_tokens", "max_tokens", *need[self.dist]}
        if self.dist == "empirical":
            used.add("weights")
        extra = sorted(k for k in self.model_fields_set if k not in used)
        if extra:
            raise ValueError(f"dist {self.dist} does not use {', '.join(extra)}")
        if self.dist == "uniform" and self.low_tokens > self.high_tokens:  # type: ignore
            raise ValueError(f"low_tokens ({self.low_tokens}) > high_tokens "
                             f"({self.high_tokens})")
        if self.max_tokens is not None and self.max_tokens < self.min_tokens:
            raise ValueError(f"max_tokens ({self.max_tokens}) < min_tokens "
                             f"({self.min_tokens})")
        if self.dist == "empirical":
            values = self.values_tokens or []
            if not values:
                raise ValueError("values_tokens must not be empty")
            if self.weights is not None and (len(self.weights) != len(values)
                                             or sum(self.weights) <= 0):
                raise ValueError("weights need one non-negative entry per value, "
                                 "not all zero")
        return self


class ArrivalSpec(_Strict):
    """poisson (``rate_per_s``), gamma (``rate_per_s``, ``cv``: bursty when > 1) or
    closed (``users`` each waiting for its answer, then thinking ``think_time_s`` on
    average, exponentially distributed)."""

    process: Literal["poisson", "gamma", "closed"]
    rate_per_s: Pos | None = None
    cv: Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)] | None = None
    users: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    think_time_s: NonNeg | None = None

    @model_validator(mode="after")
    def _fields_for_process(self) -> ArrivalSpec:
        need = {"poisson": ("rate_per_s",), "gamma": ("rate_per_s", "cv"),
                "closed": ("users",)}
        allowed = {"poisson": {"rate_per_s"}, "gamma": {"rate_per_s", "cv"},
                   "closed": {"users", "think_time_s"}}
        for name in need[self.process]:
            if getattr(self, name) is None:
                raise ValueError(f"process {self.process} needs {name}")
        extra = sorted(k for k in self.model_fields_set
                       if k != "process" and k not in allowed[self.process])
        if extra:
            raise ValueError(f"process {self.process} does not use {', '.join(extra)}")
        return self


class TraceSpec(_Strict):
    """Replay a JSONL or CSV trace (arrival_s, prompt_tokens, output_tokens); a
    relative ``path`` is relative to the scenario file."""

    path: str
    time_scale: Pos = 1.0


class SchedulerSpec(_Strict):
    """The serving engine's batching policy and limits (vLLM names)."""

    policy: Literal["continuous", "static"] = "continuous"
    max_num_seqs: Annotated[int, Field(ge=1, le=4096)] = DEFAULT_MAX_NUM_SEQS
    max_num_batched_tokens: Annotated[int, Field(ge=1, le=MAX_BATCHED_TOKENS_LIMIT)] = (
        DEFAULT_MAX_NUM_BATCHED_TOKENS)
    block_size_tokens: Annotated[int, Field(ge=1, le=4096)] = DEFAULT_BLOCK_SIZE_TOKENS
    reserve_fraction: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] = (
        DEFAULT_RESERVE_FRACTION)
    # vLLM's automatic prefix caching: full KV blocks are found again by the hash of
    # everything up to them (gpusim.serving.prefix_cache)
    prefix_caching: bool = False
    # decode-only steps of up to the largest size run as CUDA graphs padded to the next
    # size (vLLM's cudagraph_capture_sizes); other steps run eagerly. None: every step
    # runs in the platform's launch mode, unpadded
    cudagraph_capture_sizes: tuple[Annotated[int, Field(ge=1, le=4096)], ...] | None = None
    # full_and_piecewise: mixed steps of up to the largest size replay piecewise graphs
    # padded to the next size too (attention eager between them); needs the sizes
    cudagraph_mode: CudagraphMode = "full_decode_only"

    @field_validator("cudagraph_mode")
    @classmethod
    def _piecewise_needs_sizes(cls, mode: str, info: ValidationInfo) -> str:
        # declared after the sizes: they are in info.data unless they failed themselves
        if (mode == "full_and_piecewise" and "cudagraph_capture_sizes" in info.data
                and info.data["cudagraph_capture_sizes"] is None):
            raise ValueError("full_and_piecewise needs cudagraph_capture_sizes (the sizes "
                             "its graphs are captured at)")
        return mode

    @model_validator(mode="after")
    def _budget_covers_decodes(self) -> SchedulerSpec:
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be"
                             f" >= max_num_seqs ({self.max_num_seqs}), as in vLLM")
        sizes = self.cudagraph_capture_sizes
        if sizes is not None and (not sizes or list(sizes) != sorted(set(sizes))):
            raise ValueError("cudagraph_capture_sizes must be a non-empty list of distinct "
                             "sizes in increasing order")
        if self.prefix_caching and self.policy != "continuous":
            raise ValueError("prefix_caching is modelled with the continuous scheduler only")
        return self

    def describe(self) -> dict[str, object]:
        """The settings as a run reports them (the newer keys only where set, so that
        runs without them report what they always did)."""
        out = self.model_dump()
        if not self.prefix_caching:
            del out["prefix_caching"]
        if self.cudagraph_capture_sizes is None:
            del out["cudagraph_capture_sizes"]
        else:
            out["cudagraph_capture_sizes"] = list(self.cudagraph_capture_sizes)
        if self.cudagraph_mode == "full_decode_only":
            del out["cudagraph_mode"]
        return out


class SloSpec(_Strict):
    """Latency targets for goodput: a request is good if it meets both."""

    ttft_s: Pos = DEFAULT_SLO_TTFT_S
    tpot_s: Pos = DEFAULT_SLO_TPOT_S


class SpeculativeSpec(_Strict):
    """Speculative decoding in decode-only steps: ``draft`` (a model name or path,
    medusa:H, eagle[:N], ngram[:US]), ``k`` draft tokens per iteration (an integer or
    ``auto``: chosen per step from the batch size) and the i.i.d. acceptance rate."""

    draft: Annotated[str, Field(min_length=1)]
    k: Literal["auto"] | Annotated[int, Field(ge=1, le=16)] = 4
    acceptance: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.7


class PrefixSpec(_Strict):
    """Shared system prompts: every prompt starts with one of ``prompts`` system prompts
    of ``shared_tokens`` tokens each (drawn uniformly per request, or per conversation);
    the prompt lengths the workload draws (or a trace gives) follow it."""

    shared_tokens: Tokens
    prompts: Annotated[int, Field(ge=1, le=1_000_000)] = 1


class ConversationSpec(_Strict):
    """Multi-turn conversations: each arrival starts a conversation of ``turns`` turns.
    A turn's prompt is the conversation so far (earlier prompts and answers) followed by
    a new user message drawn from ``prompt``; its answer is drawn from ``output``; the
    next turn arrives ``think_time_s`` (mean, exponentially distributed) after the
    answer's last token."""

    turns: Annotated[int, Field(ge=1, le=10_000)]
    think_time_s: NonNeg = 0.0


class Scenario(_Strict):
    """One serving experiment: arrivals and lengths (or a trace), engine, SLOs."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")] = "custom"
    description: str = ""
    duration_s: Annotated[float, Field(gt=0, le=1e8, allow_inf_nan=False)] | None = None
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0
    arrival: ArrivalSpec | None = None
    prompt: LengthSpec | None = None
    output: LengthSpec | None = None
    trace: TraceSpec | None = None
    scheduler: SchedulerSpec = SchedulerSpec()
    slo: SloSpec = SloSpec()
    speculative: SpeculativeSpec | None = None
    prefix: PrefixSpec | None = None
    conversation: ConversationSpec | None = None

    @model_validator(mode="after")
    def _workload_given(self) -> Scenario:
        synthetic = [k for k in ("arrival", "prompt", "output") if getattr(self, k)]
        if self.speculative is not None and self.scheduler.prefix_caching:
            raise ValueError("prefix caching with speculative decoding is not modelled")
        if self.conversation is not None and (
                self.trace is not None
                or (self.arrival is not None and self.arrival.process == "closed")):
            raise ValueError("conversation needs an open-loop arrival process (poisson or "
                             "gamma) starting conversations, not a trace or closed users")
        if self.trace is not None:
            if synthetic:
                raise ValueError(f"give either trace or arrival/prompt/output, not both "
                                 f"(found {', '.join(synthetic)})")
            return self
        missing = [k for k in ("arrival", "prompt", "output") if getattr(self, k) is None]
        if missing:
            raise ValueError(f"needs {', '.join(missing)} (or a trace)")
        if self.duration_s is None:
            raise ValueError("needs duration_s (only a trace may leave it out)")
        return self
