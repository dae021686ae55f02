"""One GPU lease's measurement campaign: every stack's steps, profiles and traces.

    python3 validation/harness/campaign.py --gpu NAME --out DIR [--budget-s 540]
        [--device cuda|cpu] [--only PARTS] [--dry-run] [--work DIR] [--python EXE]
    python3 validation/harness/campaign.py --unpack DIR [--data validation/data]

Runs the harness's scripts (bench_stacks.py, bench_quant_moe.py) as separate processes,
one a part, in this order of priority, so that what matters most is measured first and
no part times anything after torch.profiler ran in its process (validation/README.md):

    a  CUDA-graph steps of torch-fused, hf-transformers and a torch-hf subset of the
       committed grid (the spread from lease to lease)
    b  torch-compile steps of Llama 3.2 1B (its eager steps first, in the fresh process:
       they compile the two graphs that the CUDA-graph steps then reuse)
    c  quantized steps: torch-fp8 and torch-int4 of Llama 3.1 8B and 3.2 1B, with the
       bf16 (torch-fused) rows at the same shapes
    d  MoE steps (torch-fused): Qwen3-30B-A3B whole, the Mixtral-8x7B 8-layer slice
    e  eager steps of torch-hf, torch-fused, hf-transformers
    f  kernel profiles (torch-compile, the quantized stacks and MoE with their traces)
    g  gzip'd Chrome traces of torch-hf, torch-fused, hf-transformers

Each part has its own time: the script's --budget-s (no new measurement after it) and a
hard timeout (the process group is killed), so the campaign ends before --budget-s
seconds (default 540: one 10-minute call of the device tool, with its start-up) even
if a part hangs. Time a part leaves unused goes to the next ones; a part that no longer
fits is skipped. The planned seconds come from measurements on an H100 (torch 2.11) in
the scripts' docstrings: bench_stacks.py's torch-hf graph steps of 5 models took ~52 s
for 19 shapes, hf-transformers ~100 s, torch.compile 16-31 s a graph for the 1B (~4 s
on an Inductor cache hit); bench_quant_moe.py's ~40-50 s a quantized stack for 2 models
and ~90-110 s for torch-fused including MoE, on 16 shapes. ``--dry-run`` prints the
plan.

At the end everything is packed into DIR (the device tool returns at most 8 files of
at most 16 MiB): ``campaign.tar.gz`` (``campaign.tar.gz.00``, ``.01``, ... where it is
larger: ``cat`` them), ``summary.txt`` and ``campaign.log``. The archive holds one
folder, ``<gpu>/``, laid out as validation/data/<gpu>/ is:

    stacks/<stack>/steps.csv, kernels.csv   each stack's rows (graph, eager; profiles)
    moe/steps.csv, kernels.csv              the MoE models (bench_quant_moe columns)
    traces/*.json.gz                        Chrome traces, input of ``gpusim stack import``
    lease_<utc>/steps.csv                   the torch-hf subset: another lease's spread
    lease_<utc>/campaign.json, campaign.log, summary.txt, <part>/ (env, summary,
                                            errors and log of each part's process)

(<utc>: the campaign's start, 2026-12-06_0129.)

``--unpack DIR`` merges such an archive into --data (validation/data): CSV rows are
appended to a file with the same header (a file with another header is written beside
it, <name>.2.csv), other files are copied, never overwritten; a campaign whose
lease_<utc>/ is there already is refused.

Only the standard library: the driver itself never touches the GPU.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import importlib.util
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
MiB = 1 << 20
PACK_LIMIT = 16 * MiB - 64 * 1024        # the device tool returns files of at most 16 MiB
MAX_CHUNKS = 6                           # 8 files back: the chunks, summary.txt, the log
PACK_RESERVE_S = 10.0                    # packing and the summary, at the end
MIN_SLOT_S = {"cuda": 15.0, "cpu": 3.0}  # a part given less is skipped
GPU_NAMES = {"H100": "h100-sxm", "H200": "h200", "A100": "a100-sxm-80gb", "B200": "b200"}

DENSE = "llama-3.2-1b,llama-3.1-8b,llama-2-7b,qwen2.5-7b,llama-3.2-3b"   # bench.py's
PAIR = "llama-3.2-1b,llama-3.1-8b"
HF = "llama-3.2-1b,llama-3.1-8b,qwen2.5-7b"
QUANT = "llama-3.1-8b,llama-3.2-1b"
MOE = "qwen3-30b-a3b,mixtral-8x7b-8l"


def _steps(*items: str) -> str:
    return ",".join(items)


def _decode(batches: tuple[int, ...], ctx: int) -> list[str]:
    return [f"decode:{b}:{ctx}:1" for b in batches]


# torch-hf's lease-to-lease subset: 6 shapes of the committed grid (bench_common.GRIDS
# ["full"]) per model, ~20 s for the 5 models
SPREAD = _steps(*_decode((1, 16), 1024), "decode:64:4096:1", "verify:16:512:4",
                "verify:64:4096:4", "prefill:1:0:2048")
# torch-compile: batch >= 2 only (batch 1 compiles a graph of its own), decode and verify:
# 2 graphs
COMPILE = _steps(*_decode((16, 64, 256), 1024), *_decode((16, 64), 4096), "verify:16:512:4",
                 "verify:16:4096:4", "verify:64:512:4", "verify:64:4096:4")
COMPILE_EAGER = "decode:64:1024:1,verify:16:1024:4"
# quantized and MoE: the decode batch sweep at 1k (where int4's tinygemm and fp8 cross
# bf16), one long-context decode, a verify and a prefill (12 of the script's 16 shapes)
QUANT_STEPS = _steps(*_decode((1, 2, 4, 8, 16, 32, 64, 128, 256), 1024), "decode:64:4096:1",
                     "verify:16:512:4", "prefill:1:0:512")
# the bf16 baseline: QUANT_STEPS less those part a's torch-fused grid (bench_stacks
# STACKS_GRID) already measures for every default model
BF16_EXTRA = _steps(*_decode((2, 4, 8, 32, 128), 1024))
QUANT_PROFILE = "decode:1:1024:1,decode:16:1024:1,decode:128:1024:1,verify:16:1024:4," \
    "prefill:1:0:512"
MOE_PROFILE = "decode:1:1024:1,decode:64:1024:1,prefill:1:0:512"


@dataclass
class Part:
    """One process of the campaign. ``dest``: where its CSV rows are filed: ``stacks``
    (split by the ``stack`` column into stacks/<stack>/), ``moe`` or ``lease``."""

    name: str
    group: str
    script: str
    args: list[str]
    planned_s: float
    dest: str = "stacks"
    grace_s: float = 8.0       # start-up before the script's clock, its last measurement
                               # after --budget-s, the files and the exit
    needs: str = ""            # a Python package the part cannot run without
    # filled in by the run
    status: str = "not run"
    slot_s: float = 0.0
    elapsed_s: float = 0.0
    rc: int | None = None
    info: dict = field(default_factory=dict)


def plan(device: str) -> list[Part]:
    """The parts in priority order, for a GPU or (``cpu``: the tiny models, every code
    path, seconds each) the CPU."""
    stacks, quant = "bench_stacks.py", "bench_quant_moe.py"
    hf = "hf-transformers"
    three = "torch-hf,torch-fused,hf-transformers"
    if device == "cpu":
        # one or two shapes a stack: the process start-up (~2-3 s) dominates anyway
        tiny, one = ["--models", "tiny"], "decode:2:16:1"
        dyn = ["--compile-backend", "eager"]   # Dynamo alone: Inductor's C++ takes long
        parts = [
            Part("graph-torch-fused", "a", stacks, ["--stack", "torch-fused", "--only", "steps",
                                                    *tiny, "--step-shapes",
                                                    "decode:2:16:1,verify:2:16:3"], 30),
            Part("graph-hf-transformers", "a", stacks, ["--stack", hf, "--only", "steps",
                                                        *tiny, "--step-shapes", one], 30,
                 needs="transformers"),
            Part("graph-torch-hf-spread", "a", stacks,
                 ["--stack", "torch-hf", "--only", "steps", *tiny, "--step-shapes",
                  "decode:1:16:1,prefill:1:0:8"], 30, dest="lease"),
            Part("steps-torch-compile", "b", stacks,
                 ["--stack", "torch-compile", "--only", "steps", *tiny, *dyn, "--step-shapes",
                  "decode:2:16:1,decode:4:16:1", "--eager-shapes", "decode:3:16:1"], 30),
            Part("graph-torch-fused-bf16", "c", stacks,
                 ["--stack", "torch-fused", "--only", "steps", *tiny, "--step-shapes",
                  "decode:4:16:1"], 30),
            Part("steps-torch-fp8", "c", quant, ["--stack", "torch-fp8", "--only", "steps",
                                                 *tiny, "--step-shapes", "decode:1:16:1"], 30),
            Part("steps-torch-int4", "c", quant, ["--stack", "torch-int4", "--only", "steps",
                                                  *tiny, "--step-shapes", one], 30),
            Part("steps-moe", "d", quant, ["--stack", "torch-fused", "--only", "steps",
                                           "--models", "tiny-moe", "--step-shapes", one],
                 30, dest="moe"),
            Part("eager", "e", stacks, ["--stack", three, "--only", "steps", "--eager-only",
                                        *tiny, "--eager-shapes", "decode:1:16:1"], 30),
            Part("profile", "f", stacks, ["--stack", three, "--only", "profile", *tiny,
                                          "--profile-shapes", one], 30),
            Part("profile-trace-torch-compile", "f", stacks,
                 ["--stack", "torch-compile", "--only", "profile,trace", *tiny, *dyn,
                  "--profile-shapes", one, "--trace-shapes", one], 30),
            Part("profile-trace-quant", "f", quant,
                 ["--stack", "torch-int4", "--only", "profile,trace", *tiny,
                  "--profile-shapes", one, "--trace-shapes", one], 30),
            Part("profile-trace-moe", "f", quant,
                 ["--stack", "torch-fused", "--only", "profile,trace", "--models", "tiny-moe",
                  "--profile-shapes", "decode:1:8:1", "--trace-shapes", "decode:1:8:1"], 30,
                 dest="moe"),
            Part("trace", "g", stacks, ["--stack", three, "--only", "trace", *tiny,
                                        "--trace-shapes", one], 30),
        ]
    else:
        pair, model1 = ["--models", PAIR], ["--models", "llama-3.2-1b"]
        parts = [
            # 14 graph shapes (STACKS_GRID) x 5 models: ~35 s measured-based, + start-up
            Part("graph-torch-fused", "a", stacks, ["--stack", "torch-fused", "--only", "steps",
                                                    "--graph-only", "--models", DENSE], 45),
            # ~70 s for 5 models (its batch 64-256 steps take 150-200 ms): 3 models here
            Part("graph-hf-transformers", "a", stacks,
                 ["--stack", hf, "--only", "steps", "--graph-only", "--models", HF], 50,
                 needs="transformers"),
            # 6 shapes x 5 models (~0.55 s a shape and model, 52 s / 19 shapes / 5 models)
            Part("graph-torch-hf-spread", "a", stacks,
                 ["--stack", "torch-hf", "--only", "steps", "--models", DENSE, "--step-shapes",
                  SPREAD], 25, dest="lease"),
            # 2 cold compiles (16-31 s each) + 2 eager shapes + 9 graph shapes
            Part("steps-torch-compile", "b", stacks,
                 ["--stack", "torch-compile", "--only", "steps", *model1, "--step-shapes",
                  COMPILE, "--eager-shapes", COMPILE_EAGER], 90),
            Part("graph-torch-fused-bf16", "c", stacks,
                 ["--stack", "torch-fused", "--only", "steps", *pair, "--step-shapes",
                  BF16_EXTRA], 25),
            # 12 of the 16 shapes that took ~40-50 s for 2 models
            Part("steps-torch-fp8", "c", quant, ["--stack", "torch-fp8", "--only", "steps",
                                                 "--models", QUANT, "--step-shapes",
                                                 QUANT_STEPS], 35),
            Part("steps-torch-int4", "c", quant, ["--stack", "torch-int4", "--only", "steps",
                                                  "--models", QUANT, "--step-shapes",
                                                  QUANT_STEPS], 35),
            # the MoE share of the ~90-110 s torch-fused run, on 12 of its 16 shapes
            Part("steps-moe", "d", quant, ["--stack", "torch-fused", "--only", "steps",
                                           "--models", MOE, "--step-shapes", QUANT_STEPS],
                 55, dest="moe", grace_s=15),
            # 3 stacks x 2 models x 3 eager shapes of 60 calls (~45 s)
            Part("eager", "e", stacks, ["--stack", three, "--only", "steps", "--eager-only",
                                        *pair], 45),
            # 3 stacks x 2 models x 4 shapes (~35 s with the traces of part g)
            Part("profile", "f", stacks, ["--stack", three, "--only", "profile", *pair], 30),
            # Inductor's cache is warm by now (~4 s a graph)
            Part("profile-trace-torch-compile", "f", stacks,
                 ["--stack", "torch-compile", "--only", "profile,trace", *model1,
                  "--profile-shapes", "decode:8:1024:1,verify:16:512:2", "--trace-shapes",
                  "decode:8:1024:1,verify:16:512:4"], 20),
            Part("profile-trace-quant", "f", quant,
                 ["--stack", "torch-fp8,torch-int4", "--only", "profile,trace", "--models",
                  QUANT, "--profile-shapes", QUANT_PROFILE], 25),
            Part("profile-trace-moe", "f", quant,
                 ["--stack", "torch-fused", "--only", "profile,trace", "--models",
                  "qwen3-30b-a3b", "--profile-shapes", MOE_PROFILE], 20, dest="moe"),
            # 3 stacks x 2 models x 3 shapes (~30 s)
            Part("trace", "g", stacks, ["--stack", three, "--only", "trace", *pair], 30),
        ]
    return parts


def select_parts(parts: list[Part], only: str) -> list[Part]:
    """``--only``: part names or group letters (comma list; empty: all)."""
    want = {t.strip() for t in only.split(",") if t.strip()}
    unknown = want - {p.name for p in parts} - {p.group for p in parts}
    if unknown:
        raise SystemExit(f"--only: unknown part(s) {sorted(unknown)} (known: "
                         f"{', '.join(p.name for p in parts)} or a group a-g)")
    return [p for p in parts if not want or p.name in want or p.group in want]


def slot(planned: list[float], i: int, left: float) -> float:
    """Seconds part ``i`` may run with ``left`` seconds to go: its planned time, plus
    what the parts before it left unused as long as every later part's plan still fits,
    never more than is left."""
    spare = max(0.0, left - sum(planned[i:]))
    return min(left, planned[i] + spare)


# ----------------------------------------------------------------------------- running

class Log:
    def __init__(self, path: Path):
        self.t0 = time.monotonic()
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, msg: str) -> None:
        line = f"[{time.monotonic() - self.t0:6.1f}s] {msg}"
        print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")


def detect_gpu(requested: str, device: str, log: Log) -> tuple[str, str | None]:
    """(the GPU name to file the data under, nvidia-smi's name). ``auto`` takes it from
    nvidia-smi; a requested name that contradicts the card is replaced (and said)."""
    if device != "cuda":
        return requested, None
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30, check=False)
        card = r.stdout.strip().splitlines()[0].strip() if r.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        card = None
    family = next((k for k in GPU_NAMES if card and k in card), None)
    known = GPU_NAMES.get(family) if family else None
    if requested == "auto":
        if known is None:
            raise SystemExit(f"--gpu auto: cannot name the card {card!r}; give --gpu NAME")
        return known, card
    if family is not None and family.lower() not in requested.lower():
        log(f"WARNING: --gpu {requested} but the card is {card!r}: filing the data under "
            f"{known}")
        return known, card
    return requested, card


def command(part: Part, args: argparse.Namespace, gpu: str, out: Path, budget: float
            ) -> list[str]:
    return [args.python, str(HERE / part.script), "--out", str(out), "--gpu", gpu,
            "--device", args.device, "--budget-s", f"{budget:.0f}", *part.args]


def run_part(part: Part, cmd: list[str], out: Path, timeout: float, device: str) -> None:
    """The part's process, its output in out/log.txt; killed (its whole process group:
    Inductor's compile workers too) once ``timeout`` seconds have passed."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if device == "cpu":   # a loaded CPU: OpenMP's spinning threads stall every tiny op
        env.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.monotonic()
    with open(out / "log.txt", "w") as logf:
        logf.write("$ " + " ".join(cmd) + "\n")
        logf.flush()
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                cwd=HERE.parents[1], start_new_session=True)
        try:
            part.rc = proc.wait(timeout=max(1.0, timeout))
            part.status = "ok" if part.rc == 0 else f"failed (rc {part.rc})"
        except subprocess.TimeoutExpired:
            for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            part.rc = proc.returncode
            part.status = "killed at its timeout"
    part.elapsed_s = time.monotonic() - t0


