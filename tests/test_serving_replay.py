"""``gpusim serve --replay``: measured serving runs read, replayed and reported.

The oracle: a run that gpusim itself produced, written as a measured run, replays
with zero error and every step found measured. The committed CPU run
(tests/fixtures/serve_run_cpu, from validation/harness/bench_serve_engine.py) goes
through the command line; bad run files are one line naming file, line and field.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from gpusim.calibration import serving_host, serving_measured, serving_metrics, serving_replay
from gpusim.cli import main
from gpusim.errors import ConfigError
from gpusim.io import calibrations, loader
from gpusim.platform import Platform
from gpusim.serving.loop import ServingLoop
from gpusim.serving.scenario import Scenario
from gpusim.serving.simulate import build_engine

FIXTURE = Path(__file__).parent / "fixtures" / "serve_run_cpu"
GPU = loader.load_gpu("h100-sxm")
STACK = loader.load_stack("torch-fused")
PLATFORM = Platform(GPU, STACK, calibrations.load_calibration("auto", GPU, STACK))
MODEL = loader.load_model("llama-3.2-1b")
ENGINE = {"max_num_seqs": 16, "max_num_batched_tokens": 256, "block_size": 16,
          "num_blocks": 400, "max_model_len": 4096, "prefix_caching": True,
          "capture_sizes": [1, 2, 4, 8, 16]}


def simulated_run(out: Path, rate: float, seed: int = 4,
                  engine_settings: dict[str, Any] = ENGINE) -> Path:
    """A serving run of gpusim itself, written as the harness writes a measured one
    (each step's forward: its simulated time; no host work). A full_and_piecewise
    ``engine_settings`` marks the piecewise steps with their padded size (a column
    older runs lack)."""
    mode = engine_settings.get("cudagraph_mode", "full_decode_only")
    piecewise = mode == "full_and_piecewise"
    sc = Scenario.model_validate({
        "seed": seed, "duration_s": 4, "arrival": {"process": "poisson", "rate_per_s": rate},
        "prompt": {"dist": "uniform", "low_tokens": 20, "high_tokens": 300},
        "output": {"dist": "uniform", "low_tokens": 2, "high_tokens": 60},
        "prefix": {"shared_tokens": 64, "prompts": 2},
        "scheduler": {"max_num_seqs": 16, "max_num_batched_tokens": 256,
                      "prefix_caching": True,
                      "cudagraph_capture_sizes": engine_settings["capture_sizes"],
                      "cudagraph_mode": mode}})
    engine = build_engine(PLATFORM, MODEL, sc, kv_blocks=ENGINE["num_blocks"])
    loop = ServingLoop(engine, sc)
    reqs: dict[int, Any] = {}
    out.mkdir(parents=True)
    with open(out / "steps.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "start_s", "end_s", "forward_s", "gpu_s", "launch", "decode",
                    "decode_ctx_tokens", "padded_batch", "chunks", "tokens", "seqs",
                    "preempted", "kv_used_blocks", *(["padded_tokens"] if piecewise else [])])
        while not loop.finished:
            for req in [*loop.state.waiting, *loop.state.running.values()]:
                reqs.setdefault(req.rid, req)
            p = loop.step().plan
            chunks = " ".join(f"{c.rid}:{c.cached_tokens}:{c.new_tokens}" for c in p.prefill)
            pad = engine.step_model.padded_tokens(p.tokens) if p.prefill else None
            launch = "graph" if not p.prefill else "piecewise" if pad else "eager"
            w.writerow([p.index, repr(p.start_s), repr(p.end_s), repr(p.duration_s),
                        repr(p.duration_s), launch, len(p.decoding), p.decode_ctx_tokens,
                        0, chunks, p.tokens, len(p.decoding) + len(p.prefill),
                        " ".join(map(str, p.preempted)), 0, *([pad or 0] if piecewise else [])])
    sim = loop.summary().as_dict()
    keys = {}
    rows = []
    for rid, req in sorted(reqs.items()):
        segs = [[f"k{k}", n] for k, n in req.segments]
        keys[rid] = segs
        rows.append({"rid": rid, "arrival_s": req.arrival_s, "prompt_tokens": req.prompt_tokens,
                     "output_tokens": req.output_tokens, "segments": segs,
                     "output_key": f"k{req.output_key}", "first_token_s": 0.0,
                     "finish_s": 0.0, "token_s": []})
    # token times: what the replay itself reconstructs from the plans is tested against
    # the summary's counts; here they come from one more replay's reconstruction
    (out / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    meta = {"format": serving_measured.FORMAT, "device": "cuda", "gpu": "h100-sxm",
            "model": "llama-3.2-1b", "stack": "torch-fused", "load": out.name,
            "engine": engine_settings, "workload": {"duration_s": 4},
            "prefix_cache": sim["prefix_cache"], "lost_tokens": sim["tokens"]["recomputed"]}
    (out / "run.json").write_text(json.dumps(meta))
    (out / "config.json").write_text(json.dumps({"_name_or_path": "llama-3.2-1b"}))
    return out


def fill_token_times(run_dir: Path) -> None:
    """Token times of the simulated run (its plans say when each token came)."""
    rows = [json.loads(x) for x in (run_dir / "requests.jsonl").read_text().splitlines()]
    for r in rows:   # placeholders good enough for the reader's checks
        r["token_s"] = [r["arrival_s"] + 1.0 + i for i in range(r["output_tokens"])]
        r["first_token_s"], r["finish_s"] = r["token_s"][0], r["token_s"][-1]
    (run_dir / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = serving_measured.read_serving_run(run_dir)
    engine = build_engine(PLATFORM, MODEL, serving_replay.replay_scenario(run),
                          kv_blocks=ENGINE["num_blocks"])
    times = serving_replay.simulate_run(run, engine).token_s
    for r, ts in zip(rows, times, strict=True):
        r["token_s"], r["first_token_s"], r["finish_s"] = ts, ts[0], ts[-1]
    (run_dir / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def own_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("sim")
    runs = [simulated_run(root / name, rate) for name, rate in (("light", 4.0),
                                                                 ("heavy", 60.0))]
    for r in runs:
        fill_token_times(r)
    return runs


def test_a_run_of_gpusim_itself_replays_with_zero_error(own_runs: list[Path]) -> None:
    runs = [serving_measured.read_serving_run(p) for p in own_runs]
    results = serving_replay.compare_runs(runs, PLATFORM, lambda run: MODEL)
    for r in results:
        assert r.host[:4] == (pytest.approx(0.0, abs=1e-12),) * 4
        # the eager steps' host cost per launch: the fit recovers the one that made them
        assert r.host.launch_s == pytest.approx(
            PLATFORM.calibration.host.host_launch_cost_s, rel=1e-12)
        assert r.step_errors["all"]["forward"] == pytest.approx(0.0, abs=1e-12)
        assert r.steps_matched == 1.0
        assert r.simulated_steps == r.oracle_steps == len(r.run.steps)
        for view in (r.simulated, r.with_measured_steps):
            for name in serving_metrics.LATENCIES:
                assert view[name] == pytest.approx(r.measured[name], rel=1e-12)
        assert r.simulated_prefix == r.oracle_prefix
        assert r.simulated_prefix["hit_rate"] == pytest.approx(r.run.prefix_cache["hit_rate"])
        # the same schedule: the same decoding rows, step by step
        assert r.decoding_p99[0] == r.decoding_p99[1] == pytest.approx(
            np.percentile([s.decode for s in r.run.steps], 99))
    heavy = next(r for r in results if r.run.load == "heavy")
    assert heavy.simulated_preemptions > 0 or heavy.run.lost_tokens == 0


def test_host_fit_recovers_a_linear_host_cost() -> None:
    steps = [SimpleNamespace(seqs=n, chunks=(), host_s=100e-6 + 20e-6 * n)
             for n in (1, 2, 5, 9, 30)]
    fit = serving_host.fit_host(steps)  # type: ignore[arg-type]
    assert fit[:2] == (pytest.approx(100e-6), pytest.approx(20e-6))
    # decode steps alone say nothing of a prefill's host work
    assert fit.chunk_s == fit.prefill_token_s == 0.0 and fit.launch_s is None
    # bounded at zero: a host time that falls with sequences fits a flat one
    fit = serving_host.fit_host([SimpleNamespace(seqs=n, chunks=(), host_s=1e-3 - 1e-5 * n)
                                   for n in (1, 10, 50)])  # type: ignore[arg-type]
    assert fit.seq_s == 0.0 and fit.step_s > 0


def test_host_fit_separates_a_prefills_chunks_and_tokens() -> None:
    truth = serving_host.HostFit(150e-6, 5e-6, 300e-6, 0.3e-6)
    steps = []
    for decode in (1, 4, 16, 64):
        steps.append(SimpleNamespace(seqs=decode, chunks=()))
        for chunks in ((), ((0, 0, 512),), ((0, 0, 64), (1, 0, 2048)), ((0, 10, 7),)):
            if chunks:
                steps.append(SimpleNamespace(seqs=decode + len(chunks), chunks=chunks))
    for s in steps:
        s.host_s = truth.seconds(s)  # type: ignore[arg-type]
    fit = serving_host.fit_host(steps)  # type: ignore[arg-type]
    assert fit[:4] == tuple(pytest.approx(v, rel=1e-9) for v in truth[:4])


def test_a_mixed_steps_parts_name_what_it_launches() -> None:
    def step(decode: int, *chunks: tuple[int, int, int]) -> Any:
        return SimpleNamespace(decode=decode, chunks=chunks)

    parts = serving_host.step_parts
    assert parts(step(4)) == ""                                # decode-only
    assert parts(step(4, (1, 0, 300))) == "decoding rows + fresh"
    assert parts(step(0, (1, 500, 40))) == "after cache"
    assert parts(step(2, (1, 0, 30), (2, 700, 9))) == "decoding rows + fresh + after cache"


def test_saturation_is_the_best_throughput_of_the_saturated_runs() -> None:
    def comp(load: str, offered: float, meas: float, sim: float, model: str = "m") -> Any:
        """A run whose queue grows (TTFT 10x across it) where it serves < 90%."""
        run = SimpleNamespace(load=load, offered_rate_per_s=offered, model=model)
        grow = {True: 10.0, False: 1.1}
        return SimpleNamespace(
            run=run, measured={"requests_per_s": meas, "ttft_growth": grow[meas < 0.9 * offered]},
            simulated={"requests_per_s": sim, "ttft_growth": grow[sim < 0.9 * offered]})

    sat = serving_replay.saturation([comp("a", 2, 1.98, 2.0), comp("b", 8, 6.0, 7.9),
                                     comp("c", 16, 6.2, 7.0)])
    assert (sat["measured"], sat["simulated"]) == (6.2, 7.0)
    assert [x["measured_saturated"] for x in sat["rows"]] == [False, True, True]
    assert serving_replay.saturation([comp("a", 2, 1.98, 2.0)])["measured"] is None
    # two models: each its own saturation, never the larger model's runs mixed in
    two = serving_replay.saturation([comp("a", 2, 1.98, 2.0), comp("b", 8, 6.0, 7.9),
                                     comp("c", 16, 6.2, 7.0), comp("x", 4, 2.5, 2.4, "big"),
                                     comp("y", 2, 1.99, 2.0, "big")])
    assert two["models"] == {"big": {"measured": 2.5, "simulated": 2.4},
                             "m": {"measured": 6.2, "simulated": 7.0}}


def run_cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


REPLAY = ["serve", "--replay", str(FIXTURE), "--gpu", "h100-sxm", "--stack", "torch-fused"]


def test_cpu_fixture_report_says_it_waits_for_gpu_runs_and_reruns_identically(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = tmp_path / "a.md"
    rc, out, err = run_cli(capsys, [*REPLAY, "--report", str(a)])
    assert rc == 0, err
    assert "TTFT p50 err" in out
    text = a.read_text()
    assert "**These runs are from a CPU**" in text
    assert "The real report waits for GPU runs" in text
    assert "TPOT = (last token - first token) / (output tokens - 1)" in text
    assert "bench_serve_engine.py" in text and "## Saturation" in text
    assert "| run | parts | steps | forward MAPE | forward bias |" in text
    first = a.read_bytes()
    assert run_cli(capsys, [*REPLAY, "--report", str(a)])[0] == 0
    assert a.read_bytes() == first
    rc, out, _ = run_cli(capsys, [*REPLAY, "--format", "json"])
    numbers = json.loads(out)
    assert {r["device"] for r in numbers["runs"]} == {"cpu"}
    # with measured step times the schedule is the measured one, preemptions included
    for r in numbers["runs"]:
        assert r["steps_matched"] > 0.5


@pytest.mark.parametrize("extra, flag", [
    (["--rate", "2"], "--rate"),
    (["--prefix-caching"], "--prefix-caching"),
    (["--cudagraph-mode", "full_and_piecewise"], "--cudagraph-mode"),
    (["--tp", "2"], "--tp"),
])
def test_replay_refuses_workload_options(extra: list[str], flag: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(capsys, [*REPLAY, *extra])
    assert rc == 2 and len(err.strip().splitlines()) == 1 and flag in err


def test_serve_needs_a_model_or_a_replay(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(capsys, ["serve", "--gpu", "h100-sxm", "--rate", "1"])
    assert rc == 2 and "--model" in err and len(err.strip().splitlines()) == 1
    rc, _, err = run_cli(capsys, ["serve", "--gpu", "h100-sxm", "--model", "llama-3.2-1b",
                                  "--report", str(tmp_path / "r.md")])
    assert rc == 2 and "--report" in err
    rc, _, err = run_cli(capsys, ["serve", "--gpu", "h100-sxm", "--replay", str(tmp_path)])
    assert rc == 2 and "run.json" in err


def broken_copy(tmp_path: Path, name: str, edit) -> Path:
    run = tmp_path / "run"
    src = next(p.parent for p in sorted(FIXTURE.glob("*/run.json")))
    shutil.copytree(src, run)
    path = run / name
    path.write_text(edit(path.read_text()))
    return run


@pytest.mark.parametrize("name, edit, where", [
    ("run.json", lambda t: t.replace("gpusim-serve-run/1", "other"), "run.json: format"),
    ("steps.csv", lambda t: t.replace("\n0,", "\nzero,", 1), "steps.csv:2: step"),
    ("requests.jsonl", lambda t: t.replace('"token_s": [', '"token_s": [0.0, ', 1),
     "requests.jsonl:1: token_s"),
    ("requests.jsonl", lambda t: t.replace('"segments"', '"pieces"', 1),
     "requests.jsonl:1: segments"),
    ("run.json", lambda t: t.replace('"format"', '"process": {"load_index": "first", '
                                     '"warmup_s": 0, "warmup_requests": 8}, "format"', 1),
     "run.json: load_index"),
])
def test_bad_run_files_name_file_line_and_field(tmp_path: Path, name: str, edit,
                                                where: str) -> None:
    run = broken_copy(tmp_path, name, edit)
    with pytest.raises(ConfigError) as info:
        serving_measured.read_serving_run(run)
    assert where in str(info.value)


def test_token_times_rebuilt_from_the_steps_agree_with_the_loops_metrics(
        own_runs: list[Path]) -> None:
    run = serving_measured.read_serving_run(own_runs[1])
    engine = build_engine(PLATFORM, MODEL, serving_replay.replay_scenario(run),
                          kv_blocks=ENGINE["num_blocks"])
    sim = serving_replay.simulate_run(run, engine)
    lat = sim.summary["latency_s"]
    arrivals = [r.arrival_s for r in run.requests]
    ttft = [t[0] - a for a, t in zip(arrivals, sim.token_s, strict=True)]
    e2e = [t[-1] - a for a, t in zip(arrivals, sim.token_s, strict=True)]
    assert [len(t) for t in sim.token_s] == [r.output_tokens for r in run.requests]
    # the histograms' count, max and mean are exact
    assert (max(ttft), max(e2e)) == (lat["ttft_s"]["max"], lat["e2e_s"]["max"])
    assert sum(ttft) / len(ttft) == pytest.approx(lat["ttft_s"]["mean"], rel=1e-12)
    gaps = [b - a for t in sim.token_s for a, b in itertools.pairwise(t)]
    assert len(gaps) == lat["itl_s"]["count"]
    assert sum(gaps) == pytest.approx(lat["itl_s"]["mean"] * len(gaps), rel=1e-9)


def test_fit_launch_recovers_the_host_cost_of_host_bound_steps() -> None:
    rng = np.random.default_rng(0)
    n = 400
    gpu = rng.uniform(1e-3, 4e-3, n)            # GPU span of each eager step
    launches = rng.integers(400, 600, n).astype(float)
    last = np.full(n, 20e-6)
    true_h = 26e-6
    terms = np.column_stack([gpu, launches, last, np.zeros(n)])
    clean = serving_host.eager_forward_s(terms, true_h)
    terms[:, 3] = clean * np.exp(rng.normal(0.0, 0.05, n))   # 5% noise each step
    assert serving_host.fit_launch(terms) == pytest.approx(true_h, rel=0.02)
    # GPU-bound steps say nothing of the host cost: the fit keeps within its bounds
    gpu_bound = np.column_stack([np.full(5, 1.0), np.full(5, 10.0), last[:5],
                                 np.full(5, 1.0)])
    lo, hi = serving_host.LAUNCH_BOUNDS_S
    assert lo <= serving_host.fit_launch(gpu_bound) <= hi
    assert serving_host.fit_launch(np.zeros((0, 4))) is None


def test_a_repeated_run_is_grouped_with_its_spread(own_runs: list[Path]) -> None:
    from gpusim.calibration import serving_repeat

    light = serving_measured.read_serving_run(own_runs[0])
    heavy = serving_measured.read_serving_run(own_runs[1])
    results = serving_replay.compare_runs([light, heavy, light], PLATFORM,
                                          lambda run: MODEL)
    groups = serving_repeat.repeat_groups(results)
    assert [[r.run.load for r in g] for g in groups] == [[light.load, light.load]]
    assert serving_repeat.spread(groups[0], "ttft_s", "p50") == 0.0
    assert serving_repeat.worst_spread(results, "ttft_s", "p50") == 0.0
    assert serving_repeat.worst_spread(results[:2], "ttft_s", "p50") is None
    text = "\n".join(serving_repeat.repeat_section(results, frozenset()))
    assert "## Run-to-run spread" in text and "| 0.0% |" in text
    assert f"{light.load} (first load)" not in text
    assert serving_repeat.repeat_section(results[:2], frozenset()) == []
    marked = "\n".join(serving_repeat.repeat_section(results, frozenset({light.path})))
    assert f"{light.load} (first load)" in marked


def test_a_run_saturates_when_its_ttft_grows_across_it() -> None:
    """A queue that keeps up: TTFT flat across the run; one that does not: TTFT grows
    with the arrival (a backlog serving one request at a time); the drain of a short
    run's last long requests does not count."""
    arrivals = [0.1 * i for i in range(30)]
    flat = [[a + 0.02, a + 5.0] for a in arrivals]           # long outputs: a long drain
    m = serving_metrics.latency_metrics(arrivals, flat)
    assert m["ttft_growth"] == pytest.approx(1.0)
    assert not serving_metrics.saturated(m)
    assert m["requests_per_s"] < 0.9 * 10.0                  # what the old rule called saturated
    backlog = [[0.3 * (i + 1), 0.3 * (i + 1) + 0.01] for i in range(30)]   # 3.3 served/s
    q = serving_metrics.latency_metrics(arrivals, backlog)
    assert q["ttft_growth"] > serving_metrics.SATURATED_TTFT_GROWTH
    assert serving_metrics.saturated(q)
    assert math.isnan(serving_metrics.ttft_growth([0.0, 1.0], [0.1, 0.1]))


def test_a_scaled_step_model_prices_every_step_that_much_longer() -> None:
    sc = Scenario.model_validate({
        "duration_s": 1, "arrival": {"process": "poisson", "rate_per_s": 1.0},
        "prompt": {"dist": "fixed", "tokens": 100}, "output": {"dist": "fixed", "tokens": 10},
        "scheduler": {"max_num_seqs": 16, "max_num_batched_tokens": 256}})
    base = build_engine(PLATFORM, MODEL, sc, kv_blocks=ENGINE["num_blocks"]).step_model
    slow = serving_replay.ScaledStepTimes(base, 1.25)
    for got, want in ((slow.decode_step(8, 8 * 300.0), base.decode_step(8, 8 * 300.0)),
                      (slow.step(4, 1200.0, [(100, 0), (30, 64)]),
                       base.step(4, 1200.0, [(100, 0), (30, 64)]))):
        assert got[0] == pytest.approx(1.25 * want[0], rel=1e-12)
        assert got[1] == want[1]                       # the bytes moved stay
    assert slow.capture_sizes == base.capture_sizes    # everything else is the model's


def test_the_sensitivity_replay_moves_a_light_runs_tpot_by_the_step_spread(
        own_runs: list[Path]) -> None:
    """At light load the schedule barely changes when every step is slower: TPOT moves
    by about the spread itself; the section lists every run."""
    from gpusim.calibration import serving_sensitivity

    runs = [serving_measured.read_serving_run(p) for p in own_runs]
    results = serving_replay.compare_runs(runs, PLATFORM, lambda run: MODEL)
    light = next(r for r in results if r.run.load == "light")
    move = serving_sensitivity.moves(light)["TPOT p50"]
    assert move == pytest.approx(serving_replay.STEP_SPREAD, rel=0.25)
    text = "\n".join(serving_sensitivity.sensitivity_section(results))
    assert "## Sensitivity to the step time" in text
    assert all(f"{r.run.model} {r.run.load} |" in text for r in results)


def test_the_worst_spread_is_the_largest_over_the_repeat_groups() -> None:
    from gpusim.calibration import serving_repeat

    def result(model: str, ttft_p50: float) -> Any:
        run = SimpleNamespace(device="cuda", gpu="h100-sxm", model=model, engine={},
                              workload={}, offered_rate_per_s=1.0, requests=[])
        return SimpleNamespace(run=run, measured={"ttft_s": {"p50": ttft_p50}})

    results = [result("a", 1.0), result("a", 1.2), result("b", 2.0), result("b", 2.1),
               result("c", 5.0)]
    assert serving_repeat.worst_spread(results, "ttft_s", "p50") == pytest.approx(0.2)
    assert serving_repeat.worst_spread(results[-1:], "ttft_s", "p50") is None
