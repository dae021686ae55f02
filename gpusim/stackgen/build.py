"""A stack from one or more traced steps (``import_stack``), and a stack compared with
a trace (``check_stack``).

The first trace gives the forward's structure (its prologue, layer and epilogue ops);
every trace gives the attention kernel family of the mode it ran (decode, verify or
prefill, told from its attention call's shape); modes no trace ran keep the families of
a base stack (``like``), which the description says.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpusim.io.profile_trace import TracedStep
from gpusim.specs import ModelSpec, StackSpec
from gpusim.stackgen.layers import Layout, find_layers
from gpusim.stackgen.ops import Shape, family, section_ops, traced_shape
from gpusim.stackgen.units import Unit, units


@dataclass(frozen=True)
class Imported:
    """An imported stack, the traced steps' modes, and what the import had to guess."""

    stack: StackSpec
    modes: tuple[str, ...]
    notes: tuple[str, ...]
    launches: int             # kernels of the first traced step, runtime memsets left out


def _attention(layout: Layout) -> Unit:
    found = [u for u in layout.layer if u.cls == "attention"]
    if len(found) != 1:
        raise ValueError(f"a layer launches {len(found)} attention ops; expected one")
    return found[0]


def analyse(step: TracedStep, model: ModelSpec, mode: str | None = None
            ) -> tuple[Layout, str, tuple]:
    """(layout, mode, (shape, masked, expanded)) of one traced step. A trace of GPU
    kernels only (no recorded shapes) takes its mode from ``mode``; its shape is then
    unknown (Shape(0, 0, 0)) and its pointwise bytes are assumed. Raises ValueError when
    no layer repeats, or the attention call has no shapes and no ``mode`` is given."""
    layout = find_layers(units(step.kernels), model.num_hidden_layers)
    attention = _attention(layout)
    if not any(isinstance(d, tuple) for d in attention.dims):
        if mode is None:
            raise ValueError("the trace recorded no shapes (profile with "
                             "record_shapes=True), so the step's mode is unknown: pass "
                             "--mode (decode, verify or prefill)")
        return layout, mode, (Shape(0, 0, 0), False, False)
    shape, traced_mode, masked, expanded = traced_shape(attention, model)
    if mode is not None and mode != traced_mode:
        raise ValueError(f"the trace's attention call runs a {traced_mode} step "
                         f"(batch {shape.batch}, {shape.q} new tokens, {shape.keys} "
                         f"keys), not {mode}")
    return layout, traced_mode, (shape, masked, expanded)


def import_stack(steps: list[TracedStep], model: ModelSpec, name: str, like: StackSpec,
                 description: str = "", given_mode: str | None = None) -> Imported:
    """A stack named ``name`` from traced steps of ``model``, one per trace (its warm
    step); ``given_mode`` for traces of GPU kernels only (no recorded shapes). Raises
    ValueError for a trace whose layers or attention cannot be found."""
    notes: list[str] = []
    layout, mode0, (shape, masked, expanded) = analyse(steps[0], model, given_mode)
    families = dict(like.attention)
    modes = []
    for st in steps:
        lay, mode, (_, m_masked, _) = analyse(st, model, given_mode) if st is not steps[0] else (
            layout, mode0, (shape, masked, expanded))
        families[mode] = family(_attention(lay), mode, m_masked)
        modes.append(mode)
    if "prefill" not in modes and "verify" in modes and families["verify"] == "cudnn_masked":
        # the stack passes an explicit mask (its verify runs cuDNN's masked kernel):
        # its prefill does too
        families["prefill"] = "cudnn_masked"
        modes_note = "prefill: the verify's masked family (the stack passes a mask)"
        notes.append(modes_note)
    kept = [m for m in ("decode", "verify", "prefill")
            if m not in modes and not (m == "prefill" and families[m] == "cudnn_masked"
                                       and "verify" in modes)]
    sections = {
        sec: section_ops(sec, us, model, shape, (masked, expanded), notes)
        for sec, us in (("prologue", layout.prologue), ("layer", layout.layer),
                        ("epilogue", layout.epilogue))}
    others = (f"attention families of {like.name} for {', '.join(kept)}" if kept
              else "every mode traced")
    text = description or (f"imported from traces of {model.name} ({', '.join(modes)}); "
                           f"{others}")
    if model.qk_norm:
        # the traced layer already runs the q/k norms: the file adds none for a model
        # with them (qk_norm: [] below), and says it describes such models only
        notes.append(f"the layer holds {model.name}'s per-head q/k norms as traced "
                     "(qk_norm: [] adds none): it prices models with q/k norms; import "
                     "a trace of a model without them for those")
    stack = StackSpec(name=name, description=text, attention=families,
                      host_costs_from=like.name, prologue=tuple(sections["prologue"]),
                      layer=tuple(sections["layer"]), epilogue=tuple(sections["epilogue"]),
                      qk_norm=() if model.qk_norm else None)
    launches = sum(u.launches for u in units(steps[0].kernels))
    return Imported(stack, tuple(modes), tuple(notes), launches)
