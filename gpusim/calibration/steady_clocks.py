"""The step power probe (validation/data/<gpu>/power/) -> each probed step's steady SM clock.

``harness/step_power.py`` replays each step shape back to back for 2 s after 1.5 s idle
and times every replay (``step_power.csv``) while nvidia-smi samples the SM clock and
power (``step_power_samples.csv``). nvidia-smi's power is a moving average of about a
second, so a shape's steady state is the plateau of its samples: those within 3% of
its highest power. The clock there, as a fraction of the GPU's maximum, is what the
power cap lets that step run at (``cost.power_clock``, fitted to these clocks).

Samples are matched to shapes by ``start_unix_s`` (each shape's first replay, written
by the probe since session 7); older files are matched by order: the k-th stretch of
at least ``MIN_BUSY_S`` above ``BUSY_W`` is the k-th shape.
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpusim.calibration.measurements import StepData
from gpusim.errors import bad

BUSY_W = 140.0          # above the idle GPU's ~120 W: a shape's replays are running
MIN_BUSY_S = 1.5        # a shape's stretch lasts its 2 s of replays (and the ramp down)
PLATEAU_FRACTION = 0.97
SECOND_HALF_S = 1.0     # the probe replays each shape for 2 s (step_power.RUN_S)
SAMPLES_NAME = "step_power_samples.csv"


@dataclass(frozen=True)
class ProbedShape:
    """One probed step shape and its replays."""

    model: str
    mode: str
    batch: int
    ctx: int
    q: int
    start_unix_s: float | None   # first replay (None in files before the column)
    end_s: float                 # last replay, s after the first
    sustained_s: float           # median replay of the second half
    slowdown: float              # that over the median of the first three replays

    @property
    def label(self) -> str:
        return f"{self.model} {self.mode} b={self.batch} ctx={self.ctx} q={self.q}"


@dataclass(frozen=True)
class Plateau:
    """A shape's steady state: mean SM clock (fraction of max) and power there."""

    clock_fraction: float
    power_w: float
    samples: int


@dataclass(frozen=True)
class SteadyClocks:
    """Probed steps (``steps``: graph launches, measured = sustained replay time) with
    their steady clock fraction, power and replay slowdown, as parallel arrays."""

    steps: StepData
    clock_fraction: np.ndarray
    power_w: np.ndarray
    slowdown: np.ndarray

    def __len__(self) -> int:
        return len(self.clock_fraction)

    def subset(self, mask: np.ndarray) -> SteadyClocks:
        """Rows where ``mask`` is true."""
        return SteadyClocks(self.steps.subset(mask), self.clock_fraction[mask],
                            self.power_w[mask], self.slowdown[mask])


