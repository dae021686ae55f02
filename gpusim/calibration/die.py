"""Stack parameters fitted once per die: a kernel family's arithmetic on the SMs.

The H100 SXM and the H200 are one chip in one configuration (GH100, 132 SMs, the same
clocks and L2; ``GpuSpec.die``); only their HBM differs. A quantized GEMM kernel's
arithmetic (its tensor-core efficiency, the CUDA-core operations it spends to
dequantize a weight: ``GemmFamily.DIE``) is then the same on both, and the measured
steps agree: tinygemm's int4 decode steps of Llama 3.1 8B take 4.38 and 4.14 ms at batch
1 and 133.3 and 134.0 ms at batch 256 on the two, where the H200's HBM alone would make
them 30% shorter. Fixed costs and everything that touches memory stay per GPU. The same
holds for an attention family's ``DIE`` fields as a stack parameter (hf-transformers'
masked-kernel efficiency); as GPU physics they are ``calibration.die_physics``'s.

So a stack's die-level ``calibrate`` parameters on a GPU come from the GPU of its die
whose data holds the most models of that stack's steps (more than the GPU's own;
otherwise it fits them itself): its shipped calibration's values for the shipped fit,
and its own fit without a model for that model's held-out prediction, so that no step
of a held-out model, on either GPU, enters its prediction. ``validation/die_shared_lomo.py``
measured the effect before this was adopted (H200 torch-int4 leave-one-model-out decode
5.5% -> 4.0%, torch-fp8 prefill 6.0% -> 4.1%).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from gpusim.calibration.fit import fit_stack
from gpusim.calibration.measurements import read_steps
from gpusim.cost import Calibration
from gpusim.cost.attention import FAMILIES
from gpusim.cost.gemm_families import gemm_family
from gpusim.io import calibrations, loader
from gpusim.specs import GpuSpec, StackSpec


def die_fields(stack: StackSpec) -> tuple[str, ...]:
    """The stack's ``calibrate`` parameters that are a kernel family's work on the SMs
    (``gemm.<family>.<field>`` or ``attention.<family>.<field>`` with the field in the
    family's ``DIE``: a GEMM's arithmetic, hf-transformers' masked attention
    efficiency)."""
    out = []
    for path in stack.calibrate:
        parts = path.split(".")
        if len(parts) != 3:
            continue
        family = (gemm_family(parts[1]) if parts[0] == "gemm"
                  else FAMILIES.get(parts[1]) if parts[0] == "attention" else None)
        if family is not None and parts[2] in family.DIE:
            out.append(path)
    return tuple(out)


@dataclass(frozen=True)
class DieSource:
    """Where a stack's die-level parameters on one GPU come from: another GPU of its die
    (``gpu``) and the models of the stack it measured (``models``)."""

    gpu: str
    stack: str
    fields: tuple[str, ...]
    models: tuple[str, ...]
    data_dir: Path

    def shipped(self) -> dict[str, float]:
        """The values of its shipped calibration (fitted on all its models)."""
        return dict(_shipped(self))

    def without(self, model: str) -> dict[str, float]:
        """The values of its fit without ``model``'s steps (all of them where it never
        measured ``model``)."""
        return dict(_without(self, model)) if model in self.models else self.shipped()


def die_source(gpu: GpuSpec, stack: StackSpec, models: set[str], data_dir: Path
               ) -> DieSource | None:
    """The GPU of ``gpu``'s die whose ``data_dir/<gpu>/stacks/<stack>/steps.csv`` holds
    the most models (more than ``models``, the GPU's own, and with a shipped
    calibration), or None: the GPU fits its die-level parameters itself (no die, none
    of its stack's parameters die-level, no such GPU). Raises ConfigError for an
    unreadable steps file."""
    fields = die_fields(stack)
    if not fields:
        return None
    best: DieSource | None = None
    for other in same_die_gpus(gpu, data_dir):
        steps = data_dir / other / "stacks" / stack.name / "steps.csv"
        if not steps.is_file():
            continue
        theirs = tuple(sorted(set(map(str, read_steps(steps, stack.name).model))))
        if len(theirs) > len(models) and (best is None or len(theirs) > len(best.models)):
            best = DieSource(other, stack.name, fields, theirs, data_dir)
    return best


def same_die_gpus(gpu: GpuSpec, data_dir: Path) -> list[str]:
    """The other GPUs with a folder under ``data_dir``, a hardware file and a shipped
    calibration whose die is ``gpu``'s, in name order (none for a GPU of no stated
    die)."""
    if gpu.die is None or not data_dir.is_dir():
        return []
    return [other for other in sorted(p.name for p in data_dir.iterdir() if p.is_dir())
            if other != gpu.name
            and (calibrations.CALIBRATIONS_DIR / f"{other}.yaml").is_file()
            and (loader.HARDWARE_DIR / f"{other}.yaml").is_file()
            and loader.load_gpu(other).die == gpu.die]


def hold(stack: StackSpec, base: Calibration, values: dict[str, float]
         ) -> tuple[StackSpec, Calibration]:
    """``stack`` without ``values``' parameters in its ``calibrate`` and ``base`` with
    them set: a fit then holds them."""
    kept = tuple(p for p in stack.calibrate if p not in values)
    return stack.model_copy(update={"calibrate": kept}), base.replace(dict(values))


def _source_calibration(src: DieSource) -> tuple[GpuSpec, StackSpec, Calibration]:
    gpu = loader.load_gpu(src.gpu)
    stack = loader.load_stack(src.stack)
    cal = calibrations.load_calibration(
        str(calibrations.CALIBRATIONS_DIR / f"{src.gpu}.yaml"), gpu, stack)
    return gpu, stack, cal


@cache
def _shipped(src: DieSource) -> tuple[tuple[str, float], ...]:
    _, _, cal = _source_calibration(src)
    return tuple((p, float(cal.get(p))) for p in src.fields)  # type: ignore[arg-type]


@cache
def _without(src: DieSource, model: str) -> tuple[tuple[str, float], ...]:
    gpu, stack, cal = _source_calibration(src)
    data = read_steps(src.data_dir / src.gpu / "stacks" / src.stack / "steps.csv", src.stack)
    fitted = fit_stack(data.subset(data.model != model), gpu, stack, cal,
                       loader.load_model).calibration
    return tuple((p, float(fitted.get(p))) for p in src.fields)  # type: ignore[arg-type]


def fold_values(gpu: GpuSpec, stack: StackSpec, models: set[str], data_dir: Path
                ) -> Callable[[str], dict[str, float]] | None:
    """For ``evaluate_stack``'s ``held``: by held-out model, the die-level parameters
    its fit holds (``DieSource.without``), or None where the GPU fits them itself."""
    src = die_source(gpu, stack, models, data_dir)
    return None if src is None else src.without
