"""One forward step: its predicted time (closed form, vectorised) and its simulated
timeline (the SimPy engine), and where the time goes."""

from gpusim.step.core import (
    LAUNCH_MODES,
    TREE_MODE,
    Cost,
    GemmShape,
    Kernel,
    OpCost,
    ProgramStep,
    StepPrediction,
    Timeline,
    breakdown,
    expand_launches,
    forward_kernels,
    kernels_cost,
    op_costs,
    predict,
    predict_kernels,
    program_clock,
    program_costs,
    simulate,
    simulate_steps,
    summary,
)

__all__ = ["LAUNCH_MODES", "TREE_MODE", "Cost", "GemmShape", "Kernel", "OpCost",
           "ProgramStep", "StepPrediction", "Timeline", "breakdown", "expand_launches",
           "forward_kernels", "kernels_cost", "op_costs", "predict", "predict_kernels",
           "program_clock", "program_costs", "simulate", "simulate_steps", "summary"]
