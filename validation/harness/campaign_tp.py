"""One multi-GPU lease's campaign (issue 18): tensor-parallel steps and NCCL collectives.

    python3 validation/harness/campaign_tp.py --gpu NAME|auto --out DIR [--gpus N|auto]
        [--budget-s 540] [--device cuda|cpu] [--only PARTS] [--dry-run] [--work DIR]
        [--python EXE]
    python3 validation/harness/campaign_tp.py --kinds     # the device-tool call per kind
    python3 validation/harness/campaign.py --unpack DIR   # merge what came back

Runs bench_tp.py as separate processes, one a part, most important first, as
campaign.py runs the single-GPU parts (its slots, hard timeouts, packing and unpacking
are reused): a part's --budget-s and a kill at its slot's end keep the whole inside
--budget-s (default 540 s: one 10-minute call of the device tool with its start-up).
The plan depends on the GPUs the machine has (``--gpus auto``: nvidia-smi's count) and
their memory (``--gpu``; ``auto``: nvidia-smi's card):

    a  at the largest tp: the check (tp_forward.check_rank), the collective sweep
       (all-reduce, all-gather, all-to-all, 1 KiB-1 GiB, CUDA graph and eager), and the
       CUDA-graph steps of Llama 3.1 8B and 70B
    b  the CUDA-graph steps at the smaller tp degrees (at tp 2 on 80 GB GPUs the 70B's
       40-layer slice, llama-3.1-70b-40l: the whole model's 70.6 GB a rank leaves no
       room for KV)
    c  the collective sweeps at the smaller tp degrees
    d  tp 1: the same steps of Llama 3.1 8B on one GPU of this machine (the baseline the
       tensor-parallel steps are compared with, measured on the same host)
    e  eager steps of Llama 3.1 8B (3 shapes, 60 calls each in turns) at the largest
       and the smallest tp
    f  the all-reduce sweep again at the largest tp with NCCL_ALGO=Ring (the model's
       ``ring`` rows: NCCL's own choice is ``auto`` with NVLink SHARP off)

Every part's steps are bench_stacks.py's STACKS_GRID (14 CUDA-graph shapes a model:
decode at batch 1-256 and ctx 1k and 4k, verify, prefill), the shapes whose KV does not
fit skipped. Planned seconds are estimates (no tensor-parallel step has been timed on
these machines yet): a part's processes start and join NCCL in ~15 s, a steps part's
two models take ~40-60 s of shapes, a sweep ~20 s; time a part leaves unused goes to
the next ones, and a part that no longer fits is skipped.

NVLink multicast stays off: this driver sets NCCL_NVLS_ENABLE=0,
TORCH_SYMM_MEM_DISABLE_MULTICAST=1 and NVSHMEM_DISABLE_NVLS=1 (bench_tp.MULTICAST_OFF)
for every process it starts, and bench_tp.py sets them again.

What comes back in DIR: ``campaign.tar.gz`` (split into ``.00``, ``.01``, ... where
larger), ``summary.txt`` and ``campaign.log``. The archive holds ``<gpu>/``, laid out
as validation/data/<gpu>/:

    tp/steps.csv                    every part's steps (bench_tp.TP_STEPS_COLUMNS: the
                                    stacks' columns plus ``tp`` and ``rank_spread``)
    tp/collectives/nccl_<op>.csv    the sweeps (validation/data/published/'s columns:
                                    ``gpusim collectives-validate --data-dir`` reads them)
    lease_<utc>_x<gpus>/            campaign.json, campaign.log, summary.txt and each
                                    part's env.json, summary.json (its ``check``),
                                    errors.log and log

``campaign.py --unpack DIR`` merges it into validation/data/ (rows appended, the rest
copied, a campaign unpacked twice refused). ``--device cpu`` runs the CPU plan (one
part: the tiny model, gloo, two processes) in ~15 s (tests/test_harness_tp.py).

Only the standard library: the driver itself never touches a GPU.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import campaign  # noqa: E402
from campaign import Log, Part  # noqa: E402

SCRIPT = "bench_tp.py"
# bench_tp.MULTICAST_OFF (not imported: that module imports torch)
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                 "NVSHMEM_DISABLE_NVLS": "1"}
L8, L70, L70_SLICE = "llama-3.1-8b", "llama-3.1-70b", "llama-3.1-70b-40l"
# GPU memory (GB) by the project's GPU names; the 70B's whole model at tp 2 needs more
# than 80 (70.6 GB of weights a rank)
GPU_MEMORY_GB = {"h100-sxm": 80, "h200": 141, "b200": 180, "a100-sxm-80gb": 80}
WHOLE_70B_AT_TP2_GB = 120
KINDS = {"nvidia-h100-x2": 2, "nvidia-h100-x4": 4, "nvidia-h100-x8": 8,
         "nvidia-h200-x2": 2, "nvidia-h200-x4": 4, "nvidia-h200-x8": 8}
GRACE_S = 20.0            # a part's start-up (N processes, NCCL) and exit after --budget-s
DEVICE_COMMAND = ("export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 "
                  "NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1; python3 "
                  "validation/harness/campaign_tp.py --gpu auto --gpus auto --out $OUT")
UNPACK_COMMAND = "python3 validation/harness/campaign.py --unpack <the folder of the files>"


def tp_degrees(gpus: int) -> list[int]:
    """The tensor-parallel degrees a machine of ``gpus`` GPUs measures, largest first."""
    return [t for t in (8, 4, 2) if t <= gpus]


def seventy(tp: int, gpu: str) -> str:
    """The 70B model a tp rank holds: whole, or its 40-layer slice where the whole
    leaves no room for KV (tp 2 on GPUs of less than WHOLE_70B_AT_TP2_GB)."""
    whole = tp >= 4 or GPU_MEMORY_GB.get(gpu, 80) >= WHOLE_70B_AT_TP2_GB
    return L70 if whole else L70_SLICE


def _tp(n: int) -> list[str]:
    return ["--tp", str(n)]


def plan(device: str, gpus: int, gpu: str = "h100-sxm") -> list[Part]:
    """The parts in priority order for a machine of ``gpus`` GPUs named ``gpu``, or
    (``cpu``: two gloo processes, the tiny model, seconds each) the CPU."""
    if device == "cpu":
        # one part (each costs seconds of process start-up): the check, a graph-timed
        # and an eager step of the tiny model, the three collectives at two sizes
        return [Part("tp2", "a", SCRIPT, [*_tp(2), "--models", "tiny", "--step-shapes",
                                          "decode:2:16:1,prefill:1:0:8", "--eager-shapes",
                                          "decode:1:16:1", "--coll-sizes", "1024:2048"],
                     60, dest="tp")]
    degrees = tp_degrees(gpus)
    if not degrees:
        raise SystemExit(f"--gpus {gpus}: a tensor-parallel campaign needs at least 2 GPUs")
    top, low = degrees[0], degrees[-1]
    graph = ["--only", "check,steps", "--graph-only"]

    def steps(tp: int) -> list[str]:
        return [*_tp(tp), *graph, "--models", f"{L8},{seventy(tp, gpu)}"]

    parts = [Part(f"coll-tp{top}", "a", SCRIPT, [*_tp(top), "--only", "check,collectives"],
                  50, dest="tp", grace_s=GRACE_S),
             Part(f"steps-tp{top}", "a", SCRIPT, steps(top), 80, dest="tp", grace_s=GRACE_S)]
    parts += [Part(f"steps-tp{t}", "b", SCRIPT, steps(t), 80, dest="tp", grace_s=GRACE_S)
              for t in degrees[1:]]
    parts += [Part(f"coll-tp{t}", "c", SCRIPT, [*_tp(t), "--only", "collectives"], 45,
                   dest="tp", grace_s=GRACE_S) for t in degrees[1:]]
    parts.append(Part("steps-tp1", "d", SCRIPT, [*_tp(1), "--only", "steps", "--graph-only",
                                                 "--models", L8], 30, dest="tp",
                      grace_s=GRACE_S))
    parts += [Part(f"eager-tp{t}", "e", SCRIPT, [*_tp(t), "--only", "steps", "--eager-only",
                                                 "--models", L8], 35 if t == top else 30,
                   dest="tp", grace_s=GRACE_S) for t in dict.fromkeys((top, low))]
    parts.append(Part(f"ring-tp{top}", "f", SCRIPT,
                      [*_tp(top), "--only", "collectives", "--collectives", "all_reduce",
                       "--coll-modes", "graph", "--nccl-algo", "Ring"], 30, dest="tp",
                      grace_s=GRACE_S))
    return parts


def part_tp(part: Part) -> int:
    """The tensor-parallel degree (processes) a part starts."""
    return int(part.args[part.args.index("--tp") + 1])


# ----------------------------------------------------------------------------- filing

def collective_files(out: Path) -> list[Path]:
    """A part's collective CSVs (nccl_<op>.csv; gloo_<op>.csv on the CPU)."""
    return sorted([*out.glob("nccl_*.csv"), *out.glob("gloo_*.csv")])


