"""GEMMs: tiles quantised into waves over the SMs, split-K, and cuBLAS's slow picks.

The token side is split into equal tiles padded to the MMA's 8 rows, output tiles are
quantised into waves over the SMs with the tile shape that wastes least, split-K when
tiles can't fill the GPU; the few shapes where cuBLAS picks a measured slow kernel pay
their slowdown (``gpusim.calibration.gemm_picks`` finds them). Pure and vectorised.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from gpusim.cost.params import GpuPhysics, SlowPick
from gpusim.specs import GpuSpec

# the tile shapes a GEMM chooses from, in units of gemm_tile_m (token rows, besides
# one tile of all the rows) and gemm_tile_n (output columns): cuBLAS's Hopper kernels
# run tiles 64 to 512 wide in steps of 16 or 32 (96, 112, 168, 176, 224 profiled)
TILE_M_FACTORS = (0.5, 1.0, 1.5, 2.0)
TILE_N_FACTORS = (1.0, 0.5, 0.75, 1.25, 1.5, 1.75, 2.0)
MMA_ROWS = 8.0               # smallest row tile of a tensor-core MMA (m8n8k16 family)
CACHED_SHAPES_MAX = 1024     # GEMM schedules of at most this many shapes are memoised
DEDUPE_MIN_SHAPES = 64      # below this, sorting out repeated m costs more than it saves
SPLIT_K_MIN_K = 256          # cuBLAS-like: a split-K slice keeps at least this much K


def gemm_schedule(m: np.ndarray, n: int, k: int, gpu: GpuSpec, physics: GpuPhysics
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ctas, waves, flops per CTA) of a tiled GEMM, split-K where tiles can't fill
    the GPU.

    Token tiles (rows of m) are padded to the MMA's 8 rows: Hopper's wgmma takes any
    multiple of 8 as its token extent, and cuBLAS's kernels run one tile of all m rows
    when m is small (profiled: m = 36 in 40-row tiles, m = 144 in one of 144) and
    tiles of ``gemm_tile_m`` x TILE_M_FACTORS rows otherwise. Output tiles are
    ``gemm_tile_n`` x TILE_N_FACTORS wide. Of these shapes the schedule takes the one
    whose waves do the least work, as cuBLAS's heuristics balance the last wave (they
    were seen picking 64 to 232 rows and 96 to 512 columns). Each candidate's work is
    monotone in m and the candidate set only shrinks as m grows (the single tile
    reaches the tallest fixed height where it stops), so the time is monotone in m.
    """
    m = np.asarray(m, dtype=np.float64)
    args = (n, k, float(gpu.sm_count), float(physics.gemm_tile_m),
            float(physics.gemm_tile_n))
    if m.size > CACHED_SHAPES_MAX:
        return _distinct_schedule(m, *args)
    # the schedule depends on shapes and tile sizes only, never on fitted parameters:
    # a fit re-costs the same few dozen shapes hundreds of times (large sweeps are not
    # cached: their keys alone would hold megabytes)
    return _cached_schedule(m.tobytes(), m.shape, *args)


@lru_cache(maxsize=1024)
def _cached_schedule(m_bytes: bytes, shape: tuple[int, ...], n: int, k: int, sms: float,
                     gemm_tile_m: float, gemm_tile_n: float
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    out = _distinct_schedule(np.frombuffer(m_bytes, dtype=np.float64).reshape(shape), n, k,
                             sms, gemm_tile_m, gemm_tile_n)
    for x in out:
        x.flags.writeable = False  # shared by every caller
    return out


def _distinct_schedule(m: np.ndarray, n: int, k: int, sms: float, gemm_tile_m: float,
                       gemm_tile_n: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_schedule`` computed once per distinct m where m repeats (a sweep's token
    counts mostly do: decode's m is the batch): each candidate tile is scored per
    element, so the result is the same, at a sort's cost instead of 35 candidates'."""
    if m.size < DEDUPE_MIN_SHAPES:
        return _schedule(m, n, k, sms, gemm_tile_m, gemm_tile_n)
    unique, inverse = np.unique(m, return_inverse=True)
    if 2 * unique.size > m.size:
        return _schedule(m, n, k, sms, gemm_tile_m, gemm_tile_n)
    return tuple(x[inverse.reshape(m.shape)]  # type: ignore[return-value]
                 for x in _schedule(unique, n, k, sms, gemm_tile_m, gemm_tile_n))


def _schedule(m: np.ndarray, n: int, k: int, sms: float, gemm_tile_m: float,
              gemm_tile_n: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    m = np.maximum(m, 1.0)[..., None, None]
    fixed = gemm_tile_m * np.asarray(TILE_M_FACTORS)
    tallest = float(fixed.max())
    single = np.minimum(MMA_ROWS * np.ceil(m / MMA_ROWS), tallest)
    tile_m = np.concatenate([single, np.broadcast_to(fixed[:, None], (*m.shape[:-2],
                                                                       len(fixed), 1))],
                            axis=-2)                                  # (..., H, 1)
    tile_n = gemm_tile_n * np.asarray(TILE_N_FACTORS)                 # (W,)
    tiles = np.ceil(m / tile_m) * np.ceil(n / tile_n)                 # (..., H, W)
    max_split = max(1.0, np.floor(k / SPLIT_K_MIN_K))
    split = np.clip(np.floor(sms / tiles), 1.0, max_split)
    ctas = tiles * split
    waves = np.ceil(ctas / sms)
    # a tile computes its full tile_m rows even when m is smaller (padding)
    cta_flops = 2.0 * tile_m * tile_n * (k / split)
    flat = (*ctas.shape[:-2], -1)
    pick = np.argmin((waves * cta_flops).reshape(flat), axis=-1)[..., None]

    def take(x: np.ndarray) -> np.ndarray:
        return np.take_along_axis(np.broadcast_to(x, ctas.shape).reshape(flat), pick,
                                  axis=-1)[..., 0]

    return take(ctas), take(waves), take(cta_flops)


_TABLES: dict[int, tuple[tuple[SlowPick, ...], dict]] = {}


def _table(picks: tuple[SlowPick, ...]) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    # keyed by the tuple's identity (a calibration and its copies share one): hashing
    # the picks on every GEMM of every fit evaluation showed in profiles
    hit = _TABLES.get(id(picks))
    if hit is not None and hit[0] is picks:
        return hit[1]
    table: dict[tuple[int, int], dict[int, float]] = {}
    for p in picks:
        by_m = table.setdefault((p.n, p.k), {})
        by_m[p.m] = max(p.slowdown, by_m.get(p.m, 0.0))
    out = {key: (np.array(list(v), dtype=float), np.array(list(v.values())))
           for key, v in table.items()}
    if len(_TABLES) > 256:
        _TABLES.clear()
    _TABLES[id(picks)] = (picks, out)  # holds the tuple, so its id is not reused
    return out


def slowdown(picks: tuple[SlowPick, ...], n: int, k: int, m: np.ndarray) -> np.ndarray | None:
    """Per m, the measured slowdown of cuBLAS's pick for (n, k, m): 1 where none was
    measured; None when no pick has this (n, k) (the common case, kept cheap)."""
    if not picks:
        return None
    entry = _table(picks).get((n, k))
    if entry is None:
        return None
    ms, factors = entry
    hit = m[..., None] == ms
    return np.where(hit.any(axis=-1), (hit * factors).sum(axis=-1), 1.0)
