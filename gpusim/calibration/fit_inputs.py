"""What a GPU's physics fit reads from its data folder (``validation/data/<gpu>/``):
its reference-stack steps and, beside them, the profiles, GEMM sweep, power probe,
profiled attention kernels and the joint stacks' steps (``calibration.fit``'s inputs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gpusim.calibration.attention_points import AttentionPoint, read_attention_points
from gpusim.calibration.gemm_picks import SweptPoint, read_sweep_beside
from gpusim.calibration.joint import Joint, joint_steps
from gpusim.calibration.measurements import StepData, read_step_dir
from gpusim.calibration.profiles import ProfileData, profile_paths, read_profiles
from gpusim.calibration.steady_clocks import SteadyClocks, read_probe_beside
from gpusim.io import loader
from gpusim.specs import GpuSpec, StackSpec


@dataclass(frozen=True)
class FitInputs:
    """Everything a GPU's physics fit takes from its data folder besides kernel
    microbenchmarks: its reference-stack steps and what ``fit`` takes beside them."""

    data: StepData
    profiles: ProfileData | None
    sweep: list[SweptPoint]
    clocks: SteadyClocks | None
    attention: list[AttentionPoint]
    joint: Joint = field(default_factory=list)


def read_fit_inputs(gpu: GpuSpec, stack: StackSpec, data_dir: Path) -> FitInputs:
    """The fit inputs under ``data_dir/<gpu>/`` (steps.csv and what lies beside it).
    Raises ConfigError for an unreadable file."""
    return read_fit_inputs_beside(gpu, stack, data_dir / gpu.name / "steps.csv")


def read_fit_inputs_beside(gpu: GpuSpec, stack: StackSpec, steps: Path) -> FitInputs:
    """The fit inputs of a steps file (``steps``, or its ``.gz``) and what lies beside
    it. Raises ConfigError for an unreadable file."""
    return FitInputs(
        data=read_step_dir(steps),
        profiles=read_profiles(profile_paths(steps.parent), stack),
        sweep=read_sweep_beside(steps),
        clocks=read_probe_beside(steps, gpu.boost_clock_hz / 1e6),
        attention=read_attention_points(steps.parent, gpu, loader.load_model,
                                        loader.load_stack),
        joint=joint_steps(steps.parent, stack.name, loader.load_stack))
