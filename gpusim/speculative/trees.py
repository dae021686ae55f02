"""Token trees: shapes, expected accepted length, and the best tree under a node budget.

A tree's node 0 is the root: the last token the target produced, always kept. Every
other node is one draft guess; ``parents[i] < i`` names its parent, and children of a
node are ranked in index order (the first child is the draft's top guess). The
target verifies all n nodes in one pass (q = n) with a tree attention mask; a chain
of k draft tokens is the tree with n = k + 1 nodes in a line.

Expected tokens per iteration under Sequoia's positional model (the j-th ranked
child of an accepted node is the accepted one with probability p_j): the sum over
nodes of the product of p_rank along the path from the root (the root counts 1).

``best_tree`` finds the tree of at most n nodes (and at most a given depth) with the
largest expected tokens by dynamic programming over (depth left, nodes left), as
Sequoia does. Everything raises ValueError for a bad argument, naming the value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

import numpy as np

MAX_TREE_NODES = 1024


@dataclass(frozen=True)
class TokenTree:
    """A token tree as a parent list (``parents[0] == -1``, ``parents[i] < i``)."""

    parents: tuple[int, ...]

    def __post_init__(self) -> None:
        p = tuple(int(x) for x in self.parents)
        if not p or p[0] != -1:
            raise ValueError(f"parents={self.parents!r}: node 0 is the root (parent -1)")
        if len(p) > MAX_TREE_NODES:
            raise ValueError(f"tree of {len(p)} nodes: at most {MAX_TREE_NODES}")
        for i, par in enumerate(p[1:], start=1):
            if not 0 <= par < i:
                raise ValueError(f"parents[{i}]={par} must be a node index in 0..{i - 1}")
        object.__setattr__(self, "parents", p)

    # --- constructors --------------------------------------------------------------
    @staticmethod
    def chain(k: int) -> TokenTree:
        """k draft tokens in a line (n = k + 1 nodes)."""
        if k < 0:
            raise ValueError(f"k={k} must be >= 0")
        return TokenTree((-1, *range(k)))

    @staticmethod
    def full(width: int, depth: int) -> TokenTree:
        """Every node above ``depth`` has ``width`` children (n = sum width^l)."""
        if width < 1 or depth < 0:
            raise ValueError(f"width={width} must be >= 1 and depth={depth} >= 0")
        n = sum(width ** level for level in range(depth + 1))
        if n > MAX_TREE_NODES:
            raise ValueError(f"a {width}x{depth} tree has {n} nodes: at most {MAX_TREE_NODES}")
        parents = [-1]
        frontier = [0]
        for _ in range(depth):
            nxt = []
            for node in frontier:
                for _ in range(width):
                    parents.append(node)
                    nxt.append(len(parents) - 1)
            frontier = nxt
        return TokenTree(tuple(parents))

    # --- structure -------------------------------------------------------------------
    @property
    def nodes(self) -> int:
        return len(self.parents)

    @cached_property
    def depths(self) -> tuple[int, ...]:
        d = [0] * self.nodes
        for i in range(1, self.nodes):
            d[i] = d[self.parents[i]] + 1
        return tuple(d)

    @cached_property
    def ranks(self) -> tuple[int, ...]:
        """1-based rank of each node among its siblings (root: 0)."""
        seen: dict[int, int] = {}
        r = [0] * self.nodes
        for i in range(1, self.nodes):
            seen[self.parents[i]] = seen.get(self.parents[i], 0) + 1
            r[i] = seen[self.parents[i]]
        return tuple(r)

    @property
    def depth(self) -> int:
        """Draft tokens on the longest path (a chain of k: k)."""
        return max(self.depths)

    @property
    def is_chain(self) -> bool:
        return all(p == i - 1 for i, p in enumerate(self.parents) if i)

    @property
    def max_width(self) -> int:
        """Most children of any node."""
        return max(self.ranks)

    def expanded_per_level(self) -> tuple[int, ...]:
        """Nodes with at least one child, per depth 0..depth-1: what a draft model
        forwards at each of its ``depth`` steps to propose the next level."""
        has_child = set(self.parents[1:])
        out = [0] * self.depth
        for i in has_child:
            out[self.depths[i]] += 1
        return tuple(out)

    def nodes_before_level(self) -> tuple[int, ...]:
        """Tree nodes at depths < l, for l = 0..depth-1 (the draft's extra context)."""
        counts = np.bincount(np.asarray(self.depths), minlength=self.depth + 1)
        return tuple(int(x) for x in np.concatenate(([0], np.cumsum(counts)[:-1]))[
            : self.depth])

    def label(self) -> str:
        if self.is_chain:
            return f"chain k={self.depth}"
        return f"tree n={self.nodes} depth={self.depth} width={self.max_width}"

    # --- acceptance ----------------------------------------------------------------
    def path_probabilities(self, p: tuple[float, ...] | list[float]) -> np.ndarray:
        """P(node accepted) for every node: product of p_rank along its path."""
        pr = np.asarray(p, dtype=np.float64)
        prob = np.ones(self.nodes)
        for i in range(1, self.nodes):
            r = self.ranks[i]
            prob[i] = prob[self.parents[i]] * (pr[r - 1] if r <= len(pr) else 0.0)
        return prob

    def expected_tokens(self, p: tuple[float, ...] | list[float]) -> float:
        """Expected tokens per iteration (accepted path + the target's own token)."""
        return float(self.path_probabilities(p).sum())

    def sample_tokens(self, p: tuple[float, ...] | list[float], size: int,
                      rng: np.random.Generator) -> np.ndarray:
        """Tokens per iteration for ``size`` independent iterations: walk from the root,
        pick the accepted rank (or none) at each node, stop where it is missing."""
        pr = np.asarray(p, dtype=np.float64)
        cum = np.cumsum(pr)
        children: dict[int, list[int]] = {}
        for i in range(1, self.nodes):
            children.setdefault(self.parents[i], []).append(i)
        out = np.ones(size, dtype=np.int64)
        node = np.zeros(size, dtype=np.int64)
        alive = np.ones(size, dtype=bool)
        for _ in range(self.depth):
            u = rng.random(size)
            rank = np.searchsorted(cum, u, side="right")    # 0-based; len(p): none
            nxt = np.full(size, -1, dtype=np.int64)
            for idx in np.flatnonzero(alive):
                kids = children.get(int(node[idx]), [])
                if rank[idx] < len(kids) and rank[idx] < len(pr):
                    nxt[idx] = kids[rank[idx]]
            alive &= nxt >= 0
            node = np.where(alive, nxt, node)
            out += alive
        return out


# ----------------------------------------------------------------------------------
# Sequoia's dynamic program
# ----------------------------------------------------------------------------------
# cells (depth x rank x budget x subtree size) the tree search may visit: a few s of
# numpy; best:1024 under geometric acceptance 0.8 settles at depth ~25 within it
MAX_DP_CELLS = 600_000_000


def _best_tables(p: np.ndarray, nodes: int, depth: int
                 ) -> tuple[np.ndarray, list[list[list[int]]]]:
    """value[d, m]: best expected tokens of a subtree with <= m nodes, depth <= d;
    sizes[d][m]: the child subtree sizes by rank achieving it. Each depth's allocation
    is one vectorised max-plus step over every budget; once a depth adds nothing (the
    values repeat exactly), every deeper one is the same and is copied, not solved.
    Raises ValueError when the search has not settled within the depth MAX_DP_CELLS
    allows (give a depth cap)."""
    w = len(p)
    value = np.zeros((depth + 1, nodes + 1))
    value[:, 1:] = 1.0                      # a lone root
    sizes: list[list[list[int]]] = [[[] for _ in range(nodes + 1)] for _ in range(depth + 1)]
    budgets = np.arange(1, nodes)           # r: nodes left for ranks j..
    subtree = np.arange(1, nodes)           # s: nodes given to rank j
    rest = budgets[:, None] - subtree[None, :]
    valid = rest >= 0
    rest = np.where(valid, rest, 0)
    allowed = max(MAX_DP_CELLS // max(w * nodes * nodes, 1), 1)
    for d in range(1, depth + 1):
        if d > allowed and not np.array_equal(value[d - 1], value[d - 2]):
            raise ValueError(f"best:{nodes}: the tree search has not settled by depth "
                             f"{allowed} and deeper would take minutes; give a depth "
                             f"(best:{nodes}:{allowed}) or fewer nodes")
        if d >= 2 and np.array_equal(value[d - 1], value[d - 2]):
            value[d:] = value[d - 1]        # converged: deeper trees are no better
            for dd in range(d, depth + 1):
                sizes[dd] = sizes[d - 1]
            break
        child = value[d - 1]                # child subtrees have depth <= d - 1
        # alloc[j][r]: best sum over ranks j.. with r nodes; choice[j][r]: size of rank j
        alloc = np.zeros((w + 1, nodes))
        choice = np.zeros((w + 1, nodes), dtype=np.int64)
        for j in range(w - 1, -1, -1):
            if nodes < 2:
                break
            cand = np.where(valid, p[j] * child[subtree][None, :] + alloc[j + 1][rest],
                            -np.inf)
            best = np.argmax(cand, axis=1)
            top = cand[np.arange(len(budgets)), best]
            keep = top > 1e-15              # else: no child of rank j (nor after it)
            alloc[j, 1:] = np.where(keep, top, 0.0)
            choice[j, 1:] = np.where(keep, subtree[best], 0)
        for m in range(1, nodes + 1):
            value[d, m] = 1.0 + alloc[0, m - 1]
            kids, r = [], m - 1
            for j in range(w):
                s = int(choice[j, r]) if r > 0 else 0
                if s == 0:
                    break
                kids.append(s)
                r -= s
            sizes[d][m] = kids
    return value, sizes


def best_tree(p: tuple[float, ...] | list[float], nodes: int,
              max_depth: int | None = None) -> TokenTree:
    """The tree of at most ``nodes`` nodes (root included) and depth <= ``max_depth``
    with the largest expected tokens under ranked acceptance ``p`` (Sequoia's DP).

    Raises ValueError for nodes < 1, max_depth < 0 or a bad ``p``.
    """
    pr = np.asarray(p, dtype=np.float64)
    if pr.ndim != 1 or len(pr) == 0 or not np.all((pr >= 0) & (pr <= 1)):
        raise ValueError(f"p={p!r} must be probabilities in [0, 1]")
    if not 1 <= nodes <= MAX_TREE_NODES:
        raise ValueError(f"nodes={nodes} must be in 1..{MAX_TREE_NODES}")
    depth = nodes - 1 if max_depth is None else max_depth
    if depth < 0:
        raise ValueError(f"max_depth={max_depth} must be >= 0")
    depth = min(depth, nodes - 1)
    _, sizes = _best_tables(pr, nodes, depth)
    parents = [-1]

    def build(node: int, d: int, m: int) -> None:
        kids = sizes[d][m]
        ids = []
        for _ in kids:
            parents.append(node)
            ids.append(len(parents) - 1)
        for child, s in zip(ids, kids, strict=True):
            build(child, d - 1, s)

    build(0, depth, nodes)
    # renumber breadth-first so that parents precede children and ranks keep order
    return _bfs(tuple(parents))


def best_value(p: tuple[float, ...] | list[float], nodes: int,
               max_depth: int | None = None) -> float:
    """Expected tokens of ``best_tree(p, nodes, max_depth)`` straight from the DP table."""
    pr = np.asarray(p, dtype=np.float64)
    depth = min(nodes - 1 if max_depth is None else max_depth, nodes - 1)
    value, _ = _best_tables(pr, nodes, depth)
    return float(value[depth, nodes])


def _bfs(parents: tuple[int, ...]) -> TokenTree:
    children: dict[int, list[int]] = {}
    for i in range(1, len(parents)):
        children.setdefault(parents[i], []).append(i)
    order, new_parent = [0], [-1]
    index = {0: 0}
    head = 0
    while head < len(order):
        node = order[head]
        head += 1
        for c in children.get(node, []):
            index[c] = len(order)
            order.append(c)
            new_parent.append(index[node])
    return TokenTree(tuple(new_parent))


# ----------------------------------------------------------------------------------
# the --tree syntax
# ----------------------------------------------------------------------------------
TREE_HELP = ("WxD (every node above depth D has W children) | parents:0,0,1,1 (parent "
             "of nodes 1..n-1; node 0 is the root) | best:N or best:N:D (Sequoia DP: "
             "best tree of <= N nodes, depth <= D, for the ranked acceptance)")


def parse_tree(text: str, ranked: tuple[float, ...] | None = None) -> TokenTree:
    """Parse the ``--tree`` syntax (TREE_HELP). ``best:`` needs ``ranked``.

    Raises ValueError naming the bad part.
    """
    s = text.strip()
    m = re.fullmatch(r"(\d+)x(\d+)", s)
    if m:
        return TokenTree.full(int(m.group(1)), int(m.group(2)))
    if s.startswith("parents:"):
        body = s[len("parents:"):]
        try:
            parents = [int(x) for x in body.split(",")] if body.strip() else []
        except ValueError:
            raise ValueError(f"tree={text!r}: parents must be integers") from None
        return TokenTree((-1, *parents))
    m = re.fullmatch(r"best:(\d+)(?::(\d+))?", s)
    if m:
        if ranked is None:
            raise ValueError(f"tree={text!r}: best: needs ranked acceptance probabilities")
        depth = int(m.group(2)) if m.group(2) else None
        return best_tree(ranked, int(m.group(1)), depth)
    raise ValueError(f"tree={text!r} must be one of: {TREE_HELP}")
