"""One request's life in the serving engine (a mutable record with ``__slots__``).

Token bookkeeping: a request knows ``prompt_tokens + generated`` tokens; ``computed``
of them have their K and V in the cache. A step processes new tokens; when computed
catches up with known, the step's last position yields the next token. So a decoding
request processes one token per step, and a request preempted by recompute starts
again from ``computed = 0`` with its generated tokens kept.

Content: by default a request's prompt and answer are its own (no other request shares
them); a workload with shared system prompts or
conversations gives the prompt's pieces (``gpusim.serving.conversation``).
"""

from __future__ import annotations

import math


class Request:
    """A request from arrival to completion; times in simulated seconds."""

    __slots__ = ("arrival_s", "computed", "finish_tick", "first_token_s", "generated",
                 "hashes", "last_token_s", "output_key", "output_tokens", "preemptions",
                 "prompt_tokens", "rid", "segments", "service_start_s", "user")

    def __init__(self, rid: int, arrival_s: float, prompt_tokens: int, output_tokens: int,
                 user: int = -1) -> None:
        self.rid = rid
        self.arrival_s = arrival_s
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.user = user
        self.generated = 0
        self.computed = 0
        self.finish_tick = -1
        self.first_token_s = math.nan
        self.last_token_s = math.nan
        self.service_start_s = math.nan
        self.preemptions = 0
        # content, for prefix caching: the prompt as (segment key, tokens) pieces (a
        # key names the same tokens wherever it appears; None: a prompt of its own),
        # the answer's key, and the hashes of the full KV blocks worked out so far
        # (gpusim.serving.prefix_cache)
        self.segments: tuple[tuple[int, int], ...] | None = None
        self.output_key = -2 - 2 * rid
        self.hashes: list[int] | None = None

    @property
    def known_tokens(self) -> int:
        """Prompt plus the tokens generated so far."""
        return self.prompt_tokens + self.generated

    @property
    def peak_kv_tokens(self) -> int:
        """KV tokens held at the end (the last token is sampled, never cached)."""
        return self.prompt_tokens + self.output_tokens - 1

    def __repr__(self) -> str:
        return (f"Request(rid={self.rid}, arrival_s={self.arrival_s:.6g}, "
                f"prompt={self.prompt_tokens}, output={self.output_tokens}, "
                f"generated={self.generated}, computed={self.computed})")
