"""Speculative loop overhead files (``validation/calibrations/speculative/<gpu>.yaml``,
written by ``gpusim spec-validate --write-overhead``) -> SpecOverhead."""

from __future__ import annotations

from pathlib import Path

from gpusim.errors import bad
from gpusim.io import yamlfile
from gpusim.io.calibrations import CALIBRATIONS_DIR
from gpusim.specs import GpuSpec
from gpusim.speculative.overhead import SpecOverhead

SPEC_CALIBRATIONS_DIR = CALIBRATIONS_DIR / "speculative"


def load_overhead(which: str, gpu: GpuSpec) -> SpecOverhead:
    """``auto``: the fitted file for ``gpu`` if there is one, else the prior; ``none``:
    the prior; otherwise a YAML path. Raises ConfigError."""
    if which == "none":
        return SpecOverhead(gpu=gpu.name)
    if which == "auto":
        path = SPEC_CALIBRATIONS_DIR / f"{gpu.name}.yaml"
        return from_yaml(path) if path.is_file() else SpecOverhead(gpu=gpu.name)
    path = Path(which)
    if not path.is_file():
        raise bad("--overhead", "expected auto, none or an existing YAML file", value=which)
    return from_yaml(path)


def from_yaml(path: Path) -> SpecOverhead:
    """Read one overhead YAML. Raises ConfigError with file:line."""
    data, lines = yamlfile.load_yaml(path)
    return yamlfile.validate(SpecOverhead, data, str(path), lines)


def to_yaml(ov: SpecOverhead) -> str:
    """YAML text of ``ov`` (round-trips through ``from_yaml``)."""
    import yaml

    return yaml.safe_dump(ov.model_dump(), sort_keys=False)
