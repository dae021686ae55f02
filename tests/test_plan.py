"""``gpusim plan``: the capacity planner's parts, its acceptance on the issue's case, the
screen's monotonicity as hypothesis properties, and its command-line errors.

Acceptance (issue 20): a plan for Llama 3.1 8B at 50 req/s of chat traffic over four
GPU types; its winner, re-simulated directly with the serving simulator (a fresh
engine, as ``gpusim serve`` builds it), meets its SLOs; the runner-up it rejected
misses one or costs more. The plan runs once per module (about 5 s of CPU).
"""

from __future__ import annotations

import csv
import io
import json
import math
import shlex
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpusim.cli.plan import hardware_for, parse_slo
from gpusim.cost.gemm import _schedule, gemm_schedule
from gpusim.errors import ConfigError, FieldError
from gpusim.io import loader
from gpusim.io import scenario as scenario_io
from gpusim.plan import Limits, PlanRequest, Slo, plan
from gpusim.plan.finalists import judge
from gpusim.plan.screen import capacity, step_curves
from gpusim.plan.search import screen_rows
from gpusim.plan.space import limits_grid, options
from gpusim.plan.workload import profile, replica_scenario
from gpusim.report import plan_figures, plan_output
from gpusim.serving import build_engine, simulate

REPO = Path(__file__).resolve().parents[1]
CHAT = REPO / "workloads" / "scenarios" / "chat-poisson.yaml"
GPUS = ["h100-sxm", "h200", "b200", "a100-sxm-80gb"]
SLO = Slo(ttft_p99_s=1.0, tpot_p99_s=0.05)


def chat(rate: float = 50.0):
    return scenario_io.scenario_from_options(CHAT, rate_per_s=rate)


@pytest.fixture(scope="module")
def hardware():
    # as `gpusim plan` takes them by default: speculation with the automatic draft too
    return tuple(hardware_for(GPUS, [loader.DEFAULT_STACK], "llama-3.1-8b", "auto", "graph",
                              "auto", chat()))


@pytest.fixture(scope="module")
def result(hardware):
    """The issue's plan: Llama 3.1 8B, chat at 50 req/s, four GPU types."""
    return plan(PlanRequest(hardware=hardware, scenario=chat(), slo=SLO))


def resimulate(res, verdict):
    """``verdict``'s deployment simulated afresh: its own engine, built for its limits
    and speculation, over the window the plan judged it on."""
    d = verdict.deployment
    sc = replica_scenario(res.request.scenario, verdict.load_factor / d.replicas,
                          verdict.window_s, SLO.ttft_p99_s, SLO.tpot_p99_s,
                          d.limits.max_num_seqs, d.limits.max_num_batched_tokens,
                          d.option.spec)
    o = d.option
    engine = build_engine(o.platform, o.model, sc, o.spec.draft if o.spec else None,
                          o.hardware.overhead if o.spec else None)
    return judge(simulate(engine, sc), SLO)


# ----------------------------------------------------------------------------------
# acceptance
# ----------------------------------------------------------------------------------
def test_the_winner_resimulated_meets_its_slos(result):
    w = result.winner
    assert w is not None and w.meets
    assert w.window_s == result.profile.window_s == 600.0   # confirmed over the full window
    ttft, tpot, meets, miss = resimulate(result, w)
    assert meets, miss
    # an engine built for the winner's own limits gives the plan's numbers
    assert ttft == pytest.approx(w.ttft_p99_s, rel=1e-9)
    assert tpot == pytest.approx(w.tpot_p99_s, rel=1e-9)
    assert ttft <= SLO.ttft_p99_s and tpot <= SLO.tpot_p99_s


def test_the_runner_up_misses_or_costs_more(result):
    w, ru = result.winner, result.runner_up
    assert ru is not None and ru.deployment.key != w.deployment.key
    ttft, tpot, meets, miss = resimulate(result, ru)
    assert (meets, miss) == (ru.meets, ru.miss)
    if ru.cost_per_hour < w.cost_per_hour:
        assert not meets
    elif ru.cost_per_hour == w.cost_per_hour and meets:
        assert max(ttft / SLO.ttft_p99_s, tpot / SLO.tpot_p99_s) >= w.score(SLO)
    else:
        assert ru.cost_per_hour > w.cost_per_hour
    # and nothing cheaper than the winner met the SLOs in the plan's simulations
    assert not [v for v in result.main.verdicts
                if v.meets and v.cost_per_hour < w.cost_per_hour]


