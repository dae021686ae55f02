"""validation/harness/probe_grouped_mm.py, probe_scaled_mm.py and probe_common.py on the
CPU: the pieces that do not need a GPU (row offsets, projection shapes, output files)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

HARNESS = Path(__file__).resolve().parents[1] / "validation" / "harness"
if str(HARNESS) not in sys.path:
    sys.path.insert(0, str(HARNESS))

import bench_campaign as bc  # noqa: E402
import probe_common  # noqa: E402
import probe_grouped_mm as pg  # noqa: E402
import probe_scaled_mm as ps  # noqa: E402


def test_offsets_give_touched_experts_their_rows_and_the_rest_none():
    cpu = torch.device("cpu")
    assert pg._offs(4, 3, False, cpu).tolist() == [3, 6, 9, 12]
    assert pg._offs(4, 3, True, cpu).tolist() == [4, 6, 9, 12]     # one over, one under
    assert pg._offs(4, 2, False, cpu, touched=2).tolist() == [2, 4, 4, 4]


def test_projection_shapes_are_the_models():
    shape = bc.load_models(["llama-3.1-8b"], {}, bc.MODELS_DIR)["llama-3.1-8b"]
    assert ps._weights(shape) == {"qkv": (6144, 4096), "o": (4096, 4096),
                                  "gate_up": (28672, 4096), "down": (4096, 14336)}


def test_a_probe_writes_its_rows_and_env(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    probe_common.write_probe(tmp_path, "x", [{"a": 1, "b": 2.5}, {"a": 3, "b": 4.0}])
    with (tmp_path / "x.csv").open() as fh:
        assert list(csv.DictReader(fh)) == [{"a": "1", "b": "2.5"}, {"a": "3", "b": "4.0"}]
    env = json.loads((tmp_path / "x_env.json").read_text())
    assert env["gpu_name"] == "NVIDIA H100 80GB HBM3" and env["torch"] == torch.__version__


def test_eager_profiles_time_and_profile_each_mixed_step(tmp_path, monkeypatch):
    import probe_serve_steps
    monkeypatch.setattr(sys, "argv", ["probe_serve_steps.py", "--out", str(tmp_path),
                                      "--model", "tiny", "--device", "cpu",
                                      "--eager-profiles", "0x0+5,2x20+4"])
    assert probe_serve_steps.main() == 0
    res = json.loads((tmp_path / "probe.json").read_text())
    assert {k for k in res if k.startswith("eager_")} == {"eager_0x0+5", "eager_2x20+4"}
    step = res["eager_2x20+4"]
    assert (step["decode"], step["ctx"], step["q"]) == (2, 20, 4)
    assert step["wall_s"] > 0 and step["gpu_s"] > 0 and "profiled" in step
    # file names carry no "+": the device machine's file return refuses it
    assert sorted(p.name for p in tmp_path.glob("kernels_eager_*.csv")) == [
        "kernels_eager_0x0_q5.csv", "kernels_eager_2x20_q4.csv"]
