"""validation/harness/probe_host_speed.py on the CPU: the same eager mixed steps in
passes (a set, again, a new set, again, then the first cycled), one CSV row a step."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

HARNESS = Path(__file__).resolve().parents[1] / "validation" / "harness"
if str(HARNESS) not in sys.path:
    sys.path.insert(0, str(HARNESS))

import probe_host_speed  # noqa: E402


def test_the_passes_repeat_the_same_shapes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["probe_host_speed.py", "--out", str(tmp_path),
                                      "--label", "t", "--model", "tiny", "--device", "cpu",
                                      "--seconds", "0"])
    monkeypatch.setattr(probe_host_speed, "shapes",
                        lambda seed, n: [(1 + seed % 2, 20, 8 + seed)] * 3)
    assert probe_host_speed.main() == 0
    with open(tmp_path / "t.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # --seconds 0 still runs the four planned passes: S1, S1, S2, S2
    assert [r["set"] for r in rows] == ["S1"] * 6 + ["S2"] * 6
    assert [int(r["pass"]) for r in rows] == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert {r["q"] for r in rows if r["set"] == "S1"} == {"9"}
    assert all(float(r["wall_s"]) > 0 for r in rows)
    summary = json.loads((tmp_path / "t.json").read_text())
    assert summary["passes"] == 4 and len(summary["python_loop_ms"]) == 2
