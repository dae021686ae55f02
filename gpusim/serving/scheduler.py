"""Batching policies: what the next step runs, and the KV blocks it needs.

``ContinuousBatching`` follows vLLM's V1 scheduler: every step, running requests go
first (each decoding request one token, then unfinished prefills in admission order
take chunks of what is left of ``max_num_batched_tokens``), then waiting requests are
admitted first-come first-served while there is budget, a free sequence slot and KV
room for their first chunk (chunked prefill; a head-of-line request that does not fit
blocks the ones behind it). When the running requests' blocks do not fit, the most
recently admitted one is preempted by recompute, and no one is admitted that step.

``StaticBatching`` forms a batch only when the engine is empty: FCFS up to
``max_num_seqs`` requests whose *final* KV fits together, prefills them (in chunks of
the token budget), then decodes them together; no one joins until the batch is done,
and it never preempts. Finished requests leave the batch (their compute stops), so
this is static batching without padding waste.

Both return a ``Batch`` and have taken its KV blocks; the engine runs it.

With prefix caching (a ``PrefixKVCache``) an admitted request starts after its longest
cached prefix: its first chunk runs from there, and the cached blocks that were free
count against the KV room like new ones. With speculative decoding the KV cache holds
``lookahead`` positions beyond every decoding sequence's tokens (the draft tokens a
verify pass writes); the chunk that completes a prefill takes them.
"""

from __future__ import annotations

from gpusim.serving.requests import Request
from gpusim.serving.state import EngineState


class Batch:
    """One step's work: ``decode`` decoding requests holding ``decode_ctx_tokens``
    cached tokens in all, and prefill ``chunks`` of (request, ctx, new tokens)."""

    __slots__ = ("chunks", "decode", "decode_ctx_tokens", "preempted")

    def __init__(self, decode: int, decode_ctx_tokens: int,
                 chunks: list[tuple[Request, int, int]], preempted: int = 0) -> None:
        self.decode = decode
        self.decode_ctx_tokens = decode_ctx_tokens
        self.chunks = chunks
        self.preempted = preempted

    @property
    def tokens(self) -> int:
        return self.decode + sum(n for _, _, n in self.chunks)

    @property
    def empty(self) -> bool:
        return not self.decode and not self.chunks


class _Limits:
    """The two limits every scheduler keeps (vLLM's names); checked where they enter."""

    def __init__(self, max_num_seqs: int, max_num_batched_tokens: int,
                 prefix_caching: bool = False) -> None:
        if max_num_batched_tokens < max_num_seqs:
            raise ValueError(f"max_num_batched_tokens(={max_num_batched_tokens}) must be "
                             f">= max_num_seqs(={max_num_seqs})")
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.prefix_caching = prefix_caching


def held_tokens(req: Request, ctx: int, n: int, lookahead: int) -> int:
    """KV tokens ``req`` holds after a chunk of ``n`` after ``ctx``: the chunk that
    completes its prefill, and leaves it decoding, takes the speculative lookahead."""
    tokens = ctx + n
    if lookahead and tokens == req.known_tokens and req.generated + 1 < req.output_tokens:
        return tokens + lookahead
    return tokens


