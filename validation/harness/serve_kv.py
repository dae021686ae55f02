"""The serving engine's paged KV cache bookkeeping (host side): blocks, block tables,
automatic prefix caching, as vLLM's V1 KV cache manager does it.

The KV tensors themselves are the model runner's (serve_model.py): ``num_blocks``
blocks of ``block_size`` token slots; a sequence's block table lists its blocks in
order, so token position p of a sequence lives in slot
``table[p // block_size] * block_size + p % block_size``.

Blocks carry reference counts. A block no one references is free: it sits in the free
queue, taken least recently freed first (a sequence frees its blocks last block first,
so its tail goes before its head). With prefix caching a full block is hashed when its
last token is scheduled: the hash chains the previous block's hash and the block's
token ids, so equal hashes mean equal prefixes; a free hashed block stays findable
until it is taken for other tokens (evicted). An admitted sequence takes its longest
cached prefix of full blocks (at least one token is always computed: the last position
must produce logits), out of the free queue where no one held them.

gpusim's model of the same thing is gpusim/serving/prefix_cache.py (segments there
stand for token ids here). Needs only the standard library.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol


class Seq(Protocol):
    """What the block manager needs of a sequence."""

    rid: int
    block_table: list[int]
    block_hashes: list[int]
    hashed_blocks: int

    def token_ids(self) -> list[int]: ...


class BlockManager:
    """Block accounting for the engine's sequences. Misuse (allocating past capacity,
    freeing twice) raises RuntimeError: the scheduler checks ``free_blocks`` first."""

    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_blocks={num_blocks} and block_size={block_size} must be "
                             ">= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._ref = [0] * num_blocks
        self._hash_of: list[int | None] = [None] * num_blocks
        self._by_hash: dict[int, dict[int, None]] = {}
        self.lookups = 0
        self.query_tokens = 0
        self.hit_tokens = 0
        self.evicted_blocks = 0
        self.cached_free_blocks = 0

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    @property
    def used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def need(self, seq: Seq, tokens: int) -> int:
        """Blocks ``seq`` must take to hold ``tokens`` tokens."""
        return max(0, self.blocks_for(tokens) - len(seq.block_table))

    def _hashes(self, seq: Seq, n: int) -> list[int]:
        hs = seq.block_hashes
        if len(hs) < n:
            ids = seq.token_ids()
            bs = self.block_size
            prev = hs[-1] if hs else 0
            for j in range(len(hs), n):
                prev = hash((prev, *ids[j * bs:(j + 1) * bs]))  # ints: same in every run
                hs.append(prev)
        return hs

    def cached_prefix(self, seq: Seq, known_tokens: int) -> tuple[int, int]:
        """(tokens of ``seq``'s longest cached prefix of full blocks, how many of those
        blocks are free now). Changes nothing; (0, 0) without prefix caching."""
        if not self.prefix_caching:
            return 0, 0
        most = (known_tokens - 1) // self.block_size
        hits = revived = 0
        for h in self._hashes(seq, most)[:most]:
            holders = self._by_hash.get(h)
            if not holders:
                break
            hits += 1
            revived += self._ref[next(iter(holders))] == 0
        return hits * self.block_size, revived

    def _take(self) -> int:
        if not self._free:
            raise RuntimeError("KV cache over capacity")
        b, _ = self._free.popitem(last=False)
        h = self._hash_of[b]
        if h is not None:
            self.cached_free_blocks -= 1
            self.evicted_blocks += 1
            holders = self._by_hash[h]
            del holders[b]
            if not holders:
                del self._by_hash[h]
            self._hash_of[b] = None
        self._ref[b] = 1
        return b

    def admit(self, seq: Seq, hit_tokens: int, known_tokens: int) -> None:
        """A new sequence: its first ``hit_tokens`` (``cached_prefix``) on cached blocks."""
        if seq.block_table:
            raise RuntimeError(f"request {seq.rid} already holds blocks")
        n = hit_tokens // self.block_size
        for h in self._hashes(seq, n)[:n]:
            b = next(iter(self._by_hash[h]))
            if self._ref[b] == 0:
                del self._free[b]
                self.cached_free_blocks -= 1
            self._ref[b] += 1
            seq.block_table.append(b)
        seq.hashed_blocks = n
        if self.prefix_caching:
            self.lookups += 1
            self.query_tokens += known_tokens
            self.hit_tokens += hit_tokens

    def grow(self, seq: Seq, tokens: int) -> None:
        """``seq`` holds ``tokens`` tokens' slots (their KV is written in this step);
        with prefix caching, the blocks they fill are hashed."""
        need = self.need(seq, tokens)
        if need > len(self._free):
            raise RuntimeError(f"KV cache over capacity: request {seq.rid} needs {need}")
        for _ in range(need):
            seq.block_table.append(self._take())
        if not self.prefix_caching:
            return
        full = tokens // self.block_size
        if full > seq.hashed_blocks:
            hs = self._hashes(seq, full)
            for j in range(seq.hashed_blocks, full):
                b = seq.block_table[j]
                if self._hash_of[b] is None:
                    self._hash_of[b] = hs[j]
                    self._by_hash.setdefault(hs[j], {})[b] = None
            seq.hashed_blocks = full

    def free(self, seq: Seq) -> None:
        """``seq`` finished or was preempted: its blocks lose a reference, last first."""
        for b in reversed(seq.block_table):
            if self._ref[b] < 1:
                raise RuntimeError(f"block {b} freed twice")
            self._ref[b] -= 1
            if self._ref[b] == 0:
                self._free[b] = None
                if self._hash_of[b] is not None:
                    self.cached_free_blocks += 1
        seq.block_table = []
        seq.hashed_blocks = 0

    def check(self, seqs: list[Seq]) -> None:
        """Recount references from the sequences' tables; raises RuntimeError."""
        ref = [0] * self.num_blocks
        for s in seqs:
            for b in s.block_table:
                ref[b] += 1
        if ref != self._ref or any((r == 0) != (b in self._free) for b, r in enumerate(ref)):
            raise RuntimeError("KV block reference counts out of date")

    def stats(self) -> dict[str, float | int]:
        """Prefix-cache figures: one lookup per admission, hit rate = hit / query tokens."""
        return {"lookups": self.lookups, "query_tokens": self.query_tokens,
                "hit_tokens": self.hit_tokens,
                "hit_rate": self.hit_tokens / self.query_tokens if self.query_tokens else 0.0,
                "evicted_blocks": self.evicted_blocks,
                "cached_free_blocks": self.cached_free_blocks}
