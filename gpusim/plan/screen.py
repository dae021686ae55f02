"""The analytic screen: how much load one replica of an option carries within the SLOs,
from closed-form step times and queueing approximations, in milliseconds per option.

Step times (``StepCurves``) come from the step predictor's per-op costs, split as the
serving simulator's tables split them (``gpusim.serving.step_time``): per-token ops
(GEMMs, norms) over the step's new tokens, last-position ops over its sequences,
decode attention over the decoding batch at the workload's mean context, prefill
attention per request, and per-step fixed and host costs; with speculation, the
closed-form iteration of ``gpusim.speculative.iteration`` in decode-only steps.

The load is ``x`` = arrivals per step (``x = lambda t``). At a given x, with mean
output O and prefill work P per request and k chunks per prefill: a request decodes
O / e steps (e tokens per step: 1, or the speculative expectation in decode-only
steps), so N = O x / e sequences decode at once (Little's law) and a decoding
request sees 1 + N of them; P x prefill tokens enter each step; a step holds a chunk
with probability q = max(1 - exp(-k x), P x / (T - n)) and the mean step time is
t(x) = q t_mixed + (1 - q) t_decode-only, so lambda(x) = x / t(x) is the rate that
load carries. Then, per x:

* TPOT p99: the step time of a request that sees the 99th percentile of sequences
  (Poisson: N + 2.33 sqrt N) and of mixed steps over its decode (binomial over the
  decode steps of a short, 10th-percentile answer);
* TTFT p99: prefill as a G/G/1 queue (Kingman's formula: W = (ca^2 + cs^2)/2 x
  rho/(1 - rho) x E[S], the service a request's prefill tokens at the rate a step full
  of prefill computes them; its tail exponential, P(W > w) = rho exp(-rho w / W)),
  plus the 99th-percentile prompt's own chunks and the step in progress;
* memory: the KV cache holds the 99th percentile of decoding sequences at the mean
  context, plus the prefill tokens in flight; ``max_num_seqs`` holds that many
  sequences; the token budget covers the prefill work (rho < 1).

The largest x that passes (below the peak of lambda(x)) gives the SLO capacity of one
replica, ``capacity_per_s``; replicas = ceil(rate / capacity). ``bound_per_s`` is the
most one replica can carry at all (mean TPOT within the SLO, the limits and memory
held, no tail): ceil(rate / bound) replicas is the fewest any search could find.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from scipy.special import ndtr

from gpusim.plan.space import Limits, Option, Slo
from gpusim.plan.workload import WorkloadProfile
from gpusim.serving.kv_cache import kv_budget
from gpusim.serving.step_ops import last_position_ops
from gpusim.speculative.acceptance import IidAcceptance
from gpusim.speculative.drafts import extra_weight_bytes, kv_bytes_per_token
from gpusim.speculative.iteration import Speculation, predict_iteration
from gpusim.speculative.trees import TokenTree
from gpusim.step import forward_kernels, launches_per_shape, op_costs

Z99 = 2.326                # standard normal 99th percentile
LOAD_POINTS = 160          # x grid per (option, limits)
REFINE_POINTS = 64         # points between the last passing and first failing load
M_POINTS, N_POINTS = 40, 24


def _grid(top: int, points: int) -> np.ndarray:
    """0, then integers 1..top spaced geometrically."""
    return np.unique(np.concatenate(([0.0], np.rint(np.geomspace(1, max(top, 1), points)))))


@dataclass(frozen=True)
class StepCurves:
    """One option's step-time ingredients (seconds), tabulated for interpolation."""

    m_grid: np.ndarray
    token_s: np.ndarray            # per-token ops for m new tokens
    n_grid: np.ndarray
    seq_s: np.ndarray              # last-position ops for n sequences
    decode_attention_s: np.ndarray  # n decoding sequences at the mean context
    prefill_attention_s: float     # one request's prefill attention, mean over prompts
    step_fixed_s: float            # attention fixed cost + graph replay + host per step
    seq_host_s: float              # host work per sequence in a step
    chunk_host_s: float            # ... per prefill chunk
    prefill_token_host_s: float    # ... per prefill token
    eager_floor_s: float           # eager launch: every launch's host cost (0: graphs)
    spec_iteration_s: np.ndarray | None  # decode-only speculative iteration, over n
    spec_tokens: float             # tokens per sequence per decode-only step
    kv_capacity_tokens: int

    def step_s(self, n: np.ndarray, m: np.ndarray, chunks: np.ndarray,
               attention_s: np.ndarray) -> np.ndarray:
        """Mean time of a step with ``n`` decoding sequences, ``m`` prefill tokens in
        ``chunks`` chunks whose attention costs ``attention_s``."""
        gpu = (np.interp(n + m, self.m_grid, self.token_s)
               + np.interp(n + chunks, self.n_grid, self.seq_s)
               + np.interp(n, self.n_grid, self.decode_attention_s) + attention_s)
        t = (gpu + self.step_fixed_s + self.seq_host_s * (n + chunks)
             + self.chunk_host_s * chunks + self.prefill_token_host_s * m)
        return np.maximum(t, self.eager_floor_s)

    def decode_only_s(self, n: np.ndarray) -> np.ndarray:
        """A decode-only step (speculative iteration where speculating) of ``n``."""
        if self.spec_iteration_s is not None:
            return np.interp(n, self.n_grid, self.spec_iteration_s)
        z = np.zeros_like(n)
        return self.step_s(n, z, z, z)


