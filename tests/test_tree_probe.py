"""The token-tree probe's mask (harness, CPU) and validation/tree_check.py."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "validation" / "harness"
if str(HARNESS) not in sys.path:
    sys.path.insert(0, str(HARNESS))

import probe_tree  # noqa: E402

_spec = importlib.util.spec_from_file_location("tree_check", ROOT / "validation" / "tree_check.py")
assert _spec is not None and _spec.loader is not None
tree_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tree_check)


def test_tree_mask_sees_the_cache_and_the_ancestors():
    m = probe_tree.tree_mask(7, 3, 2, torch.device("cpu"))
    assert m.shape == (7, 10) and m[:, :3].all()
    # binary tree: 0 <- 1, 2; 1 <- 3, 4; 2 <- 5, 6
    ancestors = {0: {0}, 1: {0, 1}, 2: {0, 2}, 3: {0, 1, 3}, 4: {0, 1, 4}, 5: {0, 2, 5},
                 6: {0, 2, 6}}
    for i, anc in ancestors.items():
        assert {j for j in range(7) if m[i, 3 + j]} == anc


def test_tree_check_on_a_file(tmp_path):
    d = tmp_path / "h100-sxm"
    d.mkdir()
    (d / "tree.csv").write_text("model,batch,ctx,nodes,causal_ms,tree_ms\n"
                                "llama-3.1-8b,1,1024,4,8.75424,9.4015\n")
    e = tree_check.errors(d / "tree.csv")
    assert set(e) == {"causal", "tree", "tree as causal"} and len(e["causal"]) == 1
    # the same (causal) prediction against two measurements
    assert (1 + e["causal"][0]) * 8.75424 == pytest.approx(
        (1 + e["tree as causal"][0]) * 9.4015)
    assert abs(e["causal"][0]) < 0.05 and abs(e["tree"][0]) < 0.05
