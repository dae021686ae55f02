"""Quantized and expert GEMM families (cost.quant, cost.moe): their physics on hand-built
kernels, the fp8 stack's padding, where int4 and fp8 stop beating bf16, and how their
calibration fields enter a fit only when measured steps run their kernels."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from gpusim.calibration import space
from gpusim.cli import main
from gpusim.cost import Calibration, kernel_cost, tensor_efficiency
from gpusim.cost.gemm_families import GEMM_FAMILIES, gemm_family
from gpusim.cost.pointwise import reduction_s
from gpusim.cost.quant import TINYGEMM_ROWS
from gpusim.io import calibrations, loader
from gpusim.kernels import build_kernels
from gpusim.kernels.quant import GEMM_FAMILIES as TAKES
from gpusim.kernels.quant import for_stack, whole_tensor_splits, whole_tensor_walk
from gpusim.platform import Platform
from gpusim.step.crossover import crossover

GPU = loader.load_gpu("h100-sxm")
MODEL = loader.load_model("llama-3.1-8b")


def _kernels(stack: str, batch: list[float], model=MODEL) -> dict:
    st = loader.load_stack(stack)
    return {k.name: k for k in build_kernels(for_stack(model, st), st, "decode",
                                             np.array(batch), 1024, 1)}


def test_the_kernel_and_cost_registries_name_the_same_families() -> None:
    assert set(TAKES) == {"cublas", *GEMM_FAMILIES}
    with pytest.raises(ValueError, match="known"):
        gemm_family("marlin")


def test_tinygemm_repeats_its_pass_every_16_token_rows() -> None:
    ks = _kernels("torch-int4", [1.0, 16.0, 17.0, 64.0])
    qkv = ks["qkv_proj"]
    assert qkv.gemm.family == "tinygemm" and qkv.dtype == "bf16"
    assert qkv.gemm.w_dtype == "int4"
    n, k = qkv.gemm.n, qkv.gemm.k
    assert qkv.weight_bytes[0] == n * k / 2 + n * (k // 128) * 4
    c = kernel_cost(qkv, GPU, Calibration())
    passes = np.ceil(np.array([1.0, 16, 17, 64]) / TINYGEMM_ROWS)
    assert c.compute_s / c.compute_s[0] == pytest.approx(passes)
    # each pass: 16 rows of MMA at the bf16 peak and 2 CUDA-core flops per weight
    per_pass = n * k * (32 / GPU.matmul_peak_flops_per_s("bf16") + 2 / GPU.fp32_flops_per_s)
    assert c.compute_s[0] == pytest.approx(per_pass)
    # streams int4 weights once (ideal: no re-reads), a quarter of bf16's bytes, and
    # each 8-column CTA loads its token row of the activation from L2 (ideal: at HBM's
    # rate, the ideal calibration's L2 ratio being 1)
    l2 = 1 * k * 2.0 * n / 8
    assert c.memory_s[0] == pytest.approx((qkv.bytes[0] + l2)
                                          / GPU.hbm_bandwidth_bytes_per_s)


def test_tinygemm_overlaps_its_weight_stream_with_its_activation_reads() -> None:
    qkv = _kernels("torch-int4", [1.0, 8.0, 64.0])["qkv_proj"]
    n, k = qkv.gemm.n, qkv.gemm.k
    hbm = qkv.bytes / GPU.hbm_bandwidth_bytes_per_s
    l2 = np.array([1.0, 8.0, 64.0]) * k * 2.0 * n / 8 / GPU.hbm_bandwidth_bytes_per_s

    def memory(e: float) -> np.ndarray:
        cal = Calibration().replace({"gemm.tinygemm.l2_overlap_exponent": e})
        return kernel_cost(qkv, GPU, cal).memory_s

    # exponent 1: the two streams add; higher: they overlap, towards the longer one
    assert memory(1.0) == pytest.approx(hbm + l2)
    assert memory(2.0) == pytest.approx(np.hypot(hbm, l2))
    assert memory(64.0) == pytest.approx(np.maximum(hbm, l2), rel=0.02)
    # the overlap takes most off where the two are alike, little where one dominates
    saved = 1.0 - memory(2.0) / memory(1.0)
    assert saved[0] > saved[2]


def test_scaled_mm_runs_at_the_fp8_rate_on_one_byte_weights() -> None:
    fp8 = _kernels("torch-fp8", [4096.0])["gate_up_proj"]
    bf16 = _kernels("torch-fused", [4096.0])["gate_up_proj"]
    assert fp8.dtype == "fp8" and fp8.gemm.x_dtype == "fp8"
    assert fp8.weight_bytes[0] == bf16.weight_bytes[0] / 2 + 4
    cal = Calibration()
    ratio = GPU.matmul_peak_flops_per_s("fp8") / GPU.matmul_peak_flops_per_s("bf16")
    assert kernel_cost(fp8, GPU, cal).compute_s == pytest.approx(
        kernel_cost(bf16, GPU, cal).compute_s / ratio)


def test_fp8_pads_tokens_to_16_and_pays_the_pad_kernels_only_where_it_pads() -> None:
    # the shipped torch-fp8 describes torch 2.11, which pads nothing; a run that pads
    # (--fp8-pad-m 16) is the file with pad_tokens_to: 16 on its quantized ops
    st = loader.load_stack("torch-fp8")
    assert all(op.pad_tokens_to == 1 for op in st.layer)
    layer = tuple(op.model_copy(update={"pad_tokens_to": 16})
                  if "_act_quant" in op.name or op.family == "scaled_mm" else op
                  for op in st.layer)
    padded = st.model_copy(update={"name": "torch-fp8-pad16", "layer": layer})
    ks = {k.name: k for k in build_kernels(for_stack(MODEL, padded), padded, "decode",
                                           np.array([1.0, 15.0, 16.0, 17.0]), 1024, 1)}
    quant, gemm = ks["qkv_act_quant"], ks["qkv_proj"]
    assert sum(k.launches for n, k in ks.items() if n.startswith("qkv_act_quant")) == 8
    assert quant.flops == pytest.approx(np.array([16, 16, 16, 32.0]) * 4096)
    assert gemm.gemm.m == pytest.approx([16, 16, 16, 32])
    cal = Calibration().replace({"physics.kernel_fixed_cost_s": 2e-6,
                                 "physics.launch_gap_s": 1e-6})
    pads = kernel_cost(gemm, GPU, cal).fixed_s - 2e-6   # less the GEMM's own launch
    assert pads[2] == 0.0                               # 16 tokens: nothing to pad
    # two pad kernels of 3 us each and their bytes, where the tokens were padded
    assert pads[[0, 1, 3]] == pytest.approx(6e-6, rel=0.05)


def test_fp8_activation_quantization_is_its_eight_profiled_kernels() -> None:
    # per projection: abs + amax, three one-element kernels on the scale, x / scale on
    # PyTorch's non-vectorised casting path, clamp_ + cast (quant_forward's 8 kernels)
    st = loader.load_stack("torch-fp8")
    ks = {k.name: k for k in build_kernels(for_stack(MODEL, st), st, "prefill",
                                           np.array([1.0]), 0, 512)}
    for proj in ("qkv", "o", "gate_up", "down"):
        quant = [k for n, k in ks.items() if n.startswith(f"{proj}_act_quant")]
        assert sum(k.launches for k in quant) == 8
        assert sum(float(k.strided_launches[0]) for k in quant) == 2   # amax and div
    div, cast = ks["down_act_quant_div"], ks["down_act_quant"]
    # the division is bound by its instructions per element, not by memory
    assert div.flops[0] == 250 * 512 * 14336 and cast.strided_launches[0] == 0
    # per element of the activation: abs 4 + amax 2, div 4, clamp 4 + cast 3
    assert (ks["down_act_quant_amax"].bytes + div.bytes + cast.bytes)[0] == pytest.approx(
        17 * 512 * 14336)
    assert ks["down_act_quant_scale"].flops[0] == 1.0   # one element, whatever the tokens


def test_fp8_prefill_quantization_costs_what_the_h100_profile_shows() -> None:
    # Llama 3.1 8B, 512-token prefill: the 8 kernels x 4 projections x 32 layers took
    # 5.08 ms on H100 (validation/data/h100-sxm/stacks/torch-fp8/kernels.csv, less the
    # GEMMs), 1.97 ms of it the division; one op at one blended rate priced 3.98 ms
    st = loader.load_stack("torch-fp8")
    cal = calibrations.load_calibration(
        str(calibrations.CALIBRATIONS_DIR / "h100-sxm.yaml"), GPU, st)
    ks = build_kernels(for_stack(MODEL, st), st, "prefill", np.array([1.0]), 0, 512)
    busy = {k.name: (kernel_cost(k, GPU, cal).seconds[0]
                     - k.launches * cal.physics.launch_gap_s) * k.repeat for k in ks}
    quant = sum(t for n, t in busy.items() if "_act_quant" in n)
    div = sum(t for n, t in busy.items() if n.endswith("_act_quant_div"))
    assert quant == pytest.approx(5.08e-3, rel=0.15)
    assert div == pytest.approx(1.97e-3, rel=0.15)


def test_fp8_amax_splits_over_ctas_from_131072_elements_and_pays_its_finish() -> None:
    # PyTorch's whole-tensor reduce: one CTA below 256 values a thread (131072 elements),
    # split beyond, with a memset and a finish through global memory
    ks = _kernels("torch-fp8", [16.0, 32.0])
    qkv, down = ks["qkv_act_quant_amax"], ks["down_act_quant_amax"]
    # qkv's input: 4096 x 16 = 65536 elements (one CTA), 4096 x 32 = 131072 (split);
    # down's: 14336 x 16 already split
    def splits(k):  # type: ignore[no-untyped-def]
        return (whole_tensor_splits(k.reduced_elements) * k.tensor_reductions).tolist()

    assert splits(qkv) == [0.0, 1.0]
    assert splits(down) == [1.0, 1.0]
    cal = calibrations.load_calibration(
        str(calibrations.CALIBRATIONS_DIR / "h100-sxm.yaml"), GPU, loader.load_stack("torch-fp8"))
    ph = cal.physics
    bare = kernel_cost(dataclasses.replace(down, reduced_elements=None), GPU, cal).seconds
    walk = reduction_s(np.stack([np.ones(2), whole_tensor_walk(down.reduced_elements)]), ph)
    with_split = kernel_cost(down, GPU, cal).seconds - walk
    # one memset kernel (fixed cost, first bytes' latency, the gap before it) and two
    # more round trips to HBM
    assert with_split - bare == pytest.approx(
        ph.kernel_fixed_cost_s + ph.launch_gap_s + 3 * ph.dram_latency_s)
    # no other op of the stack reduces a whole tensor
    assert all(k.reduced_elements is None for n, k in ks.items() if not n.endswith("_amax"))


def test_fp8_division_costs_the_same_on_h200_as_on_h100() -> None:
    # profiled: 61.5 us a layer on the H100 and 62.1 on the H200 for a 512-token 8B
    # prefill, although the H200 has 43% more HBM bandwidth (the SMs bound it)
    st = loader.load_stack("torch-fp8")
    ks = [k for k in build_kernels(for_stack(MODEL, st), st, "prefill", np.array([1.0]), 0,
                                   512) if k.name.endswith("_act_quant_div")]
    per_layer = {}
    for name in ("h100-sxm", "h200"):
        gpu = loader.load_gpu(name)
        cal = calibrations.load_calibration(
            str(calibrations.CALIBRATIONS_DIR / f"{name}.yaml"), gpu, st)
        per_layer[name] = sum(float(kernel_cost(k, gpu, cal).seconds[0]) for k in ks)
    assert per_layer["h200"] == pytest.approx(per_layer["h100-sxm"], rel=0.05)
    assert per_layer["h200"] == pytest.approx(62.1e-6, rel=0.10)


def test_int8_weight_only_dequantizes_beyond_one_token() -> None:
    st = loader.load_stack("torch-fused")
    layer = tuple(op.model_copy(update={"family": "int8wo"}) if op.op == "gemm" else op
                  for op in st.layer)
    int8 = st.model_copy(update={"name": "int8wo-test", "layer": layer})
    m = for_stack(MODEL, int8, weight_dtype="int8")
    ks = {k.name: k for k in build_kernels(m, int8, "decode", np.array([1.0, 2.0]), 64, 1)}
    o = ks["o_proj"]
    assert o.weight_bytes[0] == 4096 * 4096 + 2 * 4096
    c = kernel_cost(o, GPU, Calibration())
    assert c.fixed_s[0] == 0.0 and c.fixed_s[1] > 0.0   # dequantize + scale kernels
    assert c.seconds[1] > 2 * c.seconds[0]              # the weight moved three times


def test_grouped_gemm_rereads_a_spilling_experts_weight() -> None:
    # Mixtral, 8 layers: 384 tokens give each expert ~96 rows (one 128-row tile, the
    # weight read once); 512 give ~128, about half the experts spill into a second
    # tile, which streams the weight again: weight traffic x ~1.48 (measured on H100:
    # 11.2 -> 15.0 ms, validation/data/h100-sxm/moe/steps.csv)
    m, st = loader.load_model("mixtral-8x7b-8l"), loader.load_stack("torch-fused")
    cal = Calibration()
    mem = {}
    for q in (384, 512):
        k = {k.name: k for k in build_kernels(m, st, "prefill", [1.0], 0, q)}["experts_down"]
        mem[q] = float(kernel_cost(k, GPU, cal).memory_s[0])
        w = float(k.weight_bytes[0])
        tiles = float(k.gemm.row_tiles(128.0)[0])
        assert mem[q] * GPU.hbm_bandwidth_bytes_per_s == pytest.approx(
            k.bytes[0] + w * (tiles / float(k.gemm.touched[0]) - 1.0), rel=1e-3)
    assert mem[512] / mem[384] > 1.4


def test_grouped_gemm_tiles_are_pytorchs_pick() -> None:
    # GroupMM.cu on sm90: rows per group (slots / experts) or n at most 128 -> 64 x 128
    # CTA tiles in clusters of two along M (128 rows a cluster); else 128 x 256 tiles,
    # clusters of 256 rows. Mixtral: 512 tokens x 2 / 8 experts = 128 rows per group,
    # 1024 tokens = 256
    from gpusim.cost.moe import LARGE_TILE_M, LARGE_TILE_N, SMALL_TILE_N

    m, st = loader.load_model("mixtral-8x7b"), loader.load_stack("torch-fused")
    cal = Calibration()
    per_sm = GPU.matmul_peak_flops_per_s("bf16") / GPU.sm_count
    for q, tile_m, tile_n in ((512, 128, SMALL_TILE_N), (1024, LARGE_TILE_M, LARGE_TILE_N)):
        k = {k.name: k for k in build_kernels(m, st, "prefill", [1.0], 0, q)}["experts_down"]
        g = k.gemm
        tiles = g.row_tiles(float(tile_m))
        # each cluster tile is two CTAs of half its rows, one per SM, in waves
        waves = np.ceil(2 * tiles * np.ceil(g.n / tile_n) / GPU.sm_count)
        assert kernel_cost(k, GPU, cal).compute_s == pytest.approx(
            waves * 2.0 * (tile_m / 2) * tile_n * g.k / per_sm), q


def test_grouped_gemm_pays_its_prepare_kernel() -> None:
    # prepare_grouped_gemm_data: one more small kernel before every grouped GEMM
    m, st = loader.load_model("qwen3-30b-a3b"), loader.load_stack("torch-fused")
    k = {k.name: k for k in build_kernels(m, st, "decode", [1.0], 1024, 1)}["experts_down"]
    cal = Calibration().replace({"physics.kernel_fixed_cost_s": 2e-6,
                                 "physics.launch_gap_s": 1e-6,
                                 "physics.gemm_fixed_cost_s": 3e-6})
    # its own launch (2), cuBLAS-like fixed cost (3), the prepare kernel (2 + 1 gap)
    assert kernel_cost(k, GPU, cal).fixed_s[0] == pytest.approx(8e-6)


def test_grouped_gemm_time_grows_with_the_experts_touched() -> None:
    m = loader.load_model("qwen3-30b-a3b")
    st = loader.load_stack("torch-fused")
    b = np.array([1.0, 2.0, 8.0, 32.0])
    ks = {k.name: k for k in build_kernels(m, st, "decode", b, 1024, 1)}
    c = kernel_cost(ks["experts_gate_up"], GPU, Calibration())
    assert np.all(np.diff(c.seconds) > 0)
    assert c.memory_s == pytest.approx(ks["experts_gate_up"].bytes
                                       / GPU.hbm_bandwidth_bytes_per_s)


def test_a_family_gemm_reports_its_own_tensor_efficiency() -> None:
    cal = Calibration().replace({"physics.tensor_efficiency": 0.8,
                                 "gemm.tinygemm.tensor_efficiency_ratio": 0.25})
    ks = _kernels("torch-int4", [1.0])
    assert tensor_efficiency(ks["qkv_proj"], cal) == pytest.approx(0.2)
    assert tensor_efficiency(ks["lm_head"], cal) == pytest.approx(0.8)


# ------------------------------------------------------------------ where each stops winning
def _platform(stack: str, cal: Calibration | None = None) -> Platform:
    st = loader.load_stack(stack)
    return Platform(GPU, st, cal or calibrations.load_calibration("auto", GPU, st))


def test_int4_wins_at_batch_1_and_stops_winning_as_the_batch_grows() -> None:
    table = crossover(_platform("torch-fused"), [_platform("torch-int4")], MODEL)
    int4 = table.others[0]
    assert int4.speedup[0] > 1.5                  # a quarter of the bytes at batch 1
    assert int4.stops_at is not None and int4.stops_at <= 256
    assert int4.speedup[-1] < 1.0


def test_tinygemm_at_mma_sync_rates_loses_by_batch_64() -> None:
    # tinygemm wins at batch 1, where it streams int4 weights, and loses from batch 16
    st = loader.load_stack("torch-int4")
    # measured on H100 (validation/data/h100-sxm/stacks/torch-int4/): 1.65x at batch 1,
    # 1.05x at 8, 0.74x at 16, 0.29x at 64; what loses is the activation re-read by
    # every 8-column CTA (cost.quant), fitted near the GPU's L2 rate
    cal = calibrations.load_calibration("auto", GPU, st).replace({
        "gemm.tinygemm.activation_l2_ratio": 0.94, "gemm.tinygemm.bandwidth_ratio": 1.2,
        "gemm.tinygemm.dequant_flops_per_element": 4.0})
    int4 = crossover(_platform("torch-fused"), [Platform(GPU, st, cal)], MODEL).others[0]
    assert int4.speedup[0] > 1.3 and int4.wins_up_to == 8 and int4.stops_at == 16
    assert int4.speedup[6] < 0.4                   # batch 64: over 2.5x slower


def test_crossover_cli(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["predict", "--gpu", "h100-sxm", "--model", "llama-3.1-8b", "--stack",
               "torch-fused", "--crossover", "torch-fp8,torch-int4", "--format", "json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    doc = json.loads(out)
    assert [s["stack"] for s in doc["summary"]] == ["torch-fp8", "torch-int4"]
    assert [r["batch"] for r in doc["batches"]] == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    rc = main(["predict", "--gpu", "h100-sxm", "--model", "llama-3.1-8b", "--crossover",
               "torch-int4", "--weight-dtype", "int4"])
    _, err = capsys.readouterr()
    assert rc == 2 and "--crossover" in err


# ------------------------------------------------------------------ calibration
def test_gemm_family_fields_enter_the_fit_only_with_their_kernels() -> None:
    assert space.graph_space(["flash_decode", "fa2"]) == space.graph_space(
        ["flash_decode", "fa2"], [])
    with_int4 = space.graph_space(["flash_decode"], ["tinygemm"])
    names = [v.name for v in with_int4]
    assert names[-len(GEMM_FAMILIES["tinygemm"].FIT):] == [
        f"gemm.tinygemm.{f}" for f in GEMM_FAMILIES["tinygemm"].FIT]
    x = space.start(with_int4, Calibration())
    cal = space.apply(Calibration(), with_int4, x)
    assert cal.gemm.tinygemm.dequant_flops_per_element == 8.0    # the FIT start
    assert cal.is_set("gemm.tinygemm.reread_fraction")
    assert not Calibration().is_set("gemm.tinygemm.reread_fraction")


def test_every_family_field_has_fit_bounds_inside_its_range() -> None:
    for fam in GEMM_FAMILIES.values():
        for field, (lo, hi, start, unit) in fam.FIT.items():
            assert field in fam.Params.model_fields
            assert lo <= start <= hi and unit > 0
            fam.Params(**{field: lo})
            fam.Params(**{field: hi})


def test_a_calibration_file_holds_gemm_family_fields() -> None:
    from gpusim.cost import CalibrationSet

    cset = CalibrationSet.model_validate({"gpu": "h100-sxm", "stacks": {"torch-hf": {}},
                                          "gemm": {"scaled_mm": {"fixed_s": 1e-6}}})
    cal = cset.for_stack(loader.load_stack("torch-hf"))
    assert cal.gemm.scaled_mm.fixed_s == 1e-6
    assert CalibrationSet.of(cal, {}).gemm.scaled_mm.fixed_s == 1e-6


def test_grouped_gemm_overlaps_as_its_profile_shows() -> None:
    # its own overlap exponent (12), not the GPU's fitted one: within 2^(1/12) of the
    # longer of memory and arithmetic, where the GPU's exponent 3 would add up to 26%
    from gpusim.cost.moe import GROUPED_OVERLAP_EXPONENT

    m, st = loader.load_model("mixtral-8x7b-8l"), loader.load_stack("torch-fused")
    cal = Calibration().replace({"physics.overlap_exponent": 3.0})
    k = {k.name: k for k in build_kernels(m, st, "prefill", [1.0], 0, 768)}[
        "experts_gate_up"]
    c = kernel_cost(k, GPU, cal)
    hi = max(float(c.memory_s[0]), float(c.compute_s[0]))
    lo = min(float(c.memory_s[0]), float(c.compute_s[0]))
    p = GROUPED_OVERLAP_EXPONENT
    want = float(c.fixed_s[0]) + hi * (1 + (lo / hi) ** p) ** (1 / p)
    assert float(c.seconds[0]) - k.launches * cal.physics.launch_gap_s == pytest.approx(want)


def test_large_grouped_kernel_reads_each_weight_once() -> None:
    # 1024 Mixtral tokens: 256 rows an expert, the 256-row kernel, about 1.5 tiles an
    # expert, yet the weight is streamed once (its second tiles hit L2: the profile)
    m, st = loader.load_model("mixtral-8x7b-8l"), loader.load_stack("torch-fused")
    k = {k.name: k for k in build_kernels(m, st, "prefill", [1.0], 0, 1024)}["experts_down"]
    assert float(k.gemm.row_tiles(256.0)[0]) > 1.4 * float(k.gemm.touched[0])
    c = kernel_cost(k, GPU, Calibration())
    assert float(c.memory_s[0]) * GPU.hbm_bandwidth_bytes_per_s == pytest.approx(
        float(k.bytes[0]), rel=1e-3)


def test_a_tensor_parallel_rank_reduces_its_share_of_the_activation() -> None:
    # tp=2: the down projection's input is half the intermediate per rank, 7168 x 16 =
    # 114688 elements: one CTA walks them, no split (unsharded: 229376, split); the qkv
    # projection's input (hidden) is every rank's whole
    from gpusim.kernels.parallel import shard

    st = loader.load_stack("torch-fp8")
    model = for_stack(MODEL, st)
    one = {k.name: k for k in build_kernels(model, st, "decode", np.array([16.0]), 1024, 1)}
    two = {k.name: k for k in shard(list(one.values()), model, st, 2)}
    down1, down2 = one["down_act_quant_amax"], two["down_act_quant_amax"]
    assert whole_tensor_splits(down1.reduced_elements).tolist() == [1.0]
    assert whole_tensor_splits(down2.reduced_elements).tolist() == [0.0]
    assert down2.reduced_elements.tolist() == [7168.0 * 16]
    assert whole_tensor_walk(down2.reduced_elements).tolist() == [7168.0 * 16]  # one CTA
    qkv1, qkv2 = one["qkv_act_quant_amax"], two["qkv_act_quant_amax"]
    assert qkv2.reduced_elements.tolist() == qkv1.reduced_elements.tolist()
    assert (whole_tensor_walk(qkv2.reduced_elements).tolist()
            == whole_tensor_walk(qkv1.reduced_elements).tolist())