def read_shapes(path: Path) -> list[ProbedShape]:
    """The probe's shapes in the order they ran. Raises ConfigError."""
    source = str(path)
    by_key: dict[tuple[str, str, int, int, int], list[tuple[float, float, str]]] = {}
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            for line, r in enumerate(csv.DictReader(fh), start=2):
                try:
                    key = (r["model"], r["mode"], int(r["batch"]), int(r["ctx"]), int(r["q"]))
                    by_key.setdefault(key, []).append(
                        (float(r["t_s"]), float(r["ms"]), r.get("start_unix_s") or ""))
                except (KeyError, ValueError, TypeError) as exc:
                    raise bad(source, f"malformed row: {exc}", line=line) from None
    except OSError as exc:
        raise bad(source, f"cannot read file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise bad(source, "file is not UTF-8 text") from None
    out = []
    for (model, mode, b, c, q), rows in by_key.items():
        t = [r[0] for r in rows]
        ms = [r[1] for r in rows]
        late = [x for ti, x in zip(t, ms, strict=True) if ti > SECOND_HALF_S] or ms[-1:]
        sustained = statistics.median(late)
        out.append(ProbedShape(model, mode, b, c, q, float(rows[0][2]) if rows[0][2] else None,
                               t[-1], sustained * 1e-3, sustained / statistics.median(ms[:3])))
    return out


def read_samples(path: Path) -> np.ndarray:
    """nvidia-smi samples as rows of (Unix time, SM clock MHz, power W). Raises
    ConfigError."""
    source = str(path)
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            rows = []
            for line, r in enumerate(csv.DictReader(fh, skipinitialspace=True), start=2):
                try:
                    rows.append((float(r["time"]), float(r["clock_mhz"]), float(r["power_w"])))
                except (KeyError, ValueError, TypeError) as exc:
                    raise bad(source, f"malformed row: {exc}", line=line) from None
    except OSError as exc:
        raise bad(source, f"cannot read file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise bad(source, "file is not UTF-8 text") from None
    return np.array(rows, dtype=np.float64).reshape(-1, 3)


def _plateau(window: np.ndarray, max_clock_mhz: float) -> Plateau:
    top = window[window[:, 2] >= PLATEAU_FRACTION * window[:, 2].max()]
    return Plateau(float(top[:, 1].mean()) / max_clock_mhz, float(top[:, 2].mean()), len(top))


def plateaus(shapes: list[ProbedShape], samples: np.ndarray, max_clock_mhz: float
             ) -> list[Plateau]:
    """Each shape's plateau. Raises ValueError when the samples can't be matched."""
    starts = [s.start_unix_s for s in shapes]
    if all(t is not None for t in starts):
        out = []
        for s, t0 in zip(shapes, starts, strict=True):
            assert t0 is not None
            w = samples[(samples[:, 0] >= t0) & (samples[:, 0] <= t0 + s.end_s)]
            if len(w) == 0:
                raise ValueError(f"{s.label}: no samples in its replay window")
            out.append(_plateau(w, max_clock_mhz))
        return out
    busy = samples[:, 2] > BUSY_W
    edges = np.flatnonzero(np.diff(np.r_[0, busy.astype(np.int8), 0]))
    stretches = [samples[a:b] for a, b in zip(edges[::2], edges[1::2], strict=True)
                 if samples[b - 1, 0] - samples[a, 0] >= MIN_BUSY_S]
    if len(stretches) != len(shapes):
        raise ValueError(f"{len(stretches)} busy stretches of >= {MIN_BUSY_S} s for "
                         f"{len(shapes)} shapes: cannot match them by order")
    return [_plateau(w, max_clock_mhz) for w in stretches]


def read_probe(samples_csv: Path, max_clock_mhz: float) -> SteadyClocks:
    """The probe in ``samples_csv``'s folder (with ``step_power.csv`` beside it) as
    steady clocks. Raises ConfigError for a malformed or unmatched file."""
    shapes = read_shapes(samples_csv.parent / "step_power.csv")
    try:
        plats = plateaus(shapes, read_samples(samples_csv), max_clock_mhz)
    except ValueError as exc:
        raise bad(str(samples_csv), str(exc)) from None
    n = len(shapes)
    steps = StepData(
        model=np.array([s.model for s in shapes]), mode=np.array([s.mode for s in shapes]),
        batch=np.array([float(s.batch) for s in shapes]),
        ctx=np.array([float(s.ctx) for s in shapes]), q=np.array([float(s.q) for s in shapes]),
        launch=np.array(["graph"] * n), measured_s=np.array([s.sustained_s for s in shapes]),
        source=str(samples_csv.parent))
    return SteadyClocks(steps, np.array([p.clock_fraction for p in plats]),
                        np.array([p.power_w for p in plats]),
                        np.array([s.slowdown for s in shapes]))


def find_probe(gpu_dir: Path) -> Path | None:
    """The step power probe's samples file under ``<gpu_dir>/power/`` (the newest run
    when there are several), or None."""
    found = sorted((gpu_dir / "power").glob(f"**/{SAMPLES_NAME}"))
    return found[-1] if found else None


def read_probe_beside(steps_csv: Path, max_clock_mhz: float) -> SteadyClocks | None:
    """The steady clocks of the probe in the ``power/`` folder beside a GPU's steps.csv,
    or None. Raises ConfigError like ``read_probe``."""
    path = find_probe(steps_csv.parent)
    return None if path is None else read_probe(path, max_clock_mhz)
