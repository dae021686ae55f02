"""An MoE layer's GPU kernels fitted on their microbenchmarks, profiles and MoE steps.

``torch._grouped_mm`` (``cost.moe.GroupedMm``) and PyTorch's in-CTA sort
(``cost.pointwise.sort_s``: the argsort of the slots' expert ids) are kernels of the
GPU's, run by every stack that runs an MoE model without custom kernels; their
parameters (``MOE_CALIBRATE``, ``SORT_FIELDS``) are fitted once per GPU and shipped at
the calibration's top level, so that every stack inherits them:

* the sort first, on its profiled calls (``SORT_KERNELS`` in ``<gpu>/moe/kernels.csv``
  and ``<gpu>/probe_*/moe_profile*/kernels.csv``): one CTA's sort by non-negative least
  squares, time against the items each thread holds and the CTA's threads; cub's
  device-wide sort beyond 4096 keys, its mean (``with_sorts``);
* the combine's atomic adds (``physics.atomic_add_s_per_element``) on the profiled
  ``index_add_`` calls past 16 slots (``INDEX_ADD_KERNELS`` in the same files): the
  time per add that brings the stack's combine op to them, least relative squares
  (``with_atomics``);
* then the expert GEMM, on the harness's grouped-GEMM probe
  (``validation/harness/probe_grouped_mm.py``; ``<gpu>/probe_*/grouped_mm*/
  grouped_mm.csv``, a folder per lease): one call over E experts of which T (all, or
  a decode's few) get exactly r rows each, for the expert GEMMs of the MoE models
  measured; each shape becomes an expert-GEMM kernel with those balanced rows
  (``ExpertGemmShape.rows_per_expert``), tagged with the models whose experts have that
  shape (leave-one-model-out drops them); the rows where one expert got a row more than
  another (``spill``) are left out: one balanced row count per call is what the kernel
  record holds;
* and on the MoE steps (``<gpu>/moe/steps.csv``, run under torch-fused), with the GPU
  physics held (``fit.fit_stack``).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar, nnls

from gpusim.calibration.fit import fit_stack
from gpusim.calibration.measurements import read_steps
from gpusim.calibration.micro import MicroGroup
from gpusim.cost import Calibration, GpuPhysics
from gpusim.cost.moe import GroupedMmParams
from gpusim.cost.pointwise import SORT_CTA_MAX, sort_config
from gpusim.cost.steps import step_costs
from gpusim.errors import bad, read_text
from gpusim.kernels import build_kernels
from gpusim.kernels.moe import ExpertGemmShape, expert_nk
from gpusim.kernels.records import Kernel
from gpusim.specs import GpuSpec, ModelSpec, StackSpec
from gpusim.specs.enums import KernelKind

FAMILY = "grouped_mm"
MOE_STACK = "torch-fused"   # the stack the MoE steps ran
MOE_CALIBRATE = tuple(f"gemm.{FAMILY}.{p}" for p in (
    "fixed_s", "bandwidth_ratio", "tensor_efficiency_ratio", "cta_stream_bytes_per_s"))
# without probes, the steps fit the first two only: a step's compute-bound expert GEMMs
# (prefill) trade the tensor rate off against the fixed cost and the other ops, and
# two models' few prefill steps do not pin it (a leave-one-model-out fit on the H200's
# steps alone found 0.46 and 0.92); nor do they the rate one CTA streams at, which
# only a call with fewer CTA tiles than SMs shows
STEPS_ONLY = MOE_CALIBRATE[:2]
SORT_FIELDS = ("sort_fixed_s", "sort_s_per_item", "sort_s_per_thread", "sort_device_s")
ATOMIC_FIELD = "atomic_add_s_per_element"
# the argsort of the slots' expert ids as profiled: one CTA's sort, or cub's device-wide
# sort (onesweep passes, histogram, exclusive sum) beyond 4096 slots
SORT_KERNELS = ("radixSortKVInPlace", "DeviceRadixSort")
# index_add_ of the slots into their tokens past 16 slots (its SmallIndex kernel below
# walks the slots one by one: the stack's small_index_s, not the atomics, prices it)
INDEX_ADD_KERNELS = ("indexFuncLargeIndex",)
PROFILE_COLUMNS = ("model", "batch", "q", "kernel_name", "count", "total_us")
PROBE_COLUMNS = ("experts", "n", "k", "rows_per_expert", "spill", "median_us")


def moe_stack(stack: StackSpec, probed: bool) -> StackSpec:
    """``stack`` (the one the MoE steps ran) with the expert-GEMM fields to fit (all of
    ``MOE_CALIBRATE`` where grouped-GEMM probes were measured: ``probed``)."""
    return stack.model_copy(update={"calibrate": MOE_CALIBRATE if probed else STEPS_ONLY})


def without_fit(cal: Calibration) -> Calibration:
    """``cal`` with the expert GEMM's and the sort's parameters at their defaults
    (nothing fitted on MoE measurements: the baseline a leave-one-model-out fit starts
    from)."""
    gemm, physics = GroupedMmParams(), GpuPhysics()
    return cal.replace({**{p: getattr(gemm, p.rsplit(".", 1)[-1]) for p in MOE_CALIBRATE},
                        **{f"physics.{f}": getattr(physics, f)
                           for f in (*SORT_FIELDS, ATOMIC_FIELD)}})


def with_sorts(cal: Calibration, gpu: GpuSpec, sorts: Sequence[MicroGroup]) -> Calibration:
    """``cal`` with the sort's parameters (``cost.pointwise.sort_s``) fitted on profiled
    sorts, what the rest of the kernel's price leaves of each: one CTA's (a fixed time,
    per item a thread holds, per thread) by non-negative least squares, the
    device-wide sort's as the mean; the defaults (a prior) for those not profiled."""
    prior = GpuPhysics()
    out = cal.replace({f"physics.{f}": getattr(prior, f) for f in SORT_FIELDS})
    if not sorts:
        return out
    bare = cal.replace({f"physics.{f}": 0.0 for f in SORT_FIELDS})
    rest = np.concatenate([step_costs([g.kernel], gpu, bare)[0].seconds for g in sorts])
    left = np.maximum(np.concatenate([g.measured_s for g in sorts]) - rest, 0.0)
    n = np.concatenate([g.kernel.sort_elements for g in sorts])  # type: ignore[misc]
    cta, device = n <= SORT_CTA_MAX, n > SORT_CTA_MAX
    if cta.any():
        threads, items = sort_config(n[cta])
        # each column scaled to O(1) so the solver weighs them alike
        scale = np.array([1e-6, 1e-6, 1e-7])
        design = np.stack([np.ones_like(items), items, threads], axis=1) * scale
        x, _ = nnls(design, left[cta])
        out = out.replace({f"physics.{f}": float(v)
                           for f, v in zip(SORT_FIELDS[:3], x * scale, strict=True)})
    if device.any():
        out = out.replace({"physics.sort_device_s": float(np.mean(left[device]))})
    return out


