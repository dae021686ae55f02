"""Issue 22 item 6: one CLI convention (same names across commands, format from the
extension, old spellings as hidden aliases), tables in human units, progress on
stderr, shipped files written only when asked, bounded token-tree search."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import pytest

from gpusim.cli import aliases, main, progress
from gpusim.report.tables import cell

SPEC = ["spec", "--gpu", "h100-sxm", "--draft", "llama-3.2-1b", "--k", "4", "--batch",
        "8", "--calibration", "none", "--overhead", "none", "--format", "json"]
SERVE = ["serve", "--gpu", "h100-sxm", "--model", "llama-3.1-8b", "--quiet", "--rate", "1",
         "--duration-s", "5", "--prompt-dist", "128", "--output-dist", "32", "--seed", "1"]


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def one_line(capsys, argv: list[str]) -> str:
    rc, _, err = run(capsys, argv)
    assert rc == 2, err
    assert err.startswith("gpusim: error: ") and err.count("\n") == 1, err
    return err


# --- names and aliases ----------------------------------------------------------------
def test_model_is_the_target_everywhere_and_target_still_works(capsys):
    new = run(capsys, [*SPEC, "--model", "llama-3.1-8b"])
    old = run(capsys, [*SPEC, "--target", "llama-3.1-8b"])
    eq = run(capsys, [*SPEC, "--target=llama-3.1-8b"])
    assert new[0] == old[0] == eq[0] == 0, new[2] + old[2]
    assert json.loads(new[1]) == json.loads(old[1]) == json.loads(eq[1])


@pytest.mark.parametrize("command, hidden", [
    ("spec", "--target"), ("spec-sweep", "--md"), ("serve", "--spec-draft"),
    ("serve", "--out-json"), ("plan", "--out-csv"), ("validate", "--data-dir"),
    ("spec-validate", "--points")])
def test_old_spellings_are_hidden_from_help(capsys, command, hidden):
    rc, out, _ = run(capsys, [command, "--help"])
    assert rc == 0 and hidden not in out


def test_errors_name_the_option_as_the_user_spelled_it(capsys):
    assert "--k" in one_line(capsys, [*SERVE, "--draft", "llama-3.2-1b", "--k", "zero"])
    err = one_line(capsys, [*SERVE, "--draft", "llama-3.2-1b", "--k", "zero"])
    assert "--spec-k" not in err
    assert "--spec-k" in one_line(capsys, [*SERVE, "--spec-draft", "llama-3.2-1b",
                                           "--spec-k", "zero"])
    err = one_line(capsys, [*SPEC, "--model", "no-such-model"])
    assert "--model" in err and "--target" not in err
    assert "--target" in one_line(capsys, [*SPEC, "--target", "no-such-model"])


def test_rewrite_stops_at_double_dash_and_keeps_other_commands():
    assert aliases.rewrite(["spec", "--target", "m", "--", "--target"]) == [
        "spec", "--model", "m", "--", "--target"]
    assert aliases.rewrite(["predict", "--target", "m"]) == ["predict", "--target", "m"]


def test_serve_out_by_extension_matches_the_old_options(capsys, tmp_path: Path):
    a, b, c, d = (tmp_path / n for n in ("a.json", "a.csv", "old.json", "old.csv"))
    assert main([*SERVE, "--out", str(a), "--out", str(b), "--format", "json"]) == 0
    assert main([*SERVE, "--out-json", str(c), "--out-csv", str(d), "--format",
                 "json"]) == 0
    capsys.readouterr()
    assert json.loads(a.read_text()) == json.loads(c.read_text())
    assert b.read_text() == d.read_text()
    assert "two json outputs" in one_line(capsys, [*SERVE, "--out", str(a), "--out-json",
                                                   str(c)])


def test_predict_in_honours_out_extension_format_and_refuses_timeline(capsys,
                                                                     tmp_path: Path):
    rows = tmp_path / "rows.csv"
    rows.write_text("model,mode,batch,ctx,q\nllama-3.1-8b,decode,8,1024,1\n"
                    "llama-3.1-8b,prefill,1,0,512\n")
    base = ["predict", "--gpu", "h100-sxm", "--in", str(rows), "--calibration", "none"]
    out = tmp_path / "p.json"
    assert main([*base, "--out", str(out)]) == 0
    records = json.loads(out.read_text())
    assert [r["mode"] for r in records] == ["decode", "prefill"]
    assert all(r["predicted_ms"] > 0 for r in records)
    capsys.readouterr()
    rc, text, _ = run(capsys, [*base, "--format", "csv"])
    assert rc == 0
    got = list(csv.DictReader(io.StringIO(text)))
    assert [float(r["predicted_ms"]) for r in got] == pytest.approx(
        [r["predicted_ms"] for r in records])
    assert "--timeline" in one_line(capsys, [*base, "--timeline", str(tmp_path / "t.html")])
    assert "--out" in one_line(capsys, [*base, "--out", str(tmp_path / "p.html")])
    assert not (tmp_path / "p.html").exists()


@pytest.mark.parametrize("extra, option", [
    # --in: the rows give every shape, and a row beyond memory is refused at its line
    (["--in", "ROWS", "--batch", "8"], "--batch"),
    (["--in", "ROWS", "--ctx", "8", "--mode", "verify"], "--mode"),
    (["--in", "ROWS", "--cache-len", "4096"], "--cache-len"),
    (["--in", "ROWS", "--ignore-memory"], "--ignore-memory"),
    # --crossover: decode batches 1-256 at --ctx, nothing else of a shape
    (["--model", "llama-3.2-1b", "--crossover", "torch-fused", "--batch", "4"], "--batch"),
    (["--model", "llama-3.2-1b", "--crossover", "torch-fused", "--q", "4"], "--q"),
    (["--model", "llama-3.2-1b", "--crossover", "torch-fused", "--timeline", "t.html"],
     "--timeline"),
])
def test_predict_refuses_an_option_it_would_ignore(capsys, tmp_path: Path, extra: list[str],
                                                   option: str):
    rows = tmp_path / "rows.csv"
    rows.write_text("model,mode,batch,ctx,q\nllama-3.2-1b,decode,8,1024,1\n")
    argv = ["predict", "--gpu", "h100-sxm", "--calibration", "none",
            *[str(rows) if a == "ROWS" else str(tmp_path / a) if a == "t.html" else a
              for a in extra]]
    err = one_line(capsys, argv)
    assert f"error: {option}:" in err
    assert "give no" in err or "refused at its line" in err
    assert not (tmp_path / "t.html").exists()


def test_spec_sweep_out_and_report(capsys, tmp_path: Path):
    base = ["spec-sweep", "--gpu", "h100-sxm", "--model", "llama-3.1-8b", "--draft",
            "llama-3.2-1b", "--batches", "1,8", "--ctxs", "1024", "--ks", "1-2",
            "--calibration", "none", "--quiet", "--format", "json"]
    assert main([*base, "--out", str(tmp_path / "r.json"),
                 "--md", str(tmp_path / "r.md")]) == 0
    assert main([*base, "--out-csv", str(tmp_path / "r.csv")]) == 0
    rows = json.loads((tmp_path / "r.json").read_text())
    assert len(rows) == len(list(csv.DictReader((tmp_path / "r.csv").open())))
    assert (tmp_path / "r.md").read_text().startswith("#")


# --- shipped files only when asked ----------------------------------------------------
def test_calibrate_needs_an_explicit_output(capsys, tmp_path: Path):
    from gpusim.io import calibrations

    shipped = calibrations.CALIBRATIONS_DIR / "h100-sxm.yaml"
    before = shipped.stat().st_mtime_ns
    err = one_line(capsys, ["calibrate", "--gpu", "h100-sxm"])
    assert "--out" in err and "--write-shipped" in err
    assert "not both" in one_line(capsys, ["calibrate", "--gpu", "h100-sxm", "--out",
                                           str(tmp_path / "c.yaml"), "--write-shipped"])
    assert "yaml" in one_line(capsys, ["calibrate", "--gpu", "h100-sxm", "--out",
                                       str(tmp_path / "c.json")])
    assert shipped.stat().st_mtime_ns == before


def test_validate_refuses_report_with_write_shipped(capsys, tmp_path: Path):
    for command in ("validate", "spec-validate", "collectives-validate"):
        err = one_line(capsys, [command, "--report", str(tmp_path / "r.md"),
                                "--write-shipped"])
        assert "not both" in err


def test_collectives_validate_prints_without_report_from_any_directory(
        capsys, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run(capsys, ["collectives-validate"])
    assert rc == 0, err
    assert out.startswith("#") and not list(tmp_path.iterdir())


# --- tables in human units ------------------------------------------------------------
@pytest.mark.parametrize("column, value, shown", [
    ("ms", 0.00307, "0.00307"), ("step_ms", 2.04e6, "2,040,000"), ("share", 3.04e-4,
                                                                     "0.0304%"),
    ("bytes", 131072.0, "131 kB"), ("kv_bytes", 5.4e15, "5,400 TB"), ("x", None, "-"),
    ("x", float("nan"), "-"), ("bandwidth_fraction", 0.83, "83.0%"), ("batch", 8, "8"),
    ("x", 131072.0, "131072"), ("TTFT p50 err", -0.0312, "-3.12%"),
    ("hbm_tb_per_s", 3.35, "3.35")])
def test_cells_are_in_human_units(column, value, shown):
    assert cell(column, value) == shown


def test_list_gpus_gives_gib(capsys):
    rc, out, _ = run(capsys, ["list", "gpus", "--format", "json"])
    h100 = next(r for r in json.loads(out) if r["name"] == "h100-sxm")
    assert rc == 0 and h100["hbm_gib"] == pytest.approx(80.0)


def test_label_columns_are_left_aligned():
    from gpusim.report import rich_table

    t = rich_table("t", [{"op": "a", "ms": 1.0}], ["op", "ms"])
    assert [c.justify for c in t.columns] == ["left", "right"]


# --- progress and bounds --------------------------------------------------------------
def test_working_says_so_on_stderr_unless_quiet(capsys, monkeypatch):
    monkeypatch.setattr(progress, "FIRST_REPORT_S", 0.01)
    with progress.working("demo"):
        time.sleep(0.2)
    assert "gpusim: demo: working" in capsys.readouterr().err
    with progress.working("demo", quiet=True):
        time.sleep(0.05)
    assert capsys.readouterr().err == ""


def test_spec_validate_shows_progress_unless_quiet(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(progress, "FIRST_REPORT_S", 0.01)
    rc, _, err = run(capsys, ["spec-validate", "--report", str(tmp_path / "a.md")])
    assert rc == 0 and "gpusim: spec-validate h100-sxm: working" in err
    rc, _, err = run(capsys, ["spec-validate", "--quiet", "--report", str(tmp_path / "b.md")])
    assert rc == 0 and "working" not in err and "rows" not in err
    assert (tmp_path / "a.md").read_text() == (tmp_path / "b.md").read_text()


def test_huge_best_tree_is_refused_quickly(capsys):
    start = time.monotonic()
    err = one_line(capsys, ["spec", "--gpu", "h100-sxm", "--model", "llama-3.1-8b",
                            "--draft", "llama-3.2-1b", "--tree", "best:1024",
                            "--acceptance", "0.97", "--calibration", "none", "--quiet"])
    assert "--tree" in err and "best:1024:" in err
    assert time.monotonic() - start < 60
