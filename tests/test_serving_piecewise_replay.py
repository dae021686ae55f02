"""Measured serving runs of vLLM's FULL_AND_PIECEWISE mode: the reader takes the run's
``engine.cudagraph_mode`` and each step's ``padded_tokens`` (older runs: neither),
checks that the piecewise steps are those the step model replays piecewise, and a
piecewise run of gpusim itself replays with zero error, its piecewise steps a row of
their own in the report."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from test_serving_replay import (
    ENGINE,
    FIXTURE,
    MODEL,
    PLATFORM,
    fill_token_times,
    simulated_run,
)

from gpusim.calibration import (
    serving_host,
    serving_measured,
    serving_metrics,
    serving_replay,
    serving_report,
)
from gpusim.errors import ConfigError
from gpusim.serving.simulate import build_engine

# mixed steps of up to 128 tokens replay piecewise graphs; 129..256 run eagerly
PIECEWISE_ENGINE = {**ENGINE, "capture_sizes": [1, 2, 4, 8, 16, 32, 64, 128],
                    "cudagraph_mode": "full_and_piecewise"}


@pytest.fixture(scope="module")
def piecewise_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("piecewise")
    runs = [simulated_run(root / name, rate, engine_settings=PIECEWISE_ENGINE)
            for name, rate in (("light", 4.0), ("heavy", 60.0))]
    for r in runs:
        fill_token_times(r)
    return runs


def test_older_runs_read_as_full_decode_only_without_padded_tokens() -> None:
    for path in sorted(p.parent for p in FIXTURE.glob("*/run.json")):
        run = serving_measured.read_serving_run(path)
        assert run.cudagraph_mode == run.engine["cudagraph_mode"] == "full_decode_only"
        assert {s.padded_tokens for s in run.steps} == {0}
        assert {serving_host.step_kind(s) for s in run.steps} <= {
            "decode, graph", "decode, eager", "mixed"}


def test_a_piecewise_run_reads_its_mode_and_padded_sizes(piecewise_runs: list[Path]) -> None:
    run = serving_measured.read_serving_run(piecewise_runs[1])
    assert run.cudagraph_mode == "full_and_piecewise"
    pieces = [s for s in run.steps if s.launch == "piecewise"]
    assert pieces and all(s.padded_tokens >= s.tokens and s.chunks for s in pieces)
    assert {s.padded_tokens for s in pieces} <= set(PIECEWISE_ENGINE["capture_sizes"])
    eager = [s for s in run.steps if s.chunks and s.launch != "piecewise"]
    assert eager and all(s.tokens > 128 and s.padded_tokens == 0 for s in eager)
    assert {serving_host.step_kind(s) for s in pieces} == {serving_host.PIECEWISE}
    scenario = serving_replay.replay_scenario(run).scheduler
    assert scenario.cudagraph_mode == "full_and_piecewise"


def test_a_piecewise_run_of_gpusim_itself_replays_with_zero_error(
        piecewise_runs: list[Path]) -> None:
    runs = [serving_measured.read_serving_run(p) for p in piecewise_runs]
    results = serving_replay.compare_runs(runs, PLATFORM, lambda run: MODEL)
    for r in results:
        # the launch cost is fitted on eager and piecewise steps alike
        assert r.host.launch_s == pytest.approx(
            PLATFORM.calibration.host.host_launch_cost_s, rel=1e-9)
        assert r.step_errors["all"]["forward"] == pytest.approx(0.0, abs=1e-9)
        assert r.step_errors[serving_host.PIECEWISE]["count"] > 0
        assert list(r.step_errors)[-2:] == [serving_host.PIECEWISE, "all"]
        assert r.steps_matched == 1.0
        for view in (r.simulated, r.with_measured_steps):
            for name in serving_metrics.LATENCIES:
                assert view[name] == pytest.approx(r.measured[name], rel=1e-9)
    text = serving_report.markdown(results, serving_replay.saturation(results), "h100-sxm",
                                   "torch-fused", "gpusim serve --replay runs")
    assert "| light | mixed, piecewise (" in text and "| heavy | mixed, piecewise (" in text
    assert "In the full_and_piecewise runs (light, heavy)" in text


def test_piecewise_steps_are_fitted_like_eager_ones(piecewise_runs: list[Path]) -> None:
    """A piecewise step's row of eager_terms: the launches outside its graphs, its
    graph replays folded into the last kernel's term, the model's forward back at
    any host cost."""
    run = serving_measured.read_serving_run(piecewise_runs[1])
    engine = build_engine(PLATFORM, MODEL, serving_replay.replay_scenario(run),
                          kv_blocks=ENGINE["num_blocks"])
    m = serving_host.without_host(engine.step_model)
    terms = serving_host.eager_terms(run, engine)
    steps = [s for s in run.steps if serving_host.step_kind(s) != "decode, graph"]
    assert len(terms) == len(steps)
    assert any(serving_host.step_kind(s) == serving_host.PIECEWISE for s in steps)
    for row, s in zip(terms, steps, strict=True):
        if serving_host.step_kind(s) == serving_host.PIECEWISE:
            decode, _, chunks = s.composition
            assert row[1] == pytest.approx(m.outside_launches(decode, chunks), rel=1e-9)
        for h in (0.0, 5e-6, 40e-6):
            want = serving_host.step_seconds(dataclasses.replace(m, host_launch_s=h),
                                             s.composition, s.longest)
            assert serving_host.eager_forward_s(row[None, :], h)[0] == pytest.approx(
                want, rel=1e-9)


def edited_copy(src: Path, tmp_path: Path, edit_steps=None, edit_meta=None) -> Path:
    run = tmp_path / "run"
    shutil.copytree(src, run)
    if edit_steps is not None:
        path = run / "steps.csv"
        lines = path.read_text().splitlines()
        path.write_text("\n".join(edit_steps(lines)) + "\n")
    if edit_meta is not None:
        path = run / "run.json"
        meta = json.loads(path.read_text())
        edit_meta(meta)
        path.write_text(json.dumps(meta))
    return run


def first_row(lines: list[str], launch: str) -> int:
    return next(i for i, x in enumerate(lines) if f",{launch}," in x)


def refusal(run_dir: Path, tmp_path: Path, launch: str, change) -> tuple[str, int]:
    """The reader's error on a copy of ``run_dir`` whose first ``launch`` step row is
    ``change(row)``, and that row's line in steps.csv."""
    def edit(lines: list[str]) -> list[str]:
        i = first_row(lines, launch)
        lines[i] = change(lines[i])
        edit.line = i + 1
        return lines

    run = edited_copy(run_dir, tmp_path, edit)
    with pytest.raises(ConfigError) as info:
        serving_measured.read_serving_run(run)
    return str(info.value), edit.line


