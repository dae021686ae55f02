"""Measurements no calibration was fitted on (another lease, models or shapes outside
the fit), judged by ``validate`` in sections of their own, and the spread between two
measurements of the same shapes: the floor under any accuracy claim."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gpusim.calibration.measurements import StepData, read_steps


@dataclass(frozen=True)
class HeldOut:
    """Measurements no calibration was fitted on, by GPU name, with their report
    section's label and title."""

    label: str
    title: str
    data: dict[str, StepData]
    # by GPU name, the measurement its lease-to-lease spread is taken against (empty:
    # the fitted steps)
    against: dict[str, StepData] = field(default_factory=dict)


HELD_OUT_SETS = (  # subdirectory of <gpu>/ with a steps.csv -> label, title
    ("second_lease", "another machine", "Another machine of the same kind: the shipped "
     "calibration on a second lease's data (never fitted)"),
    ("unseen_models", "models never fitted", "Models the calibration never saw: the "
     "shipped calibration on their steps (never fitted)"),
    ("beyond_grid", "shapes beyond the fit", "Shapes beyond the fitted grid (batch up to "
     "1024, context up to 128k, verify at batch 256, prefill of 16k): the shipped "
     "calibration (never fitted)"),
    ("lease_2026-12-06", "another lease, 2026-12-06", "Another lease two weeks later "
     "(2026-12-06): the shipped calibration on shapes of the fitted grid measured again "
     "(never fitted)"),
    ("lease_2026-12-06_0447", "a third lease, 2026-12-06 04:47", "A third lease the same "
     "day (2026-12-06 04:47 UTC, the stacks campaign's torch-hf subset): the shipped "
     "calibration on shapes of the fitted grid measured again (never fitted)"),
    ("lease_2026-12-06_0722", "another lease, 2026-12-06 07:22", "Another lease "
     "(2026-12-06 07:22 UTC, the stacks campaign's torch-hf subset): the shipped "
     "calibration on shapes of the fitted grid measured again (never fitted)"),
    ("lease_2026-12-07_1656", "another lease, 2026-12-07 16:56", "Another lease "
     "(2026-12-07 16:56 UTC, the reference stack's half of a same-lease pair with "
     "torch-fused): the shipped calibration on the stacks grid measured again (never "
     "fitted)"),
    ("lease_2026-12-07_1724", "another lease, 2026-12-07 17:24", "Another lease "
     "(2026-12-07 17:24 UTC, the reference stack's half of a same-lease pair with "
     "torch-fused): the shipped calibration on the stacks grid measured again (never "
     "fitted)"),
    ("lease_2026-12-07_1844", "another lease, 2026-12-07 18:44", "Another lease "
     "(2026-12-07 18:44 UTC, the lease of the Qwen3 models below): the shipped "
     "calibration on shapes of the fitted grid measured again (never fitted)"),
    ("qwen3_2026-12-07", "Qwen3 models never fitted", "Qwen3 dense models (per-head q/k "
     "norms; 1.7B and 8B, 2026-12-07 18:44 UTC, the lease above): the shipped "
     "calibration on the stacks grid (never fitted)"),
    ("qwen3_2026-12-07_1941", "Qwen3 models never fitted, another lease", "Qwen3 4B "
     "and 14B (2026-12-07 19:41 UTC, measured after the stack files' q/k-norm sections "
     "were written from the 1.7B's profiles): the shipped calibration on the stacks grid "
     "(never fitted)"),
    ("lease_2026-12-07_1955", "Qwen3 and anchors, another lease, 2026-12-07 19:55",
     "Another lease (2026-12-07 19:55 UTC): the reference stack's Qwen3 1.7B and 8B steps "
     "measured again, beside 10 steps of fitted Llama shapes; the shipped calibration "
     "(never fitted); its spread against the first measurement of the Qwen3 steps"),
    ("lease_2026-12-07_2324", "another lease, 2026-12-07 23:24", "Another lease "
     "(2026-12-07 23:24 UTC, the reference stack's half of a same-lease pair with "
     "torch-fused): the shipped calibration on the stacks grid measured again (never "
     "fitted)"),
    ("prefill_shapes", "prefill shapes never fitted", "Prefill shapes no fit has seen "
     "(2026-12-07 11:07 UTC): 700-6144 tokens a prompt at batch 1-3 and 128-256 at batch "
     "16-32, five models (two never fitted), with decode anchors of the same lease: the "
     "shipped calibration (never fitted)"),
    ("prefill_shapes_lease2", "prefill shapes never fitted, another lease", "The same "
     "prefill shapes on another lease (2026-12-07 15:05 UTC): the shipped calibration "
     "(never fitted); its spread against the first lease's"),
)
# a held-out set measured again: its spread is taken against the first measurement
SPREAD_AGAINST = {"prefill_shapes_lease2": "prefill_shapes",
                  "lease_2026-12-07_1955": "qwen3_2026-12-07"}


