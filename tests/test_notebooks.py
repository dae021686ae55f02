"""The what-if notebooks (notebooks/*.py, jupytext percent files) run top to bottom and
render their Plotly figures: each is executed here, in this process, with ``show``
collecting the figures instead of opening a browser, and each figure serialised as a
renderer would; and each is executed again as a notebook (jupytext's .ipynb in a
Jupyter kernel through nbclient), its figures read back from the cells' outputs."""

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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_notebook_executes_in_a_jupyter_kernel(path):
    """The paired notebook as Jupyter runs it: jupytext builds the .ipynb, nbclient
    executes every cell in a fresh python3 kernel (as nbmake does), and the figures
    come back as Plotly outputs of the cells."""
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = jupytext.read(path)
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(REPO)}})
    client.execute()   # raises CellExecutionError, naming the cell, on any error
    figures = [out["data"]["application/vnd.plotly.v1+json"]
               for cell in nb.cells if cell.cell_type == "code"
               for out in cell.get("outputs", ())
               if "application/vnd.plotly.v1+json" in out.get("data", {})]
    assert len(figures) >= 2, f"{path.name}: {len(figures)} figures rendered"
    for fig in figures:
        assert fig["data"] and fig["layout"].get("title"), path.name
