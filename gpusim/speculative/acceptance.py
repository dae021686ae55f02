"""Acceptance models: how many draft tokens the target accepts per iteration.

A chain of k draft tokens is checked left to right; the first rejection ends the
iteration and the target's own token at that position (or the bonus token after k
accepted) is kept, so an iteration yields ``accepted + 1`` tokens, 1 .. k+1.

* ``IidAcceptance(a)``: each draft token is accepted with probability ``a`` (given the
  previous ones were): E[tokens] = (1 - a^(k+1)) / (1 - a), and k+1 at a = 1.
* ``PositionalAcceptance(rates)``: token i (1-based) with probability ``rates[i-1]``;
  positions past the list reuse its last rate.
* ``EmpiricalAcceptance(counts)``: a measured histogram of accepted lengths at some
  k_max; at k <= k_max a run of j accepted becomes min(j, k) (acceptance is a prefix).
* ``RankedAcceptance(p)`` (token trees, Sequoia's positional model): the j-th ranked
  guess under a node is the accepted one with probability p_j (sum p_j <= 1); on a
  chain only p_1 matters.

Per-request sampling uses a caller-supplied ``numpy.random.Generator``; nothing here
touches global random state. Everything raises ValueError for bad arguments (the
message names the value). Reading them from the command line and from histogram
files: ``acceptance_input``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

MAX_K = 64  # longest chain any model here accepts


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= MAX_K:
        raise ValueError(f"k={k!r} must be an integer in 0..{MAX_K}")
    return int(k)


def _check_rate(name: str, value: float) -> float:
    v = float(value)
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise ValueError(f"{name}={value!r} must be a probability in [0, 1]")
    return v


class AcceptanceModel(Protocol):
    """What the iteration model needs from an acceptance model."""

    label: str

    def accepted_pmf(self, k: int) -> np.ndarray:
        """P(accepted = j) for j = 0..k (length k+1, sums to 1)."""
        ...

    def expected_tokens(self, k: int) -> float:
        """E[tokens per iteration] = 1 + E[accepted] with k draft tokens."""
        ...

    def sample_tokens(self, k: int, size: int | tuple[int, ...],
                      rng: np.random.Generator) -> np.ndarray:
        """Tokens per iteration (1..k+1) for ``size`` independent request-iterations."""
        ...

    def max_k(self) -> int:
        """Largest k this model describes."""
        ...


def _tokens_from_pmf(pmf: np.ndarray) -> float:
    return float(1.0 + np.dot(np.arange(len(pmf)), pmf))


def _pmf_from_survival(survival: np.ndarray) -> np.ndarray:
    """survival[j] = P(accepted >= j), j = 0..k (survival[0] = 1) -> P(accepted = j)."""
    nxt = np.append(survival[1:], 0.0)
    return np.clip(survival - nxt, 0.0, 1.0)


def _sample_chain(rates: np.ndarray, size: int | tuple[int, ...],
                  rng: np.random.Generator) -> np.ndarray:
    """Bernoulli trials left to right; tokens = leading successes + 1."""
    shape = (size,) if isinstance(size, (int, np.integer)) else tuple(size)
    k = len(rates)
    if k == 0:
        return np.ones(shape, dtype=np.int64)
    ok = rng.random((*shape, k)) < rates          # [..., k]
    leading = np.cumprod(ok, axis=-1).sum(axis=-1)
    return leading.astype(np.int64) + 1


@dataclass(frozen=True)
class IidAcceptance:
    """Each draft token accepted with probability ``rate`` (independently)."""

    rate: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "rate", _check_rate("acceptance", self.rate))

    @property
    def label(self) -> str:
        return f"iid a={self.rate:g}"

    def max_k(self) -> int:
        return MAX_K

    def expected_tokens(self, k: int) -> float:
        k = _check_k(k)
        a = self.rate
        if a == 1.0:
            return float(k + 1)
        return (1.0 - a ** (k + 1)) / (1.0 - a)

    def accepted_pmf(self, k: int) -> np.ndarray:
        k = _check_k(k)
        return _pmf_from_survival(self.rate ** np.arange(k + 1, dtype=np.float64))

    def sample_tokens(self, k: int, size: int | tuple[int, ...],
                      rng: np.random.Generator) -> np.ndarray:
        k = _check_k(k)
        return _sample_chain(np.full(k, self.rate), size, rng)


@dataclass(frozen=True)
class PositionalAcceptance:
    """Draft token i accepted with probability ``rates[i-1]`` given 1..i-1 were;
    positions beyond the list reuse the last rate."""

    rates: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.rates:
            raise ValueError("rates=() must list at least one probability")
        object.__setattr__(self, "rates", tuple(
            _check_rate(f"rates[{i}]", r) for i, r in enumerate(self.rates)))

    @property
    def label(self) -> str:
        return "positional a=" + ",".join(f"{r:g}" for r in self.rates)

    def max_k(self) -> int:
        return MAX_K

    def rates_for(self, k: int) -> np.ndarray:
        """The k per-position rates (the last one repeated as needed)."""
        k = _check_k(k)
        r = list(self.rates[:k]) + [self.rates[-1]] * max(0, k - len(self.rates))
        return np.asarray(r, dtype=np.float64)

    def expected_tokens(self, k: int) -> float:
        return float(1.0 + np.cumprod(self.rates_for(k)).sum())

    def accepted_pmf(self, k: int) -> np.ndarray:
        surv = np.concatenate(([1.0], np.cumprod(self.rates_for(k))))
        return _pmf_from_survival(surv)

    def sample_tokens(self, k: int, size: int | tuple[int, ...],
                      rng: np.random.Generator) -> np.ndarray:
        return _sample_chain(self.rates_for(k), size, rng)


@dataclass(frozen=True)
class EmpiricalAcceptance:
    """A measured histogram: ``counts[j]`` iterations accepted j draft tokens, j = 0..k_max."""

    counts: tuple[float, ...]
    source: str = "histogram"

    def __post_init__(self) -> None:
        c = np.asarray(self.counts, dtype=np.float64)
        if c.ndim != 1 or len(c) < 2:
            raise ValueError(f"counts={self.counts!r} must cover accepted = 0..k_max, k_max >= 1")
        if not np.all(np.isfinite(c)) or (c < 0).any() or c.sum() <= 0:
            raise ValueError(f"counts={self.counts!r} must be finite, >= 0, not all zero")
        object.__setattr__(self, "counts", tuple(float(x) for x in c))

    @property
    def label(self) -> str:
        return f"empirical {self.source} (k<={self.max_k()})"

    def max_k(self) -> int:
        return len(self.counts) - 1

    def accepted_pmf(self, k: int) -> np.ndarray:
        k = _check_k(k)
        if k > self.max_k():
            raise ValueError(f"k={k} is beyond the histogram's k_max={self.max_k()} "
                             f"({self.source}): longer chains were never observed")
        p = np.asarray(self.counts) / sum(self.counts)
        out = p[: k + 1].copy()
        out[k] += p[k + 1:].sum()   # a longer accepted run is cut at k
        return out

    def expected_tokens(self, k: int) -> float:
        return _tokens_from_pmf(self.accepted_pmf(k))

    def sample_tokens(self, k: int, size: int | tuple[int, ...],
                      rng: np.random.Generator) -> np.ndarray:
        pmf = self.accepted_pmf(k)
        return rng.choice(len(pmf), size=size, p=pmf).astype(np.int64) + 1


@dataclass(frozen=True)
class RankedAcceptance:
    """Sequoia's model for token trees: the j-th ranked child of an accepted node is the
    accepted one with probability ``p[j-1]``; at most one child is accepted."""

    p: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.p:
            raise ValueError("p=() must list at least one probability")
        vals = tuple(_check_rate(f"p[{i}]", x) for i, x in enumerate(self.p))
        if sum(vals) > 1.0 + 1e-9:
            raise ValueError(f"p={self.p!r}: ranked acceptance probabilities must sum "
                             f"to <= 1 (got {sum(vals):g}); at most one child is accepted")
        object.__setattr__(self, "p", vals)

    @staticmethod
    def geometric(rate: float, width: int) -> RankedAcceptance:
        """p_j = a (1 - a)^(j-1): the j-th guess right after j-1 wrong ones."""
        a = _check_rate("acceptance", rate)
        if width < 1:
            raise ValueError(f"width={width} must be >= 1")
        return RankedAcceptance(tuple(a * (1.0 - a) ** j for j in range(width)))

    @property
    def label(self) -> str:
        return "ranked p=" + ",".join(f"{x:g}" for x in self.p)

    def rank(self, j: int) -> float:
        """Probability of the j-th ranked child (1-based); 0 beyond the list."""
        return self.p[j - 1] if 1 <= j <= len(self.p) else 0.0

    # as a chain, only the top guess exists at each position
    def max_k(self) -> int:
        return MAX_K

    def expected_tokens(self, k: int) -> float:
        return IidAcceptance(self.p[0]).expected_tokens(k)

    def accepted_pmf(self, k: int) -> np.ndarray:
        return IidAcceptance(self.p[0]).accepted_pmf(k)

    def sample_tokens(self, k: int, size: int | tuple[int, ...],
                      rng: np.random.Generator) -> np.ndarray:
        return IidAcceptance(self.p[0]).sample_tokens(k, size, rng)


Acceptance = IidAcceptance | PositionalAcceptance | EmpiricalAcceptance | RankedAcceptance


# ----------------------------------------------------------------------------------
# Monte-Carlo check
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MonteCarlo:
    """Sampled tokens per iteration: mean, standard error, and the closed form."""

    samples: int
    mean: float
    stderr: float
    expected: float

    @property
    def z(self) -> float:
        """(mean - expected) / stderr; 0 when both agree exactly (no spread)."""
        if self.stderr == 0.0:
            return 0.0 if abs(self.mean - self.expected) < 1e-12 else math.inf
        return (self.mean - self.expected) / self.stderr

    def agrees(self, z_max: float = 4.0) -> bool:
        """The closed form lies within ``z_max`` standard errors of the sampled mean."""
        return abs(self.z) <= z_max


def monte_carlo(model: Acceptance, k: int, batch: int, iterations: int,
                rng: np.random.Generator) -> MonteCarlo:
    """Sample ``iterations`` iterations of ``batch`` requests (one draw per request and
    iteration) and compare the mean tokens per iteration with ``expected_tokens``.

    Raises ValueError for batch or iterations < 1.
    """
    if batch < 1 or iterations < 1:
        raise ValueError(f"batch={batch} and iterations={iterations} must be >= 1")
    t = model.sample_tokens(k, (iterations, batch), rng).astype(np.float64)
    n = t.size
    sd = float(t.std(ddof=1)) if n > 1 else 0.0
    return MonteCarlo(samples=n, mean=float(t.mean()), stderr=sd / math.sqrt(n),
                      expected=model.expected_tokens(k))
