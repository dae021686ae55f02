"""What the harness's measurement scripts share around their measurements.

bench.py, bench_stacks.py, bench_quant_moe.py and bench_spec.py take the same common
options (``add_run_args``, ``add_model_args``, ``add_shape_args``), load model shapes
the same way (``load_models``: workloads/models/<name>.yaml, --shapes-json, ``tiny``),
record the same environment (``environment`` -> env.json), run their phases under one
loop that always writes summary.json and closes the CSV sinks (``run_phases``), and
print the same per-group step table (``print_steps``). The measuring itself is
bench_steps.py's (steps, profiles, traces) and bench_micro.py's.

Imports only stdlib, yaml and torch (the GPU machine has no gpusim).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import platform
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from bench_common import StepRun
from bench_timing import Budget, CsvSink, GiB
from reference import Shape

HERE = Path(__file__).resolve().parent
MODELS_DIR = HERE.parents[1] / "workloads" / "models"
TINY = {  # built in, for CPU runs: --models tiny
    "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128, "vocab_size": 256,
    "tie_word_embeddings": False, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
}
BUDGET_HELP = "no new measurement starts after this many seconds"


# ----------------------------------------------------------------------------- options

def add_run_args(p: argparse.ArgumentParser, budget_s: float, budget_help: str = BUDGET_HELP,
                 quick_help: str = "tiny grid (sanity run)") -> None:
    """--out, --gpu, --device, --budget-s, --quick."""
    p.add_argument("--out", required=True, help="output directory (created; appended to)")
    p.add_argument("--gpu", required=True, help="GPU name as the project calls it (h100-sxm)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--budget-s", type=float, default=budget_s, help=budget_help)
    p.add_argument("--quick", action="store_true", help=quick_help)


def add_model_args(p: argparse.ArgumentParser, models_help: str | None = None,
                   shapes_json: bool = True) -> None:
    """--models (unless ``models_help`` is None), --shapes-json, --models-dir."""
    if models_help is not None:
        p.add_argument("--models", default="", help=models_help)
    if shapes_json:
        p.add_argument("--shapes-json", default=None,
                       help="JSON file {name: {hidden_size: ..., ...}} of model shapes")
    p.add_argument("--models-dir", default=str(MODELS_DIR))


SHAPE_HELP = {
    "step": "replace the steps grid by these CUDA-graph steps: comma list of mode:batch:ctx:q",
    "eager": "replace the eager steps: comma list of mode:batch:ctx:q",
    "profile": "replace the profiled steps: comma list of mode:batch:ctx:q",
    "trace": "replace the traced steps: comma list of mode:batch:ctx:q",
}


def add_shape_args(p: argparse.ArgumentParser, *kinds: str) -> None:
    """--<kind>-shapes for each of ``kinds`` (step, eager, profile, trace)."""
    for kind in kinds:
        p.add_argument(f"--{kind}-shapes", default="", help=SHAPE_HELP[kind])


def add_kv_arg(p: argparse.ArgumentParser, default_help: str) -> None:
    p.add_argument("--kv-budget-gb", type=float, default=None,
                   help=f"KV cache bytes per model in steps (default: {default_help})")


def kv_budget_arg(gb: float | None) -> int | None:
    return None if gb is None else int(gb * GiB)


def parse_steps(text: str) -> tuple[tuple[str, int, int, int], ...]:
    """``"decode:8:1024:1,verify:4:512:2"`` -> ((mode, batch, ctx, q), ...). Raises
    ValueError for an item that is not mode:batch:ctx:q."""
    out = []
    for item in text.split(","):
        parts = item.split(":")
        if len(parts) != 4:
            raise ValueError(f"{item!r}: expected mode:batch:ctx:q")
        out.append((parts[0], int(parts[1]), int(parts[2]), int(parts[3])))
    return tuple(out)


def parse_int_list(text: str) -> tuple[int, ...]:
    """``"1,2,8:32:8"`` -> (1, 2, 8, 16, 24, 32): comma list of ints and inclusive
    first:last:step ranges, sorted, without repeats. Raises ValueError."""
    out: set[int] = set()
    for item in text.split(","):
        parts = [int(p) for p in item.split(":")]
        if len(parts) == 1:
            out.add(parts[0])
        elif len(parts) == 3 and parts[2] > 0:
            out.update(range(parts[0], parts[1] + 1, parts[2]))
        else:
            raise ValueError(f"{item!r}: expected an int or first:last:step")
    if not out or min(out) < 1:
        raise ValueError(f"{text!r}: expected positive ints")
    return tuple(sorted(out))


def select_phases(only: str, phases: Sequence[str],
                  aliases: dict[str, Sequence[str]] | None = None) -> list[str]:
    """``--only`` (comma list of phases or aliases; empty: all) -> phases in campaign
    order. Raises SystemExit for an unknown one."""
    aliases = aliases or {}
    want: set[str] = set()
    for tok in (t.strip() for t in only.split(",") if t.strip()):
        if tok not in aliases and tok not in phases:
            raise SystemExit(f"--only: unknown phase {tok!r} (known: "
                             f"{', '.join([*aliases, *phases])})")
        want.update(aliases.get(tok, (tok,)))
    return [ph for ph in phases if ph in want or not want]


def start(argv: list[str] | None, parse: Callable[[list[str]], argparse.Namespace]
          ) -> tuple[list[str], argparse.Namespace, Budget, Path]:
    """A script's start: its argv (sys.argv's by default), the parsed options, the
    budget's clock (started now) and the output folder (created)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return argv, args, Budget(args.budget_s), out


