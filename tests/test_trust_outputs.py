"""Trust (error band, envelope check) of the outputs made of many steps: ``spec``,
``spec-sweep``, ``serve`` (``plan``'s winner: tests/test_plan.py). Fields present, a
shape outside the envelope warned, a calibration without bands -> ``unknown``."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from gpusim.cli import main
from gpusim.cost.trust import NO_TRUST, Assessment, combined, ratio_band_pct
from gpusim.io import calibrations, loader
from gpusim.platform import Platform
from gpusim.report import trust_outputs
from gpusim.serving.shapes import StepShape, StepShapes, bin_top, binned

SPEC = ["spec", "--gpu", "h100-sxm", "--model", "llama-3.1-8b", "--draft", "llama-3.2-1b",
        "--acceptance", "0.8", "--quiet"]
SWEEP = ["spec-sweep", "--gpu", "h100-sxm", "--model", "llama-3.1-8b", "--draft",
         "llama-3.2-1b", "--batches", "1,128", "--ctxs", "1024,32768", "--ks", "1-2",
         "--quiet"]
SERVE = ["serve", "--gpu", "h100-sxm", "--model", "llama-3.1-8b", "--scenario",
         str(loader.ROOT / "workloads" / "scenarios" / "chat-poisson.yaml"),
         "--duration-s", "5", "--seed", "1", "--quiet"]
SPEC_FIELDS = ("band_pct", "band_low_ms", "band_high_ms", "speedup_band_pct",
               "speedup_low", "speedup_high", "envelope")
SERVE_FIELDS = ("band_pct", "band_weighting", "banded_time_fraction",
                "outside_step_fraction", "outside_time_fraction", "outside", "envelope",
                "no_band", "shapes", "steps")


def run(capsys, argv: list[str]) -> tuple[str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 0, err
    return out, err


# --- combining steps ---------------------------------------------------------------
def test_combined_band_is_the_time_weighted_mean_and_outside_the_union():
    a = Assessment(10.0, ("ctx 5000 > 4096",))
    b = Assessment(2.0, ())
    c = combined([("draft", a, 1.0), ("draft", Assessment(10.0, ("ctx 5001 > 4096",)), 1.0),
                  ("verify", b, 2.0)])
    assert c.band_pct == pytest.approx((10 + 10 + 2 * 2) / 4)
    assert c.outside == ("draft: ctx 5000 > 4096",)      # once per step and dimension
    none = combined([("verify", Assessment(None, (), "no band for x"), 1.0), ("d", a, 1.0)])
    assert none.band_pct is None and none.no_band == "verify: no band for x"
    assert combined([("", Assessment(None, (), NO_TRUST), 1.0)]).envelope == "unknown"
    with pytest.raises(ValueError):
        combined([])
    with pytest.raises(ValueError):
        combined([("x", b, -1.0)])


def test_ratio_band_is_the_worst_case_of_two_bands():
    assert ratio_band_pct(5.0, 5.0) == pytest.approx(100 * (1.05 / 0.95 - 1))
    assert ratio_band_pct(0.0, 0.0) == 0.0
    assert ratio_band_pct(None, 5.0) is None and ratio_band_pct(5.0, None) is None
    assert ratio_band_pct(5.0, 100.0) == math.inf


# --- spec and spec-sweep -----------------------------------------------------------
def test_spec_json_has_the_trust_fields_inside_the_envelope(capsys):
    out, _ = run(capsys, [*SPEC, "--k", "3", "--batch", "8", "--ctx", "2048",
                          "--stack", "torch-hf", "--format", "json"])
    rec = json.loads(out)
    assert all(f in rec for f in SPEC_FIELDS)
    assert rec["envelope"] == "ok"
    assert rec["band_low_ms"] < rec["iteration_ms"] < rec["band_high_ms"]
    assert rec["speedup_band_pct"] > rec["band_pct"] > 0
    assert rec["speedup_low"] < rec["speedup"] < rec["speedup_high"]


def test_spec_outside_the_envelope_is_warned(capsys):
    out, err = run(capsys, [*SPEC, "--k", "4", "--batch", "128", "--ctx", "32768",
                            "--stack", "torch-hf", "--format", "json", "--ignore-memory"])
    env = json.loads(out)["envelope"]
    assert env.startswith("outside: ")
    for part in ("draft llama-3.2-1b: ctx", "verify: batch 128 > 64", "target decode: ctx"):
        assert part in env
    _, err = run(capsys, [*SPEC, "--k", "4", "--batch", "128", "--ctx", "32768",
                          "--stack", "torch-hf", "--ignore-memory"])
    assert "gpusim: warning: the iteration: outside: " in err


def test_spec_without_bands_is_unknown(capsys):
    out, _ = run(capsys, [*SPEC, "--k", "3", "--batch", "8", "--calibration", "none",
                          "--format", "json"])
    rec = json.loads(out)
    assert rec["envelope"] == "unknown" and rec["band_pct"] is None
    assert rec["speedup_band_pct"] is None and rec["no_band"] == NO_TRUST
    _, err = run(capsys, [*SPEC, "--k", "3", "--batch", "8", "--calibration", "none"])
    assert "no error band" in err


def test_spec_sweep_csv_appends_the_trust_columns(capsys, tmp_path):
    path = tmp_path / "rows.csv"
    _, err = run(capsys, [*SWEEP, "--stack", "torch-hf", "--out", str(path)])
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert list(rows[0])[-3:] == list(trust_outputs.SWEEP_COLUMNS)
    assert all(r["band_pct"] for r in rows)
    big = [r for r in rows if r["batch"] == "128" and r["ctx"] == "32768"]
    assert big and all(r["envelope"].startswith("outside: ") for r in big)
    _, err = run(capsys, [*SWEEP, "--stack", "torch-hf"])
    assert "rows lie outside what the calibration was measured on" in err


def test_spec_sweep_without_bands(capsys):
    out, _ = run(capsys, [*SWEEP, "--calibration", "none", "--out", "-", "--format",
                          "json"])
    rows = json.loads(out)
    assert all(r["band_pct"] is None and r["envelope"] == "unknown" for r in rows)


# --- serve ---------------------------------------------------------------------------
def test_serve_json_and_csv_carry_the_trust_object(capsys):
    out, _ = run(capsys, [*SERVE, "--format", "json"])
    trust = json.loads(out)["trust"]
    assert all(f in trust for f in SERVE_FIELDS)
    assert 0 < trust["band_pct"] < 50
    assert 0 <= trust["outside_step_fraction"] <= 1
    assert all(0 < f <= 1 for f in trust["outside"].values())
    out, _ = run(capsys, [*SERVE, "--format", "csv"])
    metrics = {r["metric"] for r in csv.DictReader(io.StringIO(out))}
    assert {"trust.band_pct", "trust.envelope", "trust.outside_step_fraction",
            "trust.outside.decode: ctx < 1024"} <= metrics


def test_serve_outside_the_envelope_is_warned(capsys):
    # chat's contexts are mostly below torch-compile's measured decode contexts
    _, err = run(capsys, SERVE)
    line = [x for x in err.splitlines() if "of the simulated steps" in x]
    assert len(line) == 1 and "decode: ctx < 1024" in line[0]
    assert "mixed prefill+decode step" in line[0] or "mixed" in line[0]


def test_serve_without_bands_is_unknown(capsys):
    out, _ = run(capsys, [*SERVE, "--calibration", "none", "--format", "json"])
    trust = json.loads(out)["trust"]
    assert trust["envelope"] == "unknown" and trust["band_pct"] is None
    assert trust["no_band"] == NO_TRUST and trust["outside_step_fraction"] == 0
    _, err = run(capsys, [*SERVE, "--calibration", "none"])
    assert "no error band for the run" in err


def test_serve_speculative_steps_are_assessed_as_iterations(capsys):
    out, _ = run(capsys, [*SERVE, "--spec-draft", "llama-3.2-1b", "--spec-k", "3",
                          "--spec-acceptance", "0.8", "--format", "json"])
    trust = json.loads(out)["trust"]
    assert trust["band_pct"] is not None
    assert any(d.startswith(("draft llama-3.2-1b", "verify")) for d in trust["outside"])


# --- the step-shape tally ------------------------------------------------------------
def test_bins_keep_powers_of_two_as_edges():
    for x in (0, 1, 3, 4, 5, 6, 7, 255, 256, 1023, 1024, 1500, 4096, 5000):
        lo = binned(x)
        assert lo <= x <= bin_top(lo) and binned(bin_top(lo)) == lo
    assert binned(1024) == 1024 and bin_top(binned(1023)) == 1023


def test_tally_and_mixed_steps():
    shapes = StepShapes()
    shapes.add(8, 8 * 2000, [], None, 0.01)
    shapes.add(8, 8 * 2001, [], None, 0.01)
    shapes.add(8, 8 * 2000, [(None, 0, 512)], None, 0.05)
    assert shapes.steps == 3 and len(shapes) == 2
    g = loader.load_gpu("h100-sxm")
    st = loader.load_stack("torch-hf")
    plat = Platform(g, st, calibrations.load_calibration("auto", g, st))
    model = loader.load_model("llama-3.1-8b")
    trust = trust_outputs.serving_trust(plat, model, shapes)
    assert trust["steps"] == 3
    assert trust["outside_step_fraction"] == pytest.approx(1 / 3)
    assert next(iter(trust["outside"])) == trust_outputs.MIXED
    mixed = trust_outputs.shape_trust(plat, model, StepShape(8, 1536, 1, 512, 0, 0))
    dec = trust_outputs.shape_trust(plat, model, StepShape(8, 1536, 0, 0, 0, 0))
    assert mixed.band_pct >= dec.band_pct and not dec.outside