def step_curves(option: Option, profile: WorkloadProfile, limits: Limits,
                block_size_tokens: int, reserve_fraction: float) -> StepCurves:
    """Tabulate ``option``'s step times up to ``limits`` for ``profile``'s contexts.
    Raises ValueError where the stack's kernels cannot run on the GPU (a dtype it has
    no tensor rate for), ConfigError when the model does not fit."""
    plat, model = option.platform, option.model
    last = last_position_ops(plat.stack)
    m_grid = _grid(limits.max_num_batched_tokens + limits.max_num_seqs, M_POINTS)
    n_grid = _grid(limits.max_num_seqs + 1, N_POINTS)
    ctx = float(max(round(profile.decode_context_mean_tokens), 1))

    def total(ops, keep) -> tuple[np.ndarray, np.ndarray]:
        secs = sum((op.seconds for op in ops if keep(op)), np.zeros(len(ops[0].seconds)))
        fixed = sum((op.fixed_s for op in ops if keep(op)), np.zeros(len(ops[0].seconds)))
        return secs, fixed

    def attention(op) -> bool:
        return op.kind == "attention"

    tok, _ = total(op_costs(plat, model, "verify", 1.0, 0.0, m_grid[1:]),
                   lambda op: op.kind != "attention" and op.name not in last)
    seq, _ = total(op_costs(plat, model, "prefill", n_grid[1:], 0.0, 1.0),
                   lambda op: op.kind != "attention" and op.name in last)
    dec, dec_fixed = total(op_costs(plat, model, "decode", n_grid[1:], ctx, 1.0), attention)
    points = np.maximum(np.rint(profile.prefill_points_tokens), 1.0)
    pre, pre_fixed = total(op_costs(plat, model, "prefill", 1.0, 0.0, points), attention)
    fixed = float(dec_fixed[0])
    host = plat.calibration.host
    eager_floor = 0.0
    graph = host.host_graph_launch_cost_s if plat.graph else 0.0
    if not plat.graph:
        # the launches of a one-token decode (fewer where a copy is skipped at one token)
        probe = forward_kernels(model, plat, "decode", 1, 0, 1)
        eager_floor = float(launches_per_shape(probe, 1)[0]) * host.host_launch_cost_s
    spec_s, spec_tokens = None, 1.0
    extra_w = extra_kv = 0.0
    sp = option.spec
    if sp is not None and option.hardware.overhead is not None:
        s = Speculation(model, sp.draft, TokenTree.chain(sp.k), IidAcceptance(sp.acceptance))
        it = predict_iteration(plat, option.hardware.overhead, s, n_grid[1:], ctx,
                               reserve_fraction)
        spec_s = np.concatenate(([float(it.iteration_s[0])], it.iteration_s))
        spec_tokens = float(s.expected_tokens())
        extra_w = extra_weight_bytes(sp.draft, model)
        extra_kv = kv_bytes_per_token(sp.draft, model)
    budget = kv_budget(plat.gpu, model, block_size_tokens, reserve_fraction, extra_w,
                       extra_kv, option.tp)
    return StepCurves(
        m_grid=m_grid, token_s=np.concatenate(([0.0], tok)), n_grid=n_grid,
        seq_s=np.concatenate(([0.0], seq)),
        decode_attention_s=np.concatenate(([0.0], dec - dec_fixed)),
        prefill_attention_s=float((pre - pre_fixed).mean()),
        step_fixed_s=fixed + graph + host.serving_step_host_s,
        seq_host_s=host.serving_seq_host_s, chunk_host_s=host.serving_chunk_host_s,
        prefill_token_host_s=host.serving_prefill_token_host_s, eager_floor_s=eager_floor,
        spec_iteration_s=spec_s, spec_tokens=spec_tokens,
        kv_capacity_tokens=budget.capacity_tokens)


