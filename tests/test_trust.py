"""Error bands and the measured envelope (issue 22 item 5): bands computed from held-out
errors, the out-of-envelope warning per dimension, predict's JSON and CSV fields, and
old calibration files without a trust section."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpusim.calibration.bands import (
    FLOOR_PCT,
    MARGIN,
    bands_of,
    covered,
    envelope_of,
    merged,
    nested_coverage,
    section,
    trust_of,
    with_trust,
)
from gpusim.calibration.measurements import StepData
from gpusim.cli import main
from gpusim.cost.trust import NO_TRUST, Trust, assess, assess_columns
from gpusim.io import calibrations, loader

SHIPPED = calibrations.CALIBRATIONS_DIR / "h100-sxm.yaml"


def _data(errors: list[float], batches: list[int], models: list[str] | None = None,
          mode: str = "decode") -> tuple[StepData, np.ndarray]:
    n = len(errors)
    meas = np.full(n, 1e-3)
    models = models or ["llama-3.2-1b"] * n
    data = StepData(np.array(models), np.array([mode] * n), np.array(batches, float),
                    np.full(n, 1024.0), np.ones(n), np.array(["graph"] * n), meas, "test")
    return data, meas * (1.0 + np.array(errors))


def test_a_band_is_the_quantile_of_held_out_errors_per_batch_range():
    # batch 1-4: errors 0..9% (10 rows); batch 5-32: 3 rows (too few: pooled with all)
    errs = [i / 100 for i in range(10)] + [-0.20, 0.0, 0.0]
    data, pred = _data(errs, [1] * 10 + [8] * 3)
    bands = {(b.batch_min, b.batch_max): b for b in bands_of(data, pred, "torch-hf", 0.9)}
    assert bands[(1, 4)].error_pct == pytest.approx(
        100 * MARGIN * np.quantile(np.arange(10) / 100, 0.9), abs=0.01)
    assert bands[(1, 4)].rows == 10
    assert bands[(5, 32)].rows == 13     # pooled
    assert bands[(5, 32)].error_pct == pytest.approx(
        100 * MARGIN * np.quantile(np.abs(errs), 0.9), abs=0.01)
    assert (33, 256) not in bands        # no rows: no band
    # a perfect fit still gets the floor
    data, pred = _data([0.0] * 10, [1] * 10)
    assert bands_of(data, pred, "torch-hf")[0].error_pct == FLOOR_PCT


def _trust() -> Trust:
    data, pred = _data([0.01, -0.02, 0.03] * 4, [1, 8, 64] * 4,
                       ["llama-3.2-1b", "llama-3.1-8b"] * 6)
    return trust_of(data, pred, "h100-sxm", "torch-hf", loader.load_model)


def _assess(trust, **kw):
    shape = dict(gpu="h100-sxm", stack="torch-hf", launch="graph", mode="decode",
                 batch=8, ctx=1024, q=1,
                 model_params=loader.load_model("llama-3.2-3b").param_count)
    return assess(trust, **{**shape, **kw})


def test_inside_the_envelope_is_ok_with_a_band():
    a = _assess(_trust())
    assert a.outside == () and a.envelope == "ok" and a.band_pct is not None
    lo, hi = a.interval_ms(10.0)
    assert lo == pytest.approx(10 / (1 + a.band_pct / 100))
    assert hi == pytest.approx(10 / (1 - a.band_pct / 100))


@pytest.mark.parametrize(("change", "word"), [
    ({"batch": 512}, "batch 512 > 64"), ({"ctx": 100000}, "ctx 100000 > 1024"),
    ({"q": 8}, "q 8 > 1"), ({"gpu": "h200"}, "gpu h200"), ({"stack": "vllm"}, "stack vllm"),
    ({"mode": "prefill"}, "mode prefill"),
    ({"model_params": 70e9}, "model params"),
])
def test_outside_the_envelope_names_the_dimension(change, word):
    a = _assess(_trust(), **change)
    assert a.envelope.startswith("outside: ") and word in a.envelope


def test_no_trust_section_means_no_band_never_an_error():
    a = _assess(None)
    assert a.band_pct is None and a.envelope == "unknown" and a.no_band == NO_TRUST
    assert a.as_dict(5.0)["band_low_ms"] is None


def test_coverage_and_nested_coverage():
    rng = np.random.default_rng(0)
    errs = list(rng.normal(0, 0.03, 60))
    models = ["llama-3.2-1b", "llama-3.1-8b", "llama-3.2-3b"] * 20
    data, pred = _data(errs, [1, 4, 16, 64] * 15, models)
    trust = trust_of(data, pred, "h100-sxm", "torch-hf", loader.load_model)
    within, inside = covered(trust, data, pred, "h100-sxm", "torch-hf", loader.load_model)
    assert inside.all() and within.mean() >= 0.9
    nested = nested_coverage(data, pred, "h100-sxm", "torch-hf", loader.load_model)
    assert 0.7 <= nested.mean() <= 1.0
    md = section([{"gpu": "h100-sxm", "rows": "LOMO, band from the other models",
                   "launch": "graph", "mode": "decode", "n": 60,
                   "covered": float(nested.mean())}])
    assert "## Error bands" in md and "h100-sxm" in md


def test_merged_stacks_and_envelope_of_other_stack():
    a = _trust()
    data, pred = _data([0.05] * 10, [1] * 10)
    b = Trust(quantile=0.95, bands=bands_of(data, pred, "hf-transformers"),
              envelope=envelope_of(data, "h100-sxm", "hf-transformers", loader.load_model))
    m = merged([a, b])
    assert m.envelope.stacks == ("torch-hf", "hf-transformers")
    got = _assess(m, stack="hf-transformers", batch=1)
    assert got.outside == () and got.band_pct == pytest.approx(5.0 * MARGIN)
    assert "batch 8 > 1" in _assess(m, stack="hf-transformers").envelope


def test_with_trust_leaves_every_other_line_alone():
    text = SHIPPED.read_text()
    plain = with_trust(text, None)
    added = with_trust(plain, _trust())
    assert added.startswith(plain) and "\ntrust:\n" in added
    again = with_trust(added, _trust())
    assert again == added
    assert with_trust(added, None) == plain


def _cal_file(tmp_path, trust):
    path = tmp_path / "cal.yaml"
    path.write_text(with_trust(SHIPPED.read_text(), trust))
    return path


def test_old_calibration_without_trust_loads(tmp_path):
    path = _cal_file(tmp_path, None)
    gpu, stack = loader.load_gpu("h100-sxm"), loader.load_stack("torch-hf")
    assert calibrations.load_calibration(str(path), gpu, stack).trust is None
    path2 = _cal_file(tmp_path, _trust())
    assert calibrations.load_calibration(str(path2), gpu, stack).trust == _trust()


def test_predict_json_and_csv_carry_band_and_envelope(tmp_path, capsys):
    cal = _cal_file(tmp_path, _trust())
    args = ["predict", "--gpu", "h100-sxm", "--calibration", str(cal), "--stack", "torch-hf"]
    assert main([*args, "--model", "llama-3.2-3b", "--batch", "8", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["envelope"] == "ok" and out["band_pct"] > 0
    assert out["band_low_ms"] < out["step_ms"] < out["band_high_ms"]
    # a table outside the envelope: the warning on stderr
    assert main([*args, "--model", "llama-3.2-3b", "--batch", "512"]) == 0
    err = capsys.readouterr().err
    assert "warning: outside: batch 512 > 64" in err
    rows = tmp_path / "rows.csv"
    rows.write_text("model,mode,batch,ctx,q\nllama-3.2-3b,decode,8,1024,1\n"
                    "llama-3.2-3b,decode,512,1024,1\n")
    preds = tmp_path / "preds.csv"
    assert main([*args, "--in", str(rows), "--out", str(preds)]) == 0
    with preds.open(newline="") as fh:
        got = list(csv.DictReader(fh))
    header = list(got[0])
    assert header[-4:] == ["band_pct", "band_low_ms", "band_high_ms", "envelope"]
    assert got[0]["envelope"] == "ok" and float(got[0]["band_pct"]) > 0
    assert got[1]["envelope"].startswith("outside: batch 512")
    # no trust section: blank band, envelope unknown
    assert main(["predict", "--gpu", "h100-sxm", "--calibration", str(_cal_file(tmp_path, None)),
                 "--stack", "torch-hf", "--in", str(rows), "--out", str(preds)]) == 0
    with preds.open(newline="") as fh:
        got = list(csv.DictReader(fh))
    assert got[0]["band_pct"] == "" and got[0]["envelope"] == "unknown"


_SHAPES = st.lists(st.tuples(st.integers(1, 600),
                             st.one_of(st.integers(0, 140000), st.floats(0, 3e6)),
                             st.integers(1, 20),
                             st.floats(0.01, 1e3)), min_size=1, max_size=30)


@settings(max_examples=60, deadline=None)
@given(shapes=_SHAPES, trusted=st.booleans(), mode=st.sampled_from(["decode", "prefill"]),
       stack=st.sampled_from(["torch-hf", "vllm"]), wide=st.booleans())
def test_trust_columns_equal_the_per_shape_assessments(shapes, trusted, mode, stack, wide):
    # the rows path's vectorised band and envelope columns must say what assess says
    # of each shape, inside and outside the envelope, with and without bands
    trust = _trust() if trusted else None
    if trusted and wide:  # a band of 100% or more has no upper bound
        trust = trust.model_copy(update={"bands": tuple(
            b.model_copy(update={"error_pct": 150.0}) for b in trust.bands)})
    b, c, q, ms = (np.array(x, float) for x in zip(*shapes, strict=True))
    kw = dict(gpu="h100-sxm", stack=stack, launch="graph", mode=mode,
              model_params=loader.load_model("llama-3.2-3b").param_count)
    cols = assess_columns(trust, batch=b, ctx=c, q=q, predicted_ms=ms, **kw)
    for i in range(len(b)):
        a = assess(trust, batch=float(b[i]), ctx=float(c[i]), q=float(q[i]), **kw)
        d = a.as_dict(float(ms[i]))
        assert cols.envelope[i] == d["envelope"]
        for k in ("band_pct", "band_low_ms", "band_high_ms"):
            got = getattr(cols, k)[i]
            assert (np.isnan(got) if d[k] is None else got == pytest.approx(d[k]))
