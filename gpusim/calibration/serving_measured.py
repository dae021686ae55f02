"""Measured serving runs (validation/harness/bench_serve_engine.py) -> typed records.

A run directory holds run.json (device, GPU, model, stack, engine settings, workload,
provenance), config.json (the model's shape), steps.csv (one row per engine step) and
requests.jsonl (one object per served request); validation/harness/serve_record.py
writes them and documents every field. Every problem is a ConfigError naming the
file, the line and the field.

Newer runs may say what ran as CUDA graphs (run.json's ``engine.cudagraph_mode``,
vLLM's names; older runs: ``full_decode_only``) and, in a ``full_and_piecewise`` run,
mark the mixed steps that replayed piecewise graphs (``launch`` ``piecewise``, the
padded size in steps.csv's ``padded_tokens``; older runs lack the column: 0). The
reader checks that those are the steps the step model replays piecewise: a mixed step
of up to the largest capture size, padded to the smallest size that holds its tokens.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpusim.errors import bad, read_text
from gpusim.io import jsontext
from gpusim.serving.scenario import CUDAGRAPH_MODES
from gpusim.serving.step_tables import padded_size

FORMAT = "gpusim-serve-run/1"
ENGINE_KEYS = ("max_num_seqs", "max_num_batched_tokens", "block_size", "num_blocks",
               "max_model_len", "prefix_caching", "capture_sizes")
STEP_FLOATS = ("start_s", "end_s", "forward_s", "gpu_s")
STEP_INTS = ("step", "decode", "decode_ctx_tokens", "padded_batch", "tokens", "seqs",
             "kv_used_blocks")
REQUEST_KEYS = ("rid", "arrival_s", "prompt_tokens", "output_tokens", "segments",
                "output_key", "first_token_s", "finish_s", "token_s")


@dataclass(frozen=True)
class MeasuredStep:
    """One engine step: when, what it ran (``chunks``: (request, cached, new tokens))."""

    index: int
    start_s: float
    end_s: float
    forward_s: float          # inputs to the device, launch, GPU, tokens back (wall)
    gpu_s: float              # CUDA events around the forward (a CPU run: its wall time)
    launch: str
    decode: int
    decode_ctx_tokens: int
    padded_batch: int
    chunks: tuple[tuple[int, int, int], ...]
    tokens: int
    seqs: int
    preempted: tuple[int, ...]
    key_len: int = 0          # keys each decoding row attended (padded; 0: none recorded)
    padded_tokens: int = 0    # rows a piecewise mixed step ran (0: not piecewise)

    @property
    def longest(self) -> int:
        """The cached tokens a padded decode was sized for (``key_len`` - 1: the
        padded length, which a step model that pads maps to itself; 0 if unknown)."""
        return max(self.key_len - 1, 0)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def host_s(self) -> float:
        """The step's time outside the forward's GPU span: arrivals, scheduling,
        preparing and copying inputs, the launch call, reading tokens back,
        bookkeeping (what the engine's host work per step stands for)."""
        return self.duration_s - self.gpu_s

    @property
    def composition(self) -> tuple[int, int, tuple[tuple[int, int], ...]]:
        """(decoding sequences, their cached tokens, chunks as (new, cached))."""
        return self.decode, self.decode_ctx_tokens, tuple((n, c) for _, c, n in self.chunks)


@dataclass(frozen=True)
class MeasuredRequest:
    """One served request: content (``segments``: prompt pieces as (key, tokens);
    ``output_key``: its answer's), and every token's time."""

    rid: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    segments: tuple[tuple[str, int], ...]
    output_key: str
    first_token_s: float
    finish_s: float
    token_s: tuple[float, ...]
    preemptions: int


@dataclass(frozen=True)
class ServingRun:
    """A measured run: its settings (``engine``: ENGINE_KEYS and more), requests and steps."""

    path: Path
    device: str
    gpu: str
    model: str
    stack: str
    load: str
    engine: dict[str, Any]
    workload: dict[str, Any]
    provenance: dict[str, Any]
    prefix_cache: dict[str, Any]
    lost_tokens: int
    rejected: int
    requests: tuple[MeasuredRequest, ...]
    steps: tuple[MeasuredStep, ...]
    # what its process ran before it (``load_index``, ``warmup_s``, ``warmup_requests``);
    # empty for runs of a harness that did not record it
    process: dict[str, Any] = field(default_factory=dict)

    @property
    def cudagraph_mode(self) -> str:
        """What ran as CUDA graphs (vLLM's names; older runs: full_decode_only)."""
        return str(self.engine["cudagraph_mode"])

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def on_cpu(self) -> bool:
        return self.device != "cuda"

    @property
    def window_s(self) -> float:
        """The arrival window: the workload's duration (else the last arrival)."""
        d = self.workload.get("duration_s")
        if isinstance(d, (int, float)) and d > 0:
            return float(d)
        return max((r.arrival_s for r in self.requests), default=0.0) or 1.0

    @property
    def offered_rate_per_s(self) -> float:
        return (len(self.requests) + self.rejected) / self.window_s


def _load_json(path: Path) -> dict[str, Any]:
    data = jsontext.loads(read_text(path), str(path))
    if not isinstance(data, dict):
        raise bad(str(path), "expected a JSON object")
    return data


def _need(data: dict[str, Any], key: str, source: str, kind: type | tuple[type, ...],
          line: int | None = None) -> Any:
    if key not in data:
        raise bad(source, "required field is missing", field=key, line=line)
    value = data[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise bad(source, f"expected {getattr(kind, '__name__', 'a number')}", field=key,
                  line=line, value=value)
    if isinstance(value, float) and not math.isfinite(value):
        raise bad(source, "must be finite", field=key, line=line, value=value)
    return value


def _ids(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split())


def _optional_int(row: dict[str, str], key: str, source: str, line: int) -> int:
    """An integer column older runs may lack (0 when absent or empty); raises
    ConfigError when present and not an integer."""
    text = row.get(key) or ""
    if not text:
        return 0
    try:
        return int(text)
    except ValueError:
        raise bad(source, "expected an integer", field=key, line=line, value=text) from None


def _step(row: dict[str, str], source: str, line: int) -> MeasuredStep:
    values: dict[str, Any] = {}
    for key in (*STEP_FLOATS, *STEP_INTS):
        text = row.get(key)
        try:
            values[key] = float(text) if key in STEP_FLOATS else int(text)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise bad(source, "expected a number", field=key, line=line, value=text) from None
    try:
        chunks = tuple(tuple(int(x) for x in c.split(":")) for c in row["chunks"].split())
        preempted = _ids(row["preempted"])
        if any(len(c) != 3 for c in chunks):
            raise ValueError
    except (KeyError, ValueError):
        raise bad(source, "expected rid:cached:new chunks and rid lists", field="chunks",
                  line=line) from None
    if not values["start_s"] < values["end_s"]:
        raise bad(source, "a step must end after it starts", field="end_s", line=line)
    if values["tokens"] != values["decode"] + sum(c[2] for c in chunks):
        raise bad(source, "tokens != decode + chunk tokens", field="tokens", line=line)
    return MeasuredStep(values["step"], values["start_s"], values["end_s"],
                        values["forward_s"], values["gpu_s"], row.get("launch", ""),
                        values["decode"], values["decode_ctx_tokens"],
                        values["padded_batch"], chunks,  # type: ignore[arg-type]
                        values["tokens"], values["seqs"], preempted,
                        _optional_int(row, "key_len", source, line),
                        _optional_int(row, "padded_tokens", source, line))


def _cudagraph_mode(engine: dict[str, Any], source: str) -> str:
    """run.json's ``engine.cudagraph_mode`` (absent: full_decode_only); raises
    ConfigError for another value, or full_and_piecewise without capture sizes."""
    mode = engine.get("cudagraph_mode", "full_decode_only")
    if mode not in CUDAGRAPH_MODES:
        raise bad(source, f"expected one of {', '.join(CUDAGRAPH_MODES)}",
                  field="engine.cudagraph_mode", value=mode)
    sizes = engine["capture_sizes"]
    if mode == "full_and_piecewise" and not (
            isinstance(sizes, list) and sizes
            and all(isinstance(x, int) and not isinstance(x, bool) for x in sizes)):
        raise bad(source, "full_and_piecewise needs capture_sizes, a list of sizes",
                  field="engine.cudagraph_mode", value=mode)
    return mode


def _check_piecewise(s: MeasuredStep, mode: str, sizes: list[int], source: str,
                     line: int) -> None:
    """Raise ConfigError unless step ``s`` ran piecewise exactly when the step model
    replays it piecewise: in a full_and_piecewise run, a mixed step of up to the
    largest of ``sizes``, padded to the smallest that holds its tokens."""
    piecewise = s.launch == "piecewise"
    if mode != "full_and_piecewise":
        if piecewise:
            raise bad(source, f"a piecewise step in a {mode} run", field="launch", line=line)
        return
    pad = padded_size(sizes, s.tokens)
    if piecewise != bool(s.chunks and pad is not None):
        raise bad(source, "a mixed step runs piecewise exactly when its tokens are at most "
                  f"the largest capture size ({sizes[-1]})", field="launch", line=line,
                  value=s.launch)
    if piecewise and s.padded_tokens != pad:
        raise bad(source, f"expected the smallest capture size >= its {s.tokens} tokens "
                  f"({pad})", field="padded_tokens", line=line, value=s.padded_tokens)


def _request(data: dict[str, Any], source: str, line: int) -> MeasuredRequest:
    num = (int, float)
    for key in REQUEST_KEYS:
        _need(data, key, source, object, line)
    tokens = data["token_s"]
    segs = data["segments"]
    if (not isinstance(tokens, list) or len(tokens) != data["output_tokens"]
            or not all(isinstance(t, num) for t in tokens) or tokens != sorted(tokens)):
        raise bad(source, "expected one time per output token, in order", field="token_s",
                  line=line)
    if (not isinstance(segs, list) or not all(isinstance(s, list) and len(s) == 2
                                              and isinstance(s[0], str)
                                              and isinstance(s[1], int) for s in segs)
            or sum(s[1] for s in segs) != data["prompt_tokens"]):
        raise bad(source, "expected [key, tokens] pieces adding up to prompt_tokens",
                  field="segments", line=line)
    arrival = float(_need(data, "arrival_s", source, num, line))
    if not arrival <= tokens[0] == _need(data, "first_token_s", source, num, line) or (
            tokens[-1] != _need(data, "finish_s", source, num, line)):
        raise bad(source, "token times disagree with arrival, first token or finish",
                  field="token_s", line=line)
    return MeasuredRequest(
        _need(data, "rid", source, int, line), arrival,
        _need(data, "prompt_tokens", source, int, line),
        _need(data, "output_tokens", source, int, line),
        tuple((k, n) for k, n in segs), str(_need(data, "output_key", source, str, line)),
        float(tokens[0]), float(tokens[-1]), tuple(float(t) for t in tokens),
        int(data.get("preemptions", 0)))


def _process(meta: dict[str, Any], source: str) -> dict[str, Any]:
    """run.json's ``process`` (empty where absent). Raises ConfigError for a malformed
    one."""
    if "process" not in meta:
        return {}
    proc = _need(meta, "process", source, dict)
    _need(proc, "load_index", source, int)
    _need(proc, "warmup_s", source, (int, float))
    _need(proc, "warmup_requests", source, int)
    return dict(proc)


def read_serving_run(path: Path) -> ServingRun:
    """Read a run directory. Raises ConfigError naming the file, line and field."""
    path = Path(path)
    meta_path = path / "run.json"
    meta = _load_json(meta_path)
    src = str(meta_path)
    if meta.get("format") != FORMAT:
        raise bad(src, f"not a serving run (expected format {FORMAT})", field="format",
                  value=meta.get("format"))
    engine = _need(meta, "engine", src, dict)
    for key in ENGINE_KEYS:
        _need(engine, key, src, (int, list) if key == "capture_sizes" else
              (bool if key == "prefix_caching" else int))
    mode = _cudagraph_mode(engine, src)
    engine = {**engine, "cudagraph_mode": mode}
    sizes = sorted(set(engine["capture_sizes"])) if mode == "full_and_piecewise" else []
    _load_json(path / "config.json")
    steps_src = str(path / "steps.csv")
    rows = csv.DictReader(read_text(path / "steps.csv").splitlines())
    steps = []
    for i, row in enumerate(rows, start=2):
        steps.append(_step(row, steps_src, i))
        _check_piecewise(steps[-1], mode, sizes, steps_src, i)
    req_src = str(path / "requests.jsonl")
    requests = []
    for i, text in enumerate(read_text(path / "requests.jsonl").splitlines(), start=1):
        if text.strip():
            data = jsontext.loads(text, req_src, line=i)
            if not isinstance(data, dict):
                raise bad(req_src, "expected a JSON object per line", line=i)
            requests.append(_request(data, req_src, i))
    if not steps or not requests:
        raise bad(str(path), "a run needs steps and requests")
    requests.sort(key=lambda r: (r.arrival_s, r.rid))
    return ServingRun(
        path=path, device=str(_need(meta, "device", src, str)),
        gpu=str(_need(meta, "gpu", src, str)), model=str(meta.get("model", "")),
        stack=str(meta.get("stack", "")), load=str(meta.get("load", path.name)),
        engine=engine, workload=dict(meta.get("workload") or {}),
        provenance=dict(meta.get("provenance") or {}),
        prefix_cache=dict(meta.get("prefix_cache") or {}),
        lost_tokens=int(meta.get("lost_tokens", 0)), rejected=int(meta.get("rejected", 0)),
        requests=tuple(requests), steps=tuple(steps), process=_process(meta, src))