def count_rows(path: Path) -> int:
    with open(path, newline="") as f:
        return max(0, sum(1 for _ in csv.reader(f)) - 1)


def part_info(out: Path) -> dict:
    """Rows, traces and logged errors a part left in ``out``."""
    info: dict[str, object] = {}
    for name in ("steps.csv", "kernels.csv"):
        if (out / name).exists():
            info[name[:-4]] = count_rows(out / name)
    info["traces"] = len(list((out / "traces").glob("*.json.gz"))) if (
        out / "traces").exists() else 0
    errors = out / "errors.log"
    info["errors"] = sum(line.startswith("=== ") for line in errors.read_text(
        errors="replace").splitlines()) if errors.exists() else 0
    return info


# ----------------------------------------------------------------------------- filing

def _append_csv(rows: list[dict], header: list[str], path: Path) -> Path:
    """Append ``rows`` to ``path`` (header written when new); where ``path`` holds
    another header, to ``path``'s stem + ``.2.csv`` (.3, ...) instead. Returns the file."""
    n = 1
    target = path
    while target.exists():
        with open(target, newline="") as f:
            if next(csv.reader(f), None) == header:
                break
        n += 1
        target = path.with_name(f"{path.stem}.{n}.csv")
    new = not target.exists()
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        if new:
            w.writeheader()
        w.writerows(rows)
    return target


