"""``gpusim stack import`` and ``gpusim stack check`` on committed profiler traces of
llama-3.2-1b (validation/data/h100-sxm/lease_2026-12-06/traces/) and on small fixture
traces (tests/fixtures/traces/: kernels only, truncated, malformed)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from gpusim.calibration import measurements, stacks_report
from gpusim.cli import main
from gpusim.errors import ConfigError
from gpusim.io import calibrations, loader
from gpusim.io.profile_trace import TracedKernel, read_trace
from gpusim.stackgen.build import import_stack
from gpusim.stackgen.check import check_stack
from gpusim.stackgen.layers import find_layers
from gpusim.stackgen.units import Unit, moved_bytes, units

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT / "validation/data/h100-sxm/lease_2026-12-06/traces"
FIXTURES = ROOT / "tests/fixtures/traces"
DECODE = "{}__llama-3.2-1b__decode_b8_ctx1024_q1_n2.json.gz"
VERIFY = "{}__llama-3.2-1b__verify_b16_ctx512_q4_n2.json.gz"


def _warm(stack: str, shape: str = DECODE):
    return read_trace(TRACES / shape.format(stack), 2)[-1]


@pytest.fixture(scope="module")
def model():
    return loader.load_model("llama-3.2-1b")


@pytest.fixture(scope="module")
def agreements():
    gpu_dir = ROOT / "validation/data/h100-sxm"
    from gpusim.cli.calibration import _import_agreements

    ref = loader.load_stack("torch-hf")
    data = measurements.read_step_dir(gpu_dir / "steps.csv")
    return {a.stack: a for a in _import_agreements(gpu_dir, loader.load_gpu("h100-sxm"),
                                                    ref, data)}


@pytest.mark.parametrize("stack", ["torch-hf", "torch-fused", "torch-compile",
                                   "hf-transformers"])
def test_imported_stack_predicts_within_3pct_of_the_hand_checked_file(agreements, stack):
    a = agreements[stack]
    assert a.n >= 10
    assert a.mean_abs <= 0.03, (stack, a)


def test_every_committed_trace_stack_is_compared():
    found = stacks_report.traces_of(ROOT / "validation/data/h100-sxm")
    assert {"torch-hf", "torch-fused", "torch-compile", "hf-transformers"} <= set(found)


def test_layers_found_and_launches_conserved(model):
    step = _warm("torch-fused")
    us = units(step.kernels)
    layout = find_layers(us, model.num_hidden_layers)
    assert layout.layers == 16
    counted = (sum(u.launches for u in layout.prologue + layout.epilogue)
               + 16 * sum(u.launches for u in layout.layer))
    # the middle layer stands for all: every layer launches as many kernels
    assert counted == sum(u.launches for u in us)


def test_imported_torch_fused_has_the_fused_norm_and_model_weights(model):
    imp = import_stack([_warm("torch-fused"), _warm("torch-fused", VERIFY)], model,
                       "fused-imp", loader.load_stack("torch-hf"))
    weights = [op.weight for op in imp.stack.layer if op.op == "gemm"]
    assert weights == ["qkv", "o", "gate_up", "down"]
    assert imp.stack.layer[0].kernels == 1          # F.rms_norm: one kernel
    # whose CTA walks a token row: priced as the hand-checked file prices it
    assert imp.stack.layer[0].row_walk == "torch_layer_norm"
    assert imp.stack.layer[0].strided_kernels == 0
    assert imp.modes == ("decode", "verify")
    assert imp.stack.attention["decode"] == "flash_decode"
    assert imp.stack.attention["verify"] == "fa2"
    assert [op.weight for op in imp.stack.epilogue if op.op == "gemm"] == ["lm_head"]


def test_hf_transformers_import_sees_separate_projections_and_the_static_cache(model):
    imp = import_stack([_warm("hf-transformers"), _warm("hf-transformers", VERIFY)],
                       model, "hf-imp", loader.load_stack("torch-hf"))
    weights = [op.weight for op in imp.stack.layer if op.op == "gemm"]
    assert weights == ["q", "k", "v", "o", "gate", "up", "down"]
    attn = next(op for op in imp.stack.layer if op.op == "attention")
    assert attn.keys == "allocated_cache"
    expand = [op for op in imp.stack.layer
              if op.only_grouped and op.tensor == "kv_cache_expanded"]   # repeat_kv
    assert len(expand) == 1
    # priced as the hand-checked file prices it: its per-element work, its bytes, from
    # a cache no kernel just wrote
    hand = next(op for op in loader.load_stack("hf-transformers").layer
                if op.name == "repeat_kv")
    for field in ("kernels", "bytes_per_element", "reads", "read_bytes_per_element",
                  "bandwidth_fraction", "l2_chain", "flops_per_element"):
        assert getattr(expand[0], field) == getattr(hand, field), field
    assert not hand.l2_chain
    assert imp.stack.attention["verify"] == "cudnn_masked"


def test_written_file_loads_back_as_the_same_stack(tmp_path):
    out = tmp_path / "compiled-imp.yaml"
    rc = main(["stack", "import", str(TRACES / DECODE.format("torch-compile")),
               "--model", "llama-3.2-1b", "--steps", "2", "--name", "compiled-imp",
               "--out", str(out), "--format", "json"])
    assert rc == 0
    st = loader.load_stack(out)
    model = loader.load_model("llama-3.2-1b")
    again = import_stack([_warm("torch-compile")], model, "compiled-imp",
                         loader.load_stack("torch-hf")).stack
    assert st == again
    # and it predicts through the CLI, on the reference stack's host costs
    assert main(["predict", "--gpu", "h100-sxm", "--model", "llama-3.2-1b", "--stack",
                 str(out), "--mode", "decode", "--batch", "8", "--ctx", "1024"]) == 0


def _cli_error(capsys, args: list[str]) -> str:
    rc = main(args)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize("name, words", [
    ("malformed.json", "no traceEvents list"),
    ("truncated.json.gz", "truncated"),
    ("truncated_stream.json.gz", "not a complete gzip file"),
])
def test_bad_traces_are_one_line_and_exit_2_and_write_nothing(tmp_path, capsys, name,
                                                               words):
    out = tmp_path / "x.yaml"
    err = _cli_error(capsys, ["stack", "import", str(FIXTURES / name), "--model",
                              "llama-3.2-1b", "--steps", "2", "--name", "x", "--out",
                              str(out)])
    assert name in err and words in err
    assert not out.exists()


def test_wrong_model_and_wrong_steps_are_refused(tmp_path, capsys):
    trace = str(TRACES / DECODE.format("torch-hf"))
    out = tmp_path / "x.yaml"
    err = _cli_error(capsys, ["stack", "import", trace, "--model", "llama-3.1-8b",
                              "--steps", "2", "--name", "x", "--out", str(out)])
    assert "repeats 32 times" in err
    err = _cli_error(capsys, ["stack", "import", trace, "--model", "llama-3.2-1b",
                              "--steps", "3", "--name", "x", "--out", str(out)])
    assert "marks 2 steps" in err
    err = _cli_error(capsys, ["stack", "import", trace, "--model", "llama-3.2-1b",
                              "--steps", "2", "--name", "Bad Name", "--out", str(out)])
    assert "--name" in err
    err = _cli_error(capsys, ["stack", "import", trace, "--model", "llama-3.2-1b",
                              "--steps", "2", "--name", "y", "--out", str(out)])
    assert "--out" in err and "y.yaml" in err
    assert not out.exists()


def test_kernels_only_trace_needs_mode_then_assumes_and_says_so(tmp_path, capsys):
    trace = str(FIXTURES / "fused_1b_decode_gpu_only.json.gz")
    out = tmp_path / "x.yaml"
    err = _cli_error(capsys, ["stack", "import", trace, "--model", "llama-3.2-1b",
                              "--steps", "2", "--name", "x", "--out", str(out)])
    assert "--mode" in err and "record_shapes" in err
    rc = main(["stack", "import", trace, "--model", "llama-3.2-1b", "--steps", "2",
               "--name", "x", "--out", str(out), "--mode", "decode"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "4 B per element per kernel assumed" in err
    st = loader.load_stack(out)
    assert [op.weight for op in st.layer if op.op == "gemm"] == ["qkv", "o", "gate_up",
                                                                  "down"]
    assert [op.weight for op in st.epilogue if op.op == "gemm"] == ["lm_head"]
    # the run after gate/up works on the intermediate activations
    assert any(op.tensor == "intermediate" for op in st.layer)
    assert "# assumed:" in out.read_text()


def test_mode_contradicting_the_trace_is_refused(tmp_path, capsys):
    err = _cli_error(capsys, ["stack", "import", str(TRACES / DECODE.format("torch-hf")),
                              "--model", "llama-3.2-1b", "--steps", "2", "--name", "x",
                              "--out", str(tmp_path / "x.yaml"), "--mode", "verify"])
    assert "not verify" in err


def test_check_matches_own_stack_and_flags_the_other(model):
    gpu = loader.load_gpu("h100-sxm")
    step = _warm("torch-fused")
    fused = loader.load_stack("torch-fused")
    res = check_stack(step, model, fused, gpu,
                      calibrations.load_calibration("auto", gpu, fused))
    assert (res.mode, res.batch, res.q, res.keys) == ("decode", 8, 1, 1025)
    # every anchor lines up; only cuBLAS's split-K reduces differ (one per down_proj)
    assert all(r.stack_ops and r.traced_ops for r in res.rows)
    assert 0 <= res.traced_launches - res.stack_launches <= 16
    assert res.predicted_us == pytest.approx(res.traced_us, rel=0.15)
    hf = loader.load_stack("torch-hf")
    other = check_stack(step, model, hf, gpu, calibrations.load_calibration("auto", gpu, hf))
    norm = next(r for r in other.rows if r.section == "epilogue" and r.stack_kernels > 1)
    assert (norm.stack_kernels, norm.traced_kernels) == (8, 1)   # the 8-kernel norm


def test_check_cli_formats(capsys):
    trace = str(TRACES / DECODE.format("torch-fused"))
    rc = main(["stack", "check", trace, "--stack", "torch-fused", "--model",
               "llama-3.2-1b", "--steps", "2", "--format", "json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["stack"] == "torch-fused" and out["rows"]
    rc = main(["stack", "check", trace, "--stack", "vllm", "--model", "llama-3.2-1b",
               "--steps", "2", "--format", "csv"])
    captured = capsys.readouterr()
    assert rc == 0 and "described, not measured" in captured.err


# --- units on hand-made kernels ---------------------------------------------------

def _k(name: str, op: str, ext: int | None, dims=(), types=(), strides=()):
    return TracedKernel(name, 1.0, op, dims, types, ext, strides)


def test_units_group_by_launching_op_and_attach_trailing_reduces():
    ks = (_k("nvjet_gemm", "aten::mm", 1, ((8, 2048), (2048, 3072))),
          _k("splitKreduce_kernel", "", None),
          _k("Memset (Device)", "", None),
          _k("vectorized_elementwise_kernel", "aten::add", 2, ((8, 2048), (8, 2048)),
             ("c10::BFloat16", "c10::BFloat16")))
    us = units(ks)
    assert [u.cls for u in us] == ["gemm", "pointwise"]
    assert us[0].launches == 2          # the GEMM and its split-K reduce
    # an add reads two inputs and writes one: 3 x 8 x 2048 x 2 bytes
    assert us[1].moved_bytes == 3 * 8 * 2048 * 2


def test_an_expanded_copy_reads_its_source_once():
    k = _k("elementwise_kernel", "aten::copy_", 5, ((1, 8, 4, 64, 64), (1, 8, 4, 64, 64)),
           ("c10::BFloat16", "c10::BFloat16"),
           ((131072, 16384, 4096, 64, 1), (32768, 4096, 0, 64, 1)))
    u = Unit("pointwise", k.op, k.dims, (k,), moved_bytes(k, k.strides))
    assert u.expands
    assert u.moved_bytes == (8 * 4 * 64 * 64 + 8 * 64 * 64) * 2


def test_no_repeating_layer_is_a_clear_error():
    us = [Unit("pointwise", f"aten::op{i}", (), (_k("k", f"aten::op{i}", i),), 0.0)
          for i in range(10)]
    with pytest.raises(ValueError, match="repeats 4 times"):
        find_layers(us, 4)


def test_trace_without_gpu_kernels_is_refused(tmp_path):
    path = tmp_path / "cpu.json"
    path.write_text(json.dumps({"traceEvents": [{"cat": "cpu_op", "name": "aten::mm",
                                                  "ts": 0, "dur": 1}]}))
    with pytest.raises(ConfigError, match="no GPU kernels"):
        read_trace(path, 1)


def test_unmarked_trace_splits_into_equal_steps(tmp_path):
    events = [{"cat": "kernel", "name": f"k{i % 3}", "ts": i, "dur": 1.0}
              for i in range(6)]
    path = tmp_path / "t.json.gz"
    path.write_bytes(gzip.compress(json.dumps({"traceEvents": events}).encode()))
    steps = read_trace(path, 2)
    assert [k.name for k in steps[1].kernels] == ["k0", "k1", "k2"]
    with pytest.raises(ConfigError, match="equal steps"):
        read_trace(path, 4)


def test_import_agreement_numbers_are_finite(agreements):
    for a in agreements.values():
        assert np.isfinite([a.mean_abs, a.max_abs, a.bias]).all()
