"""Fit a GPU's Calibration from measured step times (scipy least squares).

Few parameters, each physical (``calibration.space`` lists them). The objective is the log of
predicted over measured time per row, so every row counts by its relative error, in
plain least squares (a soft-L1 loss, which discounts odd rows such as a GEMM that
cuBLAS runs with a slow tile, fitted prefill and token-tree rows worse out of sample).
Stages: graph parameters on CUDA-graph rows (and profiles, microbenchmarks, and the
power probe's steady clocks, which pin the power cap), then the host launch cost on
eager rows, then the token-tree kernel on tree rows. Kernels depend
only on shapes, so they are built once per (model, mode, launch) group and re-costed
per evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import least_squares

from gpusim.calibration.attention_points import AttentionPoint, predict_points
from gpusim.calibration.gemm_picks import SweptPoint, slow_picks
from gpusim.calibration.joint import Joint
from gpusim.calibration.measurements import StepData
from gpusim.calibration.micro import MicroGroup
from gpusim.calibration.profiles import CAPPED_STEP_S, ProfileData, peak_s
from gpusim.calibration.space import (
    EAGER_SPACE,
    Variable,
    apply,
    bounds,
    family_space,
    graph_space,
    stack_space,
    start,
)
from gpusim.calibration.steady_clocks import SteadyClocks
from gpusim.cost import Calibration, CalibrationSet, GpuPhysics, busy_s, kernel_cost, step_costs
from gpusim.cost.params import HostParams, StackParams
from gpusim.kernels import Kernel, build_kernels
from gpusim.kernels.quant import for_stack
from gpusim.platform import Platform
from gpusim.specs import GpuSpec, ModelSpec, StackSpec
from gpusim.specs.enums import Launch, Mode
from gpusim.step import predict_kernels, program_clock


@dataclass(frozen=True)
class Group:
    """Rows sharing (model, mode, launch), with their kernels built once."""

    model: ModelSpec
    stack: StackSpec
    mode: str
    launch: str
    rows: np.ndarray
    kernels: list[Kernel]


@dataclass(frozen=True)
class FitResult:
    calibration: Calibration
    rows: int
    log_rmse: float
    mape: float


def make_groups(data: StepData, stack: StackSpec,
                resolve_model: Callable[[str], ModelSpec]) -> list[Group]:
    """Group measured rows and build their kernels (shapes only, no costs)."""
    out = []
    for (model_name, mode, launch), idx in data.groups().items():
        model = for_stack(resolve_model(str(model_name)), stack)  # as the stack stores it
        kernels = build_kernels(model, stack, str(mode), data.batch[idx], data.ctx[idx],
                                data.q[idx], data.cache[idx])
        out.append(Group(model, stack, str(mode), str(launch), idx, kernels))
    return out


def predict_groups(groups: Sequence[Group], n_rows: int, gpu: GpuSpec,
                   cal: Calibration) -> np.ndarray:
    """Predicted seconds for every row of the groups (others NaN)."""
    pred = np.full(n_rows, np.nan)
    for g in groups:
        platform = Platform(gpu, g.stack, cal, Launch(g.launch))
        pred[g.rows] = predict_kernels(g.kernels, g.model, platform).seconds
    return pred


MICRO_WEIGHT = 0.5  # a kernel microbenchmark row counts half a whole step


def predict_micro(micro: Sequence[MicroGroup], gpu: GpuSpec, cal: Calibration) -> np.ndarray:
    """Predicted seconds of every microbenchmark row, in group order."""
    if not micro:
        return np.zeros(0)
    # each microbenchmark runs one kernel back to back: a step of its own
    return np.concatenate([step_costs([g.kernel], gpu, cal)[0].seconds for g in micro])


PROFILE_WEIGHT = 1.0  # each profiled class total counts as much as a whole step
# a profiled attention kernel (attention_points) counts as much as a tree step: a
# kernel's own time tells its regimes apart, where a step's hides it among the others
POINT_WEIGHT = 1.0
KIND_CLASS = {"gemm": "gemm", "attention": "attention", "elementwise": "elementwise",
              "embedding": "elementwise"}


@dataclass(frozen=True)
class ProfileFit:
    """Profiled shapes with kernels built once, and their measured class times."""

    groups: list[Group]
    n: int
    class_s: dict[str, np.ndarray]


def make_profile_fit(profiles: ProfileData | None, stack: StackSpec,
                     resolve_model: Callable[[str], ModelSpec], gpu: GpuSpec,
                     keep_models: set[str] | None = None) -> ProfileFit | None:
    """Kernels for the profiled shapes (only of ``keep_models`` when given), without
    those long enough for the power cap to lower the clock (``profiles.CAPPED_STEP_S``:
    a profile is priced at full clock)."""
    if profiles is None:
        return None
    shapes, class_s = profiles.shapes, profiles.class_s
    mask = np.ones(len(shapes), dtype=bool)
    if keep_models is not None:
        mask &= np.isin(shapes.model, sorted(keep_models))
    kept = np.flatnonzero(mask)   # the subset's rows, as rows of ``shapes``
    for g in make_groups(shapes.subset(mask), stack, resolve_model):
        capped = np.broadcast_to(peak_s(g.kernels, gpu), g.rows.shape) > CAPPED_STEP_S
        mask[kept[g.rows[capped]]] = False
    if not mask.any():
        return None
    shapes = shapes.subset(mask)
    class_s = {c: v[mask] for c, v in class_s.items()}
    return ProfileFit(make_groups(shapes, stack, resolve_model), len(shapes), class_s)


def predict_classes(pf: ProfileFit, gpu: GpuSpec, cal: Calibration) -> dict[str, np.ndarray]:
    """Predicted GPU seconds per kernel class of every profiled shape."""
    out = {c: np.zeros(pf.n) for c in pf.class_s}
    for g in pf.groups:
        # one profiled call from idle runs at full clock (step_power.py: the power cap
        # lowers the clock only after 0.1-0.2 s of sustained load)
        for k in g.kernels:
            c = kernel_cost(k, gpu, cal)
            cls = KIND_CLASS[k.kind]
            if cls in out:
                out[cls][g.rows] += busy_s(k, c, cal) * k.repeat
    return out


# a probed step's steady clock counts as this many step rows' log errors: the probe
# measures the clock, the steps only through their times (and it is 12 rows to ~500)
CLOCK_WEIGHT = 3.0


@dataclass(frozen=True)
class ClockFit:
    """The power probe's steps with kernels built once, and their measured clocks."""

    groups: list[Group]
    n: int
    clock_fraction: np.ndarray


