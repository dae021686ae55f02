"""A stack file against a profiled step, kernel by kernel (``gpusim stack check``).

The trace is read as ``import`` reads it (its layers, each GEMM's weight, each run of
pointwise kernels); the stack is built for the traced shape and priced. Both sides are
lined up section by section on their anchors (a GEMM by its weight, the attention);
the pointwise ops between two anchors are compared as one row, since two descriptions
of the same kernels may split them into ops differently. Each row: the ops, their
kernel launches, and the stack's predicted time next to the trace's kernel time (one
middle layer's for the layer section; the profiler's kernel durations).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import numpy as np

from gpusim.cost.params import Calibration
from gpusim.cost.steps import step_costs
from gpusim.io.profile_trace import TracedStep
from gpusim.kernels.build import build_kernels
from gpusim.kernels.records import launches_per_shape
from gpusim.kernels.variants import layer_ops
from gpusim.specs import GpuSpec, ModelSpec, StackOp, StackSpec
from gpusim.stackgen.build import analyse
from gpusim.stackgen.ops import section_groups
from gpusim.stackgen.units import units

SECTIONS = ("prologue", "layer", "epilogue")


@dataclass(frozen=True)
class CheckRow:
    """One anchor or one stretch of pointwise ops: the stack's side and the trace's
    (an empty name: that side has nothing here)."""

    section: str
    stack_ops: str
    traced_ops: str
    stack_kernels: int
    traced_kernels: int
    predicted_us: float
    traced_us: float


@dataclass(frozen=True)
class CheckResult:
    """The rows, the traced shape, and the whole step's launches and times."""

    mode: str
    batch: int
    q: int
    keys: int
    rows: tuple[CheckRow, ...]
    stack_launches: int
    traced_launches: int
    predicted_us: float
    traced_us: float


def _key(op: StackOp) -> tuple:
    if op.op == "gemm":
        return ("gemm", op.weight)
    return (op.op,) if op.op == "attention" else ("pointwise",)


def _stretches(items: list) -> list[tuple[tuple, list]]:
    """Consecutive pointwise items merged: [(key, [items])]; ``items`` are
    (StackOp, payload) pairs."""
    out: list[tuple[tuple, list]] = []
    for op, payload in items:
        key = _key(op)
        if out and key == ("pointwise",) and out[-1][0] == key:
            out[-1][1].append((op, payload))
        else:
            out.append((key, [(op, payload)]))
    return out


def _traced_us(groups: list) -> float:
    return sum(k.duration_us for _, us in groups for u in us for k in u.kernels)


def _traced_launches(groups: list) -> int:
    return sum(u.launches for _, us in groups for u in us)


def _rows(section: str, stack_items: list, traced_items: list) -> list[CheckRow]:
    ours, theirs = _stretches(stack_items), _stretches(traced_items)
    matcher = difflib.SequenceMatcher(a=[k for k, _ in ours], b=[k for k, _ in theirs],
                                      autojunk=False)
    rows = []

    def row(a: list, b: list) -> CheckRow:
        return CheckRow(section, ", ".join(op.name for op, _ in a),
                        ", ".join(op.name for op, _ in b),
                        sum(k for _, (k, _) in a), _traced_launches(b),
                        sum(t for _, (_, t) in a), _traced_us(b))

    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            rows += [row(ours[i][1], theirs[j][1])
                     for i, j in zip(range(i1, i2), range(j1, j2), strict=True)]
        else:
            rows += [row(ours[i][1], []) for i in range(i1, i2)]
            rows += [row([], theirs[j][1]) for j in range(j1, j2)]
    return rows


def check_stack(step: TracedStep, model: ModelSpec, stack: StackSpec, gpu: GpuSpec,
                cal: Calibration, ctx: int | None = None,
                given_mode: str | None = None) -> CheckResult:
    """``stack`` against one traced step of ``model``. ``ctx``: the context before the
    step when the trace cannot tell it (a masked static cache attends the whole cache);
    by default the keys attended less the new tokens. Raises ValueError for a trace
    whose layers or attention cannot be found, or that recorded no shapes."""
    layout, mode, (shape, masked, expanded) = analyse(step, model, given_mode)
    if shape.batch == 0:
        raise ValueError("the trace recorded no shapes: check needs record_shapes=True "
                         "to build the stack at the traced shape")
    notes: list[str] = []
    traced = {sec: section_groups(sec, us, model, shape, (masked, expanded), notes)
              for sec, us in zip(SECTIONS, (layout.prologue, layout.layer,
                                            layout.epilogue), strict=True)}
    context = shape.keys - shape.q if ctx is None else ctx
    one = np.array([1])
    kernels = build_kernels(model, stack, mode, shape.batch * one, context * one,
                            shape.q * one, cache_len=shape.keys * one if masked else None)
    costs = step_costs(kernels, gpu, cal)
    # launches at the traced shape (a copy skipped at one token launches none)
    priced = {(k.section, k.name): (int(np.broadcast_to(k.shape_launches(), 1)[0]),
                                    float(c.seconds[0]) * 1e6)
              for k, c in zip(kernels, costs, strict=True)}
    rows: list[CheckRow] = []
    for sec in SECTIONS:
        # the layer as the model runs it (its q/k norms, its MoE section)
        ops = layer_ops(model, stack) if sec == "layer" else getattr(stack, sec)
        # an op the stack skips at this shape (repeat_kv of a model without GQA) is
        # priced at nothing
        items = [(op, priced.get((sec, op.name), (0, 0.0))) for op in ops]
        rows += _rows(sec, items, traced[sec])
    scale = {"prologue": 1, "layer": model.num_hidden_layers, "epilogue": 1}
    return CheckResult(
        mode, shape.batch, shape.q, shape.keys, tuple(rows),
        stack_launches=int(launches_per_shape(kernels, 1)[0]),
        traced_launches=sum(u.launches for u in units(step.kernels)),
        predicted_us=sum(r.predicted_us * scale[r.section] for r in rows),
        traced_us=sum(k.duration_us for k in step.kernels))
