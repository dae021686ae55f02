"""Paged KV cache: capacity from the hardware, and a state machine over the block
manager (allocate, append, join decoding, decode step, free, preempt)."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gpusim.errors import ConfigError
from gpusim.io import loader
from gpusim.serving.invariants import InvariantError
from gpusim.serving.kv_cache import PagedKVCache, blocks_for, kv_budget


def test_budget_numbers() -> None:
    gpu = loader.load_gpu("h100-sxm")
    model = loader.load_model("llama-3.1-8b")
    b = kv_budget(gpu, model, block_size_tokens=16, reserve_fraction=0.1)
    free = gpu.hbm_capacity_bytes * 0.9 - model.weight_bytes
    assert b.kv_capacity_bytes == pytest.approx(free)
    assert b.total_blocks == int(free // (model.kv_bytes_per_token * 16))
    assert b.capacity_tokens == b.total_blocks * 16
    assert 400_000 < b.capacity_tokens < 500_000  # ~53.9 GB / 128 KiB per token


def test_model_too_large_is_refused_with_numbers() -> None:
    gpu = loader.load_gpu("h100-sxm")
    model = loader.load_model("llama-3.1-70b")
    with pytest.raises(ConfigError) as exc:
        kv_budget(gpu, model)
    msg = str(exc.value)
    assert "does not fit" in msg and "weights 141.11 GB" in msg
    assert "MB per token" in msg and "85.90 GB HBM" in msg


@pytest.mark.parametrize("kwargs", [{"block_size_tokens": 0}, {"reserve_fraction": 1.0},
                                    {"reserve_fraction": -0.1}])
def test_budget_rejects_bad_parameters(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        kv_budget(loader.load_gpu("h100-sxm"), loader.load_model("llama-3.2-1b"), **kwargs)


def test_misuse_raises() -> None:
    kv = PagedKVCache(total_blocks=4, block_size=4)
    kv.allocate(1, 5)
    with pytest.raises(InvariantError):
        kv.allocate(1, 1)              # double allocation
    with pytest.raises(InvariantError):
        kv.set_tokens(1, 3)            # shrinking
    with pytest.raises(InvariantError):
        kv.allocate(2, 9)              # 3 blocks, 2 free
    with pytest.raises(InvariantError):
        kv.free(7)
    kv.used_blocks += 1                # corrupt the counter: check() must notice
    with pytest.raises(InvariantError):
        kv.check()


class BlockManagerMachine(RuleBasedStateMachine):
    """A reference model (dicts of token counts) against PagedKVCache."""

    @initialize(total=st.integers(1, 40), block=st.integers(1, 8))
    def setup(self, total: int, block: int) -> None:
        self.kv = PagedKVCache(total, block)
        self.total, self.block = total, block
        self.explicit: dict[int, int] = {}
        self.group: dict[int, int] = {}
        self.order: list[int] = []      # allocation order, for preemption
        self.next_id = 0

    def _blocks_model(self) -> int:
        return sum(blocks_for(t, self.block) for t in (*self.explicit.values(),
                                                       *self.group.values()))

    @rule(tokens=st.integers(0, 60))
    def allocate(self, tokens: int) -> None:
        seq = self.next_id
        self.next_id += 1
        if blocks_for(tokens, self.block) > self.total - self._blocks_model():
            with pytest.raises(InvariantError):
                self.kv.allocate(seq, tokens)
            return
        self.kv.allocate(seq, tokens)
        self.explicit[seq] = tokens
        self.order.append(seq)

    @precondition(lambda self: self.explicit)
    @rule(data=st.data(), extra=st.integers(0, 20))
    def append(self, data, extra: int) -> None:
        seq = data.draw(st.sampled_from(sorted(self.explicit)))
        new = self.explicit[seq] + extra
        grow = blocks_for(new, self.block) - blocks_for(self.explicit[seq], self.block)
        if grow > self.total - self._blocks_model():
            with pytest.raises(InvariantError):
                self.kv.set_tokens(seq, new)
            return
        self.kv.set_tokens(seq, new)
        self.explicit[seq] = new

    @precondition(lambda self: any(t > 0 for t in self.explicit.values()))
    @rule(data=st.data())
    def join(self, data) -> None:
        seq = data.draw(st.sampled_from(sorted(s for s, t in self.explicit.items() if t > 0)))
        self.kv.join_group(seq)
        self.group[seq] = self.explicit.pop(seq)

    @rule()
    def decode_step(self) -> None:
        """Every decoding sequence gains a token; preempt the newest until it fits."""
        while self.kv.group_step_blocks() > self.kv.free_blocks:
            self.preempt()
        taken = self.kv.group_step()
        assert taken == sum(1 for t in self.group.values() if t % self.block == 0)
        for seq in self.group:
            self.group[seq] += 1

    @precondition(lambda self: self.order)
    @rule(data=st.data())
    def free(self, data) -> None:
        seq = data.draw(st.sampled_from(self.order))
        tokens = self.explicit.pop(seq, None)
        if tokens is None:
            tokens = self.group.pop(seq)
        assert self.kv.free(seq) == blocks_for(tokens, self.block)
        self.order.remove(seq)

    @precondition(lambda self: self.order)
    @rule()
    def preempt(self) -> None:
        seq = self.order.pop()
        tokens = self.explicit.pop(seq, None)
        if tokens is None:
            tokens = self.group.pop(seq)
        assert self.kv.free(seq) == blocks_for(tokens, self.block)
        assert seq not in self.kv

    @invariant()
    def consistent(self) -> None:
        if not hasattr(self, "kv"):
            return
        kv = self.kv
        kv.check()
        assert kv.used_blocks + kv.free_blocks == kv.total_blocks
        assert 0 <= kv.used_blocks <= kv.total_blocks
        assert kv.used_blocks == self._blocks_model()          # no block held twice
        for seq, tokens in (*self.explicit.items(), *self.group.items()):
            assert kv.tokens(seq) == tokens
            assert kv.blocks(seq) * self.block >= tokens         # blocks cover tokens
            assert (kv.blocks(seq) - 1) * self.block < max(tokens, 1)
        assert kv.group_size == len(self.group)
        assert kv.group_tokens == sum(self.group.values())


TestBlockManager = BlockManagerMachine.TestCase
TestBlockManager.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
