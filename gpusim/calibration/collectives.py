"""The collective model against published measurements: read them, fit a GPU's
collective parameters (``links.collectives`` of its file), and report the error.

The published figures (validation/data/published/nccl_*.csv, one row per size with
its source) are nccl-tests sweeps and custom all-reduce benchmarks. A row names the
algorithm NCCL ran where its source says (``ring``, ``nvls``; ``auto``: the fastest
the library may run), whether it ran inside a CUDA graph, and, for a loop timed on the
host, the host's floor: such a row is compared with max(model, floor), the model being
the GPU's time. Rows marked ``judged = 0`` time the host, not the link (their ``what``
says why); they are reported apart and neither fitted nor judged.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpusim.cost.collectives import LIBRARIES, OPS, algorithm_times
from gpusim.errors import bad, read_text
from gpusim.specs import CollectiveParams, GpuSpec

COLUMNS = ("gpu", "gpus", "collective", "implementation", "algorithm", "graph",
           "size_bytes", "time_us", "busbw_gb_per_s", "host_floor_us", "judged", "source",
           "what")
# the parameters a fit moves, with bounds; the hop and NVLS latencies stay as the GPU
# file gives them (NCCL's own tuning model: the sweeps cannot separate them)
FIT_BOUNDS: dict[str, tuple[float, float]] = {
    "ring_bus_efficiency": (0.3, 1.0), "ring_latency_s": (0.0, 50e-6),
    "chunk_overhead_s": (0.0, 20e-6), "nvls_efficiency": (0.2, 1.0),
    "p2p_efficiency": (0.1, 1.0), "p2p_latency_s": (0.0, 30e-6),
}
LOW, HIGH = 8 * 1024, 2**30   # the acceptance range: 8 KB-1 GB


@dataclass(frozen=True)
class Published:
    """One published measurement: a collective of ``size_bytes`` among ``gpus`` GPUs
    took ``time_s`` (from its busbw where the source gives only that)."""

    line: int
    gpu: str
    gpus: int
    collective: str
    implementation: str
    algorithm: str
    graph: bool
    size_bytes: float
    time_s: float
    host_floor_s: float
    judged: bool
    source: str
    what: str


def _bus_factor(op: str, n: int) -> float:
    return 2.0 * (n - 1) / n if op == "all_reduce" else (n - 1) / n


def read_published(path: Path) -> list[Published]:
    """Rows of a published-collectives CSV. Raises ConfigError naming file, line and
    field for a missing column, a bad number, an unknown collective or library."""
    source = str(path)
    reader = csv.DictReader(io.StringIO(read_text(path, "utf-8")))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise bad(source, f"missing column(s) {', '.join(missing)}", line=1)
    out = []
    for rec in reader:
        line = reader.line_num

        def num(name: str, low: float = 0.0, rec: dict[str, str] = rec, line: int = line
                ) -> float:
            try:
                value = float(rec[name])
            except ValueError:
                raise bad(source, "must be a number", field=name, line=line,
                          value=rec[name]) from None
            if not np.isfinite(value) or value < low:
                raise bad(source, f"must be >= {low:g}", field=name, line=line,
                          value=rec[name])
            return value

        op, impl = rec["collective"], rec["implementation"]
        if op not in OPS:
            raise bad(source, f"must be one of {', '.join(OPS)}", field="collective",
                      line=line, value=op)
        if impl not in LIBRARIES:
            raise bad(source, f"must be one of {', '.join(LIBRARIES)}",
                      field="implementation", line=line, value=impl)
        n, size = int(num("gpus", 2.0)), num("size_bytes", 1.0)
        time_s = (num("time_us") * 1e-6 if rec["time_us"].strip()
                  else size * _bus_factor(op, n) / (num("busbw_gb_per_s") * 1e9))
        floor = num("host_floor_us") * 1e-6 if rec["host_floor_us"].strip() else 0.0
        out.append(Published(line, rec["gpu"], n, op, impl, rec["algorithm"],
                             rec["graph"] == "1", size, time_s, floor,
                             rec["judged"] == "1", rec["source"], rec["what"]))
    return out


def predicted_s(gpu: GpuSpec, p: Published) -> float:
    """The model's time for a published row: the algorithm the row names (else the
    fastest its library may run), no less than the row's host floor."""
    times = algorithm_times(p.collective, p.size_bytes, p.gpus, gpu, p.implementation)
    if p.algorithm in times:
        t = float(times[p.algorithm][0])
    else:
        t = float(min(v[0] for v in times.values()))
    return max(t, p.host_floor_s)