def serve_cli(capsys, command: str) -> dict:
    """``command`` (``gpusim serve ...`` as the plan prints it) run through the command
    line, its JSON."""
    argv = [*shlex.split(command)[1:], "--format", "json", "--quiet"]
    rc, out, err = run_cli(capsys, argv)
    assert rc == 0, err
    return json.loads(out)


def test_gpusim_serve_agrees_with_the_winner_and_the_runner_up(result, capsys):
    # the commands the plan prints, run by `gpusim serve` itself: the winner meets its
    # SLOs with the plan's p99s; the runner-up misses one, or costs more
    w, ru = result.winner, result.runner_up
    served = serve_cli(capsys, plan_output.serve_command(result, "llama-3.1-8b", str(CHAT)))
    assert served["gpu"] == w.deployment.option.gpu_name
    assert served["duration_s"] == w.window_s == 600.0
    ttft, tpot, meets, miss = judge(served, SLO)
    assert meets, miss
    assert ttft <= SLO.ttft_p99_s and tpot <= SLO.tpot_p99_s
    assert served["requests"]["rejected"] == 0
    assert (ttft, tpot) == (pytest.approx(w.ttft_p99_s, rel=1e-9),
                            pytest.approx(w.tpot_p99_s, rel=1e-9))
    command = plan_output.serve_command(result, "llama-3.1-8b", str(CHAT), ru)
    ttft, tpot, meets, miss = judge(serve_cli(capsys, command), SLO)
    assert (meets, miss) == (ru.meets, ru.miss)
    assert not meets or ru.cost_per_hour > w.cost_per_hour or (
        ru.cost_per_hour == w.cost_per_hour and ru.score(SLO) >= w.score(SLO))
    if not meets:
        assert ttft > SLO.ttft_p99_s or tpot > SLO.tpot_p99_s or "backlog" in miss


def test_every_gpu_has_a_reason_and_the_front_is_not_dominated(result):
    assert [line.gpu for line in result.lines] == GPUS
    assert {line.kind for line in result.lines} <= {"winner", "cost", "latency", "memory",
                                                     "unsupported", "budget"}
    assert sum(line.kind == "winner" for line in result.lines) == 1
    front = result.front
    assert front and all(v.meets for v in front)
    assert min(v.cost_per_hour for v in front) == result.winner.cost_per_hour
    for a in front:
        for b in front:
            assert not (b.cost_per_hour <= a.cost_per_hour and b.ttft_p99_s <= a.ttft_p99_s
                        and b.tpot_p99_s <= a.tpot_p99_s and a is not b
                        and (b.cost_per_hour, b.ttft_p99_s, b.tpot_p99_s)
                        != (a.cost_per_hour, a.ttft_p99_s, a.tpot_p99_s))


def test_sensitivity_costs_follow_the_traffic(result):
    costs = {o.load_factor: (o.confirmed or o.winner).cost_per_hour for o in result.others}
    assert costs[0.75] <= result.winner.cost_per_hour <= costs[1.25]
    lines = result.sensitivity_lines()
    assert len(lines) == 2 and lines[0].startswith("traffic x0.75 (37.5 req/s)")


def test_the_screen_is_close_to_the_simulator(result):
    # where both looked at a deployment, the screen's p99s are within a factor of two
    # (TPOT) and three (TTFT) of the simulation that decided it, over a short window or,
    # where the screen doubted a short run's pass, over the full one (the screen
    # prunes; the simulator decides)
    from gpusim.plan.screen import predict_at

    prof = result.profile
    largest = Limits(max(x.max_num_seqs for x in result.limits),
                     max(x.max_num_batched_tokens for x in result.limits))
    seen = 0
    for v in result.main.verdicts:
        d = v.deployment
        if not v.meets and v.window_s < 600:
            continue
        c = step_curves(d.option, prof, largest, 16, 0.1)
        lp = predict_at(c, prof, d.limits, prof.rate_per_s / d.replicas)
        if lp is None:   # past the screen's peak: the simulator (and the ladder) decides
            continue
        assert 0.5 < float(lp.tpot_p99_s[0]) / v.tpot_p99_s < 2.0
        assert 0.5 < float(lp.ttft_p99_s[0]) / v.ttft_p99_s < 3.0
        seen += 1
    assert seen >= 3


