"""Automatic prefix caching: a paged KV cache whose full blocks are found again by
their content, as vLLM's (V1) KV cache manager does.

A full block's hash chains the previous block's hash and the block's tokens, so equal
hashes mean equal prefixes. Tokens are named by segments: a request's prompt is a list
of (key, tokens) pieces (a key names the same tokens wherever it appears: a system
prompt, an earlier turn of a conversation), followed by its answer (``output_key``);
a block's content is the pieces of segments it covers, with their offsets.

Blocks carry reference counts. A block no one references is free: it sits in the free
queue (taken least recently freed first; a finished request's blocks are freed last
block first, so its tail goes before its head) and, if it was hashed, stays findable
until it is taken for other tokens (evicted). An admitted request takes its longest
cached prefix of full blocks (at least one token is always computed, as in vLLM: the
last position must produce logits), out of the free queue where no one held them, and
computes the rest. A block is hashed when its last token is scheduled (the step that
writes it), in prefill chunks and decode steps alike, so later steps find it.

The interface is ``PagedKVCache``'s (the scheduler and the engine state use either);
``used_blocks`` counts referenced blocks, so cached free blocks are free memory. The
decoding group grows one token per member per ``group_step``: the members that need a
new block, or fill one, are those of one residue of their base modulo the block size,
so a step touches about 2 / block_size of the group.
"""

from __future__ import annotations

from collections import OrderedDict

from gpusim.serving.invariants import InvariantError
from gpusim.serving.requests import Request


def block_hashes(req: Request, n_blocks: int, block_size: int) -> list[int]:
    """The hashes of ``req``'s first ``n_blocks`` full blocks (cached on the request;
    its content must cover them)."""
    hs = req.hashes
    if hs is None:
        hs = req.hashes = []
    if len(hs) >= n_blocks:
        return hs
    segs = req.segments or ((-1 - 2 * req.rid, req.prompt_tokens),)
    segs = (*segs, (req.output_key, req.output_tokens))
    pos = len(hs) * block_size
    i = 0
    while pos >= segs[i][1]:   # the segment holding position ``pos``, and the offset
        pos -= segs[i][1]
        i += 1
    off = pos
    prev = hs[-1] if hs else 0
    while len(hs) < n_blocks:
        pieces: list[int] = [prev]
        left = block_size
        while left:
            key, n = segs[i]
            take = min(n - off, left)
            pieces += (key, off, take)
            left -= take
            off += take
            if off == n:
                i += 1
                off = 0
        prev = hash(tuple(pieces))  # ints only: the same in every process
        hs.append(prev)
    return hs


