"""A stack measured beside the reference stack on one lease: its cross-stack error with
the lease's own speed taken out.

A stack's cross-stack error (``stacks_report``) compares steps measured on one lease
with a physics fitted on steps of other leases, so it holds the lease-to-lease spread
(2% on H100 decode steps) as well as what the stack file gets wrong. Where a lease
directory (``<gpu>/lease_*/``) holds the reference stack's steps (``steps.csv``) and
another stack's steps of the same shapes (``stacks/<stack>/steps.csv``), both are
predicted by the same physics (the one the stack is judged with: fitted without the
stack's data), and their ratio, predicted over measured of the stack divided by the
reference's on the same shape, is the stack's error net of the lease. Graph steps only:
an eager step's time is the host's. Nothing here is fitted on these steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from gpusim.calibration.fit import make_groups, predict_groups
from gpusim.calibration.measurements import StepData, read_steps
from gpusim.cost import Calibration
from gpusim.report import markdown_table
from gpusim.specs import GpuSpec, ModelSpec, StackSpec

MODES = ("decode", "verify", "prefill")
# the kinds of step the net errors are pooled by across leases: what a stack's kernels
# change differs most between one token (launch-bound) and many
KINDS = (("decode, batch 1", "decode", 1, 1), ("decode, batch 2+", "decode", 2, np.inf),
         ("verify", "verify", 1, np.inf), ("prefill", "prefill", 1, np.inf))


class NetErrors(NamedTuple):
    """Per shape both measured on a lease (graph steps): its mode and batch, the
    stack's error, the reference's, and the stack's net of the lease."""

    modes: np.ndarray
    stack: np.ndarray
    reference: np.ndarray
    net: np.ndarray
    batch: np.ndarray


@dataclass(frozen=True)
class LeasePair:
    """One lease's steps of a stack and of the reference stack."""

    lease: str
    stack: StackSpec
    data: StepData        # the stack's steps
    reference: StepData   # the reference stack's steps on the same lease


def read_pairs(gpu_dir: Path, load_stack: Callable[[str], StackSpec]) -> list[LeasePair]:
    """Every (lease, stack) pair under ``gpu_dir``: ``lease_*/stacks/<stack>/steps.csv``
    beside ``lease_*/steps.csv``. Raises ConfigError for an unreadable file or an
    unknown stack."""
    out = []
    for ref_csv in sorted(gpu_dir.glob("lease_*/steps.csv")):
        stacks = sorted(ref_csv.parent.glob("stacks/*/steps.csv"))
        if not stacks:
            continue
        reference = read_steps(ref_csv)
        for steps_csv in stacks:
            st = load_stack(steps_csv.parent.name)
            out.append(LeasePair(ref_csv.parent.name, st, read_steps(steps_csv, st.name),
                                 reference))
    return out


def _key(d: StepData, i: int) -> tuple:
    return (str(d.model[i]), str(d.mode[i]), int(d.batch[i]), int(d.ctx[i]), int(d.q[i]))


def _graph(d: StepData) -> StepData:
    return d.subset(d.launch == "graph")


def net_errors(pair: LeasePair, gpu: GpuSpec, physics: Calibration, reference: StackSpec,
               resolve: Callable[[str], ModelSpec]) -> NetErrors:
    """The errors of every shape both measured on the lease (graph steps), predicted
    with ``physics`` (a calibration of the reference stack; the stack's prediction
    carries the reference's host costs, as ``stacks_report``'s transfer)."""
    st, ref = _graph(pair.data), _graph(pair.reference)
    index = {_key(ref, i): i for i in range(len(ref))}
    rows = [(i, index[k]) for i in range(len(st)) if (k := _key(st, i)) in index]
    if not rows:
        empty = np.zeros(0)
        return NetErrors(np.zeros(0, dtype=object), empty, empty, empty, empty)
    si, ri = (np.array(x) for x in zip(*rows, strict=True))
    plain = physics.replace({"stack": pair.stack.name, "host_from": physics.stack})
    st_pred = predict_groups(make_groups(st, pair.stack, resolve), len(st), gpu, plain)
    ref_pred = predict_groups(make_groups(ref, reference, resolve), len(ref), gpu, physics)
    st_ratio = st_pred[si] / st.measured_s[si]
    ref_ratio = ref_pred[ri] / ref.measured_s[ri]
    return NetErrors(st.mode[si], st_ratio - 1.0, ref_ratio - 1.0,
                     st_ratio / ref_ratio - 1.0, st.batch[si])


