"""validation/harness/campaign.py: the lease's plan, and the whole campaign on the CPU.

The CPU campaign runs every part (tiny models, one or two shapes each) as the GPU one
does, packs the results and unpacks them into a data folder; the plan's GPU command
lines are parsed by the scripts they call, and its budgets add up to the lease.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import json
import os
import stat
import sys
import tarfile
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

HARNESS = Path(__file__).resolve().parents[1] / "validation" / "harness"
if str(HARNESS) not in sys.path:
    sys.path.insert(0, str(HARNESS))

import bench_campaign as bc  # noqa: E402
import bench_quant_moe as bq  # noqa: E402
import bench_stacks  # noqa: E402
import bench_steps  # noqa: E402
import campaign  # noqa: E402
from bench_common import GRIDS  # noqa: E402

HAVE_HF = importlib.util.find_spec("transformers") is not None
SCRIPTS = {"bench_stacks.py": bench_stacks.parse_args, "bench_quant_moe.py": bq.parse_args}


def _shapes(part: campaign.Part, flag: str) -> set[tuple]:
    return set(bc.parse_steps(part.args[part.args.index(flag) + 1])) \
        if flag in part.args else set()


# ----------------------------------------------------------------------------- the plan

def test_gpu_plan_fits_the_lease():
    parts = campaign.plan("cuda")
    assert [p.group for p in parts] == sorted(p.group for p in parts)   # priority order
    assert {p.group for p in parts} == set("abcdefg")
    first = sum(p.planned_s for p in parts if p.group in "abcd")
    assert first <= 360
    assert sum(p.planned_s for p in parts) <= 540 - campaign.PACK_RESERVE_S
    assert len({p.name for p in parts}) == len(parts)


def test_gpu_plan_command_lines_parse():
    """Every GPU part's command is one its script accepts, with shapes it can parse."""
    args = campaign.parse_args(["--gpu", "h100-sxm", "--out", "x"])
    for p in campaign.plan("cuda"):
        cmd = campaign.command(p, args, "h100-sxm", Path("w") / p.name, 30)
        parsed = SCRIPTS[p.script](cmd[2:])
        assert parsed.device == "cuda" and parsed.budget_s == 30
        for flag in ("--step-shapes", "--eager-shapes", "--profile-shapes", "--trace-shapes"):
            for mode, b, _ctx, q in _shapes(p, flag):
                assert mode in ("decode", "verify", "prefill") and b >= 1 and q >= 1
        if p.script == "bench_stacks.py":
            bench_stacks.select_stacks(parsed.stack)
            bc.select_phases(parsed.only, bench_stacks.PHASES)
        assert len(" ".join(cmd)) < 2000


def test_gpu_plan_grids():
    parts = {p.name: p for p in campaign.plan("cuda")}
    # torch-hf's lease subset is a subset of the committed grid
    committed = {(s.mode, s.batch, s.ctx, s.q) for s in bench_steps.grid_shapes(GRIDS["full"])
                 if s.launch == "graph"}
    assert _shapes(parts["graph-torch-hf-spread"], "--step-shapes") <= committed
    # torch-compile: batch >= 2 (batch 1 compiles graphs of its own), two modes
    comp = parts["steps-torch-compile"]
    both = _shapes(comp, "--step-shapes") | _shapes(comp, "--eager-shapes")
    assert min(b for _, b, _, _ in both) >= 2 and {m for m, *_ in both} == {"decode", "verify"}
    # the bf16 baseline covers every quantized shape: part a's grid plus its extras
    stacks_grid = {(s.mode, s.batch, s.ctx, s.q)
                   for s in bench_steps.grid_shapes(bench_stacks.STACKS_GRID)
                   if s.launch == "graph"}
    quant = _shapes(parts["steps-torch-fp8"], "--step-shapes")
    assert quant == _shapes(parts["steps-torch-int4"], "--step-shapes")
    assert quant <= stacks_grid | _shapes(parts["graph-torch-fused-bf16"], "--step-shapes")
    assert "llama-3.1-8b" in parts["graph-torch-fused"].args[-1]


def test_slots_pass_unused_time_on():
    planned = [10.0, 20.0, 30.0]
    assert campaign.slot(planned, 0, 60.0) == 10.0          # on plan: no spare
    assert campaign.slot(planned, 1, 58.0) == 28.0          # part 0 left 8 s unused
    assert campaign.slot(planned, 2, 20.0) == 20.0          # late: whatever is left
    assert campaign.slot(planned, 0, 5.0) == 5.0


