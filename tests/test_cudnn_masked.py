"""cuDNN's masked SDPA family (cost.attention.cudnn_masked) and the profiled kernels it
is fitted on across stacks (calibration.attention_points)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpusim.calibration.attention_points import predict_points, read_attention_points
from gpusim.cost.attention.cudnn_masked import (
    BLOCK_M,
    CudnnMasked,
    CudnnMaskedParams,
    misaligned_mask,
    stream_wave_s,
)
from gpusim.cost.params import GpuPhysics
from gpusim.io import calibrations, loader
from gpusim.kernels.records import AttentionShape

GPU = loader.load_gpu("h100-sxm")
PARAMS = CudnnMaskedParams(tensor_efficiency=0.4, score_flops=100.0, wave_overhead_s=2e-6,
                           stream_s_per_key=6e-9, cta_stream_bytes_per_s=33e9,
                           stream_overlap_exponent=5.0)


def shape(batch: float, q: float, kv: float, heads: int = 8, kv_heads: int = 8,
          d: int = 128) -> AttentionShape:
    one = np.array([1.0])
    return AttentionShape("decode", "cudnn_masked", batch * one, q * one, kv * one,
                          heads, kv_heads, d)


def critical_s(a: AttentionShape, p: CudnnMaskedParams = PARAMS) -> float:
    kv_bytes = a.batch * a.kv_heads * a.kv_len * a.head_dim * 4.0
    per_sm = GPU.matmul_peak_flops_per_s("bf16") / GPU.sm_count
    parts = CudnnMasked().parts(a, kv_bytes, GPU, GpuPhysics(), p, per_sm)
    return float(parts.critical_flops[0] / (per_sm * parts.tensor_efficiency))


def test_a_lone_decode_cta_streams_at_its_own_rate() -> None:
    # one CTA (batch 1, one KV head): 1024 keys of 512 B each at 6 ns + 512 B / 33 GB/s
    a = shape(1, 4, 1024, heads=1, kv_heads=1)
    alone = 1024 * (6e-9 + 512 / 33e9)
    assert critical_s(a) == pytest.approx(alone + 2e-6, rel=0.02)


def test_prefill_tiles_are_not_charged_the_stream() -> None:
    # 2048 rows = 32 tiles a head: the keys come from L2, the MMAs bound each tile
    a = shape(1, 2048, 4096, heads=32, kv_heads=32, d=64)
    assert float(stream_wave_s(a, np.array([1e9]), 3e12, 132.0, PARAMS)[0]) == 0.0
    mma = BLOCK_M * 4096 * (4 * 64 + 100) / (GPU.matmul_peak_flops_per_s("bf16") / 132 * 0.4)
    waves = np.ceil(32 * 32 / 132)
    assert critical_s(a) == pytest.approx(waves * (mma + 2e-6), rel=1e-6)


def test_odd_mask_rows_take_the_slow_path() -> None:
    assert list(misaligned_mask(np.array([4096.0, 4097.0, 4098.0]))) == [False, True, False]
    even, odd = shape(1, 2048, 4098, 32, 32, 64), shape(1, 2048, 4097, 32, 32, 64)
    assert critical_s(odd) > 1.4 * critical_s(even)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([1, 4, 16, 64]), st.sampled_from([1, 4, 64, 512]),
       st.integers(256, 8192))
def test_time_grows_with_keys(batch: int, q: int, kv: int) -> None:
    assert critical_s(shape(batch, q, kv + 256)) >= critical_s(shape(batch, q, kv))


def test_committed_profiles_cover_three_stacks_and_fit() -> None:
    # the H100's tree, hf-transformers prefill and serving-harness decode kernels, and
    # the shipped calibration (fitted on them) within 12% of each on average
    pts = read_attention_points(loader.ROOT / "validation" / "data" / "h100-sxm", GPU,
                                loader.load_model, loader.load_stack)
    assert {p.stack for p in pts} == {"torch-hf", "hf-transformers", "harness-serve"}
    cal = calibrations.load_calibration(
        str(calibrations.CALIBRATIONS_DIR / "h100-sxm.yaml"), GPU, loader.load_stack("torch-hf"))
    pred = predict_points(pts, GPU, cal)
    err = np.abs(pred / np.array([p.measured_s for p in pts]) - 1)
    for stack in ("torch-hf", "hf-transformers", "harness-serve"):
        mine = np.array([p.stack == stack for p in pts])
        assert err[mine].mean() < 0.12, stack


def test_unreadable_profile_is_one_error(tmp_path) -> None:
    from gpusim.errors import ConfigError
    (tmp_path / "tree_kernels.csv").write_text("model,batch\nllama-3.2-1b,1\n")
    with pytest.raises(ConfigError, match="attention profile"):
        read_attention_points(tmp_path, GPU, loader.load_model, loader.load_stack)
