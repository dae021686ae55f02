"""One forward step on a Platform: its predicted time (``predict``: closed form,
vectorised), its simulated timeline (``simulate``: the SimPy engine), and where the
time goes (``breakdown``).

Layers built on ``step`` (speculative decoding, serving) reach kernels, their costs and
the engine only through this package: ``forward_kernels`` (a forward pass's kernels, to
which a caller may add its own ``Kernel`` records, e.g. ``gemm_kernel``, and
``launches_per_shape``, what they launch), ``predict_kernels`` and ``kernels_cost``
(closed form), ``program_costs`` (a loop's clock) and ``simulate_steps`` (a host
program of several steps through the engine).
"""

from gpusim.cost import Cost
from gpusim.engine import Timeline
from gpusim.kernels import GemmShape, Kernel, gemm_kernel, launches_per_shape
from gpusim.step.breakdown import OpCost, breakdown, op_costs, summary
from gpusim.step.pipeline import PipelineTiming, layout_summary
from gpusim.step.predict import (
    StepPrediction,
    forward_kernels,
    kernels_cost,
    predict,
    predict_kernels,
    program_clock,
    program_costs,
)
from gpusim.step.simulate import ProgramStep, expand_launches, simulate, simulate_steps

__all__ = ["Cost", "GemmShape", "Kernel", "OpCost", "PipelineTiming", "ProgramStep",
           "StepPrediction",
           "Timeline", "breakdown", "expand_launches", "forward_kernels", "gemm_kernel",
           "kernels_cost", "launches_per_shape", "layout_summary", "op_costs", "predict",
           "predict_kernels", "program_clock",
           "program_costs", "simulate", "simulate_steps", "summary"]
