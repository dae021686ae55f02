"""Where the layers are in a profiled step: the prologue, the block of units that
repeats once per layer, and the epilogue.

A model's ``num_hidden_layers`` identical layers launch the same units in the same
order, so the step is ``prologue + L x layer + epilogue``. The search tries every
prologue length and period and keeps the longest period whose L repeats match unit for
unit (by ``Unit.signature``: class, op, a GEMM's shape); Inductor names the same fused
kernel differently in different layers (``..._add_8``, ``..._add_9``), which the
signature ignores.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpusim.stackgen.units import Unit


@dataclass(frozen=True)
class Layout:
    """A step split into its prologue, one layer's units (a middle layer's: the first
    and last may fuse their neighbours' work) and its epilogue."""

    prologue: list[Unit]
    layer: list[Unit]
    epilogue: list[Unit]
    layers: int


def _repeats(sigs: list[tuple], start: int, period: int, layers: int) -> bool:
    end = start + period * layers
    return all(sigs[i] == sigs[i - period] for i in range(start + period, end))


def find_layers(units: list[Unit], layers: int) -> Layout:
    """The prologue/layer/epilogue split of a step's units for a model of ``layers``
    layers. Raises ValueError when no block repeats ``layers`` times."""
    sigs = [u.signature for u in units]
    n = len(units)
    best: tuple[int, int] | None = None
    for period in range(n // layers, 0, -1):
        for start in range(0, n - period * layers + 1):
            if _repeats(sigs, start, period, layers):
                best = (start, period)
                break
        if best is not None:
            break
    if best is None:
        raise ValueError(f"no block of units repeats {layers} times in the step's "
                         f"{n} launch units: is the model right (its num_hidden_layers)?")
    start, period = best
    end = start + period * layers
    middle = start + period * (layers // 2)
    return Layout(units[:start], units[middle:middle + period], units[end:], layers)
