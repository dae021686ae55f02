"""Serving runs: invariants, preemption, rejection, static batching, closed loops,
bounded memory and determinism."""

from __future__ import annotations

import json
import math
import tracemalloc
from functools import lru_cache
from typing import Any

import pytest

from gpusim.io import calibrations, loader
from gpusim.io.scenario import scenario_trace
from gpusim.platform import Platform
from gpusim.report import serving_output as output
from gpusim.serving.invariants import InvariantError
from gpusim.serving.metrics import Metrics
from gpusim.serving.requests import Request
from gpusim.serving.scenario import Scenario
from gpusim.serving.simulate import Engine, build_engine, simulate

GPU = loader.load_gpu("h100-sxm")
MODEL = loader.load_model("llama-3.1-8b")
STACK = loader.load_stack()
CAL = calibrations.load_calibration("none", GPU, loader.load_stack())
TRACE = loader.ROOT / "workloads" / "traces" / "synthetic-chat.jsonl"

CHAT = {"prompt": {"dist": "lognormal", "median_tokens": 400, "sigma": 0.8, "max_tokens": 4096},
        "output": {"dist": "lognormal", "median_tokens": 200, "sigma": 0.7,
                   "max_tokens": 1024}}


def scenario(**kw: Any) -> Scenario:
    data: dict[str, Any] = {"seed": 1, "duration_s": 60,
                            "arrival": {"process": "poisson", "rate_per_s": 10}, **CHAT}
    data.update(kw)
    return Scenario.model_validate(data)


@lru_cache(maxsize=8)
def engine_for(max_num_seqs: int = 256, max_num_batched_tokens: int = 8192,
               reserve_fraction: float = 0.1, policy: str = "continuous") -> Engine:
    sc = scenario(scheduler={"max_num_seqs": max_num_seqs, "policy": policy,
                             "max_num_batched_tokens": max_num_batched_tokens,
                             "reserve_fraction": reserve_fraction})
    return build_engine(Platform(GPU, STACK, CAL), MODEL, sc)


def run(sc: Scenario) -> dict[str, Any]:
    s = sc.scheduler
    return simulate(engine_for(s.max_num_seqs, s.max_num_batched_tokens, s.reserve_fraction,
                               s.policy), sc, trace=scenario_trace(sc))


def check_common(out: dict[str, Any]) -> None:
    r, t = out["requests"], out["tokens"]
    assert all(out["invariants"].values())
    assert r["completed"] == r["accepted"] == r["arrived"] - r["rejected"]
    assert out["latency_s"]["ttft_s"]["max"] <= out["latency_s"]["e2e_s"]["max"]
    assert out["engine"]["max_kv_utilisation"] <= 1.0
    assert t["processed"] == t["prompt"] + t["output"] - r["completed"] + t["recomputed"]
    assert len(out["time_series"]["t_s"]) <= 256
    assert 0 < out["engine"]["hbm_bandwidth_fraction"] <= 1.0
    json.loads(output.json_text(out))  # valid JSON (no NaN)


def test_continuous_batching_run() -> None:
    out = run(scenario())
    check_common(out)
    assert out["requests"]["completed"] > 400
    assert out["engine"]["mean_running"] > 2
    lat = out["latency_s"]
    assert lat["ttft_s"]["p50"] <= lat["ttft_s"]["p90"] <= lat["ttft_s"]["p99"]
    # decode steps of an 8B model on an H100 take milliseconds
    assert 0.004 < lat["tpot_s"]["p50"] < 0.05
    assert out["goodput"]["fraction"] == pytest.approx(1.0)


def test_preemption_under_kv_pressure_conserves_tokens() -> None:
    """A small KV cache (most of HBM reserved) and long prompts force recompute."""
    sc = scenario(duration_s=60, arrival={"process": "poisson", "rate_per_s": 3},
                  prompt={"dist": "uniform", "low_tokens": 2000, "high_tokens": 8000},
                  output={"dist": "uniform", "low_tokens": 100, "high_tokens": 800},
                  scheduler={"reserve_fraction": 0.78})
    out = run(sc)
    check_common(out)
    assert out["kv_cache"]["capacity_tokens"] < 30000
    assert out["requests"]["preemptions"] > 0
    assert out["tokens"]["recomputed"] > 0
    assert out["engine"]["max_kv_utilisation"] > 0.9


def test_requests_that_can_never_fit_are_rejected() -> None:
    sc = scenario(duration_s=20, arrival={"process": "poisson", "rate_per_s": 2},
                  prompt={"dist": "empirical", "values_tokens": [100, 200_000]},
                  output={"dist": "fixed", "tokens": 10}, scheduler={"reserve_fraction": 0.78})
    out = run(sc)
    check_common(out)
    r = out["requests"]
    assert r["rejected"] > 0 and r["completed"] > 0
    assert set(r["rejected_by_reason"]) == {"exceeds_context_window"}
    sc = scenario(duration_s=20, arrival={"process": "poisson", "rate_per_s": 2},
                  prompt={"dist": "empirical", "values_tokens": [100, 60_000]},
                  output={"dist": "fixed", "tokens": 10}, scheduler={"reserve_fraction": 0.78})
    out = run(sc)
    assert set(out["requests"]["rejected_by_reason"]) == {"exceeds_kv_capacity"}


