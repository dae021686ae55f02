"""validation/gemm_sweep.py: the report of spikes above each GEMM's local trend over M
(the detection itself: gpusim.gemm_picks, tests/test_gemm_picks_power.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from gpusim.gemm_picks import read_sweep

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gemm_sweep", ROOT / "validation" / "gemm_sweep.py")
assert _spec is not None and _spec.loader is not None
gemm_sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gemm_sweep)

COLS = "kind,name,m,n,k,median_us\n"


def test_points_beyond_the_fine_grid_are_ignored_and_other_kinds_skipped(tmp_path):
    path = tmp_path / "gemm_sweep.csv"
    body = "".join(f"gemm,a.o,{m},64,64,{10.0 + m}\n" for m in (8, 16, 24, 32, 2048))
    path.write_text(COLS + body + "attention,verify,8,,,5\n")
    assert [p.m for p in read_sweep(path)] == [8, 16, 24, 32]


def test_main_reads_every_gpu(tmp_path, capsys):
    d = tmp_path / "gpu-x"
    d.mkdir()
    body = "".join(f"gemm,a.o,{m},64,64,{30.0 if m == 40 else 10.0}\n" for m in range(8, 81, 8))
    (d / "gemm_sweep.csv").write_text(COLS + body)
    assert gemm_sweep.main(["--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "gpu-x: 10 GEMM points" in out and "M=   40  3.00x" in out