def test_dry_run_prints_every_command(capsys):
    assert campaign.main(["--gpu", "h200", "--out", "unused", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert text.count("bench_stacks.py") + text.count("bench_quant_moe.py") == len(
        campaign.plan("cuda"))
    assert "a-d 360 s" in text and "--gpu h200" in text
    assert not Path("unused").exists()


def test_select_parts():
    parts = campaign.plan("cuda")
    assert {p.group for p in campaign.select_parts(parts, "c,steps-moe")} == {"c", "d"}
    with pytest.raises(SystemExit):
        campaign.select_parts(parts, "nope")


def test_pack_splits_and_unpack_joins(tmp_path, monkeypatch):
    monkeypatch.setattr(campaign, "PACK_LIMIT", 40_000)
    root = tmp_path / "tree" / "g"
    (root / "traces").mkdir(parents=True)
    for i in range(3):
        (root / "traces" / f"t{i}.json.gz").write_bytes(os.urandom(30_000))
    (root / "lease_x").mkdir()
    (root / "lease_x" / "campaign.json").write_text("{}")
    out = tmp_path / "out"
    out.mkdir()
    log = campaign.Log(tmp_path / "log")
    files = campaign.pack(root, out, log)
    assert [f.name for f in files] == [f"campaign.tar.gz.{i:02d}" for i in range(len(files))]
    assert len(files) >= 2 and all(f.stat().st_size <= 40_000 for f in files)
    data = tmp_path / "data"
    campaign.unpack(out, data)
    assert sorted(p.name for p in (data / "g" / "traces").iterdir()) == [
        "t0.json.gz", "t1.json.gz", "t2.json.gz"]
    with pytest.raises(SystemExit, match="unpacked before"):
        campaign.unpack(out, data)
    # over MAX_CHUNKS chunks: the largest traces are left out
    monkeypatch.setattr(campaign, "MAX_CHUNKS", 1)
    for f in files:
        f.unlink()
    files = campaign.pack(root, out, log)
    assert [f.name for f in files] == ["campaign.tar.gz"]
    assert "left out of the archive" in (tmp_path / "log").read_text()


def test_a_hanging_part_is_killed_in_time(tmp_path):
    """A part whose process hangs is killed at its timeout (its process group), and the
    campaign still packs what it has, within its budget."""
    fake = tmp_path / "hang.sh"
    fake.write_text("#!/bin/sh\nsleep 60 &\nwait\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    t0 = time.monotonic()
    rc = campaign.main(["--gpu", "cpu-test", "--device", "cpu", "--out", str(tmp_path / "o"),
                        "--budget-s", "14", "--only", "a", "--python", str(fake)])
    assert rc == 0 and time.monotonic() - t0 < 14
    summary = (tmp_path / "o" / "summary.txt").read_text()
    assert "killed at its timeout" in summary and "skipped: no time left" in summary
    with tarfile.open(tmp_path / "o" / "campaign.tar.gz") as tar:
        names = tar.getnames()
    assert any(n.endswith("graph-torch-fused/log.txt") for n in names)


# ----------------------------------------------------------------------------- on the CPU

@pytest.fixture(scope="module")
def cpu_campaign(tmp_path_factory):
    out = tmp_path_factory.mktemp("campaign")
    t0 = time.monotonic()
    rc = campaign.main(["--gpu", "cpu-test", "--device", "cpu", "--out", str(out / "out"),
                        "--budget-s", "240"])
    return rc, out, time.monotonic() - t0


def _csv(tar: tarfile.TarFile, name: str) -> tuple[list[str], list[dict]]:
    r = csv.DictReader(io.TextIOWrapper(tar.extractfile(name), newline=""))
    return list(r.fieldnames or []), list(r)


def test_cpu_campaign_packs_every_part(cpu_campaign):
    rc, out, took = cpu_campaign
    assert rc == 0 and took < 240
    files = sorted((out / "out").iterdir())
    assert [f.name for f in files] == ["campaign.log", "campaign.tar.gz", "summary.txt"]
    assert all(f.stat().st_size <= 16 << 20 for f in files)
    summary = (out / "out" / "summary.txt").read_text()
    for p in campaign.plan("cpu"):
        line = next(ln for ln in summary.splitlines() if ln.startswith(p.name + " "))
        expect = "ok" if HAVE_HF or not p.needs else "skipped: no transformers"
        assert f" {expect} " in line, line
    with tarfile.open(out / "out" / "campaign.tar.gz") as tar:
        names = set(tar.getnames())
        lease = next(n for n in names if n.count("/") == 1 and "/lease_" in n)
        record = json.load(tar.extractfile(f"{lease}/campaign.json"))
        assert record["gpu"] == "cpu-test" and len(record["parts"]) == len(campaign.plan("cpu"))
        header, rows = _csv(tar, "cpu-test/stacks/torch-fused/steps.csv")
        assert header == bench_stacks.STACK_STEPS_COLUMNS
        # part a's graph steps and part c's bf16 baseline in one file
        assert {(r["batch"], r["launch"]) for r in rows} >= {("2", "cpu"), ("4", "cpu")}
        assert "eager" in {r["launch"] for r in rows}
        header, rows = _csv(tar, "cpu-test/stacks/torch-int4/steps.csv")
        assert header == bq.STEPS_Q_COLUMNS and rows[0]["weight_dtype"] == "int4_g128"
        header, rows = _csv(tar, "cpu-test/moe/steps.csv")
        assert header == bq.STEPS_Q_COLUMNS and float(rows[0]["experts_touched_mean"]) >= 2
        _, rows = _csv(tar, f"{lease}/steps.csv")              # torch-hf's lease subset
        assert {r["stack"] for r in rows} == {"torch-hf"} and len(rows) == 2
        _, rows = _csv(tar, "cpu-test/stacks/torch-compile/steps.csv")
        assert {r["launch"] for r in rows} == {"eager", "cpu"}
        for stack in ("torch-hf", "torch-fused", "torch-compile", "torch-int4"):
            header, rows = _csv(tar, f"cpu-test/stacks/{stack}/kernels.csv")
            assert header[-1] == "stack" and rows and {r["stack"] for r in rows} == {stack}
        traces = sorted(n for n in names if n.startswith("cpu-test/traces/"))
        want = ["torch-hf", "torch-fused", "torch-compile", "torch-int4"] + (
            ["hf-transformers"] if HAVE_HF else [])
        assert {Path(n).name.split("__")[0] for n in traces} == set(want)
        for n in traces:
            events = json.loads(gzip.decompress(tar.extractfile(n).read()))["traceEvents"]
            assert any(e.get("name") == "gpusim_step_1" for e in events)
        for p in campaign.plan("cpu"):
            assert f"{lease}/{p.name}/log.txt" in names or (p.needs and not HAVE_HF)
            assert f"{lease}/{p.name}/env.json" in names or (p.needs and not HAVE_HF)
        assert not any("errors.log" in n for n in names)


def test_cpu_campaign_unpacks_into_data(cpu_campaign, tmp_path):
    _, out, _ = cpu_campaign
    data = tmp_path / "data"
    existing = data / "cpu-test" / "stacks" / "torch-fused" / "steps.csv"
    existing.parent.mkdir(parents=True)
    with open(existing, "w", newline="") as f:
        csv.writer(f).writerow(bench_stacks.STACK_STEPS_COLUMNS)
        csv.writer(f).writerow(["old"] + [""] * (len(bench_stacks.STACK_STEPS_COLUMNS) - 1))
    rc = campaign.main(["--unpack", str(out / "out"), "--data", str(data)])
    assert rc == 0
    with open(existing, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["model"] == "old" and len(rows) > 1 and rows[1]["model"] == "tiny"
    assert (data / "cpu-test" / "traces").is_dir()
    assert list((data / "cpu-test").glob("lease_*/campaign.json"))
    with pytest.raises(SystemExit, match="unpacked before"):
        campaign.main(["--unpack", str(out / "out"), "--data", str(data)])


@pytest.mark.parametrize("card,asked,filed", [
    ("NVIDIA H100 80GB HBM3", "h100-sxm", "h100-sxm"), ("NVIDIA H200", "auto", "h200"),
    ("NVIDIA H100 80GB HBM3", "h200", "h100-sxm"),    # an nvidia-h200 call given an H100
    ("NVIDIA H100 PCIe", "h100-pcie", "h100-pcie")])
def test_the_card_names_the_data(monkeypatch, tmp_path, card, asked, filed):
    """The data is filed under the card's name where --gpu names another kind of GPU."""
    monkeypatch.setattr(campaign.subprocess, "run",
                        lambda *a, **k: type("R", (), {"stdout": card + "\n"})())
    log = campaign.Log(tmp_path / "log")
    assert campaign.detect_gpu(asked, "cuda", log) == (filed, card)
    warned = (tmp_path / "log").exists() and "WARNING" in (tmp_path / "log").read_text()
    assert warned == (asked not in (filed, "auto"))
    assert campaign.detect_gpu("cpu-test", "cpu", log) == ("cpu-test", None)