def file_part(part: Part, out: Path, root: Path, lease: str) -> None:
    """Move a part's results into the archive's tree ``root`` (= <gpu>/)."""
    for name in ("steps.csv", "kernels.csv"):
        src = out / name
        if not src.exists():
            continue
        with open(src, newline="") as f:
            r = csv.DictReader(f)
            header, rows = list(r.fieldnames or []), list(r)
        if part.dest == "stacks" and "stack" in header:
            by_stack: dict[str, list[dict]] = {}
            for row in rows:
                by_stack.setdefault(row["stack"], []).append(row)
            for stack, mine in by_stack.items():
                _append_csv(mine, header, root / "stacks" / stack / name)
        elif rows:
            dest = root / (lease if part.dest == "lease" else part.dest) / name
            _append_csv(rows, header, dest)
        src.unlink()
    if (out / "traces").exists():
        for tr in sorted((out / "traces").glob("*.json.gz")):
            (root / "traces").mkdir(parents=True, exist_ok=True)
            shutil.move(str(tr), root / "traces" / tr.name)
        shutil.rmtree(out / "traces")
    prov = root / lease / part.name
    prov.mkdir(parents=True, exist_ok=True)
    for f in sorted(out.iterdir()):
        shutil.move(str(f), prov / f.name)


def pack(root: Path, out: Path, log: Log) -> list[Path]:
    """``root`` (the <gpu>/ tree) as out/campaign.tar.gz, split into chunks of at most
    PACK_LIMIT bytes where larger; past MAX_CHUNKS the largest traces are left out
    (said in the log). Returns the files written."""
    dropped: set[str] = set()     # archive names
    traces = sorted((root / "traces").glob("*.json.gz"), key=lambda p: -p.stat().st_size) \
        if (root / "traces").exists() else []
    while True:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
            tar.add(root, arcname=root.name,
                    filter=lambda ti: None if ti.name in dropped else ti)
        data = buf.getvalue()
        if len(data) <= MAX_CHUNKS * PACK_LIMIT or not traces:
            break
        dropped.add(f"{root.name}/traces/{traces.pop(0).name}")
    if dropped:
        log(f"left out of the archive (over {MAX_CHUNKS} x 16 MiB): "
            + ", ".join(sorted(dropped)))
    if len(data) <= PACK_LIMIT:
        path = out / "campaign.tar.gz"
        path.write_bytes(data)
        return [path]
    files = []
    for i in range(0, len(data), PACK_LIMIT):
        path = out / f"campaign.tar.gz.{i // PACK_LIMIT:02d}"
        path.write_bytes(data[i:i + PACK_LIMIT])
        files.append(path)
    return files


