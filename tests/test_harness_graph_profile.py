"""validation/harness/graph_profile.py and bench_stacks.py's graph_profile phase on the
CPU: replays split kernel by kernel, the phase's rows (the capture and the profiler
stood in for: CUDA graphs need a GPU), and its skip without CUDA."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

HARNESS = Path(__file__).resolve().parents[1] / "validation" / "harness"
if str(HARNESS) not in sys.path:
    sys.path.insert(0, str(HARNESS))

import bench_campaign  # noqa: E402
import bench_stacks  # noqa: E402
import graph_profile as gp  # noqa: E402
from bench_timing import Budget, Clock, CsvSink  # noqa: E402


def _spans(replays: int, per: int, period_us: float = 100.0) -> list[gp.Span]:
    """``replays`` replays of ``per`` kernels, each 2 us long after a 0.5 us gap,
    listed out of time order."""
    out = []
    for r in range(replays):
        t = r * period_us
        for i in range(per):
            out.append(gp.Span(f"k{i}", t, t + 2.0))
            t += 2.5
    return out[::-1]


def test_split_replays_orders_and_measures_each_kernel():
    got = gp.split_replays(_spans(3, 4), 3)
    assert len(got) == 3
    for r, rows in enumerate(got):
        assert [row["index"] for row in rows] == [0, 1, 2, 3]
        assert [row["kernel_name"] for row in rows] == ["k0", "k1", "k2", "k3"]
        assert {row["replay"] for row in rows} == {r}
        assert [row["duration_us"] for row in rows] == ["2.000"] * 4
        # the first kernel's gap would be the host sync between replays: left blank
        assert [row["gap_before_us"] for row in rows] == ["", "0.500", "0.500", "0.500"]


@pytest.mark.parametrize("spans,replays", [([], 1), (_spans(1, 5), 2), (_spans(2, 3), 0)])
def test_split_replays_refuses_what_does_not_split(spans, replays):
    with pytest.raises(ValueError):
        gp.split_replays(spans, replays)


def _read(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        return list(r.fieldnames or []), list(r)


def test_graph_profile_phase_writes_each_replays_kernels(tmp_path, monkeypatch):
    """The phase's wiring: each shape's step captured once, its replays' rows under
    the shape, the stack and the cache it attends (the stack's own step ran)."""
    calls = []

    def fake_profile(replay, replays):
        for _ in range(replays):
            calls.append(replay())
        return gp.split_replays(_spans(replays, 2), replays)

    monkeypatch.setattr(bench_stacks, "capture", lambda fn: SimpleNamespace(replay=fn))
    monkeypatch.setattr(bench_stacks, "profile_replays", fake_profile)
    cpu = torch.device("cpu")
    sink = CsvSink(tmp_path / "graph_kernels.csv", bench_stacks.STACK_GRAPH_KERNELS_COLUMNS)
    shapes = (("decode", 2, 16, 1), ("verify", 2, 13, 3))
    run = bench_stacks.Run(
        out=tmp_path, device=cpu, grid=bench_stacks.CPU_GRID, budget=Budget(60.0),
        clock=Clock(cpu), models=bench_campaign.load_models(["tiny"], {}, Path(".")),
        steps=CsvSink(tmp_path / "steps.csv", bench_stacks.STACK_STEPS_COLUMNS),
        kernels=CsvSink(tmp_path / "kernels.csv", bench_stacks.STACK_KERNELS_COLUMNS),
        trace_shapes=(), trace_steps=1, graph_profile_shapes=shapes, replays=2,
        graph_kernels=sink)
    run.dtype = torch.float32
    bench_stacks.run_graph_profile(run, bench_stacks.STACKS["torch-fused"])
    sink.close()
    assert run.n_errors == 0
    header, rows = _read(tmp_path / "graph_kernels.csv")
    assert header == [*gp.GRAPH_KERNELS_COLUMNS, "stack", "cache_len"]
    assert len(rows) == len(shapes) * 2 * 2
    for (mode, b, c, q), got in zip(shapes, (rows[:4], rows[4:]), strict=True):
        assert {(r["mode"], r["batch"], r["ctx"], r["q"], r["cache_len"]) for r in got} == {
            (mode, str(b), str(c), str(q), str(c + q))}
        assert [(r["replay"], r["index"]) for r in got] == [("0", "0"), ("0", "1"),
                                                            ("1", "0"), ("1", "1")]
        assert {r["stack"] for r in got} == {"torch-fused"}
    # the stack's real step ran on each replay: decode's logits [B, V], verify's [B*q, V]
    assert [tuple(t.shape) for t in calls] == [(2, 256)] * 2 + [(6, 256)] * 2


def test_graph_profile_needs_cuda(tmp_path):
    rc = bench_stacks.main(["--out", str(tmp_path), "--gpu", "cpu-test", "--device", "cpu",
                            "--models", "tiny", "--stack", "torch-hf", "--only",
                            "graph_profile"])
    assert rc == 0 and not (tmp_path / "errors.log").exists()
    assert not (tmp_path / "graph_kernels.csv").exists()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["phases_run"] == ["graph_profile"]
    assert summary["rows"]["graph_kernels"] == 0
    env = json.loads((tmp_path / "env.json").read_text())
    assert env["replays"] == 3
    assert [tuple(s) for s in env["graph_profile_shapes"]] == list(
        bench_stacks.CPU_GRID.profile)
    with pytest.raises(SystemExit):
        bench_stacks.main(["--out", str(tmp_path), "--gpu", "x", "--device", "cpu",
                           "--stack", "torch-hf", "--replays", "0"])