def with_atomics(cal: Calibration, gpu: GpuSpec, adds: Sequence[MicroGroup]) -> Calibration:
    """``cal`` with the time per atomic add (``physics.atomic_add_s_per_element``)
    fitted on profiled ``index_add_`` calls: the value that brings each call's price
    closest to its time, in relative squares (the prior without profiled calls)."""
    prior = getattr(GpuPhysics(), ATOMIC_FIELD)
    if not adds:
        return cal.replace({f"physics.{ATOMIC_FIELD}": prior})
    measured = np.concatenate([g.measured_s for g in adds])

    def loss(s_per_add: float) -> float:
        c = cal.replace({f"physics.{ATOMIC_FIELD}": s_per_add})
        pred = np.concatenate([step_costs([g.kernel], gpu, c)[0].seconds for g in adds])
        return float(np.sum((pred / measured - 1.0) ** 2))

    best = minimize_scalar(loss, bounds=(0.0, 100.0 * prior), method="bounded",
                           options={"xatol": prior * 1e-4})
    return cal.replace({f"physics.{ATOMIC_FIELD}": float(best.x)})


def _owners(experts: int, n: int, k: int, models: Iterable[ModelSpec]) -> frozenset[str]:
    """The models whose routed experts are E x [n, k] (gate_up or down)."""
    return frozenset(m.name for m in models if m.is_moe and m.num_experts == experts
                     and (n, k) in (expert_nk("experts_gate_up", m),
                                    expert_nk("experts_down", m)))


