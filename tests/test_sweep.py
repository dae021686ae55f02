"""gpusim sweep: the same bytes on every executor and worker count (this process, a
local process pool, a 2-worker Dask LocalCluster), resumable from its ledger, per-point
seeds, and one line with exit 2 for a bad grid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpusim.cli import main
from gpusim.sweep import grid_from_dict, load_grid, local_executor, run_sweep, store
from gpusim.sweep import run as run_mod
from gpusim.sweep.grid import point_seed

STEP = """\
simulation: step
seed: 7
grid:
  gpu: [h100-sxm, h200]
  model: llama-3.2-1b
  batch: [1, 64]
  ctx: [512, 8192]
  tp: [1, 3]
"""
SPEC = """\
simulation: spec
seed: 7
grid:
  gpu: h100-sxm
  target: llama-3.1-8b
  draft: [llama-3.2-1b, eagle]
  k: [2, 4]
  batch: 8
  acceptance: [0.6, "0.9,0.8,0.7"]
  mc_iterations: 50
"""
SERVE = """\
simulation: serve
seed: 7
grid:
  gpu: h100-sxm
  model: llama-3.2-1b
  rate: 8
  prompt_dist: "lognormal:median=300,sigma=0.6,max=2048"
  output_dist: "uniform:16-64"
  duration_s: 1.5
  replicate: [0, 1]
"""


def _grids(tmp_path: Path) -> list[Path]:
    out = []
    for name, text in (("step", STEP), ("spec", SPEC), ("serve", SERVE)):
        p = tmp_path / f"{name}.yaml"
        p.write_text(text)
        out.append(p)
    return out


def _outputs(results, folder: Path) -> dict[str, bytes]:
    """Each grid's CSV text and Parquet bytes."""
    folder.mkdir()
    out = {}
    for name, result in results.items():
        out[f"{name}.csv"] = result.csv_text().encode()
        store.write_parquet(folder / f"{name}.parquet", result.rows)
        out[f"{name}.parquet"] = (folder / f"{name}.parquet").read_bytes()
    return out


def _run_all(paths: list[Path], executor, workers: int):
    return {p.stem: run_sweep(load_grid(p), executor, workers) for p in paths}


def test_results_are_byte_identical_on_every_executor(tmp_path):
    pytest.importorskip("pyarrow")
    distributed = pytest.importorskip("distributed")
    del distributed
    from gpusim.sweep import dask_executor

    paths = _grids(tmp_path)
    with local_executor(1) as (ex, n):
        inline = _run_all(paths, ex, n)
    with local_executor(2) as (ex, n):
        pool = _run_all(paths, ex, n)
    with dask_executor(2) as (ex, n):
        dask = _run_all(paths, ex, n)
    a, b, c = (_outputs(r, tmp_path / k) for r, k in ((inline, "inline"), (pool, "pool"),
                                                      (dask, "dask")))
    assert a == b == c
    # the grids ran: every simulation gave figures, serving's replicates differ
    step_rows = inline["step"].rows
    assert len(step_rows) == 16 and [r["point"] for r in step_rows] == list(range(16))
    assert {r["status"] for r in step_rows if r["tp"] == 1} == {"ok"}
    assert all("tp" in str(r["error"]) for r in step_rows if r["tp"] == 3)
    assert all(r["speedup"] > 0 for r in inline["spec"].rows)
    serve = inline["serve"].rows
    assert [r["status"] for r in serve] == ["ok", "ok"]
    assert serve[0]["seed"] != serve[1]["seed"]
    assert serve[0]["tokens.prompt"] != serve[1]["tokens.prompt"]


def test_a_serve_grid_varies_the_cudagraph_mode():
    grid = grid_from_dict({"simulation": "serve", "seed": 7, "grid": {
        "gpu": "h100-sxm", "model": "llama-3.2-1b", "rate": 8.0, "prompt_dist": "300",
        "output_dist": "16", "duration_s": 1.5, "cudagraph_capture_sizes": "vllm",
        "cudagraph_mode": ["full_decode_only", "full_and_piecewise"]}}, "g")
    with local_executor(1) as (ex, n):
        rows = run_sweep(grid, ex, n).rows
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert [r["cudagraph_mode"] for r in rows] == ["full_decode_only", "full_and_piecewise"]
    assert [r.get("scheduler.cudagraph_mode") for r in rows] == [None, "full_and_piecewise"]