def section(gpu: GpuSpec, pairs: Sequence[LeasePair], physics: Callable[[str], Calibration],
            reference: StackSpec, resolve: Callable[[str], ModelSpec]) -> str:
    """The report section: per lease, stack and mode, the stack's and the reference's
    errors on the shapes both measured, and the stack's net of the lease (empty string
    without pairs). ``physics``: by stack name, the physics that stack is judged with."""
    rows = []
    pooled: dict[str, list[NetErrors]] = {}
    for pair in pairs:
        got = net_errors(pair, gpu, physics(pair.stack.name), reference, resolve)
        pooled.setdefault(pair.stack.name, []).append(got)
        modes, st_err, ref_err, net, _ = got
        for mode in MODES:
            m = modes == mode
            if not m.any():
                continue
            rows.append({"lease": pair.lease, "stack": pair.stack.name, "mode": mode,
                         "n": int(m.sum()),
                         "stack_mape": float(np.mean(np.abs(st_err[m]))),
                         "stack_bias": float(np.mean(st_err[m])),
                         "reference_bias": float(np.mean(ref_err[m])),
                         "net_mape": float(np.mean(np.abs(net[m]))),
                         "net_bias": float(np.mean(net[m])),
                         "net_max": float(np.max(np.abs(net[m])))})
    if not rows:
        return ""
    return "\n".join([
        f"### Stacks beside the reference stack on one lease ({gpu.name})", "",
        f"Each stack's CUDA-graph steps and the reference stack's ({reference.name}) of "
        "the same shapes, measured on one lease (`validation/data/"
        f"{gpu.name}/lease_*/stacks/<stack>/` beside `lease_*/steps.csv`; never fitted), "
        "both predicted by the physics the stack is judged with above (fitted without "
        "the stack's data). *stack*: its error as the cross-stack column counts it; "
        "*reference_bias*: the reference stack's on the same shapes, the lease's own "
        "speed against the fitted leases; *net*: predicted over measured of the stack "
        "divided by the reference's on the same shape, minus one: what the stack file "
        "gets wrong, the lease taken out.", "",
        markdown_table(rows, ["lease", "stack", "mode", "n", "stack_mape", "stack_bias",
                              "reference_bias", "net_mape", "net_bias", "net_max"],
                       ("stack_mape", "stack_bias", "reference_bias", "net_mape",
                        "net_bias", "net_max")), "",
        "The net errors of every lease above by the kind of step (a stack's kernels "
        "change most between one token a step, where launches bind, and many):", "",
        markdown_table(_by_kind(pooled), ["stack", "steps", "n", "net_mape", "net_bias",
                                          "net_min", "net_max"],
                       ("net_mape", "net_bias", "net_min", "net_max")), "", ""])


def _by_kind(pooled: dict[str, list[NetErrors]]) -> list[dict[str, object]]:
    """Rows of the net errors pooled over leases, per stack and ``KINDS``."""
    rows = []
    for name, parts in pooled.items():
        modes = np.concatenate([p.modes for p in parts])
        batch = np.concatenate([p.batch for p in parts])
        net = np.concatenate([p.net for p in parts])
        for label, mode, lo, hi in KINDS:
            m = (modes == mode) & (batch >= lo) & (batch <= hi)
            if m.any():
                rows.append({"stack": name, "steps": label, "n": int(m.sum()),
                             "net_mape": float(np.mean(np.abs(net[m]))),
                             "net_bias": float(np.mean(net[m])),
                             "net_min": float(np.min(net[m])),
                             "net_max": float(np.max(net[m]))})
    return rows


def report(gpu_dir: Path, gpu: GpuSpec, physics: Callable[[str], Calibration],
           reference: StackSpec, resolve: Callable[[str], ModelSpec],
           load_stack: Callable[[str], StackSpec]) -> str:
    """``section`` of the pairs under ``gpu_dir`` (``read_pairs``), with a leading
    newline; empty without pairs."""
    text = section(gpu, read_pairs(gpu_dir, load_stack), physics, reference, resolve)
    return "\n" + text if text else ""
