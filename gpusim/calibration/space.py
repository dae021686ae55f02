"""What a calibration fits, and how a vector of fitted values becomes a Calibration.

Each entry is a fitted variable: the calibration parameters it sets (dotted paths into
``cost.params.Calibration``; several when the measurements cannot tell them apart) and
its bounds (lower, upper, start, unit), searched in ``unit``s so all are O(1). GPU
physics and host bounds are listed here; an attention family's bounds are its own
(``FIT`` in its module), so a family's new field is fitted without touching this file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpusim.cost import Calibration
from gpusim.cost.attention import FAMILIES
from gpusim.cost.gemm_families import GEMM_FAMILIES
from gpusim.errors import FieldError

Bounds = tuple[float, float, float, float]


@dataclass(frozen=True)
class Variable:
    """One fitted value and the parameters it sets."""

    paths: tuple[str, ...]
    bounds: Bounds

    @property
    def name(self) -> str:
        return self.paths[0]


def _phys(name: str, bounds: Bounds) -> Variable:
    return Variable((f"physics.{name}",), bounds)


def _fam(family: str, field: str, *also: str) -> Variable:
    """A family's field at the family's own bounds (``also``: other families' same
    field, fitted as one value)."""
    paths = (f"attention.{family}.{field}", *(f"attention.{f}.{field}" for f in also))
    return Variable(paths, FAMILIES[family].FIT[field])


# the graph stage, in the order the fit has always searched them (the solver's path
# depends on it); fields a family adds later are appended by ``graph_space``
_GRAPH: tuple[Variable, ...] = (
    _phys("hbm_bandwidth_efficiency", (0.5, 1.0, 0.85, 1.0)),
    _phys("dram_latency_s", (0.0, 5e-6, 1e-6, 1e-6)),
    _phys("saturating_ctas_per_sm", (0.0, 4.0, 0.5, 1.0)),
    _phys("kernel_fixed_cost_s", (0.0, 4e-6, 1.5e-6, 1e-6)),
    _phys("launch_gap_s", (0.0, 3e-6, 0.4e-6, 1e-6)),
    _phys("tensor_efficiency", (0.3, 1.0, 0.7, 1.0)),
    _phys("attention_bandwidth_efficiency", (0.3, 1.0, 0.85, 1.0)),
    # decode's split-KV kernel is memory-bound wherever it was measured: its tensor
    # efficiency cannot be told from the prefill kernel's, so they are one value
    _fam("cudnn_prefill", "tensor_efficiency", "flash_decode"),
    _fam("fa2", "tensor_efficiency"),
    _phys("attention_fixed_cost_s", (0.0, 10e-6, 2e-6, 1e-6)),
    _fam("fa2", "l2_reuse_split"),
    _fam("fa2", "l2_reuse_unsplit"),
    _fam("fa2", "cta_overhead_s"),
    _fam("fa2", "score_flops"),
    _fam("fa2", "unsplit_fixed_s"),
    _fam("fa2", "combine_s_per_split"),
    _phys("gemm_fixed_cost_s", (0.0, 10e-6, 2e-6, 1e-6)),
    _phys("strided_kernel_extra_s", (0.0, 3e-6, 1e-6, 1e-6)),
    _phys("strided_bandwidth_fraction", (0.1, 1.0, 0.6, 1.0)),
    _phys("reduction_s_per_element", (0.0, 4e-10, 1e-10, 1e-10)),
    _phys("reduction_parallel_rows", (4.0, 64.0, 16.0, 1.0)),
    _phys("l2_bandwidth_ratio", (1.0, 6.0, 2.0, 1.0)),
    Variable(("host.host_graph_launch_cost_s",), (0.0, 30e-6, 5e-6, 1e-6)),
    _phys("overlap_exponent", (1.0, 16.0, 3.0, 1.0)),
    _phys("power_cap_tensor_share", (0.1, 1.0, 0.4, 1.0)),
    _phys("power_memory_weight", (0.0, 1.0, 0.2, 1.0)),
    _fam("fa2", "clock_sensitivity"),
    _phys("l2_reuse_fraction", (0.02, 1.0, 0.5, 1.0)),
)
EAGER_SPACE: tuple[Variable, ...] = (
    Variable(("host.host_launch_cost_s",), (0.0, 60e-6, 6e-6, 1e-6)),
)


def stack_space(paths: tuple[str, ...]) -> tuple[Variable, ...]:
    """The variables of a stack's own parameters (its file's ``calibrate``): GPU-physics
    numbers at the bounds the physics fit uses, attention- and GEMM-family fields at the
    family's (``FIT``). Raises ValueError (field ``calibrate``) for a parameter with no
    fit bounds."""
    physics = {v.name: v.bounds for v in _GRAPH if v.name.startswith("physics.")}
    out = []
    for path in paths:
        parts = path.split(".")
        if path in physics:
            out.append(Variable((path,), physics[path]))
        elif (parts[0] == "attention" and len(parts) == 3 and parts[1] in FAMILIES
              and parts[2] in FAMILIES[parts[1]].FIT):
            out.append(Variable((path,), FAMILIES[parts[1]].FIT[parts[2]]))
        elif (parts[0] == "gemm" and len(parts) == 3 and parts[1] in GEMM_FAMILIES
              and parts[2] in GEMM_FAMILIES[parts[1]].FIT):
            out.append(Variable((path,), GEMM_FAMILIES[parts[1]].FIT[parts[2]]))
        else:
            raise FieldError("calibrate", f"calibrate={path!r} has no fit bounds; fittable: "
                             f"{', '.join(physics)} and the attention and GEMM families' "
                             "FIT fields")
    return tuple(out)


def family_space(families: list[str], exclude: set[str] = frozenset()) -> tuple[Variable, ...]:
    """Every fitted field of ``families`` (their ``FIT``) not set by ``exclude``."""
    return tuple(Variable((f"attention.{name}.{field}",), b) for name in families
                 for field, b in FAMILIES[name].FIT.items()
                 if f"attention.{name}.{field}" not in exclude)


def gemm_space(families: list[str]) -> tuple[Variable, ...]:
    """Every fitted field of the GEMM kernel ``families`` (``cost.gemm_families``: their
    ``FIT``), as ``gemm.<family>.<field>``."""
    return tuple(Variable((f"gemm.{name}.{field}",), b) for name in families
                 for field, b in GEMM_FAMILIES[name].FIT.items())


def graph_space(families: list[str], gemm_families: list[str] | None = None
                ) -> tuple[Variable, ...]:
    """The graph stage: GPU physics, the graph replay's host cost, and the fields of the
    attention ``families`` and GEMM ``gemm_families`` (quantized, expert GEMMs) the graph
    rows run (a field the ordered list lacks comes last; a family the rows never run is
    not fitted)."""
    used = [v for v in _GRAPH if not v.name.startswith("attention.")
            or any(p.split(".")[1] in families for p in v.paths)]
    listed = {p for v in used for p in v.paths}
    return (*used, *family_space(families, listed), *gemm_space(gemm_families or []))


def bounds(space: tuple[Variable, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) of the variables, in units."""
    return (np.array([v.bounds[0] / v.bounds[3] for v in space]),
            np.array([v.bounds[1] / v.bounds[3] for v in space]))


def start(space: tuple[Variable, ...], base: Calibration) -> np.ndarray:
    """The starting point: a value ``base`` was given, else each variable's start."""
    return np.array([float(base.get(v.name)) / v.bounds[3] if base.is_set(v.name)  # type: ignore[arg-type]
                     else v.bounds[2] / v.bounds[3] for v in space])


def apply(base: Calibration, space: tuple[Variable, ...], x: np.ndarray) -> Calibration:
    """``base`` with the variables set to ``x`` (in units)."""
    return base.replace({p: float(value) * v.bounds[3]
                         for v, value in zip(space, x, strict=True) for p in v.paths})
