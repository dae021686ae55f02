"""Request sources: arrival processes and length distributions, or a replayed trace.

A source hands the engine requests in time order: ``next_s`` is the next arrival time
(``inf`` when none is pending), ``pop()`` returns ``(arrival_s, prompt_tokens,
output_tokens, user)``, and ``done(user, now_s)`` tells a closed-loop source that a
user's request has left. Randomness comes only from the numpy Generators passed in;
draws are made in blocks, so a source costs O(1) memory whatever the run length.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from typing import Protocol

import numpy as np

from gpusim.serving.scenario import ArrivalSpec, LengthSpec, Scenario
from gpusim.serving.trace import Trace

BLOCK = 1024  # draws per refill


class Source(Protocol):
    next_s: float

    def pop(self) -> tuple[float, int, int, int]: ...

    def done(self, user: int, now_s: float) -> None: ...

    def describe(self) -> dict[str, object]: ...


def _blocks(draw) -> Iterator[float]:
    """Yield values from ``draw(BLOCK)`` refills forever."""
    while True:
        yield from draw(BLOCK).tolist()


def length_sampler(spec: LengthSpec, rng: np.random.Generator) -> Iterator[int]:
    """An endless iterator of token counts drawn from ``spec``."""
    lo, hi = spec.min_tokens, spec.max_tokens
    if spec.dist == "fixed":
        value = int(spec.tokens)  # type: ignore[arg-type]
        while True:
            yield value
    elif spec.dist == "uniform":
        a, b = int(spec.low_tokens), int(spec.high_tokens)  # type: ignore[arg-type]
        yield from _blocks(lambda n: rng.integers(a, b, size=n, endpoint=True))
    elif spec.dist == "lognormal":
        mu, sigma = math.log(spec.median_tokens), float(spec.sigma)  # type: ignore[arg-type]

        def draw(n: int) -> np.ndarray:
            x = np.rint(np.exp(rng.normal(mu, sigma, size=n)))
            return np.clip(x, lo, hi if hi is not None else np.inf).astype(np.int64)

        yield from _blocks(draw)
    else:
        values = np.asarray(spec.values_tokens, dtype=np.int64)
        w = np.asarray(spec.weights if spec.weights is not None else np.ones(len(values)),
                       dtype=np.float64)
        p = w / w.sum()
        yield from _blocks(lambda n: rng.choice(values, size=n, p=p))


def interarrival_sampler(spec: ArrivalSpec, rng: np.random.Generator) -> Iterator[float]:
    """Gaps between open-loop arrivals: exponential (poisson) or gamma with the given CV."""
    rate = float(spec.rate_per_s)  # type: ignore[arg-type]
    if spec.process == "poisson":
        return _blocks(lambda n: rng.exponential(1.0 / rate, size=n))
    if spec.process == "gamma":
        shape = 1.0 / float(spec.cv) ** 2  # type: ignore[operator]
        return _blocks(lambda n: rng.gamma(shape, 1.0 / (rate * shape), size=n))
    raise ValueError(f"process={spec.process!r} is not an open-loop process")


class OpenLoopSource:
    """Arrivals from a renewal process until ``duration_s``, lengths drawn per request."""

    def __init__(self, arrival: ArrivalSpec, prompt: LengthSpec, output: LengthSpec,
                 duration_s: float, rng: np.random.Generator) -> None:
        r_gap, r_prompt, r_output = rng.spawn(3)
        self._spec = arrival
        self._gaps = interarrival_sampler(arrival, r_gap)
        self._prompt = length_sampler(prompt, r_prompt)
        self._output = length_sampler(output, r_output)
        self._duration_s = duration_s
        self._t = 0.0
        self.next_s = 0.0
        self._advance()

    def _advance(self) -> None:
        self._t += next(self._gaps)
        self.next_s = self._t if self._t < self._duration_s else math.inf

    def pop(self) -> tuple[float, int, int, int]:
        t = self.next_s
        self._advance()
        return t, next(self._prompt), next(self._output), -1

    def done(self, user: int, now_s: float) -> None:
        return None

    def describe(self) -> dict[str, object]:
        return {"kind": "open-loop", **self._spec.model_dump(exclude_none=True)}


class ClosedLoopSource:
    """``users`` users: each sends a request, waits for it, thinks, sends the next.

    Users start after an exponential think time each (so they are not in lock-step)
    and stop sending at ``duration_s``.
    """

    def __init__(self, arrival: ArrivalSpec, prompt: LengthSpec, output: LengthSpec,
                 duration_s: float, rng: np.random.Generator) -> None:
        r_think, r_prompt, r_output = rng.spawn(3)
        self._spec = arrival
        mean = float(arrival.think_time_s or 0.0)
        self._think = (_blocks(lambda n: r_think.exponential(mean, size=n)) if mean > 0
                       else iter(lambda: 0.0, None))
        self._prompt = length_sampler(prompt, r_prompt)
        self._output = length_sampler(output, r_output)
        self._duration_s = duration_s
        self._heap: list[tuple[float, int]] = []
        for user in range(int(arrival.users)):  # type: ignore[arg-type]
            self._schedule(user, 0.0)
        self._refresh()

    def _schedule(self, user: int, now_s: float) -> None:
        t = now_s + next(self._think)
        if t < self._duration_s:
            heapq.heappush(self._heap, (t, user))

    def _refresh(self) -> None:
        self.next_s = self._heap[0][0] if self._heap else math.inf

    def pop(self) -> tuple[float, int, int, int]:
        t, user = heapq.heappop(self._heap)
        self._refresh()
        return t, next(self._prompt), next(self._output), user

    def done(self, user: int, now_s: float) -> None:
        self._schedule(user, now_s)
        self._refresh()

    def describe(self) -> dict[str, object]:
        return {"kind": "closed-loop", **self._spec.model_dump(exclude_none=True)}


class TraceSource:
    """Replay of a trace's requests with arrival_s < ``duration_s`` (all if None)."""

    def __init__(self, trace: Trace, duration_s: float | None, time_scale: float = 1.0
                 ) -> None:
        self._trace = trace
        self._arrival = (trace.arrival_s * time_scale).tolist()
        self._prompt = trace.prompt_tokens.tolist()
        self._output = trace.output_tokens.tolist()
        self._end = len(self._arrival)
        if duration_s is not None:
            self._end = int(np.searchsorted(trace.arrival_s * time_scale, duration_s,
                                            side="left"))
        self._time_scale = time_scale
        self._i = 0
        self.next_s = self._arrival[0] if self._end else math.inf

    def pop(self) -> tuple[float, int, int, int]:
        i = self._i
        self._i += 1
        self.next_s = self._arrival[self._i] if self._i < self._end else math.inf
        return self._arrival[i], self._prompt[i], self._output[i], -1

    def done(self, user: int, now_s: float) -> None:
        return None

    @property
    def last_arrival_s(self) -> float:
        return self._arrival[self._end - 1] if self._end else 0.0

    def describe(self) -> dict[str, object]:
        return {"kind": "trace", "path": self._trace.source, "requests": self._end,
                "time_scale": self._time_scale}


