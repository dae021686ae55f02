"""The offered load as a plan sees it, and the scenario one replica of a deployment runs.

``profile`` reduces a serving scenario to the numbers the analytic screen needs: the
request rate and the burstiness of arrivals, the prompt, prefill-work and output
lengths (means, spread, tails), the mean context a decoding sequence holds and the
longest request. Lengths come from a fixed-seed sample of the scenario's own
distributions (``gpusim.serving.workload.length_sampler``), shared system prompts and
multi-turn conversations included, or from the trace it replays.

``replica_scenario`` is the scenario one replica of ``replicas`` runs: the same workload
at rate x load factor / replicas (a closed loop: that share of its users; a trace: its
time stretched), over a simulation window, with a deployment's scheduler limits,
speculation and SLO targets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from gpusim.errors import bad
from gpusim.serving.scenario import Scenario
from gpusim.serving.trace import Trace
from gpusim.serving.workload import length_sampler

SAMPLE_REQUESTS = 8192          # lengths drawn to describe a distribution
QUANTILE_POINTS = 16            # equal-weight points of the prefill-work distribution
MIN_OUTPUT_FOR_TPOT = 2         # a request's TPOT needs two output tokens


@dataclass(frozen=True)
class WorkloadProfile:
    """What the screen needs of the offered load (tokens per request, seconds).

    ``rate_per_s``: requests per second offered in all (a closed loop: its users over
    their think time, an upper bound, since each also waits for its answer);
    ``arrival_scv``: squared coefficient of variation of the gaps between arrivals;
    ``prefill_*``: tokens a request's prefill computes (a prefix cache's hits left out);
    ``decode_context_mean_tokens``: the mean context of a decoding sequence (longer
    answers decode for longer, so it is weighted by output length);
    ``prefill_points_tokens``: equal-weight quantile points of the prefill work.
    """

    process: str
    rate_per_s: float
    users: int
    arrival_scv: float
    prompt_mean_tokens: float
    output_mean_tokens: float
    output_p10_tokens: float
    prefill_mean_tokens: float
    prefill_scv: float
    prefill_p99_tokens: float
    prefill_points_tokens: tuple[float, ...]
    decode_context_mean_tokens: float
    longest_request_tokens: int
    window_s: float

    @property
    def tokens_per_request(self) -> float:
        return self.prompt_mean_tokens + self.output_mean_tokens

    def scaled(self, load_factor: float) -> WorkloadProfile:
        """The same workload at ``load_factor`` times the rate (and users)."""
        return replace(self, rate_per_s=self.rate_per_s * load_factor,
                       users=max(1, round(self.users * load_factor)) if self.users else 0)


def _sample(spec, rng: np.random.Generator, n: int = SAMPLE_REQUESTS) -> np.ndarray:
    it = length_sampler(spec, rng)
    return np.fromiter((next(it) for _ in range(n)), dtype=np.float64, count=n)


def _longest(spec, drawn: np.ndarray) -> int:
    """The most tokens a length distribution can give (its cap, else the sample's)."""
    if spec.dist == "fixed":
        return int(spec.tokens)
    if spec.dist == "uniform":
        return int(spec.high_tokens)
    if spec.dist == "empirical":
        return int(max(spec.values_tokens))
    return int(spec.max_tokens) if spec.max_tokens is not None else int(drawn.max())


def _lengths(scenario: Scenario, trace: Trace | None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, float]:
    """(prompt, prefill work, output) per sampled request, the longest request's tokens
    and requests per arrival (a conversation's turns)."""
    if scenario.trace is not None:
        if trace is None:
            raise ValueError("trace=None: the scenario replays a trace; read it and pass it")
        p = np.asarray(trace.prompt_tokens, dtype=np.float64)
        o = np.asarray(trace.output_tokens, dtype=np.float64)
        return p, p, o, int((p + o).max()), 1.0
    rng = np.random.default_rng([scenario.seed, 7])
    r_prompt, r_output = rng.spawn(2)
    new = _sample(scenario.prompt, r_prompt)
    out = _sample(scenario.output, r_output)
    longest_p, longest_o = _longest(scenario.prompt, new), _longest(scenario.output, out)
    shared = float(scenario.prefix.shared_tokens) if scenario.prefix is not None else 0.0
    caching = scenario.scheduler.prefix_caching
    conv = scenario.conversation
    if conv is None or conv.turns == 1:
        prompt = new + shared
        work = new if (caching and shared) else prompt
        return prompt, work, out, int(longest_p + shared + longest_o), 1.0
    # a turn's prompt is the conversation so far plus a new message; with prefix
    # caching only the new message (and the last answer's partial block) is computed
    turns = conv.turns
    n = (len(new) // turns) * turns
    msg, ans = new[:n].reshape(-1, turns), out[:n].reshape(-1, turns)
    before = np.cumsum(msg + ans, axis=1) - (msg + ans)
    prompt = (shared + before + msg).ravel()
    work = (msg.ravel() if caching else prompt)
    longest = int(shared + turns * (longest_p + longest_o))
    return prompt, work, ans.ravel(), longest, float(turns)


def profile(scenario: Scenario, trace: Trace | None = None) -> WorkloadProfile:
    """The scenario's offered load. Raises ConfigError (field ``arrival.think_time_s``)
    for a closed loop without think time (it offers no rate: every user resends at
    once), ValueError when the scenario replays a trace and none is given."""
    prompt, work, out, longest, per_arrival = _lengths(scenario, trace)
    if scenario.trace is not None:
        arrivals = np.asarray(trace.arrival_s, dtype=np.float64) * scenario.trace.time_scale
        span = float(arrivals[-1] - arrivals[0]) if len(arrivals) > 1 else 1.0
        window = float(scenario.duration_s) if scenario.duration_s else max(span, 1e-9)
        gaps = np.diff(arrivals)
        rate = (len(arrivals) - 1) / span if span > 0 else float(len(arrivals))
        scv = float(gaps.var() / gaps.mean() ** 2) if len(gaps) > 1 and gaps.mean() > 0 \
            else 1.0
        process, users = "trace", 0
    else:
        a = scenario.arrival
        window = float(scenario.duration_s)
        process, users = a.process, 0
        if a.process == "closed":
            if not a.think_time_s:
                raise bad("", "a closed loop with no think time offers no rate to plan "
                          "for (give think_time_s > 0 or an open-loop arrival)",
                          field="arrival.think_time_s")
            users = int(a.users)
            rate, scv = users / float(a.think_time_s), 1.0
        else:
            rate = float(a.rate_per_s) * per_arrival
            scv = 1.0 if a.process == "poisson" else float(a.cv) ** 2
    o_mean = float(out.mean())
    mean_ctx = float((out * (prompt + out / 2.0)).sum() / max(out.sum(), 1.0))
    w_mean = float(work.mean())
    qs = (np.arange(QUANTILE_POINTS) + 0.5) / QUANTILE_POINTS
    return WorkloadProfile(
        process=process, rate_per_s=rate, users=users, arrival_scv=scv,
        prompt_mean_tokens=float(prompt.mean()), output_mean_tokens=o_mean,
        output_p10_tokens=max(float(np.quantile(out, 0.1)), MIN_OUTPUT_FOR_TPOT),
        prefill_mean_tokens=w_mean,
        prefill_scv=float(work.var() / w_mean ** 2) if w_mean > 0 else 0.0,
        prefill_p99_tokens=float(np.quantile(work, 0.99)),
        prefill_points_tokens=tuple(float(v) for v in np.quantile(work, qs)),
        decode_context_mean_tokens=mean_ctx, longest_request_tokens=longest,
        window_s=window)


def sim_window_s(prof: WorkloadProfile, share: float, sim_duration_s: float,
                 min_requests: int) -> float:
    """Simulated arrival window of one replica carrying ``share`` of the load: at least
    ``sim_duration_s`` and long enough for ``min_requests`` requests, at most the
    scenario's own window (a trace's: its span, stretched by the share)."""
    rate = prof.rate_per_s * share
    want = max(sim_duration_s, min_requests / rate if rate > 0 else sim_duration_s)
    longest = prof.window_s / share if prof.process == "trace" else prof.window_s
    return float(min(longest, want))


def replica_scenario(scenario: Scenario, share: float, window_s: float,
                     slo_ttft_s: float, slo_tpot_s: float, max_num_seqs: int,
                     max_num_batched_tokens: int, spec: Any = None) -> Scenario:
    """The scenario one replica runs when it carries ``share`` of the offered load
    (load factor / replicas): rates times the share, a closed loop's users times the
    share (at least one), a trace stretched by 1 / share; arrivals for ``window_s``;
    the given scheduler limits; speculation ``spec`` (a ``space.SpecChoice``, None:
    off); SLO targets for goodput (an unconstrained one keeps the scenario's). Raises
    FieldError for a share that is not positive."""
    from gpusim.errors import FieldError

    if not share > 0 or not math.isfinite(share):
        raise FieldError("share", f"share={share!r} must be a positive number")
    data = scenario.model_dump(exclude_none=True)
    if scenario.trace is not None:
        data["trace"]["time_scale"] = scenario.trace.time_scale / share
    elif scenario.arrival.process == "closed":
        data["arrival"]["users"] = max(1, round(scenario.arrival.users * share))
    else:
        data["arrival"]["rate_per_s"] = scenario.arrival.rate_per_s * share
    data["duration_s"] = window_s
    data["scheduler"] = {**data["scheduler"], "max_num_seqs": max_num_seqs,
                         "max_num_batched_tokens": max_num_batched_tokens}
    slo = dict(data.get("slo", {}))
    if math.isfinite(slo_ttft_s):
        slo["ttft_s"] = slo_ttft_s
    if math.isfinite(slo_tpot_s):
        slo["tpot_s"] = slo_tpot_s
    data["slo"] = slo
    data.pop("speculative", None)
    if spec is not None:
        data["speculative"] = {"draft": spec.name, "k": spec.k, "acceptance": spec.acceptance}
    return Scenario.model_validate(data)