def read_grouped_micro(gpu_dir: Path, models: Sequence[ModelSpec]) -> list[MicroGroup]:
    """Every balanced grouped-GEMM probe row under ``gpu_dir`` whose shape is one of
    ``models``' expert GEMMs, as one kernel group per (file, shape). Raises ConfigError
    for a file that cannot be read or lacks a column."""
    out = []
    for path in sorted(gpu_dir.glob("probe_*/grouped_mm*/grouped_mm.csv")):
        rows = list(csv.DictReader(read_text(path).splitlines()))
        missing = [c for c in PROBE_COLUMNS if rows and c not in rows[0]]
        if missing:
            raise bad(str(path), f"missing column(s) {', '.join(missing)}", line=1)
        # (experts, n, k) -> (rows per touched expert, seconds, experts touched)
        shapes: dict[tuple[int, int, int], list[tuple[float, float, float]]] = {}
        try:
            for r in rows:
                if int(r["spill"]):
                    continue
                key = (int(r["experts"]), int(r["n"]), int(r["k"]))
                # experts given rows (a decode's few; absent: all of them)
                touched = float(r.get("touched") or r["experts"])
                shapes.setdefault(key, []).append((float(r["rows_per_expert"]),
                                                   float(r["median_us"]) * 1e-6, touched))
        except ValueError as exc:
            raise bad(str(path), f"unreadable probe row: {exc}") from None
        for (experts, n, k), pts in shapes.items():
            owners = _owners(experts, n, k, models)
            if not owners:
                continue
            out.append(MicroGroup(_kernel(experts, n, k, np.array([p[0] for p in pts]),
                                          np.array([p[2] for p in pts])),
                                  np.array([p[1] for p in pts]), owners))
    return out


def read_sort_micro(gpu_dir: Path, models: Sequence[ModelSpec],
                    stack: StackSpec) -> list[MicroGroup]:
    """The profiled argsorts of the slots' expert ids (``SORT_KERNELS`` in
    ``<gpu>/moe/kernels.csv`` and ``<gpu>/probe_*/moe_profile*/kernels.csv``) of
    ``models``, one kernel group per model: GPU seconds per call against the slots
    sorted (batch x q x top-k), priced as ``stack``'s sort op. Raises ConfigError for a
    file that cannot be read or lacks a column."""
    return _read_routing_micro(gpu_dir, models, SORT_KERNELS,
                               lambda m, slots: _sort_kernel(m, stack, slots))


def read_index_add_micro(gpu_dir: Path, models: Sequence[ModelSpec],
                         stack: StackSpec) -> list[MicroGroup]:
    """The profiled ``index_add_`` calls past 16 slots (``INDEX_ADD_KERNELS``, the same
    files as ``read_sort_micro``) of ``models``, one kernel group per model, priced as
    ``stack``'s atomic-add op. Raises ConfigError as ``read_sort_micro``."""
    return _read_routing_micro(gpu_dir, models, INDEX_ADD_KERNELS,
                               lambda m, slots: _slot_kernel(m, stack, slots, _adds))


def _read_routing_micro(gpu_dir: Path, models: Sequence[ModelSpec], names: Sequence[str],
                        kernel_of: Callable[[ModelSpec, np.ndarray], Kernel]
                        ) -> list[MicroGroup]:
    """Per model, the GPU seconds per layer of the profiled kernels named by ``names``
    against the token-slots of their steps, with ``kernel_of``'s kernel for them."""
    by_name = {m.name: m for m in models if m.is_moe}
    points: dict[str, dict[float, list[float]]] = {}
    for path in [gpu_dir / "moe" / "kernels.csv",
                 *sorted(gpu_dir.glob("probe_*/moe_profile*/kernels.csv"))]:
        if not path.is_file():
            continue
        rows = list(csv.DictReader(read_text(path).splitlines()))
        missing = [c for c in PROFILE_COLUMNS if rows and c not in rows[0]]
        if missing:
            raise bad(str(path), f"missing column(s) {', '.join(missing)}", line=1)
        # per profiled step, its sort kernels' time over the layers (the fewest calls
        # of one of them: a device-wide sort runs 8 onesweep passes a layer)
        steps: dict[tuple[str, float], list[tuple[float, float]]] = {}
        try:
            for r in rows:
                model = by_name.get(r["model"])
                if model is None or not any(s in r["kernel_name"] for s in names):
                    continue
                slots = float(r["batch"]) * float(r["q"]) * (model.num_experts_per_tok or 1)
                steps.setdefault((model.name, slots), []).append(
                    (float(r["total_us"]) * 1e-6, float(r["count"])))
            for (name, slots), kernels in steps.items():
                layers = min(c for _, c in kernels)
                points.setdefault(name, {}).setdefault(slots, []).append(
                    sum(t for t, _ in kernels) / layers)
        except (ValueError, ZeroDivisionError) as exc:
            raise bad(str(path), f"unreadable profile row: {exc}") from None
    out = []
    for name, by_slots in points.items():
        slots = np.array(sorted(by_slots))
        measured = np.array([float(np.mean(by_slots[s])) for s in slots])
        out.append(MicroGroup(kernel_of(by_name[name], slots), measured,
                              frozenset({name})))
    return out


