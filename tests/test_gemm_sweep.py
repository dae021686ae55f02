"""validation/gemm_sweep.py: the report of spikes above each GEMM's local trend over M
(the detection itself: gpusim.calibration.gemm_picks, tests/test_gemm_picks_power.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from conftest import toy_gpu

from gpusim.calibration.gemm_picks import SweptPoint, read_sweep
from gpusim.cost import Calibration, busy_s, kernel_cost
from gpusim.kernels import gemm_kernel

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


def _model_points(factor_at_half_tiles: float) -> list:
    """A swept GEMM priced by the cost model itself (toy GPU, datasheet calibration),
    ``factor_at_half_tiles`` slower at M an odd multiple of 64."""
    gpu, cal = toy_gpu(), Calibration(physics={"tensor_efficiency": 0.7})
    m = np.arange(8, 1025, 8, dtype=np.float64)
    kern = gemm_kernel(m, 4096, 4096, "bf16")
    t = busy_s(kern, kernel_cost(kern, gpu, cal), cal)
    t = np.where(m % 128 == 64, t * factor_at_half_tiles, t)
    return [SweptPoint("a.o", 4096, 4096, int(mi), 1.0, float(ti))
            for mi, ti in zip(m, t, strict=True)]


def test_half_tile_excess_is_measured_over_the_model_against_neighbours():
    gpu, cal = toy_gpu(), Calibration(physics={"tensor_efficiency": 0.7})
    smooth = gemm_sweep.half_tile_excess(_model_points(1.0), gpu, cal)
    assert sorted(smooth) == [192, 320, 448, 576, 704, 832, 960]
    assert all(x == pytest.approx(1.0) for v in smooth.values() for x in v)
    slow = gemm_sweep.half_tile_excess(_model_points(1.2), gpu, cal)
    assert all(x == pytest.approx(1.2) for v in slow.values() for x in v)
    # priced by another calibration the ratio moves with the model, not the data
    other = gemm_sweep.half_tile_excess(_model_points(1.2), gpu,
                                        Calibration(physics={"tensor_efficiency": 0.35}))
    assert any(abs(x - 1.2) > 0.01 for v in other.values() for x in v)
