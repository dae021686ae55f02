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

* ``compute share``: each kernel's ``compute_s`` over the step's time (what
  ``cost.power_clock`` used before session 7);
* ``tensor share``: each kernel's ``compute_s`` times its tensor efficiency
  (``cost.tensor_efficiency``): the time its matrix work, padded tiles included, keeps
  the tensor cores busy at peak.

Reading the probe: ``gpusim.calibration.steady_clocks``. The cost model's rule (``clock (shipped)``)
weighs the tensor share plus ``power_memory_weight`` times the share of the time HBM
streams (``cost.power_load``); ``gpusim calibrate`` fits its cap and that weight to
these clocks together with the steps.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar

from gpusim.calibration.steady_clocks import SteadyClocks, read_probe
from gpusim.cost import POWER_EXPONENT, Calibration, kernel_cost, tensor_share
from gpusim.io import calibrations, loader
from gpusim.kernels import build_kernels
from gpusim.platform import Platform
from gpusim.specs import GpuSpec
from gpusim.step import program_clock


def shares(clocks: SteadyClocks, i: int, gpu: GpuSpec, cal: Calibration
           ) -> tuple[float, float, float]:
    """(compute share, tensor share, the calibration's clock) of probed shape ``i``."""
    st = clocks.steps
    stack = loader.load_stack(loader.REFERENCE_STACK)
    ks = build_kernels(loader.load_model(str(st.model[i])), stack, str(st.mode[i]),
                       st.batch[i], st.ctx[i], st.q[i])
    costs = [kernel_cost(k, gpu, cal) for k in ks]
    total = sum(float(c.seconds[0]) * k.repeat for k, c in zip(ks, costs, strict=True))
    compute = sum(float(c.compute_s[0]) * k.repeat for k, c in zip(ks, costs, strict=True))
    return (compute / total, float(tensor_share(ks, costs, cal)[0]),
            float(program_clock([ks], Platform(gpu, stack, cal))[0]))


def capped_clock(cap: float, share: np.ndarray) -> np.ndarray:
    """The power rule: the clock at which ``share`` stays within ``cap``."""
    return np.minimum(1.0, np.power(cap / np.maximum(share, 1e-12), POWER_EXPONENT))


def fit_cap(share: np.ndarray, clock: np.ndarray) -> float:
    """The cap whose rule best reproduces the measured clocks (least squares)."""
    res = minimize_scalar(lambda c: float(np.sum((capped_clock(c, share) - clock) ** 2)),
                          bounds=(0.01, 1.0), method="bounded")
    return float(res.x)


def report(gpu_name: str, samples_csv: Path) -> list[str]:
    gpu = loader.load_gpu(gpu_name)
    cal = calibrations.load_calibration("auto", gpu, loader.load_stack(loader.REFERENCE_STACK))
    clocks = read_probe(samples_csv, gpu.boost_clock_hz / 1e6)
    measured = clocks.clock_fraction
    comp, tens, shipped = (np.array(x) for x in zip(
        *(shares(clocks, i, gpu, cal) for i in range(len(clocks))), strict=True))
    cap_c, cap_t = fit_cap(comp, measured), fit_cap(tens, measured)
    by_c, by_t = capped_clock(cap_c, comp), capped_clock(cap_t, tens)

    def rms(x: np.ndarray) -> float:
        return float(np.sqrt(np.mean((x - measured) ** 2)))

    lines = [f"## {gpu_name} ({samples_csv.parent})", "",
             f"clock rule fitted here: compute share cap {cap_c:.3f} (rms {rms(by_c):.3f}), "
             f"tensor share cap {cap_t:.3f} (rms {rms(by_t):.3f}); shipped calibration "
             f"(cap {cal.physics.power_cap_tensor_share:.3f} on the tensor share + "
             f"{cal.physics.power_memory_weight:.3f} x the HBM share): rms {rms(shipped):.3f}",
             "", "| shape | clock | power_w | replay slowdown | compute share "
             "| clock (compute share) | tensor share | clock (tensor share) | clock (shipped) |",
             "|---|---|---|---|---|---|---|---|---|"]
    st = clocks.steps
    for i in range(len(clocks)):
        label = (f"{st.model[i]} {st.mode[i]} b={st.batch[i]:.0f} ctx={st.ctx[i]:.0f} "
                 f"q={st.q[i]:.0f}")
        lines.append(f"| {label} | {measured[i]:.3f} | {clocks.power_w[i]:.0f} | "
                     f"{clocks.slowdown[i] - 1:+.1%} | {comp[i]:.2f} | {by_c[i]:.3f} | "
                     f"{tens[i]:.2f} | {by_t[i]:.3f} | {shipped[i]:.3f} |")
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=Path(__file__).parent / "data")
    args = ap.parse_args(argv)
    for samples in sorted(args.data_dir.glob("*/power/**/step_power_samples.csv")):
        gpu_name = samples.relative_to(args.data_dir).parts[0]
        print("\n".join(report(gpu_name, samples)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
