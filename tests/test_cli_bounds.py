"""Inputs that parse but make no sense, and inputs built to exhaust a reader: each is
refused with one line and exit 2 (issue 22): nesting depth, non-finite numbers, YAML
1.2 numbers and tags, shapes beyond memory or context, Monte-Carlo and serving runs
beyond their caps, a serving run that serves nobody, calibration data too thin."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest
from conftest import run_cli

from gpusim.errors import ConfigError
from gpusim.io import jsontext, loader
from gpusim.io.yamlfile import load_yaml

REPO = loader.ROOT
HF = json.loads((REPO / "tests" / "fixtures" / "hf_config_llama.json").read_text("utf-8"))
SERVE = ["serve", "--gpu", "h100-sxm", "--model", "llama-3.2-1b", "--quiet"]
SPEC = ["spec", "--gpu", "h100-sxm", "--target", "llama-3.1-8b", "--draft", "llama-3.2-1b"]


def error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    rc, out, err = run_cli(capsys, argv)
    assert rc == 2, f"exit {rc}: {err}"
    assert out == "" and "Traceback" not in err
    assert err.startswith("gpusim: error: ") and err.count("\n") == 1, err
    return err.rstrip("\n")


# ----------------------------------------------------------------------------------
# (a) readers bounded: nesting depth, non-finite numbers
# ----------------------------------------------------------------------------------
def deep(levels: int, newline: bool = False) -> str:
    sep = "\n" if newline else ""
    return '{"a": [' * levels + sep + "1" + "]}" * levels


@pytest.mark.parametrize("levels", [60, 5000, 200_000])
def test_deep_config_json(levels: int, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(HF)[:-1] + ', "x": ' + deep(levels) + "}", encoding="utf-8")
    msg = error_line(capsys, ["predict", "--gpu", "h100-sxm", "--model", str(path)])
    assert str(path) in msg
    if levels > 50:
        assert "nested deeper than 100 levels" in msg


def test_deep_trace_jsonl_names_its_line(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text('{"arrival_s": 0, "prompt_tokens": 10, "output_tokens": 5}\n'
                    + deep(100_000) + "\n", encoding="utf-8")
    msg = error_line(capsys, [*SERVE, "--trace", str(path)])
    assert msg.startswith(f"gpusim: error: {path}:2: invalid JSON: nested deeper"), msg


def test_deep_acceptance_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "acc.json"
    path.write_text('{"counts":\n' + "[" * 100_000 + "]" * 100_000 + "}", encoding="utf-8")
    msg = error_line(capsys, [*SPEC, "--acceptance", str(path)])
    assert f"{path}:2: invalid JSON: nested deeper than 100 levels" in msg, msg


@pytest.mark.parametrize("value,shown", [("NaN", "NaN"), ("Infinity", "Infinity"),
                                         ("1e999", "1e999"), ("1" * 5000, "4300 digits")],
                         ids=["nan", "inf", "1e999", "5000-digits"])
def test_json_numbers_beyond_a_float(value: str, shown: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.json"
    text = json.dumps({**HF, "hidden_size": 12345}, indent=1).replace(
        '"hidden_size": 12345', f'"hidden_size": {value}')
    assert value in text
    path.write_text(text, encoding="utf-8")
    msg = error_line(capsys, ["predict", "--gpu", "h100-sxm", "--model", str(path)])
    assert str(path) in msg and shown in msg


def test_jsontext_bom_accepted_and_depth_limit_exact() -> None:
    assert jsontext.loads("\ufeff{\"a\": 1}", "x") == {"a": 1}
    ok = "[" * jsontext.MAX_DEPTH + "]" * jsontext.MAX_DEPTH
    assert jsontext.loads(ok, "x") == jsontext.loads(ok, "x")
    with pytest.raises(ConfigError, match="nested deeper"):
        jsontext.loads("[" + ok + "]", "x")


# ----------------------------------------------------------------------------------
# (e) YAML: 1.2 numbers, tags
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text,value", [("1e-5", 1e-5), ("86e9", 86e9), ("1.5e9", 1.5e9),
                                        ("-2E+3", -2000.0), (".5e3", 500.0),
                                        ("1.0e+5", 1e5), ("'1e5'", "1e5")])
def test_yaml_exponent_numbers(text: str, value: object, tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(f"v: {text}\n", encoding="utf-8")
    assert load_yaml(path)[0]["v"] == value


def test_yaml_number_in_a_gpu_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (REPO / "hardware" / "h100-sxm.yaml").read_text(encoding="utf-8")
    lines = text.splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith("l2_bytes:"))
    assert lines[i + 1] == "  value: 52428800"
    lines[i + 1] = "  value: 52.4288e6"
    path = tmp_path / "h100-sxm.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rc, _out, err = run_cli(capsys, ["predict", "--gpu", str(path), "--model", "llama-3.1-8b",
                                     "--format", "json"])
    assert rc == 0, err


@pytest.mark.parametrize("text,line", [
    ("a: 1\nb: !!python/object:os.system {x: 1}\n", 2),
    ("a:\n  b: !!python/name:os.system\n", 2),
    ("a: !!python/object/apply:os.system [echo]\n", 1),
    ("a: !custom 3\n", 1),
])
def test_yaml_tags_refused(text: str, line: int, tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert info.value.line == line and "is not allowed" in str(info.value)


# ----------------------------------------------------------------------------------
# (b) predict: memory and context
# ----------------------------------------------------------------------------------
def test_predict_batch_beyond_memory_refused(capsys: pytest.CaptureFixture[str]) -> None:
    msg = error_line(capsys, ["predict", "--gpu", "h100-sxm", "--model", "llama-3.1-8b",
                              "--batch", "10000000"])
    assert "--batch" in msg and "GB of KV cache" in msg and "tokens fit" in msg


def test_predict_ignore_memory_warns(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_cli(capsys, ["predict", "--gpu", "h100-sxm", "--model", "llama-3.1-8b",
                                    "--batch", "1000", "--ctx", "8192", "--ignore-memory",
                                    "--format", "json"])
    assert rc == 0, err
    assert err.startswith("gpusim: warning: --batch: ") and "--ignore-memory" in err
    assert json.loads(out)["step_ms"] > 0


@pytest.mark.parametrize("ctx", ["131072", "1000000000"])
def test_predict_ctx_beyond_context_window(ctx: str, capsys: pytest.CaptureFixture[str]) -> None:
    msg = error_line(capsys, ["predict", "--gpu", "h100-sxm", "--model", "llama-3.1-8b",
                              "--ctx", ctx])
    assert "--ctx" in msg and "context window of 131072 tokens" in msg


def test_rows_ctx_beyond_context_window_names_the_row(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = tmp_path / "rows.csv"
    rows.write_text("model,mode,batch,ctx,q\nllama-3.1-8b,decode,1,1024,1\n"
                    "llama-2-7b,decode,1,5000,1\n", encoding="utf-8")
    out = tmp_path / "p.csv"
    msg = error_line(capsys, ["predict", "--gpu", "h100-sxm", "--in", str(rows), "--out",
                              str(out)])
    assert msg.startswith(f"gpusim: error: {rows}:3: ctx: ctx + q = 5001 tokens exceed")
    assert not out.exists()


# ----------------------------------------------------------------------------------
# (c) spec: Monte-Carlo bounds
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("extra,flag", [
    (["--seed", "-1", "--mc-iterations", "10"], "--seed"),
    (["--mc-iterations", "-3"], "--mc-iterations"),
    (["--mc-iterations", "1000000000"], "--mc-iterations"),
    (["--mc-iterations", "20000", "--batch", "64"], "--mc-iterations"),
    # a seed without a Monte-Carlo check would seed nothing
    (["--seed", "7"], "--seed"),
])
def test_spec_monte_carlo_bounded(extra: list[str], flag: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    msg = error_line(capsys, [*SPEC, *extra])
    assert msg.startswith(f"gpusim: error: {flag}: "), msg


def test_spec_monte_carlo_at_the_cap_runs(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_cli(capsys, [*SPEC, "--mc-iterations", "100000", "--seed",
                                    str(2**70), "--format", "json"])
    assert rc == 0, err
    assert json.loads(out)["mc_agrees_4se"] is True


# ----------------------------------------------------------------------------------
# (d) serve: caps on arrivals and steps, memory bounded
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("rate,duration", [("1e9", "10"), ("1", "1e8"), ("1e6", "1")])
def test_serve_absurd_rate_or_duration_refused_at_once(
        rate: str, duration: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from gpusim import serving

    def no_engine(*_a: object, **_k: object) -> None:
        raise AssertionError("built the engine for a run it refuses")

    monkeypatch.setattr(serving, "build_engine", no_engine)
    msg = error_line(capsys, [*SERVE, "--rate", rate, "--duration-s", duration,
                              "--prompt-dist", "512", "--output-dist", "128"])
    assert msg.startswith("gpusim: error: --rate: rate ") and "at most 500,000" in msg


def test_serve_overload_memory_bounded(capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """At an absurd arrival rate (all requests queue at once) a run stops at the
    arrival cap with one line, its memory bounded by the cap (here lowered to keep
    the test fast: the same code path as the real 500,000)."""
    import gpusim.serving.loop as loop

    monkeypatch.setattr(loop, "MAX_ARRIVALS", 20_000)
    tracemalloc.start()
    try:
        msg = error_line(capsys, [*SERVE, "--arrival", "closed", "--users", "100000",
                                  "--think-time-s", "0", "--duration-s", "1000",
                                  "--prompt-dist", "64", "--output-dist", "8"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert msg.startswith("gpusim: error: --duration-s: the run reached 20,000 arrivals")
    assert peak < 200e6, f"peak {peak / 1e6:.0f} MB"


def test_serve_step_cap(capsys: pytest.CaptureFixture[str],
                        monkeypatch: pytest.MonkeyPatch) -> None:
    import gpusim.serving.loop as loop

    monkeypatch.setattr(loop, "MAX_STEPS", 8192)
    msg = error_line(capsys, [*SERVE, "--arrival", "closed", "--users", "2",
                              "--think-time-s", "0", "--duration-s", "1e6",
                              "--prompt-dist", "16", "--output-dist", "2000"])
    assert "engine steps" in msg and msg.startswith("gpusim: error: --duration-s: ")


# ----------------------------------------------------------------------------------
# (f) serve: nobody served
# ----------------------------------------------------------------------------------
def test_serve_every_request_rejected(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.json"
    msg = error_line(capsys, ["serve", "--gpu", "h100-sxm", "--model", "llama-2-7b",
                              "--quiet", "--rate", "2", "--duration-s", "5",
                              "--prompt-dist", "5000", "--output-dist", "10",
                              "--out-json", str(out)])
    assert "were rejected" in msg and "context window of 4096 tokens" in msg
    assert not out.exists()


def test_serve_no_arrival(capsys: pytest.CaptureFixture[str]) -> None:
    msg = error_line(capsys, [*SERVE, "--rate", "0.001", "--duration-s", "1",
                              "--prompt-dist", "50", "--output-dist", "10"])
    assert msg.startswith("gpusim: error: --duration-s: no request arrived")


# ----------------------------------------------------------------------------------
# calibrate: bad rows, non-UTF-8, too few rows
# ----------------------------------------------------------------------------------
STEPS = (REPO / "validation" / "data" / "h100-sxm" / "steps.csv").read_text(encoding="utf-8")


@pytest.mark.parametrize("case", ["batch0", "utf8", "one-row", "eager-only", "bad-quote"])
def test_calibrate_bad_data(case: str, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    lines = STEPS.splitlines()
    header, rows = lines[0], lines[1:]
    graph = [r for r in rows if ",graph," in r]
    data = tmp_path / "steps.csv"
    if case == "batch0":
        body = "\n".join([header, graph[0].replace(",decode,1,", ",decode,0,", 1),
                          *graph[1:60]]).encode()
        assert b",decode,0," in body
    elif case == "utf8":
        body = "\n".join([header, *graph[:60]]).encode() + b"\nllama\xff,decode\n"
    elif case == "one-row":
        body = "\n".join([header, graph[0]]).encode()
    elif case == "eager-only":
        body = "\n".join([header, *[r for r in rows if ",eager," in r][:80]]).encode()
    else:
        body = ("\n".join([header, *graph[:60]]) + '\n"llama,decode\n').encode()
    data.write_bytes(body + b"\n")
    out = tmp_path / "cal.yaml"
    msg = error_line(capsys, ["calibrate", "--gpu", "h100-sxm", "--data", str(data), "--out",
                              str(out)])
    assert str(data) in msg
    if case == "batch0":
        assert f"{data}:2: batch: must be an integer >= 1" in msg
    if case == "utf8":
        assert "not UTF-8" in msg
    if case in ("one-row", "eager-only"):
        assert "CUDA-graph rows" in msg
    assert not out.exists()


# --- every reader: not UTF-8, too large -------------------------------------------------
def _readers(stack, models):
    from gpusim.calibration import gemm_picks, micro, profiles, spec_measured, steady_clocks
    return {
        "micro": lambda p: micro.read_micro(p, stack, models),
        "profiles": lambda p: profiles.read_profiles([p], stack),
        "gemm_sweep": gemm_picks.read_sweep,
        "spec": spec_measured.read_spec_csv,
        "power_shapes": steady_clocks.read_shapes,
        "power_samples": steady_clocks.read_samples,
    }


@pytest.mark.parametrize("reader", ["micro", "profiles", "gemm_sweep", "spec", "power_shapes",
                                    "power_samples"])
def test_calibration_csv_readers_name_a_file_that_is_not_utf8(reader: str, tmp_path: Path,
                                                               stack, models) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(b"model,mode\n\xff\xfe\xfa,decode\n")
    with pytest.raises(ConfigError) as exc:
        _readers(stack, models.values())[reader](path)
    assert exc.value.source == str(path) and "UTF-8" in str(exc.value)


def test_a_text_input_beyond_its_size_limit_is_refused_before_reading(tmp_path: Path,
                                                                     monkeypatch) -> None:
    from gpusim import errors
    from gpusim.io import yamlfile

    path = tmp_path / "big.yaml"
    path.write_text("name: x\n" + "# padding\n" * 2000)
    with pytest.raises(ConfigError, match="up to"):
        errors.read_text(path, limit_bytes=1000)
    monkeypatch.setattr(yamlfile, "MAX_YAML_BYTES", 1000)
    with pytest.raises(ConfigError, match=r"file of 20.\d kB: gpusim reads inputs of "
                       r"this kind up to 1.0 kB"):
        yamlfile.load_yaml(path)


def test_spec_beyond_memory_refused_unless_asked(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [*SPEC, "--batch", "10000000", "--ctx", "1024", "--quiet", "--format", "json"]
    rc, out, err = run_cli(capsys, argv)
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "--batch" in err and "exceed the usable HBM" in err and "--ignore-memory" in err
    rc, out, err = run_cli(capsys, [*argv, "--ignore-memory"])
    assert rc == 0 and json.loads(out)["fits_in_memory"] is False
    assert "predicting anyway (--ignore-memory)" in err
