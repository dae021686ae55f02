"""The steady SM clock of whole steps under the power cap, against two activity measures.

    python validation/power_steady.py [--data-dir validation/data]

Reads the step power probe (``harness/step_power.py``: each step shape replayed back to
back for 2 s after 1.5 s idle; ``step_power.csv`` and nvidia-smi's
``step_power_samples.csv``, under ``<gpu>/power/``). For each shape it takes the
plateau of the samples (nvidia-smi's power is a moving average of about a second: the
plateau is the samples within 3% of the window's highest power) and reports the SM
clock there as a fraction of the maximum, with the power and the replay times' slowdown
(second half over the first three replays).

Against it, two measures of how hard a step drives the SMs, each from the shipped
calibration's kernel costs at full clock, each turned into a clock by the cost model's
power rule f = min(1, (cap / u)^(1/3)) with its one cap fitted here to the measured
clocks (least squares):

* ``compute share``: each kernel's ``compute_s`` over the step's time, what
  ``cost.power_clock`` uses today;
* ``tensor share``: each kernel's ``compute_s`` times its tensor efficiency
  (``cost.tensor_efficiency``): the time its matrix work, padded tiles included, keeps
  the tensor cores busy at peak.

The samples are matched to shapes by ``start_unix_s`` (the first replay's Unix time,
written by the probe since session 7); older files lack it and are matched by order:
the k-th stretch of at least ``MIN_BUSY_S`` above ``BUSY_W`` is the k-th shape.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar

from gpusim import loader
from gpusim.cost import POWER_EXPONENT, kernel_cost, power_clock, tensor_efficiency
from gpusim.ops import build_kernels
from gpusim.specs import Calibration, GpuSpec

BUSY_W = 140.0         # above the idle GPU's ~120 W: a shape's replays are running
MIN_BUSY_S = 1.5       # a shape's stretch lasts its 2 s of replays (and the ramp down)
PLATEAU_FRACTION = 0.97
SECOND_HALF_S = 1.0    # the probe replays each shape for 2 s (step_power.RUN_S)


@dataclass(frozen=True)
class Shape:
    model: str
    mode: str
    batch: int
    ctx: int
    q: int
    start_unix_s: float | None   # first replay (None in files before the column)
    end_s: float                 # last replay, s after the first
    slowdown: float              # second-half median replay over the first three

    @property
    def label(self) -> str:
        return f"{self.model} {self.mode} b={self.batch} ctx={self.ctx} q={self.q}"


@dataclass(frozen=True)
class Steady:
    clock_fraction: float
    power_w: float
    samples: int


def read_shapes(path: Path) -> list[Shape]:
    """The probe's shapes in the order they ran, with their replay windows."""
    by_key: dict[tuple[str, ...], list[dict[str, str]]] = {}
    with path.open(encoding="utf-8", newline="") as fh:
        for r in csv.DictReader(fh):
            key = (r["model"], r["mode"], r["batch"], r["ctx"], r["q"])
            by_key.setdefault(key, []).append(r)
    out = []
    for (model, mode, b, c, q), rows in by_key.items():
        t = [float(r["t_s"]) for r in rows]
        ms = [float(r["ms"]) for r in rows]
        late = [x for ti, x in zip(t, ms, strict=True) if ti > SECOND_HALF_S] or ms[-1:]
        start = rows[0].get("start_unix_s")
        out.append(Shape(model, mode, int(b), int(c), int(q),
                         float(start) if start else None, t[-1],
                         statistics.median(late) / statistics.median(ms[:3])))
    return out


def read_samples(path: Path) -> np.ndarray:
    """nvidia-smi samples as rows of (Unix time, SM clock MHz, power W)."""
    with path.open(encoding="utf-8", newline="") as fh:
        rows = [(float(r["time"]), float(r["clock_mhz"]), float(r["power_w"]))
                for r in csv.DictReader(fh, skipinitialspace=True)]
    return np.array(rows, dtype=np.float64).reshape(-1, 3)


def _plateau(window: np.ndarray, max_clock_mhz: float) -> Steady:
    top = window[window[:, 2] >= PLATEAU_FRACTION * window[:, 2].max()]
    return Steady(float(top[:, 1].mean()) / max_clock_mhz, float(top[:, 2].mean()), len(top))