def test_a_short_pass_the_screen_doubts_is_decided_over_the_full_window(result):
    # 2 x H100 at 25 req/s each meets the SLOs over 60 s that start empty (TTFT p99
    # 0.17 s) but its queue builds up for minutes: over the scenario's 600 s it misses
    # (1.9 s), as the screen predicted (3.3 s); no short run that meets is doubted
    from gpusim.plan.search import screen_doubts

    prof = result.profile
    largest = Limits(max(x.max_num_seqs for x in result.limits),
                     max(x.max_num_batched_tokens for x in result.limits))
    cache: dict = {}
    opts = {v.deployment.option.key: v.deployment.option for v in result.main.verdicts}
    curves = {k: step_curves(o, prof, largest, 16, 0.1) for k, o in opts.items()}
    screen_rows(curves, list(opts.values()), tuple(result.limits), prof, SLO, 1.0, 16,
                cache)
    doubts = screen_doubts(curves, prof, SLO, 1.0, cache)
    short = [v for v in result.main.verdicts if v.window_s < 600]
    assert short and not any(v.meets and doubts(v.deployment) for v in short)
    decided = [v for v in result.main.verdicts if v.window_s >= 600 and v is not
               result.main.confirmed and doubts(v.deployment)]
    assert any(not v.meets for v in decided)


def test_outputs_csv_json_html(result, tmp_path):
    command = plan_output.serve_command(result, "llama-3.1-8b", str(CHAT))
    assert command.startswith("gpusim serve --gpu ") and "--rate " in command
    rows = list(csv.DictReader(io.StringIO(plan_output.csv_text(result))))
    assert list(rows[0]) == plan_output.CSV_COLUMNS
    assert sum(r["status"] == "winner" for r in rows if r["load_factor"] == "1") == 1
    data = json.loads(plan_output.json_text(result, "llama-3.1-8b", command))
    assert data["winner"]["usd_per_hour"] == result.winner.cost_per_hour
    assert data["serve_command"] == command and len(data["gpus"]) == 4
    # the same plan gives the same bytes
    assert plan_output.json_text(result, "llama-3.1-8b", command) == json.dumps(
        data, indent=2) + "\n"
    html = plan_figures.plan_html(result, "t")
    assert 'id="gpusim-plan"' in html and html == plan_figures.plan_html(result, "t")
    lines = plan_output.summary_lines(result, "llama-3.1-8b", command)
    assert lines[1].startswith("winner: ") and any(x.startswith("runner-up") for x in lines)


# ----------------------------------------------------------------------------------
# units
# ----------------------------------------------------------------------------------
def test_slo_and_limits_check_their_values():
    with pytest.raises(FieldError, match="ttft_p99_s"):
        Slo(ttft_p99_s=0)
    with pytest.raises(FieldError, match="at least one"):
        Slo()
    assert SLO.scaled(2) == Slo(2.0, 0.1)
    with pytest.raises(FieldError, match="max_num_batched_tokens"):
        Limits(256, 128)
    grid = limits_grid((64, 256), (128, 8192))
    assert grid == (Limits(64, 128), Limits(64, 8192), Limits(256, 8192))
    with pytest.raises(FieldError):
        limits_grid((512,), (256,))


def test_parse_slo():
    assert parse_slo("ttft_p99_s=1,tpot_p99_s=0.05") == SLO
    assert parse_slo("tpot_p99_s=0.1") == Slo(tpot_p99_s=0.1)
    for bad in ("", "ttft=1", "ttft_p99_s=abc", "ttft_p99_s=-1", "ttft_p99_s=inf",
                "tpot_p99_s=1,tpot_p99_s=2"):
        with pytest.raises(ConfigError, match="--slo"):
            parse_slo(bad)


