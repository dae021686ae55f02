"""Requests for the serving engine: when they arrive and what they say.

Arrivals: Poisson (``rate_per_s`` until ``duration_s``) or a trace (CSV or JSONL rows of
arrival_s, prompt_tokens, output_tokens, as workloads/traces/ holds; ``time_scale``
stretches it). Lengths of a Poisson workload: ``N``, ``uniform:LO-HI`` or
``lognormal:median=M,sigma=S[,min=A][,max=B]`` (gpusim's syntax). Token ids are random
(a seeded numpy Generator), so the same seed gives the same requests.

Shared content, for prefix caching: ``shared_prefix_tokens`` puts one of
``prefix_prompts`` system prompts (fixed random ids) in front of every prompt;
``conversation_turns`` makes each arrival start a conversation whose next turn is sent
``turn_think_s`` (mean, exponential) after the answer's last token: its prompt is the
conversation so far (earlier prompts and the engine's actual answers) plus a new user
message. A request names its content as segments (key, tokens) for gpusim's replay:
system prompt ``s<g>``, user message ``c<conv>.u<turn>`` (``r<rid>.u`` outside
conversations), answer ``c<conv>.o<turn>`` (``r<rid>.o``).

Needs numpy and the standard library.
"""

from __future__ import annotations

import csv
import heapq
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from serve_engine import Request


def parse_length(text: str):
    """A sampler rng -> tokens for ``N`` | ``uniform:LO-HI`` |
    ``lognormal:median=M,sigma=S[,min=A][,max=B]``. Raises ValueError."""
    kind, _, rest = text.strip().partition(":")
    if not rest and kind.isdigit() and int(kind) >= 1:
        n = int(kind)
        return lambda rng: n
    if kind == "uniform":
        lo, _, hi = rest.partition("-")
        a, b = int(lo), int(hi)
        if not 1 <= a <= b:
            raise ValueError(f"uniform:{rest}: need 1 <= LO <= HI")
        return lambda rng: int(rng.integers(a, b, endpoint=True))
    if kind == "lognormal":
        opts = dict(part.split("=", 1) for part in rest.split(",") if part)
        unknown = set(opts) - {"median", "sigma", "min", "max"}
        if unknown or "median" not in opts or "sigma" not in opts:
            raise ValueError(f"lognormal:{rest}: needs median= and sigma= (min=, max=)")
        mu, sigma = math.log(float(opts["median"])), float(opts["sigma"])
        lo, hi = int(opts.get("min", 1)), int(opts.get("max", 10**9))
        return lambda rng: int(min(hi, max(lo, round(math.exp(rng.normal(mu, sigma))))))
    raise ValueError(f"length {text!r}: expected N, uniform:LO-HI or "
                     "lognormal:median=M,sigma=S[,min=A][,max=B]")


def read_trace(path: Path) -> list[tuple[float, int, int]]:
    """(arrival_s, prompt_tokens, output_tokens) rows of a CSV or JSONL trace."""
    text = Path(path).read_text()
    if Path(path).suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
    else:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [(float(r["arrival_s"]), int(r["prompt_tokens"]), int(r["output_tokens"]))
            for r in rows]


@dataclass(frozen=True)
class WorkloadSpec:
    """What to send (see the module docstring); ``vocab``: the model's vocabulary."""

    vocab: int
    seed: int = 0
    rate_per_s: float | None = None
    duration_s: float = 60.0
    prompt: str = "512"
    output: str = "128"
    trace: str | None = None
    time_scale: float = 1.0
    shared_prefix_tokens: int = 0
    prefix_prompts: int = 1
    conversation_turns: int = 1
    turn_think_s: float = 0.0

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {"seed": self.seed, "duration_s": self.duration_s}
        if self.trace is not None:
            out.update(kind="trace", trace=self.trace, time_scale=self.time_scale)
        else:
            out.update(kind="poisson", rate_per_s=self.rate_per_s, prompt=self.prompt,
                       output=self.output)
        if self.shared_prefix_tokens:
            out["prefix"] = {"shared_tokens": self.shared_prefix_tokens,
                             "prompts": self.prefix_prompts}
        if self.conversation_turns > 1:
            out["conversation"] = {"turns": self.conversation_turns,
                                   "think_time_s": self.turn_think_s}
        return out


