"""A static cache's length beyond ``predict``: ``gpusim spec --cache-len`` prices every
step of the loop (draft steps, verify, the plain-decoding baseline) of a stack that
attends its whole allocated cache (hf-transformers) over the cache it holds, counts it
in the memory check and names it in the output; other stacks refuse the option.
``serve`` and ``plan`` refuse such a stack in one line: a serving engine's sequences set
no static cache's length."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from gpusim.io import calibrations, loader
from gpusim.io.overhead import load_overhead
from gpusim.platform import Platform
from gpusim.speculative import iteration as it
from gpusim.speculative.acceptance import IidAcceptance
from gpusim.speculative.drafts import ModelDraft
from gpusim.speculative.iteration import Speculation
from gpusim.speculative.overhead import SpecOverhead
from gpusim.speculative.trees import TokenTree

HF = "hf-transformers"
GPU = loader.load_gpu("h100-sxm")


def platform(stack: str) -> Platform:
    st_ = loader.load_stack(stack)
    return Platform(GPU, st_, calibrations.load_calibration("auto", GPU, st_))


SPEC = Speculation(loader.load_model("llama-3.1-8b"), ModelDraft(loader.load_model(
    "llama-3.2-1b")), TokenTree.chain(4), IidAcceptance(0.8))
NODES = SPEC.tree.nodes


def spec_json(capsys: pytest.CaptureFixture[str], *extra: str, stack: str = HF) -> dict:
    rc, out, err = run_cli(capsys, ["spec", "--gpu", "h100-sxm", "--model", "llama-3.1-8b",
                                    "--draft", "llama-3.2-1b", "--k", "4", "--batch", "8",
                                    "--ctx", "1024", "--stack", stack, "--format", "json",
                                    *extra])
    assert rc == 0, err
    return json.loads(out)


def test_spec_prices_every_step_over_the_static_cache(capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    plain = spec_json(capsys)
    cached = spec_json(capsys, "--cache-len", "4096")
    # by default the fewest positions that hold the verify: the cache every step reads
    assert plain["cache_len"] == 1024 + NODES and cached["cache_len"] == 4096
    plat = platform(HF)
    ov = load_overhead("auto", GPU)   # the command's --overhead auto
    want = it.predict_iteration(plat, ov, SPEC, 8, 1024, cache_len=4096)
    assert cached["verify_ms"] == pytest.approx(float(want.verify_s[0]) * 1e3)
    # the draft's steps, the verify and the baseline's decode all read the longer cache
    for key in ("draft_ms", "verify_ms", "target_step_ms"):
        assert cached[key] > 1.5 * plain[key], key
    # the memory check counts every position of both caches
    assert cached["memory_bytes"] > plain["memory_bytes"]
    held = it.predict_iteration(plat, ov, SPEC, 8, 1024)
    # without a length, one static cache that just holds the verify, for every caller
    # (spec-sweep, sweep files, the trust fields) as for the command
    fewest = it.predict_iteration(plat, ov, SPEC, 8, 1024, cache_len=1024 + NODES)
    np.testing.assert_allclose(held.iteration_s, fewest.iteration_s, rtol=1e-12)
    assert plain["iteration_ms"] == pytest.approx(float(held.iteration_s[0]) * 1e3)
    per_position = (float(want.memory_bytes[0]) - float(held.memory_bytes[0])) / (
        8 * (4096 - 1024 - NODES))
    assert per_position == pytest.approx(
        SPEC.target.kv_bytes_per_token + SPEC.draft.model.kv_bytes_per_token, rel=1e-9)
    # the event simulation (--timeline) runs the same iteration
    tl = it.simulate_iteration(plat, ov, SPEC, 8, 1024, cache_len=4096)
    assert tl.end_s == pytest.approx(float(want.iteration_s[0]), rel=1e-9)


def test_spec_cache_len_refused_where_it_changes_nothing_or_is_too_short(
        capsys: pytest.CaptureFixture[str]) -> None:
    for extra, stack, words in ((["--cache-len", "4096"], "torch-fused", "static cache"),
                                (["--cache-len", "1025"], HF, str(1024 + NODES))):
        rc, out, err = run_cli(capsys, ["spec", "--gpu", "h100-sxm", "--model",
                                        "llama-3.1-8b", "--draft", "llama-3.2-1b", "--k", "4",
                                        "--ctx", "1024", "--stack", stack, *extra])
        assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1
        assert "--cache-len" in err and words in err


def test_a_stack_reading_new_keys_only_ignores_the_cache_length() -> None:
    """The library takes a cache length for any stack; one that attends ctx + q keys
    prices the same iteration (only its memory grows)."""
    plat = platform("torch-fused")
    a = it.predict_iteration(plat, SpecOverhead(), SPEC, 4, 512)
    b = it.predict_iteration(plat, SpecOverhead(), SPEC, 4, 512, cache_len=2048)
    np.testing.assert_allclose(b.iteration_s, a.iteration_s, rtol=1e-12)
    assert float(b.memory_bytes[0]) > float(a.memory_bytes[0])


@settings(max_examples=10, deadline=None)
@given(ctx=st.integers(16, 2048), extra=st.integers(0, 2048), more=st.integers(1, 2048))
def test_a_longer_static_cache_is_never_faster(ctx: int, extra: int, more: int) -> None:
    plat = platform(HF)
    cache = ctx + NODES + extra
    a = it.predict_iteration(plat, SpecOverhead(), SPEC, 2, ctx, cache_len=cache)
    b = it.predict_iteration(plat, SpecOverhead(), SPEC, 2, ctx, cache_len=cache + more)
    for x, y in ((a.iteration_s, b.iteration_s), (a.target_step_s, b.target_step_s),
                 (a.memory_bytes, b.memory_bytes)):
        assert float(y[0]) >= float(x[0]) * (1 - 1e-12)


@pytest.mark.parametrize("argv,flag", [
    (["serve", "--gpu", "h100-sxm", "--model", "llama-3.2-1b", "--stack", HF, "--rate", "2",
      "--duration-s", "2", "--prompt-dist", "256", "--output-dist", "16"], "--stack"),
    (["plan", "--model", "llama-3.2-1b", "--traffic",
      "workloads/scenarios/chat-poisson.yaml", "--slo", "ttft_p99_s=2", "--gpus", "h100-sxm",
      "--stacks", f"torch-compile,{HF}", "--screen-only"], "--stacks"),
])
def test_serving_refuses_a_stack_that_attends_its_static_cache(
        capsys: pytest.CaptureFixture[str], argv: list[str], flag: str) -> None:
    rc, out, err = run_cli(capsys, argv)
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith(f"gpusim: error: {flag}:") and "allocated_cache" in err
