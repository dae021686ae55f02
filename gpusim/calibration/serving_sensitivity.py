"""How far a replay's latencies move when every step is priced ``STEP_SPREAD`` longer.

A serving metric can amplify a step-time error: near saturation a slower step keeps more
sequences running, which slows every step again, and a p50 that falls between two modes
of the step times (a decode batch padded to 8 or to 16) jumps. The replay is run a
second time with every step ``STEP_SPREAD`` (the lease-to-lease spread of one GPU kind's
steps) longer (``serving_replay.ScaledStepTimes``); how far each metric moves is the
error the spread of the steps alone can produce there, the floor under the report's
latency errors that the step model's own accuracy sets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gpusim.calibration.serving_metrics import relative_error, saturated
from gpusim.calibration.serving_repeat import metric_value
from gpusim.calibration.serving_replay import STEP_SPREAD, RunComparison

METRICS = (("TTFT p50", "ttft_s", "p50"), ("TPOT p50", "tpot_s", "p50"),
           ("TTFT p99", "ttft_s", "p99"), ("TPOT p99", "tpot_s", "p99"),
           ("throughput", "output_tokens_per_s", None))


def moves(r: RunComparison) -> dict[str, float]:
    """Relative change of each of ``METRICS`` (by label) from the replay to the replay
    with every step ``STEP_SPREAD`` longer (NaN where the replay's value is 0)."""
    return {label: relative_error(metric_value(r, "slower_steps", name, q),
                                  metric_value(r, "simulated", name, q))
            for label, name, q in METRICS}


def _pct(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{100 * x:+.1f}%"


def sensitivity_section(results: Sequence[RunComparison]) -> list[str]:
    """The report's section: per run, each metric's move."""
    lines = ["## Sensitivity to the step time", "",
             f"Each run replayed again with every step {100 * STEP_SPREAD:.0f}% longer "
             "(the lease-to-lease spread of one GPU kind's steps, measured): how far each "
             "metric moves from the replay above. Where a metric moves several times "
             f"{100 * STEP_SPREAD:.0f}%, the schedule amplifies step-time errors (more "
             "sequences stay running while each step is slower, or its p50 falls between "
             "two modes of the step times); a latency error no larger than the move is "
             "within what the spread of the steps alone produces.", "",
             "| run | saturated | " + " | ".join(m[0] for m in METRICS) + " |",
             "|---|---|" + "---:|" * len(METRICS)]
    for r in results:
        m = moves(r)
        lines.append(f"| {r.run.model} {r.run.load} | "
                     f"{'yes' if saturated(r.measured) else 'no'} | "
                     + " | ".join(_pct(m[label]) for label, _, _ in METRICS) + " |")
    return [*lines, ""]