def with_params(gpu: GpuSpec, params: CollectiveParams) -> GpuSpec:
    """``gpu`` with other collective parameters."""
    return gpu.model_copy(update={"links": gpu.links.model_copy(
        update={"collectives": params})})


def fitted_on(p: Published, gpu: str, held_out_gpus: tuple[int, ...]) -> bool:
    """Whether a fit for ``gpu`` uses row ``p``: judged all-reduce rows of that GPU,
    except groups of ``held_out_gpus`` GPUs (kept to judge the fit, with every
    all-gather row and every other GPU's)."""
    return (p.judged and p.gpu == gpu and p.collective == "all_reduce"
            and p.gpus not in held_out_gpus)


def fit(gpu: GpuSpec, points: list[Published], held_out_gpus: tuple[int, ...] = (8,)
        ) -> CollectiveParams:
    """The collective parameters (``FIT_BOUNDS``) that minimise the squared log error
    of the rows ``fitted_on`` selects. Raises ValueError when there are none."""
    from scipy.optimize import least_squares

    rows = [p for p in points if fitted_on(p, gpu.name, held_out_gpus)]
    if not rows:
        raise ValueError(f"no judged published rows for {gpu.name}")
    names = list(FIT_BOUNDS)
    start = gpu.links.collectives
    scale = np.array([max(FIT_BOUNDS[k][1], 1e-12) for k in names])

    def params(x: np.ndarray) -> CollectiveParams:
        return start.model_copy(update=dict(zip(names, (x * scale).tolist(), strict=True)))

    def residuals(x: np.ndarray) -> np.ndarray:
        g = with_params(gpu, params(x))
        return np.array([np.log(predicted_s(g, p) / p.time_s) for p in rows])

    x0 = np.array([float(getattr(start, k) or 0.5 * FIT_BOUNDS[k][1]) for k in names])
    x0 = np.clip(x0, [b[0] for b in FIT_BOUNDS.values()], [b[1] for b in FIT_BOUNDS.values()])
    res = least_squares(residuals, x0 / scale,
                        bounds=(np.array([b[0] for b in FIT_BOUNDS.values()]) / scale,
                                np.array([b[1] for b in FIT_BOUNDS.values()]) / scale))
    return params(res.x)


@dataclass(frozen=True)
class Judged:
    """A published row with the model's time and its signed error."""

    point: Published
    model_s: float

    @property
    def error(self) -> float:
        return self.model_s / self.point.time_s - 1.0


def judge(gpus: dict[str, GpuSpec], points: list[Published]) -> list[Judged]:
    """The model's time for every row whose GPU is in ``gpus``."""
    return [Judged(p, predicted_s(gpus[p.gpu], p)) for p in points if p.gpu in gpus]


def _size(b: float) -> str:
    for unit, div in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if b >= div:
            return f"{b / div:g} {unit}"
    return f"{b:g} B"


NOTES = """\
How to read it: a row's error is model / published - 1. Rows timed on the host (no
CUDA graph) are compared with max(model, the series' host floor), the model being the
GPU's time; rows marked not judged time the host, not the link (their source's own
finding), and the CUDA-graph rows of the same sizes are judged instead. Held-out rows
were not fitted on: the 8-GPU peaks (H100 and H200, NVLink SHARP, at 4 GB) and every
all-gather row (the all-gather uses the all-reduce's ring parameters).

What the model leaves out: NCCL's protocol switches (LL, LL128, Simple) as separate
curves (one ramp stands for them, hence the all-gather's bump at 4-16 MB); the tuner's
own choices where they are not the fastest (4 GPUs: NCCL runs Ring though NVLS is 3%
faster; the model runs the faster); groups spanning nodes (tree and ring over the
network: datasheet figures, no published rows judged); MI300X, A100, B200 (datasheet
links, no collective parameters fitted).
"""


