"""Prefix caching in the serving simulator (issue 21, item 4): hit rates worked out by
hand on small traces, block accounting, eviction, preemption, shared-prefix and
conversation workloads, byte-identical reruns."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import pytest

from gpusim.io import calibrations, loader
from gpusim.platform import Platform
from gpusim.report import serving_output as output
from gpusim.serving.conversation import ListedSource
from gpusim.serving.loop import ServingLoop
from gpusim.serving.prefix_cache import PrefixKVCache, block_hashes
from gpusim.serving.requests import Request
from gpusim.serving.scenario import Scenario
from gpusim.serving.simulate import Engine, build_engine, simulate

GPU = loader.load_gpu("h100-sxm")
MODEL = loader.load_model("llama-3.2-1b")
STACK = loader.load_stack()
PLATFORM = Platform(GPU, STACK, calibrations.load_calibration("none", GPU, STACK))
Row = tuple[float, int, int, tuple[tuple[int, int], ...], int]


def replay_scenario(block: int = 4, caching: bool = True, **sched: Any) -> Scenario:
    return Scenario.model_validate({
        "trace": {"path": "listed"},
        "scheduler": {"block_size_tokens": block, "prefix_caching": caching,
                      "max_num_seqs": 8, "max_num_batched_tokens": 64, **sched}})


@lru_cache(maxsize=8)
def engine(kv_blocks: int, block: int = 4) -> Engine:
    return build_engine(PLATFORM, MODEL, replay_scenario(block), kv_blocks=kv_blocks)


def replay(rows: list[Row], kv_blocks: int = 64, block: int = 4, check: bool = True,
           **sched: Any) -> tuple[ServingLoop, dict[str, Any]]:
    sc = replay_scenario(block, **sched)
    loop = ServingLoop(engine(kv_blocks, block), sc, source=ListedSource(rows, "test"))
    while not loop.finished:
        loop.step()
        if check:
            loop.state.kv.check()
    return loop, loop.summary().as_dict()


def test_shared_system_prompt_hit_rate_by_hand() -> None:
    # block 4; three requests, one at a time: an 8-token system prompt (key 0) and 3
    # tokens of their own. The first finds nothing; the next two find the system
    # prompt's 2 full blocks (their third block holds their own tokens). 16 / 33.
    rows = [(t, 11, 2, ((0, 8), (10 + i, 3)), 20 + i) for i, t in enumerate((0.0, 5.0, 10.0))]
    _, out = replay(rows)
    pc = out["prefix_cache"]
    assert (pc["lookups"], pc["query_tokens"], pc["hit_tokens"]) == (3, 33, 16)
    assert pc["hit_rate"] == pytest.approx(16 / 33)
    assert out["tokens"]["processed"] == 33 + 3 * 1 - 16   # prompts + 1 decode each - hits
    assert all(out["invariants"].values())
    # every request leaves 3 full blocks hashed: the shared two, and its own third
    # (its 3 tokens and its first answer token, written by its decode step)
    assert pc["cached_free_blocks_at_end"] == 2 + 3
    assert pc["evicted_blocks"] == 0


def test_conversation_turn_hits_its_history_by_hand() -> None:
    # turn 1: a 6-token message (key 10), a 3-token answer (key 11); its KV ends at 8
    # tokens (the last answer token is never cached): blocks [10:0-4] and
    # [10:4-6, 11:0-2], both full. Turn 2 repeats all that plus 2 tokens (key 12): 11
    # tokens, of which (11 - 1) // 4 = 2 blocks may hit, and both do: 8 / 17.
    rows = [(0.0, 6, 3, ((10, 6),), 11), (5.0, 11, 1, ((10, 6), (11, 3), (12, 2)), 13)]
    _, out = replay(rows)
    pc = out["prefix_cache"]
    assert (pc["query_tokens"], pc["hit_tokens"]) == (17, 8)
    assert out["tokens"]["processed"] == (6 + 2) + (11 - 8)


def test_concurrent_requests_share_blocks_and_counts_them_once() -> None:
    # request 1 arrives while request 0 still decodes: it takes 0's two full prompt
    # blocks (reference count 2), so both together hold 2 + 1 + 1 blocks, not 6
    rows = [(0.0, 9, 50, ((0, 9),), 1), (1e-6, 10, 50, ((0, 9), (2, 1)), 3)]
    loop = ServingLoop(engine(64), replay_scenario(), source=ListedSource(rows, "test"))
    while len(loop.state.running) < 2 or loop.state.prefilling:
        loop.step()
    kv = loop.state.kv
    assert isinstance(kv, PrefixKVCache)
    assert kv.hit_tokens == 8
    assert kv.used_blocks == 2 + 1 + 1
    kv.check()


def test_eviction_takes_least_recently_freed_blocks_first() -> None:
    # 6 blocks of 4, one request at a time, each with 1 answer token (no decode):
    # a (13 tokens) takes blocks 0-3, hashes 0-2, frees 3,2,1,0: queue 4 5 3 2 1 0.
    # b (13, other content) takes 4 5 3 2, evicting a's block 2; frees 2,3,5,4:
    #   queue 1 0 2 3 5 4, cached: a's 1 0, b's 3 5 4.
    # c (21) takes all six, evicting those 5; hashes 1 0 2 3 5; frees 4,5,3,2,0,1.
    # d repeats a's prompt: a's blocks are gone (0 hits); it takes 4 5 3 2, evicting
    #   three of c's. Evictions 1 + 5 + 3; c's 0 1 and d's 5 3 2 stay cached.
    rows = [(0.0, 13, 1, ((1, 13),), 2), (1.0, 13, 1, ((3, 13),), 4),
            (2.0, 21, 1, ((5, 21),), 6), (3.0, 13, 1, ((1, 13),), 7)]
    _, out = replay(rows, kv_blocks=6)
    pc = out["prefix_cache"]
    assert (pc["evicted_blocks"], pc["hit_tokens"]) == (9, 0)
    assert (pc["cached_free_blocks_at_end"], pc["peak_cached_free_blocks"]) == (5, 5)


def test_block_hashes_name_content_not_requests() -> None:
    a = Request(0, 0.0, 12, 4)
    a.segments, a.output_key = ((7, 5), (8, 7)), 9
    b = Request(1, 0.0, 12, 4)
    b.segments, b.output_key = ((7, 5), (8, 7)), 10
    c = Request(2, 0.0, 12, 4)
    c.segments, c.output_key = ((7, 4), (11, 8)), 12
    assert block_hashes(a, 3, 4) == block_hashes(b, 3, 4)
    assert block_hashes(c, 1, 4)[0] == block_hashes(a, 1, 4)[0]   # first 4 tokens equal
    assert block_hashes(c, 2, 4)[1] != block_hashes(a, 2, 4)[1]
    # answers differ: the blocks after the prompt differ
    assert block_hashes(a, 4, 4)[3] != block_hashes(b, 4, 4)[3]


def shared_prefix_scenario(**kw: Any) -> Scenario:
    data: dict[str, Any] = {
        "seed": 5, "duration_s": 30, "arrival": {"process": "poisson", "rate_per_s": 8},
        "prompt": {"dist": "uniform", "low_tokens": 50, "high_tokens": 400},
        "output": {"dist": "uniform", "low_tokens": 20, "high_tokens": 200},
        "prefix": {"shared_tokens": 1024, "prompts": 4},
        "scheduler": {"prefix_caching": True, "max_num_seqs": 32,
                      "max_num_batched_tokens": 2048}}
    data.update(kw)
    return Scenario.model_validate(data)


@lru_cache(maxsize=4)
def synth_engine(kv_blocks: int | None) -> Engine:
    return build_engine(PLATFORM, MODEL, shared_prefix_scenario(), kv_blocks=kv_blocks)


def test_shared_prefix_workload_hits_and_is_faster_than_without_caching() -> None:
    on = simulate(synth_engine(None), shared_prefix_scenario())
    off_sc = shared_prefix_scenario(scheduler={"prefix_caching": False, "max_num_seqs": 32,
                                               "max_num_batched_tokens": 2048})
    off = simulate(synth_engine(None), off_sc)
    assert "prefix_cache" not in off and "prefix_caching" not in off["scheduler"]
    pc = on["prefix_cache"]
    # 4 system prompts of 64 blocks: all but the first use of each one hit them
    n = on["requests"]["completed"]
    assert pc["hit_tokens"] >= (n - 4) * 1024
    assert on["tokens"]["processed"] < off["tokens"]["processed"] - (n - 4) * 1024 + 1
    assert on["latency_s"]["ttft_s"]["p50"] < off["latency_s"]["ttft_s"]["p50"]
    assert on["workload"]["prefix"] == {"shared_tokens": 1024, "prompts": 4}
    assert all(on["invariants"].values())


def test_preemption_with_prefix_caching_keeps_invariants_and_reruns_identically() -> None:
    # a KV cache of 200 blocks of 16 (3,200 tokens): preemption and eviction all along
    sc = shared_prefix_scenario(seed=9)
    outs = [simulate(synth_engine(200), sc) for _ in range(2)]
    assert outs[0]["requests"]["preemptions"] > 0
    assert outs[0]["prefix_cache"]["evicted_blocks"] > 0
    assert all(outs[0]["invariants"].values())
    assert output.json_text(outs[0]) == output.json_text(outs[1])


def test_conversations_hit_their_history() -> None:
    sc = shared_prefix_scenario(
        conversation={"turns": 4, "think_time_s": 1.0},
        arrival={"process": "poisson", "rate_per_s": 2},
        prefix={"shared_tokens": 256, "prompts": 1})
    eng = build_engine(PLATFORM, MODEL, sc)
    loop = ServingLoop(eng, sc)
    turns = 0
    while not loop.finished:
        loop.step()
    out = loop.summary().as_dict()
    turns = out["requests"]["completed"]
    pc = out["prefix_cache"]
    assert out["workload"]["kind"] == "conversations"
    # a later turn finds at least the conversation so far less its last partial block
    assert pc["hit_rate"] > 0.5
    assert turns > 2 * 30 * 2 * 0.5    # about 60 conversations of up to 4 turns
    json.loads(output.json_text(out))


@pytest.mark.parametrize("data, message", [
    ({"speculative": {"draft": "ngram"}}, "prefix caching with speculative"),
    ({"scheduler": {"prefix_caching": True, "policy": "static"}}, "continuous scheduler"),
    ({"conversation": {"turns": 2}, "arrival": {"process": "closed", "users": 4}},
     "open-loop arrival"),
])
def test_combinations_not_modelled_are_refused(data: dict[str, Any], message: str) -> None:
    base = shared_prefix_scenario().model_dump(exclude_none=True)
    base.update(data)
    with pytest.raises(ValueError, match=message):
        Scenario.model_validate(base)


def test_scenario_file_keys_and_their_errors(tmp_path) -> None:
    from gpusim.errors import ConfigError
    from gpusim.io.scenario import load_scenario

    good = tmp_path / "good.yaml"
    good.write_text("duration_s: 10\narrival: {process: poisson, rate_per_s: 1}\n"
                    "prompt: {dist: fixed, tokens: 64}\noutput: {dist: fixed, tokens: 8}\n"
                    "prefix: {shared_tokens: 256, prompts: 3}\n"
                    "conversation: {turns: 4, think_time_s: 2.5}\n"
                    "scheduler: {prefix_caching: true, cudagraph_capture_sizes: [1, 2, 4]}\n")
    sc = load_scenario(good)
    assert sc.prefix is not None and sc.prefix.prompts == 3
    assert sc.conversation is not None and sc.conversation.turns == 4
    assert sc.scheduler.prefix_caching and sc.scheduler.cudagraph_capture_sizes == (1, 2, 4)
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("prompts: 3", "prompt_count: 3"))
    with pytest.raises(ConfigError) as info:
        load_scenario(bad)
    assert "bad.yaml:5" in str(info.value) and "prompt_count" in str(info.value)
