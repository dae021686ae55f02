"""CLI error paths: rows.csv, usage errors, calibration files, output files, schemas.

Contract (DESIGN.md, Reliability): bad input -> exactly one line on stderr starting
``gpusim: error: ``, naming the file, the line and the field; exit code 2; no
traceback; no output file written, or the old one left intact.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import run_cli

REPO = Path(__file__).resolve().parent.parent
GOOD_GPU = (REPO / "hardware" / "h100-sxm.yaml").read_text(encoding="utf-8")
GOOD_MODEL = (REPO / "workloads" / "models" / "llama-3.1-8b.yaml").read_text(encoding="utf-8")

HEADER = "model,mode,batch,ctx,q\n"
GOOD_ROW = "llama-3.1-8b,decode,1,1024,1\n"
SENTINEL = "old predictions, must survive\n"


def assert_one_line_error(rc: int, out: str, err: str) -> str:
    assert rc == 2, f"exit code {rc}, stderr {err!r}"
    assert out == "", f"stdout not empty: {out[:200]!r}"
    assert "Traceback" not in err
    assert err.startswith("gpusim: error: "), err
    assert err.endswith("\n") and err.count("\n") == 1, f"not exactly one line: {err!r}"
    return err.rstrip("\n")


def line_in(msg: str, path: str) -> int | None:
    m = re.search(re.escape(path) + r":(\d+):", msg)
    return int(m.group(1)) if m else None


def leftovers(directory: Path, keep: set[str]) -> list[str]:
    """Files in ``directory`` other than ``keep`` (e.g. a temp file left behind)."""
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


# ----------------------------------------------------------------------------------
# rows.csv
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class BadRows:
    id: str
    content: str | bytes
    line: int | None          # the CSV line the message must name (None: no line)
    field: str | None = None
    also: tuple[str, ...] = ()


def row(batch: object = 1, ctx: object = 1024, q: object = 1, mode: str = "decode",
        model: str = "llama-3.1-8b") -> str:
    return f"{model},{mode},{batch},{ctx},{q}\n"


ROWS_CASES = [
    BadRows("missing-column", "model,mode,batch,ctx\nllama-3.1-8b,decode,1,1024\n", 1,
            also=("missing column", "q")),
    BadRows("bad-mode", HEADER + GOOD_ROW + row(mode="decod"), 3, "mode",
            ("'decod'", "decode", "verify", "prefill")),
    BadRows("empty-mode", HEADER + GOOD_ROW + row(mode=""), 3, "mode"),
    BadRows("batch-0", HEADER + GOOD_ROW + row(batch=0), 3, "batch", ("'0'", ">= 1")),
    BadRows("batch-negative", HEADER + GOOD_ROW + row(batch=-1), 3, "batch", ("'-1'",)),
    BadRows("batch-fraction", HEADER + GOOD_ROW + row(batch=1.5), 3, "batch", ("'1.5'",)),
    BadRows("batch-abc", HEADER + GOOD_ROW + row(batch="abc"), 3, "batch", ("'abc'",)),
    BadRows("batch-empty", HEADER + GOOD_ROW + row(batch=""), 3, "batch"),
    BadRows("batch-inf", HEADER + GOOD_ROW + row(batch="inf"), 3, "batch", ("'inf'",)),
    BadRows("batch-nan", HEADER + GOOD_ROW + row(batch="nan"), 3, "batch", ("'nan'",)),
    BadRows("ctx-negative", HEADER + GOOD_ROW + row(ctx=-5), 3, "ctx", ("'-5'", ">= 0")),
    BadRows("q-zero", HEADER + GOOD_ROW + row(q=0, mode="verify"), 3, "q", ("'0'",)),
    BadRows("decode-q2", HEADER + GOOD_ROW + row(q=2), 3, "q", ("decode",)),
    BadRows("prefill-with-ctx", HEADER + GOOD_ROW + row(ctx=10, q=128, mode="prefill"), 3,
            "ctx", ("prefill",)),
    BadRows("unknown-model-row-3", HEADER + GOOD_ROW + row(model="nosuch-model"), 3, "model",
            ("'nosuch-model'", "llama-3.1-8b")),
    BadRows("unknown-model-row-4", HEADER + GOOD_ROW + GOOD_ROW + row(model="nosuch-model")
            + row(model="nosuch-model"), 4, "model", ("nosuch-model",)),
    BadRows("model-file-missing", HEADER + GOOD_ROW + row(model="/nonexistent/m.yaml"), 3,
            "model", ("/nonexistent/m.yaml",)),
    BadRows("empty-model", HEADER + GOOD_ROW + row(model=""), 3, "model"),
    BadRows("tp-3", "model,mode,batch,ctx,q,tp\n" + GOOD_ROW.rstrip("\n") + ",1\n"
            + row().rstrip("\n") + ",3\n", 3, "tp", ("tp=3", "32 attention heads")),
    BadRows("tp-0", "model,mode,batch,ctx,q,tp\n" + row().rstrip("\n") + ",0\n", 2, "tp"),
    BadRows("too-many-values", HEADER + GOOD_ROW + row().rstrip("\n") + ",7\n", 3,
            also=("more values",)),
    BadRows("blank-line-then-bad-row", HEADER + GOOD_ROW + "\n" + row(batch=0), 4, "batch"),
    BadRows("crlf-line-endings", (HEADER + GOOD_ROW + GOOD_ROW + row(batch=0))
            .replace("\n", "\r\n"), 4, "batch"),
    BadRows("bom-header", "\ufeff" + HEADER + GOOD_ROW + row(batch=0), 3, "batch"),
    BadRows("empty-file", "", None, also=("empty",)),
    BadRows("header-only", HEADER, None, also=("no data rows",)),
    BadRows("non-utf8", (HEADER + GOOD_ROW).encode() + b"caf\xe9,decode,1,1,1\n", None,
            also=("UTF-8",)),
]


def write_rows(directory: Path, content: str | bytes) -> Path:
    path = directory / "rows.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return path


def check_rows_error(case: BadRows, msg: str, rows: Path) -> None:
    assert str(rows) in msg
    if case.line is not None:
        assert line_in(msg, str(rows)) == case.line, msg
        if case.field is not None:
            assert f"{rows}:{case.line}: {case.field}: " in msg, msg
    for text in case.also:
        assert text.lower() in msg.lower(), f"{text!r} not in {msg!r}"


@pytest.mark.parametrize("case", ROWS_CASES, ids=lambda c: c.id)
def test_bad_rows_no_output(case: BadRows, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    rows = write_rows(tmp_path, case.content)
    preds = tmp_path / "preds.csv"
    rc, out, err = run_cli(capsys, ["predict", "--gpu", "h100-sxm", "--calibration", "none",
                                    "--in", str(rows), "--out", str(preds)])
    msg = assert_one_line_error(rc, out, err)
    check_rows_error(case, msg, rows)
    assert not preds.exists(), "preds.csv written despite the error"
    assert leftovers(tmp_path, {"rows.csv"}) == []


@pytest.mark.parametrize("case", ROWS_CASES, ids=lambda c: c.id)
def test_bad_rows_keep_old_output(case: BadRows, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    rows = write_rows(tmp_path, case.content)
    preds = tmp_path / "preds.csv"
    preds.write_text(SENTINEL, encoding="utf-8")
    rc, out, err = run_cli(capsys, ["predict", "--gpu", "h100-sxm", "--calibration", "none",
                                    "--in", str(rows), "--out", str(preds)])
    assert_one_line_error(rc, out, err)
    assert preds.read_text(encoding="utf-8") == SENTINEL
    assert leftovers(tmp_path, {"rows.csv", "preds.csv"}) == []


def test_rows_bad_model_file_names_both(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A row naming a malformed model YAML: the row's line and the model file's line."""
    model = tmp_path / "mine.yaml"
    model.write_text(GOOD_MODEL.replace("name: llama-3.1-8b", "name: mine")
                     .replace("hidden_size: 4096", "hidden_size: -1"), encoding="utf-8")
    rows = write_rows(tmp_path, HEADER + GOOD_ROW + row(model=str(model)))
    preds = tmp_path / "preds.csv"
    rc, out, err = run_cli(capsys, ["predict", "--gpu", "h100-sxm", "--calibration", "none",
                                    "--in", str(rows), "--out", str(preds)])
    msg = assert_one_line_error(rc, out, err)
    assert f"{rows}:3: model: " in msg
    assert f"{model}:3: hidden_size: " in msg
    assert not preds.exists()


