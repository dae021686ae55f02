"""docs/ARCHITECTURE.md stays drawn from the code: it names every module, and its
notebook example runs."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = (REPO / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")


def test_every_module_is_on_the_page():
    modules = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "gpusim").rglob("*.py"))
    missing = [m for m in modules if f"`{m}`" not in DOC]
    assert not missing, f"add to docs/ARCHITECTURE.md: {missing}"
    listed = set(re.findall(r"`(gpusim/[\w/]+\.py)`", DOC))
    gone = sorted(m for m in listed if not (REPO / m).is_file())
    assert not gone, f"docs/ARCHITECTURE.md names modules that do not exist: {gone}"


def test_the_notebook_example_runs():
    code = DOC.split("## Stepping a serving run from a notebook", 1)[1]
    code = code.split("```python", 1)[1].split("```", 1)[0]
    code = code.replace("duration_s=60", "duration_s=5")
    scope: dict[str, object] = {}
    exec(compile(code, "ARCHITECTURE.md", "exec"), scope)
    assert scope["record"].plan == scope["plan"]
    assert scope["summary"].as_dict()["requests"]["completed"] > 0
