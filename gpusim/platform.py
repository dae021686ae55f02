"""What a step runs on: GPU(s), software stack, calibration, launch mode and the
parallel layout, as one record every layer from ``step`` up takes.

Checked once where it is made: the calibration must be for this GPU (a calibration
carried to another GPU says so in its ``gpu``: ``Calibration.transferred``), the launch
mode one of graph or eager, the layout a positive split whose GPUs the GPU file can
connect (beyond one node only over its ``links.network``). Raises FieldError (a
ValueError) naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gpusim.cost import Calibration
from gpusim.cost.trust import Assessment, TrustColumns, assess, assess_columns
from gpusim.errors import FieldError
from gpusim.specs import GpuSpec, StackSpec
from gpusim.specs.enums import Launch, parse


@dataclass(frozen=True)
class ParallelLayout:
    """How a model is split over GPUs: tensor (``tp``), pipeline (``pp``) and expert
    (``ep``) parallel degrees. ``gpus`` = tp x pp; expert parallelism spreads the
    experts over those same GPUs. A pipelined step splits its batch into
    ``micro_batches`` that follow each other through the stages."""

    tp: int = 1
    pp: int = 1
    ep: int = 1
    micro_batches: int = 1

    def __post_init__(self) -> None:
        for name in ("tp", "pp", "ep", "micro_batches"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1024:
                raise FieldError(name, f"{name}={value!r} must be an integer in 1..1024")
        if (self.tp * self.pp) % self.ep:
            raise FieldError("ep", f"ep={self.ep} must divide the {self.tp * self.pp} GPUs "
                             f"(tp={self.tp} x pp={self.pp})")

    @property
    def gpus(self) -> int:
        return self.tp * self.pp

    @property
    def single(self) -> bool:
        return self.gpus == 1


@dataclass(frozen=True)
class Platform:
    """GPU, stack, calibration, launch mode and parallel layout of a prediction."""

    gpu: GpuSpec
    stack: StackSpec
    calibration: Calibration = field(default_factory=Calibration)
    launch: Launch = Launch.GRAPH
    layout: ParallelLayout = field(default_factory=ParallelLayout)

    def __post_init__(self) -> None:
        object.__setattr__(self, "launch", parse(Launch, self.launch, "launch"))
        links = self.gpu.links
        if self.layout.gpus > links.node_gpus and links.network is None:
            bad = "tp" if self.layout.tp > links.node_gpus else "pp"
            raise FieldError(bad, f"{bad}={getattr(self.layout, bad)}: "
                             f"{self.layout.gpus} GPUs span nodes of {links.node_gpus} "
                             f"{self.gpu.name}, whose file gives no links.network")
        cal_gpu = self.calibration.gpu
        if cal_gpu is not None and cal_gpu != self.gpu.name:
            raise FieldError("calibration", f"calibration={cal_gpu!r}: a calibration for "
                             f"{cal_gpu} cannot price {self.gpu.name}; carry it over with "
                             "Calibration.transferred or load one for this GPU")

    def with_launch(self, launch: str) -> Platform:
        """This platform with another launch mode."""
        return Platform(self.gpu, self.stack, self.calibration, Launch(launch), self.layout)

    def with_calibration(self, cal: Calibration) -> Platform:
        """This platform priced with another calibration (a fit's candidate)."""
        return Platform(self.gpu, self.stack, cal, self.launch, self.layout)

    def with_layout(self, layout: ParallelLayout) -> Platform:
        """This platform with another parallel layout (raises as the constructor)."""
        return Platform(self.gpu, self.stack, self.calibration, self.launch, layout)

    def assess(self, model_params: float, mode: str, batch: float, ctx: float,
               q: float) -> Assessment:
        """How far to trust a step on this platform: its calibration's error band and
        the dimensions outside what that calibration was measured on (``cost.trust``;
        every calibration was measured on one GPU, so a layout of several is outside)."""
        a = assess(self.calibration.trust, gpu=self.gpu.name, stack=self.stack.name,
                   launch=self.launch.value, mode=mode, batch=batch, ctx=ctx, q=q,
                   model_params=model_params)
        if self.layout.single or self.calibration.trust is None:
            return a
        return Assessment(a.band_pct, (*a.outside, *self._layout_outside()), a.no_band)

    def assess_columns(self, model_params: float, mode: str, batch: np.ndarray,
                       ctx: np.ndarray, q: np.ndarray, predicted_ms: np.ndarray
                       ) -> TrustColumns:
        """``assess`` of many shapes of one model and mode and each one's band interval
        around ``predicted_ms``, as columns (``cost.trust.assess_columns``)."""
        return assess_columns(self.calibration.trust, gpu=self.gpu.name,
                              stack=self.stack.name, launch=self.launch.value, mode=mode,
                              batch=batch, ctx=ctx, q=q, model_params=model_params,
                              predicted_ms=predicted_ms, extra_outside=self._layout_outside())

    def _layout_outside(self) -> tuple[str, ...]:
        if self.layout.single:
            return ()
        return (f"layout tp={self.layout.tp} pp={self.layout.pp} (measured on 1 GPU)",)

    @property
    def graph(self) -> bool:
        return self.launch == Launch.GRAPH

    @property
    def sram_bytes(self) -> float:
        """On-chip memory a kernel may stage through: L2 plus every SM's shared memory."""
        return float(self.gpu.l2_bytes + self.gpu.sram_per_sm_bytes * self.gpu.sm_count)