def test_good_rows_write_preds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The base the bad rows are made from works, and replaces an old preds.csv whole."""
    rows = write_rows(tmp_path, HEADER + GOOD_ROW + row(batch=8, ctx=0, q=64, mode="prefill"))
    preds = tmp_path / "preds.csv"
    preds.write_text(SENTINEL, encoding="utf-8")
    rc, out, err = run_cli(capsys, ["predict", "--gpu", "h100-sxm", "--calibration", "none",
                                    "--in", str(rows), "--out", str(preds)])
    assert rc == 0, err
    assert out == ""
    lines = preds.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("model,mode,batch,ctx,q,predicted_ms")
    assert len(lines) == 3
    assert leftovers(tmp_path, {"rows.csv", "preds.csv"}) == []


# ----------------------------------------------------------------------------------
# usage errors and calibration files
# ----------------------------------------------------------------------------------
PREDICT = ["predict", "--gpu", "h100-sxm", "--model", "llama-3.1-8b", "--format", "json"]


@dataclass(frozen=True)
class Usage:
    id: str
    argv: Callable[[Path], list[str]]
    also: tuple[str, ...] = ()


def _rows(tmp: Path) -> str:
    return str(write_rows(tmp, HEADER + GOOD_ROW))


USAGE_CASES = [
    Usage("unknown-option", lambda t: [*PREDICT, "--bogus"], ("--bogus",)),
    Usage("missing-gpu", lambda t: ["predict", "--model", "llama-3.1-8b"], ("--gpu",)),
    Usage("missing-model-and-in", lambda t: ["predict", "--gpu", "h100-sxm"], ("--model",)),
    # --in without --out prints the predictions in --format (issue 22, item 6)
    Usage("in-with-timeline", lambda t: ["predict", "--gpu", "h100-sxm", "--in", _rows(t),
                                         "--timeline", str(t / "t.html")], ("--timeline",)),
    Usage("in-with-model", lambda t: ["predict", "--gpu", "h100-sxm", "--in", _rows(t),
                                      "--out", str(t / "p.csv"), "--model", "llama-3.1-8b"],
          ("--model", "--in")),
    Usage("in-missing-file", lambda t: ["predict", "--gpu", "h100-sxm", "--in",
                                        str(t / "nope.csv"), "--out", str(t / "p.csv")],
          ("nope.csv",)),
    Usage("in-is-directory", lambda t: ["predict", "--gpu", "h100-sxm", "--in", str(t),
                                        "--out", str(t / "p.csv")], ()),
    Usage("calibration-missing-file",
          lambda t: [*PREDICT, "--calibration", str(t / "nope.yaml")],
          ("--calibration", "nope.yaml", "auto", "none")),
    Usage("bad-launch", lambda t: [*PREDICT, "--launch", "lazy"],
          ("--launch", "lazy", "graph", "eager")),
    Usage("bad-mode", lambda t: [*PREDICT, "--mode", "train"], ("--mode", "train")),
    Usage("bad-format", lambda t: [*PREDICT, "--format", "xml"], ("--format", "xml")),
    Usage("batch-not-int", lambda t: [*PREDICT, "--batch", "x"], ("--batch",)),
    Usage("batch-zero", lambda t: [*PREDICT, "--batch", "0"], ("--batch", "batch=0")),
    Usage("ctx-negative", lambda t: [*PREDICT, "--ctx", "-1"], ("--ctx", "ctx=-1")),
    Usage("decode-q2", lambda t: [*PREDICT, "--q", "2"], ("--q", "decode")),
    Usage("prefill-with-ctx", lambda t: [*PREDICT, "--mode", "prefill", "--ctx", "5"],
          ("--ctx", "prefill")),
    Usage("list-bogus", lambda t: ["list", "bogus"], ("bogus", "gpus", "models", "stacks")),
    Usage("unknown-command", lambda t: ["bogus"], ("bogus",)),
    Usage("unknown-gpu-name", lambda t: ["predict", "--gpu", "h101", "--model", "llama-3.1-8b"],
          ("--gpu", "'h101'", "h100-sxm")),
    Usage("unknown-model-name", lambda t: ["predict", "--gpu", "h100-sxm", "--model", "llama-9"],
          ("--model", "'llama-9'", "llama-3.1-8b")),
    Usage("unknown-stack-name", lambda t: [*PREDICT, "--stack", "fused"],
          ("--stack", "'fused'", "torch-hf")),
    Usage("gpu-path-missing", lambda t: ["predict", "--gpu", str(t / "x.yaml"), "--model",
                                         "llama-3.1-8b"], ("x.yaml",)),
]


@pytest.mark.parametrize("case", USAGE_CASES, ids=lambda c: c.id)
def test_usage_error(case: Usage, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_cli(capsys, case.argv(tmp_path))
    msg = assert_one_line_error(rc, out, err)
    for text in case.also:
        assert text in msg, f"{text!r} not in {msg!r}"


@dataclass(frozen=True)
class BadCal:
    id: str
    content: str
    marker: str | None
    field: str | None
    also: tuple[str, ...] = ()


CAL_CASES = [
    BadCal(
        "unknown-key",
        "gpu: h100-sxm\nphysics:\n  bandwidth_fudge: 0.9\n",
        "bandwidth_fudge",
        "physics.bandwidth_fudge",
        ("unknown key", "hbm_bandwidth_efficiency"),
    ),
    BadCal(
        "negative-value",
        "gpu: h100-sxm\nphysics:\n  dram_latency_s: -1.0e-6\n",
        "dram_latency_s",
        "physics.dram_latency_s",
        ("-1e-06",),
    ),
    BadCal(
        "efficiency-over-1.5",
        "gpu: h100-sxm\nphysics:\n  hbm_bandwidth_efficiency: 1.6\n",
        "hbm_bandwidth_efficiency",
        "physics.hbm_bandwidth_efficiency",
        ("1.6", "1.5"),
    ),
    BadCal(
        "tensor-efficiency-zero",
        "gpu: h100-sxm\nphysics:\n  tensor_efficiency: 0\n",
        "tensor_efficiency",
        "physics.tensor_efficiency",
        ("(got 0)",),
    ),
    BadCal(
        "overlap-below-1",
        "gpu: h100-sxm\nphysics:\n  overlap_exponent: 0.5\n",
        "overlap_exponent",
        "physics.overlap_exponent",
        ("0.5",),
    ),
    BadCal(
        "nan",
        "gpu: h100-sxm\nphysics:\n  kernel_fixed_cost_s: .nan\n",
        "kernel_fixed_cost_s",
        "physics.kernel_fixed_cost_s",
        ("nan",),
    ),
    BadCal(
        "string-for-number",
        "gpu: h100-sxm\nphysics:\n  kernel_fixed_cost_s: fast\n",
        "kernel_fixed_cost_s",
        "physics.kernel_fixed_cost_s",
        ("'fast'",),
    ),
    BadCal(
        "bool-for-int",
        "gpu: h100-sxm\nphysics:\n  gemm_tile_m: true\n",
        "gemm_tile_m",
        "physics.gemm_tile_m",
    ),
    BadCal(
        "yaml-syntax",
        "gpu: h100-sxm\nphysics:\n  tensor_efficiency: [0.8\n",
        "tensor_efficiency",
        None,
    ),
    BadCal("duplicate-key", "gpu: h100-sxm\ngpu: h200\n", "gpu: h200", "gpu", ("duplicate",)),
    BadCal("empty-file", "", None, None, ("empty",)),
    BadCal("top-level-list", "- gpu\n", "- gpu", None, ("mapping",)),
]


@pytest.mark.parametrize("case", CAL_CASES, ids=lambda c: c.id)
def test_bad_calibration_file(
    case: BadCal, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cal = tmp_path / "cal.yaml"
    cal.write_text(case.content, encoding="utf-8")
    rc, out, err = run_cli(capsys, [*PREDICT, "--calibration", str(cal)])
    msg = assert_one_line_error(rc, out, err)
    assert str(cal) in msg
    if case.marker is not None:
        want = next(i + 1 for i, line in enumerate(case.content.split("\n")) if case.marker in line)
        got = line_in(msg, str(cal))
        assert got in (want, want + 1) if case.field is None else got == want, msg
    if case.field is not None:
        assert f": {case.field}: " in msg, msg
    for text in case.also:
        assert text.lower() in msg.lower(), f"{text!r} not in {msg!r}"


def test_good_calibration_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cal = tmp_path / "cal.yaml"
    cal.write_text(
        "gpu: h100-sxm\nphysics:\n  hbm_bandwidth_efficiency: 0.9\n"
        "  kernel_fixed_cost_s: 2.0e-6\nstacks:\n"
        "  torch-hf: {host_launch_cost_s: 1.0e-5}\n",
        encoding="utf-8",
    )
    rc, out, err = run_cli(capsys, [*PREDICT, "--calibration", str(cal)])
    assert rc == 0, err
    assert json.loads(out)["step_ms"] > 0


# ----------------------------------------------------------------------------------
# output paths that cannot be written
# ----------------------------------------------------------------------------------
def test_out_in_missing_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_path = tmp_path / "no-such-dir" / "preds.csv"
    rc, out, err = run_cli(
        capsys,
        [
            "predict",
            "--gpu",
            "h100-sxm",
            "--calibration",
            "none",
            "--in",
            _rows(tmp_path),
            "--out",
            str(out_path),
        ],
    )
    msg = assert_one_line_error(rc, out, err)
    assert str(out_path) in msg
    assert leftovers(tmp_path, {"rows.csv"}) == []


def test_out_is_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "preds.csv"
    out_dir.mkdir()
    rc, out, err = run_cli(
        capsys,
        [
            "predict",
            "--gpu",
            "h100-sxm",
            "--calibration",
            "none",
            "--in",
            _rows(tmp_path),
            "--out",
            str(out_dir),
        ],
    )
    msg = assert_one_line_error(rc, out, err)
    assert str(out_dir) in msg
    assert leftovers(tmp_path, {"rows.csv", "preds.csv"}) == []
    assert list(out_dir.iterdir()) == []


def test_timeline_in_missing_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    html = tmp_path / "no-such-dir" / "t.html"
    rc, out, err = run_cli(capsys, [*PREDICT, "--timeline", str(html)])
    msg = assert_one_line_error(rc, out, err)
    assert str(html) in msg


def test_schema_out_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "schemas"
    target.write_text("not a directory", encoding="utf-8")
    rc, out, err = run_cli(capsys, ["schema", "--out", str(target)])
    msg = assert_one_line_error(rc, out, err)
    assert str(target) in msg
    assert target.read_text(encoding="utf-8") == "not a directory"


# ----------------------------------------------------------------------------------
# the real entry point
# ----------------------------------------------------------------------------------
def test_console_script_exit_code_and_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "h100-sxm.yaml"
    bad.write_text(GOOD_GPU.replace("vendor: nvidia", "vendor: intel"), encoding="utf-8")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from gpusim.cli import main; sys.exit(main())",
            "predict",
            "--gpu",
            str(bad),
            "--model",
            "llama-3.1-8b",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"gpusim: error: {bad}:4: vendor: ")


# ----------------------------------------------------------------------------------
# schemas
# ----------------------------------------------------------------------------------
KINDS = ("gpu", "model", "stack", "calibration")


def test_schema_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_cli(capsys, ["schema"])
    assert rc == 0, err
    docs = json.loads(out)
    assert set(KINDS) <= set(docs)
    for kind in KINDS:
        assert docs[kind]["type"] == "object"
        assert docs[kind].get("additionalProperties") is False, kind


def test_schema_out_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "schemas"
    rc, out, err = run_cli(capsys, ["schema", "--out", str(target)])
    assert rc == 0, err
    assert out == ""
    assert sorted(p.name for p in target.iterdir()) == sorted(f"{k}.schema.json" for k in KINDS)
    for kind in KINDS:
        json.loads((target / f"{kind}.schema.json").read_text(encoding="utf-8"))


SHIPPED = (
    [("gpu", p) for p in sorted((REPO / "hardware").glob("*.yaml"))]
    + [("model", p) for p in sorted((REPO / "workloads" / "models").glob("*.yaml"))]
    + [("stack", p) for p in sorted((REPO / "stacks").glob("*.yaml"))]
    + [("calibration", p) for p in sorted((REPO / "validation" / "calibrations").glob("*.yaml"))]
)


@pytest.fixture(scope="module")
def schemas() -> dict[str, dict[str, object]]:
    from gpusim.io.schemas import all_schemas

    return all_schemas()


@pytest.mark.parametrize(("kind", "path"), SHIPPED, ids=[f"{k}-{p.stem}" for k, p in SHIPPED])
def test_shipped_files_match_schema(
    kind: str, path: Path, schemas: dict[str, dict[str, object]]
) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    jsonschema.validate(data, schemas[kind])


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        ("gpu", GOOD_GPU + "cooling: liquid\n"),
        (
            "gpu",
            GOOD_GPU.replace(
                '  source: "NVIDIA H100 whitepaper, Table 3 (H100 SXM5): 132 SMs"', '  source: ""'
            ),
        ),
        ("gpu", GOOD_GPU.replace("sm_count:\n  value: 132\n", "sm_count:\n  count: 132\n")),
        ("model", GOOD_MODEL + "rope_scaling: llama3\n"),
        ("model", GOOD_MODEL.replace("hidden_size: 4096", "hidden_size: -1")),
    ],
    ids=[
        "gpu-unknown-key",
        "gpu-empty-source",
        "gpu-unsourced",
        "model-unknown-key",
        "model-negative",
    ],
)
def test_schema_rejects_what_the_loader_rejects(
    kind: str, text: str, schemas: dict[str, dict[str, object]]
) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(yaml.safe_load(text), schemas[kind])