@dataclass(frozen=True)
class LoadPoint:
    """The screen's prediction at one load (arrays over loads)."""

    rate_per_s: np.ndarray
    step_s: np.ndarray
    decoding: np.ndarray
    ttft_p99_s: np.ndarray
    tpot_p99_s: np.ndarray
    tpot_mean_s: np.ndarray
    prefill_utilisation: np.ndarray
    kv_p99_tokens: np.ndarray


def load_point(c: StepCurves, p: WorkloadProfile, limits: Limits, x: np.ndarray
               ) -> LoadPoint:
    """Predictions at ``x`` arrivals per step (see the module docstring)."""
    x = np.asarray(x, dtype=np.float64)
    seqs_cap, budget_tokens = limits.max_num_seqs, limits.max_num_batched_tokens
    work, out = p.prefill_mean_tokens, p.output_mean_tokens
    attn = c.prefill_attention_s
    chunks_per = float(np.mean(np.ceil(np.maximum(p.prefill_points_tokens, 1.0)
                                       / budget_tokens)))
    prefill = work * x
    q_arr = 1.0 - np.exp(-chunks_per * x)
    decoding = np.zeros_like(x)
    for _ in range(2):     # q and N depend on each other through the budget left
        n = 1.0 + decoding
        room = np.maximum(budget_tokens - n, 1.0)
        q = np.clip(np.maximum(q_arr, prefill / room), 1e-12, 1.0)
        e = q + (1.0 - q) * c.spec_tokens
        decoding = out * x / e
    n = 1.0 + np.minimum(decoding, seqs_cap - 1.0)
    room = np.maximum(budget_tokens - n, 1.0)
    mixed = c.step_s(n, prefill / q, chunks_per * x / q, attn * x / q)
    only = c.decode_only_s(n)
    step = q * mixed + (1.0 - q) * only
    rate = x / step
    # TPOT: the 99th percentile of sequences and of mixed steps over a short answer
    n_hi = np.minimum(n + Z99 * np.sqrt(decoding), seqs_cap)
    steps = np.maximum(p.output_p10_tokens / e, 1.0)
    q_hi = np.minimum(1.0, q + Z99 * np.sqrt(q * (1.0 - q) / steps))
    mixed_hi = c.step_s(n_hi, prefill / q, chunks_per * x / q, attn * x / q)
    tpot99 = ((q_hi * mixed_hi + (1.0 - q_hi) * c.decode_only_s(n_hi))
              / (q_hi + (1.0 - q_hi) * c.spec_tokens))
    # TTFT: prefill as a G/G/1 queue served at a full step's prefill rate
    full = c.step_s(n, room, np.ones_like(x), attn * room / max(work, 1.0))
    mu = room / full
    rho = rate * work / mu
    ok = (rho < 1.0) & (decoding < seqs_cap)
    r = np.where(ok, rho, 0.5)
    service = work / mu
    wait = (p.arrival_scv + p.prefill_scv) / 2.0 * r / (1.0 - r) * service
    wait99 = np.where(100.0 * r > 1.0, wait / r * np.log(np.maximum(100.0 * r, 1.0)), 0.0)
    p99 = p.prefill_p99_tokens
    own_chunks = np.ceil(p99 / room)
    first = own_chunks * c.step_s(n, np.minimum(p99, room), np.ones_like(x),
                                  attn * p99 / max(work, 1.0) / own_chunks)
    # waiting for one of max_num_seqs slots: M/M/c in the Halfin-Whitt regime, each
    # slot held for a request's decode
    slack = np.maximum(seqs_cap - decoding, 1e-9)
    beta = np.minimum(slack / np.sqrt(np.maximum(decoding, 1e-9)), 30.0)
    p_wait = 1.0 / (1.0 + beta * ndtr(beta) * np.exp(0.5 * beta * beta)
                    * np.sqrt(2.0 * np.pi))
    hold = out / e * step
    slot99 = np.where(100.0 * p_wait > 1.0,
                      hold / slack * np.log(np.maximum(100.0 * p_wait, 1.0)), 0.0)
    ttft99 = np.where(ok, wait99 + slot99 + first + step, np.inf)
    kv99 = n_hi * p.decode_context_mean_tokens + prefill
    return LoadPoint(rate_per_s=rate, step_s=step, decoding=decoding, ttft_p99_s=ttft99,
                     tpot_p99_s=tpot99, tpot_mean_s=step / e, prefill_utilisation=rho,
                     kv_p99_tokens=kv99)


