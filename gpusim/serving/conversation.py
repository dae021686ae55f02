"""Workloads whose prompts share content: system prompts in front of every prompt, and
multi-turn conversations whose turns repeat the conversation so far.

Both are request sources (``workload.Source``) that also name each prompt's content,
for the prefix cache to hash (``gpusim.serving.prefix_cache``): after ``pop()``,
``segments`` lists the prompt as (key, tokens) pieces and ``output_key`` names the
answer. System prompt g is key g (0 <= g < prompts); every user message and answer
takes the next key of a counter that starts after them, so keys never collide.
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from gpusim.serving.scenario import (
    ArrivalSpec,
    ConversationSpec,
    LengthSpec,
    PrefixSpec,
)
from gpusim.serving.workload import Source, _blocks, interarrival_sampler, length_sampler


def _picker(prefix: PrefixSpec | None, rng: np.random.Generator):
    """Endless system-prompt picks (uniform over ``prefix.prompts``)."""
    if prefix is None or prefix.prompts == 1:
        return iter(lambda: 0, None)
    return _blocks(lambda n: rng.integers(0, prefix.prompts, size=n))


class PrefixedSource:
    """Another source's requests, each behind one of the shared system prompts: its
    prompt is the system prompt's ``shared_tokens`` plus the tokens the source gave."""

    def __init__(self, inner: Source, prefix: PrefixSpec, rng: np.random.Generator) -> None:
        self._inner = inner
        self._prefix = prefix
        self._pick = _picker(prefix, rng)
        self._next_key = prefix.prompts
        self.next_s = inner.next_s
        self.segments: tuple[tuple[int, int], ...] = ()
        self.output_key = -1

    def pop(self) -> tuple[float, int, int, int]:
        t, prompt, output, user = self._inner.pop()
        self.next_s = self._inner.next_s
        shared = self._prefix.shared_tokens
        self.segments = ((int(next(self._pick)), shared), (self._next_key, prompt))
        self.output_key = self._next_key + 1
        self._next_key += 2
        return t, shared + prompt, output, user

    def done(self, user: int, now_s: float) -> None:
        self._inner.done(user, now_s)
        self.next_s = self._inner.next_s

    @property
    def last_arrival_s(self) -> float:
        return float(getattr(self._inner, "last_arrival_s", 0.0))

    def describe(self) -> dict[str, object]:
        return {**self._inner.describe(), "prefix": self._prefix.model_dump()}


class _Conversation:
    __slots__ = ("history", "output_key", "output_tokens", "sent_s", "turns")

    def __init__(self, history: tuple[tuple[int, int], ...]) -> None:
        self.history = history
        self.turns = 0
        self.output_key = -1
        self.output_tokens = 0
        self.sent_s = 0.0


class ConversationSource:
    """Conversations started by an open-loop arrival process until ``duration_s``; a
    conversation's next turn is sent ``think_time_s`` (mean, exponential) after its
    answer's last token, unless that is past ``duration_s`` or the turns are done. A
    turn that is rejected (``done`` at its own arrival time) ends its conversation. The
    user of a request is its conversation's number."""

    def __init__(self, arrival: ArrivalSpec, prompt: LengthSpec, output: LengthSpec,
                 conversation: ConversationSpec, prefix: PrefixSpec | None,
                 duration_s: float, rng: np.random.Generator) -> None:
        r_gap, r_prompt, r_output, r_think, r_pick = rng.spawn(5)
        self._arrival, self._spec, self._prefix = arrival, conversation, prefix
        self._gaps = interarrival_sampler(arrival, r_gap)
        self._prompt = length_sampler(prompt, r_prompt)
        self._output = length_sampler(output, r_output)
        mean = conversation.think_time_s
        self._think = (_blocks(lambda n: r_think.exponential(mean, size=n)) if mean > 0
                       else iter(lambda: 0.0, None))
        self._pick = _picker(prefix, r_pick)
        self._next_key = prefix.prompts if prefix is not None else 0
        self._duration_s = duration_s
        self._heap: list[tuple[float, int]] = []     # (next turn's time, conversation)
        self._live: dict[int, _Conversation] = {}
        self._started = 0
        self._start_s = next(self._gaps)
        self.segments: tuple[tuple[int, int], ...] = ()
        self.output_key = -1
        self._refresh()

    def _refresh(self) -> None:
        start = self._start_s if self._start_s < self._duration_s else math.inf
        self.next_s = min(start, self._heap[0][0]) if self._heap else start

    def pop(self) -> tuple[float, int, int, int]:
        if self._heap and self._heap[0][0] <= self._start_s:
            t, conv = heapq.heappop(self._heap)
            c = self._live[conv]
        else:
            t, conv = self._start_s, self._started
            self._started += 1
            self._start_s += next(self._gaps)
            history = ((int(next(self._pick)), self._prefix.shared_tokens),) if (
                self._prefix is not None) else ()
            c = self._live[conv] = _Conversation(history)
        message = next(self._prompt)
        self.segments = (*c.history, (self._next_key, message))
        self.output_key = c.output_key = self._next_key + 1
        self._next_key += 2
        c.output_tokens = next(self._output)
        c.turns += 1
        c.sent_s = t
        c.history = self.segments
        self._refresh()
        return t, sum(n for _, n in self.segments), c.output_tokens, conv

    def done(self, user: int, now_s: float) -> None:
        c = self._live[user]
        t = now_s + next(self._think)
        if now_s <= c.sent_s or c.turns >= self._spec.turns or t >= self._duration_s:
            del self._live[user]
        else:
            c.history = (*c.history, (c.output_key, c.output_tokens))
            heapq.heappush(self._heap, (t, user))
        self._refresh()

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {"kind": "conversations",
                                  **self._arrival.model_dump(exclude_none=True),
                                  "conversation": self._spec.model_dump()}
        if self._prefix is not None:
            out["prefix"] = self._prefix.model_dump()
        return out


class ListedSource:
    """Requests given in full, in arrival order: a measured run's, replayed as they came.

    ``rows``: (arrival_s, prompt_tokens, output_tokens, segments, output_key), the
    segments' tokens summing to prompt_tokens. ``name`` says where they came from.
    Raises ValueError for rows out of time order or segments that do not add up.
    """

    def __init__(self, rows: list[tuple[float, int, int, tuple[tuple[int, int], ...], int]],
                 name: str) -> None:
        prev = -math.inf
        for i, (t, prompt, _, segments, _) in enumerate(rows):
            if t < prev or sum(n for _, n in segments) != prompt:
                raise ValueError(f"rows[{i}]: out of time order, or segments that do not "
                                 f"add up to its {prompt} prompt tokens")
            prev = t
        self._rows = rows
        self._name = name
        self._i = 0
        self.next_s = rows[0][0] if rows else math.inf
        self.segments: tuple[tuple[int, int], ...] = ()
        self.output_key = -1

    def pop(self) -> tuple[float, int, int, int]:
        t, prompt, output, self.segments, self.output_key = self._rows[self._i]
        self._i += 1
        self.next_s = self._rows[self._i][0] if self._i < len(self._rows) else math.inf
        return t, prompt, output, -1

    def done(self, user: int, now_s: float) -> None:
        return None

    @property
    def last_arrival_s(self) -> float:
        return self._rows[-1][0] if self._rows else 0.0

    def describe(self) -> dict[str, object]:
        return {"kind": "replay", "source": self._name, "requests": len(self._rows)}
