"""cuBLAS's measured slow picks (gemm_picks) and the power-capped clock (cost.power_clock).

Toy GPU of tests/conftest.py: 100 SMs, 1 TB/s, 10 TFLOP/s bf16 per SM.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_model, toy_gpu
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cost import attention_kernel, elementwise_kernel, gemm_kernel

from gpusim.calibration.fit import fit
from gpusim.calibration.gemm_picks import MIN_SLOWDOWN, read_sweep, slow_picks
from gpusim.calibration.measurements import StepData
from gpusim.cost import (
    Calibration,
    SlowPick,
    kernel_cost,
    power_clock,
    power_load,
    step_cost,
    step_costs,
    tensor_share,
)
from gpusim.cost.gemm import gemm_schedule, slowdown
from gpusim.errors import ConfigError
from gpusim.io import calibrations, loader

GPU = toy_gpu()


def write_sweep(path: Path, name: str, n: int, k: int, spike_m: int, factor: float) -> None:
    """A swept GEMM on a straight line in m (8 to 256 by 8), slow by ``factor`` at one m."""
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["kind", "name", "m", "n", "k", "median_us"])
        w.writeheader()
        for m in range(8, 257, 8):
            t = 10.0 + 0.1 * m
            w.writerow({"kind": "gemm", "name": name, "m": m, "n": n, "k": k,
                        "median_us": t * (factor if m == spike_m else 1.0)})


# ---------------------------------------------------------------------------------
# reading the sweep
# ---------------------------------------------------------------------------------
def test_a_spike_on_a_line_is_found_with_its_slowdown(tmp_path):
    path = tmp_path / "gemm_sweep.csv"
    write_sweep(path, "llama-3.1-8b.gate_up", 28672, 4096, spike_m=128, factor=2.0)
    points = read_sweep(path)
    assert len(points) == 32
    by_m = {p.m: p.slowdown for p in points}
    # the line through its neighbours (itself left out) is exact; points whose window
    # holds the slow one stay close to their line (Theil-Sen), the rest lie on it
    assert by_m[128] == pytest.approx(2.0, rel=1e-9)
    assert by_m[120] == pytest.approx(1.0, abs=0.05)
    assert by_m[64] == pytest.approx(1.0, rel=1e-9)
    picks = slow_picks(points)
    assert picks == (SlowPick(n=28672, k=4096, m=128, slowdown=2.0),)
    assert points[0].models == frozenset({"llama-3.1-8b"})


def test_small_slowdowns_are_not_picks(tmp_path):
    path = tmp_path / "gemm_sweep.csv"
    write_sweep(path, "m.qkv", 3072, 2048, spike_m=64, factor=MIN_SLOWDOWN - 0.05)
    assert slow_picks(read_sweep(path)) == ()


def test_held_out_models_shapes_are_dropped_shared_ones_kept(tmp_path):
    path = tmp_path / "gemm_sweep.csv"
    write_sweep(path, "llama-3.1-8b.o|llama-2-7b.o", 4096, 4096, spike_m=96, factor=1.6)
    points = read_sweep(path)
    assert points[0].models == frozenset({"llama-3.1-8b", "llama-2-7b"})
    assert len(slow_picks(points, exclude_models=frozenset({"llama-2-7b"}))) == 1
    both = frozenset({"llama-2-7b", "llama-3.1-8b"})
    assert slow_picks(points, exclude_models=both) == ()


def test_malformed_sweep_is_one_config_error(tmp_path):
    path = tmp_path / "gemm_sweep.csv"
    path.write_text("kind,name,m,n,k,median_us\ngemm,x.y,eight,1,1,3.0\n")
    with pytest.raises(ConfigError, match=r"gemm_sweep\.csv:2: malformed row"):
        read_sweep(path)


# ---------------------------------------------------------------------------------
# pricing a pick
# ---------------------------------------------------------------------------------
def test_a_pick_scales_only_its_own_shape():
    m = np.array([64.0, 128.0, 192.0])
    plain = kernel_cost(gemm_kernel(m, 2048, 1024), GPU, Calibration())
    cal = Calibration(
        physics={
            "launch_gap_s": 1e-6,
            "gemm_slow_picks": (SlowPick(n=2048, k=1024, m=128, slowdown=1.5),),
        }
    )
    picked = kernel_cost(gemm_kernel(m, 2048, 1024), GPU, cal)
    gap = 1e-6
    assert picked.seconds[0] == pytest.approx(plain.seconds[0] + gap)
    # the kernel's own time is 1.5x; the idle launch gap before it is not
    assert picked.seconds[1] == pytest.approx(plain.seconds[1] * 1.5 + gap)
    assert picked.seconds[2] == pytest.approx(plain.seconds[2] + gap)
    # another (n, k) is untouched
    other = kernel_cost(gemm_kernel(m, 4096, 1024), GPU, cal)
    assert np.allclose(
        other.seconds, kernel_cost(gemm_kernel(m, 4096, 1024), GPU, Calibration()).seconds + gap
    )
    assert slowdown((), 2048, 1024, m) is None


def test_duplicate_picks_take_the_larger_slowdown():
    picks = (SlowPick(n=8, k=8, m=16, slowdown=1.4), SlowPick(n=8, k=8, m=16, slowdown=1.8))
    assert slowdown(picks, 8, 8, np.array([16.0, 24.0])).tolist() == [1.8, 1.0]


def test_transferred_calibration_drops_picks(monkeypatch, tmp_path):
    cal_dir = tmp_path / "calibrations"
    cal_dir.mkdir()
    (cal_dir / "h100-sxm.yaml").write_text(
        "gpu: h100-sxm\nphysics:\n  tensor_efficiency: 0.8\n"
        "  gemm_slow_picks:\n  - {n: 28672, k: 4096, m: 448, slowdown: 1.75}\n"
        "stacks:\n  torch-hf: {host_launch_cost_s: 1.0e-5}\n"
    )
    monkeypatch.setattr(calibrations, "CALIBRATIONS_DIR", cal_dir)
    stack = loader.load_stack()
    own = calibrations.load_calibration("auto", loader.load_gpu("h100-sxm"), stack)
    assert len(own.physics.gemm_slow_picks) == 1
    other = calibrations.load_calibration("auto", loader.load_gpu("a100-sxm-80gb"), stack)
    assert other.physics.gemm_slow_picks == () and other.physics.tensor_efficiency == 0.8
    assert other.host.host_launch_cost_s == 1.0e-5


def test_fit_keeps_picks_of_fitted_models_only(tmp_path):
    model = tiny_model()
    theirs, ours = tmp_path / "theirs.csv", tmp_path / "ours.csv"
    write_sweep(theirs, "other-model.gate_up", 512, 256, spike_m=64, factor=2.0)
    write_sweep(ours, f"{model.name}.gate_up", 1024, 256, spike_m=64, factor=2.0)
    stack = loader.load_stack()
    b = np.array([1.0, 4.0, 16.0, 64.0])
    data = StepData(
        source="toy",
        model=np.array([model.name] * 4),
        mode=np.array(["decode"] * 4),
        launch=np.array(["graph"] * 4),
        batch=b,
        ctx=np.full(4, 256.0),
        q=np.ones(4),
        measured_s=np.full(4, 1e-3),
    )
    res = fit(data, GPU, stack, lambda name: model, sweep=read_sweep(theirs) + read_sweep(ours))
    assert res.calibration.physics.gemm_slow_picks == (SlowPick(n=1024, k=256, m=64, slowdown=2.0),)


# ---------------------------------------------------------------------------------
# the power cap
# ---------------------------------------------------------------------------------
def test_no_cap_means_full_clock():
    k = [gemm_kernel(4096, 8192, 8192)]
    assert power_clock(k, step_costs(k, GPU, Calibration()), Calibration()) is None


def test_compute_bound_step_runs_at_the_cube_root_clock():
    # one compute-bound GEMM: its matrix work keeps the tensor cores busy (at peak) for
    # a share u = compute_s x tensor efficiency / time of the step at full clock
    cal = Calibration(
        physics={"power_cap_tensor_share": 0.3, "tensor_efficiency": 0.8, "overlap_exponent": 64.0}
    )
    k = [gemm_kernel(4096, 8192, 8192)]
    full = [kernel_cost(k[0], GPU, cal)]
    u = 0.8 * full[0].compute_s[0] / full[0].seconds[0]
    assert tensor_share(k, full, cal)[0] == pytest.approx(u)
    clock = power_clock(k, full, cal)
    assert clock is not None
    assert clock[0] == pytest.approx((0.3 / u) ** (1 / 3))
    slowed = step_costs(k, GPU, cal)[0]
    assert slowed.compute_s[0] == pytest.approx(full[0].compute_s[0] / clock[0])
    assert slowed.memory_s[0] == pytest.approx(full[0].memory_s[0])


def test_padded_tiles_count_as_tensor_work():
    # m = 1 runs a whole (8-row) tile: the busiest SM's tiles at peak, at least 8x the
    # useful flops spread over every SM
    cal = Calibration(physics={"tensor_efficiency": 0.5})
    k = [gemm_kernel(1.0, 8192, 8192)]
    c = [kernel_cost(k[0], GPU, cal)]
    _, waves, cta_flops = gemm_schedule(k[0].gemm.m, 8192, 8192, GPU, cal.physics)
    per_sm = GPU.tensor_peak_flops_per_s("bf16") / GPU.sm_count
    busy = tensor_share(k, c, cal)[0] * c[0].seconds[0]
    assert busy == pytest.approx(waves[0] * cta_flops[0] / per_sm)
    assert busy >= 8.0 * k[0].flops[0] / GPU.tensor_peak_flops_per_s("bf16")
    # pointwise kernels have no matrix work
    e = [elementwise_kernel(1e8, 4.0)]
    assert tensor_share(e, [kernel_cost(e[0], GPU, cal)], cal)[0] == 0.0


def test_verify_attention_stretches_with_the_clock_by_its_sensitivity():
    a = attention_kernel("verify", batch=64, q=4, kv_len=4100)
    base = Calibration(attention={"fa2": {"tensor_efficiency": 0.3}})
    full = kernel_cost(a, GPU, base)
    for s in (0.0, 0.5, 1.0):
        cal = base.replace({"attention.fa2.clock_sensitivity": s})
        c = kernel_cost(a, GPU, cal, clock=0.8)
        assert c.compute_s[0] == pytest.approx(full.compute_s[0] / 0.8**s)
    # a GEMM's and a prefill's arithmetic always follow the clock
    cal = base.replace({"attention.fa2.clock_sensitivity": 0.0})
    for k in (gemm_kernel(4096, 8192, 8192), attention_kernel("prefill", 1, 4096, 4096)):
        assert kernel_cost(k, GPU, cal, clock=0.8).compute_s[0] == pytest.approx(
            kernel_cost(k, GPU, cal).compute_s[0] / 0.8
        )


def test_hbm_streaming_adds_to_the_load_by_its_weight():
    k = [elementwise_kernel(1e9, 4.0)]
    c = [kernel_cost(k[0], GPU, Calibration())]
    hbm = c[0].memory_s[0] / c[0].seconds[0]
    assert power_load(k, c, Calibration())[0] == 0.0
    assert power_load(k, c, Calibration(physics={"power_memory_weight": 0.5}))[0] == pytest.approx(
        0.5 * hbm
    )
    # a compute-bound GEMM beside heavy streaming: under the cap by its tensor share
    # alone, over it once HBM streaming weighs in, and then its arithmetic slows
    step = [gemm_kernel(4096, 8192, 8192), elementwise_kernel(2e10, 4.0)]
    costs = [kernel_cost(x, GPU, Calibration()) for x in step]
    assert tensor_share(step, costs, Calibration(physics={"tensor_efficiency": 1.0}))[0] < 0.2
    light = Calibration(physics={"power_cap_tensor_share": 0.2, "tensor_efficiency": 1.0})
    heavy = light.replace({"physics.power_memory_weight": 1.0})
    assert power_clock(step, costs, light) is None
    assert step_cost(step, GPU, heavy).seconds[0] > step_cost(step, GPU, light).seconds[0]


def test_memory_bound_step_keeps_full_clock():
    cal = Calibration(physics={"power_cap_tensor_share": 0.3})
    k = [gemm_kernel(1, 8192, 8192), elementwise_kernel(1e8, 4.0)]
    assert power_clock(k, step_costs(k, GPU, Calibration()), cal) is None
    assert step_cost(k, GPU, cal).seconds[0] == pytest.approx(
        step_cost(k, GPU, Calibration()).seconds[0]
    )


def test_a_given_clock_overrides_the_steps_own():
    cal = Calibration(physics={"power_cap_tensor_share": 0.3, "tensor_efficiency": 0.8})
    k = [gemm_kernel(4096, 8192, 8192)]
    own = step_cost(k, GPU, cal).seconds[0]
    full = step_cost(k, GPU, cal, clock=np.ones(1)).seconds[0]
    slower = step_cost(k, GPU, cal, clock=np.full(1, 0.5)).seconds[0]
    assert full < own < slower


@settings(max_examples=40, deadline=None)
@given(cap=st.floats(0.1, 1.0), m=st.sampled_from([1.0, 64.0, 512.0, 4096.0]))
def test_a_lower_cap_never_speeds_a_step_up(cap, m):
    k = [gemm_kernel(m, 8192, 8192), elementwise_kernel(1e7, 4.0)]
    capped = step_cost(k, GPU, Calibration(physics={"power_cap_tensor_share": cap})).seconds[0]
    looser = step_cost(
        k, GPU, Calibration(physics={"power_cap_tensor_share": min(1.0, cap + 0.1)})
    ).seconds[0]
    free = step_cost(k, GPU, Calibration()).seconds[0]
    assert free <= looser * (1 + 1e-12) and looser <= capped * (1 + 1e-12)