def test_profile_and_replica_scenarios():
    p = profile(chat())
    assert p.rate_per_s == 50 and p.arrival_scv == 1.0
    # lognormal(median 500, sigma 0.8) clipped at 8192: mean ~ 500 exp(0.32) = 689
    assert p.prompt_mean_tokens == pytest.approx(689, rel=0.05)
    assert p.longest_request_tokens == 8192 + 2048
    assert p.decode_context_mean_tokens > p.prompt_mean_tokens
    sc = replica_scenario(chat(), 0.25, 30.0, 1.0, 0.05, 64, 2048, None)
    assert sc.arrival.rate_per_s == 12.5 and sc.duration_s == 30.0
    assert (sc.scheduler.max_num_seqs, sc.scheduler.max_num_batched_tokens) == (64, 2048)
    assert (sc.slo.ttft_s, sc.slo.tpot_s) == (1.0, 0.05) and sc.speculative is None
    closed = scenario_io.load_scenario(REPO / "workloads" / "scenarios"
                                       / "closed-loop-agents.yaml")
    assert replica_scenario(closed, 1 / 3, 10, 1, 1, 8, 64).arrival.users == 21
    assert profile(closed).rate_per_s == pytest.approx(64 / 2.0)
    conv = scenario_io.scenario_from_options(CHAT, conversation_turns=3,
                                             prefix_caching=True, shared_prefix_tokens=100)
    pc = profile(conv)
    assert pc.rate_per_s == 60 and pc.prefill_mean_tokens < pc.prompt_mean_tokens
    no_think = scenario_io.with_overrides(closed, think_time_s=0)
    with pytest.raises(ConfigError, match="think"):
        profile(no_think)


def test_options_leave_out_what_does_not_fit():
    sc = chat()
    hw = hardware_for(["a100-40gb"], [loader.DEFAULT_STACK], "llama-3.1-70b", "auto",
                      "graph", "none", sc)
    found, unfit = options(hw, 8, 0.1, profile(sc).longest_request_tokens)
    assert sorted(o.tp for o in found) == [4, 8]
    assert {u.tp for u in unfit} == {1, 2}
    assert all(("weights per GPU" in u.reason or "KV cache" in u.reason)
               and u.reason.endswith("it fits from tp=4") for u in unfit)
    with pytest.raises(FieldError, match="max_gpus"):
        options(hw, 0, 0.1, 1)


def test_a_model_that_needs_tensor_parallelism_is_planned_with_it(capsys, tmp_path):
    out = tmp_path / "plan.json"
    rc, _, err = run_cli(capsys, [
        "plan", "--model", "llama-3.1-70b", "--traffic", str(CHAT), "--rate", "2", "--slo",
        "ttft_p99_s=2,tpot_p99_s=0.05", "--gpus", "h100-sxm", "--spec", "none",
        "--sensitivity", "none", "--sim-duration-s", "20", "--max-num-seqs", "64",
        "--max-num-batched-tokens", "2048", "--out-json", str(out)])
    assert rc == 0, err
    data = json.loads(out.read_text(encoding="utf-8"))
    w = data["winner"]
    assert w["tp"] >= 2 and w["gpus"] == w["tp"] * w["replicas"] and w["meets"]
    assert w["usd_per_hour"] == pytest.approx(w["gpus"] * 2.99)   # hardware/h100-sxm.yaml
    assert f"--tp {w['tp']}" in data["serve_command"]
    assert any(u["tp"] == 1 and u["kind"] == "memory" for u in data["left_out"])


def test_speculation_is_screened_from_the_iteration_model():
    sc = chat(10)
    hw = hardware_for(["h100-sxm"], [loader.DEFAULT_STACK], "llama-3.1-8b", "auto", "graph",
                      "llama-3.2-1b@3", sc)
    found, _ = options(hw, 1, 0.1, profile(sc).longest_request_tokens)
    spec = next(o for o in found if o.spec is not None)
    assert spec.spec.k == 3 and spec.spec.acceptance == 0.7
    c = step_curves(spec, profile(sc), Limits(256, 8192), 16, 0.1)
    assert c.spec_tokens == pytest.approx(1 + 0.7 + 0.7**2 + 0.7**3)
    assert c.spec_iteration_s is not None and c.spec_iteration_s[-1] > 2 * c.spec_iteration_s[1]


def test_the_gemm_schedule_of_a_large_sweep_is_exact():
    # engine tables repeat few token counts: they are scheduled once each
    m = np.repeat(np.arange(1.0, 300.0), 40)
    from gpusim.io.calibrations import load_calibration

    gpu = loader.load_gpu("h100-sxm")
    phys = load_calibration("auto", gpu, loader.load_stack()).physics
    fast = gemm_schedule(m, 4096, 14336, gpu, phys)
    slow = _schedule(m, 4096, 14336, float(gpu.sm_count), float(phys.gemm_tile_m),
                     float(phys.gemm_tile_n))
    assert all(np.array_equal(a, b) for a, b in zip(fast, slow, strict=True))