def build_source(scenario: Scenario, rng: np.random.Generator, trace: Trace | None = None
                 ) -> Source:
    """The request source a scenario describes (``trace``: its trace, read by the
    caller: ``gpusim.io.trace.read_trace``), with its shared system prompts or
    conversations (``gpusim.serving.conversation``). Raises ValueError when the scenario
    names a trace and none is given."""
    # conversation's sources are built on this module's samplers: imported here
    from gpusim.serving.conversation import ConversationSource, PrefixedSource

    source: Source
    if scenario.trace is not None:
        if trace is None:
            raise ValueError(f"trace={scenario.trace.path!r}: the scenario replays a trace; "
                             "read it (gpusim.io.trace.read_trace) and pass it")
        source = TraceSource(trace, scenario.duration_s, scenario.trace.time_scale)
    elif scenario.arrival is None or scenario.prompt is None or scenario.output is None:
        raise ValueError("scenario has neither a trace nor arrival, prompt and output")
    elif scenario.conversation is not None:
        return ConversationSource(scenario.arrival, scenario.prompt, scenario.output,
                                  scenario.conversation, scenario.prefix,
                                  float(scenario.duration_s), rng)  # type: ignore[arg-type]
    elif scenario.arrival.process == "closed":
        source = ClosedLoopSource(scenario.arrival, scenario.prompt, scenario.output,
                                  float(scenario.duration_s), rng)  # type: ignore[arg-type]
    else:
        source = OpenLoopSource(scenario.arrival, scenario.prompt, scenario.output,
                                float(scenario.duration_s), rng)  # type: ignore[arg-type]
    if scenario.prefix is not None:
        source = PrefixedSource(source, scenario.prefix, rng.spawn(1)[0])
    return source
