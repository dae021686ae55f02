"""validation/plans/: the GPU campaigns written for a later lease run as written. Each
script runs here with stand-ins for python3 and nvidia-smi that record the harness
commands; every recorded command must parse with its script's own argument parser and
name shapes, stacks, phases and models the harness knows, and each step must pack its
outputs (a device call that fails on a typo costs minutes of GPU time)."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "validation" / "harness"
if str(HARNESS) not in sys.path:
    sys.path.insert(0, str(HARNESS))

import bench_campaign as bc  # noqa: E402
import bench_serve_engine  # noqa: E402
import bench_stacks  # noqa: E402

SEP = "\x1f"
RUNS = [("odd_cache.sh", "steps"), ("odd_cache.sh", "graphs"),
        ("serving_warm.sh", "llama-3.2-1b"), ("serving_warm.sh", "llama-3.1-8b")]


def _run_plan(tmp_path: Path, script: str, part: str) -> tuple[int, list[list[str]], Path]:
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    rec = tmp_path / "calls.txt"
    (stubs / "python3").write_text(
        f"#!/bin/bash\n{{ printf '%s{SEP}' \"$@\"; printf '\\n'; }} >> \"$PLAN_REC\"\n")
    (stubs / "nvidia-smi").write_text("#!/bin/bash\necho 'NVIDIA H100 80GB HBM3'\n")
    for f in stubs.iterdir():
        f.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "OUT": str(out),
           "PLAN_ROOT": str(tmp_path / "work"), "PLAN_REC": str(rec)}
    proc = subprocess.run(["bash", str(ROOT / "validation" / "plans" / script), part],
                          env=env, capture_output=True, text=True, timeout=120)
    calls = [line.split(SEP)[:-1] for line in rec.read_text().splitlines()] \
        if rec.exists() else []
    return proc.returncode, calls, out


def _check_stacks_call(argv: list[str]) -> None:
    args = bench_stacks.parse_args(argv)
    names = bc.split_names(args.stack)
    assert names and all(n in bench_stacks.STACKS for n in names), args.stack
    phases = bc.select_phases(args.only, bench_stacks.PHASES)
    assert phases, args.only
    bench_stacks.select_grid(args, cuda=True)   # parses the step and profile shapes
    for text in (args.trace_shapes, args.graph_profile_shapes):
        if text:
            assert bc.parse_steps(text)
    for model in bc.split_names(args.models):
        assert (ROOT / "workloads" / "models" / f"{model}.yaml").is_file(), model
    assert args.gpu == "h100-sxm" and args.device == "cuda"


@pytest.mark.parametrize("script,part", RUNS, ids=[f"{s}-{p}" for s, p in RUNS])
def test_a_plan_runs_as_written(tmp_path: Path, script: str, part: str) -> None:
    rc, calls, out = _run_plan(tmp_path, script, part)
    assert rc == 0
    harness = [c for c in calls if c and c[0].startswith("validation/harness/")]
    assert harness, calls
    for argv in harness:
        name = Path(argv[0]).name
        if name == "bench_stacks.py":
            _check_stacks_call(argv[1:])
        elif name == "bench_serve_engine.py":
            args = bench_serve_engine.parse_args(argv[1:])
            assert (ROOT / "workloads" / "models" / f"{args.model}.yaml").is_file()
            assert args.warmup_s > 0 and args.cudagraph_mode == "full_and_piecewise"
        else:
            raise AssertionError(f"unexpected harness script {name}")
        assert argv[argv.index("--out") + 1].startswith(str(tmp_path / "work"))
    # every step packed the work folder: its log names each step and its exit
    packed = out / f"{script.split('.')[0]}_{part}.tgz"
    with tarfile.open(packed) as tar:
        log = tar.extractfile(f"{packed.stem}/log.txt").read().decode()  # type: ignore[union-attr]
    assert log.count("rc=0") == len(harness) and "== done" in log


def test_a_plan_refuses_an_unknown_part(tmp_path: Path) -> None:
    for script in ("odd_cache.sh", "serving_warm.sh"):
        rc, calls, _ = _run_plan(tmp_path, script, "nope")
        assert rc == 2
        assert not [c for c in calls if c and c[0].startswith("validation/harness/")]
