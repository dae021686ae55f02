"""Calibration files -> the Calibration a prediction uses, for one GPU and stack.

A file (``validation/calibrations/<gpu>.yaml``) holds one GPU's physics, its attention
families and the host costs of each stack measured on it (``cost.params``). It is
looked up by GPU; a file for another GPU, or one without host costs for the stack (nor
for the stack its file names in ``host_costs_from``), is refused with one line, never
reused silently. Raises ConfigError for every bad input.
"""

from __future__ import annotations

from pathlib import Path

from gpusim.cost import Calibration, CalibrationSet
from gpusim.errors import ConfigError, bad
from gpusim.io.loader import ROOT, load_gpu
from gpusim.io.yamlfile import load_yaml, validate
from gpusim.specs import GpuSpec, StackSpec

CALIBRATIONS_DIR = ROOT / "validation" / "calibrations"


def calibration_set_from_yaml(path: Path) -> CalibrationSet:
    """Load one calibration file. Raises ConfigError."""
    data, lines = load_yaml(path)
    return validate(CalibrationSet, data, str(path), lines)


def _for(cset: CalibrationSet, stack: StackSpec, source: str) -> Calibration:
    try:
        return cset.for_stack(stack)
    except ValueError as exc:
        raise bad(source, str(exc).split(": ", 1)[1], field="stacks") from None


def _transfer_source(gpu: GpuSpec) -> Path | None:
    """The shipped calibration to borrow for an unmeasured GPU: one of the same
    architecture if any, else of the same vendor, else None (sorted, so stable)."""
    shipped = sorted(CALIBRATIONS_DIR.glob("*.yaml")) if CALIBRATIONS_DIR.is_dir() else []
    candidates = []
    for path in shipped:
        try:
            other = load_gpu(path.stem)
        except ConfigError:
            continue
        candidates.append((other.architecture != gpu.architecture,
                           other.vendor != gpu.vendor, path.stem, path))
    candidates = [c for c in candidates if not c[1]]  # never across vendors
    return min(candidates)[3] if candidates else None


def load_calibration(which: str, gpu: GpuSpec, stack: StackSpec) -> Calibration:
    """The calibration for ``gpu`` running ``stack``.

    ``auto``: the shipped file for ``gpu``; for a GPU nobody measured, a measured GPU's
    of the same architecture (else vendor), carried over (``Calibration.transferred``;
    validation/REPORT.md states the cross-GPU error); else the datasheet. ``none``: the
    datasheet alone. Otherwise a path to a calibration file, which must be for ``gpu``.
    Raises ConfigError (a file for another GPU, no host costs for the stack, a bad file).
    """
    if which == "none":
        return Calibration(gpu=gpu.name, stack=stack.name)
    if which == "auto":
        shipped = CALIBRATIONS_DIR / f"{gpu.name}.yaml"
        if shipped.is_file():
            return _for(calibration_set_from_yaml(shipped), stack, str(shipped))
        source = _transfer_source(gpu)
        if source is None:
            return Calibration(gpu=gpu.name, stack=stack.name)
        cal = _for(calibration_set_from_yaml(source), stack, str(source))
        same_arch = load_gpu(source.stem).architecture == gpu.architecture
        return cal.transferred(gpu.name, same_arch)
    path = Path(which)
    if not path.is_file():
        raise bad("--calibration", "expected auto, none or an existing file", value=which)
    data, lines = load_yaml(path)
    cset = validate(CalibrationSet, data, str(path), lines)
    if cset.gpu != gpu.name:
        raise bad(str(path), f"this calibration is for {cset.gpu}, not {gpu.name}: give "
                  f"{gpu.name}'s calibration, auto, or none", field="gpu",
                  line=lines.get(("gpu",)), value=cset.gpu)
    return _for(cset, stack, str(path))
