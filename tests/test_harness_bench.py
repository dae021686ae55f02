"""validation/harness/bench.py on the CPU: every code path, tiny inline shapes."""

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

import bench  # noqa: E402
import bench_campaign  # noqa: E402
import bench_steps  # noqa: E402
from bench_common import GRIDS, KERNELS_COLUMNS, MICRO_COLUMNS, STEPS_COLUMNS  # noqa: E402
from bench_timing import Budget, CsvSink, GiB  # noqa: E402
from reference import Shape  # noqa: E402

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 64, "vocab_size": 96,
        "tie_word_embeddings": True}
TINY_MHA = {**TINY, "num_key_value_heads": 4, "head_dim": None, "tie_word_embeddings": False}
LLAMA_8B = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256}
FILES = {"micro.csv": MICRO_COLUMNS, "steps.csv": STEPS_COLUMNS,
         "kernels.csv": KERNELS_COLUMNS}


def _read(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        return list(r.fieldnames or []), list(r)


def _cli(out: Path, *extra: str) -> list[str]:
    return ["--out", str(out), "--gpu", "cpu-test", "--device", "cpu", "--quick", *extra]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    rc = bench.main(_cli(out), shapes={"tiny": TINY, "tiny-mha": TINY_MHA})
    return rc, out


def test_quick_cpu_run_writes_every_file(full_run):
    rc, out = full_run
    assert rc == 0
    assert not (out / "errors.log").exists()
    for name, cols in FILES.items():
        header, rows = _read(out / name)
        assert header == cols
        assert rows, name
    env = json.loads((out / "env.json").read_text())
    assert env["gpu"] == "cpu-test" and env["torch"] == torch.__version__
    assert set(env["models"]) == {"tiny", "tiny-mha"}
    assert "--quick" in env["command"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["errors"] == 0 and not summary["stopped_by_budget"]
    assert summary["phases_run"] == list(bench.PHASES)


def test_quick_cpu_run_rows(full_run):
    _, out = full_run
    _, micro = _read(out / "micro.csv")
    kinds = {r["kind"] for r in micro}
    assert kinds == {"launch", "copy", "elementwise", "gemm", "attention"}
    for r in micro:
        assert float(r["median_us"]) > 0
        assert float(r["p10_us"]) <= float(r["median_us"]) <= float(r["p90_us"])
        assert int(r["repeats"]) >= 5
    gemm = [r for r in micro if r["kind"] == "gemm"]
    for r in gemm:
        m, n, k = int(r["m"]), int(r["n"]), int(r["k"])
        assert int(r["flops"]) == 2 * m * n * k
        assert int(r["bytes"]) == 2 * (m * k + n * k + m * n)
    # qkv of the GQA model: (4 + 2*2) * 8 = 64 outputs; tied lm_head == embed shape
    assert {(int(r["n"]), int(r["k"])) for r in gemm} >= {(64, 32), (96, 32), (128, 32)}
    attn = [r for r in micro if r["kind"] == "attention"]
    assert {r["name"] for r in attn} == {"decode", "verify", "prefill"}
    assert {(r["heads"], r["kv_heads"]) for r in attn} == {("4", "2"), ("4", "4")}
    for r in attn:
        b, c, q, h, d = (int(r[x]) for x in ("batch", "ctx", "q", "heads", "head_dim"))
        assert int(r["flops"]) == 4 * b * h * q * (c + q) * d

    _, steps = _read(out / "steps.csv")
    g = GRIDS["cpu"]
    per_model = len(g.dec_b) * len(g.dec_ctx) + len(g.ver_b) * len(g.ver_q) * len(g.ver_ctx) \
        + len(g.pre) + len(g.eager)
    assert len(steps) == 2 * per_model
    assert {r["mode"] for r in steps} == {"decode", "verify", "prefill"}
    # eager steps first, before any graph work (a fresh process's host path)
    launches = [r["launch"] for r in steps]
    assert launches == sorted(launches, key=lambda x: x != "eager")
    for r in steps:
        assert float(r["p10_ms"]) <= float(r["median_ms"]) <= float(r["p90_ms"])
        assert r["kernels"] == ""   # counted by the profile phase, after all timing
        assert r["launch"] in {"cpu", "eager"}
        if r["mode"] == "prefill":
            assert r["ctx"] == "0"

    _, kernels = _read(out / "kernels.csv")
    assert {(r["model"], r["mode"]) for r in kernels} == {
        (m, mode) for m in ("tiny", "tiny-mha") for mode in ("decode", "verify", "prefill")}
    assert any("mm" in r["kernel_name"] for r in kernels)
    assert all(int(r["count"]) > 0 for r in kernels)


def test_budget_zero_writes_headers_only(tmp_path):
    rc = bench.main(_cli(tmp_path, "--budget-s", "0"), shapes={"tiny": TINY})
    assert rc == 0
    for name, cols in FILES.items():
        header, rows = _read(tmp_path / name)
        assert header == cols and rows == []
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped_by_budget"] and summary["phases_run"] == []
    json.loads((tmp_path / "env.json").read_text())


def test_budget_stops_mid_phase(tmp_path, monkeypatch):
    """The budget runs out after a few measurements: the campaign stops, files stay valid."""
    calls = {"n": 0}

    def over(self):
        calls["n"] += 1
        if calls["n"] > 6:
            self.hit = True
        return self.hit

    monkeypatch.setattr(Budget, "over", over)
    rc = bench.main(_cli(tmp_path, "--only", "steps,copy"), shapes={"tiny": TINY})
    assert rc == 0
    _, steps = _read(tmp_path / "steps.csv")
    _, micro = _read(tmp_path / "micro.csv")
    assert 0 < len(steps) + len(micro) < 6
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped_by_budget"]


def test_only_and_append(tmp_path):
    for _ in range(2):
        assert bench.main(_cli(tmp_path, "--only", "launch"), shapes={"tiny": TINY}) == 0
    header, rows = _read(tmp_path / "micro.csv")
    assert header == MICRO_COLUMNS
    assert len(rows) == 4 and {r["kind"] for r in rows} == {"launch"}  # graph + eager, twice
    _, steps = _read(tmp_path / "steps.csv")
    assert steps == []


def test_errors_are_logged_and_the_campaign_goes_on(tmp_path, monkeypatch):
    real = bench_steps._step_one

    def flaky(ctx, model, w, cache, s):
        if s.mode == "verify":
            raise torch.OutOfMemoryError("pretend OOM")
        return real(ctx, model, w, cache, s)

    monkeypatch.setattr(bench_steps, "_step_one", flaky)
    rc = bench.main(_cli(tmp_path, "--only", "steps"), shapes={"tiny": TINY})
    assert rc == 0
    log = (tmp_path / "errors.log").read_text()
    assert "pretend OOM" in log
    _, steps = _read(tmp_path / "steps.csv")
    # eager steps are timed together in turns (not through _step_one)
    timed_alone = [r for r in steps if r["launch"] != "eager"]
    assert timed_alone and all(r["mode"] != "verify" for r in timed_alone)
    assert {r["mode"] for r in timed_alone} == {"decode", "prefill"}


def test_select_phases():
    assert bench.select_phases("") == list(bench.PHASES)
    assert bench.select_phases("micro") == ["launch", "copy", "gemm", "attention",
                                            "elementwise"]
    assert bench.select_phases("profile,steps") == ["steps", "profile"]
    with pytest.raises(SystemExit):
        bench.select_phases("nope")


def test_shapes_json_and_models(tmp_path):
    p = tmp_path / "shapes.json"
    p.write_text(json.dumps({"a": TINY, "b": TINY_MHA}))
    models = bench_campaign.load_models(["b"], json.loads(p.read_text()), tmp_path)
    assert models["b"].num_key_value_heads == 4 and models["b"].d == 8
    assert bench_campaign.load_models(["tiny"], {}, tmp_path)["tiny"].hidden_size == 64
    with pytest.raises(SystemExit):
        bench_campaign.load_models(["missing"], {}, tmp_path)


def test_default_models_resolve():
    if not all((bench_campaign.MODELS_DIR / f"{m}.yaml").exists() for m in bench.DEFAULT_MODELS):
        pytest.skip("workloads/models not written yet")
    models = bench_campaign.load_models(list(bench.DEFAULT_MODELS), {}, bench_campaign.MODELS_DIR)
    assert models["llama-3.2-1b"].d == 64 and models["llama-3.2-1b"].tie_word_embeddings


def test_plan_steps_fits_kv_budget_and_cache():
    shape = Shape.from_dict(LLAMA_8B)
    budget = 40 * GiB
    plans, skipped = bench_steps.plan_steps(GRIDS["full"], shape, budget)
    per_tok = bench_steps.kv_bytes_per_token(shape)
    assert per_tok == 2 * 32 * 8 * 128 * 2
    seen = [s for p in plans for s in p.shapes]
    g = GRIDS["full"]
    assert len(seen) + len(skipped) == (len(g.dec_b) * len(g.dec_ctx)
                                        + len(g.ver_b) * len(g.ver_q) * len(g.ver_ctx)
                                        + len(g.pre) + len(g.eager))
    for p in plans:
        assert p.batch * p.max_len * per_tok <= budget
        for s in p.shapes:
            assert s.batch == p.batch and s.ctx + s.q <= p.max_len
            assert (s.ctx == 0) == (s.mode == "prefill")
    assert all(s.batch * (s.ctx + s.q) * per_tok > budget for s in skipped)
    assert ("decode", 256, 16384) in {(s.mode, s.batch, s.ctx) for s in skipped}
    assert ("decode", 16, 16384) in {(s.mode, s.batch, s.ctx) for s in seen}


def test_make_cache_is_random_in_dtype():
    shape = Shape.from_dict(TINY)
    c = bench_steps.make_cache(shape, 3, 10, torch.device("cpu"), torch.bfloat16)
    assert c.k.shape == (2, 3, 2, 10, 8) and c.k.dtype == torch.bfloat16
    assert 0.8 < float(c.k.float().std()) < 1.2 and not torch.equal(c.k, c.v)


def test_csv_sink_appends_and_flushes(tmp_path):
    p = tmp_path / "x.csv"
    s = CsvSink(p, ["a", "b"])
    s.write(a=1, b=0.5)
    assert _read(p) == (["a", "b"], [{"a": "1", "b": "0.5"}])   # readable before close
    s.write(a=2)
    s.close()
    s = CsvSink(p, ["a", "b"])
    s.write(a=3, b=float("nan"))
    s.close()
    assert _read(p)[1] == [{"a": "1", "b": "0.5"}, {"a": "2", "b": ""}, {"a": "3", "b": ""}]
    with pytest.raises(KeyError):
        CsvSink(p, ["a"]).write(c=1)


def test_steps_phase_never_starts_the_profiler(monkeypatch, tmp_path):
    """torch.profiler leaves CUPTI hooks that slow every later launch: the steps phase
    (graph and eager timings) must not use it."""
    import bench_steps

    def boom(*a, **k):
        raise AssertionError("profiler used while timing steps")

    monkeypatch.setattr(bench_steps, "profile_kernels", boom)
    monkeypatch.setattr("torch.profiler.profile", boom)
    rc = bench.main(["--out", str(tmp_path), "--gpu", "cpu-test", "--device", "cpu",
                     "--quick", "--only", "steps", "--models", "tiny"])
    assert rc == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["errors"] == 0
    _, steps = _read(tmp_path / "steps.csv")
    assert any(r["launch"] == "eager" for r in steps)


def test_parse_int_list_ranges_and_errors():
    assert bench_campaign.parse_int_list("1,2,8:32:8") == (1, 2, 8, 16, 24, 32)
    assert bench_campaign.parse_int_list("16,8:16:8") == (8, 16)
    for bad in ("", "0", "8:4", "a", "8:16:0"):
        with pytest.raises(ValueError):
            bench_campaign.parse_int_list(bad)


def test_gemm_m_replaces_the_m_grid(tmp_path):
    rc = bench.main(_cli(tmp_path, "--only", "gemm", "--gemm-m", "3,5"),
                    shapes={"tiny": TINY})
    assert rc == 0
    _, rows = _read(tmp_path / "micro.csv")
    assert rows and {int(r["m"]) for r in rows} == {3, 5}


def test_step_shapes_replace_the_steps_grid(tmp_path):
    rc = bench.main(_cli(tmp_path, "--only", "steps", "--step-shapes",
                         "decode:3:40:1,verify:2:20:3"), shapes={"tiny": TINY})
    assert rc == 0
    _, rows = _read(tmp_path / "steps.csv")
    got = {(r["mode"], r["batch"], r["ctx"], r["q"]) for r in rows}
    assert got == {("decode", "3", "40", "1"), ("verify", "2", "20", "3")}
    assert "eager" not in {r["launch"] for r in rows}   # graph steps (on a CPU: "cpu")


def test_parse_steps():
    assert bench_campaign.parse_steps("decode:8:1024:1,verify:4:512:2") == (
        ("decode", 8, 1024, 1), ("verify", 4, 512, 2))
    with pytest.raises(ValueError, match="mode:batch:ctx:q"):
        bench_campaign.parse_steps("decode:8:1024")
