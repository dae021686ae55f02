"""Each lease's own speed, fitted beside the GPU physics so that the physics is the
average lease's.

Two leases of one GPU kind run the same step 1-3% apart, in every mode alike (the
H100's later leases ran the fitted shapes' decode 1-3% faster and their prefill 2-4%
faster: validation/REPORT.md), so a lease's speed is one factor on all its step times,
not a physical parameter. The physics fit gives each lease a factor exp(u_lease) on
its predicted times, the logs summing to zero, so that the physics prices the geometric
mean of the leases it saw, each lease counted once however many steps it measured. The
fitted lease (its steps, and the profiles, microbenchmarks and probes measured with
them) is lease 0.
"""

from __future__ import annotations

import numpy as np

from gpusim.calibration.joint import Joint
from gpusim.calibration.pooled_leases import lease_of

LOG_FACTOR_BOUND = 0.10   # a lease within 10% of the average (the measured: 1-3%)
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


def log_factors(free: np.ndarray) -> np.ndarray:
    """Every lease's log factor from the free ones (leases 1..n-1): lease 0's is minus
    their sum, so the logs sum to zero."""
    return np.concatenate([[-float(np.sum(free))], free])
