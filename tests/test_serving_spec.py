"""Speculative decoding inside the serving simulator (issue 6, item 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpusim.cli import main
from gpusim.io import calibrations, loader
from gpusim.io import scenario as scenario_io
from gpusim.io.overhead import load_overhead
from gpusim.platform import Platform
from gpusim.serving.simulate import build_engine, simulate

GPU = loader.load_gpu("h100-sxm")
TARGET = loader.load_model("llama-3.1-8b")
STACK = loader.load_stack(loader.REFERENCE_STACK)
CAL = calibrations.load_calibration("auto", GPU, STACK)


def scenario(rate: float = 2.0, seed: int = 1, **spec):
    return scenario_io.scenario_from_options(
        None, prompt_dist="512", output_dist="uniform:64-256", duration_s=20, seed=seed,
        rate_per_s=rate, max_num_seqs=64, max_num_batched_tokens=2048, **spec)


def engine(sc):
    """The engine for ``sc``, its draft and the shipped loop overhead resolved."""
    return build_engine(Platform(GPU, STACK, CAL), TARGET, sc,
                        scenario_io.scenario_draft(sc, loader.load_model),
                        load_overhead("auto", GPU))


def run(sc):
    return simulate(engine(sc), sc)


@pytest.fixture(scope="module")
def plain():
    return run(scenario())


def test_zero_acceptance_conserves_tokens_and_is_not_faster(plain) -> None:
    spec = run(scenario(spec_draft="ngram:0", spec_k=4, spec_acceptance=0.0))
    assert all(spec["invariants"].values())
    assert spec["requests"]["completed"] == plain["requests"]["completed"]
    assert spec["tokens"] == plain["tokens"]
    assert spec["speculative"]["acceptance"] == 0.0
    assert (spec["throughput"]["output_tokens_per_s"]
            <= plain["throughput"]["output_tokens_per_s"] * (1 + 1e-12))
    assert spec["latency_s"]["tpot_s"]["mean"] >= plain["latency_s"]["tpot_s"]["mean"]
    assert "speculative" not in plain


def test_high_acceptance_lowers_tpot_at_low_load(plain) -> None:
    spec = run(scenario(spec_draft="llama-3.2-1b", spec_k=4, spec_acceptance=0.9))
    assert all(spec["invariants"].values())
    assert spec["tokens"] == plain["tokens"]
    assert spec["latency_s"]["tpot_s"]["mean"] < 0.8 * plain["latency_s"]["tpot_s"]["mean"]
    # the draft's weights and KV shrink the KV cache
    assert spec["kv_cache"]["total_blocks"] < plain["kv_cache"]["total_blocks"]
    assert spec["kv_cache"]["weight_bytes"] > plain["kv_cache"]["weight_bytes"]


@pytest.mark.parametrize("draft", ["ngram", "eagle"])
def test_auto_k_smaller_at_larger_batch(draft: str) -> None:
    sc = scenario(spec_draft=draft, spec_k="auto", spec_acceptance=0.8)
    sc = sc.model_copy(update={"scheduler": sc.scheduler.model_copy(
        update={"max_num_seqs": 256, "max_num_batched_tokens": 4096})})
    spec = engine(sc).spec
    assert spec is not None and spec.k_fixed is None
    assert spec.choose_k(1, 1024) > spec.choose_k(256, 1024)
    c = spec.ctx_grid[len(spec.ctx_grid) // 2]
    for b in (1, 256):  # the table's pick maximises expected tokens per second
        best = max(spec.expected[k] / spec.iteration(k, b, c)[0] for k in spec.ks)
        k = spec.choose_k(b, c)
        assert spec.expected[k] / spec.iteration(k, b, c)[0] == pytest.approx(best)


def test_auto_k_with_zero_acceptance_picks_one() -> None:
    spec = engine(scenario(
        spec_draft="llama-3.2-1b", spec_k="auto", spec_acceptance=0.0)).spec
    assert spec is not None
    assert {spec.choose_k(b, 600) for b in (1, 16, 64)} == {1}


def test_same_seed_same_result_and_seed_matters() -> None:
    opts = {"spec_draft": "llama-3.2-1b", "spec_k": "auto", "spec_acceptance": 0.7}
    a = run(scenario(rate=8.0, **opts))
    b = run(scenario(rate=8.0, **opts))
    c = run(scenario(rate=8.0, seed=2, **opts))
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert json.dumps(a, sort_keys=True) != json.dumps(c, sort_keys=True)
    assert all(a["invariants"].values())


def test_scenario_yaml_key(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("duration_s: 5\narrival: {process: poisson, rate_per_s: 1}\n"
                    "prompt: {dist: fixed, tokens: 128}\noutput: {dist: fixed, tokens: 32}\n"
                    "speculative: {draft: eagle, k: auto, acceptance: 0.6}\n")
    sc = scenario_io.scenario_from_options(path)
    assert sc.speculative is not None and sc.speculative.k == "auto"
    sc2 = scenario_io.scenario_from_options(path, spec_k=3)
    assert sc2.speculative is not None and sc2.speculative.k == 3
    assert sc2.speculative.draft == "eagle"
    assert all(run(sc2)["invariants"].values())


def test_cli_spec_options_and_bad_k(tmp_path: Path, capsys) -> None:
    base = ["serve", "--gpu", "h100-sxm", "--model", "llama-3.1-8b", "--quiet", "--rate",
            "1", "--duration-s", "5", "--prompt-dist", "128", "--output-dist", "32"]
    out = tmp_path / "r.json"
    assert main([*base, "--spec-draft", "llama-3.2-1b", "--spec-k", "auto",
                 "--spec-acceptance", "0.8", "--out-json", str(out),
                 "--out-csv", str(tmp_path / "r.csv")]) == 0
    assert json.loads(out.read_text())["speculative"]["k"] == "auto"
    capsys.readouterr()
    for bad in (["--spec-draft", "llama-3.2-1b", "--spec-k", "zero"],
                ["--spec-draft", "llama-3.2-1b", "--spec-k", "0"],
                ["--spec-k", "4"],
                ["--spec-draft", "llama-3.2-1b", "--spec-acceptance", "1.5"]):
        assert main([*base, *bad]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert "--spec-" in err


# --- KV reserved for every draft position (issue 21, item 5) ------------------------
def test_a_decoding_sequence_holds_kv_for_all_k_draft_positions() -> None:
    from gpusim.serving.kv_cache import PagedKVCache
    from gpusim.serving.requests import Request
    from gpusim.serving.scheduler import ContinuousBatching
    from gpusim.serving.state import EngineState

    # block 16, k = 4: a 14-token prompt that goes on decoding holds 14 + 4 = 18
    # tokens: 2 blocks, where plain decoding holds 1
    for lookahead, blocks in ((4, 2), (0, 1)):
        kv = PagedKVCache(10, 16, lookahead=lookahead)
        st = EngineState(kv)
        req = Request(0, 0.0, 14, 10)
        st.waiting.append(req)
        batch = ContinuousBatching(8, 64).schedule(st, 0.0)
        assert [(n, ctx) for _, ctx, n in batch.chunks] == [(14, 0)]
        assert kv.used_blocks == blocks
        req.computed, req.generated = 14, 1
        st.start_decoding(req)
        assert (kv.tokens(0), kv.group_tokens, kv.blocks(0)) == (14, 14, blocks)
        kv.check()
    # a one-token answer never decodes: no lookahead for it
    kv = PagedKVCache(10, 16, lookahead=4)
    st = EngineState(kv)
    st.waiting.append(Request(1, 0.0, 14, 1))
    ContinuousBatching(8, 64).schedule(st, 0.0)
    assert kv.used_blocks == 1


def test_advance_blocks_counts_blocks_the_accepted_tokens_cross_into() -> None:
    from gpusim.serving.kv_cache import PagedKVCache

    kv = PagedKVCache(100, 16, lookahead=4)
    for seq, tokens in ((0, 14), (1, 26), (2, 32)):   # held: 18, 30, 36
        kv.allocate(seq, tokens + 4)
        kv.join_group(seq)
    kv.group_step()                                     # held: 19, 31, 37
    # growing 4 more: 19 -> 23 stays in block 2; 31 -> 35 crosses into block 3;
    # 37 -> 41 stays in block 3. 11: 30, 42, 48; 12: 31, 43, 49; 14: 33, 45, 51
    assert kv.advance_blocks(4) == 0 + 1 + 0
    assert kv.advance_blocks(11) == 0 + 1 + 0
    assert kv.advance_blocks(12) == 0 + 1 + 1
    assert kv.advance_blocks(14) == 1 + 1 + 1


def test_speculating_engine_reserves_lookahead_in_every_step() -> None:
    from gpusim.serving.conversation import ListedSource
    from gpusim.serving.loop import ServingLoop

    sc = scenario(spec_draft="ngram", spec_k=4, spec_acceptance=0.6)
    eng = build_engine(Platform(GPU, STACK, CAL), TARGET, sc,
                       scenario_io.scenario_draft(sc, loader.load_model),
                       load_overhead("auto", GPU), kv_blocks=40)
    rows = [(0.01 * i, 100 + 7 * i, 60, ((-1 - i, 100 + 7 * i),), -100 - i)
            for i in range(8)]
    loop = ServingLoop(eng, sc, source=ListedSource(rows, "test"))
    kv = loop.state.kv
    spec_steps = 0
    while not loop.finished:
        record = loop.step()
        spec_steps += record.plan.speculative_k is not None
        for rid in kv.group_members():
            assert kv.blocks(rid) == kv.blocks_for(kv.tokens(rid) + 4)
        kv.check()
    out = loop.summary().as_dict()
    assert spec_steps > 0 and all(out["invariants"].values())
    assert out["tokens"]["output"] == 8 * 60