def summary_text(meta: dict, parts: list[Part], files: list[Path]) -> str:
    lines = [f"gpusim campaign: {meta['gpu']} ({meta['card'] or meta['device']}), started "
             f"{meta['utc']}, budget {meta['budget_s']:.0f} s, took {meta['elapsed_s']:.0f} s",
             "",
             *([f"NOTE: --gpu {meta['requested_gpu']} asked for, but the card is "
                f"{meta['card']!r}: filed under {meta['gpu']}", ""]
              if meta["requested_gpu"] not in (meta["gpu"], "auto") else []),
             f"{'part':<29} {'grp':<3} {'status':<22} {'plan s':>6} {'slot s':>6} "
             f"{'took s':>6} {'steps':>5} {'kern':>5} {'trace':>5} {'err':>4}"]
    for p in parts:
        i = p.info
        lines.append(f"{p.name:<29} {p.group:<3} {p.status:<22} {p.planned_s:6.0f} "
                     f"{p.slot_s:6.0f} {p.elapsed_s:6.1f} {i.get('steps', ''):>5} "
                     f"{i.get('kernels', ''):>5} {i.get('traces', ''):>5} "
                     f"{i.get('errors', ''):>4}")
    lines += ["", "files: " + ", ".join(f"{f.name} ({f.stat().st_size} B)" for f in files),
              "", "unpack into validation/data/ (appends rows, copies the rest):",
              "    python3 validation/harness/campaign.py --unpack <folder of these files>",
              f"the archive's tree: {meta['gpu']}/stacks/<stack>/, {meta['gpu']}/moe/, "
              f"{meta['gpu']}/traces/, {meta['gpu']}/{meta['lease']}/ (provenance, the "
              "torch-hf lease subset)"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- unpacking

def unpack(src: Path, data: Path) -> list[str]:
    """Merge the campaign archive in ``src`` into ``data``; returns what was done."""
    chunks = sorted(src.glob("campaign.tar.gz.[0-9][0-9]"))
    blob = (src / "campaign.tar.gz").read_bytes() if not chunks else b"".join(
        c.read_bytes() for c in chunks)
    done = []
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            tar.extractall(tmp, filter="data")
        for record in Path(tmp).glob("*/lease_*/campaign.json"):
            if (data / record.relative_to(tmp)).exists():
                raise SystemExit(f"{record.relative_to(tmp).parent} is in {data} already: "
                                 "this campaign was unpacked before")
        for f in sorted(p for p in Path(tmp).rglob("*") if p.is_file()):
            rel = f.relative_to(tmp)
            target = data / rel
            if f.suffix == ".csv":
                with open(f, newline="") as fh:
                    r = csv.DictReader(fh)
                    header, rows = list(r.fieldnames or []), list(r)
                wrote = _append_csv(rows, header, target)
                done.append(f"{len(rows)} rows -> {wrote.relative_to(data)}")
            elif target.exists():
                if target.read_bytes() != f.read_bytes():
                    n = 2
                    while (alt := target.with_name(f"{target.name}.{n}")).exists():
                        n += 1
                    shutil.copyfile(f, alt)
                    done.append(f"{rel} exists: copied to {alt.relative_to(data)}")
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, target)
                done.append(f"{rel}")
    return done