def _sorts(k: Kernel) -> bool:
    return k.sort_elements is not None


def _adds(k: Kernel) -> bool:
    return k.atomic_elements is not None


def _sort_kernel(model: ModelSpec, stack: StackSpec, slots: np.ndarray) -> Kernel:
    """The stack's sort op (the one whose kernels sort: ``StackOp.sorts``) over
    ``slots`` token-slots (per point), one occurrence. Raises ValueError if the stack
    has none."""
    return _slot_kernel(model, stack, slots, _sorts)


def _slot_kernel(model: ModelSpec, stack: StackSpec, slots: np.ndarray,
                 which: Callable[[Kernel], bool]) -> Kernel:
    """The stack's first op ``which`` picks over ``slots`` token-slots (per point), one
    occurrence: the tokens' routing as a prefill of slots / top-k tokens holds it.
    Raises ValueError if the stack has none."""
    tokens = slots / (model.num_experts_per_tok or 1)
    kernels = build_kernels(model, stack, "prefill", np.ones_like(tokens), 0.0, tokens)
    found = next((k for k in kernels if which(k)), None)
    if found is None:
        raise ValueError(f"stack {stack.name} has no such op for {model.name}")
    return replace(found, repeat=1)


def _kernel(experts: int, n: int, k: int, rows_per_expert: np.ndarray,
            touched: np.ndarray) -> Kernel:
    """One torch._grouped_mm call in bf16 over ``experts`` experts of [n, k] weights,
    ``touched`` of them (per point) with ``rows_per_expert`` rows each, the rest none."""
    slots = touched * rows_per_expert
    return Kernel(name="experts", kind=KernelKind.GEMM, section="layer", launches=1,
                  repeat=1, flops=2.0 * slots * n * k,
                  weight_bytes=touched * 2.0 * n * k, kv_bytes=np.zeros_like(slots),
                  act_bytes=2.0 * slots * (k + n), dtype="bf16",
                  gemm=ExpertGemmShape(m=slots, n=n, k=k, family=FAMILY, experts=experts,
                                       touched=touched, top_k=1,
                                       rows_per_expert=rows_per_expert))


def fit_moe(gpu_dir: Path, gpu: GpuSpec, physics: Calibration,
            load_stack: Callable[[str], StackSpec],
            resolve: Callable[[str], ModelSpec]) -> tuple[Calibration, str]:
    """``physics`` with the sort's and the expert GEMM's parameters fitted on
    ``gpu_dir``'s profiled sorts, grouped-GEMM probes and MoE steps (unchanged without
    MoE steps), and a line saying what they were fitted on. Raises ConfigError for an
    unreadable file."""
    steps_csv = gpu_dir / "moe" / "steps.csv"
    if not steps_csv.is_file():
        return physics, ""
    data = read_steps(steps_csv, MOE_STACK)
    models = [resolve(m) for m in sorted(set(map(str, data.model)))]
    grouped = read_grouped_micro(gpu_dir, models)
    stack = moe_stack(load_stack(MOE_STACK), bool(grouped))
    sorts = read_sort_micro(gpu_dir, models, stack)
    adds = read_index_add_micro(gpu_dir, models, stack)
    base = with_atomics(with_sorts(without_fit(physics), gpu, sorts), gpu, adds)
    res = fit_stack(data, gpu, stack, base, resolve, micro=grouped)
    cal = physics.replace({p: res.calibration.get(p) for p in
                           (*stack.calibrate,
                            *(f"physics.{f}" for f in (*SORT_FIELDS, ATOMIC_FIELD)))})
    return cal, (f"{FAMILY} and the sort fitted on {res.rows} MoE steps (in-sample MAPE "
                 f"{100 * res.mape:.2f}%), {sum(len(g.measured_s) for g in grouped)} "
                 f"grouped-GEMM probe calls, {sum(len(g.measured_s) for g in sorts)} "
                 f"profiled sorts and {sum(len(g.measured_s) for g in adds)} profiled "
                 "index_add_ calls")
