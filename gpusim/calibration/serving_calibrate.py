"""The serving harness's host work in a GPU's shipped calibration (issue 21, item 3).

A serving engine pays host work that no kernel shows: per step (scheduling, inputs,
tokens back), per sequence, per prefill chunk and token, and its Python's cost per
kernel launch of an eager step (``calibration.serving_host``). ``gpusim serve --replay``
fits them leaving each measured run out; ``gpusim calibrate`` fits them on all of a
GPU's runs and ships them as the serving harness's stack (``harness-serve``), so that
``gpusim serve --stack harness-serve`` prices the engine the report judges, host work
included, rather than the kernels alone.

The runs: those under ``validation/data/serving/*/`` measured on the GPU. The engine's
host costs differ with its CUDA-graph mode (on the H100 170 us a step in
``full_and_piecewise`` against 200 in ``full_decode_only``, 38 us a launch outside the
graphs against 24: SERVING_REPORT_piecewise.md), so each mode's runs are fitted apart:
the default mode's as the entry's host costs, the piecewise runs' as its ``piecewise``
costs, which a serving step model in that mode takes (``serving.step_tables``).
"""

from __future__ import annotations

from pathlib import Path

from gpusim.calibration.serving_measured import ServingRun, read_serving_run
from gpusim.calibration.serving_replay import fit_runs
from gpusim.cost import CalibrationSet
from gpusim.cost.params import HostParams, StackParams
from gpusim.io import loader
from gpusim.platform import Platform
from gpusim.specs import GpuSpec

SERVING_STACK = "harness-serve"
DEFAULT_MODE = "full_decode_only"
PIECEWISE_MODE = "full_and_piecewise"


def serving_runs(serving_dir: Path, gpu: str, mode: str = DEFAULT_MODE) -> list[ServingRun]:
    """The runs under ``serving_dir/<set>/<model>/<load>/`` measured on ``gpu`` in CUDA
    graph ``mode``, in path order (none when the folder is absent). Raises ConfigError
    for an unreadable run."""
    if not serving_dir.is_dir():
        return []
    runs = [read_serving_run(p.parent) for p in sorted(serving_dir.glob("*/*/*/run.json"))]
    return [r for r in runs if r.gpu == gpu and r.cudagraph_mode == mode and not r.on_cpu]


def _host(runs: list[ServingRun], platform: Platform) -> dict[str, float]:
    """The platform's host costs with the engine's fitted on ``runs``."""
    fit = fit_runs(runs, platform, lambda run: loader.load_model(run.config_path))
    return {**platform.calibration.host.model_dump(),
            **{k.removeprefix("host."): v for k, v in fit.fields().items()}}


def serving_stack_params(runs: list[ServingRun], gpu: GpuSpec, cset: CalibrationSet,
                         piecewise_runs: list[ServingRun] | None = None) -> StackParams:
    """The serving harness's stack entry: the host costs it borrows
    (``host_costs_from``) with its engine's host work fitted on ``runs`` (the default
    mode's) and, from ``piecewise_runs``, its ``piecewise`` host costs
    (``serving_replay.fit_runs``), on the physics of ``cset``. Raises ValueError
    without runs."""
    if not runs:
        raise ValueError("no serving runs to fit the engine's host work on")
    stack = loader.load_stack(SERVING_STACK)
    platform = Platform(gpu, stack, cset.for_stack(stack))
    piecewise = (HostParams(**_host(piecewise_runs, platform)) if piecewise_runs else None)

    def described(rs: list[ServingRun], mode: str) -> str:
        sets = sorted({run.path.parent.parent.name for run in rs})
        return f"{len(rs)} {mode} runs ({', '.join(sets)})"

    fitted = described(runs, DEFAULT_MODE) + (
        f"; piecewise: {described(piecewise_runs, PIECEWISE_MODE)}" if piecewise_runs
        else f"; a {PIECEWISE_MODE} scenario is priced with them too")
    return StackParams(**_host(runs, platform), piecewise=piecewise, notes=(
        f"serving host work fitted on {fitted}; graph launch cost from "
        f"{stack.host_costs_from}"))
