"""Paged KV cache: how many blocks the GPU holds, and who holds them.

Capacity (``kv_budget``): what the memory planner (``gpusim.capacity``) leaves for
the KV cache next to the weights and a runtime reserve (default 10% of HBM, as vLLM's
``gpu_memory_utilization=0.9``), divided into blocks of ``block_size`` tokens.

``PagedKVCache`` counts blocks per sequence. Sequences are either *explicit* (their
token count is set by the caller: prefill chunks) or members of the *decoding group*,
which grows by one token per sequence per ``group_step()`` in O(1): a member's tokens
are ``base + ticks``, and the members that need a new block at a tick are those with
``base % block_size`` equal to one residue, counted in a table. So a decode step of any
batch size costs O(1) here, which is what makes hour-long runs fast.

Speculative decoding: ``lookahead`` > 0 makes every decoding sequence hold KV for that
many positions beyond its tokens (the draft tokens a verify pass writes, accepted or
not, as vLLM allocates lookahead slots). The group's stored bases include it;
``tokens`` and ``group_tokens`` report the tokens themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpusim.capacity import DEFAULT_RESERVE_FRACTION, memory_plan
from gpusim.errors import bad
from gpusim.serving.invariants import InvariantError
from gpusim.specs import GpuSpec, ModelSpec

DEFAULT_BLOCK_SIZE_TOKENS = 16


@dataclass(frozen=True)
class KvBudget:
    """The KV cache's size and how it was derived (bytes and tokens)."""

    hbm_capacity_bytes: float
    weight_bytes: float
    reserve_bytes: float
    reserve_fraction: float
    kv_capacity_bytes: float
    kv_bytes_per_token: float
    block_size_tokens: int
    total_blocks: int

    @property
    def capacity_tokens(self) -> int:
        return self.total_blocks * self.block_size_tokens

    def as_dict(self) -> dict[str, float | int]:
        return {
            "hbm_capacity_bytes": self.hbm_capacity_bytes,
            "weight_bytes": self.weight_bytes,
            "reserve_bytes": self.reserve_bytes,
            "reserve_fraction": self.reserve_fraction,
            "kv_capacity_bytes": self.kv_capacity_bytes,
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "block_size_tokens": self.block_size_tokens,
            "total_blocks": self.total_blocks,
            "capacity_tokens": self.capacity_tokens,
        }


