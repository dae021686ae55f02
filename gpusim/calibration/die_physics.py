"""An attention kernel family's work on the SMs, and the die's L2 reuse, fitted once per
die.

The H100 SXM and the H200 are one chip in one configuration (GH100, 132 SMs, the same
clocks and L2; ``GpuSpec.die``); only their HBM differs. A kernel family's arithmetic
and schedule on the SMs (``AttentionFamily.DIE``: cuDNN's masked SDPA's tensor
efficiency, its work per score, per wave and per launch) is then the same on both,
while its per-CTA stream bandwidth, which touches memory, is not. Steps alone do not
fix the SM's side: the H200's profiled masked kernels are tree verifies of batch 32 (one
regime), and fitted on them its launch went to 7 us and its work per score to 4.5x the
H100's, where the H100's profiles of three regimes (tree verifies, hf-transformers'
captured prefill, the serving harness's padded decode) put both near zero and 99.
Likewise the GEMMs' tensor efficiency and the share of the die's L2 a pointwise chain
reuses (``DIE_PHYSICS``): only the H100's profiles of long prompts pin them down.

So a GPU's die-level family fields come from the GPU of its die with the most profiled
attention kernels (more than its own; otherwise it fits them itself), as
``calibration.die`` does for a stack's GEMM arithmetic: the source's shipped
calibration for the shipped fit; for a held-out prediction, the source's own fit
without that model (or without that stack), so that nothing of a held-out model or
stack, on either GPU, enters its prediction. The source fits on its reference-stack
steps, profiles, GEMM sweep, probed clocks, attention kernels and joint stacks, as
``calibrate`` does (no kernel microbenchmarks: ``calibrate``'s default).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from gpusim.calibration.attention_points import read_attention_points
from gpusim.calibration.die import same_die_gpus
from gpusim.calibration.fit import fit
from gpusim.calibration.fit_inputs import FitInputs, read_fit_inputs
from gpusim.calibration.joint import without_model, without_stack
from gpusim.cost import Calibration
from gpusim.cost.attention import FAMILIES
from gpusim.io import calibrations, loader
from gpusim.specs import GpuSpec, StackSpec

# GPU physics of the die: the share of its L2 (the same 50 MB in two partitions on the
# H100 and H200) a pointwise chain reuses, and the GEMMs' tensor efficiency, which only
# long prompts' profiles (the H100's) tell apart from the pointwise and attention
# kernels beside them. Fitted on its steps alone, the H200 put the reuse at 0.04 against
# the H100 profiles' 0.27 and its GEMMs 2% slower, and priced torch-compile's prefill
# (few pointwise kernels) 6% high; held, its fitted L2 bandwidth (ratio times its HBM)
# comes out within 4% of the H100's, as one L2 should
DIE_PHYSICS = ("physics.l2_reuse_fraction", "physics.tensor_efficiency")


def die_fields(stack: StackSpec) -> tuple[str, ...]:
    """The die-level fields: ``DIE_PHYSICS`` and the fields (``attention.<family>.<field>``)
    of the attention families ``stack`` runs."""
    families = dict.fromkeys(stack.attention.values())
    return (*DIE_PHYSICS, *(f"attention.{name}.{f}" for name in families
                            for f in sorted(FAMILIES[name].DIE)))


@dataclass(frozen=True)
class PhysicsDieSource:
    """Where a GPU's die-level attention fields come from: another GPU of its die
    (``gpu``), fitted on its data under ``data_dir`` with ``stack``."""

    gpu: str
    stack: str
    fields: tuple[str, ...]
    data_dir: Path

    def shipped(self) -> dict[str, float]:
        """The values of the source's shipped calibration."""
        return dict(_shipped(self))

    def without_model(self, model: str) -> dict[str, float]:
        """The values of the source's fit without ``model``'s measurements (its shipped
        values where it never measured ``model``)."""
        return dict(_without(self, model, ""))

    def stacks(self) -> set[str]:
        """The stacks whose profiled attention kernels or steps the source fits on."""
        inp = _inputs(self)
        return {p.stack for p in inp.attention} | {s.name for _, s in inp.joint}

    def without_stack(self, name: str) -> dict[str, float]:
        """The values of the source's fit without stack ``name``'s steps and profiled
        attention kernels (its shipped values where none of them went into it)."""
        return dict(_without(self, "", name))


def physics_die_source(gpu: GpuSpec, stack: StackSpec, own_points: int, data_dir: Path
                       ) -> PhysicsDieSource | None:
    """The GPU of ``gpu``'s die with a shipped calibration whose data under
    ``data_dir`` holds the most profiled attention kernels, more than ``own_points``
    (``gpu``'s own), or None: ``gpu`` fits its die-level fields itself. Raises
    ConfigError for an unreadable file."""
    fields = die_fields(stack)
    if not fields:
        return None
    best: tuple[int, str] | None = None
    for other in same_die_gpus(gpu, data_dir):
        if not (data_dir / other / "steps.csv").is_file():
            continue
        n = len(read_attention_points(data_dir / other, loader.load_gpu(other),
                                      loader.load_model, loader.load_stack))
        if n > own_points and (best is None or n > best[0]):
            best = (n, other)
    return None if best is None else PhysicsDieSource(best[1], stack.name, fields, data_dir)


def _values(cal: Calibration, fields: tuple[str, ...]) -> tuple[tuple[str, float], ...]:
    return tuple((p, float(cal.get(p))) for p in fields)  # type: ignore[arg-type]


@cache
def _shipped(src: PhysicsDieSource) -> tuple[tuple[str, float], ...]:
    gpu, stack = loader.load_gpu(src.gpu), loader.load_stack(src.stack)
    cal = calibrations.load_calibration(
        str(calibrations.CALIBRATIONS_DIR / f"{src.gpu}.yaml"), gpu, stack)
    return _values(cal, src.fields)


@cache
def _inputs(src: PhysicsDieSource) -> FitInputs:
    return read_fit_inputs(loader.load_gpu(src.gpu), loader.load_stack(src.stack),
                           src.data_dir)


@cache
def _without(src: PhysicsDieSource, model: str, stack_name: str
             ) -> tuple[tuple[str, float], ...]:
    inp = _inputs(src)
    data, attention, joint = inp.data, inp.attention, inp.joint
    if model:
        if model not in set(map(str, data.model)):
            return _shipped(src)
        # ``fit`` keeps the profiled shapes of the models it fits only
        data, joint = data.subset(data.model != model), without_model(joint, model)
    if stack_name:
        if stack_name not in src.stacks():
            return _shipped(src)
        attention = [p for p in attention if p.stack != stack_name]
        joint = without_stack(joint, stack_name)
    res = fit(data, loader.load_gpu(src.gpu), loader.load_stack(src.stack),
              loader.load_model, note=f"die source {src.gpu}", profiles=inp.profiles,
              sweep=inp.sweep, clocks=inp.clocks, attention=attention, also=joint)
    return _values(res.calibration, src.fields)
