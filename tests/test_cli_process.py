"""The process around every command: Ctrl-C exits 130 with one line, outputs are
written atomically through symlinks (never replacing them), ``-`` is standard output,
every output path is checked before the work starts, and a run writes all its outputs
or none."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli

from gpusim import report
from gpusim.errors import ConfigError
from gpusim.io import loader

ROWS = "model,mode,batch,ctx,q\nllama-3.1-8b,decode,1,1024,1\nllama-3.2-1b,decode,4,512,1\n"
SERVE = ["serve", "--gpu", "h100-sxm", "--model", "llama-3.2-1b", "--quiet", "--rate", "2",
         "--prompt-dist", "128", "--output-dist", "16", "--duration-s", "3", "--seed", "1"]
ENV = {**os.environ, "PYTHONPATH": str(loader.ROOT)}


def one_line_error(rc: int, out: str, err: str) -> str:
    assert rc == 2, f"exit code {rc}, stderr {err!r}"
    assert out == ""
    assert err.startswith("gpusim: error: ") and err.count("\n") == 1, err
    return err.rstrip("\n")


def rows_file(tmp: Path) -> Path:
    path = tmp / "rows.csv"
    path.write_text(ROWS, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------
# Ctrl-C
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("delay_s", [0.4, 3.0])  # while loading; mid-simulation
def test_ctrl_c_exits_130_with_one_line(tmp_path: Path, delay_s: float) -> None:
    out_json = tmp_path / "o.json"
    argv = [sys.executable, "-m", "gpusim.cli", "serve", "--gpu", "h100-sxm", "--model",
            "llama-3.1-8b", "--rate", "20", "--duration-s", "20000", "--prompt-dist", "512",
            "--output-dist", "128", "--quiet", "--out-json", str(out_json)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path, env=ENV)
    time.sleep(delay_s)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err == "gpusim: interrupted\n"
    assert out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no output, no temp file


# ----------------------------------------------------------------------------------
# symlinks, descriptors and "-"
# ----------------------------------------------------------------------------------
def test_output_through_symlink_keeps_the_link(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    elsewhere = tmp_path / "data"
    elsewhere.mkdir()
    real = elsewhere / "preds.csv"
    real.write_text("old\n", encoding="utf-8")
    real.chmod(0o640)
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    rc, _out, err = run_cli(capsys, ["predict", "--gpu", "h100-sxm", "--in",
                                    str(rows_file(tmp_path)), "--out", str(link)])
    assert rc == 0, err
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text(encoding="utf-8").startswith("model,mode,batch,ctx,q,predicted_ms")
    assert real.stat().st_mode & 0o777 == 0o640          # the file keeps its permissions
    assert sorted(p.name for p in elsewhere.iterdir()) == ["preds.csv"]  # no temp file
    assert "wrote 2 predictions to" in err


def test_dangling_symlink_creates_its_target(tmp_path: Path) -> None:
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "target.json")
    report.write_atomic(link, "{}\n")
    assert link.is_symlink()
    assert (tmp_path / "target.json").read_text(encoding="utf-8") == "{}\n"


def test_symlink_chain_is_followed(tmp_path: Path) -> None:
    real = tmp_path / "real.txt"
    real.write_text("old", encoding="utf-8")
    (tmp_path / "a").symlink_to(real)
    (tmp_path / "b").symlink_to(tmp_path / "a")
    report.write_atomic(tmp_path / "b", "new")
    assert (tmp_path / "a").is_symlink() and (tmp_path / "b").is_symlink()
    assert real.read_text(encoding="utf-8") == "new"


def test_dash_means_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rows = rows_file(tmp_path)
    rc, out, err = run_cli(capsys, ["predict", "--gpu", "h100-sxm", "--in", str(rows),
                                    "--out", "-"])
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("model,mode,batch,ctx,q,predicted_ms") and len(lines) == 3
    assert not (tmp_path / "-").exists()
    assert "to standard output" in err


def test_serve_json_to_stdout_prints_only_the_json(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    monkeypatch.chdir(tmp_path)
    csv_path = tmp_path / "s.csv"
    rc, out, err = run_cli(capsys, [*SERVE, "--out-json", "-", "--out-csv", str(csv_path)])
    assert rc == 0, err
    assert "requests" in json.loads(out) or json.loads(out)  # one JSON document, no table
    assert csv_path.is_file() and not (tmp_path / "-").exists()


def test_two_outputs_to_stdout_refused(capsys: pytest.CaptureFixture[str]) -> None:
    msg = one_line_error(*run_cli(capsys, [*SERVE, "--out-json", "-", "--out-csv", "-"]))
    assert "--out-csv" in msg and "--out-json" in msg


def test_two_options_one_file_refused(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    same = tmp_path / "x.out"
    msg = one_line_error(*run_cli(capsys, [*SERVE, "--out-json", str(same), "--out-csv",
                                           str(tmp_path / "." / "x.out")]))
    assert "own file" in msg
    assert list(tmp_path.iterdir()) == []


def test_dev_stdout_is_written_in_place(tmp_path: Path) -> None:
    """``--out /dev/stdout`` writes into the descriptor (a pipe here), never replacing
    /dev/stdout (as root, a rename would have replaced the container's /dev/stdout)."""
    rows = rows_file(tmp_path)
    before = os.lstat("/dev/stdout")
    proc = subprocess.run([sys.executable, "-m", "gpusim.cli", "predict", "--gpu",
                           "h100-sxm", "--in", str(rows), "--out", "/dev/stdout"],
                          capture_output=True, text=True, timeout=120, env=ENV, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("model,mode,batch,ctx,q,predicted_ms")
    after = os.lstat("/dev/stdout")
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)


# ----------------------------------------------------------------------------------
# outputs checked before work starts
# ----------------------------------------------------------------------------------
def _no_work(*_args: object, **_kw: object) -> None:
    raise AssertionError("the work started before the outputs were checked")


@pytest.mark.parametrize("flag", ["--out-json", "--out-csv", "--html"])
def test_serve_bad_output_refused_before_simulating(
        flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from gpusim import serving

    monkeypatch.setattr(serving, "simulate", _no_work)
    monkeypatch.setattr(serving, "build_engine", _no_work)
    path = tmp_path / "no-such-dir" / "out.file"
    msg = one_line_error(*run_cli(capsys, [*SERVE, flag, str(path)]))
    assert msg.startswith(f"gpusim: error: {path}: {flag}: cannot write: directory "), msg


def test_predict_output_is_a_directory_refused_before_predicting(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import gpusim.cli.predict as predict_cli

    monkeypatch.setattr(predict_cli, "setup", _no_work)
    msg = one_line_error(*run_cli(capsys, ["predict", "--gpu", "h100-sxm", "--in",
                                           str(rows_file(tmp_path)), "--out", str(tmp_path)]))
    assert "is a directory" in msg and "--out" in msg


@pytest.mark.parametrize("argv", [
    ["validate", "--report", "{tmp}"],
    ["validate", "--points", "{tmp}/missing/p.csv"],
    ["spec-validate", "--report", "{tmp}/missing/r.md"],
    ["calibrate", "--gpu", "h100-sxm", "--out", "{tmp}/missing/c.yaml"],
    ["spec", "--gpu", "h100-sxm", "--target", "llama-3.1-8b", "--draft", "llama-3.2-1b",
     "--timeline", "{tmp}/missing/t.html"],
    ["spec-sweep", "--gpu", "h100-sxm", "--target", "llama-3.1-8b", "--draft",
     "llama-3.2-1b", "--md", "{tmp}"],
    ["schema", "--out", "{tmp}/file.txt/sub"],
], ids=["validate-report-dir", "validate-points", "spec-validate", "calibrate", "spec",
        "spec-sweep", "schema"])
def test_long_commands_check_outputs_first(argv: list[str], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The slow commands (validate computed 70-100 s before saying the path was bad)
    refuse a bad output path at once: the first thing they load is never reached."""
    (tmp_path / "file.txt").write_text("x", encoding="utf-8")
    monkeypatch.setattr(loader, "load_stack", _no_work)
    started = time.monotonic()
    msg = one_line_error(*run_cli(capsys, [a.replace("{tmp}", str(tmp_path)) for a in argv]))
    assert time.monotonic() - started < 5
    assert "cannot write" in msg, msg


# ----------------------------------------------------------------------------------
# all outputs or none
# ----------------------------------------------------------------------------------
def test_failing_html_leaves_no_json_or_csv(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from gpusim.report import serving_figures

    def broken(_result: object) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(serving_figures, "serve_html", broken)
    old = tmp_path / "s.json"
    old.write_text("previous run\n", encoding="utf-8")
    one_line_error(*run_cli(capsys, [*SERVE, "--out-json", str(old), "--out-csv",
                                     str(tmp_path / "s.csv"), "--html",
                                     str(tmp_path / "s.html")]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json"]
    assert old.read_text(encoding="utf-8") == "previous run\n"


def test_write_all_is_all_or_none(tmp_path: Path) -> None:
    first = tmp_path / "a.json"
    first.write_text("old a", encoding="utf-8")
    blocker = tmp_path / "b.csv"
    blocker.mkdir()                       # became a directory after the check
    with pytest.raises(ConfigError) as info:
        report.write_all([(first, "new a"), (tmp_path / "c.csv", "new c"), (blocker, "b")])
    assert "is a directory" in str(info.value) and str(blocker) in str(info.value)
    assert first.read_text(encoding="utf-8") == "old a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.csv"]


def test_write_all_puts_back_what_it_renamed_when_a_later_rename_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gpusim.report.files as files

    (tmp_path / "a.json").write_text("old a", encoding="utf-8")
    real, calls = files.os.replace, []

    def third_fails(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(files.os, "replace", third_fails)
    with pytest.raises(ConfigError, match="No space left"):
        report.write_all([(tmp_path / "a.json", "new a"), (tmp_path / "b.csv", "new b"),
                          (tmp_path / "c.html", "new c")])
    assert (tmp_path / "a.json").read_text(encoding="utf-8") == "old a"   # put back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]      # b removed


def test_write_all_interrupted_leaves_nothing(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C between staging and renaming: no file written, no temp file left."""
    import gpusim.report.files as files

    def interrupt(*_args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        report.write_all([(tmp_path / "a.txt", "a"), (tmp_path / "b.txt", "b")])
    assert list(tmp_path.iterdir()) == []


def test_write_atomic_missing_directory_one_line(tmp_path: Path) -> None:
    target = tmp_path / "nope" / "x.csv"
    with pytest.raises(ConfigError) as info:
        report.write_atomic(target, "x")
    assert str(info.value) == f"{target}: cannot write: directory {target.parent} does not exist"


def test_a_ctrl_c_wrapped_by_pydantic_while_importing_is_still_an_interrupt() -> None:
    # pydantic-core reports a KeyboardInterrupt that lands while it builds a validator as
    # a SchemaError whose message ends with it (seen under load: Ctrl-C 0.4 s in)
    from gpusim.cli import _from_interrupt

    assert _from_interrupt(Exception('Error building "literal" validator:\n'
                                     '  KeyboardInterrupt: '))
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert _from_interrupt(outer)
    assert not _from_interrupt(ValueError("a plain error"))