def test_a_padded_size_that_is_not_the_next_capture_size_is_refused(
        piecewise_runs: list[Path], tmp_path: Path) -> None:
    msg, line = refusal(piecewise_runs[1], tmp_path, "piecewise",
                        lambda row: row.rsplit(",", 1)[0] + ",1024")
    assert f"steps.csv:{line}: padded_tokens" in msg
    assert "smallest capture size" in msg


@pytest.mark.parametrize("launch_from, launch_to", [("piecewise", "eager"),
                                                    ("eager", "piecewise")])
def test_a_step_that_ran_otherwise_than_the_model_replays_it_is_refused(
        piecewise_runs: list[Path], tmp_path: Path, launch_from: str, launch_to: str) -> None:
    msg, line = refusal(piecewise_runs[1], tmp_path, launch_from,
                        lambda row: row.replace(f",{launch_from},", f",{launch_to},"))
    assert f"steps.csv:{line}: launch" in msg


def test_a_piecewise_step_in_a_full_decode_only_run_is_refused(tmp_path: Path) -> None:
    src = next(p.parent for p in sorted(FIXTURE.glob("*/run.json")))

    def edit(lines: list[str]) -> list[str]:
        i = first_row(lines, "eager")
        lines[i] = lines[i].replace(",eager,", ",piecewise,")
        edit.line = i + 1
        return lines

    run = edited_copy(src, tmp_path, edit)
    with pytest.raises(ConfigError) as info:
        serving_measured.read_serving_run(run)
    assert f"steps.csv:{edit.line}: launch" in str(info.value)
    assert "full_decode_only run" in str(info.value)


@pytest.mark.parametrize("engine, reason", [
    ({"cudagraph_mode": "piecewise"}, "expected one of full_decode_only, full_and_piecewise"),
    ({"cudagraph_mode": "full_and_piecewise", "capture_sizes": []}, "needs capture_sizes"),
])
def test_a_bad_mode_names_run_json_and_the_field(tmp_path: Path, engine: dict,
                                                 reason: str) -> None:
    src = next(p.parent for p in sorted(FIXTURE.glob("*/run.json")))
    run = edited_copy(src, tmp_path, edit_meta=lambda meta: meta["engine"].update(engine))
    with pytest.raises(ConfigError) as info:
        serving_measured.read_serving_run(run)
    assert "run.json: engine.cudagraph_mode" in str(info.value)
    assert reason in str(info.value)
