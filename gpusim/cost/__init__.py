"""Kernel -> Cost: the time each kernel takes on a GPU, given a calibration.

One module per concern: ``params`` (the calibration: GPU physics, attention families'
parameters, per-stack host costs), ``record`` (Cost), ``gemm``, ``pointwise``,
``attention/`` (one module per kernel family), ``kernel`` (one kernel's cost),
``power`` (the power cap's clock), ``steps`` (a step's kernels together). Pure and
vectorised over step shapes; no SimPy, no requests.
"""

from gpusim.cost.kernel import busy_s, kernel_cost, tensor_efficiency
from gpusim.cost.params import Calibration, CalibrationSet, GpuPhysics, HostParams, SlowPick
from gpusim.cost.power import POWER_EXPONENT, power_clock, power_load, tensor_share
from gpusim.cost.record import Cost
from gpusim.cost.steps import distinct_costs, step_cost, step_costs

__all__ = ["POWER_EXPONENT", "Calibration", "CalibrationSet", "Cost", "GpuPhysics",
           "HostParams", "SlowPick", "busy_s", "distinct_costs", "kernel_cost", "power_clock",
           "power_load", "step_cost", "step_costs", "tensor_efficiency", "tensor_share"]