def read_held_out(gpu_dir: Path) -> dict[str, StepData]:
    """The held-out sets measured under ``gpu_dir`` (``<gpu_dir>/<subdirectory>/
    steps.csv``), by subdirectory. Raises ConfigError for an unreadable file."""
    return {sub: read_steps(gpu_dir / sub / "steps.csv") for sub, _, _ in HELD_OUT_SETS
            if (gpu_dir / sub / "steps.csv").is_file()}


def held_out_sets(by_gpu: dict[str, dict[str, StepData]]) -> list[HeldOut]:
    """``HeldOut`` sets from ``read_held_out``'s result for each GPU (by name), in
    ``HELD_OUT_SETS``' order, each set measured again spread against its first
    measurement (``SPREAD_AGAINST``)."""
    def of(sub: str) -> dict[str, StepData]:
        return {gpu: sets[sub] for gpu, sets in by_gpu.items() if sub in sets}

    return [HeldOut(label, title, of(sub), of(SPREAD_AGAINST.get(sub, "")))
            for sub, label, title in HELD_OUT_SETS if of(sub)]


def lease_spread(fitted: StepData, again: StepData) -> str:
    """One line: how much the same shapes' measured step times differ between the
    fitted data and another measurement of them (another lease, another machine): the
    floor under any accuracy claim. Empty when fewer than 5 shapes match."""
    def key(d: StepData, i: int) -> tuple:
        return (str(d.model[i]), str(d.mode[i]), str(d.launch[i]), int(d.batch[i]),
                int(d.ctx[i]), int(d.q[i]))

    base = {key(fitted, i): float(fitted.measured_s[i]) for i in range(len(fitted))}
    pairs = [(str(again.launch[i]), abs(float(again.measured_s[i]) / base[k] - 1.0))
             for i in range(len(again)) if (k := key(again, i)) in base]
    if len(pairs) < 5:
        return ""
    launches = sorted({launch for launch, _ in pairs}, key=("graph", "eager").index)
    if len(launches) == 1:
        rel = np.array([r for _, r in pairs])
        return (f"Spread between the two measurements of the same {len(rel)} shapes: "
                f"{_spread(rel)} (the floor under the errors above).\n")
    # eager steps are host-bound: their spread is the two hosts' CPUs, not the GPU's
    parts = [f"{launch}: {n} shapes, {_spread(rel)}" for launch in launches
             if (n := len(rel := np.array([r for la, r in pairs if la == launch])))]
    return ("Spread between the two measurements of the same shapes, by launch (the floor "
            "under the errors above; eager steps are host-bound, so theirs is the two hosts' "
            "CPUs): " + "; ".join(parts) + ".\n")


def _spread(rel: np.ndarray) -> str:
    """Mean, p90 and max of relative differences, as the spread lines print them."""
    return (f"{100 * rel.mean():.2f}% on average, p90 {100 * np.quantile(rel, 0.9):.1f}%, "
            f"max {100 * rel.max():.1f}%")
