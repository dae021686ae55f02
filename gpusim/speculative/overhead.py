"""The per-iteration host round trip of a speculative loop, and where it comes from.

After the verify pass the host must learn how many draft tokens each sequence
accepted before it can launch the next iteration: a stream synchronisation, a small
device-to-host copy and the host's own bookkeeping (accept/reject, KV pointer moves,
stop checks). Plain decoding pays the same round trip once per token. It is one
number per GPU (host), fitted from measured loops (``gpusim spec-validate``) and kept
in ``validation/calibrations/speculative/<gpu>.yaml``; without one, a prior is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from gpusim import loader
from gpusim.errors import bad
from gpusim.specs import GpuSpec

SPEC_CALIBRATIONS_DIR = loader.CALIBRATIONS_DIR / "speculative"
PRIOR_ROUND_TRIP_S = 50e-6   # sync + 4..1 KB D2H copy + Python bookkeeping (a prior)


class SpecOverhead(BaseModel):
    """Host-side cost of one iteration of a speculative (or plain) decoding loop."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpu: str | None = None
    fitted_on: str = "prior"
    host_round_trip_s: Annotated[float, Field(ge=0, le=0.1, allow_inf_nan=False)] = (
        PRIOR_ROUND_TRIP_S)
    notes: str = ""


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
    data, lines = loader.load_yaml(path)
    return loader.validate(SpecOverhead, data, str(path), lines)


def to_yaml(ov: SpecOverhead) -> str:
    """YAML text of ``ov`` (round-trips through ``from_yaml``)."""
    import yaml

    return yaml.safe_dump(ov.model_dump(), sort_keys=False)
