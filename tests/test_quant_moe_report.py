"""validation/REPORT.md's "Quantized and MoE stacks" section: crossover arithmetic on
synthetic speedups, the measured crossover's join, the section on the committed data,
tinygemm's activation re-reads and the stack-level GEMM-family overrides."""

from __future__ import annotations

import numpy as np
import pytest

from gpusim.calibration import quant_moe_report as qm
from gpusim.calibration.measurements import StepData
from gpusim.calibration.space import stack_space
from gpusim.cost import Calibration, kernel_cost
from gpusim.cost.params import CalibrationSet, StackParams, overridable
from gpusim.errors import FieldError
from gpusim.io import calibrations, loader
from gpusim.kernels import build_kernels
from gpusim.kernels.quant import for_stack
from gpusim.step.crossover import where_it_stops

GRID = (1, 2, 4, 8, 16, 32, 64)


def _steps(model: str, batches: tuple[int, ...], ms: list[float]) -> StepData:
    n = len(batches)
    return StepData(np.full(n, model), np.full(n, "decode"), np.array(batches, float),
                    np.full(n, 1024.0), np.ones(n), np.full(n, "graph"),
                    np.array(ms) / 1e3, "synthetic")


def test_where_it_stops_on_a_synthetic_curve() -> None:
    # wins 2x at batch 1, shrinking, ties at 8: stops at 8, last win at 4
    speedup = [2.0, 1.5, 1.1, 1.0, 0.8, 0.5, 0.3]
    assert where_it_stops(GRID, speedup) == (4, 8)
    assert where_it_stops(GRID, [0.9] * 7) == (None, None)      # never wins
    assert where_it_stops(GRID, [1.2] * 7) == (64, None)        # never stops
    # a loss before the first win is not a stop
    assert where_it_stops(GRID, [0.9, 1.1, 1.2, 0.9, 0.8, 0.7, 0.6]) == (4, 8)
    with pytest.raises(FieldError):
        where_it_stops(GRID, [1.0])


def test_measured_crossover_joins_the_two_files_by_batch() -> None:
    quant = _steps("m", (1, 2, 4, 8, 16), [1.0, 1.1, 1.5, 2.5, 4.0])
    bf16 = _steps("m", (1, 2, 4, 8, 16, 32), [2.0, 2.0, 2.0, 2.0, 2.0, 2.5])
    batches, speedup = qm.measured_crossover(quant, bf16, "q", "m")
    assert batches == (1, 2, 4, 8, 16)
    assert np.allclose(speedup, [2.0, 2.0 / 1.1, 2.0 / 1.5, 0.8, 0.5])
    assert where_it_stops(batches, speedup) == (4, 8)
    with pytest.raises(ValueError):
        qm.measured_crossover(quant, bf16, "q", "other-model")


def test_grid_steps_apart() -> None:
    row = qm.CrossoverRow("s", "m", GRID, (), (), 8, 16)
    assert row.grid_steps_apart == 1
    assert qm.CrossoverRow("s", "m", GRID, (), (), 8, None).grid_steps_apart == 4
    assert qm.CrossoverRow("s", "m", GRID, (), (), None, None).grid_steps_apart is None


def test_verdict_calls_a_tie_only_within_the_spread() -> None:
    grid = (1, 2, 4, 8, 16)
    # measured stops at 8, simulated at 2: the speedups at 2 and 4 sit within 2% of 1
    tied = qm.CrossoverRow("s", "m", grid, (1.03, 1.002, 1.001, 0.96, 0.92), (), 8, 2)
    assert tied.verdict() == "tie"
    assert tied.verdict(spread=0.001) == "NO"
    # the same stops, but batch 4 measured a clear 5% win: the simulation is wrong
    wrong = qm.CrossoverRow("s", "m", grid, (1.10, 1.002, 1.05, 0.96, 0.92), (), 8, 2)
    assert wrong.verdict() == "NO"
    assert qm.CrossoverRow("s", "m", grid, (1.1,) * 5, (), 8, 16).verdict() == "yes"


def test_stacks_may_override_gemm_family_fields() -> None:
    assert overridable("gemm.tinygemm.activation_l2_ratio")
    assert not overridable("gemm.tinygemm.no_such_field")
    assert [v.name for v in stack_space(("gemm.scaled_mm.fixed_s",))] == \
        ["gemm.scaled_mm.fixed_s"]
    cal = Calibration(gpu="h100-sxm", stack="torch-int4").replace(
        {"gemm.tinygemm.activation_l2_ratio": 0.9})
    own = StackParams.of(cal, ("gemm.tinygemm.activation_l2_ratio",))
    assert own.overrides() == {"gemm.tinygemm.activation_l2_ratio": 0.9}
    gpu = loader.load_gpu("h100-sxm")
    st = loader.load_stack("torch-int4")
    resolved = CalibrationSet.of(cal, {"torch-int4": own}).for_stack(st)
    assert resolved.get("gemm.tinygemm.activation_l2_ratio") == 0.9
    assert gpu.name == resolved.gpu


def test_tinygemm_activation_rereads_grow_with_the_tokens() -> None:
    """Each 8-column CTA loads its token rows: the GEMM's time grows linearly with the
    rows within one 16-row pass (measured on H100), not in steps of 16."""
    gpu, st = loader.load_gpu("h100-sxm"), loader.load_stack("torch-int4")
    cal = calibrations.load_calibration("none", gpu, st)
    model = for_stack(loader.load_model("llama-3.1-8b"), st)
    b = np.array([4.0, 8.0, 16.0])
    ks = build_kernels(model, st, "decode", b, np.full(3, 1024.0), np.ones(3))
    k = next(k for k in ks if k.name == "gate_up_proj")
    t = kernel_cost(k, gpu, cal).seconds
    assert t[0] < t[1] < t[2]
    assert (t[2] - t[1]) == pytest.approx(2 * (t[1] - t[0]), rel=0.25)


def test_the_section_on_the_committed_data() -> None:
    gpu = loader.load_gpu("h100-sxm")
    gpu_dir = loader.ROOT / "validation" / "data" / gpu.name
    if not (gpu_dir / "stacks" / "torch-int4" / "steps.csv").is_file():
        pytest.skip("no quantized measurements committed")
    cal_file = str(calibrations.CALIBRATIONS_DIR / f"{gpu.name}.yaml")
    md = qm.report(gpu_dir, gpu, lambda s: calibrations.load_calibration(cal_file, gpu, s),
                   loader.load_stack, loader.load_model)
    assert md.startswith("## Quantized and MoE stacks on h100-sxm")
    for label in ("| torch-fp8 | decode |", "| torch-int4 | decode |",
                  "| moe (torch-fused) | decode |", "Crossover:"):
        assert label in md
    # int4 stops beating bf16 at batch 16 for Llama 3.1 8B, measured and simulated
    assert "| torch-int4 | llama-3.1-8b |" in md
    crossover_part = md[md.index("Crossover:"):]
    row = next(line for line in crossover_part.splitlines()
               if line.startswith("| torch-int4 | llama-3.1-8b |"))
    assert row.endswith("| 16 | 16 | yes |")


def test_an_empty_gpu_folder_gives_no_section(tmp_path) -> None:  # type: ignore[no-untyped-def]
    gpu = loader.load_gpu("h100-sxm")
    (tmp_path / "stacks").mkdir()
    md = qm.report(tmp_path, gpu, lambda s: Calibration(gpu=gpu.name, stack=s.name),
                   loader.load_stack, loader.load_model)
    assert md == ""