def _series_table(rows: list[Judged]) -> list[str]:
    out = ["| gpu | gpus | collective | implementation | algorithm | graph | rows | "
           "mean abs error | worst |", "|---|---|---|---|---|---|---|---|---|"]
    series: dict[tuple[object, ...], list[Judged]] = {}
    for r in rows:
        p = r.point
        series.setdefault((p.gpu, p.gpus, p.collective, p.implementation, p.algorithm,
                           int(p.graph)), []).append(r)
    for key, rs in series.items():
        errs = np.array([r.error for r in rs])
        worst = rs[int(np.argmax(np.abs(errs)))]
        out.append("| " + " | ".join(map(str, key)) + f" | {len(rs)} | "
                   f"{np.mean(np.abs(errs)):.1%} | {worst.error:+.1%} at "
                   f"{_size(worst.point.size_bytes)} |")
    if rows:
        errs = np.array([r.error for r in rows])
        out += ["", f"{len(rows)} rows; mean absolute error {np.mean(np.abs(errs)):.1%}; "
                f"worst {errs[np.argmax(np.abs(errs))]:+.1%}; within 15%: "
                f"{np.mean(np.abs(errs) <= 0.15):.0%}."]
    return out


def markdown(results: list[Judged], gpus: dict[str, GpuSpec], command: str,
             held_out_gpus: tuple[int, ...] = (8,)) -> str:
    """validation/COLLECTIVES.md: parameters, the all-reduce's error over 8 KB-1 GB,
    the held-out rows, and every row with its source."""
    lines = ["# Collectives: the model against published measurements", "",
             f"Generated by `{command}`. The model: `gpusim/cost/collectives.py`; its "
             "parameters: `links.collectives` of each GPU file (fitted by `gpusim "
             "collectives-validate --fit GPU`); the published rows: "
             "`validation/data/published/` (one source per row, quoted below).", "",
             NOTES, "## Parameters", "",
             "| gpu | " + " | ".join(CollectiveParams.model_fields) + " |",
             "|---|" + "---|" * len(CollectiveParams.model_fields)]
    for name, g in gpus.items():
        c = g.links.collectives
        lines.append(f"| {name} | " + " | ".join(
            f"{getattr(c, k):.4g}" if isinstance(getattr(c, k), float) else str(getattr(c, k))
            for k in CollectiveParams.model_fields) + " |")
    judged = [r for r in results if r.point.judged]
    fitted = [r for r in judged if fitted_on(r.point, r.point.gpu, held_out_gpus)]
    lines += ["", "## All-reduce over 8 KB-1 GB (judged rows, the acceptance)", ""]
    lines += _series_table([r for r in judged if r.point.collective == "all_reduce"
                            and LOW <= r.point.size_bytes <= HIGH])
    lines += ["", "## Held out (not fitted on), every size", ""]
    lines += _series_table([r for r in judged if r not in fitted])
    lines += ["", "## Every row", "",
              "| line | gpu | gpus | collective | impl | algo | graph | size | published us "
              "| model us | error | judged |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        p = r.point
        lines.append(f"| {p.line} | {p.gpu} | {p.gpus} | {p.collective} | "
                     f"{p.implementation} | {p.algorithm} | {int(p.graph)} | "
                     f"{_size(p.size_bytes)} | {p.time_s * 1e6:.1f} | {r.model_s * 1e6:.1f} | "
                     f"{r.error:+.1%} | {'yes' if p.judged else 'no'} |")
    lines += ["", "## Sources", ""]
    seen: dict[str, str] = {}
    for r in results:
        seen.setdefault(r.point.source, r.point.what)
    for src, what in seen.items():
        lines.append(f"- <{src}>: {what}")
    return "\n".join(lines) + "\n"