def make_clock_fit(clocks: SteadyClocks | None, stack: StackSpec,
                   resolve_model: Callable[[str], ModelSpec],
                   keep_models: set[str] | None = None) -> ClockFit | None:
    """Kernels for the probed shapes (only of ``keep_models`` when given)."""
    if clocks is None:
        return None
    if keep_models is not None:
        clocks = clocks.subset(np.isin(clocks.steps.model, sorted(keep_models)))
    if len(clocks) == 0:
        return None
    return ClockFit(make_groups(clocks.steps, stack, resolve_model), len(clocks),
                    clocks.clock_fraction)


def predict_clocks(cf: ClockFit, gpu: GpuSpec, cal: Calibration) -> np.ndarray:
    """The power-capped clock (fraction of full) of every probed step, each run back to
    back on its own."""
    out = np.ones(cf.n)
    for g in cf.groups:
        out[g.rows] = program_clock([g.kernels], Platform(gpu, g.stack, cal))
    return out


def _fit(space: tuple[Variable, ...], base: Calibration,
         groups: Sequence[Group], data: StepData, gpu: GpuSpec,
         micro: Sequence[MicroGroup] = (), profile: ProfileFit | None = None,
         clock_fit: ClockFit | None = None,
         points: Sequence[AttentionPoint] = ()) -> Calibration:
    rows = np.concatenate([g.rows for g in groups])
    lo, hi = bounds(space)
    x0 = start(space, base)
    x0 = np.clip(x0, lo + 1e-9, hi - 1e-9)
    measured = data.measured_s[rows]
    micro_measured = (np.concatenate([g.measured_s for g in micro]) if micro
                      else np.zeros(0))
    points_measured = np.array([p.measured_s for p in points])

    def residuals(x: np.ndarray) -> np.ndarray:
        cal = apply(base, space, x)
        pred = predict_groups(groups, len(data), gpu, cal)[rows]
        step_res = np.log(pred / measured)
        micro_res = MICRO_WEIGHT * np.log(predict_micro(micro, gpu, cal) / micro_measured)
        parts = [step_res, micro_res]
        if profile is not None:
            pred_cls = predict_classes(profile, gpu, cal)
            parts += [PROFILE_WEIGHT * np.log(pred_cls[c] / profile.class_s[c])
                      for c in profile.class_s]
        if clock_fit is not None:
            parts.append(CLOCK_WEIGHT * np.log(predict_clocks(clock_fit, gpu, cal)
                                               / clock_fit.clock_fraction))
        if points:
            parts.append(POINT_WEIGHT * np.log(predict_points(points, gpu, cal)
                                               / points_measured))
        return np.concatenate(parts)

    res = least_squares(residuals, x0, bounds=(lo, hi), loss="linear",
                        x_scale="jac", diff_step=1e-4, max_nfev=400)
    return apply(base, space, res.x)


