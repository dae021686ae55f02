"""spec sweeps: best k, the break-even batch, figures and markdown."""

from __future__ import annotations

import numpy as np
import pytest

from gpusim.cost import Calibration
from gpusim.platform import Platform
from gpusim.report.spec_figures import sweep_html, sweep_markdown
from gpusim.speculative.acceptance import IidAcceptance
from gpusim.speculative.drafts import MedusaDraft, ModelDraft
from gpusim.speculative.iteration import Speculation, predict_iteration
from gpusim.speculative.overhead import SpecOverhead
from gpusim.speculative.sweep import SweepGrid, sweep
from gpusim.speculative.trees import TokenTree

CAL = Calibration(
    physics={
        "kernel_fixed_cost_s": 2e-6,
        "tensor_efficiency": 0.7,
        "hbm_bandwidth_efficiency": 0.85,
    },
    host={"host_graph_launch_cost_s": 8e-6},
)


@pytest.fixture(scope="module")
def result(h100, models, stack):
    accs = [IidAcceptance(0.6), IidAcceptance(0.9)]
    return sweep(
        Platform(h100, stack, CAL),
        SpecOverhead(),
        models["llama-3.1-8b"],
        ModelDraft(models["llama-3.2-1b"]),
        accs,
        SweepGrid(batches=(1, 8, 64, 512), ctxs=(1024, 16384), ks=(1, 2, 4, 8),
                  max_dense_batch=1024),
    )


def test_rows_and_best(result):
    assert len(result.rows) == 2 * 2 * 4 * 4
    assert len(result.best) == 2 * 2 * 4
    for b in result.best:
        cell = [
            r
            for r in result.rows
            if (r["acceptance"], r["ctx"], r["batch"]) == (b["acceptance"], b["ctx"], b["batch"])
        ]
        assert b["speedup"] == max(r["speedup"] for r in cell)
        assert b["best_k"] in {1, 2, 4, 8}


def test_higher_acceptance_longer_chains_and_more_speedup(result):
    for c in (1024, 16384):
        lo = next(
            r for r in result.best if r["ctx"] == c and r["batch"] == 1 and "0.6" in r["acceptance"]
        )
        hi = next(
            r for r in result.best if r["ctx"] == c and r["batch"] == 1 and "0.9" in r["acceptance"]
        )
        assert hi["best_k"] >= lo["best_k"] and hi["speedup"] > lo["speedup"] > 1


def test_break_even_is_the_first_losing_batch(result, h100, models, stack):
    t, d = models["llama-3.1-8b"], models["llama-3.2-1b"]
    for be in result.break_even:
        if be["break_even_batch"] is None:
            continue
        acc = IidAcceptance(0.6 if "0.6" in be["acceptance"] else 0.9)
        b = int(be["break_even_batch"])
        batches = np.array([b - 1, b]) if b > 1 else np.array([b])
        best = np.max(
            [
                predict_iteration(
                    Platform(h100, stack, CAL),
                    SpecOverhead(),
                    Speculation(t, ModelDraft(d), TokenTree.chain(k), acc),
                    batches,
                    be["ctx"],
                ).speedup
                for k in (1, 2, 4, 8)
            ],
            axis=0,
        )
        assert best[-1] < 1.0
        if b > 1:
            assert best[0] >= 1.0


def test_break_even_moves_with_acceptance_and_memory_caps_long_context(result):
    by = {(r["acceptance"], r["ctx"]): r for r in result.break_even}
    lo, hi = by[("iid a=0.6", 1024)], by[("iid a=0.9", 1024)]
    if lo["break_even_batch"] is not None and hi["break_even_batch"] is not None:
        assert hi["break_even_batch"] >= lo["break_even_batch"]
    long = by[("iid a=0.9", 16384)]
    assert long["max_batch_in_memory"] is not None and long["max_batch_in_memory"] < 64


def test_figures_and_markdown(result):
    html = sweep_html(result, "8B + 1B on H100")
    assert html.startswith("<!DOCTYPE html>") and html.count("plotly") > 2
    # the same sweep writes the same bytes (no random div ids)
    assert sweep_html(result, "8B + 1B on H100") == html
    md = sweep_markdown(result, "8B + 1B on H100", "gpusim spec-sweep ...")
    assert "## Where speculation stops paying" in md and "| ctx |" in md


def test_medusa_sweep_caps_k_at_heads(h100, models, stack):
    res = sweep(
        Platform(h100, stack, CAL),
        SpecOverhead(),
        models["llama-3.1-8b"],
        MedusaDraft(3),
        [IidAcceptance(0.7)],
        SweepGrid(batches=(1, 4), ctxs=(1024,), ks=(1, 2, 3, 4, 5)),
    )
    assert {r["k"] for r in res.rows} == {1, 2, 3}


@pytest.mark.parametrize(
    "kwargs,match", [({"batches": ()}, "batch"), ({"ks": (0,)}, "k=0"), ({"ctxs": (-1,)}, "ctx")]
)
def test_bad_grids(h100, models, stack, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sweep(
            Platform(h100, stack, CAL),
            SpecOverhead(),
            models["llama-3.1-8b"],
            MedusaDraft(3),
            [IidAcceptance(0.7)],
            SweepGrid(**kwargs),
        )


def test_a_written_figure_is_the_same_bytes_twice(tmp_path):
    from gpusim import report

    point = {
        "gpu": "g",
        "model": "m",
        "mode": "decode",
        "batch": 1,
        "ctx": 512,
        "q": 1,
        "launch": "graph",
        "measured_ms": 1.0,
        "predicted_ms": 1.1,
        "error": 0.1,
    }
    fig = report.scatter_figure([point], "t")
    report.write_html(fig, tmp_path / "a.html")
    report.write_html(fig, tmp_path / "b.html")
    assert (tmp_path / "a.html").read_bytes() == (tmp_path / "b.html").read_bytes()
