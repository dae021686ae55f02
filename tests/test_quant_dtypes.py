"""Weight and KV dtypes: bytes of quantized weights (scales included, hand-worked), the
model a stack runs (kernels.quant.for_stack), HF quantization_config, and the command
line's --weight-dtype / --kv-dtype and rows' weight_dtype / kv_dtype columns."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from gpusim.capacity import memory_plan
from gpusim.cli import main
from gpusim.errors import ConfigError, FieldError
from gpusim.io import loader
from gpusim.kernels import build_kernels
from gpusim.kernels.quant import DEFAULT_QUANTIZATION, for_stack
from gpusim.specs import StackSpec
from gpusim.specs.model import Quantization

REPO = Path(__file__).resolve().parents[1]
N = K = 4096


@pytest.mark.parametrize("quant,want", [
    # int4, groups of 128 with a bf16 scale and zero each: n k / 2 + n (k / 128) 2 x 2
    ({"weight_dtype": "int4", "scales": "group", "group_size": 128, "zero_points": True},
     N * K // 2 + N * (K // 128) * 4),
    ({"weight_dtype": "fp8", "scales": "tensor"}, N * K + 4),                 # one fp32
    ({"weight_dtype": "fp8", "scales": "channel"}, N * K + 4 * N),
    ({"weight_dtype": "fp8", "scales": "block", "group_size": 128},           # 32 x 32
     N * K + 32 * 32 * 4),
    ({"weight_dtype": "int8", "scales": "channel"}, N * K + 2 * N),           # bf16 scales
    ({"weight_dtype": "fp4", "scales": "group", "group_size": 32},            # MXFP4
     N * K // 2 + N * K // 32),
])
def test_quantized_matrix_bytes(quant: dict, want: int) -> None:
    assert Quantization(**quant).matrix_bytes(N, K) == want


@pytest.mark.parametrize("quant,field", [
    ({"weight_dtype": "int4", "scales": "tensor"}, "scales"),
    ({"weight_dtype": "fp8", "scales": "group", "group_size": 128}, "scales"),
    ({"weight_dtype": "int4", "scales": "group"}, "group_size"),
    ({"weight_dtype": "fp8", "scales": "tensor", "group_size": 128}, "group_size"),
    ({"weight_dtype": "fp8", "scales": "tensor", "zero_points": True}, "zero_points"),
])
def test_inconsistent_quantization_is_refused(quant: dict, field: str) -> None:
    with pytest.raises(ValueError) as info:
        Quantization(**quant)
    assert info.value.errors()[0]["ctx"]["field"] == field  # type: ignore[attr-defined]


def test_model_weight_and_kv_bytes_follow_the_dtypes() -> None:
    m = loader.load_model("llama-3.1-8b")
    int4 = for_stack(m, loader.load_stack("torch-int4"))
    proj = sum(count * n * k for name, (n, k, count) in m.layer_matrices().items()) \
        * m.num_hidden_layers
    scales = sum(n * (k // 128) * 4 for n, k, _ in m.layer_matrices().values()) \
        * m.num_hidden_layers
    assert int4.weight_bytes == pytest.approx(m.weight_bytes - 2 * proj + proj / 2 + scales)
    assert int4.param_count == m.param_count
    fp8_kv = m.model_copy(update={"kv_dtype": "fp8"})
    assert fp8_kv.kv_bytes_per_token == m.kv_bytes_per_token / 2
    gpu = loader.load_gpu("h100-sxm")
    assert memory_plan(gpu, int4).kv_tokens() > memory_plan(gpu, m).kv_tokens()


def test_a_stack_that_implies_a_dtype_gives_it_to_an_unquantized_model() -> None:
    m = loader.load_model("llama-3.1-8b")
    for name, dtype in (("torch-fp8", "fp8"), ("torch-int4", "int4")):
        st = loader.load_stack(name)
        q = for_stack(m, st)
        assert q.weight_dtype == dtype and q.quantization == st.quantization
        assert for_stack(q, st) == q                     # idempotent
    hf = loader.load_stack("torch-hf")
    assert for_stack(m, hf) is m                         # nothing to change
    assert for_stack(m, hf, weight_dtype="fp16").dtype == "fp16"


@pytest.mark.parametrize("stack,weight,kv,field,text", [
    ("torch-hf", "fp8", None, "weight_dtype", "cublas"),
    ("torch-hf", "int4", None, "weight_dtype", "unquantized weights"),
    ("torch-int4", "bf16", None, "weight_dtype", "tinygemm"),
    ("torch-fp8", "int4", None, "weight_dtype", "scaled_mm"),
    ("torch-hf", None, "fp8", "kv_dtype", "kv_dtypes"),
    ("torch-hf", "int3", None, "weight_dtype", "must be one of"),
    ("torch-hf", None, "int8", "kv_dtype", "must be one of"),
])
def test_a_dtype_the_stack_cannot_run_is_refused(stack: str, weight: str | None,
                                                 kv: str | None, field: str,
                                                 text: str) -> None:
    with pytest.raises(FieldError) as info:
        for_stack(loader.load_model("llama-3.1-8b"), loader.load_stack(stack), weight, kv)
    assert info.value.field == field and text in str(info.value)


def test_a_moe_model_on_a_quantized_stack_is_refused() -> None:
    with pytest.raises(FieldError, match="grouped_mm"):
        for_stack(loader.load_model("qwen3-30b-a3b"), loader.load_stack("torch-int4"))


def test_an_fp8_kv_cache_halves_the_attention_kv_reads_where_a_stack_stores_it() -> None:
    base = loader.load_stack("torch-hf")
    fp8_kv = StackSpec.model_validate({**base.model_dump(), "name": "torch-hf-kv8",
                                       "kv_dtypes": ("fp8",)})
    m = loader.load_model("llama-3.2-1b")
    kv8 = for_stack(m, fp8_kv, kv_dtype="fp8")
    att = {k.name: k for k in build_kernels(m, fp8_kv, "decode", [4.0], 4096, 1)}
    att8 = {k.name: k for k in build_kernels(kv8, fp8_kv, "decode", [4.0], 4096, 1)}
    assert att8["attention"].kv_bytes == pytest.approx(att["attention"].kv_bytes / 2)
    assert att8["attention"].dtype == "bf16"
    with pytest.raises(FieldError, match="kv_dtype"):
        build_kernels(kv8, base, "decode", [4.0], 4096, 1)   # never priced as bf16


def test_default_quantizations_are_what_the_harness_builds() -> None:
    int4 = DEFAULT_QUANTIZATION["int4"]
    assert (int4.group_size, int4.zero_points, int4.scale_dtype_eff) == (128, True, "bf16")
    assert loader.load_stack("torch-int4").quantization == int4
    assert loader.load_stack("torch-fp8").quantization == DEFAULT_QUANTIZATION["fp8"]


# ---------------------------------------------------------------- HF quantization_config
def _hf(tmp_path: Path, **update: object) -> Path:
    cfg = json.loads((REPO / "tests/fixtures/hf_config_llama.json").read_text())
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**cfg, **update}, indent=2), encoding="utf-8")
    return path


def test_hf_quantization_configs_are_modelled(tmp_path: Path) -> None:
    fp8 = loader.model_from_hf_config(_hf(tmp_path, quantization_config={
        "quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
        "weight_block_size": [128, 128]}))
    assert fp8.quantization == Quantization(weight_dtype="fp8", scales="block",
                                            group_size=128)
    awq = loader.model_from_hf_config(_hf(tmp_path, quantization_config={
        "quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True,
        "version": "gemm", "modules_to_not_convert": None}))
    assert awq.quantization is not None and awq.quantization.describe() == "int4 g128"
    assert awq.quantization.scale_dtype_eff == "fp16"


@pytest.mark.parametrize("qc,field", [
    ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "quantization_config.load_in_4bit"),
    ({"quant_method": "bitsandbytes"}, "quantization_config.quant_method"),
    ({"quant_method": "gptq", "bits": 3, "group_size": 128}, "quantization_config.bits"),
    ({"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": True},
     "quantization_config.desc_act"),
    ({"quant_method": "fp8", "modules_to_not_convert": ["model.layers.0.mlp.down_proj"]},
     "quantization_config.modules_to_not_convert"),
])
def test_unmodelled_quantization_is_refused(tmp_path: Path, qc: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        loader.model_from_hf_config(_hf(tmp_path, quantization_config=qc))
    assert info.value.field == field and info.value.line is not None


# ---------------------------------------------------------------- the command line
def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_predict_weight_dtype_follows_the_stack(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["predict", "--gpu", "h100-sxm", "--model", "llama-3.1-8b", "--format", "json"]
    rc, out, err = _run(capsys, *base, "--stack", "torch-int4")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["weights"] == "int4 g128" and doc["weight_bytes"] < 6.5e9
    rc, out, err = _run(capsys, *base, "--stack", "torch-fp8")
    doc = json.loads(out)
    assert doc["weights"] == "fp8 per tensor" and doc["quantize_ms"] > 0
    assert {r["op"] for r in doc["ops"]} >= {"qkv_act_quant", "down_act_quant"}


@pytest.mark.parametrize("flag,value,stack", [("--weight-dtype", "fp8", "torch-hf"),
                                             ("--weight-dtype", "int9", "torch-hf"),
                                             ("--kv-dtype", "fp8", "torch-hf"),
                                             ("--weight-dtype", "bf16", "torch-int4")])
def test_predict_refuses_a_dtype_in_one_line(capsys: pytest.CaptureFixture[str], flag: str,
                                             value: str, stack: str) -> None:
    rc, out, err = _run(capsys, "predict", "--gpu", "h100-sxm", "--model", "llama-3.1-8b",
                        "--stack", stack, flag, value)
    assert rc == 2 and not out
    assert len(err.strip().splitlines()) == 1 and f"error: {flag}: " in err, err


def _rows(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "rows.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_rows_weight_and_kv_dtype_columns(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    rows = _rows(tmp_path, ["model,mode,batch,ctx,q,weight_dtype,kv_dtype",
                            "llama-3.1-8b,decode,1,1024,1,,",
                            "llama-3.1-8b,decode,1,1024,1,fp16,",
                            "llama-3.2-1b,decode,8,512,1,bf16,bf16"])
    out = tmp_path / "preds.csv"
    rc, _, err = _run(capsys, "predict", "--gpu", "h100-sxm", "--in", str(rows), "--out",
                      str(out))
    assert rc == 0, err
    preds = list(csv.DictReader(out.open()))
    assert [p["weight_dtype"] for p in preds] == ["", "fp16", "bf16"]
    assert float(preds[0]["weight_bytes"]) == float(preds[1]["weight_bytes"])


@pytest.mark.parametrize("line,field", [
    ("llama-3.1-8b,decode,1,1024,1,int3,", "weight_dtype"),
    ("llama-3.1-8b,decode,1,1024,1,,fp4", "kv_dtype"),
    ("llama-3.1-8b,decode,1,1024,1,int4,", "weight_dtype"),      # torch-hf: cublas only
])
def test_rows_refuse_a_bad_dtype_naming_the_line(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str],
                                                 line: str, field: str) -> None:
    rows = _rows(tmp_path, ["model,mode,batch,ctx,q,weight_dtype,kv_dtype",
                            "llama-3.2-1b,decode,1,64,1,,", line])
    rc, _, err = _run(capsys, "predict", "--gpu", "h100-sxm", "--in", str(rows), "--out",
                      str(tmp_path / "p.csv"))
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert f"error: {rows}:3: {field}:" in err, err
    assert not (tmp_path / "p.csv").exists()
