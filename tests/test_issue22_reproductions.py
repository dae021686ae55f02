"""Issue 22's reproductions of silent wrong answers and misleading messages, each as it
was reported: every one now gives one line naming the file, line and field (or the
flag) and exit 2, or the right answer. The generated battery is
tests/test_malformed_battery.py; the caps and bounds in depth are tests/test_cli_bounds.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli_bounds import error_line, run_cli

from gpusim.io import loader

REPO = loader.ROOT
PREDICT = ["predict", "--gpu", "h100-sxm", "--model", "llama-3.1-8b"]
Capsys = pytest.CaptureFixture[str]


def edited(tmp_path: Path, src: Path, name: str, *swaps: tuple[str, str]) -> Path:
    """``src`` copied to ``tmp_path/name`` with each (old, new) replaced once (old must
    be there)."""
    text = src.read_text(encoding="utf-8")
    for old, new in swaps:
        assert old in text, old
        text = text.replace(old, new, 1)
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def gpu_file(tmp_path: Path, *swaps: tuple[str, str]) -> Path:
    return edited(tmp_path, REPO / "hardware" / "h100-sxm.yaml", "h100-sxm.yaml", *swaps)


def line_of(path: Path, key: str) -> int:
    return next(i for i, line in enumerate(path.read_text("utf-8").splitlines(), 1)
                if line.lstrip().startswith(key))


SM_1 = ("sm_count:\n  value: 132\n", "sm_count:\n  value: 1\n")
HZ_1 = ("boost_clock_hz:\n  value: 1.98e+9\n", "boost_clock_hz:\n  value: 1\n")


# ----------------------------------------------------------------------------------
# a GPU of 1 SM at 1 Hz predicted the same 2.25 ms as an H100
# ----------------------------------------------------------------------------------
def test_gpu_of_one_sm_at_one_hz(tmp_path: Path, capsys: Capsys) -> None:
    path = gpu_file(tmp_path, SM_1, HZ_1)
    msg = error_line(capsys, [*PREDICT[:1], "--gpu", str(path), *PREDICT[3:]])
    assert msg.startswith(f"gpusim: error: {path}:{line_of(path, 'boost_clock_hz') + 1}: "
                          "boost_clock_hz.value: "), msg
    assert "100000000" in msg and "(got 1)" in msg


def test_gpu_rates_the_sms_cannot_deliver(tmp_path: Path, capsys: Capsys) -> None:
    """The cost model takes the datasheet's FLOP/s as given (the SM count only sets
    wave quantization; the clock is not used), so 1 SM with an H100's rates is refused
    by what one SM does per clock."""
    path = gpu_file(tmp_path, SM_1)
    msg = error_line(capsys, [*PREDICT[:1], "--gpu", str(path), *PREDICT[3:]])
    # a GPU file's numbers are {value, source}: the line is the value's
    assert f"{path}:{line_of(path, 'fp32_flops_per_s') + 1}: fp32_flops_per_s.value: " in msg
    assert "FLOP per SM per clock" in msg


@pytest.mark.parametrize("key,old,new", [
    ("sm_count", "value: 132\n", "value: 5000\n"),
    ("hbm_bandwidth_bytes_per_s", "value: 3.35e+12\n", "value: 3.35\n"),
    ("hbm_capacity_bytes", "value: 85899345920\n", "value: 80\n"),
    ("boost_clock_hz", "value: 1.98e+9\n", "value: 1980\n"),
    ("tensor_flops_per_s", "value: 9.894e+14\n", "value: 9.894e+17\n"),
    ("price_usd_per_gpu_hour", "value: 2.99\n", "value: 2.99e+9\n"),
])
def test_gpu_fields_in_physical_ranges(key: str, old: str, new: str, tmp_path: Path,
                                       capsys: Capsys) -> None:
    path = gpu_file(tmp_path, (old, new))
    msg = error_line(capsys, [*PREDICT[:1], "--gpu", str(path), *PREDICT[3:]])
    assert msg.startswith(f"gpusim: error: {path}:") and f": {key}." in msg, msg


def test_shipped_gpus_inside_the_ranges(capsys: Capsys) -> None:
    for path in sorted((REPO / "hardware").glob("*.yaml")):
        loader.load_gpu(path.stem)


# ----------------------------------------------------------------------------------
# head_dim: 7
# ----------------------------------------------------------------------------------
def test_model_head_dim_odd(tmp_path: Path, capsys: Capsys) -> None:
    path = edited(tmp_path, REPO / "workloads" / "models" / "llama-3.1-8b.yaml",
                  "llama-3.1-8b.yaml", ("num_key_value_heads:",
                                        "head_dim: 7\nnum_key_value_heads:"))
    msg = error_line(capsys, ["predict", "--gpu", "h100-sxm", "--model", str(path)])
    assert msg == (f"gpusim: error: {path}:{line_of(path, 'head_dim')}: head_dim: head_dim "
                   "(7) must be even: RoPE rotates pairs of a head's dimensions (got 7)")


def test_hf_config_head_dim_odd(tmp_path: Path, capsys: Capsys) -> None:
    cfg = json.loads((REPO / "tests" / "fixtures" / "hf_config_llama.json").read_text("utf-8"))
    cfg["head_dim"] = 7
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    msg = error_line(capsys, ["predict", "--gpu", "h100-sxm", "--model", str(path)])
    assert str(path) in msg and "head_dim" in msg and "must be even" in msg


@pytest.mark.parametrize("kv,field", [("3", "num_key_value_heads"), ("64", "num_key_value_heads")])
def test_model_heads_must_divide(kv: str, field: str, tmp_path: Path, capsys: Capsys) -> None:
    src = REPO / "workloads" / "models" / "llama-3.1-8b.yaml"
    line = next(x for x in src.read_text("utf-8").splitlines()
                if x.startswith("num_key_value_heads:"))
    path = edited(tmp_path, src, "llama-3.1-8b.yaml", (line, f"num_key_value_heads: {kv}"))
    msg = error_line(capsys, ["predict", "--gpu", "h100-sxm", "--model", str(path)])
    assert f"{path}:{line_of(path, field)}: {field}: " in msg and "multiple" in msg


# ----------------------------------------------------------------------------------
# a stack with `layer: []` predicted 0.4 ms for an 8B model
# ----------------------------------------------------------------------------------
def _stack_without(tmp_path: Path, cut: str) -> Path:
    text = (REPO / "stacks" / "torch-hf.yaml").read_text(encoding="utf-8")
    if cut == "layer":
        text = text[:text.index("layer:")] + "layer: []\n" + text[text.index("epilogue:"):]
    else:
        text = "\n".join(x for x in text.splitlines() if f"name: {cut}," not in x) + "\n"
    path = tmp_path / "torch-hf.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("cut,field,what", [
    ("layer", "layer", "attention, gemm weight qkv"),
    ("attention", "layer", "must run attention"),
    ("down_proj", "layer", "gemm weight down"),
    ("lm_head", "epilogue", "lm_head"),
])
def test_stack_without_a_forward(cut: str, field: str, what: str, tmp_path: Path,
                                 capsys: Capsys) -> None:
    path = _stack_without(tmp_path, cut)
    msg = error_line(capsys, [*PREDICT, "--stack", str(path)])
    assert msg.startswith(f"gpusim: error: {path}:{line_of(path, field + ':')}: {field}: ")
    assert what in msg


# ----------------------------------------------------------------------------------
# a calibration file for another GPU (or stack)
# ----------------------------------------------------------------------------------
def test_calibration_of_another_gpu_refused(capsys: Capsys) -> None:
    cal = REPO / "validation" / "calibrations" / "h200.yaml"
    msg = error_line(capsys, [*PREDICT, "--calibration", str(cal)])
    assert msg.startswith(f"gpusim: error: {cal}:{line_of(cal, 'gpu:')}: gpu: this "
                          "calibration is for h200, not h100-sxm")


def test_calibration_host_costs_borrowed_with_a_note(capsys: Capsys) -> None:
    """vllm is described, not measured: it names torch-compile in its
    host_costs_from, so it borrows those and says so."""
    cal = REPO / "validation" / "calibrations" / "h200.yaml"
    rc, out, err = run_cli(capsys, ["predict", "--gpu", "h200", "--model", "llama-3.1-8b",
                                    "--stack", "vllm", "--calibration", str(cal),
                                    "--format", "json"])
    assert rc == 0, err
    assert "host costs of torch-compile" in json.loads(out)["calibration"]


def test_calibration_without_the_stack_refused(tmp_path: Path, capsys: Capsys) -> None:
    src = REPO / "stacks" / "torch-fused.yaml"
    stack = edited(tmp_path, src, "my-stack.yaml", ("name: torch-fused", "name: my-stack"),
                   ("host_costs_from: torch-hf\n", ""))
    cal = REPO / "validation" / "calibrations" / "h200.yaml"
    msg = error_line(capsys, ["predict", "--gpu", "h200", "--model", "llama-3.1-8b",
                              "--stack", str(stack), "--calibration", str(cal)])
    assert msg.startswith(f"gpusim: error: {cal}: stacks: ") and "my-stack" in msg


# ----------------------------------------------------------------------------------
# shapes beyond the model and the GPU
# ----------------------------------------------------------------------------------
def test_ctx_beyond_the_context_window(capsys: Capsys) -> None:
    msg = error_line(capsys, [*PREDICT, "--ctx", str(10**9)])
    assert msg.startswith("gpusim: error: --ctx: ") and "131072" in msg


def test_batch_beyond_memory(capsys: Capsys) -> None:
    msg = error_line(capsys, [*PREDICT, "--batch", "10000000"])
    assert msg.startswith("gpusim: error: --batch: ") and "GB of KV cache" in msg


def test_calibrate_on_one_row(tmp_path: Path, capsys: Capsys) -> None:
    lines = (REPO / "validation" / "data" / "h100-sxm" / "steps.csv").read_text(
        "utf-8").splitlines()
    data = tmp_path / "steps.csv"
    data.write_text(lines[0] + "\n" + next(x for x in lines if ",graph," in x) + "\n",
                    encoding="utf-8")
    out = tmp_path / "cal.yaml"
    msg = error_line(capsys, ["calibrate", "--gpu", "h100-sxm", "--data", str(data),
                              "--out", str(out)])
    assert str(data) in msg and "MAPE" not in msg and not out.exists()


def test_serve_rejecting_every_request(tmp_path: Path, capsys: Capsys) -> None:
    out = tmp_path / "s.json"
    msg = error_line(capsys, ["serve", "--gpu", "h100-sxm", "--model", "llama-2-7b",
                              "--quiet", "--rate", "2", "--duration-s", "5",
                              "--prompt-dist", "5000", "--output-dist", "10",
                              "--out", str(out)])
    assert "were rejected" in msg and not out.exists()


# ----------------------------------------------------------------------------------
# YAML: a !!python tag on a mapping; 1e-5 and 86e9
# ----------------------------------------------------------------------------------
def test_yaml_python_tag_on_a_mapping(tmp_path: Path, capsys: Capsys) -> None:
    path = gpu_file(tmp_path, ("sm_count:\n", "sm_count: !!python/object:os.system\n"))
    msg = error_line(capsys, [*PREDICT[:1], "--gpu", str(path), *PREDICT[3:]])
    assert msg.startswith(f"gpusim: error: {path}:{line_of(path, 'sm_count')}: ")
    assert "is not allowed" in msg


def test_yaml_exponents_are_numbers(tmp_path: Path, capsys: Capsys) -> None:
    gpu = gpu_file(tmp_path, ("value: 85899345920\n", "value: 86e9\n"))
    model = tmp_path / "llama-3.1-8b.yaml"
    text = (REPO / "workloads" / "models" / "llama-3.1-8b.yaml").read_text("utf-8")
    model.write_text("\n".join(x for x in text.splitlines()
                               if not x.startswith("rms_norm_eps:")) + "\nrms_norm_eps: 1e-5\n",
                     encoding="utf-8")
    rc, out, err = run_cli(capsys, ["predict", "--gpu", str(gpu), "--model", str(model),
                                    "--format", "json"])
    assert rc == 0, err
    assert json.loads(out)["step_ms"] > 0


# ----------------------------------------------------------------------------------
# flags named as the user typed them
# ----------------------------------------------------------------------------------
SPEC = ["spec", "--gpu", "h100-sxm"]


@pytest.mark.parametrize("argv,flag", [
    ([*SPEC, "--target", "nope", "--draft", "llama-3.2-1b"], "--target"),
    ([*SPEC, "--target", "llama-3.1-8b", "--draft", "nope"], "--draft"),
    ([*SPEC, "--model", "llama-3.1-8b", "--draft", "nope"], "--draft"),
    (["spec-sweep", "--gpu", "h100-sxm", "--target", "llama-3.1-8b", "--draft", "nope"],
     "--draft"),
    (["serve", "--gpu", "h100-sxm", "--model", "llama-3.1-8b", "--draft", "nope", "--quiet",
      "--rate", "1", "--duration-s", "5", "--prompt-dist", "100", "--output-dist", "10"],
     "--draft"),
    (["spec-sweep", "--gpu", "h100-sxm", "--target", "llama-3.1-8b", "--draft",
      "llama-3.2-1b", "--ks", "1-100"], "--ks"),
])
def test_unknown_model_or_range_names_the_flag(argv: list[str], flag: str,
                                               capsys: Capsys) -> None:
    msg = error_line(capsys, argv)
    assert msg.startswith(f"gpusim: error: {flag}: "), msg


# ----------------------------------------------------------------------------------
# predict --in: a column gpusim does not model is refused or honoured, never dropped
# ----------------------------------------------------------------------------------
ROW = "llama-3.2-1b,decode,1,1024,1"


@pytest.mark.parametrize("column,cell,hint", [
    ("pp", "2", "give --pp"), ("dtype", "fp8", "weight_dtype"),
    ("quantization", "int4", "weight_dtype"), ("draft", "llama-3.2-1b", "gpusim spec"),
])
def test_rows_unmodelled_column_refused(column: str, cell: str, hint: str, tmp_path: Path,
                                        capsys: Capsys) -> None:
    rows = tmp_path / "rows.csv"
    rows.write_text(f"model,mode,batch,ctx,q,{column}\n{ROW},{cell}\n", encoding="utf-8")
    out = tmp_path / "p.csv"
    msg = error_line(capsys, ["predict", "--gpu", "h100-sxm", "--in", str(rows),
                              "--out", str(out)])
    assert msg.startswith(f"gpusim: error: {rows}:1: {column}: column {column!r} cannot be "
                          "honoured") and hint in msg
    assert not out.exists()


@pytest.mark.parametrize("column,cell,flag", [("launch", "eager", "--launch"),
                                              ("gpu", "h200", "--gpu"),
                                              ("stack", "vllm", "--stack")])
def test_rows_setting_column_other_than_the_command(column: str, cell: str, flag: str,
                                                    tmp_path: Path, capsys: Capsys) -> None:
    rows = tmp_path / "rows.csv"
    rows.write_text(f"model,mode,batch,ctx,q,{column}\n{ROW},\n{ROW},{cell}\n",
                    encoding="utf-8")
    msg = error_line(capsys, ["predict", "--gpu", "h100-sxm", "--in", str(rows)])
    assert msg.startswith(f"gpusim: error: {rows}:3: {column}: ") and flag in msg


def test_rows_identifying_columns_pass_through(tmp_path: Path, capsys: Capsys) -> None:
    """DESIGN's contract: preds.csv is rows.csv's rows, its columns first; a steps.csv's
    launch column agreeing with --launch is honoured."""
    rows = tmp_path / "rows.csv"
    rows.write_text(f"id,model,mode,batch,ctx,q,launch,stack,median_ms\n"
                    f"a,{ROW},eager,torch-bf16-static-kv,7.6\n", encoding="utf-8")
    rc, out, err = run_cli(capsys, ["predict", "--gpu", "h100-sxm", "--in", str(rows),
                                    "--launch", "eager", "--stack", "torch-hf",
                                    "--format", "json"])
    assert rc == 0, err
    rec = json.loads(out)
    rec = rec[0] if isinstance(rec, list) else rec["rows"][0]
    assert rec["id"] == "a" and rec["median_ms"] == "7.6" and float(rec["predicted_ms"]) > 0