def _free(space: tuple[Variable, ...], held: Mapping[str, float]) -> tuple[Variable, ...]:
    """``space`` without the variables that set a ``held`` parameter."""
    return tuple(v for v in space if not set(v.paths) & set(held))


def _families(stack: StackSpec, groups: Sequence[Group]) -> list[str]:
    """The attention families the groups' steps run, in mode order, each once:
    ``stack``'s, then those of other stacks' groups (a joint fit's)."""
    modes = list(Mode)
    ordered = sorted(groups, key=lambda g: (g.stack is not stack, modes.index(Mode(g.mode))))
    return list(dict.fromkeys(g.stack.family(g.mode) for g in ordered))


def _of(points: Sequence[AttentionPoint], families: list[str]) -> list[AttentionPoint]:
    """The points whose kernel runs one of ``families``."""
    return [p for p in points
            if p.kernel.attention is not None and p.kernel.attention.family in families]


def _gemm_families(groups: Sequence[Group]) -> list[str]:
    """The GEMM kernel families other than cuBLAS's the groups' kernels run, each once."""
    return list(dict.fromkeys(k.gemm.family for g in groups for k in g.kernels
                              if k.gemm is not None and k.gemm.family != "cublas"))


def fit(data: StepData, gpu: GpuSpec, stack: StackSpec,
        resolve_model: Callable[[str], ModelSpec], note: str = "",
        micro: Sequence[MicroGroup] = (), profiles: ProfileData | None = None,
        sweep: Sequence[SweptPoint] = (), clocks: SteadyClocks | None = None,
        attention: Sequence[AttentionPoint] = (),
        also: Joint = (), held: Mapping[str, float] | None = None) -> FitResult:
    """Fit graph-mode parameters on CUDA-graph rows (and kernel microbenchmarks, if
    given) and the profiled kernels of the attention families they run (the causal
    prefill kernel's), then the host launch cost on eager rows and the token-tree kernel
    on tree rows (mode ``tree``) with its profiled kernels under every stack
    (``attention``: of the fitted models only), the earlier parameters held each time.

    ``sweep``: this GPU's swept GEMMs; their slow cuBLAS picks (``gemm_picks``) are
    priced throughout the fit and kept in the calibration, except shapes only models
    outside ``data`` have. ``clocks``: the power probe's steady clocks, fitted with the
    graph parameters (the shapes of the models in ``data`` only). ``also``: other
    stacks' CUDA-graph steps, each with its stack (``calibration.joint``), fitted with
    the graph parameters as ``data``'s are. ``held``: parameters (dotted paths) held at
    the given values in every stage (an attention family's die-level fields, fitted on
    another GPU of the die: ``calibration.die_physics``).

    Raises ValueError if there are no graph rows.
    """
    groups = make_groups(data, stack, resolve_model)
    graph = [g for g in groups if g.launch == "graph" and g.mode != Mode.TREE]
    eager = [g for g in groups if g.launch == "eager"]
    trees = [g for g in groups if g.mode == Mode.TREE]
    if not graph:
        raise ValueError(f"{data.source}: no CUDA-graph rows to fit")
    # other stacks' CUDA-graph steps fit the GPU physics with the reference's: their
    # rows follow ``data``'s in one table
    joint = data
    for other, other_stack in also:
        offset = len(joint)
        joint = joint.concat(other)
        graph += [replace(g, rows=g.rows + offset)
                  for g in make_groups(other, other_stack, resolve_model)
                  if g.launch == "graph" and g.mode != Mode.TREE]
    fitted_models = frozenset(map(str, data.model))
    others = frozenset(m for p in sweep for m in p.models) - fitted_models
    cal = Calibration(gpu=gpu.name, stack=stack.name, fitted_on=note or data.source,
                      physics=GpuPhysics(gemm_slow_picks=slow_picks(sweep,
                                                                    exclude_models=others)))
    held = dict(held or {})
    cal = cal.replace(held)
    # profiled shapes of the models being fitted only (leave-one-model-out honesty)
    pf = make_profile_fit(profiles, stack, resolve_model, gpu, set(fitted_models))
    cf = make_clock_fit(clocks, stack, resolve_model, set(fitted_models))
    graph_families = _families(stack, graph)
    # profiled kernels of the fitted models only, each in the stage fitting its family
    fitted_points = [p for p in attention if p.model in fitted_models]
    cal = _fit(_free(graph_space(graph_families, _gemm_families(graph)), held), cal, graph,
               joint, gpu, micro, pf, cf, _of(fitted_points, graph_families))
    if eager:
        cal = _fit(EAGER_SPACE, cal, eager, data, gpu)
    # the token-tree kernel's own parameters, fitted last on the tree rows with every
    # other parameter held: a few hundred tree steps must not move the shared ones
    # (with a single head_dim-64 model, verify's softmax cost and efficiency trade off
    # freely)
    tree_families = [f for f in _families(stack, trees) if f not in graph_families]
    if trees and tree_families:
        cal = _fit(family_space(tree_families, set(held)), cal, trees, data, gpu,
                   points=_of(fitted_points, tree_families))
    return _quality(groups, data, gpu, cal)


