"""Expected distinct experts per MoE layer (kernels.moe): the closed form against
Monte-Carlo routing (10,000 draws per case, within 1%), a hand-worked case, and
properties of the skew model."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpusim.kernels.moe import expected_experts, expected_row_tiles, inclusion_probabilities

DRAWS = 10_000


def _distinct(ids: np.ndarray, experts: int) -> np.ndarray:
    """Distinct experts per draw of ``ids`` [draws, slots]."""
    hit = np.zeros((ids.shape[0], experts), dtype=bool)
    hit[np.arange(ids.shape[0])[:, None], ids] = True
    return hit.sum(axis=1)


def uniform_picks(experts: int, top_k: int, tokens: int, seed: int, cells: int):
    """DRAWS steps' routing in chunks of about ``cells`` scores: [n, tokens * top_k]
    expert ids, every token picking top_k distinct experts uniformly (top-k of i.i.d.
    scores, what a router with exchangeable logits does)."""
    rng = np.random.default_rng(seed)
    chunk = max(1, cells // (tokens * experts))
    for start in range(0, DRAWS, chunk):
        n = min(chunk, DRAWS - start)
        scores = rng.random((n, tokens, experts))
        picks = np.argpartition(scores, experts - top_k, axis=-1)[..., experts - top_k:]
        yield picks.reshape(n, tokens * top_k)


def mc_uniform(experts: int, top_k: int, tokens: int, seed: int) -> float:
    """Mean distinct experts over DRAWS steps of uniform routing."""
    return sum(_distinct(ids, experts).sum()
               for ids in uniform_picks(experts, top_k, tokens, seed, 200_000)) / DRAWS


def mc_skewed(experts: int, top_k: int, tokens: int, skew: float, seed: int) -> float:
    """Mean distinct experts when each token picks top_k distinct experts with inclusion
    probabilities pi (systematic sampling from a random start over the experts'
    cumulative pi, in a random cyclic order per token: each expert is picked with
    probability pi_i exactly, never twice)."""
    rng = np.random.default_rng(seed)
    pi = inclusion_probabilities(experts, top_k, skew)
    total = 0.0
    for start in range(0, DRAWS, 1000):
        n = min(1000, DRAWS - start)
        shift = rng.integers(0, experts, size=(n, tokens))            # cyclic order
        order = (np.arange(experts)[None, None, :] + shift[..., None]) % experts
        cum = np.cumsum(pi[order], axis=-1)                            # [n, T, E]
        points = rng.random((n, tokens, 1)) + np.arange(top_k)        # [n, T, k]
        pos = np.minimum((cum[..., None, :] <= points[..., None]).sum(-1), experts - 1)
        ids = np.take_along_axis(order, pos, axis=-1)                  # [n, T, k]
        total += _distinct(ids.reshape(n, tokens * top_k), experts).sum()
    return total / DRAWS


UNIFORM = [(8, 2, 1), (8, 2, 3), (8, 2, 8), (8, 2, 32), (128, 8, 1), (128, 8, 4),
           (128, 8, 16), (128, 4, 8), (256, 8, 2), (60, 4, 12)]


@pytest.mark.parametrize("experts,top_k,tokens", UNIFORM)
def test_uniform_closed_form_matches_monte_carlo(experts: int, top_k: int, tokens: int
                                                 ) -> None:
    want = mc_uniform(experts, top_k, tokens, seed=experts * 1000 + tokens)
    got = float(expected_experts(experts, top_k, tokens))
    assert got == pytest.approx(want, rel=0.01)


SKEWED = [(8, 2, 4, 1.0), (8, 2, 16, 3.0), (128, 8, 4, 1.0), (128, 8, 32, 0.5),
          (128, 8, 16, 2.0), (256, 8, 8, 1.2)]


@pytest.mark.parametrize("experts,top_k,tokens,skew", SKEWED)
def test_skewed_closed_form_matches_monte_carlo(experts: int, top_k: int, tokens: int,
                                                skew: float) -> None:
    want = mc_skewed(experts, top_k, tokens, skew, seed=7 * experts + tokens)
    got = float(expected_experts(experts, top_k, tokens, skew))
    assert got == pytest.approx(want, rel=0.01)


def test_hand_worked_two_tokens() -> None:
    # two tokens, each 2 of 8: the first touches 2; each of the second's picks is new
    # with probability 6/8 -> 2 + 2 * 0.75 = 3.5 = 8 (1 - (6/8)^2)
    assert float(expected_experts(8, 2, 2)) == pytest.approx(3.5)
    assert float(expected_experts(8, 2, 2, skew=0.0)) == pytest.approx(3.5)
    # top-k of all experts touches all of them
    assert float(expected_experts(4, 4, 3)) == 4.0


def test_skew_probabilities_hand_worked() -> None:
    # 4 experts, top-1, skew 1: weights 1, 1/2, 1/3, 1/4 (sum 25/12)
    pi = inclusion_probabilities(4, 1, 1.0)
    assert pi == pytest.approx([12 / 25, 6 / 25, 4 / 25, 3 / 25])
    assert float(expected_experts(4, 1, 2, 1.0)) == pytest.approx(
        sum(1 - (1 - p) ** 2 for p in (12 / 25, 6 / 25, 4 / 25, 3 / 25)))


def test_strong_skew_caps_the_most_popular_experts_at_one() -> None:
    pi = inclusion_probabilities(8, 2, 3.0)
    assert pi[0] == 1.0 and pi.sum() == pytest.approx(2.0)
    assert np.all(np.diff(pi) <= 1e-12)


@settings(max_examples=60, deadline=None)
@given(experts=st.integers(1, 300), data=st.data(), skew=st.floats(0.0, 4.0))
def test_probabilities_and_expectation_properties(experts: int, data: st.DataObject,
                                                  skew: float) -> None:
    top_k = data.draw(st.integers(1, experts))
    pi = inclusion_probabilities(experts, top_k, skew)
    assert pi.sum() == pytest.approx(top_k, rel=1e-9)
    assert np.all((pi >= 0) & (pi <= 1.0))
    t = np.array([1.0, 2.0, 5.0, 50.0, 5000.0])
    d = expected_experts(experts, top_k, t, skew)
    assert d[0] == pytest.approx(top_k, rel=1e-9)          # one token: its k experts
    assert np.all(np.diff(d) >= -1e-9)                      # more tokens, more experts
    assert np.all(d <= np.minimum(experts, t * top_k) + 1e-9)
    if skew > 0:  # skew concentrates the tokens: never more experts than uniform
        assert np.all(d <= expected_experts(experts, top_k, t) + 1e-9)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="top_k"):
        inclusion_probabilities(8, 9)
    with pytest.raises(ValueError, match="skew"):
        inclusion_probabilities(8, 2, -1.0)


# --- row tiles: sum over experts of ceil(rows / tile) (the grouped GEMM's tiles) ------

def mc_row_tiles(experts: int, top_k: int, tokens: int, tile: int, seed: int) -> float:
    """Mean over DRAWS steps of uniform routing of sum_e ceil(rows_e / tile) (each
    draw's rows per expert counted with one bincount)."""
    total = 0.0
    for ids in uniform_picks(experts, top_k, tokens, seed, 2_000_000):
        n = ids.shape[0]
        flat = ids + experts * np.arange(n)[:, None]
        rows = np.bincount(flat.ravel(), minlength=n * experts).reshape(n, experts)
        total += np.ceil(rows / tile).sum()
    return total / DRAWS


# Mixtral-like 8 experts top 2 around the 128-row tile (96, 128 and 160 rows an expert)
# and Qwen3-like 128 top 8; one tile-sized case per routing
ROW_TILES = [(8, 2, 384, 128), (8, 2, 512, 128), (8, 2, 640, 128), (8, 2, 5, 128),
             (128, 8, 2048, 128), (128, 8, 64, 16), (16, 4, 200, 64)]


@pytest.mark.parametrize("experts,top_k,tokens,tile", ROW_TILES)
def test_row_tiles_match_monte_carlo(experts: int, top_k: int, tokens: int, tile: int
                                     ) -> None:
    want = mc_row_tiles(experts, top_k, tokens, tile, seed=experts + tokens + tile)
    got = float(expected_row_tiles(experts, top_k, tokens, tile))
    assert got == pytest.approx(want, rel=0.01)


def test_row_tiles_hand_worked() -> None:
    # one token: its top_k experts, one tile each; rows concentrated well under a tile:
    # one tile per (touched) expert; a tile of one row: every slot its own tile
    assert float(expected_row_tiles(8, 2, 1, 128)) == pytest.approx(2.0)
    assert float(expected_row_tiles(8, 2, 384, 128)) == pytest.approx(8.0, abs=1e-3)
    assert float(expected_row_tiles(8, 2, 300, 1)) == pytest.approx(600.0)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4000), st.sampled_from([16, 64, 128, 256]),
       st.floats(0.0, 2.0))
def test_row_tiles_bounds(tokens: int, tile: int, skew: float) -> None:
    # at least one tile per touched expert; at most that plus the slots' own tiles
    touched = float(expected_experts(64, 4, tokens, skew))
    got = float(expected_row_tiles(64, 4, tokens, tile, skew))
    assert touched - 1e-6 <= got <= touched + tokens * 4 / tile + 1e-6


def test_row_tiles_grow_with_tokens() -> None:
    t = np.arange(1, 3000, 7)
    got = expected_row_tiles(128, 8, t, 128, 0.5)
    assert np.all(np.diff(got) >= -1e-9)
