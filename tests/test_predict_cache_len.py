"""A static cache's length in ``gpusim predict``: ``--cache-len`` and the rows' ``cache_len``
column. A stack that attends its whole allocated cache (hf-transformers' StaticCache:
attention ``keys: allocated_cache``) is priced over it; a stack that attends ctx + q keys
does not depend on it (refused as an option, carried as a column: a steps.csv has one);
a cache shorter than ctx + q is one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from gpusim import step
from gpusim.io import calibrations, loader
from gpusim.platform import Platform

HF = "hf-transformers"
GPU = loader.load_gpu("h100-sxm")
STACK = loader.load_stack(HF)
PLATFORM = Platform(GPU, STACK, calibrations.load_calibration("auto", GPU, STACK))
MODEL = loader.load_model("llama-3.2-1b")


def predict_json(capsys: pytest.CaptureFixture[str], *extra: str, stack: str = HF) -> dict:
    rc, out, err = run_cli(capsys, ["predict", "--gpu", "h100-sxm", "--model", "llama-3.2-1b",
                                    "--stack", stack, "--batch", "4", "--ctx", "512",
                                    "--format", "json", *extra])
    assert rc == 0, err
    return json.loads(out)


def test_a_static_cache_is_priced_over_its_length(capsys: pytest.CaptureFixture[str]) -> None:
    plain = predict_json(capsys)
    cached = predict_json(capsys, "--cache-len", "4096")
    assert plain["cache_len"] == 513 and cached["cache_len"] == 4096
    want = step.predict(PLATFORM, MODEL, "decode", 4, 512, 1, cache_len=4096).seconds
    assert cached["step_ms"] == pytest.approx(float(np.asarray(want).ravel()[0]) * 1e3)
    # the event simulation (--timeline) runs the same kernels over the same cache
    timeline = step.simulate(PLATFORM, MODEL, "decode", 4, 512, 1, cache_len=4096)
    assert timeline.end_s * 1e3 == pytest.approx(cached["step_ms"])
    # attention, the keys' repeat and the mask run over every position of the cache
    assert cached["step_ms"] > 1.5 * plain["step_ms"]


def test_a_cache_length_is_refused_where_it_changes_nothing_or_is_too_short(
        capsys: pytest.CaptureFixture[str]) -> None:
    for extra, stack, words in ((["--cache-len", "4096"], "torch-fused", "ctx + q"),
                                (["--cache-len", "100"], HF, "513")):
        rc, out, err = run_cli(capsys, ["predict", "--gpu", "h100-sxm", "--model",
                                        "llama-3.2-1b", "--stack", stack, "--ctx", "512",
                                        *extra])
        assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1
        assert "--cache-len" in err and words in err


def write_rows(path: Path, cells: list[str]) -> Path:
    path.write_text("model,mode,batch,ctx,q,cache_len\n"
                    + "".join(f"llama-3.2-1b,decode,4,512,1,{c}\n" for c in cells))
    return path


def test_the_rows_cache_len_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = write_rows(tmp_path / "rows.csv", ["4096", "", "513"])

    def predicted(stack: str) -> list[float]:
        out = tmp_path / f"{stack}.csv"
        rc, _, err = run_cli(capsys, ["predict", "--gpu", "h100-sxm", "--stack", stack,
                                      "--in", str(rows), "--out", str(out)])
        assert rc == 0, err
        lines = out.read_text().splitlines()
        col = lines[0].split(",").index("predicted_ms")
        return [float(x.split(",")[col]) for x in lines[1:]]

    hf = predicted(HF)
    one = predict_json(capsys, "--cache-len", "4096")["step_ms"]
    assert hf[0] == pytest.approx(one) and hf[1] == pytest.approx(hf[2]) and hf[0] > hf[1]
    # a stack attending ctx + q keys: the column carried, the times equal
    fused = predicted("torch-fused")
    assert fused[0] == pytest.approx(fused[1]) == pytest.approx(fused[2])


def test_a_row_whose_cache_is_too_short_names_its_line(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    rows = write_rows(tmp_path / "rows.csv", ["4096", "512"])
    rc, _, err = run_cli(capsys, ["predict", "--gpu", "h100-sxm", "--stack", HF,
                                    "--in", str(rows), "--out", str(tmp_path / "p.csv")])
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "rows.csv:3: cache_len" in err and not (tmp_path / "p.csv").exists()


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 64), st.integers(0, 2000), st.integers(0, 4000), st.integers(0, 4000))
def test_a_longer_static_cache_never_runs_faster(batch: int, ctx: int, extra_a: int,
                                                 extra_b: int) -> None:
    short, long_ = sorted((ctx + 1 + extra_a, ctx + 1 + extra_b))
    two = np.ones(2)
    t = np.asarray(step.predict(PLATFORM, MODEL, "decode", batch * two, ctx * two, two,
                                cache_len=np.array([short, long_], float)).seconds)
    assert t[1] >= t[0] * (1 - 1e-12)


def test_the_envelope_judges_the_positions_a_static_cache_attends(
        capsys: pytest.CaptureFixture[str]) -> None:
    near = predict_json(capsys, "--cache-len", "2048")["envelope"]
    far = predict_json(capsys, "--cache-len", "100000")["envelope"]
    # ctx 512 alone is below the measured contexts; 2047 attended positions are not
    assert near == "ok"
    assert far.startswith("outside") and "ctx 99999 >" in far
