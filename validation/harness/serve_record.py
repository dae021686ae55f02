"""A serving run's records on disk, their consistency checks and their metrics.

A run directory (what ``gpusim serve --replay`` reads; gpusim/calibration/
serving_measured.py is its reader):

* ``run.json``: format, device, GPU, model, stack, dtype, engine settings, workload,
  provenance, wall time, the lost (recomputed) tokens and the prefix-cache figures;
* ``config.json``: the model's shape as a Hugging Face config (max_position_embeddings:
  the engine's max_model_len);
* ``steps.csv``: one row per engine step (``STEP_COLUMNS``; times in seconds since the
  run started; chunks as ``rid:cached:new`` separated by spaces);
* ``requests.jsonl``: one object per served request (arrival, lengths, content
  segments, first token, every token's time, finish, preemptions, cached tokens at its
  first admission); ``rejected.jsonl``: requests refused at arrival.

Metrics follow vLLM's benchmark tool (benchmarks/benchmark_serving.py): TTFT = first
token - arrival; TPOT per request = (last token - first token) / (tokens - 1), over
requests of more than one token (the first token excluded); ITL = every gap between two
tokens of a request, pooled; E2EL = last token - arrival; percentiles by numpy's linear
interpolation; throughput over the run's makespan (from its start to the last token).
Tokens are stamped at the end of the step that produced them.

Needs numpy and the standard library.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import numpy as np

FORMAT = "gpusim-serve-run/1"
STEP_COLUMNS = ["step", "start_s", "end_s", "tokens_s", "forward_s", "gpu_s", "launch",
                "decode", "decode_ctx_tokens", "padded_batch", "key_len", "prefill_tokens",
                "chunks", "tokens", "seqs", "admitted", "preempted", "finished", "waiting",
                "running", "kv_used_blocks", "kv_cached_blocks", "padded_tokens"]
METRIC_DEFINITIONS = (
    "TTFT: first token - arrival. TPOT: (last token - first token) / (output tokens - 1) "
    "per request, the first token excluded (vLLM's benchmark). ITL: every gap between "
    "consecutive tokens of a request. E2EL: last token - arrival. Percentiles: linear "
    "interpolation (numpy). Tokens count from the end of the step that made them.")


def _cell(v: object) -> object:
    if isinstance(v, float):
        return f"{v:.9f}" if math.isfinite(v) else ""
    return v


def _t(x: float) -> float | None:
    """A time as steps.csv writes it (nanoseconds), so the two files agree exactly."""
    return round(x, 9) if math.isfinite(x) else None


def request_record(r) -> dict[str, object]:
    return {"rid": r.rid, "arrival_s": _t(r.arrival_s), "prompt_tokens": len(r.prompt),
            "output_tokens": r.output_tokens, "segments": [list(s) for s in r.segments],
            "output_key": r.output_key, "conversation": r.conv, "turn": r.turn,
            "admitted_s": _t(r.admitted_s), "first_token_s": _t(r.first_token_s),
            "finish_s": _t(r.finish_s), "token_s": [_t(t) for t in r.token_s],
            "preemptions": r.preemptions, "cached_tokens": r.hit_tokens}


def write_run(out: Path, meta: dict[str, object], config: dict[str, object], engine) -> None:
    """Write ``engine``'s finished run into directory ``out`` (created)."""
    out.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "format": FORMAT, "wall_s": engine.wall_s,
            "lost_tokens": engine.sched.lost_tokens, "prefix_cache": engine.bm.stats(),
            "requests": len(engine.served), "rejected": len(engine.rejected),
            "steps": len(engine.steps), "metric_definitions": METRIC_DEFINITIONS}
    (out / "run.json").write_text(json.dumps(meta, indent=1) + "\n")
    (out / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    with open(out / "steps.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(STEP_COLUMNS)
        for row in engine.steps:
            w.writerow([_cell(row[c]) for c in STEP_COLUMNS])
    for name, reqs in (("requests.jsonl", engine.served), ("rejected.jsonl", engine.rejected)):
        lines = [json.dumps(request_record(r)) for r in sorted(reqs, key=lambda r: r.rid)]
        if lines or name == "requests.jsonl":
            (out / name).write_text("".join(line + "\n" for line in lines))


def read_run(out: Path) -> tuple[dict, list[dict], list[dict]]:
    """(run.json, steps as dicts of floats/ints/strings, requests)."""
    meta = json.loads((out / "run.json").read_text())
    with open(out / "steps.csv", newline="") as f:
        steps = list(csv.DictReader(f))
    requests = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()
                if line.strip()]
    return meta, steps, requests


def check_run(out: Path) -> list[str]:
    """Consistency problems of a run directory (empty: none): every request has one
    time per answer token, in order, the first and last being its first token and
    finish, each at the end of a step; steps are in order and do not overlap; a
    step's tokens are its decodes and chunks; tokens are conserved."""
    meta, steps, requests = read_run(out)
    problems = []
    ends = {float(s["end_s"]) for s in steps}
    prev_end = -math.inf
    processed = 0
    for s in steps:
        start, end = float(s["start_s"]), float(s["end_s"])
        if not prev_end <= start < end:
            problems.append(f"step {s['step']}: [{start}, {end}] after {prev_end}")
        prev_end = end
        chunks = [tuple(map(int, c.split(":"))) for c in s["chunks"].split()]
        if int(s["tokens"]) != int(s["decode"]) + sum(c[2] for c in chunks):
            problems.append(f"step {s['step']}: tokens != decode + chunk tokens")
        if int(s["kv_used_blocks"]) > meta["engine"]["num_blocks"]:
            problems.append(f"step {s['step']}: KV over capacity")
        processed += int(s["tokens"])
    expected = sum(r["prompt_tokens"] + r["output_tokens"] - 1 for r in requests)
    expected += meta["lost_tokens"] - meta["prefix_cache"]["hit_tokens"]
    if processed != expected:
        problems.append(f"tokens processed {processed}, expected {expected}")
    for r in requests:
        ts = r["token_s"]
        if len(ts) != r["output_tokens"] or ts != sorted(ts):
            problems.append(f"request {r['rid']}: {len(ts)} token times for "
                            f"{r['output_tokens']} tokens, or out of order")
        elif not (r["arrival_s"] <= ts[0] == r["first_token_s"]
                  and ts[-1] == r["finish_s"]) or any(t not in ends for t in ts):
            problems.append(f"request {r['rid']}: token times disagree with its "
                            "arrival, first token, finish or the steps")
    return problems


def metrics(requests: list[dict], makespan_s: float) -> dict[str, object]:
    """vLLM-benchmark metrics (``METRIC_DEFINITIONS``) of served requests."""
    ttft = [r["first_token_s"] - r["arrival_s"] for r in requests]
    e2el = [r["finish_s"] - r["arrival_s"] for r in requests]
    tpot = [(r["finish_s"] - r["first_token_s"]) / (r["output_tokens"] - 1)
            for r in requests if r["output_tokens"] > 1]
    itl = [b - a for r in requests for a, b in itertools.pairwise(r["token_s"])]
    out: dict[str, object] = {}
    for name, xs in (("ttft_s", ttft), ("tpot_s", tpot), ("itl_s", itl), ("e2el_s", e2el)):
        a = np.asarray(xs, dtype=np.float64)
        out[name] = ({"mean": float(a.mean()), **{f"p{q}": float(np.percentile(a, q))
                                                   for q in (50, 90, 99)}}
                     if len(a) else {})
    out["requests_per_s"] = len(requests) / makespan_s if makespan_s > 0 else math.nan
    out["output_tokens_per_s"] = (sum(r["output_tokens"] for r in requests) / makespan_s
                                  if makespan_s > 0 else math.nan)
    return out
