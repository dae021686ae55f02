"""The serving engine's mutable state: queues, the KV cache, who is decoding.

``running`` holds admitted requests in admission order (a dict, so the most recent
one pops in O(1) for preemption). Of those, ``prefilling`` are still catching up
(explicit in the KV cache, processed in chunks); the rest decode together as the KV
cache's decoding group, one token per step each, and finish at a known step (tick),
kept in ``finish_heap``.
"""

from __future__ import annotations

import heapq
from collections import deque

from gpusim.serving.kv_cache import PagedKVCache
from gpusim.serving.prefix_cache import PrefixKVCache
from gpusim.serving.requests import Request


class EngineState:
    """Queues and KV cache of one serving engine."""

    def __init__(self, kv: PagedKVCache | PrefixKVCache) -> None:
        self.kv = kv
        self.waiting: deque[Request] = deque()
        self.running: dict[int, Request] = {}
        self.prefilling: dict[int, Request] = {}
        self.ready: list[Request] = []          # static batching: prefilled, held back
        self.late_joiners: list[Request] = []   # joined decoding after their last token
        self.finish_heap: list[tuple[int, int]] = []
        self.lost_tokens = 0                    # KV work thrown away by preemption
        self.prefix_hit_tokens = 0              # KV work found in the prefix cache
        self.preemptions = 0

    @property
    def idle(self) -> bool:
        return not self.running and not self.waiting

    def admit(self, req: Request, now_s: float) -> None:
        """Move the head of ``waiting`` (``req``) into running, as a prefilling request."""
        self.waiting.popleft()
        self.running[req.rid] = req
        self.prefilling[req.rid] = req
        if req.service_start_s != req.service_start_s:  # NaN: first admission
            req.service_start_s = now_s

    def start_decoding(self, req: Request) -> None:
        """A request that has caught up joins the decoding group: it gains a token at
        every step and finishes after ``output_tokens - generated`` more steps."""
        self.prefilling.pop(req.rid, None)
        self.kv.join_group(req.rid)
        req.finish_tick = self.kv.ticks + req.output_tokens - req.generated
        heapq.heappush(self.finish_heap, (req.finish_tick, req.rid))

    def preempt_newest(self, now_s: float) -> Request:
        """Preempt by recompute the most recently admitted running request: free its
        KV, keep its generated tokens, put it at the head of the waiting queue."""
        rid, req = self.running.popitem()
        kv = self.kv
        if kv.in_group(rid):
            # a decoding request emitted its last token when the previous step ended
            req.generated = req.output_tokens - (req.finish_tick - kv.ticks)
            req.computed = kv.tokens(rid)
            req.last_token_s = now_s
            req.finish_tick = -1
        else:
            self.prefilling.pop(rid, None)
        self.lost_tokens += req.computed
        kv.free(rid)
        req.computed = 0
        req.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(req)
        return req

    def remove(self, req: Request) -> None:
        """A finished request leaves: its KV blocks are freed."""
        del self.running[req.rid]
        self.prefilling.pop(req.rid, None)
        self.kv.free(req.rid)
