"""Token trees: expected tokens, Sequoia's DP against brute force, parsing, sampling."""

from __future__ import annotations

import itertools
from functools import cache

import numpy as np
import pytest

from gpusim.speculative.acceptance import IidAcceptance
from gpusim.speculative.trees import (
    TokenTree,
    best_tree,
    best_value,
    parse_tree,
)


@cache
def _forests(n: int) -> tuple[tuple[tuple, ...], ...]:
    """All ordered forests with n nodes, each tree as a tuple of child subtrees."""
    if n == 0:
        return ((),)
    out = []
    for first in range(1, n + 1):
        for kids in _forests(first - 1):
            for rest in _forests(n - first):
                out.append((kids, *rest))
    return tuple(out)


def _trees(n: int) -> list[TokenTree]:
    """Every rooted ordered (plane) tree with n nodes, as parent lists."""
    def add(parents: list[int], node: int, children: tuple) -> None:
        for sub in children:
            parents.append(node)
            add(parents, len(parents) - 1, sub)

    out = []
    for kids in _forests(n - 1):
        parents = [-1]
        add(parents, 0, kids)
        out.append(TokenTree(tuple(parents)))
    return out


def test_enumeration_counts_are_catalan():
    assert [len(_trees(n)) for n in range(1, 8)] == [1, 1, 2, 5, 14, 42, 132]


P_SETS = [(0.6, 0.2, 0.1), (0.8, 0.1), (0.3, 0.3, 0.3), (0.9,), (0.5, 0.3, 0.15, 0.05),
          (0.1, 0.4, 0.2)]


@pytest.mark.parametrize("p", P_SETS)
@pytest.mark.parametrize("budget", [1, 2, 3, 4, 5, 6, 7])
@pytest.mark.parametrize("depth", [None, 1, 2, 3])
def test_dp_matches_brute_force(p, budget, depth):
    cands = [t for n in range(1, budget + 1) for t in _trees(n)
             if depth is None or t.depth <= depth]
    brute = max(t.expected_tokens(p) for t in cands)
    tree = best_tree(p, budget, depth)
    assert tree.nodes <= budget
    assert depth is None or tree.depth <= depth
    assert tree.expected_tokens(p) == pytest.approx(brute, rel=1e-12)
    assert best_value(p, budget, depth) == pytest.approx(brute, rel=1e-12)


@pytest.mark.parametrize("a", [0.0, 0.5, 0.8, 1.0])
@pytest.mark.parametrize("k", [1, 4, 8])
def test_chain_is_the_iid_closed_form(a, k):
    assert TokenTree.chain(k).expected_tokens((a,)) == pytest.approx(
        IidAcceptance(a).expected_tokens(k))


def test_full_tree_structure():
    t = TokenTree.full(2, 3)
    assert t.nodes == 15 and t.depth == 3 and t.max_width == 2
    assert t.expanded_per_level() == (1, 2, 4)
    assert t.nodes_before_level() == (0, 1, 3)
    assert TokenTree.chain(4).expanded_per_level() == (1, 1, 1, 1)
    assert TokenTree.chain(4).nodes_before_level() == (0, 1, 2, 3)


def test_bigger_budgets_never_hurt():
    p = (0.6, 0.2, 0.1)
    vals = [best_value(p, n) for n in range(1, 40)]
    assert all(b >= a - 1e-12 for a, b in itertools.pairwise(vals))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tree_sampling_agrees_with_expected_tokens(seed):
    p = (0.55, 0.25, 0.1)
    tree = best_tree(p, 16, 5)
    t = tree.sample_tokens(p, 20000, np.random.default_rng(seed)).astype(float)
    se = t.std(ddof=1) / np.sqrt(t.size)
    assert abs(t.mean() - tree.expected_tokens(p)) <= 4 * se


@pytest.mark.parametrize("text,nodes", [("2x2", 7), ("1x5", 6), ("parents:0,0,1", 4),
                                        ("best:10", None), ("best:10:3", None)])
def test_parse_tree(text, nodes):
    t = parse_tree(text, (0.6, 0.2, 0.1))
    if nodes is not None:
        assert t.nodes == nodes
    else:
        assert t.nodes <= 10


@pytest.mark.parametrize("text,match", [("parents:1", "parents\\[1\\]"), ("3y2", "must be one of"),
                                        ("parents:0,a", "integers"), ("64x3", "at most"),
                                        ("best:0", "nodes")])
def test_parse_tree_errors(text, match):
    with pytest.raises(ValueError, match=match):
        parse_tree(text, (0.6,))


def test_best_needs_ranked():
    with pytest.raises(ValueError, match="ranked"):
        parse_tree("best:8", None)
