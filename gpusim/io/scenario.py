"""Scenario files and command-line options -> a serving ``Scenario``.

A scenario YAML (``workloads/scenarios/``), options that override it, the length
distribution syntax of ``--prompt-dist``/``--output-dist``, and what a scenario names
beyond itself: its trace file and its speculative draft. Raises ConfigError naming the
file and line, or the option.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpusim.errors import ConfigError, bad, draft_error
from gpusim.io import yamlfile
from gpusim.io.trace import read_trace
from gpusim.serving.scenario import LengthSpec, Scenario
from gpusim.serving.trace import Trace
from gpusim.specs import ModelSpec
from gpusim.speculative.drafts import Draft, parse_draft


def load_scenario(path: Path) -> Scenario:
    """Read a scenario YAML; a relative trace path becomes relative to the file.
    Raises ConfigError with file, line and field."""
    data, lines = yamlfile.load_yaml(Path(path))
    trace = data.get("trace")
    if isinstance(trace, dict) and isinstance(trace.get("path"), str):
        p = Path(trace["path"])
        if not p.is_absolute():
            data = {**data, "trace": {**trace, "path": str(Path(path).parent / p)}}
    return yamlfile.validate(Scenario, data, str(path), lines)


# ----------------------------------------------------------------------------------
# command-line syntax
# ----------------------------------------------------------------------------------
def _int(text: str, option: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise bad(option, "expected an integer token count", value=text) from None


def _float(text: str, option: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise bad(option, "expected a number", value=text) from None


def parse_length(text: str, option: str) -> LengthSpec:
    """``512`` | ``fixed:512`` | ``uniform:LOW-HIGH`` |
    ``lognormal:median=M,sigma=S[,min=A][,max=B]`` | ``empirical:V1,V2,...``.
    Raises ConfigError naming ``option``."""
    kind, _, rest = text.strip().partition(":")
    data: dict[str, Any]
    if not rest and kind.isdigit():
        data = {"dist": "fixed", "tokens": _int(kind, option)}
    elif kind == "fixed":
        data = {"dist": "fixed", "tokens": _int(rest, option)}
    elif kind == "uniform":
        lo, sep, hi = rest.partition("-")
        if not sep:
            raise bad(option, "uniform needs LOW-HIGH, e.g. uniform:100-1000", value=text)
        data = {"dist": "uniform", "low_tokens": _int(lo, option),
                "high_tokens": _int(hi, option)}
    elif kind == "lognormal":
        names = {"median": "median_tokens", "sigma": "sigma", "min": "min_tokens",
                 "max": "max_tokens"}
        data = {"dist": "lognormal"}
        for part in filter(None, rest.split(",")):
            key, sep, value = part.partition("=")
            if not sep or key.strip() not in names:
                raise bad(option, f"lognormal takes {', '.join(names)} as key=value",
                          value=part)
            field = names[key.strip()]
            data[field] = (_float(value, option) if field in ("median_tokens", "sigma")
                           else _int(value, option))
    elif kind == "empirical":
        data = {"dist": "empirical",
                "values_tokens": [_int(v, option) for v in filter(None, rest.split(","))]}
    else:
        raise bad(option, "expected N, fixed:N, uniform:LOW-HIGH, "
                  "lognormal:median=M,sigma=S[,min=A][,max=B] or empirical:V1,V2,...",
                  value=text)
    return yamlfile.validate(LengthSpec, data, option)


def with_overrides(base: Scenario | None, **options: Any) -> Scenario:
    """``base`` (or an empty scenario) with every non-None option applied.

    Options: duration_s, seed, arrival (process name), rate_per_s, cv, users,
    think_time_s, prompt, output (LengthSpec), trace (path), scheduler fields
    (policy, max_num_seqs, max_num_batched_tokens, block_size_tokens,
    reserve_fraction, prefix_caching, cudagraph_capture_sizes, cudagraph_mode),
    slo_ttft_s, slo_tpot_s, spec_draft, spec_k, spec_acceptance, shared_prefix_tokens,
    prefix_prompts, conversation_turns, turn_think_s. Raises ConfigError (source: the
    option).
    """
    data: dict[str, Any] = base.model_dump(exclude_none=True) if base else {}
    given = {k: v for k, v in options.items() if v is not None}
    for key in ("duration_s", "seed"):
        if key in given:
            data[key] = given[key]
    arrival_keys = ("rate_per_s", "cv", "users", "think_time_s")
    if "arrival" in given or any(k in given for k in arrival_keys):
        old = dict(data.get("arrival", {}))
        process = given.get("arrival", old.get("process", "poisson"))
        if process != old.get("process"):
            old = {}
        old["process"] = process
        old.update({k: given[k] for k in arrival_keys if k in given})
        data["arrival"] = old
        data.pop("trace", None)
    for key in ("prompt", "output"):
        if key in given:
            data[key] = given[key].model_dump(exclude_unset=True)
            data.pop("trace", None)
    if "trace" in given:
        data["trace"] = {"path": str(given["trace"])}
        for key in ("arrival", "prompt", "output"):
            data.pop(key, None)
    sched = dict(data.get("scheduler", {}))
    for key in ("policy", "max_num_seqs", "max_num_batched_tokens", "block_size_tokens",
                "reserve_fraction", "prefix_caching", "cudagraph_capture_sizes",
                "cudagraph_mode"):
        if key in given:
            sched[key] = given[key]
    data["scheduler"] = sched
    for section, keys in (("prefix", (("shared_prefix_tokens", "shared_tokens"),
                                      ("prefix_prompts", "prompts"))),
                          ("conversation", (("conversation_turns", "turns"),
                                            ("turn_think_s", "think_time_s")))):
        if any(key in given for key, _ in keys):
            part = dict(data.get(section) or {})
            part.update({field: given[key] for key, field in keys if key in given})
            data[section] = part
    slo = dict(data.get("slo", {}))
    for key, field in (("slo_ttft_s", "ttft_s"), ("slo_tpot_s", "tpot_s")):
        if key in given:
            slo[field] = given[key]
    data["slo"] = slo
    spec_keys = (("spec_draft", "draft"), ("spec_k", "k"), ("spec_acceptance", "acceptance"))
    if any(key in given for key, _ in spec_keys):
        spec = dict(data.get("speculative") or {})
        for key, field in spec_keys:
            if key in given:
                spec[field] = given[key]
        if "draft" not in spec:
            raise bad("--spec-draft", "--spec-k and --spec-acceptance need a draft "
                      "(--spec-draft or speculative.draft in the scenario)")
        data["speculative"] = spec
    try:
        return yamlfile.validate(Scenario, data, "options")
    except ConfigError as exc:
        option = _OPTION_FOR_FIELD.get(exc.field or "", "command line")
        raise ConfigError(option, exc.reason, exc.field, None, exc.value,
                          exc.has_value) from None


_OPTION_FOR_FIELD = {
    "duration_s": "--duration-s", "seed": "--seed",
    "arrival": "--arrival/--rate/--cv/--users", "arrival.process": "--arrival",
    "arrival.rate_per_s": "--rate", "arrival.cv": "--cv", "arrival.users": "--users",
    "arrival.think_time_s": "--think-time-s", "trace.path": "--trace",
    "scheduler": "--max-num-seqs/--max-num-batched-tokens",
    "scheduler.policy": "--scheduler", "scheduler.max_num_seqs": "--max-num-seqs",
    "scheduler.max_num_batched_tokens": "--max-num-batched-tokens",
    "scheduler.block_size_tokens": "--block-size",
    "scheduler.reserve_fraction": "--reserve-fraction",
    "slo.ttft_s": "--slo-ttft-s", "slo.tpot_s": "--slo-tpot-s",
    "speculative": "--spec-draft", "speculative.draft": "--spec-draft",
    "speculative.k": "--spec-k", "speculative.acceptance": "--spec-acceptance",
    "scheduler.prefix_caching": "--prefix-caching",
    "scheduler.cudagraph_capture_sizes": "--cudagraph-capture-sizes",
    "scheduler.cudagraph_mode": "--cudagraph-mode",
    "prefix": "--shared-prefix-tokens", "prefix.shared_tokens": "--shared-prefix-tokens",
    "prefix.prompts": "--prefix-prompts", "conversation": "--conversation-turns",
    "conversation.turns": "--conversation-turns",
    "conversation.think_time_s": "--turn-think-s",
}

# vLLM's default CUDA-graph batch sizes (cuda_graph_sizes=[512]): 1, 2, 4, then every 8
VLLM_CAPTURE_SIZES = (1, 2, 4, *range(8, 513, 8))


def parse_capture_sizes(text: str) -> tuple[int, ...]:
    """``--cudagraph-capture-sizes``: ``vllm`` (vLLM's default list) or sizes such as
    ``1,2,4,8,16``. Raises ConfigError."""
    s = text.strip().lower()
    if s == "vllm":
        return VLLM_CAPTURE_SIZES
    try:
        sizes = tuple(int(v) for v in s.split(",") if v.strip())
    except ValueError:
        raise bad("--cudagraph-capture-sizes", "expected vllm or sizes such as 1,2,4,8",
                  value=text) from None
    return sizes


def parse_spec_k(text: str) -> int | str:
    """``--spec-k``: an integer 1..16 or ``auto``. Raises ConfigError."""
    s = text.strip().lower()
    if s == "auto":
        return "auto"
    try:
        k = int(s)
    except ValueError:
        raise bad("--spec-k", "expected an integer in 1..16 or auto", value=text) from None
    if not 1 <= k <= 16:
        raise bad("--spec-k", "expected an integer in 1..16 or auto", value=text)
    return k


def scenario_from_options(path: Path | None, *, prompt_dist: str | None = None,
                          output_dist: str | None = None, **options: Any) -> Scenario:
    """The scenario in ``path`` (if any) with the given command-line options applied.
    ``prompt_dist``/``output_dist`` use ``parse_length``'s syntax; other options as in
    ``with_overrides``. Raises ConfigError naming the file and line or the option.
    """
    base = load_scenario(path) if path is not None else None
    prompt = parse_length(prompt_dist, "--prompt-dist") if prompt_dist is not None else None
    output = parse_length(output_dist, "--output-dist") if output_dist is not None else None
    return with_overrides(base, prompt=prompt, output=output, **options)


def scenario_trace(scenario: Scenario) -> Trace | None:
    """The trace ``scenario`` replays (None for generated arrivals). Raises
    ConfigError for a bad trace file."""
    return read_trace(scenario.trace.path) if scenario.trace is not None else None


def scenario_draft(scenario: Scenario, resolve: Callable[[str], ModelSpec]) -> Draft | None:
    """The speculative draft ``scenario`` names (None without speculation), its models
    resolved with ``resolve``. Raises ConfigError (``--spec-draft``)."""
    if scenario.speculative is None:
        return None
    try:
        return parse_draft(scenario.speculative.draft, resolve)
    except ValueError as exc:
        raise bad("--spec-draft", str(exc)) from None
    except ConfigError as exc:
        raise draft_error(exc) from None
