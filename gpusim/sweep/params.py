"""The parameters a sweep grid may vary, per simulation: the options of ``gpusim
predict`` (``step``), ``gpusim spec`` (``spec``) and ``gpusim serve`` (``serve``),
named as those options are with underscores, each with the type of one value and its
default (``REQUIRED``: the grid must give it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field

from gpusim.io.loader import DEFAULT_STACK
from gpusim.serving.scenario import CudagraphMode

REQUIRED = object()

Text = Annotated[str, Field(strict=True, min_length=1, max_length=4096)]
Count = Annotated[int, Field(strict=True, ge=1, le=1 << 24)]
Tokens = Annotated[int, Field(strict=True, ge=0, le=1 << 24)]
NonNegInt = Annotated[int, Field(strict=True, ge=0, le=1 << 31)]
Layout = Annotated[int, Field(strict=True, ge=1, le=1024)]
Positive = Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)]
NonNeg = Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(strict=True, ge=0, lt=1, allow_inf_nan=False)]
Rate = Annotated[float, Field(strict=True, ge=0, le=1, allow_inf_nan=False)]
Flag = Annotated[bool, Field(strict=True)]


@dataclass(frozen=True)
class Param:
    """One grid key: the pydantic type of one value, its default, what it expects (for
    an error that has no single cause) and what it is."""

    kind: Any
    default: object = None
    expect: str = "a value"
    help: str = ""


# shared by the three simulations: where and how a step runs
_PLATFORM = {
    "gpu": Param(Text, REQUIRED, "a GPU name or path", "hardware/<name>.yaml or a path"),
    "stack": Param(Text, DEFAULT_STACK, "a stack name or path", "software stack"),
    "calibration": Param(Text, "auto", "auto, none or a path", "calibration"),
    "launch": Param(Literal["graph", "eager"], "graph", "graph or eager", "launch mode"),
    "tp": Param(Layout, 1, "an integer 1..1024", "tensor-parallel GPUs"),
}

STEP: dict[str, Param] = {
    **_PLATFORM,
    "model": Param(Text, REQUIRED, "a model name or path", "model name, YAML or config.json"),
    "mode": Param(Literal["decode", "verify", "prefill"], "decode",
                  "decode, verify or prefill", "step mode"),
    "batch": Param(Count, 1, "an integer >= 1", "sequences in the step"),
    "ctx": Param(Tokens, None, "an integer >= 0", "tokens cached (default 1024; prefill 0)"),
    "q": Param(Count, None, "an integer >= 1", "new tokens per sequence (mode default)"),
    "pp": Param(Layout, 1, "an integer 1..1024", "pipeline stages"),
    "micro_batches": Param(Layout, 1, "an integer 1..1024", "micro-batches with pp"),
    "weight_dtype": Param(Text, None, "a dtype name", "projection weights' dtype"),
    "kv_dtype": Param(Text, None, "a dtype name", "KV cache dtype"),
}

SPEC: dict[str, Param] = {
    **_PLATFORM,
    "target": Param(Text, REQUIRED, "a model name or path", "target model"),
    "draft": Param(Text, REQUIRED, "a draft (model, medusa:H, eagle[:N], ngram[:US])",
                   "draft"),
    "k": Param(Annotated[int, Field(strict=True, ge=1, le=64)], None, "an integer 1..64",
               "draft tokens per iteration (a chain)"),
    "tree": Param(Text, None, "a tree (WxD, parents:..., best:N[:D])", "token tree"),
    "batch": Param(Count, 1, "an integer >= 1", "sequences"),
    "ctx": Param(Tokens, 1024, "an integer >= 0", "tokens cached"),
    "acceptance": Param(Rate | Text, "0.8", "a rate in [0, 1] or an acceptance model",
                        "acceptance model (as gpusim spec --acceptance)"),
    "overhead": Param(Text, "auto", "auto, none or a path", "host overhead file"),
    "round_trip_us": Param(NonNeg, None, "microseconds >= 0", "host round trip override"),
    "reserve_fraction": Param(Fraction, 0.1, "a fraction in [0, 1)", "HBM kept back"),
    "mc_iterations": Param(NonNegInt, 0, "an integer >= 0",
                           "Monte-Carlo iterations (sampled with the point's seed)"),
    "replicate": Param(NonNegInt, 0, "an integer >= 0", "repeat index (a new seed)"),
}

SERVE: dict[str, Param] = {
    **_PLATFORM,
    "model": Param(Text, REQUIRED, "a model name or path", "model name, YAML or config.json"),
    "scenario": Param(Text, None, "a scenario YAML path", "scenario file (options override)"),
    "rate": Param(Positive, None, "a rate > 0", "arrivals per second"),
    "arrival": Param(Literal["poisson", "gamma", "closed"], None, "poisson, gamma or closed",
                     "arrival process"),
    "cv": Param(Positive, None, "a number > 0", "gamma: coefficient of variation"),
    "users": Param(Count, None, "an integer >= 1", "closed: users"),
    "think_time_s": Param(NonNeg, None, "seconds >= 0", "closed: mean think time"),
    "prompt_dist": Param(Text, None, "a length distribution", "prompt tokens"),
    "output_dist": Param(Text, None, "a length distribution", "output tokens"),
    "trace": Param(Text, None, "a trace path", "JSONL/CSV trace to replay"),
    "duration_s": Param(Positive, None, "seconds > 0", "arrival window"),
    "scheduler": Param(Literal["continuous", "static"], None, "continuous or static",
                       "batching policy"),
    "max_num_seqs": Param(Count, None, "an integer >= 1", "most requests running"),
    "max_num_batched_tokens": Param(Count, None, "an integer >= 1", "token budget of a step"),
    "block_size": Param(Count, None, "an integer >= 1", "KV block size in tokens"),
    "reserve_fraction": Param(Fraction, None, "a fraction in [0, 1)", "HBM kept back"),
    "slo_ttft_s": Param(Positive, None, "seconds > 0", "goodput: TTFT target"),
    "slo_tpot_s": Param(Positive, None, "seconds > 0", "goodput: TPOT target"),
    "spec_draft": Param(Text, None, "a draft", "speculative decoding's draft"),
    "spec_k": Param(Annotated[int, Field(strict=True, ge=1, le=16)] | Literal["auto"], None,
                    "an integer 1..16 or auto", "draft tokens per iteration"),
    "spec_acceptance": Param(Rate, None, "a rate in [0, 1]", "i.i.d. acceptance rate"),
    "prefix_caching": Param(Flag, None, "true or false", "automatic prefix caching"),
    "shared_prefix_tokens": Param(Count, None, "an integer >= 1", "shared system prompt"),
    "prefix_prompts": Param(Count, None, "an integer >= 1", "distinct system prompts"),
    "conversation_turns": Param(Count, None, "an integer >= 1", "turns per conversation"),
    "turn_think_s": Param(NonNeg, None, "seconds >= 0", "time between turns"),
    "cudagraph_capture_sizes": Param(Text, None, "vllm or sizes like 1,2,4,8",
                                     "CUDA-graph batch sizes"),
    "cudagraph_mode": Param(CudagraphMode, None,
                            "full_decode_only or full_and_piecewise",
                            "what runs as CUDA graphs"),
    "pp": Param(Layout, 1, "an integer 1..1024", "pipeline stages"),
    "weight_dtype": Param(Text, None, "a dtype name", "projection weights' dtype"),
    "kv_dtype": Param(Text, None, "a dtype name", "KV cache dtype"),
    "replicate": Param(NonNegInt, 0, "an integer >= 0", "repeat index (a new seed)"),
}

PARAMS: dict[str, dict[str, Param]] = {"step": STEP, "spec": SPEC, "serve": SERVE}

# values that may name a file: resolved against the grid file's folder when they do
PATH_KEYS = frozenset({"gpu", "stack", "calibration", "model", "target", "draft",
                       "overhead", "scenario", "trace", "spec_draft"})


def with_defaults(simulation: str, params: dict[str, object]) -> dict[str, object]:
    """``params`` with every parameter the grid left out at its default."""
    table = PARAMS[simulation]
    return {name: params.get(name, p.default) for name, p in table.items()}