def part_info(out: Path) -> dict:
    """campaign.part_info plus the collective rows."""
    info = campaign.part_info(out)
    info["collectives"] = sum(campaign.count_rows(f) for f in collective_files(out))
    return info


def file_part(part: Part, out: Path, root: Path, lease: str) -> None:
    """A part's collective CSVs appended to <gpu>/tp/collectives/, then its steps and
    provenance filed as campaign.file_part files them (steps.csv -> <gpu>/tp/)."""
    for f in collective_files(out):
        with open(f, newline="") as fh:
            r = csv.DictReader(fh)
            header, rows = list(r.fieldnames or []), list(r)
        if rows:
            campaign._append_csv(rows, header, root / "tp" / "collectives" / f.name)
        f.unlink()
    campaign.file_part(part, out, root, lease)


# ----------------------------------------------------------------------------- the run

def count_gpus(requested: str, device: str) -> int:
    """``--gpus``: a number, or ``auto`` (nvidia-smi's GPUs; 2 processes on the CPU).
    Raises SystemExit where auto finds none."""
    if requested != "auto":
        return int(requested)
    if device == "cpu":
        return 2
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        raise SystemExit(f"--gpus auto: nvidia-smi failed ({e!r}); give --gpus N") from None
    n = len([ln for ln in r.stdout.splitlines() if ln.strip()])
    if n < 1:
        raise SystemExit("--gpus auto: nvidia-smi lists no GPU; give --gpus N")
    return n