# ----------------------------------------------------------------------------- main

def run_and_file(part: Part, i: int, parts: list[Part], args: argparse.Namespace, gpu: str,
                 left: float, work: Path, root: Path, lease: str, log: Log) -> None:
    """Part ``i``: its slot of the ``left`` seconds (or skipped), its process, its results
    filed into ``root``."""
    part.slot_s = slot([p.planned_s for p in parts], i, left)
    if part.needs and importlib.util.find_spec(part.needs) is None:
        part.status = f"skipped: no {part.needs}"
    elif part.slot_s < min(MIN_SLOT_S[args.device], part.planned_s):
        part.status = "skipped: no time left"
    if part.status.startswith("skipped"):
        log(f"{part.group} {part.name}: {part.status}")
        return
    budget = max(1.0, part.slot_s - part.grace_s)
    pout = work / "parts" / part.name
    log(f"{part.group} {part.name}: up to {part.slot_s:.0f} s (--budget-s {budget:.0f})")
    run_part(part, command(part, args, gpu, pout, budget), pout, part.slot_s, args.device)
    part.info = part_info(pout)
    log(f"{part.group} {part.name}: {part.status} after {part.elapsed_s:.1f} s, "
        + ", ".join(f"{k} {v}" for k, v in part.info.items()))
    if part.status != "ok":
        for line in (pout / "log.txt").read_text(errors="replace").splitlines()[-5:]:
            log(f"    | {line}")
    file_part(part, pout, root, lease)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu", help="GPU name as the project calls it (h100-sxm, h200), or "
                                 "'auto' (from nvidia-smi); a name the card contradicts is "
                                 "replaced by the card's")
    p.add_argument("--out", help="where the packed files go (the device tool's $OUT)")
    p.add_argument("--budget-s", type=float, default=540.0,
                   help="the whole campaign, packing included, ends before this")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--only", default="", help="comma list of part names or groups a-g")
    p.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    p.add_argument("--work", default=None,
                   help="scratch folder of the parts' outputs (default: a temporary one, "
                        "removed at the end)")
    p.add_argument("--python", default=sys.executable, help="the interpreter of the parts")
    p.add_argument("--unpack", default=None, metavar="DIR",
                   help="merge the campaign files in DIR into --data, and stop")
    p.add_argument("--data", default=str(HERE.parent / "data"),
                   help="--unpack's target (validation/data)")
    args = p.parse_args(argv)
    if args.unpack is None and (args.gpu is None or args.out is None):
        p.error("--gpu and --out are needed (or --unpack DIR)")
    return args