def steady_states(shapes: Sequence[Shape], samples: np.ndarray, max_clock_mhz: float
                  ) -> list[Steady]:
    """Each shape's plateau. Raises ValueError when the samples can't be matched."""
    if all(s.start_unix_s is not None for s in shapes):
        out = []
        for s in shapes:
            assert s.start_unix_s is not None
            t = samples[:, 0]
            w = samples[(t >= s.start_unix_s) & (t <= s.start_unix_s + s.end_s)]
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


def shares(shape: Shape, gpu: GpuSpec, cal: Calibration) -> tuple[float, float, float]:
    """(compute share, tensor share, the shipped model's clock) of one step shape."""
    model = loader.load_model(shape.model)
    ks = build_kernels(model, loader.load_stack(loader.DEFAULT_STACK), shape.mode,
                       shape.batch, shape.ctx, shape.q)
    costs = [kernel_cost(k, gpu, cal) for k in ks]
    total = sum(float(c.seconds[0]) * k.repeat for k, c in zip(ks, costs, strict=True))
    compute = sum(float(c.compute_s[0]) * k.repeat for k, c in zip(ks, costs, strict=True))
    tensor = sum(float(c.compute_s[0]) * k.repeat * tensor_efficiency(k, cal)
                 for k, c in zip(ks, costs, strict=True))
    clock = power_clock(ks, costs, cal)
    return compute / total, tensor / total, 1.0 if clock is None else float(clock[0])


def capped_clock(cap: float, share: np.ndarray) -> np.ndarray:
    """The power rule: the clock at which ``share`` stays within ``cap``."""
    return np.minimum(1.0, np.power(cap / np.maximum(share, 1e-12), POWER_EXPONENT))


def fit_cap(share: np.ndarray, clock: np.ndarray) -> float:
    """The cap whose rule best reproduces the measured clocks (least squares)."""
    res = minimize_scalar(lambda c: float(np.sum((capped_clock(c, share) - clock) ** 2)),
                          bounds=(0.01, 1.0), method="bounded")
    return float(res.x)


def report(gpu_name: str, probe_dir: Path) -> list[str]:
    gpu = loader.load_gpu(gpu_name)
    cal = loader.load_calibration("auto", gpu)
    shapes = read_shapes(probe_dir / "step_power.csv")
    steady = steady_states(shapes, read_samples(probe_dir / "step_power_samples.csv"),
                           gpu.boost_clock_hz / 1e6)
    measured = np.array([s.clock_fraction for s in steady])
    comp, tens, shipped = (np.array(x) for x in zip(*(shares(s, gpu, cal) for s in shapes),
                                                   strict=True))
    cap_c, cap_t = fit_cap(comp, measured), fit_cap(tens, measured)
    by_c, by_t = capped_clock(cap_c, comp), capped_clock(cap_t, tens)

    def rms(x: np.ndarray) -> float:
        return float(np.sqrt(np.mean((x - measured) ** 2)))

    lines = [f"## {gpu_name} ({probe_dir})", "",
             f"clock rule fitted here: compute share cap {cap_c:.3f} (rms {rms(by_c):.3f}), "
             f"tensor share cap {cap_t:.3f} (rms {rms(by_t):.3f}); shipped calibration's "
             f"cap {cal.power_cap_compute_fraction:.3f} on the compute share (rms "
             f"{rms(shipped):.3f})", "",
             "| shape | clock | power_w | replay slowdown | compute share | clock (shipped) "
             "| clock (compute share) | tensor share | clock (tensor share) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for i, (s, st) in enumerate(zip(shapes, steady, strict=True)):
        lines.append(f"| {s.label} | {st.clock_fraction:.3f} | {st.power_w:.0f} | "
                     f"{s.slowdown - 1:+.1%} | {comp[i]:.2f} | {shipped[i]:.3f} | "
                     f"{by_c[i]:.3f} | {tens[i]:.2f} | {by_t[i]:.3f} |")
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=Path(__file__).parent / "data")
    args = ap.parse_args(argv)
    for samples in sorted(args.data_dir.glob("*/power/**/step_power_samples.csv")):
        gpu_name = samples.relative_to(args.data_dir).parts[0]
        print("\n".join(report(gpu_name, samples.parent)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
