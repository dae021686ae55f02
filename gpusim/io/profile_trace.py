"""torch.profiler Chrome traces (``prof.export_chrome_trace``) -> the GPU kernels of
each profiled forward step, each with the CPU op that launched it.

A kernel is matched to its launching op through the ``External id`` both carry; with
``record_shapes=True`` the op's input dims and types come along (the bytes it moves),
otherwise only its name. Steps are told apart by ``gpusim_step_<i>`` markers when the
trace has them (the harness wraps each step in ``record_function``), else the kernels
are split into ``steps`` equal runs. A ``.gz`` file is read through gzip. Raises
ConfigError (file, what is wrong) for a file that is not a readable, complete trace.
"""

from __future__ import annotations

import gzip
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

from gpusim.errors import bad
from gpusim.io import jsontext

MAX_TRACE_BYTES = 512 * 1024 * 1024     # uncompressed: refuse rather than exhaust memory
GPU_CATEGORIES = ("kernel", "gpu_memset", "gpu_memcpy")
STEP_MARKER = re.compile(r"^gpusim_step_(\d+)$")


@dataclass(frozen=True)
class TracedKernel:
    """One GPU activity: its name and duration, and the CPU op that launched it (its
    name, input dims and types; empty when the trace has no CPU side or no shapes)."""

    name: str
    duration_us: float
    op: str
    dims: tuple
    types: tuple
    external_id: int | None
    strides: tuple = ()


@dataclass(frozen=True)
class TracedStep:
    """The kernels of one forward step, in launch order."""

    index: int
    kernels: tuple[TracedKernel, ...]


def _load(path: Path) -> dict:
    source = str(path)
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except OSError as exc:
        raise bad(source, f"cannot read file: {exc.strerror or exc}") from None
    except (EOFError, zlib.error, gzip.BadGzipFile):
        raise bad(source, "not a complete gzip file (truncated?)") from None
    if len(raw) > MAX_TRACE_BYTES:
        raise bad(source, f"trace of {len(raw) / 1e6:.0f} MB is over the "
                  f"{MAX_TRACE_BYTES / 1e6:.0f} MB this reader takes")
    data = jsontext.loads(raw, source, what="not a JSON trace (truncated?)",
                          check_depth=False)
    if not isinstance(data, dict) or not isinstance(data.get("traceEvents"), list):
        raise bad(source, "not a Chrome trace: no traceEvents list",
                  field="traceEvents")
    return data


def _tuples(value: object) -> object:
    """Lists (of lists) as tuples, so that records stay hashable and comparable."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _kernel(event: dict, ops: dict[int, dict]) -> TracedKernel:
    args = event.get("args") or {}
    ext = args.get("External id")
    op = ops.get(ext) if isinstance(ext, int) else None
    op_args = (op or {}).get("args") or {}
    return TracedKernel(
        name=str(event.get("name", "")), duration_us=float(event.get("dur", 0.0)),
        op=str((op or {}).get("name", "")),
        dims=tuple(_tuples(op_args.get("Input Dims", []))),
        types=tuple(op_args.get("Input type", [])),
        external_id=ext if isinstance(ext, int) else None,
        strides=tuple(_tuples(op_args.get("Input Strides", []))))


def read_trace(path: Path, steps: int) -> list[TracedStep]:
    """The ``steps`` forward steps of a trace, each its kernels in launch order.

    Raises ConfigError for an unreadable or malformed file, a trace without GPU
    kernels, markers that disagree with ``steps``, or kernels that do not split into
    ``steps`` equal runs.
    """
    source = str(path)
    if steps < 1:
        raise bad("", "must be >= 1", field="steps", value=steps)
    events = [e for e in _load(path)["traceEvents"] if isinstance(e, dict)]
    ops = {e["args"]["External id"]: e for e in events
           if e.get("cat") == "cpu_op" and isinstance(e.get("args"), dict)
           and isinstance(e["args"].get("External id"), int)}
    gpu = sorted((e for e in events if e.get("cat") in GPU_CATEGORIES
                  and isinstance(e.get("ts"), (int, float))), key=lambda e: e["ts"])
    if not gpu:
        raise bad(source, "no GPU kernels in the trace (profile with "
                  "ProfilerActivity.CUDA on a GPU)")
    marks = sorted((e for e in events if e.get("cat") == "gpu_user_annotation"
                    and STEP_MARKER.match(str(e.get("name", "")))),
                   key=lambda e: e["ts"])
    if marks:
        if len(marks) != steps:
            raise bad(source, f"the trace marks {len(marks)} steps (gpusim_step_*), "
                      f"not {steps}", field="steps")
        out = []
        for i, m in enumerate(marks):
            lo, hi = m["ts"], m["ts"] + float(m.get("dur", 0.0))
            ks = tuple(_kernel(e, ops) for e in gpu if lo <= e["ts"] <= hi)
            if not ks:
                raise bad(source, f"step marker {m['name']} holds no kernels")
            out.append(TracedStep(i, ks))
        return out
    if len(gpu) % steps:
        raise bad(source, f"{len(gpu)} kernels do not split into {steps} equal steps "
                  "(mark each step with record_function('gpusim_step_<i>'))",
                  field="steps")
    n = len(gpu) // steps
    return [TracedStep(i, tuple(_kernel(e, ops) for e in gpu[i * n:(i + 1) * n]))
            for i in range(steps)]
