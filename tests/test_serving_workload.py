"""Workloads: arrival processes, length distributions, traces and scenario files."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from gpusim.errors import ConfigError
from gpusim.io import loader
from gpusim.io.scenario import load_scenario, parse_length, with_overrides
from gpusim.io.trace import read_trace
from gpusim.serving.scenario import ArrivalSpec, LengthSpec, Scenario
from gpusim.serving.workload import (
    ClosedLoopSource,
    OpenLoopSource,
    interarrival_sampler,
    length_sampler,
)

ROOT = loader.ROOT
SCENARIOS = sorted((ROOT / "workloads" / "scenarios").glob("*.yaml"))
TRACES = ROOT / "workloads" / "traces"


def take(it, n: int) -> np.ndarray:
    return np.asarray([next(it) for _ in range(n)], dtype=np.float64)


def test_poisson_and_gamma_gaps() -> None:
    rng = np.random.default_rng(11)
    gaps = take(interarrival_sampler(ArrivalSpec(process="poisson", rate_per_s=4.0), rng),
                40000)
    assert gaps.mean() == pytest.approx(0.25, rel=0.02)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.03)
    gaps = take(interarrival_sampler(ArrivalSpec(process="gamma", rate_per_s=4.0, cv=3.0),
                                     rng), 40000)
    assert gaps.mean() == pytest.approx(0.25, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(3.0, rel=0.08)


@pytest.mark.parametrize(("spec", "check"), [
    ({"dist": "fixed", "tokens": 7}, lambda x: (x == 7).all()),
    ({"dist": "uniform", "low_tokens": 3, "high_tokens": 9},
     lambda x: x.min() == 3 and x.max() == 9 and abs(x.mean() - 6) < 0.1),
    ({"dist": "lognormal", "median_tokens": 500, "sigma": 0.8, "max_tokens": 4000},
     lambda x: abs(np.median(x) / 500 - 1) < 0.03 and x.max() <= 4000 and x.min() >= 1),
    ({"dist": "empirical", "values_tokens": [10, 20], "weights": [3, 1]},
     lambda x: set(x.tolist()) == {10, 20} and abs((x == 10).mean() - 0.75) < 0.02),
])
def test_length_distributions(spec: dict, check) -> None:
    x = take(length_sampler(LengthSpec(**spec), np.random.default_rng(2)), 10000)
    assert check(x)
    assert (x == np.round(x)).all()


def test_sources_are_deterministic_per_seed() -> None:
    arrival = ArrivalSpec(process="poisson", rate_per_s=10)
    plen = LengthSpec(dist="lognormal", median_tokens=100, sigma=1.0)
    olen = LengthSpec(dist="uniform", low_tokens=1, high_tokens=50)

    def draw(seed: int) -> list[tuple]:
        src = OpenLoopSource(arrival, plen, olen, 100.0, np.random.default_rng(seed))
        return [src.pop() for _ in range(500)]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


def test_open_loop_stops_at_duration() -> None:
    src = OpenLoopSource(ArrivalSpec(process="poisson", rate_per_s=50),
                         LengthSpec(dist="fixed", tokens=1), LengthSpec(dist="fixed", tokens=1),
                         2.0, np.random.default_rng(0))
    times = []
    while src.next_s != math.inf:
        times.append(src.pop()[0])
    assert times == sorted(times) and times[-1] < 2.0 and 60 < len(times) < 140


def test_closed_loop_waits_for_users() -> None:
    src = ClosedLoopSource(ArrivalSpec(process="closed", users=3, think_time_s=1.0),
                           LengthSpec(dist="fixed", tokens=5), LengthSpec(dist="fixed", tokens=5),
                           100.0, np.random.default_rng(0))
    users = [src.pop()[3] for _ in range(3)]
    assert sorted(users) == [0, 1, 2] and src.next_s == math.inf
    src.done(1, 10.0)
    t, _, _, user = src.pop()
    assert user == 1 and t >= 10.0


def test_shipped_trace_csv_and_jsonl_agree() -> None:
    a = read_trace(TRACES / "synthetic-chat.jsonl")
    b = read_trace(TRACES / "synthetic-chat.csv")
    assert len(a) == len(b) > 100
    assert np.array_equal(a.arrival_s, b.arrival_s)
    assert np.array_equal(a.prompt_tokens, b.prompt_tokens)
    assert np.array_equal(a.output_tokens, b.output_tokens)


def test_shipped_trace_is_reproducible_from_its_script() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_trace",
                                                  TRACES / "make_synthetic_trace.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.make()
    t = read_trace(TRACES / "synthetic-chat.jsonl")
    assert [r[0] for r in rows] == t.arrival_s.tolist()
    assert [r[1] for r in rows] == t.prompt_tokens.tolist()


@pytest.mark.parametrize(("name", "text", "where"), [
    ("bad.jsonl", '{"arrival_s": 0, "prompt_tokens": 1, "output_tokens": 1}\n{oops\n',
     ":2: invalid JSON"),
    ("order.jsonl", '{"arrival_s": 2, "prompt_tokens": 1, "output_tokens": 1}\n\n'
     '{"arrival_s": 1, "prompt_tokens": 1, "output_tokens": 1}\n', ":3: arrival_s: "),
    ("neg.csv", "arrival_s,prompt_tokens,output_tokens\n0,5,3\n1,0,3\n", ":3: prompt_tokens:"),
    ("frac.csv", "prompt_tokens,output_tokens,arrival_s\n5,2.5,0\n", ":2: output_tokens:"),
    ("cols.csv", "arrival_s,prompt_tokens\n0,5\n", ":1: output_tokens: required column"),
    ("key.jsonl", '{"arrival_s": 0, "prompt_tokens": 1, "output_tokens": 1, "x": 1}\n',
     ":1: x: unknown key"),
    ("nan.csv", "arrival_s,prompt_tokens,output_tokens\nnan,1,1\n", ":2: arrival_s: must be"),
    ("empty.jsonl", "\n", "no requests"),
    ("trace.txt", "x", "must be a .jsonl or .csv"),
])
def test_trace_errors_name_file_and_line(tmp_path: Path, name: str, text: str,
                                         where: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        read_trace(path)
    msg = str(exc.value)
    assert msg.startswith(str(path)) and where in msg and "\n" not in msg


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_shipped_scenarios_load(path: Path) -> None:
    sc = load_scenario(path)
    assert sc.name == path.stem
    if sc.trace is not None:
        assert Path(sc.trace.path).is_file()


@pytest.mark.parametrize(("text", "where"), [
    ("duration_s: 10\narrival: {process: poisson, rate_per_s: 1}\nprompt: {dist: fixed, "
     "tokens: 5}\noutput: {dist: fixed, tokens: 5}\nschedulr: {}\n", ":5: schedulr: unknown key"),
    ("duration_s: 10\narrival:\n  process: poisson\n  rate: 1\nprompt: {dist: fixed, "
     "tokens: 5}\noutput: {dist: fixed, tokens: 5}\n", ":4: arrival.rate: unknown key"),
    ("duration_s: 10\narrival: {process: gamma, rate_per_s: 1}\nprompt: {dist: fixed, "
     "tokens: 5}\noutput: {dist: fixed, tokens: 5}\n", ":2: arrival: process gamma needs cv"),
    ("duration_s: -1\narrival: {process: poisson, rate_per_s: 1}\nprompt: {dist: fixed, "
     "tokens: 5}\noutput: {dist: fixed, tokens: 5}\n", ":1: duration_s: "),
    ("arrival: {process: poisson, rate_per_s: 1}\nprompt: {dist: fixed, tokens: 5}\n"
     "output: {dist: fixed, tokens: 5}\n", "needs duration_s"),
    ("duration_s: 10\narrival: {process: poisson, rate_per_s: 1}\nprompt: {dist: fixed, "
     "tokens: 5}\noutput: {dist: fixed, tokens: 5}\nscheduler:\n  max_num_seqs: 512\n"
     "  max_num_batched_tokens: 256\n", r":[56]: scheduler: max_num_batched_tokens \(256\)"),
])
def test_scenario_errors_name_file_line_and_field(tmp_path: Path, text: str, where: str
                                                  ) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_scenario(path)
    msg = str(exc.value)
    assert msg.startswith(str(path))
    assert where in msg or re.search(where, msg), msg


@pytest.mark.parametrize(("text", "expect"), [
    ("512", {"dist": "fixed", "tokens": 512}),
    ("fixed:64", {"dist": "fixed", "tokens": 64}),
    ("uniform:10-20", {"dist": "uniform", "low_tokens": 10, "high_tokens": 20}),
    ("lognormal:median=500,sigma=0.8,max=4096",
     {"dist": "lognormal", "median_tokens": 500.0, "sigma": 0.8, "max_tokens": 4096}),
    ("empirical:1,2,3", {"dist": "empirical", "values_tokens": [1, 2, 3]}),
])
def test_parse_length(text: str, expect: dict) -> None:
    assert parse_length(text, "--prompt-dist").model_dump(exclude_unset=True) == expect


@pytest.mark.parametrize("text", ["", "x", "uniform:5", "uniform:9-3", "lognormal:mu=3",
                                  "lognormal:median=5", "fixed:-3", "empirical:"])
def test_parse_length_errors_name_the_option(text: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_length(text, "--output-dist")
    assert str(exc.value).startswith("--output-dist")


def test_overrides() -> None:
    base = load_scenario(ROOT / "workloads" / "scenarios" / "chat-poisson.yaml")
    sc = with_overrides(base, rate_per_s=3.0, seed=9, max_num_seqs=8, slo_ttft_s=0.5)
    assert sc.arrival.rate_per_s == 3.0 and sc.seed == 9
    assert sc.scheduler.max_num_seqs == 8 and sc.slo.ttft_s == 0.5
    assert sc.prompt == base.prompt
    closed = with_overrides(base, arrival="closed", users=4)
    assert closed.arrival == ArrivalSpec(process="closed", users=4)
    traced = with_overrides(base, trace=TRACES / "synthetic-chat.csv")
    assert traced.arrival is None and traced.trace is not None
    with pytest.raises(ConfigError) as exc:
        with_overrides(base, rate_per_s=-1.0)
    assert str(exc.value).startswith("--rate")
    with pytest.raises(ConfigError) as exc:
        with_overrides(None, rate_per_s=1.0)
    assert "needs prompt, output" in str(exc.value)
    assert isinstance(with_overrides(None, arrival="poisson", rate_per_s=1.0, duration_s=5,
                                     prompt=parse_length("5", "-"),
                                     output=parse_length("5", "-")), Scenario)
