"""The what-if notebooks (notebooks/*.py, jupytext percent files) run top to bottom and
render their Plotly figures: each is executed here, in this process, with ``show``
collecting the figures instead of opening a browser, and each figure serialised as a
renderer would."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.py"))


def test_there_are_at_least_five_paired_notebooks():
    assert len(NOTEBOOKS) >= 5
    for path in NOTEBOOKS:
        text = path.read_text(encoding="utf-8")
        assert "format_name: percent" in text and "formats: ipynb,py:percent" in text, path
        assert text.count("\n# %% [markdown]") >= 2 and text.count("\n# %%\n") >= 2, path


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_notebook_runs_and_renders_its_figures(path, monkeypatch, capsys):
    import plotly.basedatatypes
    import plotly.io as pio

    shown: list[object] = []
    monkeypatch.setattr(pio.renderers, "default", "json")
    monkeypatch.setattr(plotly.basedatatypes.BaseFigure, "show",
                        lambda self, *args, **kwargs: shown.append(self))
    monkeypatch.chdir(REPO)
    runpy.run_path(str(path), run_name="__main__")
    assert len(shown) >= 2, f"{path.name} shows {len(shown)} figures"
    for fig in shown:
        spec = json.loads(pio.to_json(fig, validate=True))
        assert spec["data"], f"{path.name}: a figure without traces"
        assert spec["layout"].get("title"), f"{path.name}: a figure without a title"
    assert capsys.readouterr().out.strip(), f"{path.name} printed nothing"
