"""Each lease's speed fitted beside the GPU physics (calibration.lease_factors): the
physics prices the average lease, each lease counted once however many steps it has."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from gpusim.calibration import fit as cal_fit
from gpusim.calibration import measurements
from gpusim.calibration.lease_factors import STACKS_CAMPAIGN, best_log_factors, lease_ids
from gpusim.io import loader

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "validation/data/h100-sxm"


def _fake_lease(data: measurements.StepData, lease: str, speed: float
                ) -> measurements.StepData:
    """``data`` as if measured on pooled lease ``lease``, every step ``speed`` times as
    long."""
    return replace(data, measured_s=data.measured_s * speed,
                   source=str(DATA / lease / "steps.csv"))


def test_rows_are_numbered_by_lease():
    ref = measurements.read_steps(DATA / "steps.csv")
    a, b = ref.subset(np.arange(len(ref)) < 3), ref.subset(np.arange(len(ref)) < 2)
    stack, fused = loader.load_stack("torch-hf"), loader.load_stack("torch-fused")
    ids, names = lease_ids(4, [(_fake_lease(a, "second_lease", 1.0), stack),
                               (replace(b, source="stacks/torch-fused/steps.csv"), fused),
                               (_fake_lease(b, "second_lease", 1.0), stack)])
    assert names == ["fitted", "second_lease", STACKS_CAMPAIGN]
    assert ids.tolist() == [0] * 4 + [1] * 3 + [2] * 2 + [1] * 2


@given(st.integers(0, 10_000), st.integers(1, 5))
@settings(max_examples=25, deadline=None)
def test_the_closed_form_factors_are_the_constrained_least_squares(seed, n):
    """Against a numerical minimisation of the same weighted sum of squares with the
    logs summing to zero (a lease with no rows gets 0)."""
    rng = np.random.default_rng(seed)
    err, w = rng.normal(size=40), rng.uniform(0.2, 3.0, 40)
    ids = rng.integers(0, n, 40)
    u = best_log_factors(err, w, ids, n + 1)          # lease n has no rows
    assert abs(u.sum()) < 1e-12 and u[n] == 0.0

    def cost(v):
        full = np.concatenate([[-v.sum()], v])
        return float(np.sum((w * (err + full[ids])) ** 2))

    best = minimize(cost, np.zeros(n - 1), tol=1e-12).x if n > 1 else np.zeros(0)
    assert cost(u[1:n]) == pytest.approx(cost(best), rel=1e-6, abs=1e-9)
    np.testing.assert_allclose(u[:n], np.concatenate([[-best.sum()], best]), atol=1e-5)


@pytest.fixture(scope="module")
def small():
    ref = measurements.read_step_dir(DATA / "steps.csv")
    # two models' decode graph steps: a fit of seconds
    return ref.subset(np.isin(ref.model, ["llama-3.2-1b", "llama-3.1-8b"])
                      & (ref.mode == "decode") & (ref.launch == "graph"))


def test_a_uniformly_faster_lease_moves_the_physics_to_the_mean(small):
    """A second lease running every step 4% faster, measured on a third of the shapes:
    the physics lands on the geometric mean of the two leases (2% faster than the fitted
    one alone everywhere), not on the mean of the rows (1.3%), and keeps its shape."""
    gpu, stack = loader.load_gpu("h100-sxm"), loader.load_stack("torch-hf")
    third = small.subset(np.arange(len(small)) % 3 == 0)
    alone = cal_fit.fit(small, gpu, stack, loader.load_model).calibration
    both = cal_fit.fit(small, gpu, stack, loader.load_model,
                       also=[(_fake_lease(third, "lease_2026-12-07_1656", 0.96), stack)]
                       ).calibration
    groups = cal_fit.make_groups(small, stack, loader.load_model)
    ratio = (cal_fit.predict_groups(groups, len(small), gpu, both)
             / cal_fit.predict_groups(groups, len(small), gpu, alone))
    mean = float(np.exp(np.mean(np.log(ratio))))
    assert mean == pytest.approx(np.sqrt(0.96), abs=0.003)
    assert np.max(np.abs(ratio / mean - 1)) < 0.01
