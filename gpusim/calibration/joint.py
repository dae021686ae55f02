"""The other stacks whose measured steps fit a GPU's physics with the reference stack's.

The GPU physics (bandwidth and its ramp, tensor rates, launch gaps) holds for every
stack, so it is fitted once per GPU across the measured stacks whose kernels it prices
without parameters of their own: a stack file with no ``calibrate`` list (torch-fused,
torch-compile). A stack with parameters of its own (a quantized GEMM family, a masked
attention kernel's efficiency) is fitted on the physics afterwards, not with it. Only
their CUDA-graph steps join (the GPU's time, not the host's); their eager steps fit
their host costs as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from gpusim.calibration.measurements import StepData, read_steps
from gpusim.specs import StackSpec
from gpusim.specs.enums import Launch, Mode

# other stacks' steps that fit the physics: (a stack's CUDA-graph steps, the stack)
Joint = Sequence[tuple[StepData, StackSpec]]


def joins_physics(stack: StackSpec, reference: str) -> bool:
    """Whether ``stack``'s steps fit the GPU physics (see the module docstring)."""
    return stack.name != reference and not stack.calibrate


def joint_steps(gpu_dir: Path, reference: str,
                resolve_stack: Callable[[str], StackSpec]
                ) -> list[tuple[StepData, StackSpec]]:
    """The CUDA-graph steps (no token trees) of every stack under ``gpu_dir/stacks``
    that joins the physics fit of the ``reference`` stack's GPU, in name order.
    Raises ConfigError for an unreadable steps file or an unknown stack."""
    out = []
    for steps_csv in sorted((gpu_dir / "stacks").glob("*/steps.csv")):
        stack = resolve_stack(steps_csv.parent.name)
        if not joins_physics(stack, reference):
            continue
        data = read_steps(steps_csv, stack.name)
        graph = (data.launch == Launch.GRAPH) & (data.mode != Mode.TREE)
        if graph.any():
            out.append((data.subset(graph), stack))
    return out


def without_model(joint: Joint, model: str) -> list[tuple[StepData, StackSpec]]:
    """``joint`` with ``model``'s steps left out (a leave-one-model-out fit)."""
    out = []
    for data, stack in joint:
        kept = data.model != model
        if kept.any():
            out.append((data.subset(kept), stack))
    return out


def without_stack(joint: Joint, name: str) -> list[tuple[StepData, StackSpec]]:
    """``joint`` with stack ``name``'s steps left out (its cross-stack transfer)."""
    return [(data, stack) for data, stack in joint if stack.name != name]


def described(joint: Joint) -> str:
    """What a calibration's ``fitted_on`` adds for the joined steps ('' for none)."""
    if not joint:
        return ""
    return " + graph steps of " + ", ".join(
        f"{stack.name} ({len(data)})" for data, stack in joint)
