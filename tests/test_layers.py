"""The data flow, checked on the source: every module imports only from its own layer
or the layers before it (specs -> kernels -> cost -> platform/capacity/engine -> step ->
speculative -> serving -> io/report -> calibration -> cli), the model layers import no
file reader, command line or formatting, and only the engine imports SimPy."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "gpusim"

# rank of each layer: a module may import modules of its own rank or lower
RANKS: dict[str, float] = {
    "units": 0, "errors": 0, "specs": 1, "kernels": 2, "cost": 3,
    "platform": 4, "capacity": 4, "engine": 4, "step": 5, "speculative": 6,
    "serving": 7, "plan": 7.5, "io": 8, "report": 8, "stackgen": 8, "calibration": 9,
    "sweep": 9, "cli": 10,
}
MODEL_LAYERS = ("specs", "kernels", "cost", "platform", "capacity", "engine", "step",
                "speculative", "serving", "plan")
EDGE = {"io", "cli", "report", "calibration"}   # what the model layers never import
BELOW_STEP = {"kernels", "cost", "engine"}      # what speculative and serving reach via step


def _imports(path: Path) -> set[str]:
    """Absolute module names a file imports (``from gpusim import cost`` counts as
    ``gpusim.cost``)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _layer(module: str) -> str | None:
    """The layer (top-level name under gpusim) of a gpusim module name, else None."""
    parts = module.split(".")
    return parts[1] if parts[0] == "gpusim" and len(parts) > 1 and parts[1] in RANKS else None


def _own_layer(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


SOURCES = [p for p in sorted(PKG.rglob("*.py")) if p.name != "__init__.py" or p.parent != PKG]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_flow_one_way(path):
    own = _own_layer(path)
    assert own in RANKS, f"{path}: module outside every layer (add it to RANKS)"
    later = sorted(m for m in _imports(path)
                   if (layer := _layer(m)) is not None and RANKS[layer] > RANKS[own])
    assert not later, f"{path.relative_to(PKG)} ({own}) imports later layers: {later}"


@pytest.mark.parametrize("path", [p for p in SOURCES if _own_layer(p) in MODEL_LAYERS],
                         ids=lambda p: str(p.relative_to(PKG)))
def test_model_layers_import_no_reader_cli_or_report(path):
    edge = sorted(m for m in _imports(path) if _layer(m) in EDGE)
    assert not edge, f"{path.relative_to(PKG)} imports {edge}"


@pytest.mark.parametrize("path", [p for p in SOURCES
                                  if _own_layer(p) in ("speculative", "serving", "plan")],
                         ids=lambda p: str(p.relative_to(PKG)))
def test_layers_above_step_do_not_reach_below_it(path):
    # the calibration record is vocabulary (a Platform holds one), not the cost model
    below = sorted(m for m in _imports(path) if _layer(m) in BELOW_STEP
                   and not m.startswith("gpusim.cost.params"))
    assert not below, f"{path.name} imports below step: {below}"


def test_only_the_engine_imports_simpy():
    users = [p.relative_to(PKG).as_posix() for p in sorted(PKG.rglob("*.py"))
             if any(m == "simpy" or m.startswith("simpy.") for m in _imports(p))]
    assert users == ["engine.py"]


def test_the_checker_sees_a_violation(tmp_path):
    # the checks themselves can fail: a serving file importing cost, the engine and a
    # reader is caught three ways
    f = tmp_path / "bad.py"
    f.write_text("from gpusim.cost import kernel_cost\nfrom gpusim import engine\n"
                 "from gpusim.io import loader\n")
    found = _imports(f)
    assert {m for m in found if _layer(m) in BELOW_STEP} == {
        "gpusim.cost", "gpusim.cost.kernel_cost", "gpusim.engine"}
    assert {m for m in found if _layer(m) in EDGE} == {"gpusim.io", "gpusim.io.loader"}
    assert max(RANKS[layer] for m in found if (layer := _layer(m))) > RANKS["serving"]