# ----------------------------------------------------------------------------------
# properties of the screen (what the search prunes with)
# ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def screen_parts(hardware):
    sc = chat()
    prof = profile(sc)
    lims = limits_grid((64, 256), (2048, 8192))
    found, _ = options(list(hardware), 16, 0.1, prof.longest_request_tokens)
    curves = {o.key: step_curves(o, prof, Limits(256, 8192), 16, 0.1) for o in found}
    return prof, lims, found, curves


def screen_cost(parts, slo: Slo, load_factor: float, cache: dict) -> float:
    prof, lims, found, curves = parts
    rows = screen_rows(curves, found, lims, prof, slo, load_factor, 16, cache)
    return min((r.cost_per_hour for r in rows), default=math.inf)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(f1=st.floats(0.05, 3.0), f2=st.floats(0.05, 3.0))
def test_more_traffic_never_gives_a_cheaper_plan(screen_parts, f1, f2):
    lo, hi = sorted((f1, f2))
    cache: dict = {}
    assert screen_cost(screen_parts, SLO, lo, cache) <= screen_cost(screen_parts, SLO, hi,
                                                                    cache)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(loose=st.floats(1.0, 4.0), ttft=st.floats(0.2, 5.0), tpot=st.floats(0.01, 0.2),
       f=st.floats(0.2, 2.0))
def test_a_looser_slo_never_gives_a_costlier_plan(screen_parts, loose, ttft, tpot, f):
    tight = Slo(ttft, tpot)
    assert (screen_cost(screen_parts, tight.scaled(loose), f, {})
            <= screen_cost(screen_parts, tight, f, {}))


def test_capacity_grows_with_the_slo(screen_parts):
    prof, lims, found, curves = screen_parts
    c = curves[found[0].key]
    caps = [capacity(c, prof, lims[-1], SLO.scaled(s)).capacity_per_s for s in (0.5, 1, 2)]
    assert caps[0] <= caps[1] <= caps[2] and caps[1] > 0


# ----------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------


def one_line_error(rc, out, err) -> str:
    assert rc == 2, err
    assert out == "" and "Traceback" not in err
    assert err.startswith("gpusim: error: ") and err.count("\n") == 1, err
    return err


BASE = ["plan", "--model", "llama-3.1-8b", "--traffic", str(CHAT), "--gpus", "h100-sxm"]


@pytest.mark.parametrize("slo, needle", [
    ("ttft=1", "--slo"), ("ttft_p99_s=abc", "--slo: ttft_p99_s"), ("tpot_p99_s=0", "--slo"),
    ("", "--slo"), ("ttft_p99_s=1,ttft_p99_s=2", "given twice")])
def test_bad_slo_strings_are_one_line(capsys, slo, needle):
    assert needle in one_line_error(*run_cli(capsys, [*BASE, "--slo", slo]))


