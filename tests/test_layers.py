"""DESIGN's data flow, checked on the source: the layers built on ``step`` (speculative
decoding, serving) import nothing below it (ops, attention, cost, engine), and only the
engine imports SimPy."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "gpusim"
BELOW_STEP = {"gpusim.kernels.build", "gpusim.cost.kernel", "gpusim.cost.attention",
              "gpusim.engine"}


def _imports(path: Path) -> set[str]:
    """Absolute module names a file imports (``from gpusim import cost`` counts as
    ``gpusim.cost.kernel``)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _modules(package: str) -> list[Path]:
    return sorted((PKG / package).rglob("*.py"))


@pytest.mark.parametrize("path", _modules("speculative") + _modules("serving"),
                         ids=lambda p: str(p.relative_to(PKG)))
def test_layers_above_step_do_not_reach_below_it(path):
    assert not (_imports(path) & BELOW_STEP), f"{path.name} imports below step"


def test_only_the_engine_imports_simpy():
    users = [p.relative_to(PKG).as_posix() for p in sorted(PKG.rglob("*.py"))
             if any(m == "simpy" or m.startswith("simpy.") for m in _imports(p))]
    assert users == ["engine.py"]


def test_the_checker_sees_a_violation(tmp_path):
    # the check itself can fail: a file importing cost is caught
    f = tmp_path / "bad.py"
    f.write_text("from gpusim.cost.kernel import kernel_cost\nfrom gpusim import engine\n")
    assert _imports(f) & BELOW_STEP == {"gpusim.cost.kernel", "gpusim.engine"}