def split_names(text: str) -> list[str]:
    """A comma list of names, blanks dropped."""
    return [t.strip() for t in text.split(",") if t.strip()]


# ----------------------------------------------------------------------------- models

def load_models(names: list[str], shapes: dict[str, dict], models_dir: Path
                ) -> dict[str, Shape]:
    """name -> Shape: ``shapes`` first, then ``tiny``, then models_dir/<name>.yaml.
    Raises SystemExit for a name found nowhere."""
    import yaml
    out = {}
    for name in names:
        if name in shapes:
            cfg = shapes[name]
        elif name == "tiny":
            cfg = TINY
        else:
            path = models_dir / f"{name}.yaml"
            if not path.exists():
                raise SystemExit(f"model {name!r}: no {path}")
            cfg = yaml.safe_load(path.read_text())
        out[name] = Shape.from_dict(cfg)
    return out


def select_models(args: argparse.Namespace, shapes: dict[str, dict] | None,
                  defaults: Sequence[str], cpu_defaults: Sequence[str] = ("tiny",)
                  ) -> dict[str, Shape]:
    """The models of ``--models`` (else every ``shapes``/--shapes-json entry, else the
    device's defaults), loaded by ``load_models``."""
    shapes = dict(shapes or {})
    if getattr(args, "shapes_json", None):
        shapes.update(json.loads(Path(args.shapes_json).read_text()))
    names = split_names(args.models) or list(shapes) or list(
        cpu_defaults if args.device == "cpu" else defaults)
    return load_models(names, shapes, Path(args.models_dir))


# ----------------------------------------------------------------------------- environment

