"""The power cap: the SM clock at which kernels run back to back stay within it.

A step whose matrix work keeps the tensor cores busy for much of its time draws more
than the GPU's power cap allows when run back to back, and the power manager lowers
the SM clock: its arithmetic slows (``cost.kernel.stretch``), its HBM streaming does
not. Pure and vectorised over step shapes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gpusim.cost.kernel import tensor_efficiency
from gpusim.cost.params import Calibration
from gpusim.cost.record import Cost
from gpusim.kernels.records import Kernel

POWER_EXPONENT = 1.0 / 3.0   # clock under a power cap ~ (cap / load)^(1/3): P ~ f V^2, V ~ f


def tensor_share(kernels: Sequence[Kernel], costs: Sequence[Cost], cal: Calibration
                 ) -> np.ndarray:
    """The share of the kernels' time (each run ``repeat`` times, costs at full clock)
    that their matrix work keeps the tensor cores busy at peak: each kernel's
    ``compute_s`` times its ``tensor_efficiency``, padded tiles included (the tensor
    cores burn power on the padding too)."""
    return _shares(kernels, costs, cal)[0]


def _shares(kernels: Sequence[Kernel], costs: Sequence[Cost], cal: Calibration
            ) -> tuple[np.ndarray, np.ndarray]:
    """(tensor share, HBM share) of the kernels' time at full clock."""
    n = len(costs[0].seconds) if costs else 1
    tensor, memory, total = np.zeros(n), np.zeros(n), np.zeros(n)
    for k, c in zip(kernels, costs, strict=True):
        eff = tensor_efficiency(k, cal)
        if eff > 0.0:
            tensor = tensor + c.compute_s * (k.repeat * eff)
        memory = memory + c.memory_s * k.repeat
        total = total + c.seconds * k.repeat
    with np.errstate(divide="ignore", invalid="ignore"):
        return (np.where(total > 0, tensor / total, 0.0),
                np.where(total > 0, memory / total, 0.0))


def power_load(kernels: Sequence[Kernel], costs: Sequence[Cost], cal: Calibration
               ) -> np.ndarray:
    """What the power cap weighs: the tensor share plus ``power_memory_weight`` times
    the share of the time HBM streams (its traffic draws power too)."""
    tensor, memory = _shares(kernels, costs, cal)
    return tensor + cal.physics.power_memory_weight * memory


def power_clock(kernels: Sequence[Kernel], costs: Sequence[Cost], cal: Calibration
                ) -> np.ndarray | None:
    """The SM clock, as a fraction of full, at which the kernels run back to back stay
    within the GPU's power cap; None where every shape runs at full clock.

    The SMs' power follows their matrix work: kernels keeping the tensor cores busy
    (at peak) for a share u of their time (``tensor_share``, at full clock) draw more
    than the cap allows once u passes ``power_cap_tensor_share`` (u_cap), and the power
    manager lowers the clock. Dynamic power goes as f V^2 with the voltage following f,
    so at the cap f = (u_cap / u)^(1/3). The manager averages power over far longer
    than a step (nvidia-smi: a second), so the kernels are whatever runs back to back:
    one step, or a speculative loop's draft steps and verify pass together. Measured on
    H100 and H200 (700 W): one u_cap puts twelve steps' steady clocks within 2.5%
    (``validation/power_steady.py``); a 4k-token prefill settles at 0.83-0.85 of the
    1980 MHz clock, batch-64 verify passes at 0.89-0.99, decode at full clock.
    """
    if cal.physics.power_cap_tensor_share >= 1.0:
        return None
    u = power_load(kernels, costs, cal)
    with np.errstate(divide="ignore"):
        clock = np.minimum(1.0, np.power(cal.physics.power_cap_tensor_share / u, POWER_EXPONENT))
    return clock if bool((clock < 1.0).any()) else None