def test_bad_scenarios_are_one_line(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(CHAT.read_text(encoding="utf-8").replace("  rate_per_s: 20",
                                                            "  rate_per_s: -3"),
                   encoding="utf-8")
    err = one_line_error(*run_cli(capsys, ["plan", "--model", "llama-3.1-8b", "--traffic",
                                           str(bad), "--slo", "ttft_p99_s=1"]))
    assert f"{bad}:" in err and "rate_per_s" in err
    err = one_line_error(*run_cli(capsys, [*BASE[:4], str(tmp_path / "none.yaml"),
                                           "--slo", "ttft_p99_s=1"]))
    assert "none.yaml" in err
    closed = tmp_path / "closed.yaml"
    closed.write_text("name: c\nduration_s: 60\narrival: {process: closed, users: 4}\n"
                      "prompt: {dist: fixed, tokens: 100}\noutput: {dist: fixed, tokens: 10}\n",
                      encoding="utf-8")
    err = one_line_error(*run_cli(capsys, ["plan", "--model", "llama-3.1-8b", "--traffic",
                                           str(closed), "--slo", "ttft_p99_s=1"]))
    assert str(closed) in err and "think" in err
    trace = REPO / "workloads" / "scenarios" / "synthetic-trace.yaml"
    err = one_line_error(*run_cli(capsys, ["plan", "--model", "llama-3.1-8b", "--traffic",
                                           str(trace), "--rate", "3", "--slo",
                                           "ttft_p99_s=1"]))
    assert "--rate" in err and "trace" in err


@pytest.mark.parametrize("extra, needle", [
    (["--gpus", "h900"], "--gpus: unknown gpu"), (["--stacks", "nope"], "--stacks"),
    (["--max-gpus", "0"], "--max-gpus"), (["--out-json", "/nonexistent/p.json"], "--out-json"),
    (["--html", "-", "--out-csv", "-"], "--out-csv"), (["--spec", "llama-3.2-1b@x"], "--spec"),
    (["--spec", "no-such-draft"], "--spec: unknown model"), (["--max-num-seqs", "a"],
                                                            "--max-num-seqs"),
    (["--sensitivity", "2,x"], "--sensitivity"), (["--max-sims", "0"], "--max-sims"),
    (["--rate", "0"], "--rate"), (["--sim-duration-s", "0"], "--sim-duration-s"),
    (["--max-num-seqs", "512", "--max-num-batched-tokens", "256"],
     "--max-num-batched-tokens")])
def test_bad_options_are_one_line(capsys, extra, needle):
    err = one_line_error(*run_cli(capsys, [*BASE, "--slo", "ttft_p99_s=1", *extra]))
    assert needle in err


def test_a_small_plan_from_the_command_line(capsys, tmp_path):
    out, csv_out, html = tmp_path / "plan.json", tmp_path / "plan.csv", tmp_path / "p.html"
    rc, stdout, err = run_cli(capsys, [
        *BASE, "--rate", "5", "--slo", "ttft_p99_s=2,tpot_p99_s=0.05", "--spec", "none",
        "--sensitivity", "none", "--sim-duration-s", "20", "--max-num-seqs", "64",
        "--max-num-batched-tokens", "2048", "--out-json", str(out), "--out-csv",
        str(csv_out), "--html", str(html)])
    assert rc == 0, err
    assert stdout.splitlines()[1].startswith("winner: 1 x h100-sxm (tp=1)")
    assert "Pareto front" in stdout and f"wrote {out}" in err
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["winner"]["replicas"] == 1 and data["winner"]["meets"]
    assert data["gpus"][0]["kind"] == "winner"
    assert csv_out.read_text(encoding="utf-8").startswith("load_factor,rate_per_s,status")
    assert html.read_text(encoding="utf-8").count('id="gpusim-plan"') >= 1
    rc, stdout, _ = run_cli(capsys, [*BASE, "--rate", "5", "--slo", "tpot_p99_s=0.05",
                                     "--screen-only", "--format", "csv", "--spec", "none"])
    assert rc == 0 and stdout.startswith("load_factor,rate_per_s,status")
    rc, stdout, _ = run_cli(capsys, [*BASE, "--rate", "5", "--slo", "tpot_p99_s=0.05",
                                     "--screen-only", "--spec", "none"])
    assert rc == 0 and stdout.splitlines()[1].startswith("screen (not simulated): 1 x ")


def test_a_gpu_never_measured_is_named_with_its_borrowed_calibration(result):
    lines = [x for x in plan_output.summary_lines(result, "llama-3.1-8b", None)
             if x.startswith("calibration:")]
    assert lines == [f"calibration: {g} was never measured here: transferred from h100-sxm "
                     "(cross-GPU error: validation/REPORT.md)" for g in ("b200",
                                                                        "a100-sxm-80gb")]
    cals = plan_output.as_dict(result, "llama-3.1-8b", None)["calibrations"]
    assert cals["b200"] == "transferred from h100-sxm"
    assert not cals["h100-sxm"].startswith("transferred")


def test_winner_trust_in_json_and_summary(result):
    # the winner's run over the full window tallied its step shapes: its band and
    # envelope (a GPU without a calibration of its own: unknown, never a crash)
    w = result.winner
    assert w is not None and w.shapes is not None and w.shapes.steps > 0
    trust = plan_output.as_dict(result, "llama-3.1-8b", None)["winner_trust"]
    assert {"band_pct", "envelope", "outside_step_fraction", "steps"} <= set(trust)
    assert trust["envelope"] == "unknown" or trust["band_pct"] is not None
    lines = plan_output.summary_lines(result, "llama-3.1-8b", None)
    assert sum(line.startswith("trust: ") for line in lines) == 1
