"""The serving loop stepped from a notebook: ``peek`` predicts ``step`` exactly and
changes nothing, the step records add up to the run, and stepping to the end reports
what ``simulate`` reports."""

from __future__ import annotations

import copy
from functools import lru_cache
from itertools import pairwise
from typing import Any

import pytest

from gpusim.io import calibrations, loader
from gpusim.io import scenario as scenario_io
from gpusim.io.overhead import load_overhead
from gpusim.platform import Platform
from gpusim.report import serving_output as output
from gpusim.serving.loop import LoopStateError, ServingLoop, StepPlan, StepRecord
from gpusim.serving.scenario import Scenario
from gpusim.serving.simulate import Engine, build_engine, simulate

GPU = loader.load_gpu("h100-sxm")
MODEL = loader.load_model("llama-3.1-8b")
STACK = loader.load_stack()
CAL = calibrations.load_calibration("none", GPU, STACK)
LIMITS = {"max_num_seqs": 32, "max_num_batched_tokens": 2048}


def scenario(**kw: Any) -> Scenario:
    data: dict[str, Any] = {
        "seed": 3, "duration_s": 4, "arrival": {"process": "poisson", "rate_per_s": 6},
        "prompt": {"dist": "lognormal", "median_tokens": 300, "sigma": 0.8,
                   "max_tokens": 3000},
        "output": {"dist": "uniform", "low_tokens": 1, "high_tokens": 120},
        "scheduler": LIMITS}
    data.update(kw)
    return Scenario.model_validate(data)


# a KV cache of about 12,000 tokens and long prompts: preemption by recompute
PRESSURE = {"arrival": {"process": "poisson", "rate_per_s": 3},
            "prompt": {"dist": "uniform", "low_tokens": 1500, "high_tokens": 3000},
            "output": {"dist": "uniform", "low_tokens": 50, "high_tokens": 300},
            "scheduler": {**LIMITS, "reserve_fraction": 0.795}}


def speculative() -> Scenario:
    return scenario_io.scenario_from_options(
        None, prompt_dist="256", output_dist="uniform:16-96", duration_s=3, seed=2,
        rate_per_s=4, spec_draft="ngram", spec_k=3, spec_acceptance=0.7, **LIMITS)


@lru_cache(maxsize=4)
def engine(name: str) -> tuple[Engine, Scenario]:
    sc = {"plain": scenario, "pressure": lambda: scenario(**PRESSURE),
          "speculative": speculative}[name]()
    return build_engine(Platform(GPU, STACK, CAL), MODEL, sc,
                        scenario_io.scenario_draft(sc, loader.load_model),
                        load_overhead("auto", GPU)), sc


def snapshot(loop: ServingLoop) -> tuple[Any, ...]:
    """Everything a step changes, by value."""
    st, kv, m = loop.state, loop.state.kv, loop.metrics
    return (loop.now, loop.finished, m.steps, m.tokens_processed, m.arrived,
            [r.rid for r in st.waiting], list(st.running), list(st.prefilling),
            kv.used_blocks, kv.ticks, kv.group_members(), list(st.finish_heap),
            [(r.computed, r.generated, r.finish_tick) for r in st.running.values()],
            copy.deepcopy(loop.spec_rng.bit_generator.state))


def step_through(name: str) -> tuple[ServingLoop, list[StepRecord]]:
    """Step a run to its end, peeking before every step."""
    eng, sc = engine(name)
    loop = ServingLoop(eng, sc)
    records = []
    while not loop.finished:
        before = snapshot(loop)
        plan = loop.peek()
        assert snapshot(loop) == before          # peek changes nothing ...
        assert loop.peek() == plan               # ... so peeking again says the same
        assert isinstance(plan, StepPlan) and plan.start_s == loop.now
        record = loop.step()
        assert record.plan == plan               # and the step did what peek said
        records.append(record)
    return loop, records


@pytest.mark.parametrize("name", ["plain", "pressure", "speculative"])
def test_peek_predicts_step_and_stepping_gives_simulates_summary(name: str) -> None:
    loop, records = step_through(name)
    eng, sc = engine(name)
    stepped = loop.summary().as_dict()
    assert output.json_text(stepped) == output.json_text(simulate(eng, sc))
    # the records add up to the run
    assert len(records) == stepped["engine"]["steps"]
    assert [r.plan.index for r in records] == list(range(len(records)))
    assert sum(r.plan.tokens for r in records) == stepped["tokens"]["processed"]
    assert all(a.plan.end_s <= b.plan.start_s for a, b in pairwise(records))
    finished = [rid for r in records for rid in r.finished]
    assert len(finished) == len(set(finished)) == stepped["requests"]["completed"]
    admitted = [rid for r in records for rid in r.plan.admitted]
    preempted = [rid for r in records for rid in r.plan.preempted]
    assert len(admitted) == stepped["requests"]["completed"] + len(preempted)
    assert len(preempted) == stepped["requests"]["preemptions"]
    if name == "pressure":
        assert preempted
    if name == "speculative":
        assert any(r.plan.speculative_k == 3 and r.plan.accepted_tokens for r in records)


def test_records_describe_the_batch() -> None:
    _, records = step_through("plain")
    first = records[0].plan
    assert first.decoding == () and len(first.prefill) == len(first.admitted) >= 1
    assert all(c.cached_tokens == 0 for c in first.prefill)
    for r in records:
        p = r.plan
        assert p.duration_s > 0 and p.end_s == p.start_s + p.duration_s
        assert p.tokens == (len(p.decoding) + sum(c.new_tokens for c in p.prefill)
                            + p.accepted_tokens)
        assert p.decode_ctx_tokens >= 0 and p.hbm_bytes > 0


def test_run_until_then_to_the_end() -> None:
    eng, sc = engine("plain")
    loop = ServingLoop(eng, sc)
    loop.run(until=1.0)
    assert not loop.finished and loop.now >= 1.0
    steps = loop.metrics.steps
    loop.run(until=1.0)                  # no step starts before 1 s any more
    assert loop.metrics.steps == steps
    loop.step()
    loop.run()
    assert loop.finished
    assert (output.json_text(loop.summary().as_dict())
            == output.json_text(simulate(eng, sc)))


def test_out_of_turn_calls_are_refused() -> None:
    eng, sc = engine("plain")
    loop = ServingLoop(eng, sc)
    with pytest.raises(LoopStateError, match="not finished"):
        loop.summary()
    loop.run()
    assert loop.peek() is None
    with pytest.raises(LoopStateError, match="finished"):
        loop.step()
    # summary() only reads: asking twice gives the same report
    assert (output.json_text(loop.summary().as_dict())
            == output.json_text(loop.summary().as_dict()))


def test_engine_for_other_limits_is_refused() -> None:
    eng, _ = engine("plain")
    with pytest.raises(ValueError, match="smaller scheduler limits"):
        ServingLoop(eng, scenario(scheduler={"max_num_seqs": 64}))