@dataclass(frozen=True)
class Capacity:
    """What one replica of an option carries under some limits (requests per second):
    ``capacity_per_s`` within the SLOs (0: none), ``bound_per_s`` at most at all; and
    what limits it (``reason``: memory, latency or the scheduler limit, in words)."""

    capacity_per_s: float
    bound_per_s: float
    limit: str          # memory | latency | limits | none
    reason: str


def _checks(lp: LoadPoint, c: StepCurves, limits: Limits, slo: Slo) -> list[tuple[
        str, str, np.ndarray]]:
    return [
        ("latency", "TTFT p99", lp.ttft_p99_s <= slo.ttft_p99_s),
        ("latency", "TPOT p99", lp.tpot_p99_s <= slo.tpot_p99_s),
        ("memory", "KV cache", lp.kv_p99_tokens <= c.kv_capacity_tokens),
        ("limits", "max_num_seqs", lp.decoding < limits.max_num_seqs),
        ("limits", "token budget", lp.prefill_utilisation < 1.0),
    ]


@dataclass(frozen=True)
class LoadTable:
    """``load_point`` over one (option, limits)'s grid of loads (``_load_grid``), which
    ``capacity`` and ``predict_at`` share."""

    x: np.ndarray
    points: LoadPoint


def load_table(c: StepCurves, p: WorkloadProfile, limits: Limits) -> LoadTable:
    """The screen's predictions from nearly no load to what ``limits`` allow."""
    x = _load_grid(c, p, limits)
    return LoadTable(x, load_point(c, p, limits, x))


def _at(lp: LoadPoint, i: int) -> LoadPoint:
    """The ``i``-th load of ``lp`` (arrays of one)."""
    return LoadPoint(**{f.name: getattr(lp, f.name)[i:i + 1] for f in fields(LoadPoint)})