def test_a_point_keeps_its_seed_in_any_grid():
    small = grid_from_dict({"simulation": "serve", "seed": 3, "grid": {
        "gpu": "h100-sxm", "model": "llama-3.2-1b", "rate": [2.0, 4.0]}}, "a")
    big = grid_from_dict({"simulation": "serve", "seed": 3, "grid": {
        "gpu": "h100-sxm", "model": "llama-3.2-1b", "rate": [1.0, 4.0, 2.0]}}, "b")
    seeds = {p.params["rate"]: p.seed for p in small.points()}
    assert seeds == {p.params["rate"]: p.seed for p in big.points()
                     if p.params["rate"] in seeds}
    assert len({p.seed for p in big.points()}) == 3
    assert all(0 <= p.seed < 2**63 for p in big.points())
    other_root = point_seed("serve", 4, small.points()[0].params)
    assert other_root != small.points()[0].seed


def test_finished_points_are_not_recomputed(tmp_path, monkeypatch):
    grid_path = _grids(tmp_path)[0]
    calls: list[int] = []

    def counting(simulation, base_dir, chunk):
        calls.extend(i for i, _, _ in chunk)
        return real(simulation, base_dir, chunk)

    real = run_mod.run_chunk
    monkeypatch.setattr(run_mod, "run_chunk", counting)
    ledger = store.Ledger(tmp_path / "ledger.jsonl")
    grid = load_grid(grid_path)
    with local_executor(1) as (ex, n):
        first = run_sweep(grid, ex, n, ledger)
        assert sorted(calls) == list(range(16)) and first.computed == 16
        calls.clear()
        again = run_sweep(grid, ex, n, ledger)
        assert calls == [] and (again.computed, again.reused) == (0, 16)
        assert again.csv_text() == first.csv_text()
        # a sweep stopped while writing: two points lost, the last line cut short
        lines = ledger.path.read_text().splitlines(keepends=True)
        ledger.path.write_text("".join(lines[:-2]) + lines[-1][:25])
        partial = run_sweep(grid, ex, n, ledger)
        assert len(calls) == 2 and partial.computed == 2
        assert partial.csv_text() == first.csv_text()
        # a grown grid runs only its new points
        calls.clear()
        bigger = grid_path.read_text().replace("batch: [1, 64]", "batch: [1, 64, 128]")
        grid_path.write_text(bigger)
        grown = run_sweep(load_grid(grid_path), ex, n, ledger)
        assert len(calls) == 8 and (grown.computed, grown.reused) == (8, 16)
    assert all(json.loads(line) for line in ledger.path.read_text().splitlines())


