"""validation/REPORT.md's "Models never fitted, under the other stacks" section: the
errors it prints are the shipped calibration's against the measured steps, per model and
over all models; a folder without unseen steps gives no section; a stack folder gpusim
does not know is refused."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from gpusim.calibration import unseen_stacks as us
from gpusim.calibration.measurements import read_steps
from gpusim.calibration.validate import in_sample
from gpusim.errors import ConfigError
from gpusim.io import calibrations, loader

ROWS = [("llama-3.2-1b", "decode", 1, 1024, 1), ("llama-3.2-1b", "decode", 16, 1024, 1),
        ("llama-3.2-1b", "prefill", 1, 0, 512), ("llama-3.1-8b", "decode", 4, 2048, 1)]


def _shipped(gpu_name: str):  # type: ignore[no-untyped-def]
    gpu = loader.load_gpu(gpu_name)
    cal_file = str(calibrations.CALIBRATIONS_DIR / f"{gpu.name}.yaml")
    return gpu, lambda s: calibrations.load_calibration(cal_file, gpu, s)


def _write(path: Path, stack: str, ms: list[float]) -> None:
    path.parent.mkdir(parents=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "mode", "batch", "ctx", "q", "launch", "median_ms", "stack"])
        for (m, mode, b, c, q), t in zip(ROWS, ms, strict=True):
            w.writerow([m, mode, b, c, q, "graph", t, stack])


def test_errors_are_the_shipped_calibrations_against_the_measured(tmp_path) -> None:  # type: ignore[no-untyped-def]
    gpu, shipped = _shipped("h100-sxm")
    stack = loader.load_stack("torch-fused")
    path = tmp_path / us.FOLDER / "torch-fused" / "steps.csv"
    _write(path, "torch-fused", [1.0] * len(ROWS))
    pred_s = in_sample(read_steps(path, stack.name), gpu, stack, shipped(stack),
                       loader.load_model, "shipped").predicted_s
    # measured: every step 10% slower than predicted, but the 8B's 20% faster
    measured_ms = [1e3 * p * (1.1 if i < 3 else 0.8) for i, p in enumerate(pred_s)]
    path.unlink()
    path.parent.rmdir()
    _write(path, "torch-fused", measured_ms)
    md = us.report(tmp_path, gpu, shipped, loader.load_stack, loader.load_model)
    assert md.startswith("## Models never fitted, under the other stacks, on ")
    lines = md.splitlines()

    def row(model: str, mode: str) -> list[str]:
        line = next(x for x in lines if x.startswith(f"| torch-fused | {model} | graph | "
                                                     f"{mode} |"))
        return [c.strip() for c in line.strip("|").split("|")]

    assert row("llama-3.2-1b", "decode")[4:] == ["2", "9.1%", "9.1%", "-9.1%"]
    assert row("llama-3.1-8b", "decode")[4:] == ["1", "25.0%", "25.0%", "25.0%"]
    # over both models: two steps at -9.1%, one at +25%
    assert row("all", "decode")[4:] == ["3", "14.4%", "25.0%", "2.3%"]


def test_no_unseen_folder_gives_no_section(tmp_path) -> None:  # type: ignore[no-untyped-def]
    gpu, shipped = _shipped("h100-sxm")
    assert us.report(tmp_path, gpu, shipped, loader.load_stack, loader.load_model) == ""


def test_an_unknown_stack_folder_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    gpu, shipped = _shipped("h100-sxm")
    _write(tmp_path / us.FOLDER / "no-such-stack" / "steps.csv", "no-such-stack", [1.0] * 4)
    with pytest.raises(ConfigError):
        us.report(tmp_path, gpu, shipped, loader.load_stack, loader.load_model)


def test_the_committed_h200_section() -> None:
    gpu, shipped = _shipped("h200")
    gpu_dir = loader.ROOT / "validation" / "data" / gpu.name
    if not (gpu_dir / us.FOLDER).is_dir():
        pytest.skip("no unseen steps committed")
    md = us.report(gpu_dir, gpu, shipped, loader.load_stack, loader.load_model)
    for label in ("| torch-fp8 | all | graph | decode |", "| torch-int4 | qwen2.5-14b |",
                  "| torch-compile | qwen2.5-14b |"):
        assert label in md
