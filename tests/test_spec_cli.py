"""`gpusim spec`, `spec-sweep`, `spec-validate`: the JSON contract and the error paths
(one line on stderr, exit 2, nothing on stdout, no output file)."""

from __future__ import annotations

import csv
import io
import json

import pytest
from test_spec_validate import write_spec_csv

from gpusim.cli import main

BASE = ["spec", "--gpu", "h100-sxm", "--target", "llama-3.1-8b", "--calibration", "none",
        "--overhead", "none"]
CONTRACT = ("iteration_ms", "draft_step_ms", "verify_ms", "target_step_ms",
            "tokens_per_iteration", "ms_per_token", "speedup", "draft_kind",
            "host_round_trip_ms", "fits_in_memory")


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc: int, out: str, err: str) -> str:
    assert rc == 2, err
    assert out == ""
    assert err.startswith("gpusim: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("draft", ["llama-3.2-1b", "medusa:4", "eagle", "eagle:2", "ngram",
                                   "ngram:50"])
def test_json_contract(capsys, draft):
    rc, out, err = run(capsys, [*BASE, "--draft", draft, "--k", "4", "--batch", "8",
                                "--ctx", "4096", "--acceptance", "0.8", "--format", "json"])
    assert rc == 0, err
    rec = json.loads(out)
    for key in CONTRACT:
        assert key in rec, key
    assert rec["tokens_per_iteration"] == pytest.approx((1 - 0.8 ** 5) / 0.2)
    assert rec["ms_per_token"] == pytest.approx(rec["iteration_ms"] / rec["tokens_per_iteration"])
    assert rec["batch"] == 8 and rec["ctx"] == 4096 and rec["k"] == 4
    assert rec["fits_in_memory"] is True


def test_table_csv_tree_mc_and_timeline(capsys, tmp_path):
    rc, out, _ = run(capsys, [*BASE, "--draft", "llama-3.2-1b", "--format", "csv"])
    assert rc == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 1 and float(rows[0]["speedup"]) > 0
    rc, out, _ = run(capsys, [*BASE, "--draft", "llama-3.2-1b"])
    assert rc == 0 and "speedup" in out
    tl = tmp_path / "tl.html"
    rc, out, err = run(capsys, [*BASE, "--draft", "eagle", "--tree", "best:16:4",
                                "--acceptance", "ranked:0.6,0.2,0.1", "--mc-iterations", "200",
                                "--timeline", str(tl), "--format", "json"])
    assert rc == 0, err
    rec = json.loads(out)
    assert rec["verify_q"] <= 16 and rec["mc_agrees_4se"] is True
    assert tl.read_text().startswith("<html") or "plotly" in tl.read_text()


def test_histogram_acceptance(capsys, tmp_path):
    f = tmp_path / "acc.csv"
    f.write_text("accepted,count\n0,10\n1,10\n2,10\n3,10\n4,10\n")
    rc, out, err = run(capsys, [*BASE, "--draft", "llama-3.2-1b", "--k", "4",
                                "--acceptance", str(f), "--format", "json"])
    assert rc == 0, err
    assert json.loads(out)["tokens_per_iteration"] == pytest.approx(3.0)


def test_kv_overflow_is_refused_unless_ignore_memory(capsys):
    argv = [*BASE, "--draft", "llama-3.2-1b", "--batch", "256", "--ctx", "16384",
            "--format", "json"]
    err = one_line_error(*run(capsys, argv))
    assert "--batch" in err and "exceed the usable HBM" in err
    rc, out, err = run(capsys, [*argv, "--ignore-memory"])
    assert rc == 0 and "warning" in err
    assert json.loads(out)["fits_in_memory"] is False


@pytest.mark.parametrize("extra,needle", [
    (["--draft", "llama-3.2-1b", "--acceptance", "1.5"], "--acceptance"),
    (["--draft", "llama-3.2-1b", "--acceptance", "0.8,abc"], "--acceptance"),
    (["--draft", "medusa"], "--draft"),
    (["--draft", "medusa:99"], "--draft"),
    (["--draft", "eagle:x"], "--draft"),
    (["--draft", "no-such-model"], "unknown model"),
    (["--draft", "medusa:2", "--k", "3"], "--k"),
    (["--draft", "llama-3.2-1b", "--k", "0"], "--k"),
    (["--draft", "llama-3.2-1b", "--k", "2", "--tree", "2x2"], "--tree"),
    (["--draft", "llama-3.2-1b", "--tree", "2y2"], "--tree"),
    (["--draft", "llama-3.2-1b", "--tree", "2x2", "--acceptance", "0.9,0.8"], "--tree"),
    (["--draft", "llama-3.2-1b", "--batch", "0"], "batch"),
    (["--draft", "llama-3.2-1b", "--ctx", "-5"], "ctx"),
    (["--draft", "llama-3.2-1b", "--round-trip-us", "-1"], "--round-trip-us"),
    (["--draft", "llama-3.2-1b", "--overhead", "nope.yaml"], "--overhead"),
    (["--draft", "llama-3.2-1b", "--reserve-fraction", "1.0"], "--reserve-fraction"),
    (["--draft", "llama-3.2-1b", "--k", "x"], "--k"),
])
def test_spec_errors(capsys, extra, needle):
    err = one_line_error(*run(capsys, [*BASE, *extra]))
    assert needle in err


