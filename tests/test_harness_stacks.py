"""validation/harness/stacks_forward.py and bench_stacks.py on the CPU.

Every measured stack against reference.py's float32 oracle, torch-fused's one norm op a
norm, torch.compile without recompiles per batch size, transformers' Llama with the
reference weights, and a quick campaign's files.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

HARNESS = Path(__file__).resolve().parents[1] / "validation" / "harness"
if str(HARNESS) not in sys.path:
    sys.path.insert(0, str(HARNESS))

import bench_campaign  # noqa: E402
import bench_stacks  # noqa: E402
import reference  # noqa: E402
import stacks_forward as sf  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402

HAVE_HF = importlib.util.find_spec("transformers") is not None
needs_hf = pytest.mark.skipif(not HAVE_HF, reason="transformers is not installed (dev "
                              "extras): the hf-transformers stack cannot be built")
CPU = torch.device("cpu")
GQA = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
       "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 96, "vocab_size": 128,
       "rope_theta": 5e5, "rms_norm_eps": 1e-5}
TIED_MHA = {**GQA, "num_key_value_heads": 4, "tie_word_embeddings": True}
QWEN3 = {**GQA, "qk_norm": True}   # Qwen3's per-head q/k norms
CFGS, CFG_IDS = [GQA, TIED_MHA, QWEN3], ["gqa", "tied-mha", "qwen3"]
# (mode, batch, ctx, q)
STEPS = [("decode", 2, 7, 1), ("verify", 2, 5, 3), ("verify", 3, 9, 4), ("prefill", 2, 0, 6)]
MAX_LEN = 16
STEP_IDS = [f"{m}-b{b}-c{c}-q{q}" for m, b, c, q in STEPS]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny shapes gain nothing from threads, and on a loaded 2-core machine OpenMP's
    spinning threads stall each op for up to ~100 ms."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="module")
def restore_compile_config():
    """CompileStack.load sets two process-wide compile settings: put them back for the
    rest of the test session."""
    import torch.fx.experimental._config as fx_config

    before = (fx_config.use_duck_shape, torch._dynamo.config.fail_on_recompile_limit_hit)
    yield
    fx_config.use_duck_shape, torch._dynamo.config.fail_on_recompile_limit_hit = before
    torch._dynamo.reset()


def _cache_kv(cache: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Any stack's cache as reference's [L, B, Hkv, S, D] k and v (copies)."""
    if isinstance(cache, reference.KVCache):
        return cache.k.clone(), cache.v.clone()
    if isinstance(cache, sf.LayerKV):
        return torch.stack(cache.k), torch.stack(cache.v)
    layers = cache.cache.layers  # type: ignore[attr-defined]  (HfCache)
    return (torch.stack([layer.keys for layer in layers]),
            torch.stack([layer.values for layer in layers]))


def _load_cache_kv(cache: object, k: torch.Tensor, v: torch.Tensor) -> None:
    """Write reference [L, B, Hkv, S, D] contents into an hf-transformers cache."""
    for i, layer in enumerate(cache.cache.layers):  # type: ignore[attr-defined]
        layer.keys.copy_(k[i])
        layer.values.copy_(v[i])


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref).norm() / ref.norm())


def _check_step(stack: sf.Stack, model: object, w: reference.Weights, mode: str, b: int,
                ctx: int, q: int, dtype: torch.dtype, tol: float,
                hf: bool = False) -> None:
    """One step of ``stack`` against the oracle, twice (a step can be repeated), with
    the cache written at ctx..ctx+q-1 and nowhere else."""
    cache = stack.new_cache(model, b, MAX_LEN, CPU, dtype)
    k0, v0 = _cache_kv(cache)
    if hf:   # the HF model's cache holds its own random values: give it reference's
        ref_cache = reference.KVCache(w.shape, b, MAX_LEN, "cpu", dtype, seed=4)
        k0, v0 = ref_cache.k, ref_cache.v
        _load_cache_kv(cache, k0, v0)
    tokens = sf.random_tokens(w.shape.vocab_size, b, q, CPU, seed=5)
    ref = reference.reference_forward_fp32(w, k0, v0, tokens, ctx, mode)
    fn = stack.step(model, cache, mode, b, ctx, q, tokens)
    for _ in range(2):
        out = fn()
        assert out.shape == ref.shape == (b if mode == "prefill" else b * q,
                                          w.shape.vocab_size)
        assert out.dtype == dtype and torch.isfinite(out).all()
        assert _rel(out, ref) < tol
    k1, v1 = _cache_kv(cache)
    outside = torch.ones(k1.shape[3], dtype=torch.bool)
    outside[ctx:ctx + q] = False
    assert torch.equal(k1[:, :, :, outside], k0[:, :, :, outside])
    assert torch.equal(v1[:, :, :, outside], v0[:, :, :, outside])
    assert not torch.equal(k1[:, :, :, ctx:ctx + q], k0[:, :, :, ctx:ctx + q])
    assert not torch.equal(v1[:, :, :, ctx:ctx + q], v0[:, :, :, ctx:ctx + q])