def capacity(c: StepCurves, p: WorkloadProfile, limits: Limits, slo: Slo,
             table: LoadTable | None = None) -> Capacity:
    """The SLO capacity and the throughput bound of one replica (module docstring);
    ``table``: ``load_table(c, p, limits)`` when the caller has it."""
    t = table if table is not None else load_table(c, p, limits)
    x, lp = t.x, t.points
    rising = np.concatenate(([True], np.diff(lp.rate_per_s) > 0))
    rising = np.cumprod(rising).astype(bool)           # up to the peak
    plain = ((lp.tpot_mean_s <= slo.tpot_p99_s) & (lp.decoding <= limits.max_num_seqs)
             & (lp.prefill_utilisation < 1.0) & rising
             & (lp.kv_p99_tokens - Z99 * np.sqrt(lp.decoding) * p.decode_context_mean_tokens
                <= c.kv_capacity_tokens))
    bound = float(lp.rate_per_s[plain].max()) if plain.any() else 0.0
    checks = _checks(lp, c, limits, slo)
    passing = rising & np.logical_and.reduce([ok for _, _, ok in checks])
    if not passing[0]:
        kind, what, _ = next(ch for ch in checks if not ch[2][0])
        return Capacity(0.0, bound, kind, _floor_reason(what, lp, c, slo))
    last = int(np.argmin(passing)) - 1 if not passing.all() else len(x) - 1
    if last + 1 < len(x):   # the edge, to 1/REFINE_POINTS of a grid step
        fine = np.linspace(x[last], x[last + 1], REFINE_POINTS)
        pt = load_point(c, p, limits, fine)
        ok = np.logical_and.reduce([ok for _, _, ok in _checks(pt, c, limits, slo)])
        j = int(np.argmin(ok)) - 1 if not ok.all() else len(fine) - 1
        cap = float(pt.rate_per_s[max(j, 0)])
        beyond = _at(pt, min(j + 1, len(fine) - 1))
    else:
        cap = float(lp.rate_per_s[last])
        beyond = _at(lp, len(x) - 1)
    failing = [ch for ch in _checks(beyond, c, limits, slo) if not ch[2][0]]
    kind, what = (failing[0][0], failing[0][1]) if failing else ("none", "peak throughput")
    return Capacity(cap, max(bound, cap), kind, f"{what} binds at {cap:.3g} req/s")


def _floor_reason(what: str, lp: LoadPoint, c: StepCurves, slo: Slo) -> str:
    if what == "TTFT p99":
        return (f"TTFT p99 {lp.ttft_p99_s[0]:.3g} s > {slo.ttft_p99_s:g} s even unloaded "
                "(the 99th-percentile prompt's prefill)")
    if what == "TPOT p99":
        return (f"TPOT p99 {lp.tpot_p99_s[0] * 1e3:.3g} ms > {slo.tpot_p99_s * 1e3:.3g} ms "
                "even unloaded (one sequence's decode step)")
    if what == "KV cache":
        return f"KV cache of {c.kv_capacity_tokens} tokens too small even unloaded"
    return f"{what} exceeded even unloaded"


def predict_at(c: StepCurves, p: WorkloadProfile, limits: Limits, rate_per_s: float,
               table: LoadTable | None = None) -> LoadPoint | None:
    """The screen's prediction at ``rate_per_s`` requests per second on one replica
    (the least load that carries it, to 1/REFINE_POINTS of a grid step; None beyond
    what it can carry at all); ``table`` as in ``capacity``."""
    t = table if table is not None else load_table(c, p, limits)
    above = np.flatnonzero(t.points.rate_per_s >= rate_per_s)
    if not len(above):
        return None
    i = int(above[0])
    lo = float(t.x[i - 1]) if i else 0.0
    fine = np.linspace(lo, float(t.x[i]), REFINE_POINTS)
    pts = load_point(c, p, limits, fine)
    j = np.flatnonzero(pts.rate_per_s >= rate_per_s)
    return _at(pts, int(j[0])) if len(j) else _at(t.points, i)


def _load_grid(c: StepCurves, p: WorkloadProfile, limits: Limits) -> np.ndarray:
    """Arrivals per step from nearly none to what the limits allow at all."""
    out = max(p.output_mean_tokens, 1.0)
    x_top = min(limits.max_num_seqs * c.spec_tokens / out,
                limits.max_num_batched_tokens / max(p.prefill_mean_tokens, 1.0))
    return np.geomspace(x_top * 1e-6, x_top, LOAD_POINTS)