def run_and_file(part: Part, i: int, parts: list[Part], args: argparse.Namespace, gpu: str,
                 gpus: int, left: float, work: Path, root: Path, lease: str, log: Log) -> None:
    """Part ``i``: its slot of the ``left`` seconds (or skipped), its process, its files."""
    part.slot_s = campaign.slot([p.planned_s for p in parts], i, left)
    if part_tp(part) > gpus:
        part.status = f"skipped: {gpus} GPUs"
    elif part.slot_s < min(campaign.MIN_SLOT_S[args.device], part.planned_s):
        part.status = "skipped: no time left"
    if part.status.startswith("skipped"):
        log(f"{part.group} {part.name}: {part.status}")
        return
    budget = max(1.0, part.slot_s - part.grace_s)
    pout = work / "parts" / part.name
    log(f"{part.group} {part.name}: up to {part.slot_s:.0f} s (--budget-s {budget:.0f})")
    campaign.run_part(part, campaign.command(part, args, gpu, pout, budget), pout,
                      part.slot_s, args.device)
    part.info = part_info(pout)
    log(f"{part.group} {part.name}: {part.status} after {part.elapsed_s:.1f} s, "
        + ", ".join(f"{k} {v}" for k, v in part.info.items()))
    if part.status != "ok":
        for line in (pout / "log.txt").read_text(errors="replace").splitlines()[-5:]:
            log(f"    | {line}")
    file_part(part, pout, root, lease)


def summary_text(meta: dict, parts: list[Part], files: list[Path]) -> str:
    """summary.txt: each part's status, seconds and rows, the files, how to unpack."""
    lines = [f"gpusim tensor-parallel campaign: {meta['gpu']} x{meta['gpus']} "
             f"({meta['card'] or meta['device']}), started {meta['utc']}, budget "
             f"{meta['budget_s']:.0f} s, took {meta['elapsed_s']:.0f} s", "",
             f"{'part':<14} {'grp':<3} {'tp':>2} {'status':<24} {'plan s':>6} {'slot s':>6} "
             f"{'took s':>6} {'steps':>5} {'coll':>5} {'err':>4}"]
    for p in parts:
        i = p.info
        lines.append(f"{p.name:<14} {p.group:<3} {part_tp(p):>2} {p.status:<24} "
                     f"{p.planned_s:6.0f} {p.slot_s:6.0f} {p.elapsed_s:6.1f} "
                     f"{i.get('steps', ''):>5} {i.get('collectives', ''):>5} "
                     f"{i.get('errors', ''):>4}")
    lines += ["", "files: " + ", ".join(f"{f.name} ({f.stat().st_size} B)" for f in files),
              "", "unpack into validation/data/ (appends rows, copies the rest):",
              "    " + UNPACK_COMMAND,
              f"the archive's tree: {meta['gpu']}/tp/steps.csv, {meta['gpu']}/tp/collectives/"
              f"nccl_<op>.csv, {meta['gpu']}/{meta['lease']}/ (provenance, each part's "
              "check in its summary.json)"]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu", help="GPU name as the project calls it (h100-sxm, h200), or "
                                 "'auto' (nvidia-smi's card); a name the card contradicts is "
                                 "replaced by the card's")
    p.add_argument("--gpus", default="auto",
                   help="GPUs of the machine (auto: nvidia-smi's count; the CPU: 2)")
    p.add_argument("--out", help="where the packed files go (the device tool's $OUT)")
    p.add_argument("--budget-s", type=float, default=540.0,
                   help="the whole campaign, packing included, ends before this")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--only", default="", help="comma list of part names or groups a-f")
    p.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    p.add_argument("--kinds", action="store_true",
                   help="print the device-tool call for each multi-GPU kind, and stop")
    p.add_argument("--work", default=None,
                   help="scratch folder of the parts' outputs (default: a temporary one, "
                        "removed at the end)")
    p.add_argument("--python", default=sys.executable, help="the interpreter of the parts")
    args = p.parse_args(argv)
    if not args.kinds and (args.gpu is None or (args.out is None and not args.dry_run)):
        p.error("--gpu and --out are needed (--dry-run: --gpu; or --kinds)")
    return args


