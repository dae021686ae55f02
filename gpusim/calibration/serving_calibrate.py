"""The serving harness's host work in a GPU's shipped calibration (issue 21, item 3).

A serving engine pays host work that no kernel shows: per step (scheduling, inputs,
tokens back), per sequence, per prefill chunk and token, and its Python's cost per
kernel launch of an eager step (``calibration.serving_host``). ``gpusim serve --replay``
fits them leaving each measured run out; ``gpusim calibrate`` fits them on all of a
GPU's runs and ships them as the serving harness's stack (``harness-serve``), so that
``gpusim serve --stack harness-serve`` prices the engine the report judges, host work
included, rather than the kernels alone.

The runs: those under ``validation/data/serving/*/`` measured on the GPU in the
scheduler's default CUDA-graph mode (``full_decode_only``: decode steps as full graphs,
mixed steps eager). Runs in ``full_and_piecewise`` pay other host costs (on the H100
170 us a step against 200, 38 us a launch outside the graphs against 24:
SERVING_REPORT_piecewise.md) and are not mixed in; a scenario in that mode is priced
with the default mode's values (stated in the stack entry's notes).
"""

from __future__ import annotations

from pathlib import Path

from gpusim.calibration.serving_measured import ServingRun, read_serving_run
from gpusim.calibration.serving_replay import fit_runs
from gpusim.cost import CalibrationSet
from gpusim.cost.params import StackParams
from gpusim.io import loader
from gpusim.platform import Platform
from gpusim.specs import GpuSpec

SERVING_STACK = "harness-serve"
SHIPPED_MODE = "full_decode_only"


def serving_runs(serving_dir: Path, gpu: str) -> list[ServingRun]:
    """The runs under ``serving_dir/<set>/<model>/<load>/`` measured on ``gpu`` in
    SHIPPED_MODE, in path order (none when the folder is absent). Raises ConfigError
    for an unreadable run."""
    if not serving_dir.is_dir():
        return []
    runs = [read_serving_run(p.parent) for p in sorted(serving_dir.glob("*/*/*/run.json"))]
    return [r for r in runs if r.gpu == gpu and r.cudagraph_mode == SHIPPED_MODE and not r.on_cpu]


def serving_stack_params(runs: list[ServingRun], gpu: GpuSpec, cset: CalibrationSet
                         ) -> StackParams:
    """The serving harness's stack entry: the host costs it borrows
    (``host_costs_from``) with its engine's host work fitted on ``runs``
    (``serving_replay.fit_runs``), on the physics of ``cset``. Raises ValueError
    without runs."""
    if not runs:
        raise ValueError("no serving runs to fit the engine's host work on")
    stack = loader.load_stack(SERVING_STACK)
    platform = Platform(gpu, stack, cset.for_stack(stack))
    fit = fit_runs(runs, platform, lambda run: loader.load_model(run.config_path))
    host = {**platform.calibration.host.model_dump(),
            **{k.removeprefix("host."): v for k, v in fit.fields().items()}}
    sets = sorted({run.path.parent.parent.name for run in runs})
    return StackParams(**host, notes=(
        f"serving host work fitted on {len(runs)} runs ({', '.join(sets)}, "
        f"{SHIPPED_MODE}; a full_and_piecewise scenario is priced with them too); "
        f"graph launch cost from {stack.host_costs_from}"))
