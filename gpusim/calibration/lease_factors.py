"""Each lease's own speed, fitted beside the GPU physics so that the physics is the
average lease's.

Two leases of one GPU kind run the same step 1-3% apart, in every mode alike (the
H100's leases after the fitted one mostly ran its shapes' decode 1-3% faster and
their prefill up to 4% faster: validation/REPORT.md), so a lease's speed is one
factor on all its step times, not a physical parameter. The physics fit gives each
lease a factor exp(u_lease) on its predicted times, the logs summing to zero, so that
the physics prices the geometric mean of the leases it saw, each lease counted once
however many steps it measured (the factors solved in closed form for each trial
physics: ``best_log_factors``). The fitted lease (its steps, and the profiles,
microbenchmarks and probes measured with them) is lease 0.
"""

from __future__ import annotations

import numpy as np

from gpusim.calibration.joint import Joint
from gpusim.calibration.pooled_leases import lease_of

STACKS_CAMPAIGN = "stacks campaign"   # the lease of the other stacks' steps


def lease_ids(n_fitted: int, also: Joint) -> tuple[np.ndarray, list[str]]:
    """(each row's lease number, the leases' names) for the fitted steps (``n_fitted``
    rows, lease 0) followed by ``also``'s entries: a pooled lease's reference steps by
    that lease, another stack's steps by the lease of the stacks campaign."""
    names = ["fitted"]
    parts = [np.zeros(n_fitted, dtype=int)]
    for data, _ in also:
        name = lease_of(data) or STACKS_CAMPAIGN
        if name not in names:
            names.append(name)
        parts.append(np.full(len(data), names.index(name)))
    return np.concatenate(parts), names


def best_log_factors(err: np.ndarray, weight: np.ndarray, ids: np.ndarray, n: int
                     ) -> np.ndarray:
    """The leases' log factors u (``n`` of them, summing to zero) that minimise
    sum((weight * (err + u[ids]))**2), in closed form: each lease's weighted mean error
    taken out, then one shift shared in inverse proportion to each lease's weight so the
    logs sum to zero. A lease without weight gets 0 and no share of the sum. (Solved
    inside each residual evaluation, so the fit searches the physics alone: variable
    projection.)"""
    w2 = weight**2
    total = np.bincount(ids, weights=w2, minlength=n)
    mean = np.bincount(ids, weights=w2 * err, minlength=n)
    has = total > 0
    u = np.zeros(n)
    u[has] = -mean[has] / total[has]
    # the sum-to-zero constraint's multiplier, shared as 1/total per lease
    inv = np.where(has, 1.0 / np.where(has, total, 1.0), 0.0)
    u[has] -= inv[has] * u[has].sum() / inv[has].sum()
    return u