def test_cli_writes_resumes_and_reports(tmp_path, capsys):
    pytest.importorskip("pyarrow")
    grid_path = _grids(tmp_path)[1]
    out, pq = tmp_path / "r.csv", tmp_path / "r.parquet"
    args = ["sweep", str(grid_path), "--out", str(out), "--parquet", str(pq),
            "--workers", "1"]
    assert main(args) == 0
    first_csv, first_pq = out.read_bytes(), pq.read_bytes()
    assert "8 run on this process, 0 from the ledger" in capsys.readouterr().err
    assert (tmp_path / "r.csv.ledger.jsonl").is_file()
    assert main(args) == 0
    assert "0 run on this process, 8 from the ledger" in capsys.readouterr().err
    assert out.read_bytes() == first_csv and pq.read_bytes() == first_pq
    assert main([*args, "--fresh"]) == 0
    assert "8 run" in capsys.readouterr().err and out.read_bytes() == first_csv
    # no output file: the rows on stdout
    assert main(["sweep", str(grid_path), "--workers", "1", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["point"] for r in rows] == list(range(8))


BAD = [
    ("simulation: step\ngrid:\n  gpu: h100-sxm\n  model: llama-3.2-1b\n  batchx: 1\n",
     ":5: grid.batchx: unknown key for simulation step; allowed:"),
    ("simulation: step\ngrid:\n  gpu: h100-sxm\n  model: llama-3.2-1b\n  batch: [1,\n"
     "    0]\n", ":6: grid.batch.1: Input should be greater than or equal to 1 (got 0)"),
    ("simulation: step\ngrid:\n  gpu: [h100-sxm,\n    h999]\n  model: llama-3.2-1b\n",
     ":4: grid.gpu.1: unknown gpu 'h999'"),
    ("simulation: stepp\ngrid:\n  gpu: h100-sxm\n", ":1: simulation: Input should be"),
    ("simulation: spec\ngrid:\n  gpu: h100-sxm\n  draft: eagle\n",
     ":2: grid.target: required key is missing"),
    ("simulation: step\ngrid:\n  gpu: h100-sxm\n  model: llama-3.2-1b\n  batch: []\n",
     ":5: grid.batch: an axis needs at least one value"),
    ("simulation: serve\ngrid:\n  gpu: h100-sxm\n  model: llama-3.2-1b\n  rate: 2\n"
     "  prompt_dist: '100'\n  output_dist: [bogus]\n  duration_s: 1\n",
     ":7: grid.output_dist.0: expected N, fixed:N"),
    ("simulation: serve\ngrid:\n  gpu: h100-sxm\n  model: llama-3.2-1b\n  rate: 2\n",
     ":2: grid.prompt_dist: a serve grid without scenario or trace needs"),
    ("simulation: serve\ngrid:\n  gpu: h100-sxm\n  model: llama-3.2-1b\n  rate: 2\n"
     "  prompt_dist: '100'\n  output_dist: '10'\n  duration_s: 1\n"
     "  cudagraph_mode: [full_decode_only,\n    piecewise]\n",
     ":10: grid.cudagraph_mode.1: Input should be 'full_decode_only' or"),
    ("simulation: serve\ngrid:\n  gpu: h100-sxm\n  model: llama-3.2-1b\n  rate: 2\n"
     "  prompt_dist: '100'\n  output_dist: '10'\n  duration_s: 1\n"
     "  cudagraph_mode: full_and_piecewise\n",
     ":9: grid.cudagraph_mode: full_and_piecewise needs cudagraph_capture_sizes"),
    ("simulation: step\ngrid:\n  gpu: h100-sxm\n  model: llama-3.2-1b\n  seed: 2\n",
     ":5: grid.seed: seeds come from the top-level seed"),
    ("simulation: step\ngrid: {gpu: h100-sxm, model: llama-3.2-1b, batch: [1, 1]}\n",
     ":2: grid.batch.1: repeated value in this axis"),
    ("simulation: step\n  grid: [\n", ": YAML syntax error"),
]


@pytest.mark.parametrize(("text", "expected"), BAD, ids=[e for _, e in BAD])
def test_a_bad_grid_is_one_line_and_exit_2(tmp_path, capsys, text, expected):
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    assert main(["sweep", str(path), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"gpusim: error: {path}") and expected in err, err


def test_bad_options_and_ledgers_are_one_line(tmp_path, capsys):
    grid_path = _grids(tmp_path)[0]
    cases = [
        (["--dask", "2", "--workers", "2"], "give one of --scheduler, --dask, --workers"),
        (["--workers", "0"], "--workers: workers=0 must be an integer in 1..1024"),
    ]
    for extra, expected in cases:
        assert main(["sweep", str(grid_path), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, err
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_text('{"gpusim_sweep_ledger": 1}\nnot json\n{"key": "a", "record": {}}\n')
    assert main(["sweep", str(grid_path), "--workers", "1", "--ledger", str(damaged)]) == 2
    err = capsys.readouterr().err
    assert f"{damaged}:2: damaged ledger line" in err and err.count("\n") == 1


def test_the_shipped_grids_check():
    from gpusim.sweep.run import check

    paths = sorted((Path(__file__).resolve().parents[1] / "workloads" / "sweeps").glob("*.yaml"))
    assert {load_grid(p).simulation for p in paths} == {"step", "spec", "serve"}
    for p in paths:
        grid = load_grid(p)
        check(grid, grid.points())