def test_static_batching_waits_for_the_whole_batch(tmp_path) -> None:
    """8 identical requests at t=0, batches of 4: the second batch starts exactly when
    the first has finished, and nothing is preempted."""
    trace = tmp_path / "eight.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n" + "0,300,50\n" * 8)
    sc = Scenario.model_validate({"trace": {"path": str(trace)},
                                  "scheduler": {"policy": "static", "max_num_seqs": 4}})
    out = run(sc)
    check_common(out)
    assert out["requests"]["completed"] == 8
    lat = out["latency_s"]
    first_batch_e2e = lat["e2e_s"]["min"]
    assert lat["queue_wait_s"]["p50"] == 0.0
    assert lat["queue_wait_s"]["min"] == 0.0
    assert lat["queue_wait_s"]["max"] == pytest.approx(first_batch_e2e, rel=1e-12)
    assert lat["e2e_s"]["max"] == pytest.approx(2 * first_batch_e2e, rel=1e-9)
    assert out["requests"]["preemptions"] == 0
    assert out["engine"]["max_running"] == 4


def test_static_is_slower_than_continuous_under_load() -> None:
    cont = run(scenario(duration_s=60))
    stat = run(scenario(duration_s=60, scheduler={"policy": "static"}))
    check_common(stat)
    assert stat["latency_s"]["e2e_s"]["mean"] > cont["latency_s"]["e2e_s"]["mean"]


def test_closed_loop_never_exceeds_its_users() -> None:
    sc = scenario(duration_s=60, arrival={"process": "closed", "users": 12, "think_time_s": 0.5})
    out = run(sc)
    check_common(out)
    e = out["engine"]
    assert e["max_running"] + e["max_queue_length"] <= 12
    assert out["littles_law"]["mean_in_system"] <= 12


def test_trace_replay() -> None:
    sc = Scenario.model_validate({"trace": {"path": str(TRACE)}})
    out = run(sc)
    check_common(out)
    assert out["requests"]["arrived"] == 562
    assert out["workload"]["kind"] == "trace"
    half = Scenario.model_validate({"trace": {"path": str(TRACE)}, "duration_s": 75})
    assert 200 < run(half)["requests"]["arrived"] < 562


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    a = output.json_text(run(scenario(seed=5)))
    b = output.json_text(run(scenario(seed=5)))
    c = output.json_text(run(scenario(seed=6)))
    assert a == b and a != c
    assert output.csv_text(run(scenario(seed=5))) == output.csv_text(run(scenario(seed=5)))


def test_memory_does_not_grow_with_run_length() -> None:
    """Peak traced memory of a run 4x as long grows by less than 100 kB (the step
    tables are built beforehand; streaming statistics keep the rest bounded)."""
    engine = engine_for()

    def peak(duration_s: float) -> int:
        sc = scenario(duration_s=duration_s, arrival={"process": "poisson", "rate_per_s": 8})
        tracemalloc.start()
        try:
            out = simulate(engine, sc)
            _, top = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert out["requests"]["completed"] > 8 * duration_s * 0.7
        return top

    peak(5)  # warm-up: first-use allocations (imports, caches) are not run-length
    short, long = peak(20), peak(80)
    assert long - short < 100_000, (short, long)
    assert long < 2_000_000


def test_invariant_violations_are_caught() -> None:
    m = Metrics(window_s=10, slo_ttft_s=1, slo_tpot_s=1)
    req = Request(0, arrival_s=5.0, prompt_tokens=3, output_tokens=2)
    m.arrive(5.0)
    req.generated = 2
    req.first_token_s = 9.0
    req.service_start_s = 5.0
    with pytest.raises(InvariantError, match="TTFT"):
        m.finish(req, 8.0)   # the last token before the first one
    with pytest.raises(InvariantError, match="clock"):
        m.arrive(4.0)
    with pytest.raises(InvariantError, match="non-positive"):
        m.step(6.0, 6.0, 1, 0.0, 0, 1, 0.0)


def test_empty_run() -> None:
    sc = scenario(duration_s=0.001, arrival={"process": "poisson", "rate_per_s": 0.001})
    out = run(sc)
    assert out["requests"]["completed"] == 0
    assert math.isnan(out["latency_s"]["ttft_s"]["mean"])
    assert json.loads(output.json_text(out))["latency_s"]["ttft_s"]["mean"] is None