class ContinuousBatching(_Limits):
    """vLLM-style continuous batching with chunked prefill, FCFS and recompute."""

    name = "continuous"

    def _running_chunks(self, st: EngineState, budget: int
                        ) -> tuple[list[tuple[Request, int, int]], int, int]:
        """Chunks for unfinished prefills; returns (chunks, blocks needed, budget left)."""
        kv = st.kv
        la = kv.lookahead
        need = kv.group_step_blocks()
        chunks: list[tuple[Request, int, int]] = []
        for req in st.prefilling.values():
            if budget <= 0:
                break
            n = req.known_tokens - req.computed
            if n > budget:
                n = budget
            chunks.append((req, req.computed, n))
            need += kv.extra_blocks(req.rid, held_tokens(req, req.computed, n, la))
            budget -= n
        return chunks, need, budget

    def _admit_cached(self, st: EngineState, now_s: float, budget: int,
                      chunks: list[tuple[Request, int, int]]) -> None:
        """FCFS admission with prefix caching: each request starts after its cached
        prefix (``PrefixKVCache``)."""
        kv, waiting, running = st.kv, st.waiting, st.running
        while waiting and budget > 0 and len(running) < self.max_num_seqs:
            req = waiting[0]
            hit, revived = kv.cached_prefix(req)  # type: ignore[union-attr]
            n = min(req.known_tokens - hit, budget)
            if kv.blocks_for(hit + n) - hit // kv.block_size + revived > kv.free_blocks:
                break
            st.admit(req, now_s)
            kv.allocate_prefix(req, hit, hit + n)  # type: ignore[union-attr]
            req.computed = hit
            st.prefix_hit_tokens += hit
            chunks.append((req, hit, n))
            budget -= n

    def schedule(self, st: EngineState, now_s: float) -> Batch:
        """Pick and allocate the next step's work."""
        kv = st.kv
        decode = kv.group_size
        budget = self.max_num_batched_tokens - decode
        if st.prefilling:
            chunks, need, budget = self._running_chunks(st, budget)
        else:
            chunks, need = [], kv.group_step_blocks()
        preempted = 0
        while need > kv.total_blocks - kv.used_blocks:
            st.preempt_newest(now_s)
            preempted += 1
            decode = kv.group_size
            chunks, need, budget = self._running_chunks(
                st, self.max_num_batched_tokens - decode)
        ctx_tokens = kv.group_tokens
        kv.group_step()
        la = kv.lookahead
        for req, ctx, n in chunks:
            kv.set_tokens(req.rid, held_tokens(req, ctx, n, la) if la else ctx + n)
        waiting = st.waiting
        if waiting and not preempted and self.prefix_caching:
            self._admit_cached(st, now_s, budget, chunks)
        elif waiting and not preempted:
            running = st.running
            while waiting and budget > 0 and len(running) < self.max_num_seqs:
                req = waiting[0]
                n = req.known_tokens
                if n > budget:
                    n = budget
                held = held_tokens(req, 0, n, la) if la else n
                if kv.blocks_for(held) > kv.free_blocks:
                    break
                st.admit(req, now_s)
                kv.allocate(req.rid, held)
                chunks.append((req, 0, n))
                budget -= n
        return Batch(decode, ctx_tokens, chunks, preempted)

    def on_caught_up(self, st: EngineState, req: Request) -> None:
        """A prefilled (or recomputed) request starts decoding at once."""
        st.start_decoding(req)


class StaticBatching(_Limits):
    """Static batching: admit a batch when empty, prefill it, decode it to the end."""

    name = "static"

    def schedule(self, st: EngineState, now_s: float) -> Batch:
        kv = st.kv
        if not st.running and st.waiting:
            reserved = 0
            while st.waiting and len(st.running) < self.max_num_seqs:
                req = st.waiting[0]
                need = kv.blocks_for(req.peak_kv_tokens + kv.lookahead)
                if reserved + need > kv.free_blocks:
                    break
                reserved += need
                st.admit(req, now_s)
        if not st.prefilling and st.ready:
            for req in st.ready:
                st.start_decoding(req)
            st.late_joiners = st.ready
            st.ready = []
        budget = self.max_num_batched_tokens
        chunks: list[tuple[Request, int, int]] = []
        for req in st.prefilling.values():
            if budget <= 0:
                break
            n = min(req.known_tokens - req.computed, budget)
            chunks.append((req, req.computed, n))
            budget -= n
        decode = kv.group_size
        ctx_tokens = kv.group_tokens
        kv.group_step()
        la = kv.lookahead
        for req, ctx, n in chunks:
            kv.set_tokens(req.rid, held_tokens(req, ctx, n, la) if la else ctx + n)
        return Batch(decode, ctx_tokens, chunks)

    def on_caught_up(self, st: EngineState, req: Request) -> None:
        """A prefilled request waits for the rest of its batch."""
        st.prefilling.pop(req.rid, None)
        st.ready.append(req)


def make_scheduler(policy: str, max_num_seqs: int, max_num_batched_tokens: int,
                   prefix_caching: bool = False) -> ContinuousBatching | StaticBatching:
    """The scheduler for ``policy`` (continuous | static; prefix caching with the
    continuous one only). Raises ValueError."""
    if policy == "continuous":
        return ContinuousBatching(max_num_seqs, max_num_batched_tokens, prefix_caching)
    if prefix_caching:
        raise ValueError("prefix_caching=True needs the continuous scheduler")
    if policy == "static":
        return StaticBatching(max_num_seqs, max_num_batched_tokens)
    raise ValueError(f"policy={policy!r} must be continuous or static")