def _quality(groups: Sequence[Group], data: StepData, gpu: GpuSpec, cal: Calibration,
             ) -> FitResult:
    pred = predict_groups(groups, len(data), gpu, cal)
    ok = np.isfinite(pred)
    err = np.log(pred[ok] / data.measured_s[ok])
    mape = float(np.mean(np.abs(pred[ok] / data.measured_s[ok] - 1)))
    return FitResult(cal, int(ok.sum()), float(np.sqrt(np.mean(err**2))), mape)


def fit_stack(data: StepData, gpu: GpuSpec, stack: StackSpec, physics: Calibration,
              resolve_model: Callable[[str], ModelSpec],
              micro: Sequence[MicroGroup] = ()) -> FitResult:
    """A software stack's own parameters on ``gpu``, the GPU physics (``physics``: fitted
    on the reference stack) held: the parameters its file names in ``calibrate`` on its
    CUDA-graph rows (and on ``micro``, kernel microbenchmarks of what it launches),
    then its host launch cost on its eager rows. With neither, its calibration is the
    physics with the reference stack's host costs.

    Raises FieldError for a ``calibrate`` parameter without fit bounds.
    """
    groups = make_groups(data, stack, resolve_model)
    graph = [g for g in groups if g.launch == "graph" and g.mode != Mode.TREE]
    eager = [g for g in groups if g.launch == "eager"]
    cal = physics.replace({"stack": stack.name, "host_from": None})
    space = stack_space(stack.calibrate)
    if graph and space:
        cal = _fit(space, cal, graph, data, gpu, micro)
    if eager:
        cal = _fit(EAGER_SPACE, cal, eager, data, gpu)
    return _quality(groups, data, gpu, cal)


def to_yaml(res: FitResult, stacks: dict[str, StackParams] | None = None) -> str:
    """The calibration file's text (``cost.params.CalibrationSet``: the GPU's physics and
    attention families, the fitted stack's host costs, and ``stacks``: other stacks'
    own parameters), with its in-sample fit quality as a comment."""
    import yaml

    cal = res.calibration
    own = {cal.stack or "": StackParams.of(cal), **(stacks or {})}
    data = CalibrationSet.of(cal, own).model_dump()
    # what nothing fitted stays out of the file (the loader's defaults are the same):
    # a stack's empty overrides and unset serving costs, GEMM families no step ran
    for name, entry in data["stacks"].items():
        data["stacks"][name] = {k: v for k, v in entry.items()
                                if v != StackParams.model_fields[k].get_default(
                                    call_default_factory=True)
                                or (k in HostParams.model_fields and not k.startswith(
                                    "serving_"))}
    # the GEMM families fitted (an MoE model's expert GEMM), without those left at
    # their defaults
    default_gemm = type(cal.gemm)().model_dump()
    data["gemm"] = {k: v for k, v in data.get("gemm", {}).items() if v != default_gemm[k]}
    if not data["gemm"]:
        del data["gemm"]
    data.pop("trust", None)   # written by calibration.bands (its LOMO fits), not here
    body = yaml.safe_dump(data, sort_keys=False)
    head = (f"# Fitted by `gpusim calibrate` on {res.rows} measured steps; in-sample MAPE "
            f"{100 * res.mape:.2f}%, log RMSE {res.log_rmse:.4f}.\n"
            "# Out-of-sample errors: validation/REPORT.md.\n")
    return head + body