def test_histogram_file_error_names_line(capsys, tmp_path):
    f = tmp_path / "acc.csv"
    f.write_text("accepted,count\n0,10\n1,ten\n")
    err = one_line_error(*run(capsys, [*BASE, "--draft", "llama-3.2-1b",
                                       "--acceptance", str(f)]))
    assert f"{f}:3: count" in err
    f.write_text("accepted,count\n0,10\n1,10\n")
    err = one_line_error(*run(capsys, [*BASE, "--draft", "llama-3.2-1b", "--k", "4",
                                       "--acceptance", str(f)]))
    assert "k_max=1" in err


def test_weights_that_do_not_fit_exit_2(capsys):
    err = one_line_error(*run(capsys, ["spec", "--gpu", "l40s", "--target", "llama-3.1-70b",
                                       "--draft", "llama-3.1-8b", "--calibration", "none"]))
    assert "exceed the usable HBM" in err


def test_sweep_outputs(capsys, tmp_path):
    html, md, rows = tmp_path / "s.html", tmp_path / "s.md", tmp_path / "rows.csv"
    rc, out, err = run(capsys, ["spec-sweep", "--gpu", "h100-sxm", "--target", "llama-3.1-8b",
                                "--draft", "llama-3.2-1b", "--acceptance", "0.6",
                                "--acceptance", "0.9", "--batches", "1,16,256",
                                "--ctxs", "1024,16384", "--ks", "1-4", "--calibration",
                                "none", "--overhead", "none", "--format", "json",
                                "--html", str(html), "--md", str(md), "--out-csv", str(rows)])
    assert rc == 0, err
    doc = json.loads(out)
    assert len(doc["break_even"]) == 4 and len(doc["best"]) == 2 * 2 * 3
    assert "Where speculation stops paying" in md.read_text()
    assert "plotly" in html.read_text()
    assert len(list(csv.DictReader(rows.open()))) == 2 * 2 * 3 * 4


@pytest.mark.parametrize("extra,needle", [
    (["--batches", "1,x"], "--batches"), (["--ks", "0-3"], "--ks"),
    (["--acceptance", "2"], "--acceptance"), (["--max-batch", "0"], "--max-batch"),
])
def test_sweep_errors(capsys, tmp_path, extra, needle):
    html = tmp_path / "s.html"
    err = one_line_error(*run(capsys, ["spec-sweep", "--gpu", "h100-sxm", "--target",
                                       "llama-3.1-8b", "--draft", "llama-3.2-1b",
                                       "--calibration", "none", "--html", str(html), *extra]))
    assert needle in err
    assert not html.exists()


def test_spec_validate(capsys, tmp_path):
    write_spec_csv(tmp_path / "data" / "h100-sxm" / "spec.csv")
    report, points = tmp_path / "R.md", tmp_path / "p.csv"
    rc, out, err = run(capsys, ["spec-validate", "--data-dir", str(tmp_path / "data"),
                                "--report", str(report), "--points", str(points),
                                "--calibration", "none"])
    assert rc == 0, err
    assert "Fitted host round trip" in out and report.read_text() == out
    assert len(list(csv.DictReader(points.open()))) == 32


def test_spec_validate_errors(capsys, tmp_path):
    err = one_line_error(*run(capsys, ["spec-validate", "--data-dir", str(tmp_path),
                                       "--report", str(tmp_path / "R.md")]))
    assert "no <gpu>/spec.csv" in err
    f = tmp_path / "h100-sxm" / "spec.csv"
    write_spec_csv(f)
    f.write_text(f.read_text().replace(",graph,", ",graph,-3", 1))
    err = one_line_error(*run(capsys, ["spec-validate", "--data-dir", str(tmp_path),
                                       "--report", str(tmp_path / "R.md")]))
    assert f"{f}:2" in err
    write_spec_csv(f)
    err = one_line_error(*run(capsys, ["spec-validate", "--data-dir", str(tmp_path),
                                       "--fit-pair", "x", "--report", str(tmp_path / "R.md")]))
    assert "fit_pair='x'" in err
    assert not (tmp_path / "R.md").exists()