def kv_budget(gpu: GpuSpec, model: ModelSpec,
              block_size_tokens: int = DEFAULT_BLOCK_SIZE_TOKENS,
              reserve_fraction: float = DEFAULT_RESERVE_FRACTION,
              extra_weight_bytes: float = 0.0,
              extra_kv_bytes_per_token: float = 0.0, tp: int = 1, pp: int = 1) -> KvBudget:
    """Blocks of KV cache that fit next to the weights (``capacity.memory_plan``; on
    ``tp`` x ``pp`` GPUs, the fullest GPU's).

    ``extra_weight_bytes`` and ``extra_kv_bytes_per_token`` count a speculative
    draft's weights and KV cache (each cached token is held by target and draft).

    Raises ConfigError (fields ``block_size_tokens``, ``reserve_fraction``, ``model``)
    for a bad block size or reserve, and when the weights plus the reserve leave no
    room for one block (the message gives weights, KV per token and capacity).
    """
    if not isinstance(block_size_tokens, int) or not 1 <= block_size_tokens <= 4096:
        raise bad("", "must be an integer in [1, 4096]", field="block_size_tokens",
                  value=block_size_tokens)
    plan = memory_plan(gpu, model, reserve_fraction, extra_weight_bytes,
                       extra_kv_bytes_per_token, tp, pp)
    kv_bytes = plan.kv_capacity_bytes
    per_token = plan.kv_bytes_per_token
    blocks = int(kv_bytes // (per_token * block_size_tokens)) if kv_bytes > 0 else 0
    if blocks < 1:
        raise bad("", f"{model.name} does not fit on {plan.where}: {plan.describe()} "
                  f"({per_token * block_size_tokens / 1e6:.3f} MB per block of "
                  f"{block_size_tokens} tokens)", field="model")
    return KvBudget(hbm_capacity_bytes=plan.hbm_capacity_bytes,
                    weight_bytes=plan.weight_bytes, reserve_bytes=plan.reserve_bytes,
                    reserve_fraction=reserve_fraction, kv_capacity_bytes=kv_bytes,
                    kv_bytes_per_token=per_token, block_size_tokens=block_size_tokens,
                    total_blocks=blocks)


def blocks_for(tokens: int, block_size: int) -> int:
    """Blocks that hold ``tokens`` tokens."""
    return -(-tokens // block_size)


class PagedKVCache:
    """Block accounting for explicit sequences and the O(1) decoding group.

    Misuse (unknown or duplicate sequence, shrinking, allocating past capacity) raises
    InvariantError: the scheduler must check ``free_blocks`` first.
    """

    def __init__(self, total_blocks: int, block_size: int, lookahead: int = 0) -> None:
        if total_blocks < 1 or block_size < 1 or lookahead < 0:
            raise ValueError(f"total_blocks(={total_blocks}) and block_size(={block_size}) "
                             f"must be >= 1, lookahead(={lookahead}) >= 0")
        self.total_blocks = total_blocks
        self.block_size = block_size
        self.lookahead = lookahead
        self.used_blocks = 0
        self._explicit: dict[int, int] = {}   # seq -> tokens
        self._group: dict[int, int] = {}      # seq -> base (tokens = base + ticks)
        self._residue = [0] * block_size      # group members by base % block_size
        self._group_base_sum = 0
        self.ticks = 0

    # --- queries ---------------------------------------------------------------------
    @property
    def free_blocks(self) -> int:
        return self.total_blocks - self.used_blocks

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def __contains__(self, seq: int) -> bool:
        return seq in self._explicit or seq in self._group

    def tokens(self, seq: int) -> int:
        """Tokens held for ``seq`` (a decoding one's without its lookahead)."""
        if seq in self._explicit:
            return self._explicit[seq]
        if seq in self._group:
            return self._group[seq] + self.ticks - self.lookahead
        raise InvariantError(f"KV cache: unknown sequence {seq}")

    def blocks(self, seq: int) -> int:
        """Blocks held for ``seq`` (a decoding one's lookahead included)."""
        if seq in self._group:
            return self.blocks_for(self._group[seq] + self.ticks)
        return self.blocks_for(self.tokens(seq))

    def in_group(self, seq: int) -> bool:
        return seq in self._group

    @property
    def group_size(self) -> int:
        return len(self._group)

    @property
    def group_tokens(self) -> int:
        """Tokens of the whole decoding group (without lookahead)."""
        return self._group_base_sum + (self.ticks - self.lookahead) * len(self._group)

    def group_longest_tokens(self) -> int:
        """Tokens of the decoding group's longest member (0: an empty group), without
        lookahead; O(group size), for step models that pad to the longest."""
        if not self._group:
            return 0
        return max(self._group.values()) + self.ticks - self.lookahead

    def advance_blocks(self, extra: int) -> int:
        """Blocks the whole group would take to grow ``extra`` more tokens each (every
        accepted draft token of a speculative step), in O(block size)."""
        bs, ticks = self.block_size, self.ticks
        total = 0
        for residue, count in enumerate(self._residue):
            if count:
                held = (residue + ticks) % bs or bs   # tokens in the last block
                total += count * ((held + extra - 1) // bs)
        return total

    def group_step_blocks(self) -> int:
        """Blocks ``group_step()`` would take (members whose last block is full)."""
        return self._residue[-self.ticks % self.block_size]

    def extra_blocks(self, seq: int, tokens: int) -> int:
        """Blocks an explicit ``seq`` (or a new one) needs to hold ``tokens``."""
        held = self._explicit.get(seq, 0)
        return self.blocks_for(tokens) - self.blocks_for(held)

    # --- changes ---------------------------------------------------------------------
    def _take(self, n: int, what: str) -> None:
        if n > self.total_blocks - self.used_blocks:
            raise InvariantError(f"KV cache over capacity: {what} needs {n} blocks, "
                                 f"{self.free_blocks} of {self.total_blocks} free")
        self.used_blocks += n

    def set_tokens(self, seq: int, tokens: int) -> None:
        """Create or grow explicit ``seq`` to ``tokens`` tokens."""
        if seq in self._group:
            raise InvariantError(f"KV cache: sequence {seq} is decoding, not explicit")
        held = self._explicit.get(seq, 0)
        if tokens < held:
            raise InvariantError(f"KV cache: sequence {seq} cannot shrink {held} -> {tokens}")
        self._take(self.blocks_for(tokens) - self.blocks_for(held), f"sequence {seq}")
        self._explicit[seq] = tokens

    def allocate(self, seq: int, tokens: int) -> None:
        """A new explicit sequence of ``tokens`` tokens."""
        if seq in self:
            raise InvariantError(f"KV cache: sequence {seq} is already allocated")
        self.set_tokens(seq, tokens)

    def join_group(self, seq: int) -> None:
        """Move explicit ``seq`` into the decoding group (same tokens and blocks)."""
        if seq not in self._explicit:
            raise InvariantError(f"KV cache: sequence {seq} is not explicit")
        tokens = self._explicit.pop(seq)
        base = tokens - self.ticks
        self._group[seq] = base
        self._residue[base % self.block_size] += 1
        self._group_base_sum += base

    def group_step(self) -> int:
        """Every group member gains one token; returns the blocks taken."""
        need = self._residue[-self.ticks % self.block_size]
        if need:
            self._take(need, f"decode step of {len(self._group)} sequences")
        self.ticks += 1
        return need

    def group_advance(self, seq: int, extra: int) -> int:
        """Decoding member ``seq`` gains ``extra`` more tokens than the group (accepted
        speculative tokens); returns the blocks taken."""
        if extra < 0 or seq not in self._group:
            raise InvariantError(f"KV cache: cannot advance {seq} by {extra}")
        base = self._group[seq]
        tokens = base + self.ticks
        need = self.blocks_for(tokens + extra) - self.blocks_for(tokens)
        if need:
            self._take(need, f"speculative tokens of sequence {seq}")
        self._residue[base % self.block_size] -= 1
        self._residue[(base + extra) % self.block_size] += 1
        self._group[seq] = base + extra
        self._group_base_sum += extra
        return need

    def group_members(self) -> list[int]:
        """The decoding group's sequences (O(group size))."""
        return list(self._group)

    def free(self, seq: int) -> int:
        """Release ``seq`` (finished or preempted); returns the blocks freed."""
        if seq in self._explicit:
            tokens = self._explicit.pop(seq)
        elif seq in self._group:
            base = self._group.pop(seq)
            self._residue[base % self.block_size] -= 1
            self._group_base_sum -= base
            tokens = base + self.ticks
        else:
            raise InvariantError(f"KV cache: cannot free unknown sequence {seq}")
        n = self.blocks_for(tokens)
        self.used_blocks -= n
        return n

    def check(self) -> None:
        """Recount everything (O(sequences)); raise InvariantError on any mismatch."""
        held = sum(self.blocks_for(t) for t in self._explicit.values())
        held += sum(self.blocks_for(b + self.ticks) for b in self._group.values())
        if held != self.used_blocks:
            raise InvariantError(f"KV cache: sequences hold {held} blocks, counter says "
                                 f"{self.used_blocks}")
        if not 0 <= self.used_blocks <= self.total_blocks:
            raise InvariantError(f"KV cache: {self.used_blocks} used of {self.total_blocks}")
        if set(self._explicit) & set(self._group):
            raise InvariantError("KV cache: a sequence is both explicit and decoding")
        residue = [0] * self.block_size
        for b in self._group.values():
            residue[b % self.block_size] += 1
        if residue != self._residue or sum(self._group.values()) != self._group_base_sum:
            raise InvariantError("KV cache: decoding-group tables out of date")
        if any(b + self.ticks < 0 for b in self._group.values()):
            raise InvariantError("KV cache: a decoding sequence has negative tokens")