# ------------------------------------------------------------------ torch-hf, torch-fused
@pytest.mark.parametrize("name", ["torch-hf", "torch-fused"])
@pytest.mark.parametrize("cfg", CFGS, ids=CFG_IDS)
@pytest.mark.parametrize("step", STEPS, ids=STEP_IDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)],
                         ids=["fp32", "bf16"])
def test_torch_stacks_match_fp32_oracle(name, cfg, step, dtype, tol):
    stack = sf.STACKS[name]
    w = stack.load(reference.Shape.from_dict(cfg), CPU, dtype)
    _check_step(stack, w, w, *step, dtype, tol)


class _Calls(TorchFunctionMode):
    """Names of the torch functions and tensor methods called (attribute reads and
    indexing left out)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name not in {"__get__", "__getitem__"}:
            self.names.append(name)
        return func(*args, **(kwargs or {}))


# reference.rms_norm's calls: float, pow, mean, add, rsqrt, mul, to, mul (8 kernels)
HF_NORM = ["float", "pow", "mean", "add", "rsqrt", "mul", "to", "mul"]


def _calls(name: str, layers: int, step: tuple, cfg: dict = GQA) -> list[str]:
    mode, b, ctx, q = step
    stack = sf.STACKS[name]
    w = stack.load(reference.Shape.from_dict({**cfg, "num_hidden_layers": layers}), CPU,
                   torch.bfloat16)
    fn = stack.step(w, stack.new_cache(w, b, MAX_LEN, CPU, torch.bfloat16), mode, b, ctx, q)
    with _Calls() as calls:
        fn()
    return calls.names


def _fuse_norms(names: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(names):
        if names[i:i + len(HF_NORM)] == HF_NORM:
            out.append("rms_norm")
            i += len(HF_NORM)
        else:
            out.append(names[i])
            i += 1
    return out


@pytest.mark.parametrize("step", STEPS[:3] + STEPS[-1:], ids=STEP_IDS[:3] + STEP_IDS[-1:])
@pytest.mark.parametrize("cfg,norms", [(GQA, 2), (QWEN3, 4)], ids=["gqa", "qwen3"])
def test_torch_fused_is_reference_with_one_norm_op(step, cfg, norms):
    """torch-fused calls F.rms_norm once a norm (2 a layer, 4 with Qwen3's q/k norms,
    1 final) and nothing else of the 8-op norm; every other call is reference.forward's,
    in the same order."""
    for layers in (1, 2):
        fused = _calls("torch-fused", layers, step, cfg)
        hf = _calls("torch-hf", layers, step, cfg)
        assert fused.count("rms_norm") == norms * layers + 1
        assert "rsqrt" not in fused and "pow" not in fused
        assert hf.count("rsqrt") == norms * layers + 1 and "rms_norm" not in hf
        assert fused == _fuse_norms(hf)


def test_torch_fused_is_reference_forward_with_fused_norms():
    """float32: torch-fused (fused_forward.forward over the reference weights' own
    tensors) gives reference.forward's logits and cache to rounding, for every mode;
    the torch-fused Model is made once per Weights and shares its tensors."""
    shape = reference.Shape.from_dict(GQA)
    w = reference.Weights(shape, "cpu", torch.float32)
    m = sf.fused_model(w)
    assert sf.fused_model(w) is m and m.layers[0].qkv.w is w.layers[0]["wqkv"]
    for mode, b, ctx, q in STEPS:
        caches = [reference.KVCache(shape, b, MAX_LEN, "cpu", torch.float32, seed=6)
                  for _ in range(2)]
        tokens = sf.random_tokens(shape.vocab_size, b, q, CPU)
        out = sf.STACKS["torch-fused"].forward(m, caches[0], tokens, ctx, mode)
        ref = reference.forward(w, caches[1], tokens, ctx, mode)
        assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5)
        assert torch.allclose(caches[0].k, caches[1].k, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------ torch-compile
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5)], ids=["fp32"])
@pytest.mark.parametrize("cfg", [GQA, QWEN3], ids=["gqa", "qwen3"])
def test_compile_stack_all_modes_one_graph_each(dtype, tol, cfg):
    """Dynamo alone (backend "eager"): each mode compiles one graph, and a second batch
    size, q and ctx (and another cache) reuse it; the math matches the oracle."""
    stack = sf.CompileStack(backend="eager")
    w = stack.load(reference.Shape.from_dict(cfg), CPU, dtype)
    per_mode = {"decode": [(2, 7, 1), (3, 9, 1), (4, 12, 1)],
                "verify": [(2, 5, 3), (3, 9, 4)],
                "prefill": [(2, 0, 6), (3, 0, 9)]}
    for graphs, (mode, steps) in enumerate(per_mode.items(), start=1):
        for b, ctx, q in steps:
            _check_step(stack, w, w, mode, b, ctx, q, dtype, tol)
        assert stack.graphs == graphs, mode


def test_compile_stack_inductor_cpu():
    """Inductor on the CPU (the campaign's bf16 tiny model): a second batch size and
    context compile nothing new, the cache is written in place, the logits match."""
    stack = sf.CompileStack()
    w = stack.load(reference.Shape.from_dict(bench_campaign.TINY), CPU, torch.bfloat16)
    _check_step(stack, w, w, "decode", 2, 7, 1, torch.bfloat16, 2e-2)
    assert stack.graphs == 1 and stack.backend_s > 0
    _check_step(stack, w, w, "decode", 3, 11, 1, torch.bfloat16, 2e-2)
    assert stack.graphs == 1


def test_compile_stack_needs_load():
    with pytest.raises(RuntimeError, match="before load"):
        sf.CompileStack().step(None, None, "decode", 1, 0, 1)


# ---------------------------------------------------------------------- hf-transformers
def _hf(cfg: dict, dtype: torch.dtype):
    stack = sf.STACKS["hf-transformers"]
    shape = reference.Shape.from_dict(cfg)
    model = stack.load(shape, CPU, dtype)
    w = reference.Weights(shape, "cpu", dtype, seed=3)
    sf.hf_load_weights(model, w)
    return stack, model, w


@needs_hf
@pytest.mark.parametrize("cfg", CFGS, ids=CFG_IDS)
@pytest.mark.parametrize("step", STEPS, ids=STEP_IDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)],
                         ids=["fp32", "bf16"])
def test_hf_transformers_is_the_reference_llama(cfg, step, dtype, tol):
    """transformers' LlamaForCausalLM with reference's weights and cache gives
    reference's logits: it is the same Llama."""
    stack, model, w = _hf(cfg, dtype)
    assert model.dtype == dtype and model.config._attn_implementation == "sdpa"
    _check_step(stack, model, w, *step, dtype, tol, hf=True)


@needs_hf
@pytest.mark.parametrize("step", STEPS[1:], ids=STEP_IDS[1:])
def test_hf_transformers_capture_path(monkeypatch, step):
    """Under CUDA-graph capture transformers builds the mask over the whole cache
    instead of asking the GPU whether the cache is empty: the same logits."""
    import transformers.masking_utils as mu

    monkeypatch.setattr(mu, "is_tracing", lambda *a, **k: True)
    stack, model, w = _hf(GQA, torch.float32)
    _check_step(stack, model, w, *step, torch.float32, 1e-5, hf=True)


@needs_hf
def test_hf_cache_is_random_and_rewinds():
    stack, model, _ = _hf(GQA, torch.bfloat16)
    cache = stack.new_cache(model, 2, 12, CPU, torch.bfloat16)
    assert stack.cache_len(cache) == 12
    k, v = _cache_kv(cache)
    assert k.shape == (2, 2, 2, 12, 16) and k.dtype == torch.bfloat16
    assert 0.8 < float(k.float().std()) < 1.2 and not torch.equal(k, v)
    stack.step(model, cache, "verify", 2, 5, 3)()
    assert cache.written.tolist() == [8, 8]   # every layer advanced by q from ctx


def test_check_step_rejects_bad_steps():
    for args, msg in [(("tree", 1, 0, 1), "unknown mode"), (("decode", 1, 3, 2), "q == 1"),
                      (("prefill", 1, 3, 2), "ctx == 0"), (("verify", 2, 3, 2), "batch 2"),
                      (("verify", 1, 7, 2), "outside a cache"), (("verify", 1, 2, 0), "q >= 1")]:
        with pytest.raises(ValueError, match=msg):
            sf.check_step(*args, cache_batch=1, cache_len=8)
    stack = sf.STACKS["torch-fused"]
    w = stack.load(reference.Shape.from_dict(GQA), CPU, torch.float32)
    with pytest.raises(ValueError, match="outside a cache"):
        stack.step(w, stack.new_cache(w, 1, 8, CPU, torch.float32), "decode", 1, 8, 1)


# ----------------------------------------------------------------------------- campaign
def _read(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        return list(r.fieldnames or []), list(r)


CAMPAIGN_STACKS = ["torch-hf", "torch-fused"] + (["hf-transformers"] if HAVE_HF else [])


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    out = tmp_path_factory.mktemp("stacks")
    rc = bench_stacks.main(["--out", str(out), "--gpu", "cpu-test", "--device", "cpu",
                            "--models", "tiny", "--quick", "--stack",
                            ",".join(CAMPAIGN_STACKS)])
    return rc, out


def test_campaign_steps_and_kernels(campaign):
    rc, out = campaign
    assert rc == 0 and not (out / "errors.log").exists()
    header, steps = _read(out / "steps.csv")
    assert header == bench_stacks.STACK_STEPS_COLUMNS
    assert header[-2:] == ["stack", "cache_len"]
    g = bench_stacks.CPU_GRID
    per_stack = len(g.dec_b) * len(g.dec_ctx) + len(g.ver_b) * len(g.ver_q) * len(
        g.ver_ctx) + len(g.pre) + len(g.eager)
    assert len(steps) == per_stack * len(CAMPAIGN_STACKS)
    assert {r["stack"] for r in steps} == set(CAMPAIGN_STACKS)
    for st in CAMPAIGN_STACKS:
        launches = [r["launch"] for r in steps if r["stack"] == st]
        assert launches == sorted(launches, key=lambda x: x != "eager")   # eager first
        assert set(launches) == {"eager", "cpu"}
    for r in steps:
        assert int(r["cache_len"]) >= int(r["ctx"]) + int(r["q"])
        assert float(r["p10_ms"]) <= float(r["median_ms"]) <= float(r["p90_ms"])
        assert r["model"] == "tiny" and r["kernels"] == ""
    header, kernels = _read(out / "kernels.csv")
    assert header == bench_stacks.STACK_KERNELS_COLUMNS
    assert {(r["stack"], r["mode"]) for r in kernels} == {
        (st, m) for st in CAMPAIGN_STACKS for m in ("decode", "verify", "prefill")}
    assert all(int(r["count"]) > 0 for r in kernels)
    env = json.loads((out / "env.json").read_text())
    assert env["stacks"] == CAMPAIGN_STACKS and env["grid"] == "stacks-cpu"
    assert "bench_stacks.py" in env["command"][1]
    assert ("transformers" in env) and (env["transformers"] is not None) == HAVE_HF
    summary = json.loads((out / "summary.json").read_text())
    assert summary["errors"] == 0 and summary["phases_run"] == list(bench_stacks.PHASES)


def test_campaign_traces_hold_the_step_markers(campaign):
    _, out = campaign
    files = sorted((out / "traces").glob("*.json.gz"))
    assert len(files) == 3 * len(CAMPAIGN_STACKS)
    for st in CAMPAIGN_STACKS:
        assert (out / "traces" / f"{st}__tiny__verify_b2_ctx16_q3_n2.json.gz").exists()
    for path in files:
        assert path.stat().st_size < 1 << 20
        events = json.loads(gzip.decompress(path.read_bytes()))["traceEvents"]
        marks = sorted((e for e in events if e.get("cat") == "user_annotation"
                        and e["name"].startswith("gpusim_step_")), key=lambda e: e["ts"])
        assert [e["name"] for e in marks] == ["gpusim_step_0", "gpusim_step_1"]
        first, second = marks
        assert first["ts"] + first["dur"] <= second["ts"]
        inside = [e for e in events if e.get("cat") == "cpu_op"
                  and first["ts"] <= e["ts"] <= first["ts"] + first["dur"]]
        assert any(e["name"] == "aten::mm" and "Input Dims" in e["args"] for e in inside)
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["traces"]) == len(files)


def test_campaign_compile_stack_counts_graphs(tmp_path):
    """torch-compile in the campaign: two batch sizes, one compiled graph, its compile
    time in summary.json."""
    rc = bench_stacks.main(["--out", str(tmp_path), "--gpu", "cpu-test", "--device", "cpu",
                            "--models", "tiny", "--stack", "torch-compile", "--only", "steps",
                            "--step-shapes", "decode:2:7:1,decode:3:11:1"])
    assert rc == 0 and not (tmp_path / "errors.log").exists()
    _, steps = _read(tmp_path / "steps.csv")
    assert [(r["batch"], r["cache_len"]) for r in steps] == [("2", "9"), ("3", "13")]
    summary = json.loads((tmp_path / "summary.json").read_text())
    c = summary["compiles"]["torch-compile"]["tiny"]
    assert c["graphs"] == 1 and c["compile_s"] > 0
    env = json.loads((tmp_path / "env.json").read_text())
    assert env["compile"]["use_duck_shape"] is False


def test_campaign_budget_and_arguments(tmp_path):
    rc = bench_stacks.main(["--out", str(tmp_path), "--gpu", "cpu-test", "--device", "cpu",
                            "--stack", "torch-fused", "--budget-s", "0"])
    assert rc == 0
    for name, cols in (("steps.csv", bench_stacks.STACK_STEPS_COLUMNS),
                       ("kernels.csv", bench_stacks.STACK_KERNELS_COLUMNS)):
        assert _read(tmp_path / name) == (cols, [])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped_by_budget"] and summary["phases_run"] == []
    for bad in (["--stack", "nope"], ["--stack", "torch-hf", "--only", "micro"],
                ["--stack", "torch-hf", "--trace-steps", "0"]):
        with pytest.raises(SystemExit):
            bench_stacks.main(["--out", str(tmp_path), "--gpu", "x", "--device", "cpu", *bad])


def test_grids():
    g = bench_stacks.STACKS_GRID
    n = len(g.dec_b) * len(g.dec_ctx) + len(g.ver_b) * len(g.ver_q) * len(g.ver_ctx) \
        + len(g.pre)
    assert n == 14 and len(g.eager) == 3
    assert g.profile == bench_stacks.PROFILE_SHAPES
    for grid in (g, bench_stacks.QUICK_GRID, bench_stacks.CPU_GRID):
        assert grid.name in bench_stacks.TRACE_SHAPES


def test_select_grid_options():
    def grid(*argv: str):
        args = bench_stacks.parse_args(["--out", "x", "--gpu", "x", "--stack", "torch-hf",
                                        *argv])
        return bench_stacks.select_grid(args, cuda=True)

    g = grid("--step-shapes", "decode:2:8:1", "--eager-shapes", "verify:2:8:3")
    assert g.graph_steps == (("decode", 2, 8, 1),) and g.eager == (("verify", 2, 8, 3),)
    assert g.dec_b == g.ver_b == g.pre == ()
    assert grid("--step-shapes", "decode:2:8:1").eager == ()           # as bench.py
    g = grid("--eager-only", "--step-shapes", "decode:2:8:1", "--eager-shapes", "decode:1:8:1")
    assert g.graph_steps == () and g.eager == (("decode", 1, 8, 1),)
    g = grid("--graph-only")
    assert g.eager == () and g.dec_b == bench_stacks.STACKS_GRID.dec_b
    assert grid("--quick").name == "stacks-quick"
    with pytest.raises(SystemExit):
        grid("--eager-only", "--graph-only")
