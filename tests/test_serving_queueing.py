"""Queueing theory as the oracle: M/D/1 waiting time and Little's law."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest

from gpusim.io import calibrations, loader
from gpusim.platform import Platform
from gpusim.serving.scenario import Scenario
from gpusim.serving.simulate import Engine, build_engine, simulate

GPU = loader.load_gpu("h100-sxm")
MODEL = loader.load_model("llama-3.1-8b")
STACK = loader.load_stack()
CAL = calibrations.load_calibration("none", GPU, loader.load_stack())
PROMPT, OUTPUT = 128, 2


def md1_scenario(seed: int, rate: float, duration_s: float) -> Scenario:
    return Scenario.model_validate({
        "seed": seed, "duration_s": duration_s,
        "arrival": {"process": "poisson", "rate_per_s": rate},
        "prompt": {"dist": "fixed", "tokens": PROMPT},
        "output": {"dist": "fixed", "tokens": OUTPUT},
        "scheduler": {"max_num_seqs": 1, "max_num_batched_tokens": PROMPT}})


@lru_cache(maxsize=1)
def md1_engine() -> Engine:
    return build_engine(Platform(GPU, STACK, CAL), MODEL, md1_scenario(0, 1.0, 1.0))


def service_time_s(engine: Engine) -> float:
    """One request alone: a prefill step of the prompt, then a decode step per further
    output token at a context one longer each time (from the step-time model)."""
    sm = engine.step_model
    s = sm.step(0, 0, [(PROMPT, 0)])[0]
    return s + sum(sm.decode_step(1, PROMPT + j)[0] for j in range(OUTPUT - 1))


def test_md1_mean_wait_matches_pollaczek_khinchine() -> None:
    """Batch size 1, fixed lengths (deterministic service S), Poisson arrivals at
    rho = 0.6: the mean wait from arrival to start of service is rho S / (2 (1 - rho)).
    8 seeds x ~20,000 requests; the per-seed spread is ~2%, the mean's ~0.7%."""
    engine = md1_engine()
    s = service_time_s(engine)
    rho = 0.6
    rate = rho / s
    expected = rho * s / (2 * (1 - rho))
    waits = []
    for seed in range(8):
        out = simulate(engine, md1_scenario(seed, rate, 20000 / rate))
        lat = out["latency_s"]
        waits.append(lat["queue_wait_s"]["mean"])
        # service really is deterministic: e2e - wait == S for every request
        assert lat["e2e_s"]["mean"] - lat["queue_wait_s"]["mean"] == pytest.approx(s, rel=1e-9)
        assert lat["e2e_s"]["max"] - lat["queue_wait_s"]["max"] == pytest.approx(s, rel=1e-6)
        assert out["requests"]["preemptions"] == 0
    error = np.mean(waits) / expected - 1
    assert abs(error) < 0.03, f"M/D/1 mean wait off by {error:+.2%}"


def test_littles_law_on_a_long_run() -> None:
    """Chat-like load for 20 simulated minutes: time-average requests in the system
    equals arrival rate x mean time in system within 2%."""
    sc = Scenario.model_validate({
        "seed": 4, "duration_s": 1200,
        "arrival": {"process": "poisson", "rate_per_s": 8},
        "prompt": {"dist": "lognormal", "median_tokens": 400, "sigma": 0.8,
                   "max_tokens": 4096},
        "output": {"dist": "lognormal", "median_tokens": 200, "sigma": 0.7,
                   "max_tokens": 1024}})
    out = simulate(build_engine(Platform(GPU, STACK, CAL), MODEL, sc), sc)
    ll = out["littles_law"]
    assert ll["mean_in_system"] > 5  # a busy system, not a trivial one
    assert ll["relative_gap"] < 0.02, ll
    assert ll["whole_run_relative_gap"] < 1e-9
