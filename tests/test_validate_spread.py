"""The lease-to-lease spread line of validation/REPORT.md (calibration.validate)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gpusim.calibration import measurements
from gpusim.calibration.validate import lease_spread

ROOT = Path(__file__).resolve().parents[1]


def _data():
    return measurements.read_step_dir(ROOT / "validation/data/h100-sxm/steps.csv")


def test_same_measurements_have_no_spread_and_a_scaled_copy_has_its_factor():
    d = _data()
    assert "0.00% on average" in lease_spread(d, d)
    scaled = d.subset(np.isin(np.arange(len(d)), np.flatnonzero(d.launch == "graph")[:40]))
    object.__setattr__(scaled, "measured_s", scaled.measured_s * 1.02)
    line = lease_spread(d, scaled)
    assert "same 40 shapes" in line and "2.00% on average" in line and "max 2.0%" in line


def test_too_few_shared_shapes_say_nothing():
    d = _data()
    assert lease_spread(d, d.subset(np.arange(len(d)) < 4)) == ""


def test_the_committed_second_h100_lease_is_within_a_few_percent():
    d = _data()
    again = measurements.read_steps(
        ROOT / "validation/data/h100-sxm/lease_2026-12-06/steps.csv")
    line = lease_spread(d, again)
    assert "same 88 shapes" in line


def test_graph_and_eager_spreads_are_told_apart():
    d = _data()
    graph = np.flatnonzero(d.launch == "graph")[:10]
    eager = np.flatnonzero(d.launch == "eager")[:3]
    again = d.subset(np.isin(np.arange(len(d)), np.concatenate([graph, eager])))
    factor = np.where(again.launch == "eager", 2.0, 1.01)
    object.__setattr__(again, "measured_s", again.measured_s * factor)
    line = lease_spread(d, again)
    assert "graph: 10 shapes, 1.00% on average" in line
    assert "eager: 3 shapes, 100.00% on average" in line


def test_a_held_out_set_measured_again_is_spread_against_its_first_measurement():
    # prefill_shapes_lease2 holds prefill shapes no fit has seen: against the fitted
    # steps only its anchors match; against prefill_shapes (SPREAD_AGAINST) all 50 do
    from gpusim.calibration.held_out import SPREAD_AGAINST
    from gpusim.calibration.measurements import read_steps
    from gpusim.io import loader

    gpu_dir = loader.ROOT / "validation" / "data" / "h100-sxm"
    again = read_steps(gpu_dir / "prefill_shapes_lease2" / "steps.csv")
    first = read_steps(gpu_dir / SPREAD_AGAINST["prefill_shapes_lease2"] / "steps.csv")
    line = lease_spread(first, again)
    assert "the same 50 shapes" in line
    mean_pct = float(line.split(": ")[1].split("%")[0])
    assert 0.0 < mean_pct < 3.0


def test_held_out_sets_are_read_per_gpu_and_spread_against_their_first_measurement():
    from gpusim.calibration.held_out import HELD_OUT_SETS, held_out_sets, read_held_out
    from gpusim.io import loader

    data = loader.ROOT / "validation" / "data"
    by_gpu = {g: read_held_out(data / g) for g in ("h100-sxm", "h200")}
    sets = held_out_sets(by_gpu)
    labels = [label for _, label, _ in HELD_OUT_SETS]
    assert [h.label for h in sets] == [x for x in labels if x in {h.label for h in sets}]
    again = next(h for h in sets if h.label == "prefill shapes never fitted, another lease")
    first = next(h for h in sets if h.label == "prefill shapes never fitted")
    assert set(again.data) == {"h100-sxm"} and again.against == first.data
    qwen3 = next(h for h in sets if h.label == "Qwen3 models never fitted")
    qwen3_again = next(h for h in sets if h.label.startswith("Qwen3 and anchors"))
    assert qwen3_again.against == qwen3.data
    # a set measured once is spread against the fitted steps (no measurement of its own)
    assert all(h.against == {} for h in sets if h not in (again, qwen3_again))
    assert set(sets[0].data) == {"h100-sxm", "h200"}