def open_device(name: str) -> torch.device | None:
    """The torch device, or None (said on stderr) where CUDA is asked for and absent."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return None
    return device


def nvidia_smi() -> dict | None:
    """Driver, clocks and power limit per GPU as nvidia-smi reports them (or the error)."""
    q = "driver_version,clocks.sm,clocks.mem,clocks.max.sm,clocks.max.mem,power.limit"
    try:
        r = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv"],
                           capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        return {"error": repr(e)}
    lines = [ln.strip() for ln in r.stdout.splitlines() if ln.strip()]
    if r.returncode != 0 or len(lines) < 2:
        return {"error": f"rc={r.returncode}", "stdout": r.stdout, "stderr": r.stderr[-2000:]}
    keys = [k.strip() for k in lines[0].split(",")]
    gpus = [dict(zip(keys, (v.strip() for v in ln.split(",")), strict=False))
            for ln in lines[1:]]
    return {"raw": lines, "gpus": gpus}


def sdpa_backends() -> dict[str, object]:
    b = torch.backends.cuda
    out: dict[str, object] = {}
    for name in ("flash_sdp_enabled", "mem_efficient_sdp_enabled", "math_sdp_enabled",
                 "cudnn_sdp_enabled"):
        fn = getattr(b, name, None)
        out[name] = bool(fn()) if fn else None
    fn = getattr(b, "is_flash_attention_available", None)
    out["is_flash_attention_available"] = bool(fn()) if fn else None
    return out


def package_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(args: argparse.Namespace, argv: list[str], device: torch.device,
                script: str) -> dict:
    """env.json's record: the command line, versions, the GPU and its clocks."""
    env: dict[str, object] = {
        "gpu": args.gpu,
        "device": str(device),
        "utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017 (py3.10)
        "hostname": socket.gethostname(),
        "command": [sys.executable, str(Path(script)), *argv],
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "numpy": package_version("numpy"),
        "triton": package_version("triton"),
        "transformers": package_version("transformers"),
        "sdpa_backends": sdpa_backends(),
        "quick": args.quick,
        "budget_s": args.budget_s,
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(0)
        free, _ = torch.cuda.mem_get_info()
        env.update({
            "gpu_name": torch.cuda.get_device_name(0),
            "sm_count": p.multi_processor_count,
            "l2_bytes": getattr(p, "L2_cache_size", None),
            "total_memory": p.total_memory,
            "free_memory_at_start": free,
            "compute_capability": f"{p.major}.{p.minor}",
            "nvidia_smi": nvidia_smi(),
        })
    else:
        env.update({"gpu_name": None, "cpu": platform.processor() or platform.machine()})
    return env


def write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def fresh_path(out: Path, stem: str) -> Path:
    """DIR/stem.json, or stem.2.json, stem.3.json, ... if taken by an earlier run."""
    path, n = out / f"{stem}.json", 1
    while path.exists():
        n += 1
        path = out / f"{stem}.{n}.json"
    return path


# ----------------------------------------------------------------------------- the run

def base_summary(run: StepRun, phases_done: list[str]) -> dict:
    """summary.json's common part."""
    return {
        "elapsed_s": round(run.budget.elapsed(), 1),
        "budget_s": run.budget.seconds,
        "stopped_by_budget": run.budget.hit,
        "phases_run": phases_done,
        "errors": run.n_errors,
        "skipped": run.skipped,
        "nvidia_smi_end": nvidia_smi() if run.cuda else None,
    }


def run_phases(run: StepRun, phases: Iterable[str], run_phase: Callable[[str], None],
               summary: Callable[[list[str]], dict], path: Path,
               sinks: Iterable[CsvSink]) -> dict:
    """Each phase in turn until the budget is spent (``run_phase`` contains its own
    errors); then, whatever happened, summary.json at ``path`` and the sinks closed.
    Returns the summary."""
    done: list[str] = []
    try:
        for ph in phases:
            if run.stop():
                break
            run_phase(ph)
            done.append(ph)
    finally:
        result = summary(done)
        write_json(path, result)
        for sink in sinks:
            sink.close()
    run.log(f"done in {run.budget.elapsed():.1f} s")
    return result


def print_header(name: str, summary: dict) -> None:
    print(f"{name}: {summary['elapsed_s']} s, budget {summary['budget_s']:.0f} s"
          f"{' (stopped by budget)' if summary['stopped_by_budget'] else ''}, "
          f"{summary['errors']} errors, {len(summary['skipped'])} shapes skipped")
    print("rows: " + ", ".join(f"{k} {v}" for k, v in summary["rows"].items()))


def print_steps(rows: Iterable[dict], keys: Sequence[str]) -> None:
    """Step rows grouped by ``keys`` (columns, in order): count, min and max median ms."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r["median_ms"])
    widths = [16 if k in ("model", "stack") else 8 if k == "mode" else 6 for k in keys]
    if groups:
        print("  " + " ".join(f"{k:<{w}}" for k, w in zip(keys, widths, strict=True))
              + f" {'rows':>4} {'min ms':>9} {'max ms':>9}")
    for key, v in groups.items():
        print("  " + " ".join(f"{k!s:<{w}}" for k, w in zip(key, widths, strict=True))
              + f" {len(v):>4} {min(v):9.3f} {max(v):9.3f}")