def print_plan(parts: list[Part], args: argparse.Namespace, gpu: str) -> None:
    print(f"campaign plan ({args.device}, --budget-s {args.budget_s:.0f}, "
          f"{PACK_RESERVE_S:.0f} s kept for packing):")
    groups: dict[str, float] = {}
    for p in parts:
        budget = max(1.0, p.planned_s - p.grace_s)
        groups[p.group] = groups.get(p.group, 0.0) + p.planned_s
        print(f"  {p.group} {p.name:<29} {p.planned_s:4.0f} s (its --budget-s {budget:.0f}, "
              f"killed at {p.planned_s:.0f})")
        print("      " + " ".join(command(p, args, gpu, Path("WORK") / p.name, budget)))
    print("  per group: " + ", ".join(f"{g} {s:.0f} s" for g, s in groups.items()))
    first = sum(s for g, s in groups.items() if g in "abcd")
    total = sum(groups.values())
    print(f"  a-d {first:.0f} s, all {total:.0f} s of {args.budget_s - PACK_RESERVE_S:.0f} s "
          "(time a part leaves unused goes to the next ones; a part that no longer fits "
          "is skipped)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.unpack is not None:
        for line in unpack(Path(args.unpack), Path(args.data)):
            print(line)
        return 0
    t0 = time.monotonic()
    deadline = t0 + args.budget_s - PACK_RESERVE_S
    parts = select_parts(plan(args.device), args.only)
    if args.dry_run:
        print_plan(parts, args, args.gpu)
        return 0
    st = begin(args, "gpusim-campaign-")
    st.log(f"campaign on {st.card or args.device} as {st.gpu}: {len(parts)} parts, budget "
           f"{args.budget_s:.0f} s -> {st.out}")
    run_parts(parts, lambda i, part: run_and_file(
        part, i, parts, args, st.gpu, deadline - time.monotonic(), st.work, st.root,
        st.lease, st.log), st.log)
    meta = {"gpu": st.gpu, "requested_gpu": args.gpu, "card": st.card,
            "device": args.device, "utc": st.utc.isoformat(timespec="seconds"),
            "budget_s": args.budget_s, "lease": st.lease,
            "elapsed_s": time.monotonic() - t0, "command": [sys.executable, *sys.argv]}
    return finish(meta, parts, st.root / st.lease, st.work, st.out, t0, bool(args.work),
                  st.log)


@dataclass
class Start:
    """A campaign under way: DIR, its work folder and log, the GPU (as gpusim names it,
    and as nvidia-smi does), its UTC start, the lease's name and the tree it fills."""

    out: Path
    work: Path
    log: Log
    gpu: str
    card: str | None
    utc: dt.datetime
    lease: str
    root: Path


def begin(args: argparse.Namespace, prefix: str, lease_suffix: str = "") -> Start:
    """The campaign's start, for one GPU and several alike: --out made, the work folder
    (--work, else a new temporary one named ``prefix``...) and its log, the GPU
    detected (``detect_gpu``), the lease named by the UTC start (+ ``lease_suffix``).
    Raises SystemExit where the GPU cannot be named."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix=prefix))
    log = Log(work / "campaign.log")
    gpu, card = detect_gpu(args.gpu, args.device, log)
    utc = dt.datetime.now(dt.timezone.utc)  # noqa: UP017 (py3.10)
    root = work / "tree" / gpu
    root.mkdir(parents=True, exist_ok=True)
    return Start(out, work, log, gpu, card, utc, f"lease_{utc:%Y-%m-%d_%H%M}{lease_suffix}",
                 root)


def run_parts(parts: list[Part], run, log: Log) -> None:
    """``run(i, part)`` for each part in turn; a fault of the driver itself is logged
    and marked on its part, and the campaign goes on (what there is gets packed)."""
    for i, part in enumerate(parts):
        try:
            run(i, part)
        except Exception as e:
            part.status = f"driver error: {type(e).__name__}"
            log(f"{part.group} {part.name}: driver error {e!r}")


def finish(meta: dict, parts: list[Part], lease_dir: Path, work: Path, out: Path, t0: float,
           keep_work: bool, log: Log, summary=None) -> int:
    """The campaign's end, for one GPU and several alike: its provenance into
    ``lease_dir`` (campaign.json, the log, the summary), the tree packed into ``out``
    with the summary and the log beside it, the work folder removed unless kept.
    ``summary``: the summary_text function (default: this module's). Returns 0."""
    summary = summary or summary_text
    lease_dir.mkdir(parents=True, exist_ok=True)
    (lease_dir / "campaign.json").write_text(json.dumps(
        {**meta, "parts": [dict(vars(p)) for p in parts]}, indent=2, default=str) + "\n")
    log(f"packing after {meta['elapsed_s']:.0f} s")
    shutil.copyfile(work / "campaign.log", lease_dir / "campaign.log")
    (lease_dir / "summary.txt").write_text(summary(meta, parts, []))
    files = pack(lease_dir.parent, out, log)
    meta["elapsed_s"] = time.monotonic() - t0
    (out / "summary.txt").write_text(summary(meta, parts, files))
    log(f"done in {meta['elapsed_s']:.0f} s: " + ", ".join(f.name for f in files))
    shutil.copyfile(work / "campaign.log", out / "campaign.log")
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    print((out / "summary.txt").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
