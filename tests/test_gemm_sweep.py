"""validation/gemm_sweep.py: spikes above the local trend of a GEMM's time over M."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gemm_sweep", ROOT / "validation" / "gemm_sweep.py")
assert _spec is not None and _spec.loader is not None
gemm_sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gemm_sweep)


def _rows(times: dict[int, float], name: str = "m.gate_up") -> list[dict[str, str]]:
    return [{"kind": "gemm", "name": name, "m": str(m), "median_us": str(t)}
            for m, t in times.items()]


def test_a_lone_slow_m_is_a_spike_and_a_linear_trend_is_not():
    times = {m: 10.0 + m / 8 for m in range(8, 200, 8)}   # grows with M: no spikes
    times[104] *= 1.8
    got = {m: r for _, m, r in gemm_sweep.spikes(_rows(times))}
    assert got[104] == pytest.approx(1.8, rel=0.05)
    assert max(abs(r - 1.0) for m, r in got.items() if m != 104) < 0.05


def test_points_beyond_the_fine_grid_are_ignored_and_other_kinds_skipped():
    rows = _rows({8: 1.0, 16: 1.0, 2048: 9.0})
    rows.append({"kind": "attention", "name": "verify", "m": "8", "median_us": "5"})
    assert [(m, r) for _, m, r in gemm_sweep.spikes(rows)] == [(8, 1.0), (16, 1.0)]


def test_main_reads_every_gpu(tmp_path, capsys):
    d = tmp_path / "gpu-x"
    d.mkdir()
    cols = "kind,name,m,median_us\n"
    body = "".join(f"gemm,a.o,{m},{30.0 if m == 40 else 10.0}\n" for m in range(8, 81, 8))
    (d / "gemm_sweep.csv").write_text(cols + body)
    assert gemm_sweep.main(["--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "gpu-x: 10 GEMM points" in out and "M=   40  3.00x" in out
