"""Which measured serving runs were their process's first load
(``gpusim.calibration.serving_process``): recorded by the harness, or inferred from the
runs' command lines and start times; and the report's section on them."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from gpusim.calibration.serving_process import first_load_section, first_loads

CMD = "python3 bench_serve_engine.py --rates 3,8 --seed 2"


def run(name: str, start: str | None = None, command: str | None = CMD,
        commit: str = "abc", process: dict[str, Any] | None = None,
        length_s: float = 40.0) -> Any:
    prov = {"git_commit": commit}
    if start is not None:
        prov["started_utc"] = f"2026-12-06T{start}+00:00"
    if command is not None:
        prov["command"] = command
    return SimpleNamespace(path=Path(name), provenance=prov, process=process or {},
                           steps=[SimpleNamespace(end_s=length_s)])


def test_the_harness_record_decides() -> None:
    runs = [run("a", process={"load_index": 0, "warmup_s": 0.0, "warmup_requests": 8}),
            run("b", process={"load_index": 1, "warmup_s": 0.0, "warmup_requests": 8}),
            run("c", process={"load_index": 0, "warmup_s": 20.0, "warmup_requests": 8})]
    assert first_loads(runs) == {Path("a")}


def test_one_commands_runs_in_a_row_are_one_process() -> None:
    runs = [run("r3", "08:49:19"), run("r8", "08:50:00"),
            # the same command again, long after: a new process
            run("again", "09:30:00"),
            # another command line or commit: another process
            run("other", "08:50:30", command=CMD + " --duration-s 40"),
            run("commit", "08:50:40", commit="def")]
    assert first_loads(runs) == {Path("r3"), Path("again"), Path("other"), Path("commit")}


def test_a_warm_up_in_the_command_or_an_unknown_start_is_never_a_first_load() -> None:
    runs = [run("warm", "08:49:19", command=CMD + " --warmup-s 20"),
            run("warm=", "08:49:19", command=CMD + " --warmup-s=5"),
            run("nostart", None), run("nocommand", "08:49:19", command=None)]
    assert first_loads(runs) == frozenset()
    # a warm-up of 0 s is none
    assert first_loads([run("zero", "08:49:19", command=CMD + " --warmup-s 0")]) == {
        Path("zero")}


def result(name: str, ttft_err: float, first: bool) -> Any:
    process = {"load_index": 0 if first else 1, "warmup_s": 0.0, "warmup_requests": 8}
    measured = {"ttft_s": {"p50": 1.0, "p99": 2.0}, "tpot_s": {"p50": 1.0, "p99": 1.0}}
    simulated = {"ttft_s": {"p50": 1.0 + ttft_err, "p99": 2.0}, "tpot_s": {"p50": 1.0,
                                                                          "p99": 1.0}}
    r = run(name, process=process)
    r.model, r.load = "m", name
    return SimpleNamespace(run=r, measured=measured, simulated=simulated,
                           step_errors={"mixed": {"forward_bias": -0.1 if first else 0.02}})


def test_the_section_sets_first_loads_apart(monkeypatch) -> None:
    from gpusim.calibration import serving_process
    # every run below saturation (the section leaves the saturated out)
    monkeypatch.setattr(serving_process, "saturated", lambda metrics: False)
    results = [result("cold", -0.2, True), result("warm1", 0.01, False),
               result("warm2", -0.03, False)]
    cold = first_loads([r.run for r in results])
    text = "\n".join(first_load_section(results, cold))
    assert "## First loads of a process" in text and "m cold." in text
    assert "| first of their process | 1 | 20.0% / -20.0% |" in text
    assert "| later | 2 | 2.0% / -3.0% |" in text
    assert "| -10.0% |" in text and "| +2.0% |" in text
    # nothing to set apart without both kinds
    assert first_load_section(results[:1], cold) == []
    assert first_load_section(results[1:], cold) == []


def test_a_saturated_load_before_a_run_still_makes_it_a_later_load(monkeypatch) -> None:
    """The section judges the runs below saturation, but which was its process's first
    load is decided over all of them: a saturated load that ran first in the process
    makes the next one a later load."""
    from gpusim.calibration import serving_process

    first, second = run("r34", "08:49:19"), run("r8", "08:50:00")
    assert first_loads([first, second]) == {Path("r34")}
    assert first_loads([second]) == {Path("r8")}   # seen alone it would look first
    results = [result("r34", 0.0, True), result("r8", 0.01, False),
               result("r3", 0.02, False)]
    for r, base in zip(results, (first, second, run("r3", "08:51:00")), strict=True):
        r.run.process, r.run.provenance = {}, base.provenance
        r.run.path = base.path
    monkeypatch.setattr(serving_process, "saturated", lambda metrics: metrics.get("sat"))
    results[0].measured["sat"] = True
    cold = first_loads([r.run for r in results])
    assert cold == {Path("r34")}
    # below saturation none is a first load: nothing to set apart
    assert first_load_section(results, cold) == []
