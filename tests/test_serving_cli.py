"""`gpusim serve`: outputs, byte-identical reruns, one-line errors with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpusim.cli import main
from gpusim.io import loader

SCENARIOS = loader.ROOT / "workloads" / "scenarios"
TRACES = loader.ROOT / "workloads" / "traces"
BASE = ["serve", "--gpu", "h100-sxm", "--model", "llama-3.1-8b", "--quiet"]
SMALL = ["--rate", "5", "--prompt-dist", "lognormal:median=300,sigma=0.7,max=2048",
         "--output-dist", "uniform:20-200", "--duration-s", "20", "--seed", "3"]


def serve(tmp: Path, tag: str, extra: list[str]) -> dict[str, bytes]:
    files = {k: tmp / f"{tag}.{k}" for k in ("json", "csv", "html")}
    rc = main([*BASE, *extra, "--out-json", str(files["json"]), "--out-csv",
               str(files["csv"]), "--html", str(files["html"])])
    assert rc == 0
    return {k: p.read_bytes() for k, p in files.items()}


def test_outputs_are_written_and_byte_identical(tmp_path: Path, capsys) -> None:
    a = serve(tmp_path, "a", SMALL)
    b = serve(tmp_path, "b", SMALL)
    assert a == b
    summary = json.loads(a["json"])
    assert summary["requests"]["completed"] > 50
    assert summary["seed"] == 3
    assert a["csv"].startswith(b"metric,value\n")
    assert b"latency_s.ttft_s.p99," in a["csv"]
    assert b"<html>" in a["html"] and b"plotly" in a["html"]
    out = capsys.readouterr().out
    assert "ttft" in out and "goodput" in out
    c = serve(tmp_path, "c", [*SMALL[:-1], "4"])
    assert c["json"] != a["json"]


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_stdout_formats(capsys, fmt: str) -> None:
    assert main([*BASE, *SMALL, "--format", fmt]) == 0
    out = capsys.readouterr().out
    if fmt == "json":
        assert json.loads(out)["gpu"] == "h100-sxm"
    else:
        assert out.startswith("metric,value\ngpu,h100-sxm\n")


def test_scenario_file_with_overrides(capsys) -> None:
    rc = main([*BASE, "--scenario", str(SCENARIOS / "closed-loop-agents.yaml"),
               "--duration-s", "15", "--users", "8", "--format", "json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["scenario"] == "closed-loop-agents"
    assert out["workload"]["users"] == 8 and out["duration_s"] == 15


def test_trace_option(capsys) -> None:
    rc = main([*BASE, "--trace", str(TRACES / "synthetic-chat.csv"), "--duration-s", "30",
               "--scheduler", "static", "--format", "json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["workload"]["kind"] == "trace" and out["scheduler"]["policy"] == "static"


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("gpusim: error: ")
    return lines[0]


def test_bad_scenario_key(tmp_path: Path, capsys) -> None:
    text = (SCENARIOS / "chat-poisson.yaml").read_text().replace("  max_num_seqs:",
                                                                   "  max_seqs:")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    line = one_line_error(capsys, [*BASE, "--scenario", str(path)])
    n = text.splitlines().index("  max_seqs: 256") + 1
    assert f"{path}:{n}: scheduler.max_seqs: unknown key" in line


def test_model_too_large(capsys) -> None:
    argv = ["serve", "--gpu", "h100-sxm", "--model", "llama-3.1-70b", *SMALL]
    line = one_line_error(capsys, argv)
    assert "llama-3.1-70b does not fit on h100-sxm" in line
    assert "weights 141.11 GB" in line and "85.90 GB HBM" in line and "per token" in line


@pytest.mark.parametrize(("extra", "expect"), [
    (["--rate", "5", "--duration-s", "5"], "needs prompt, output"),
    ([*SMALL, "--prompt-dist", "lognormal:median=5"], "--prompt-dist"),
    ([*SMALL, "--arrival", "weibull"], "--arrival"),
    ([*SMALL, "--max-num-seqs", "512", "--max-num-batched-tokens", "256"],
     "max_num_batched_tokens (256) must be >= max_num_seqs (512)"),
    ([*SMALL, "--reserve-fraction", "1.5"], "--reserve-fraction"),
    (["--trace", "missing.jsonl"], "missing.jsonl: cannot read file"),
])
def test_bad_options(capsys, extra: list[str], expect: str) -> None:
    assert expect in one_line_error(capsys, [*BASE, *extra])


def test_bad_trace_line(tmp_path: Path, capsys) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"arrival_s": 0, "prompt_tokens": 5, "output_tokens": 5}\n'
                    '{"arrival_s": 1, "prompt_tokens": -5, "output_tokens": 5}\n')
    line = one_line_error(capsys, [*BASE, "--trace", str(path)])
    assert f"{path}:2: prompt_tokens: must be an integer >= 1" in line


# --- prefix caching, conversations, CUDA-graph sizes (issue 21) ----------------------
PREFIX = ["serve", "--gpu", "h100-sxm", "--model", "llama-3.2-1b", "--quiet", "--rate", "2",
          "--prompt-dist", "uniform:20-200", "--output-dist", "uniform:10-100",
          "--duration-s", "20", "--max-num-seqs", "32", "--max-num-batched-tokens", "2048",
          "--format", "json"]


def test_prefix_caching_and_conversation_options(capsys) -> None:
    rc = main([*PREFIX, "--prefix-caching", "--shared-prefix-tokens", "512",
               "--prefix-prompts", "2", "--conversation-turns", "3", "--turn-think-s", "1",
               "--cudagraph-capture-sizes", "vllm"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["scheduler"]["prefix_caching"] is True
    assert out["scheduler"]["cudagraph_capture_sizes"][:4] == [1, 2, 4, 8]
    assert out["workload"]["kind"] == "conversations"
    assert out["workload"]["conversation"] == {"turns": 3, "think_time_s": 1.0}
    assert out["workload"]["prefix"] == {"shared_tokens": 512, "prompts": 2}
    assert out["prefix_cache"]["hit_rate"] > 0.3
    assert all(out["invariants"].values())


def test_cudagraph_mode_option(capsys) -> None:
    """--cudagraph-mode full_and_piecewise: mixed steps of up to the largest size
    replay piecewise graphs (the reference stack's eager mixed steps are host-bound:
    TTFT falls); the mode is reported where it is not the default."""
    out = {}
    for mode in ("full_decode_only", "full_and_piecewise"):
        assert main([*PREFIX, "--cudagraph-capture-sizes", "vllm",
                     "--cudagraph-mode", mode]) == 0
        out[mode] = json.loads(capsys.readouterr().out)
    assert out["full_and_piecewise"]["scheduler"]["cudagraph_mode"] == "full_and_piecewise"
    assert "cudagraph_mode" not in out["full_decode_only"]["scheduler"]
    assert (out["full_and_piecewise"]["latency_s"]["ttft_s"]["mean"]
            < out["full_decode_only"]["latency_s"]["ttft_s"]["mean"])


def test_metric_definitions_are_stated_with_the_table(capsys) -> None:
    assert main([*PREFIX[:-2]]) == 0
    err = capsys.readouterr().err
    assert "TPOT = (last token - first token) / (output tokens - 1)" in err


@pytest.mark.parametrize("extra, flag", [
    (["--prefix-prompts", "0", "--shared-prefix-tokens", "8"], "--prefix-prompts"),
    (["--prefix-prompts", "2"], "--shared-prefix-tokens"),
    (["--conversation-turns", "0"], "--conversation-turns"),
    (["--cudagraph-capture-sizes", "4,2"], "cudagraph_capture_sizes"),
    (["--cudagraph-capture-sizes", "one"], "--cudagraph-capture-sizes"),
    (["--cudagraph-mode", "piecewise"], "--cudagraph-mode"),
    (["--cudagraph-mode", "full_and_piecewise"], "needs cudagraph_capture_sizes"),
    (["--prefix-caching", "--scheduler", "static"], "continuous"),
    (["--prefix-caching", "--spec-draft", "ngram"], "speculative"),
])
def test_bad_new_options_are_one_line(extra: list[str], flag: str, capsys) -> None:
    assert main([*PREFIX, *extra]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert flag in err, err
