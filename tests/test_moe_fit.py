"""The expert GEMM's kernel family fitted on grouped-GEMM probes and MoE steps
(gpusim.calibration.moe_fit)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gpusim.calibration.moe_fit import (
    MOE_CALIBRATE,
    STEPS_ONLY,
    fit_moe,
    moe_stack,
    read_grouped_micro,
    without_fit,
)
from gpusim.cost import Calibration
from gpusim.cost.moe import LARGE_TILE_M, GroupedMmParams
from gpusim.cost.steps import step_costs
from gpusim.errors import ConfigError
from gpusim.io import calibrations, loader
from gpusim.kernels.moe import ExpertGemmShape

HEADER = "shape,experts,n,k,rows_per_expert,spill,median_us,p10_us,p90_us,repeats,kernel\n"
H100 = loader.load_gpu("h100-sxm")


def _probe(tmp_path: Path, lines: list[str], folder: str = "grouped_mm") -> Path:
    d = tmp_path / "probe_x" / folder
    d.mkdir(parents=True)
    (d / "grouped_mm.csv").write_text(HEADER + "".join(line + "\n" for line in lines))
    return tmp_path


def _models() -> list:
    return [loader.load_model(m) for m in ("mixtral-8x7b-8l", "qwen3-30b-a3b")]


def test_probe_rows_become_balanced_expert_gemms_tagged_with_their_models(tmp_path):
    gpu_dir = _probe(tmp_path, [
        "mixtral_gate_up,8,28672,4096,64,0,690,680,700,20,k",
        "mixtral_gate_up,8,28672,4096,257,0,1449,1440,1460,20,k",
        "mixtral_gate_up,8,28672,4096,257,1,1261,1250,1270,20,k",   # spill: left out
        "qwen3_down,128,2048,768,16,0,175,170,180,20,k",
        "other,4,100,200,16,0,10,9,11,20,k",                       # no model's shape
    ])
    groups = read_grouped_micro(gpu_dir, _models())
    assert [sorted(g.models) for g in groups] == [["mixtral-8x7b-8l"], ["qwen3-30b-a3b"]]
    mix = groups[0]
    np.testing.assert_allclose(mix.measured_s, [690e-6, 1449e-6])
    g = mix.kernel.gemm
    assert isinstance(g, ExpertGemmShape)
    # each expert's rows in tiles: 64 rows one small-kernel tile, 257 two large ones
    np.testing.assert_allclose(g.row_tiles(np.array([128.0, LARGE_TILE_M])), [8, 16])
    np.testing.assert_allclose(mix.kernel.weight_bytes, 8 * 28672 * 4096 * 2.0)


def test_one_row_past_a_large_tile_costs_a_second_tile(tmp_path):
    # the probe's step at 256 -> 257 rows an expert (1.85x measured on H100): the model
    # prices the second 256-row tile's arithmetic
    gpu_dir = _probe(tmp_path, [f"mixtral_down,8,4096,14336,{r},0,500,490,510,20,k"
                                for r in (256, 257)])
    (group,) = read_grouped_micro(gpu_dir, _models())
    cal = calibrations.load_calibration("none", H100, loader.load_stack("torch-fused"))
    t256, t257 = step_costs([group.kernel], H100, cal)[0].seconds
    assert t257 > 1.5 * t256


def test_a_probe_without_its_columns_is_refused(tmp_path):
    d = tmp_path / "probe_x" / "grouped_mm"
    d.mkdir(parents=True)
    (d / "grouped_mm.csv").write_text("shape,experts,n\nx,8,4096\n")
    with pytest.raises(ConfigError, match="missing column"):
        read_grouped_micro(tmp_path, _models())


def test_a_probe_with_a_bad_number_is_refused(tmp_path):
    gpu_dir = _probe(tmp_path, ["mixtral_down,8,4096,14336,many,0,500,490,510,20,k"])
    with pytest.raises(ConfigError, match="unreadable probe row"):
        read_grouped_micro(gpu_dir, _models())


def test_without_fit_restores_the_defaults_and_the_stack_fits_what_was_probed():
    cal = calibrations.load_calibration("none", H100, loader.load_stack("torch-fused"))
    moved = cal.replace({p: 2e-6 if p.endswith("fixed_s") else 1.1 for p in MOE_CALIBRATE})
    assert without_fit(moved).gemm_params("grouped_mm") == GroupedMmParams()
    st = loader.load_stack("torch-fused")
    assert moe_stack(st, True).calibrate == MOE_CALIBRATE
    assert moe_stack(st, False).calibrate == STEPS_ONLY


def test_no_moe_steps_leave_the_physics_alone(tmp_path):
    cal = calibrations.load_calibration("none", H100, loader.load_stack("torch-fused"))
    out, note = fit_moe(tmp_path, H100, cal, loader.load_stack, loader.load_model)
    assert out is cal and note == ""


def test_the_shipped_h100_calibration_carries_the_fitted_expert_gemm():
    # fitted by `gpusim calibrate` on the committed MoE steps and probes, inherited by
    # every stack (an MoE model under torch-compile too)
    shipped = calibrations.CALIBRATIONS_DIR / "h100-sxm.yaml"
    for stack in ("torch-fused", "torch-compile"):
        cal: Calibration = calibrations.load_calibration(str(shipped), H100,
                                                         loader.load_stack(stack))
        assert cal.gemm_params("grouped_mm") != GroupedMmParams()


def test_sort_time_follows_pytorchs_cta_configs():
    from gpusim.cost.params import GpuPhysics
    from gpusim.cost.pointwise import sort_config, sort_s
    threads, items = sort_config(np.array([2, 32, 33, 128, 129, 1024, 1025, 2048, 4096]))
    np.testing.assert_array_equal(threads, [16, 16, 32, 32, 32, 32, 64, 64, 128])
    np.testing.assert_array_equal(items, [2, 2, 4, 4, 32, 32, 32, 32, 32])
    ph = GpuPhysics()
    t = sort_s(np.array([8.0, 64, 512, 2048, 4096, 8192]), ph)
    # the defaults reproduce the H100 profile within 15% (6.7, 8.8, 27.1, 30.3, 33.8 us)
    np.testing.assert_allclose(t[:5], [6.7e-6, 8.75e-6, 27.1e-6, 30.3e-6, 33.8e-6], rtol=0.15)
    assert np.all(np.diff(t) > 0)      # never cheaper for more keys
    # beyond 4096 keys: cub's device-wide sort, flat over the keys a step sorts
    assert t[5] == ph.sort_device_s == sort_s(np.array([32768.0]), ph)[0]


def test_profiled_sorts_are_read_and_fitted(tmp_path):
    from gpusim.calibration.moe_fit import read_sort_micro, with_sorts
    (tmp_path / "moe").mkdir()
    lines = ["model,mode,batch,ctx,q,kernel_name,count,total_us,stack"]
    truth = {"fixed": 4e-6, "item": 0.6e-6, "thread": 0.05e-6}
    from gpusim.cost.pointwise import sort_config
    for batch in (1, 8, 64, 512):
        slots = batch * 8                      # qwen3: top-8
        threads, items = sort_config(np.array([float(slots)]))
        us = 1e6 * (truth["fixed"] + items[0] * truth["item"] + threads[0] * truth["thread"])
        lines.append(f"qwen3-30b-a3b,decode,{batch},1024,1,void at::native::"
                     f"radixSortKVInPlace<-2>(x),48,{48 * us}")
        lines.append(f"qwen3-30b-a3b,decode,{batch},1024,1,other_kernel,48,1000")
    # a device-wide sort: 8 onesweep passes and two more kernels a layer, 50 us in all
    for name, count, each in (("DeviceRadixSortOnesweepKernel", 384, 5.5),
                              ("DeviceRadixSortHistogramKernel", 48, 4.0),
                              ("DeviceRadixSortExclusiveSumKernel", 48, 2.0)):
        lines.append(f"qwen3-30b-a3b,prefill,1,0,1024,cub::{name}<x>,{count},{count * each}")
    (tmp_path / "moe" / "kernels.csv").write_text("\n".join(lines) + "\n")
    (group,) = read_sort_micro(tmp_path, _models(), loader.load_stack("torch-fused"))
    assert group.models == {"qwen3-30b-a3b"}
    np.testing.assert_allclose(group.kernel.sort_elements, [8, 64, 512, 4096, 8192])
    assert group.measured_s[-1] == pytest.approx(50e-6)
    cal = calibrations.load_calibration("none", H100, loader.load_stack("torch-fused"))
    fitted = with_sorts(cal, H100, [group])
    # the fit recovers the sort's own time less what the rest of the kernel costs
    pred = step_costs([group.kernel], H100, fitted)[0].seconds
    np.testing.assert_allclose(pred, group.measured_s, rtol=0.08)
    # no profiled sorts: the prior
    assert with_sorts(fitted, H100, []).physics.sort_fixed_s == pytest.approx(3.5e-6)


def _one_call(touched: float, rows: float = 1.0, experts: int = 128, n: int = 2048,
              k: int = 768):
    from gpusim.calibration.moe_fit import _kernel
    return _kernel(experts, n, k, np.array([rows]), np.array([touched]))


def test_a_decodes_few_cta_tiles_stream_at_one_ctas_rate():
    # one Qwen3 expert's down weight (3.1 MB) over 32 CTAs: bound by a CTA's stream,
    # not HBM; with every expert touched the CTAs fill the GPU and HBM binds again
    cal = calibrations.load_calibration("none", H100, loader.load_stack("torch-fused"))
    limited = cal.replace({"gemm.grouped_mm.cta_stream_bytes_per_s": 40e9})
    one, full = _one_call(1.0), _one_call(128.0)
    t_free = step_costs([one], H100, cal)[0].memory_s[0]
    t_lim = step_costs([one], H100, limited)[0].memory_s[0]
    assert t_lim == pytest.approx(3.1457e6 / 32 / 40e9, rel=0.01) and t_lim > 2 * t_free
    assert step_costs([full], H100, limited)[0].memory_s[0] == pytest.approx(
        step_costs([full], H100, cal)[0].memory_s[0])


def test_a_cluster_tile_is_two_ctas_on_two_sms():
    # one row on one expert: 16 cluster tiles of 128 x 128, 32 CTAs of 64 rows each on
    # their own SMs: one wave of 64-row tiles, not of 128-row ones
    cal = calibrations.load_calibration("none", H100, loader.load_stack("torch-fused"))
    compute = step_costs([_one_call(1.0)], H100, cal)[0].compute_s[0]
    per_sm = H100.matmul_peak_flops_per_s("bf16") / H100.sm_count
    assert compute == pytest.approx(2.0 * 64 * 128 * 768
                                    / (per_sm * cal.physics.tensor_efficiency), rel=1e-6)


def test_profiled_index_adds_are_read_and_fitted(tmp_path):
    # a synthetic profile at a known rate: the fit finds it back, SmallIndex calls
    # (16 slots or fewer: the stack's per-slot walk prices them) and other kernels left
    # out, one group per model
    from gpusim.calibration.moe_fit import read_index_add_micro, with_atomics
    st = loader.load_stack("torch-fused")
    cal = calibrations.load_calibration("none", H100, st)
    truth = cal.replace({"physics.atomic_add_s_per_element": 5e-12})
    (tmp_path / "moe").mkdir()
    lines = ["model,mode,batch,ctx,q,kernel_name,count,total_us,stack"]
    from gpusim.calibration.moe_fit import _adds, _slot_kernel
    model = loader.load_model("qwen3-30b-a3b")
    for tokens in (4, 64, 512, 2048):
        k = _slot_kernel(model, st, np.array([tokens * 8.0]), _adds)
        us = 1e6 * step_costs([k], H100, truth)[0].seconds[0]
        lines.append(f"qwen3-30b-a3b,prefill,1,0,{tokens},void at::native::"
                     f"indexFuncLargeIndex<c10::BFloat16>(x),48,{48 * us}")
        lines.append(f"qwen3-30b-a3b,prefill,1,0,{tokens},other_kernel,48,1000")
    lines.append("qwen3-30b-a3b,decode,2,1024,1,void at::native::indexFuncSmallIndex<x>,48,470")
    (tmp_path / "moe" / "kernels.csv").write_text("\n".join(lines) + "\n")
    (group,) = read_index_add_micro(tmp_path, _models(), st)
    assert group.models == {"qwen3-30b-a3b"}
    np.testing.assert_allclose(group.kernel.atomic_elements, [4 * 8 * 2048, 64 * 8 * 2048,
                                                              512 * 8 * 2048, 2048 * 8 * 2048])
    fitted = with_atomics(cal, H100, [group])
    assert fitted.physics.atomic_add_s_per_element == pytest.approx(5e-12, rel=1e-3)
    # no profiled calls: the prior
    assert with_atomics(fitted, H100, []).physics.atomic_add_s_per_element == \
        pytest.approx(7.7e-12)


def test_the_two_dies_atomic_rates_agree_on_their_own_profiles():
    # the H100's and the H200's index_add_ calls fitted each on their own profiles (the
    # rest of each kernel priced by the shipped physics): one L2 (HBM 43% apart), so
    # one rate; every call within 15% of it
    from gpusim.calibration.moe_fit import read_index_add_micro, with_atomics
    st = loader.load_stack("torch-fused")
    models = [loader.load_model(m) for m in ("qwen3-30b-a3b", "mixtral-8x7b-8l",
                                             "qwen1.5-moe-a2.7b")]
    rates = []
    for name in ("h100-sxm", "h200"):
        gpu = loader.load_gpu(name)
        adds = read_index_add_micro(loader.ROOT / "validation" / "data" / name, models, st)
        assert sum(len(g.measured_s) for g in adds) >= 9
        shipped = calibrations.load_calibration(
            str(calibrations.CALIBRATIONS_DIR / f"{name}.yaml"), gpu, st)
        cal = with_atomics(shipped, gpu, adds)
        rates.append(cal.physics.atomic_add_s_per_element)
        for g in adds:
            ratio = step_costs([g.kernel], gpu, cal)[0].seconds / g.measured_s
            assert np.all(np.abs(ratio - 1.0) < 0.15), (name, sorted(g.models), ratio)
    assert rates[0] == pytest.approx(rates[1], rel=0.03)


@pytest.mark.parametrize("name, probe", [("h100-sxm", "probe_2026-12-07_s23"),
                                         ("h200", "probe_2026-12-07_s24")])
def test_the_index_add_probe_no_fit_reads_is_priced_within_15_percent(name, probe):
    # validation/data/<gpu>/<probe>/index_add/: index_add_ of T tokens x top-k slots of
    # width 2048 and 4096 (k = 1, 2, 8: no collisions to eight-way), which no fit reads
    # (H100 session 23, H200 session 24); each GPU's shipped rate, fitted on the MoE
    # models' profiled calls, prices the LargeIndex calls (past 16 slots) whatever the
    # top-k
    import csv

    from gpusim.calibration.moe_fit import _adds, _slot_kernel
    gpu, st = loader.load_gpu(name), loader.load_stack("torch-fused")
    cal = calibrations.load_calibration(
        str(calibrations.CALIBRATIONS_DIR / f"{name}.yaml"), gpu, st)
    by_width = {2048: loader.load_model("qwen3-30b-a3b"),
                4096: loader.load_model("mixtral-8x7b-8l")}
    path = loader.ROOT / "validation" / "data" / name / probe / "index_add" / "index_add.csv"
    rows = [r for r in csv.DictReader(path.read_text().splitlines())
            if "indexFuncLargeIndex" in r["kernel"] and r["dtype"] == "bfloat16"]
    assert len(rows) >= 40 and {r["topk"] for r in rows} == {"1", "2", "8"}
    ratios = []
    for r in rows:
        k = _slot_kernel(by_width[int(r["hidden"])], st, np.array([float(r["slots"])]), _adds)
        busy = step_costs([k], gpu, cal)[0].seconds[0] - cal.physics.launch_gap_s
        ratios.append(busy / (float(r["median_us"]) * 1e-6))
    err = np.abs(np.array(ratios) - 1.0)
    assert err.max() < 0.15 and err.mean() < 0.08
