"""The house's promises: what each change touches, dtypes priced at their own rates,
calibrations keyed by GPU and stack, one memory planner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import toy_gpu

from gpusim.capacity import memory_plan
from gpusim.cli import main
from gpusim.cost import Calibration, CalibrationSet, kernel_cost
from gpusim.cost.attention import fa2
from gpusim.errors import ConfigError, FieldError
from gpusim.io import calibrations, loader
from gpusim.kernels import build_kernels, gemm_kernel
from gpusim.platform import Platform
from gpusim.specs import TensorFlops
from gpusim.step import predict

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "stacks" / "torch-hf.yaml"


def _stack_file(tmp_path: Path, name: str, decode_family: str) -> Path:
    """The reference stack under another name, decoding with ``decode_family``."""
    data = yaml.safe_load(REFERENCE.read_text(encoding="utf-8"))
    data["name"] = name
    data["attention"] = {**data["attention"], "decode": decode_family}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def test_a_stack_file_alone_picks_another_decode_attention_family(tmp_path, h100, models):
    # data only: the same forward decoding with FlashAttention-2's kernel (which packs
    # a KV group's query heads into one tile when q = 1) instead of cuDNN's
    path = _stack_file(tmp_path, "torch-fa2-decode", "fa2")
    stack = loader.load_stack(str(path))
    ref = loader.load_stack("torch-bf16-static-kv")
    ks = build_kernels(models["llama-3.1-8b"], stack, "decode", [1, 64], [1024, 8192], 1)
    attn = next(k for k in ks if k.attention is not None)
    assert attn.attention.family == "fa2"
    # the shipped calibration (FA2's fixed costs per launch and split are fitted)
    cal = calibrations.load_calibration("auto", h100, ref)
    ours = predict(Platform(h100, stack, cal), models["llama-3.1-8b"], "decode",
                   [1, 64], [1024, 8192], 1)
    theirs = predict(Platform(h100, ref, cal), models["llama-3.1-8b"], "decode",
                     [1, 64], [1024, 8192], 1)
    assert not np.allclose(ours.seconds, theirs.seconds)
    # everything but the attention family is the same, kernel for kernel
    for a, b in zip(ours.kernels, theirs.kernels, strict=True):
        assert (a.name, a.launches) == (b.name, b.launches)
        np.testing.assert_array_equal(a.bytes, b.bytes)
        assert (a.attention is None) == (b.attention is None)


def test_an_unknown_attention_family_is_refused_with_its_line(tmp_path, capsys):
    path = _stack_file(tmp_path, "torch-nope", "paged_nope")
    rc = main(["predict", "--gpu", "h100-sxm", "--model", "llama-3.2-1b", "--stack",
               str(path), "--calibration", "none", "--format", "json"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    line = next(i + 1 for i, t in enumerate(path.read_text().splitlines())
                if "paged_nope" in t)
    assert f"{path}:{line}: attention.decode: unknown attention family" in err


def test_changing_the_verify_model_is_one_module(monkeypatch, h100, models, stack):
    # the verify kernel's cost lives in cost/attention/fa2.py: replacing its schedule
    # there changes verify steps and nothing else
    cal = Calibration(gpu=h100.name)
    plat = Platform(h100, stack, cal)
    m = models["llama-3.1-8b"]
    before = {mode: predict(plat, m, mode, 16, 0 if mode == "prefill" else 2048,
                            {"decode": 1, "verify": 4, "prefill": 512}[mode]).seconds
              for mode in ("decode", "verify", "prefill")}
    orig = fa2.schedule
    monkeypatch.setattr(fa2, "schedule", lambda *a: (orig(*a)[0], 2.0 * orig(*a)[1]))
    after = {mode: predict(plat, m, mode, 16, 0 if mode == "prefill" else 2048,
                           {"decode": 1, "verify": 4, "prefill": 512}[mode]).seconds
             for mode in before}
    assert after["verify"][0] > before["verify"][0]
    assert after["decode"][0] == before["decode"][0]
    assert after["prefill"][0] == before["prefill"][0]


def test_a_gpu_is_a_file(tmp_path, capsys):
    # data only: a new GPU from its datasheet numbers, each with its source
    h100 = yaml.safe_load((REPO / "hardware" / "h100-sxm.yaml").read_text(encoding="utf-8"))
    h100["name"] = "my-gpu"
    h100["hbm_bandwidth_bytes_per_s"]["value"] = 2 * h100["hbm_bandwidth_bytes_per_s"]["value"]
    path = tmp_path / "my-gpu.yaml"
    path.write_text(yaml.safe_dump(h100, sort_keys=False), encoding="utf-8")
    outs = []
    for gpu in ("h100-sxm", str(path)):
        rc = main(["predict", "--gpu", gpu, "--model", "llama-3.1-8b", "--batch", "1",
                   "--calibration", "none", "--format", "json"])
        assert rc == 0
        outs.append(yaml.safe_load(capsys.readouterr().out)["step_ms"])
    assert outs[1] < 0.6 * outs[0]   # memory-bound: twice the bandwidth, ~half the time


def test_fp32_and_fp16_gemms_run_at_their_own_rates():
    gpu = toy_gpu(fp32_flops_per_s=25e12, tensor_flops_per_s=TensorFlops(bf16=1e15, fp16=1e15))
    cal = Calibration()
    m = np.array([4096.0])
    bf16 = kernel_cost(gemm_kernel(m, 8192, 8192, "bf16"), gpu, cal)
    fp32 = kernel_cost(gemm_kernel(m, 8192, 8192, "fp32"), gpu, cal)
    fp16 = kernel_cost(gemm_kernel(m, 8192, 8192, "fp16"), gpu, cal)
    # compute-bound: fp32 matmuls run on the CUDA cores (toy: 25 TFLOP/s vs 1 PFLOP/s)
    assert fp32.compute_s[0] == pytest.approx(40 * bf16.compute_s[0])
    assert fp16.compute_s[0] == pytest.approx(bf16.compute_s[0])
    assert fp32.bytes[0] == pytest.approx(2 * bf16.bytes[0])


def test_an_fp32_model_is_priced_as_fp32(h100, models, stack):
    bf16 = models["llama-3.2-1b"]
    fp32 = bf16.model_copy(update={"torch_dtype": "float32"})
    plat = Platform(h100, stack, Calibration(gpu=h100.name))
    a = predict(plat, bf16, "prefill", 8, 0, 2048)
    b = predict(plat, fp32, "prefill", 8, 0, 2048)
    # GEMMs at 67 vs 989 TFLOP/s on the H100 datasheet (15x), attention at its own
    assert b.by_op["gate_up_proj"].seconds[0] > 10 * a.by_op["gate_up_proj"].seconds[0]
    assert b.seconds[0] > 5 * a.seconds[0]
    assert all(k.dtype == "fp32" for k in b.kernels)


def test_a_calibration_for_another_gpu_or_stack_is_refused(tmp_path, h100):
    stack = loader.load_stack()
    h200_file = REPO / "validation" / "calibrations" / "h200.yaml"
    with pytest.raises(ConfigError, match="for h200, not h100-sxm"):
        calibrations.load_calibration(str(h200_file), h100, stack)
    other = _stack_file(tmp_path, "torch-other", "flash_decode")
    with pytest.raises(ConfigError, match="no host costs for torch-other"):
        calibrations.load_calibration("auto", h100, loader.load_stack(str(other)))
    # a stack that says whose host costs stand in for its own is priced, and says so
    data = yaml.safe_load(other.read_text())
    data["host_costs_from"] = "torch-bf16-static-kv"
    other.write_text(yaml.safe_dump(data, sort_keys=False))
    loader._stack_cached.cache_clear()
    cal = calibrations.load_calibration("auto", h100, loader.load_stack(str(other)))
    assert cal.host_from == "torch-hf" and cal.stack == "torch-other"
    with pytest.raises(FieldError, match="cannot price h100-sxm"):
        Platform(h100, stack, Calibration(gpu="h200"))


def test_calibration_files_round_trip(tmp_path, h100):
    cset = calibrations.calibration_set_from_yaml(
        REPO / "validation" / "calibrations" / "h100-sxm.yaml")
    path = tmp_path / "h100-sxm.yaml"
    path.write_text(yaml.safe_dump(cset.model_dump(), sort_keys=False))
    assert calibrations.calibration_set_from_yaml(path) == cset
    assert isinstance(cset, CalibrationSet) and "torch-hf" in cset.stacks


def test_one_memory_planner_for_serving_and_speculation(h100, models):
    from gpusim.serving.kv_cache import kv_budget
    from gpusim.speculative.acceptance import IidAcceptance
    from gpusim.speculative.drafts import ModelDraft
    from gpusim.speculative.iteration import Speculation, memory_plan_of
    from gpusim.speculative.trees import TokenTree

    target, draft = models["llama-3.1-8b"], models["llama-3.2-1b"]
    plan = memory_plan(h100, target, 0.1)
    budget = kv_budget(h100, target, 16, 0.1)
    assert budget.kv_capacity_bytes == plan.kv_capacity_bytes
    assert budget.total_blocks == int(plan.kv_capacity_bytes // (plan.kv_bytes_per_token * 16))
    spec = Speculation(target, ModelDraft(draft), TokenTree.chain(4), IidAcceptance(0.8))
    both = memory_plan_of(spec, h100, 0.1)
    assert both.weight_bytes == pytest.approx(target.weight_bytes + draft.weight_bytes)
    assert both.kv_bytes_per_token == pytest.approx(
        target.kv_bytes_per_token + draft.kv_bytes_per_token)


def test_predict_refuses_a_shape_whose_kv_exceeds_hbm(capsys):
    rc = main(["predict", "--gpu", "h100-sxm", "--model", "llama-3.1-8b", "--batch",
               "10000000", "--calibration", "none"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("gpusim: error: --batch: ") and "tokens fit" in err


def test_the_old_stack_name_still_resolves():
    assert loader.load_stack("torch-bf16-static-kv").name == "torch-hf"
    # the reference stack (what the committed measurements ran) keeps its new name; the
    # default for predict, spec and serve is the measured stack closest to engines
    assert loader.REFERENCE_STACK == "torch-hf"
    assert loader.DEFAULT_STACK == "torch-compile"