class Workload:
    """The request source of one run: ``next_s`` (the next arrival, inf when none is
    due), ``pop()`` (that request), ``done(req, now_s)`` (a finished or rejected one:
    a conversation sends its next turn). Raises ValueError for a bad spec."""

    def __init__(self, spec: WorkloadSpec) -> None:
        if spec.trace is None and not (spec.rate_per_s and spec.rate_per_s > 0):
            raise ValueError("a Poisson workload needs rate_per_s > 0 (or give a trace)")
        if spec.trace is not None and spec.conversation_turns > 1:
            raise ValueError("conversations start on Poisson arrivals, not a trace")
        self.spec = spec
        rng = np.random.default_rng(spec.seed)
        r_arr, r_len, r_ids, r_sys, r_think = rng.spawn(5)
        self._len, self._ids, self._think = r_len, r_ids, r_think
        self._prompt, self._output = parse_length(spec.prompt), parse_length(spec.output)
        self._system = [r_sys.integers(0, spec.vocab, size=spec.shared_prefix_tokens).tolist()
                        for _ in range(spec.prefix_prompts)]
        if spec.trace is not None:
            rows = [(t * spec.time_scale, p, o) for t, p, o in read_trace(Path(spec.trace))]
            self._starts = [r for r in rows if r[0] < spec.duration_s]
        else:
            t, self._starts = 0.0, []
            while True:
                t += float(r_arr.exponential(1.0 / spec.rate_per_s))
                if t >= spec.duration_s:
                    break
                self._starts.append((t, 0, 0))
        self._i = 0
        self._turns: list[tuple[float, int, Request]] = []   # (time, order, previous turn)
        self._order = 0
        self._rid = 0
        self.next_s = self._next()

    def _next(self) -> float:
        start = self._starts[self._i][0] if self._i < len(self._starts) else math.inf
        return min(start, self._turns[0][0]) if self._turns else start

    def _tokens(self, n: int) -> list[int]:
        return self._ids.integers(0, self.spec.vocab, size=n).tolist()

    def pop(self) -> Request:
        s = self.spec
        rid, self._rid = self._rid, self._rid + 1
        if self._turns and (self._i >= len(self._starts)
                            or self._turns[0][0] <= self._starts[self._i][0]):
            t, _, prev = heapq.heappop(self._turns)
            conv, turn = prev.conv, prev.turn + 1
            n, out = self._prompt(self._len), self._output(self._len)
            segments = [*prev.segments, (prev.output_key, len(prev.output)),
                        (f"c{conv}.u{turn}", n)]
            prompt = prev.prompt + prev.output + self._tokens(n)
        else:
            t, n, out = self._starts[self._i]
            conv, turn = (self._i if s.conversation_turns > 1 else -1), 0
            self._i += 1
            if s.trace is None:
                n, out = self._prompt(self._len), self._output(self._len)
            segments, prompt = [], []
            if s.shared_prefix_tokens:
                g = int(self._len.integers(0, s.prefix_prompts))
                segments.append((f"s{g}", s.shared_prefix_tokens))
                prompt = list(self._system[g])
            segments.append((f"c{conv}.u0" if conv >= 0 else f"r{rid}.u", n))
            prompt += self._tokens(n)
        key = f"c{conv}.o{turn}" if conv >= 0 else f"r{rid}.o"
        req = Request(rid, t, prompt, out, segments, key, conv, turn)
        self.next_s = self._next()
        return req

    def done(self, req: Request, now_s: float, served: bool = True) -> None:
        """``req`` finished at ``now_s`` (``served``) or was rejected: its conversation
        sends the next turn unless this was its last, or the next falls past the end."""
        s = self.spec
        if served and req.conv >= 0 and req.turn + 1 < s.conversation_turns:
            think = float(self._think.exponential(s.turn_think_s)) if s.turn_think_s else 0.0
            if now_s + think < s.duration_s:
                heapq.heappush(self._turns, (now_s + think, self._order, req))
                self._order += 1
        self.next_s = self._next()
