"""cuDNN's causal prefill kernel (cost.attention.cudnn_prefill): its key tiles against
an enumeration, its list schedule against an exact simulation of the SMs taking CTAs
(the oracle its tail constant was matched to), monotonicity, and the shipped H100
calibration against the kernel's profiled calls (fitted and never fitted)."""

from __future__ import annotations

import csv
import heapq

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpusim.calibration.attention_points import predict_points, read_attention_points
from gpusim.cost import busy_s, kernel_cost
from gpusim.cost.attention.cudnn_prefill import (
    BLOCK_M,
    BLOCK_N,
    key_tiles,
    list_schedule_flops,
)
from gpusim.io import calibrations, loader
from gpusim.kernels import AttentionShape, build_kernels
from gpusim.kernels.quant import for_stack
from gpusim.specs.enums import KernelKind

DATA = loader.ROOT / "validation" / "data" / "h100-sxm"
H100 = loader.load_gpu("h100-sxm")


def shape(batch: float, q: float, kv_len: float, heads: int = 32) -> AttentionShape:
    arr = lambda v: np.array([float(v)])  # noqa: E731
    return AttentionShape(mode="prefill", family="cudnn_prefill", batch=arr(batch), q=arr(q),
                          kv_len=arr(kv_len), heads=heads, kv_heads=8, head_dim=64)


def enumerated_tiles(q: int, kv_len: int) -> list[int]:
    """Key tiles of each 128-query block, counted one block at a time."""
    prefix = kv_len - q
    return [-(-(prefix + min(q, (i + 1) * BLOCK_M)) // BLOCK_N)
            for i in range(-(-q // BLOCK_M))]


@settings(max_examples=300, deadline=None)
@given(q=st.integers(1, 20_000), prefix=st.integers(0, 20_000))
def test_key_tiles_match_counting_each_block(q: int, prefix: int) -> None:
    tiles = enumerated_tiles(q, q + prefix)
    fewest, mean, most = (float(x[0]) for x in key_tiles(shape(1, q, q + prefix)))
    assert (fewest, most) == (min(tiles), max(tiles))
    assert mean == pytest.approx(np.mean(tiles), rel=1e-12)


def greedy_makespan(costs: list[float], slots: int) -> float:
    """Exact: each CTA, in launch order, starts on the first SM to free up."""
    if len(costs) <= slots:
        return max(costs)
    free = [0.0] * slots
    for c in costs:
        heapq.heappush(free, heapq.heappop(free) + c)
    return max(free)


def test_list_schedule_follows_an_exact_simulation_of_the_sms() -> None:
    # a prologue of 1.5 tile-equivalents a CTA; query blocks launch head by head
    sms, overhead = 132, 1.5
    errs = []
    for heads in (8, 14, 28, 40, 64):
        for batch in (1, 2, 3, 5, 8, 16):
            for q in (64, 128, 200, 384, 512, 1000, 2048, 4096):
                for prefix in (0, 256, 2000):
                    tiles = enumerated_tiles(q, q + prefix)
                    if len(tiles) * batch * heads > 20_000:
                        continue
                    costs = [overhead + t for t in tiles] * (batch * heads)
                    exact = greedy_makespan(costs, sms)
                    fewest, mean, most = key_tiles(shape(batch, q, q + prefix, heads))
                    got = list_schedule_flops(np.array([len(costs)], float), sms,
                                              overhead + fewest, overhead + mean,
                                              overhead + most)[0]
                    errs.append(got / exact - 1.0)
    errs = np.array(errs)
    assert len(errs) > 500
    assert np.mean(np.abs(errs)) < 0.01
    assert np.max(np.abs(errs)) < 0.15
    # uniform CTAs (one query block each): whole waves, exactly
    assert list_schedule_flops(np.array([300.0]), 132, 2.0, 2.0, 2.0)[0] == 6.0


CAL = calibrations.load_calibration("auto", H100, loader.load_stack("torch-hf"))


@settings(max_examples=60, deadline=None)
@given(batch=st.integers(1, 64), q=st.integers(1, 16_384), more=st.integers(1, 512),
       model=st.sampled_from(["llama-3.2-1b", "llama-3.1-8b", "qwen2.5-0.5b"]))
def test_longer_prompts_and_more_sequences_never_take_less(batch: int, q: int, more: int,
                                                           model: str) -> None:
    stack = loader.load_stack("torch-hf")
    m = for_stack(loader.load_model(model), stack)

    def attention_s(b: int, n: int) -> float:
        ks = build_kernels(m, stack, "prefill", [float(b)], 0.0, float(n))
        k = next(k for k in ks if k.kind == KernelKind.ATTENTION)
        return float(busy_s(k, kernel_cost(k, H100, CAL), CAL)[0])

    base = attention_s(batch, q) * (1.0 - 1e-12)   # equal shapes may differ by an ulp
    assert attention_s(batch, q + more) >= base
    assert attention_s(batch + 1, q) >= base


def test_shipped_h100_prices_its_profiled_prefill_kernels() -> None:
    # the reference stack's profiled calls, 512-8192 tokens at batch 1-8 (those the fit
    # takes: steps short enough to run at full clock)
    pts = [p for p in read_attention_points(DATA, H100, loader.load_model, loader.load_stack)
           if p.kernel.attention is not None and p.kernel.attention.family == "cudnn_prefill"]
    assert len(pts) >= 20
    assert {int(p.kernel.attention.q[0]) for p in pts} >= {512, 1024, 2048, 4096}
    err = predict_points(pts, H100, CAL) / np.array([p.measured_s for p in pts]) - 1.0
    assert np.mean(np.abs(err)) < 0.05
    assert np.max(np.abs(err)) < 0.10


def test_never_fitted_qwen_prefill_kernels_within_10pct() -> None:
    # Qwen2.5-0.5B (14 heads of 64), profiled under torch-fused: no fit reads it
    stack = loader.load_stack("torch-fused")
    cal = calibrations.load_calibration("auto", H100, stack)
    m = for_stack(loader.load_model("qwen2.5-0.5b"), stack)
    path = DATA / "probe_2026-12-07_s21" / "qwen_prefill" / "kernels.csv"
    calls: dict[int, list[float]] = {}
    with path.open(encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            if (r["model"] == "qwen2.5-0.5b" and r["mode"] == "prefill"
                    and "flash_fprop" in r["kernel_name"]):
                calls.setdefault(int(r["q"]), []).append(float(r["total_us"])
                                                         / float(r["count"]))
    assert set(calls) >= {1024, 2048}
    for q, times in calls.items():
        ks = build_kernels(m, stack, "prefill", [1.0], 0.0, float(q))
        k = next(k for k in ks if k.kind == KernelKind.ATTENTION)
        pred = float(busy_s(k, kernel_cost(k, H100, cal), cal)[0])
        assert pred / (np.mean(times) * 1e-6) == pytest.approx(1.0, abs=0.10), q