def print_plan(parts: list[Part], args: argparse.Namespace, gpu: str, gpus: int) -> float:
    """The plan with every part's command and budget; returns the planned seconds."""
    print(f"tensor-parallel campaign plan ({args.device}, {gpu} x{gpus}, --budget-s "
          f"{args.budget_s:.0f}, {campaign.PACK_RESERVE_S:.0f} s kept for packing):")
    total = 0.0
    for p in parts:
        budget = max(1.0, p.planned_s - p.grace_s)
        total += p.planned_s
        print(f"  {p.group} {p.name:<14} tp {part_tp(p)}  {p.planned_s:4.0f} s (its "
              f"--budget-s {budget:.0f}, killed at {p.planned_s:.0f})")
        print("      " + " ".join(campaign.command(p, args, gpu, Path("WORK") / p.name,
                                                   budget)))
    print(f"  all {total:.0f} s of {args.budget_s - campaign.PACK_RESERVE_S:.0f} s (time a "
          "part leaves unused goes to the next ones; a part that no longer fits is skipped)")
    return total


def print_kinds() -> None:
    """The device-tool call for each multi-GPU kind, with its plan's parts and seconds."""
    print("One call of the device tool per machine (the same command on every kind: the "
          "plan follows the GPUs it finds); then, here, unpack what came back:")
    for kind, gpus in KINDS.items():
        gpu = "h200" if "h200" in kind else "h100-sxm"
        parts = plan("cuda", gpus, gpu)
        total = sum(p.planned_s for p in parts)
        print(f"\n{kind} ({gpus} GPUs):")
        print(f"  run(kind={kind!r}, timeout_s=600, command={DEVICE_COMMAND!r})")
        print(f"  plan ({gpu}): " + ", ".join(f"{p.name} {p.planned_s:.0f} s" for p in parts)
              + f"; {total:.0f} s of {540 - campaign.PACK_RESERVE_S:.0f} s")
        print(f"  the plan's commands: python3 validation/harness/campaign_tp.py --dry-run "
              f"--gpu {gpu} --gpus {gpus}")
    print(f"\nthen: {UNPACK_COMMAND}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.kinds:
        print_kinds()
        return 0
    t0 = time.monotonic()
    deadline = t0 + args.budget_s - campaign.PACK_RESERVE_S
    gpus = count_gpus(args.gpus, args.device)
    if args.dry_run:
        gpu = "h100-sxm" if args.gpu == "auto" else args.gpu
        print_plan(campaign.select_parts(plan(args.device, gpus, gpu), args.only), args,
                   gpu, gpus)
        return 0
    st = campaign.begin(args, "gpusim-tp-", f"_x{gpus}")
    parts = campaign.select_parts(plan(args.device, gpus, st.gpu), args.only)
    os.environ.update(MULTICAST_OFF)
    st.log(f"tensor-parallel campaign on {st.card or args.device} x{gpus} as {st.gpu}: "
           f"{len(parts)} parts, budget {args.budget_s:.0f} s -> {st.out}")
    campaign.run_parts(parts, lambda i, part: run_and_file(
        part, i, parts, args, st.gpu, gpus, deadline - time.monotonic(), st.work, st.root,
        st.lease, st.log), st.log)
    meta = {"gpu": st.gpu, "gpus": gpus, "requested_gpu": args.gpu, "card": st.card,
            "device": args.device, "utc": st.utc.isoformat(timespec="seconds"),
            "budget_s": args.budget_s, "lease": st.lease,
            "elapsed_s": time.monotonic() - t0, "environment": MULTICAST_OFF,
            "command": [sys.executable, *sys.argv]}
    return campaign.finish(meta, parts, st.root / st.lease, st.work, st.out, t0,
                           bool(args.work), st.log, summary_text)


if __name__ == "__main__":
    sys.exit(main())
