"""The serving harness (validation/harness/serve_*.py, bench_serve_engine.py) on the CPU.

Greedy answers equal the reference forward's one request at a time, whatever the
batching, chunking, graph padding, preemption or prefix caching; the schedule keeps
its limits and vLLM's rules; the records are complete and consistent; the prefix-cache
hit count matches gpusim's model of the same trace.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

HARNESS = Path(__file__).resolve().parents[1] / "validation" / "harness"
if str(HARNESS) not in sys.path:
    sys.path.insert(0, str(HARNESS))

import bench_serve_engine as bench  # noqa: E402
import reference  # noqa: E402
import serve_record  # noqa: E402
from serve_engine import Engine, EngineConfig, Request  # noqa: E402
from serve_model import ModelRunner  # noqa: E402
from serve_workload import Workload, WorkloadSpec  # noqa: E402

CPU = torch.device("cpu")
SHAPE = reference.Shape.from_dict(bench.TINY)
VOCAB = SHAPE.vocab_size


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny shapes gain nothing from threads; spinning OpenMP threads stall a busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Listed:
    """A workload of given requests (arrival_s, prompt ids, output tokens[, segments])."""

    def __init__(self, rows: list[tuple]) -> None:
        self.reqs = []
        for rid, row in enumerate(rows):
            t, prompt, out = row[:3]
            segs = row[3] if len(row) > 3 else [(f"r{rid}.u", len(prompt))]
            self.reqs.append(Request(rid, t, list(prompt), out, segs, f"r{rid}.o"))
        self._i = 0
        self.next_s = self.reqs[0].arrival_s

    def pop(self) -> Request:
        r = self.reqs[self._i]
        self._i += 1
        self.next_s = self.reqs[self._i].arrival_s if self._i < len(self.reqs) else math.inf
        return r

    def done(self, req: Request, now_s: float, served: bool = True) -> None:
        return None


_RUNNERS: dict[tuple, ModelRunner] = {}


def runner(blocks: int, block: int, sizes: tuple[int, ...] = (),
           pieces: tuple[int, ...] = ()) -> ModelRunner:
    key = (blocks, block, sizes, pieces)
    if key not in _RUNNERS:
        r = ModelRunner(SHAPE, CPU, torch.float32, block, 256, sizes, 16, seed=0,
                        piecewise_sizes=pieces)
        r.allocate_kv(blocks)
        _RUNNERS[key] = r
    return _RUNNERS[key]


def serve(rows: list[tuple], blocks: int = 64, block: int = 4, seqs: int = 8,
          budget: int = 32, sizes: tuple[int, ...] = (), caching: bool = False,
          pieces: tuple[int, ...] = ()) -> Engine:
    """``pieces``: the token sizes of piecewise mixed steps (full_and_piecewise)."""
    mode = "full_and_piecewise" if pieces else "full_decode_only"
    cfg = EngineConfig(seqs, budget, block, blocks, 256, caching, pieces or sizes, 16, mode)
    engine = Engine(cfg, runner(blocks, block, sizes, pieces))
    engine.run(Listed(rows))
    return engine


@torch.no_grad()
def greedy_reference(prompt: list[int], n: int) -> list[int]:
    """reference.forward, one request: prefill the prompt, then decode n - 1 tokens."""
    w = runner(64, 4).w
    cache = reference.KVCache(SHAPE, 1, len(prompt) + n, "cpu", torch.float32)
    logits = reference.forward(w, cache, torch.tensor([prompt]), 0, "prefill")
    out = [int(logits.argmax(-1))]
    for i in range(n - 1):
        logits = reference.forward(w, cache, torch.tensor([[out[-1]]]), len(prompt) + i,
                                   "decode")
        out.append(int(logits.argmax(-1)))
    return out


def random_rows(n: int, seed: int, shared: int = 0) -> list[tuple]:
    g = torch.Generator().manual_seed(seed)
    system = torch.randint(0, VOCAB, (shared,), generator=g).tolist()
    rows = []
    for i in range(n):
        own = int(torch.randint(3, 40, (1,), generator=g))
        prompt = system + torch.randint(0, VOCAB, (own,), generator=g).tolist()
        segs = ([("s0", shared)] if shared else []) + [(f"r{i}.u", own)]
        rows.append((0.002 * i, prompt, int(torch.randint(1, 25, (1,), generator=g)), segs))
    return rows


ROWS = random_rows(12, seed=3, shared=12)


@pytest.fixture(scope="module")
def expected() -> list[list[int]]:
    return [greedy_reference(r[1], r[2]) for r in ROWS]


@pytest.mark.parametrize("setting", [
    {"budget": 256, "blocks": 200},                      # big steps, no pressure
    {"budget": 16},                                      # chunked prefill, mixed steps
    {"sizes": (1, 2, 4, 8)},                             # padded decode graphs' path
    {"blocks": 24, "budget": 16},                        # preemption by recompute
    {"caching": True},                                   # prefix cache hits
    {"caching": True, "blocks": 24, "sizes": (2, 8)},    # all together
    {"budget": 24, "sizes": (1, 2, 4, 8), "pieces": (1, 2, 4, 8, 16, 24)},  # piecewise
    {"caching": True, "blocks": 24, "budget": 32, "sizes": (2, 8),
     "pieces": (2, 8, 12, 16, 24)},        # piecewise up to 24 tokens, eager above
], ids=["plain", "chunked", "padded", "preempting", "prefix", "all", "piecewise",
        "piecewise-all"])
def test_answers_equal_the_reference_forward(setting: dict, expected: list[list[int]]) -> None:
    engine = serve(ROWS, **setting)
    assert not engine.rejected
    got = {r.rid: r.output for r in engine.served}
    assert [got[i] for i in range(len(ROWS))] == expected
    engine.bm.check([])        # everything freed
    steps = engine.steps
    if setting.get("blocks") == 24:
        assert any(s["preempted"] for s in steps)
    if setting.get("caching"):
        assert engine.bm.hit_tokens > 0
    if setting.get("sizes"):
        assert any(s["launch"] == "padded" for s in steps)
    pieces = setting.get("pieces", ())
    if pieces:
        # every mixed step within the sizes ran piecewise at the next size up; above
        # them, eagerly
        mixed = [s for s in steps if s["chunks"]]
        if max(pieces) >= setting["budget"]:
            assert mixed and all(s["launch"] == "piecewise" for s in mixed)
        # a piecewise step's decode part runs at its capture size (padded rows attend
        # the scratch block): answers stay the reference's
        assert any(s["padded_batch"] > s["decode"] for s in mixed
                   if s["launch"] == "piecewise")
        for s in mixed:
            fits = [p for p in pieces if p >= s["tokens"]]
            assert s["launch"] == ("piecewise" if fits else "eager")
            assert s["padded_tokens"] == (min(fits) if fits else 0)


def test_schedule_keeps_limits_and_rules() -> None:
    rows = random_rows(20, seed=5)
    engine = serve(rows, blocks=20, budget=16, seqs=4)
    for s in engine.steps:
        assert s["tokens"] <= 16 and s["running"] <= 4 and s["kv_used_blocks"] <= 20
        assert s["decode"] + len(s["chunks"].split()) == s["seqs"]
        if s["preempted"]:   # no admission in a step that preempts
            assert not s["admitted"]
    # first come first served: first admissions in arrival order
    first = sorted(engine.served, key=lambda r: r.rid)
    assert [r.admitted_s for r in first] == sorted(r.admitted_s for r in first)
    assert any(r.preemptions for r in engine.served)


def test_prefix_hits_match_gpusims_model_of_the_same_trace() -> None:
    # block 4, an 8-token system prompt and 3 tokens of each request's own, one
    # request at a time: 16 of 33 tokens hit (tests/test_serving_prefix.py works the
    # same trace out by hand for gpusim)
    g = torch.Generator().manual_seed(1)
    system = torch.randint(0, VOCAB, (8,), generator=g).tolist()
    rows = [(t, system + torch.randint(0, VOCAB, (3,), generator=g).tolist(), 2,
             [("s0", 8), (f"r{i}.u", 3)]) for i, t in enumerate((0.0, 0.05, 0.1))]
    engine = serve(rows, caching=True)
    st = engine.bm.stats()
    assert (st["lookups"], st["query_tokens"], st["hit_tokens"]) == (3, 33, 16)
    assert [r.hit_tokens for r in sorted(engine.served, key=lambda r: r.rid)] == [0, 8, 8]


def test_conversation_turns_repeat_the_conversation_so_far() -> None:
    spec = WorkloadSpec(vocab=VOCAB, seed=2, rate_per_s=50, duration_s=0.3, prompt="6",
                        output="3", shared_prefix_tokens=8, conversation_turns=3,
                        turn_think_s=0.01)
    cfg = EngineConfig(8, 64, 4, 128, 256, True, (), 16)
    engine = Engine(cfg, runner(128, 4))
    engine.run(Workload(spec))
    by_conv: dict[int, list[Request]] = {}
    for r in sorted(engine.served, key=lambda r: r.rid):
        by_conv.setdefault(r.conv, []).append(r)
    assert any(len(turns) == 3 for turns in by_conv.values())
    for turns in by_conv.values():
        for a, b in itertools.pairwise(turns):
            assert b.prompt[:len(a.prompt) + 3] == a.prompt + a.output
            assert b.arrival_s >= a.finish_s
            assert b.segments[:-2] == a.segments
            assert b.segments[-2] == (a.output_key, 3)
    assert engine.bm.hit_tokens > 0


@pytest.mark.parametrize("mode", ["full_decode_only", "full_and_piecewise"])
def test_bench_writes_consistent_run_directories(tmp_path: Path, mode: str) -> None:
    argv = ["--out", str(tmp_path), "--gpu", "cpu", "--model", "tiny", "--device", "cpu",
            "--dtype", "float32", "--rates", "40,200", "--duration-s", "0.25",
            "--prompt", "uniform:4-30", "--output", "uniform:1-12", "--max-num-seqs", "8",
            "--max-num-batched-tokens", "32", "--block-size", "4", "--kv-blocks", "30",
            "--max-model-len", "128", "--capture-sizes", "1,2,4,8,16,24", "--kv-bucket-tokens",
            "16", "--prefix-caching", "--shared-prefix-tokens", "8", "--warmup-requests", "2",
            "--cudagraph-mode", mode]
    assert bench.main(argv) == 0
    summary = json.loads((tmp_path / "tiny" / "summary.json").read_text())
    assert set(summary) == {"rate-40", "rate-200"}
    for label in summary:
        run = tmp_path / "tiny" / label
        assert serve_record.check_run(run) == []
        meta, _, requests = serve_record.read_run(run)
        assert meta["format"] == serve_record.FORMAT and meta["device"] == "cpu"
        assert meta["engine"]["num_blocks"] == 30 and meta["prefix_cache"]["lookups"] > 0
        assert meta["engine"]["cudagraph_mode"] == mode
        # decode graphs up to the sequence limit; piecewise sizes up to the token budget
        assert meta["engine"]["capture_sizes"] == (
            [1, 2, 4, 8, 16, 24] if mode == "full_and_piecewise" else [1, 2, 4, 8])
        assert len(requests) == meta["requests"] > 0
        config = json.loads((run / "config.json").read_text())
        assert config["max_position_embeddings"] == 128
        m = summary[label]
        assert m["ttft_s"]["p50"] <= m["e2el_s"]["p99"]


def test_a_warm_up_load_runs_first_and_is_not_recorded(tmp_path: Path, monkeypatch) -> None:
    """``--warmup-s``: the first load again, of its own seed, before the measured loads;
    nothing of it in the runs written."""
    ran = []
    real_run = bench.Engine.run

    def run(self, workload, max_wall_s=float("inf")):
        ran.append((workload.spec.seed, workload.spec.duration_s))
        return real_run(self, workload, max_wall_s)

    monkeypatch.setattr(bench.Engine, "run", run)
    argv = ["--out", str(tmp_path), "--gpu", "cpu", "--model", "tiny", "--device", "cpu",
            "--dtype", "float32", "--rates", "40", "--duration-s", "0.2", "--seed", "3",
            "--prompt", "uniform:4-30", "--output", "uniform:1-12", "--max-num-seqs", "8",
            "--max-num-batched-tokens", "32", "--block-size", "4", "--kv-blocks", "30",
            "--max-model-len", "128", "--capture-sizes", "none", "--warmup-requests", "0",
            "--warmup-s", "0.3"]
    assert bench.main(argv) == 0
    assert ran == [(1003, 0.3), (3, 0.2)]
    summary = json.loads((tmp_path / "tiny" / "summary.json").read_text())
    assert set(summary) == {"rate-40"}
    meta, _, requests = serve_record.read_run(tmp_path / "tiny" / "rate-40")
    assert "--warmup-s" in meta["provenance"]["command"]
    # what ran before it in its process, for the report's first loads
    assert meta["process"] == {"load_index": 0, "warmup_s": 0.3, "warmup_requests": 0}
    assert min(r["arrival_s"] for r in requests) >= 0


def test_check_run_finds_broken_records(tmp_path: Path) -> None:
    rows = random_rows(4, seed=9)
    engine = serve(rows)
    serve_record.write_run(tmp_path, {"engine": {"num_blocks": 64}}, {}, engine)
    assert serve_record.check_run(tmp_path) == []
    lines = (tmp_path / "requests.jsonl").read_text().splitlines()
    bad = json.loads(lines[0])
    bad["token_s"] = bad["token_s"][:-1]
    (tmp_path / "requests.jsonl").write_text("\n".join([json.dumps(bad), *lines[1:]]) + "\n")
    assert any("token times" in p for p in serve_record.check_run(tmp_path))