class PrefixKVCache:
    """Block accounting with content hashes, reference counts and an LRU free queue.

    Misuse (unknown or duplicate sequence, shrinking, allocating past capacity) raises
    InvariantError: the scheduler must check ``free_blocks`` first.
    """

    lookahead = 0   # speculative lookahead is not modelled with prefix caching

    def __init__(self, total_blocks: int, block_size: int) -> None:
        if total_blocks < 1 or block_size < 1:
            raise ValueError(f"total_blocks(={total_blocks}) and block_size(={block_size}) "
                             "must be >= 1")
        self.total_blocks = total_blocks
        self.block_size = block_size
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(total_blocks))
        self._ref = [0] * total_blocks
        self._hash_of: list[int | None] = [None] * total_blocks
        self._by_hash: dict[int, dict[int, None]] = {}     # hash -> blocks holding it
        self._table: dict[int, list[int]] = {}             # seq -> its blocks
        self._req: dict[int, Request] = {}
        self._hashed: dict[int, int] = {}                  # seq -> its blocks hashed
        self._explicit: dict[int, int] = {}                # seq -> tokens
        self._group: dict[int, int] = {}                   # seq -> base (tokens - ticks)
        self._by_residue: list[dict[int, None]] = [{} for _ in range(block_size)]
        self._group_base_sum = 0
        self.ticks = 0
        # what a run reports: lookups at admission, their tokens and hits; blocks
        # evicted from the cache; hashed blocks kept free (now and at most)
        self.lookups = 0
        self.query_tokens = 0
        self.hit_tokens = 0
        self.evicted_blocks = 0
        self.cached_free_blocks = 0
        self.peak_cached_free_blocks = 0

    # --- queries ---------------------------------------------------------------------
    @property
    def used_blocks(self) -> int:
        return self.total_blocks - len(self._free)

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def __contains__(self, seq: int) -> bool:
        return seq in self._table

    def tokens(self, seq: int) -> int:
        if seq in self._explicit:
            return self._explicit[seq]
        if seq in self._group:
            return self._group[seq] + self.ticks
        raise InvariantError(f"KV cache: unknown sequence {seq}")

    def blocks(self, seq: int) -> int:
        return len(self._table[seq])

    def in_group(self, seq: int) -> bool:
        return seq in self._group

    @property
    def group_size(self) -> int:
        return len(self._group)

    @property
    def group_tokens(self) -> int:
        return self._group_base_sum + self.ticks * len(self._group)

    def group_longest_tokens(self) -> int:
        """Tokens of the decoding group's longest member (0: an empty group);
        O(group size), for step models that pad to the longest."""
        return max(self._group.values()) + self.ticks if self._group else 0

    def group_members(self) -> list[int]:
        return list(self._group)

    def group_step_blocks(self) -> int:
        return len(self._by_residue[-self.ticks % self.block_size])

    def extra_blocks(self, seq: int, tokens: int) -> int:
        table = self._table.get(seq)
        return self.blocks_for(tokens) - (len(table) if table is not None else 0)

    def cached_prefix(self, req: Request) -> tuple[int, int]:
        """(tokens of ``req``'s longest cached prefix of full blocks, how many of those
        blocks are free now, so admitting it takes them from the free queue). Changes
        nothing."""
        most = (req.known_tokens - 1) // self.block_size
        hits = revived = 0
        for h in block_hashes(req, most, self.block_size)[:most]:
            holders = self._by_hash.get(h)
            if not holders:
                break
            hits += 1
            revived += self._ref[next(iter(holders))] == 0
        return hits * self.block_size, revived

    # --- changes ---------------------------------------------------------------------
    def _take(self) -> int:
        if not self._free:
            raise InvariantError(f"KV cache over capacity: all {self.total_blocks} blocks "
                                 "referenced")
        b, _ = self._free.popitem(last=False)
        h = self._hash_of[b]
        if h is not None:  # evict: the block's old content can no longer be found
            self.cached_free_blocks -= 1
            self.evicted_blocks += 1
            holders = self._by_hash[h]
            del holders[b]
            if not holders:
                del self._by_hash[h]
            self._hash_of[b] = None
        self._ref[b] = 1
        return b

    def _register(self, seq: int, tokens: int) -> None:
        """Hash ``seq``'s full blocks up to ``tokens`` that are not hashed yet."""
        full = tokens // self.block_size
        start = self._hashed[seq]
        if full <= start:
            return
        table = self._table[seq]
        hs = block_hashes(self._req[seq], full, self.block_size)
        for j in range(start, full):
            b = table[j]
            if self._hash_of[b] is None:
                self._hash_of[b] = hs[j]
                self._by_hash.setdefault(hs[j], {})[b] = None
        self._hashed[seq] = full

    def allocate_prefix(self, req: Request, hit_tokens: int, tokens: int) -> None:
        """A new explicit sequence for ``req``: its first ``hit_tokens`` (from
        ``cached_prefix``) on the cached blocks, blocks for the rest up to ``tokens``."""
        seq = req.rid
        if seq in self._table:
            raise InvariantError(f"KV cache: sequence {seq} is already allocated")
        table: list[int] = []
        for h in block_hashes(req, hit_tokens // self.block_size,
                              self.block_size)[:hit_tokens // self.block_size]:
            b = next(iter(self._by_hash[h]))
            if self._ref[b] == 0:
                del self._free[b]
                self.cached_free_blocks -= 1
            self._ref[b] += 1
            table.append(b)
        self._table[seq] = table
        self._req[seq] = req
        self._hashed[seq] = len(table)
        self._explicit[seq] = hit_tokens
        self.lookups += 1
        self.query_tokens += req.known_tokens
        self.hit_tokens += hit_tokens
        self.set_tokens(seq, tokens)

    def allocate(self, seq: int, tokens: int) -> None:
        raise InvariantError("KV cache with prefix caching: allocate with allocate_prefix")

    def set_tokens(self, seq: int, tokens: int) -> None:
        """Grow explicit ``seq`` to ``tokens`` tokens, hashing the blocks it fills."""
        if seq not in self._explicit:
            raise InvariantError(f"KV cache: sequence {seq} is not explicit")
        if tokens < self._explicit[seq]:
            raise InvariantError(f"KV cache: sequence {seq} cannot shrink")
        table = self._table[seq]
        need = self.blocks_for(tokens) - len(table)
        if need > len(self._free):
            raise InvariantError(f"KV cache over capacity: sequence {seq} needs {need} "
                                 f"blocks, {len(self._free)} free")
        for _ in range(need):
            table.append(self._take())
        self._explicit[seq] = tokens
        self._register(seq, tokens)

    def join_group(self, seq: int) -> None:
        if seq not in self._explicit:
            raise InvariantError(f"KV cache: sequence {seq} is not explicit")
        base = self._explicit.pop(seq) - self.ticks
        self._group[seq] = base
        self._by_residue[base % self.block_size][seq] = None
        self._group_base_sum += base

    def group_step(self) -> int:
        """Every group member gains one token: those whose blocks are full take one,
        and those that fill a block hash it. Returns the blocks taken."""
        bs = self.block_size
        movers = self._by_residue[-self.ticks % bs]
        if len(movers) > len(self._free):
            raise InvariantError(f"KV cache over capacity: decode step needs {len(movers)} "
                                 f"blocks, {len(self._free)} free")
        for seq in movers:
            self._table[seq].append(self._take())
        self.ticks += 1
        for seq in self._by_residue[-self.ticks % bs]:
            self._register(seq, self._group[seq] + self.ticks)
        return len(movers)

    def group_advance(self, seq: int, extra: int) -> int:
        raise InvariantError("speculative decoding is not modelled with prefix caching")

    def free(self, seq: int) -> int:
        """Release ``seq``: its blocks lose a reference, last block first; returns how
        many became free (hashed ones stay findable until evicted)."""
        if seq in self._explicit:
            del self._explicit[seq]
        elif seq in self._group:
            base = self._group.pop(seq)
            del self._by_residue[base % self.block_size][seq]
            self._group_base_sum -= base
        else:
            raise InvariantError(f"KV cache: cannot free unknown sequence {seq}")
        table = self._table.pop(seq)
        del self._req[seq], self._hashed[seq]
        freed = 0
        for b in reversed(table):
            self._ref[b] -= 1
            if self._ref[b] == 0:
                self._free[b] = None
                freed += 1
                if self._hash_of[b] is not None:
                    self.cached_free_blocks += 1
        if self.cached_free_blocks > self.peak_cached_free_blocks:
            self.peak_cached_free_blocks = self.cached_free_blocks
        return freed

    def describe(self) -> dict[str, float | int]:
        """The run's prefix-cache figures (hit rate: hit tokens over looked-up tokens,
        one lookup per admission, as vLLM counts them)."""
        return {"lookups": self.lookups, "query_tokens": self.query_tokens,
                "hit_tokens": self.hit_tokens,
                "hit_rate": self.hit_tokens / self.query_tokens if self.query_tokens else 0.0,
                "evicted_blocks": self.evicted_blocks,
                "cached_free_blocks_at_end": self.cached_free_blocks,
                "peak_cached_free_blocks": self.peak_cached_free_blocks}

    def check(self) -> None:
        """Recount everything (O(blocks)); raise InvariantError on any mismatch."""
        ref = [0] * self.total_blocks
        for seq, table in self._table.items():
            if len(table) != self.blocks_for(self.tokens(seq)):
                raise InvariantError(f"KV cache: sequence {seq} holds {len(table)} blocks "
                                     f"for {self.tokens(seq)} tokens")
            for b in table:
                ref[b] += 1
        if ref != self._ref:
            raise InvariantError("KV cache: reference counts out of date")
        if any((r == 0) != (b in self._free) for b, r in enumerate(ref)):
            raise InvariantError("KV cache: free queue and reference counts disagree")
        cached = sum(1 for b in self._free if self._hash_of[b] is not None)
        holders = sum(len(v) for v in self._by_hash.values())
        if (cached != self.cached_free_blocks
                or holders != sum(h is not None for h in self._hash_of)):
            raise InvariantError("KV cache: hash tables out of date")
        if set(self._explicit) & set(self._group) or (
                set(self._explicit) | set(self._group)) != set(self._table):
            raise InvariantError("KV cache: sequences out of date")
        if sum(self._group.values()) != self._group_base_sum:
            raise InvariantError("KV cache: decoding-group tables out of date")
