"""validation/harness/bench_spec.py on the CPU: every code path, tiny inline shapes."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

HARNESS = Path(__file__).resolve().parents[1] / "validation" / "harness"
if str(HARNESS) not in sys.path:
    sys.path.insert(0, str(HARNESS))

import bench_campaign as bc  # noqa: E402
import bench_spec  # noqa: E402
from reference import Shape  # noqa: E402

TARGET = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 64, "vocab_size": 96}
DRAFT = {**TARGET, "num_hidden_layers": 1, "vocab_size": 80}   # padded vocabularies differ
SHAPES = {"t": TARGET, "d": DRAFT}


def _cli(out: Path, *extra: str) -> list[str]:
    return ["--out", str(out), "--gpu", "cpu-test", "--device", "cpu", "--quick",
            "--pairs", "t:d", *extra]


def _read(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        return list(r.fieldnames or []), list(r)


def test_quick_cpu_run(tmp_path):
    rc = bench_spec.main(_cli(tmp_path, "--ks", "1,3", "--batches", "1,2", "--ctxs", "8"),
                         shapes=SHAPES)
    assert rc == 0
    assert not (tmp_path / "errors.log").exists()
    header, rows = _read(tmp_path / "spec.csv")
    assert header == bench_spec.SPEC_COLUMNS
    assert {(int(r["k"]), int(r["batch"])) for r in rows} == {(1, 1), (3, 1), (1, 2), (3, 2)}
    for r in rows:
        assert r["pair"] == "t+d" and r["launch"] == "cpu" and r["ctx"] == "8"
        assert float(r["iteration_p10_ms"]) <= float(r["iteration_ms"]) \
            <= float(r["iteration_p90_ms"])
        for c in ("draft_step_ms", "verify_ms", "target_step_ms", "plain_iteration_ms"):
            assert float(r[c]) > 0
        assert 0 <= float(r["accepted_mean"]) <= int(r["k"])
    env = json.loads((tmp_path / "spec_env.json").read_text())
    assert env["grid"]["ks"] == [1, 3] and env["estimated"]["rows"] == 4
    summary = json.loads((tmp_path / "spec_summary.json").read_text())
    assert summary["rows"] == 4 and summary["errors"] == 0


def test_budget_zero_writes_header_only(tmp_path):
    assert bench_spec.main(_cli(tmp_path, "--budget-s", "0"), shapes=SHAPES) == 0
    header, rows = _read(tmp_path / "spec.csv")
    assert header == bench_spec.SPEC_COLUMNS and rows == []
    assert json.loads((tmp_path / "spec_summary.json").read_text())["stopped_by_budget"]


@pytest.mark.parametrize("ks", [(1, 2, 4)])
def test_self_speculation_accepts_every_token(ks):
    """Draft = target with identical caches: the loop (indices, masks, acceptance
    kernels, next-token gather) must accept all k draft tokens, iteration after
    iteration."""
    res = bench_spec.self_check(Shape.from_dict(TARGET), 2, 6, ks, torch.device("cpu"),
                                torch.float32, iterations=3)
    assert res == {k: float(k) for k in ks}


def test_default_grid_and_estimate():
    g = bench_spec.GRIDS["full"]
    assert len(g.pairs) >= 2 and g.ks == tuple(range(1, 9))
    assert g.batches == (1, 4, 16, 64) and g.ctxs == (1024, 4096)
    models = bc.load_models(sorted({n for p in g.pairs for n in p}), {}, bc.MODELS_DIR)
    for t, d in g.pairs:
        assert models[t].vocab_size >= models[d].vocab_size - 256   # one tokenizer
    groups, rows, est = bench_spec.estimate_s(g, models, cuda=True)
    assert rows == groups * 8 and 60 < est < 300


def test_bad_pairs_option(tmp_path):
    with pytest.raises(SystemExit, match="--pairs"):
        bench_spec.main(["--out", str(tmp_path), "--gpu", "x", "--device", "cpu",
                         "--pairs", "t-d"], shapes=SHAPES)


def test_draft_kinds_run_on_the_cpu(tmp_path):
    """EAGLE head, Medusa heads and prompt lookup: every code path, gpusim's draft
    syntax in the draft column, Medusa skipped where k exceeds its heads."""
    rc = bench_spec.main(["--out", str(tmp_path), "--gpu", "cpu-test", "--device", "cpu",
                          "--pairs", "t:eagle1,t:medusa3,t:ngram,t:medusa2", "--ks", "1,3",
                          "--batches", "2", "--ctxs", "8"], shapes=SHAPES)
    assert rc == 0 and not (tmp_path / "errors.log").exists()
    _, rows = _read(tmp_path / "spec.csv")
    assert {(r["pair"], r["draft"]) for r in rows} == {
        ("t+eagle1", "eagle:1"), ("t+medusa3", "medusa:3"), ("t+ngram", "ngram")}
    assert len(rows) == 6 and all(float(r["iteration_ms"]) > 0 for r in rows)
    summary = json.loads((tmp_path / "spec_summary.json").read_text())
    assert summary["skipped"] == ["t+medusa2: k up to 3 needs as many heads"]


def test_parse_kind():
    from spec_drafts import DraftKind, parse_kind
    assert parse_kind("eagle2") == DraftKind("eagle", 2)
    assert parse_kind("medusa4").label == "medusa:4"
    assert parse_kind("ngram").label == "ngram"
    assert parse_kind("llama-3.2-1b") is None and parse_kind("eagle") is None
    with pytest.raises(SystemExit, match=r"1\.\.16"):
        parse_kind("medusa17")


def _brute_force_lookup(hist, k: int):
    import numpy as np
    out = np.zeros(k, dtype=np.int64)
    n_len = len(hist)
    for n in (3, 2, 1):
        starts = [j for j in range(n_len - n) if (hist[j:j + n] == hist[n_len - n:]).all()]
        if starts:
            seg = hist[starts[-1] + n: starts[-1] + n + k]
            out[:len(seg)] = seg
            return out
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prompt_lookup_matches_a_brute_force_search(seed):
    import numpy as np
    from spec_drafts import PromptLookup
    lk = PromptLookup(4, 30, seed=seed)
    got = lk.propose(5)
    for s in range(4):
        assert (got[s] == _brute_force_lookup(lk.history[s], 5)).all()
    before = lk.history.copy()
    lk.accept(np.array([1, 2, 3, 4]))
    assert (lk.history[:, :-1] == before[:, 1:]).all() and list(lk.history[:, -1]) == [1, 2, 3, 4]


def test_prompt_lookup_history_survives_its_buffer_shifting_back():
    import numpy as np
    from spec_drafts import HISTORY_SLACK, PromptLookup
    lk = PromptLookup(2, 8, seed=3)
    appended = [np.array([i % 50, (i + 7) % 50]) for i in range(HISTORY_SLACK + 5)]
    for t in appended:
        lk.accept(t)
    assert lk.history.shape == (2, 8)
    assert [list(c) for c in lk.history.T] == [list(t) for t in appended[-8:]]
