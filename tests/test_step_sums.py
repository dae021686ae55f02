"""A step's costs summed over its kernels (step.predict.SummedCost, OpCosts, the byte
totals): the same numbers, bit for bit, as adding the kernels one by one."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gpusim.cost import Cost
from gpusim.io import calibrations, loader
from gpusim.platform import Platform
from gpusim.step.predict import OpCosts, SummedCost, _repeat_sum, predict

FIELDS = ("seconds", "fixed_s", "memory_s", "compute_s", "flops", "bytes")


class _K:
    def __init__(self, name: str, repeat: int) -> None:
        self.name, self.repeat = name, repeat


def _loop(kernels, costs, n):
    total = Cost.zero(n)
    by_op: dict[str, Cost] = {}
    for k, c in zip(kernels, costs, strict=True):
        part = c.scaled(k.repeat)
        total = total + part
        by_op[k.name] = by_op[k.name] + part if k.name in by_op else part
    return total, by_op


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 30), st.integers(0, 2**31 - 1))
def test_summed_cost_and_op_costs_equal_the_one_by_one_sums_bit_for_bit(kernels, n, seed):
    rng = np.random.default_rng(seed)
    ks = [_K(f"op{rng.integers(0, 5)}", int(rng.integers(1, 81))) for _ in range(kernels)]
    costs = [Cost(*(rng.lognormal(-9, 3, n) for _ in FIELDS)) for _ in ks]
    total, by_op = _loop(ks, costs, n)
    got = SummedCost(ks, costs, n)
    lazy = OpCosts(ks, costs)
    for f in FIELDS:
        assert np.array_equal(getattr(got, f), getattr(total, f))
    assert list(lazy) == list(by_op) and len(lazy) == len(by_op)
    for name, c in by_op.items():
        assert all(np.array_equal(getattr(lazy[name], f), getattr(c, f)) for f in FIELDS)


def test_ragged_costs_are_added_one_by_one():
    ks = [_K("a", 2), _K("b", 3)]
    n = 4
    costs = [Cost(*(np.arange(1.0, n + 1) for _ in FIELDS)),
             Cost(*(np.float64(0.5) for _ in FIELDS))]     # a scalar cost broadcasts
    got = SummedCost(ks, costs, n)
    np.testing.assert_array_equal(got.seconds, 2 * np.arange(1.0, n + 1) + 1.5)


def test_a_predicted_steps_byte_totals_are_its_kernels_sums():
    gpu, stack = loader.load_gpu("h100-sxm"), loader.load_stack("torch-fp8")
    pf = Platform(gpu, stack, calibrations.load_calibration("auto", gpu, stack), "graph")
    from gpusim.kernels.quant import for_stack
    model = for_stack(loader.load_model("llama-3.1-8b"), stack)
    b = np.array([1.0, 8.0, 64.0])
    p = predict(pf, model, "decode", b, np.array([0.0, 512.0, 4096.0]), np.ones(3))
    want_w = sum((k.weight_bytes * k.repeat for k in p.kernels), np.zeros(1))
    want_kv = sum((k.kv_bytes * k.repeat for k in p.kernels), np.zeros(1))
    assert np.array_equal(p.weight_bytes, want_w) and np.array_equal(p.kv_bytes, want_kv)
    assert p.kv_bytes[2] > p.kv_bytes[1] > p.kv_bytes[0]
    assert sum(c.seconds for c in p.by_op.values()).shape == (3,)


def test_one_shape_sums_as_the_one_by_one_loop():
    # a (kernels, 1) stack is contiguous along the kernels: numpy would sum it pairwise
    rng = np.random.default_rng(3)
    ks = [_K("a", int(r)) for r in rng.integers(1, 81, 40)]
    costs = [Cost(*(rng.lognormal(-9, 3, 1) for _ in FIELDS)) for _ in ks]
    total, _ = _loop(ks, costs, 1)
    got = SummedCost(ks, costs, 1)
    assert all(np.array_equal(getattr(got, f), getattr(total, f)) for f in FIELDS)
    values = [c.bytes for c in costs]
    want = sum((v * k.repeat for v, k in zip(values, ks, strict=True)), np.zeros(1))
    assert np.array_equal(_repeat_sum(values, ks, np.zeros(1)), want)
