"""gpusim.calibration.steady_clocks (the power probe's samples matched to its step shapes, their
plateaus) and validation/power_steady.py (the one-parameter clock rule fitted to them)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from gpusim.calibration import steady_clocks
from gpusim.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("power_steady",
                                               ROOT / "validation" / "power_steady.py")
assert _spec is not None and _spec.loader is not None
power_steady = importlib.util.module_from_spec(_spec)
sys.modules["power_steady"] = power_steady  # its dataclasses look their module up
_spec.loader.exec_module(power_steady)

SHAPES = (("llama-3.2-1b", "decode", 1, 1024, 1), ("llama-3.2-1b", "prefill", 1, 0, 2048))
# (start, idle W, busy plateau W, plateau clock MHz) per shape
RUNS = ((100.0, 120.0, 400.0, 1980.0), (110.0, 120.0, 690.0, 1782.0))


def write_probe(d: Path, with_start: bool) -> None:
    """Two shapes replayed for 2 s each (the second 10% slower in its second second),
    and 20 Hz samples whose power ramps up over a second to each shape's plateau."""
    d.mkdir(parents=True)
    head = "model,mode,batch,ctx,q," + ("start_unix_s," if with_start else "") + "t_s,ms\n"
    rows, samples = [], ["time,clock_mhz,power_w,temp_c,throttle\n"]
    for (model, mode, b, c, q), (start, idle, busy, clock) in zip(SHAPES, RUNS, strict=True):
        slow = 1.1 if mode == "prefill" else 1.0
        for i in range(21):
            t = 0.1 * i
            pre = f"{model},{mode},{b},{c},{q}," + (f"{start}," if with_start else "")
            rows.append(pre + f"{t:.1f},{10.0 * (slow if t > 1.0 else 1.0)}\n")
        for i in range(-20, 60):   # idle before, the ramp, the plateau, the ramp down
            t = start + 0.05 * i
            frac = min(1.0, max(0.0, 0.05 * i)) if i < 41 else max(0.0, 1 - 0.05 * (i - 40))
            p = idle + (busy - idle) * frac
            samples.append(f"{t}, {clock if frac == 1.0 else 1980.0}, {p}, 40, 0x0\n")
    (d / "step_power.csv").write_text(head + "".join(rows))
    (d / "step_power_samples.csv").write_text("".join(samples))


@pytest.mark.parametrize("with_start", [True, False])
def test_plateaus_are_matched_to_their_shapes(tmp_path, with_start):
    d = tmp_path / "power"
    write_probe(d, with_start)
    shapes = steady_clocks.read_shapes(d / "step_power.csv")
    assert [(s.mode, s.batch) for s in shapes] == [("decode", 1), ("prefill", 1)]
    assert shapes[0].slowdown == pytest.approx(1.0)
    assert shapes[1].slowdown == pytest.approx(1.1)
    assert shapes[1].sustained_s == pytest.approx(11e-3)
    clocks = steady_clocks.read_probe(d / "step_power_samples.csv", 1980.0)
    assert [round(p) for p in clocks.power_w] == [400, 690]
    assert clocks.clock_fraction == pytest.approx([1.0, 0.9])
    assert list(clocks.steps.mode) == ["decode", "prefill"]
    assert list(clocks.subset(clocks.steps.mode == "prefill").power_w) == [690.0]


def test_unmatched_samples_are_an_error(tmp_path):
    d = tmp_path / "power"
    write_probe(d, with_start=False)
    shapes = steady_clocks.read_shapes(d / "step_power.csv")
    samples = steady_clocks.read_samples(d / "step_power_samples.csv")
    with pytest.raises(ValueError, match="cannot match"):
        steady_clocks.plateaus(shapes[:1], samples, 1980.0)
    # one stretch too few for the file's shapes: a one-line error naming the file
    (d / "step_power_samples.csv").write_text(
        "\n".join((d / "step_power_samples.csv").read_text().splitlines()[:60]) + "\n")
    with pytest.raises(ConfigError, match=r"step_power_samples\.csv.*cannot match"):
        steady_clocks.read_probe(d / "step_power_samples.csv", 1980.0)


def test_a_malformed_row_names_its_line(tmp_path):
    d = tmp_path / "power"
    write_probe(d, with_start=True)
    text = (d / "step_power.csv").read_text().splitlines()
    text[3] = text[3].replace("llama-3.2-1b,decode,1,", "llama-3.2-1b,decode,one,")
    (d / "step_power.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(ConfigError, match=r"step_power.csv:4"):
        steady_clocks.read_shapes(d / "step_power.csv")


def test_the_probe_beside_a_gpus_steps_is_found(tmp_path):
    write_probe(tmp_path / "gpu" / "power" / "run2", with_start=True)
    assert steady_clocks.read_probe_beside(tmp_path / "gpu" / "steps.csv", 1980.0) is not None
    assert steady_clocks.read_probe_beside(tmp_path / "none" / "steps.csv", 1980.0) is None


def test_fit_cap_recovers_the_rule():
    share = np.array([0.1, 0.3, 0.45, 0.5, 0.6])
    clock = power_steady.capped_clock(0.35, share)
    assert clock[0] == 1.0 and clock[-1] < 1.0
    assert power_steady.fit_cap(share, clock) == pytest.approx(0.35, abs=1e-4)


def test_main_reports_each_gpu(tmp_path, capsys):
    write_probe(tmp_path / "h100-sxm" / "power" / "run1", with_start=True)
    assert power_steady.main(["--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "## h100-sxm" in out and "tensor share cap" in out
    assert "| llama-3.2-1b prefill b=1 ctx=0 q=2048 | 0.900 | 690 | +10.0% |" in out
