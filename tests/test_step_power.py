"""The step power probe (harness, CPU): it runs, and its cache views are the steps'."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

HARNESS = Path(__file__).resolve().parents[1] / "validation" / "harness"
if str(HARNESS) not in sys.path:
    sys.path.insert(0, str(HARNESS))

import step_power  # noqa: E402


def test_parse_reads_model_mode_batch_ctx_q():
    assert step_power.parse(["llama-3.1-8b:verify:64:4096:2"]) == [
        ("llama-3.1-8b", "verify", 64, 4096, 2)]


def test_cache_view_takes_the_first_sequences_without_copying():
    k = torch.zeros(2, 8, 3, 16, 4)
    c = step_power.Cache(k, k.clone(), 5)
    assert c.k.shape == (2, 5, 3, 16, 4)
    c.k[0, 4, 0, 0, 0] = 1.0
    assert k[0, 4, 0, 0, 0] == 1.0


def test_cpu_run_times_every_replay(tmp_path, monkeypatch):
    monkeypatch.setattr(step_power, "OUT", tmp_path)
    step_power.main(["--cpu", "tiny:verify:2:32:3", "tiny:decode:3:16:1"])
    rows = list(csv.DictReader((tmp_path / "step_power.csv").open()))
    shapes = {(r["mode"], r["batch"], r["q"]) for r in rows}
    assert shapes == {("verify", "2", "3"), ("decode", "3", "1")}
    assert all(float(r["ms"]) > 0 for r in rows)
    assert (tmp_path / "step_power_samples.csv").read_text().startswith("time,clock_mhz")
