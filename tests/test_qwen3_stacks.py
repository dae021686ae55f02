"""Qwen3's dense models (per-head q/k norms) under the measured stacks: the stack files'
qk_norm sections against the profiled kernels of validation/data/h100-sxm/
qwen3_2026-12-07/ (never fitted), the per-head rows their reductions and walks take,
and `gpusim stack import` of a Qwen3 trace."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from gpusim.calibration.fit import make_groups, predict_groups
from gpusim.calibration.measurements import read_steps
from gpusim.io import calibrations, loader
from gpusim.io.profile_trace import read_trace
from gpusim.kernels import build_kernels, launches_per_shape
from gpusim.stackgen.build import import_stack

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "validation/data/h100-sxm/qwen3_2026-12-07"
# kernels a stack file's GEMM and attention costs carry, not listed as launches of their own
CARRIED = ("splitKreduce", "Memset")


def _profiled_launches() -> Counter:
    out: Counter = Counter()
    with (DATA / "kernels.csv").open(newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            if not any(c in r["kernel_name"] for c in CARRIED):
                out[(r["stack"], r["model"], r["mode"], int(r["batch"]))] += int(r["count"])
    return out


PROFILED = _profiled_launches()


# hf-transformers' batch-1 decode: cuDNN splits its masked attention over the keys and
# launches a reduction a layer (lean_reduction_kernel) that its one attention launch
# does not count (a known gap of the stack file: priced as one launch)
SPLIT_AT_ONE = pytest.mark.xfail(strict=True, reason="cuDNN's split-KV reduction at batch 1")


@pytest.mark.parametrize("key", [pytest.param(k, marks=SPLIT_AT_ONE)
                                 if k[0] == "hf-transformers" and k[3] == 1 else k
                                 for k in sorted(k for k in PROFILED if k[2] == "decode")],
                         ids=lambda k: f"{k[0]}-{k[1]}-b{k[3]}")
def test_a_qwen3_decode_step_launches_what_its_profile_shows(key):
    """Each stack's file, q/k norms included (torch-hf and hf-transformers: 8 kernels a
    norm; torch-fused: a copy and its fused norm, the copy not launched at one token;
    torch-compile: none, fused into the rope kernels), launches the kernels its batch-1
    and batch-8 decode profiles ran (one kernel of transformers' position bookkeeping
    aside)."""
    stack_name, model, mode, batch = key
    stack, m = loader.load_stack(stack_name), loader.load_model(model)
    ks = build_kernels(m, stack, mode, np.array([batch]), np.array([1024]), np.array([1]))
    launches = launches_per_shape(ks, 1)[0]
    assert abs(launches - PROFILED[key]) <= 1, (launches, PROFILED[key])


def test_per_head_norms_reduce_and_walk_head_rows():
    """A q or k norm's rows are a head's (tokens x heads of head_dim elements), not a
    token's: its reduction and its fused norm's row walk follow head_dim."""
    m = loader.load_model("qwen3-1.7b")
    b = np.array([8])
    one = np.array([1])
    hf = {k.name: k for k in build_kernels(m, loader.load_stack("torch-hf"), "decode", b,
                                           np.array([1024]), one)}
    rows, row = hf["q_norm"].reduction[:, 0]
    assert rows == 8 * m.num_attention_heads and row == m.head_dim_eff
    rows, row = hf["k_norm"].reduction[:, 0]
    assert rows == 8 * m.num_key_value_heads and row == m.head_dim_eff
    rows, row = hf["input_norm"].reduction[:, 0]          # a token's row of the hidden state
    assert rows == 8 and row == m.hidden_size
    fused = {k.name: k for k in build_kernels(m, loader.load_stack("torch-fused"), "decode",
                                              b, np.array([1024]), one)}
    assert fused["q_norm"].row_walk_elements[0] == m.head_dim_eff
    assert fused["input_norm"].row_walk_elements[0] == m.hidden_size


def test_importing_a_qwen3_trace_keeps_its_qk_norms_in_the_layer():
    """`stack import` of a Qwen3 decode trace: the per-head norms' reductions take head
    rows (their recorded shapes end in head_dim), and the file adds no q/k norms of its
    own (qk_norm: []), saying it prices models with them."""
    path = DATA / "qk_traces" / "torch-hf__qwen3-1.7b__decode_b8_ctx1024_q1_n2.json.gz"
    step = read_trace(path, 2)[-1]
    out = import_stack([step], loader.load_model("qwen3-1.7b"), "q3", loader.load_stack("torch-hf"))
    assert out.stack.qk_norm == ()
    heads = [op for op in out.stack.layer if op.row == "head"]
    # on q or k, though Qwen3 1.7B's hidden state is as wide as its q (2048)
    assert heads and all(op.tensor in ("q", "kv") for op in heads)
    assert any("q/k norms" in n for n in out.notes)


def test_head_rows_are_for_tensors_of_heads():
    """`row: head` over a tensor without heads is refused, not priced as something."""
    from pydantic import ValidationError

    from gpusim.specs import StackOp

    StackOp(op="elementwise", name="q_norm", tensor="q", kernels=1, bytes_per_element=4,
            row="head")
    with pytest.raises(ValidationError, match="row: head"):
        StackOp(op="elementwise", name="n", tensor="hidden", kernels=1, bytes_per_element=4,
                row="head")


@pytest.mark.parametrize("stack_name,limit", [("torch-hf", 0.05), ("hf-transformers", 0.05)])
def test_qwen3_decode_steps_are_priced_with_their_norms(stack_name, limit):
    """The HF-style stacks' Qwen3 decode steps, never fitted, within 5% MAPE (without
    the q/k norms' 8 kernels each the stack files priced them 4-9% low on average, 11-12%
    at batch 1): a guard on the description, the report has the errors."""
    src = DATA / "steps.csv" if stack_name == "torch-hf" else (
        ROOT / "validation/data/h100-sxm/unseen_stacks" / stack_name / "steps.csv")
    data = read_steps(src, stack_name)
    data = data.subset((data.launch == "graph") & (data.mode == "decode")
                       & np.char.startswith(data.model.astype(str), "qwen3"))
    gpu, stack = loader.load_gpu("h100-sxm"), loader.load_stack(stack_name)
    cal = calibrations.load_calibration("auto", gpu, stack)
    pred = predict_groups(make_groups(data, stack, loader.load_model), len(data), gpu, cal)
    assert len(data) >= 10
    assert np.mean(np.abs(pred / data.measured_s - 1)) < limit


def test_a_norm_fused_into_a_layer_op_runs_in_its_place():
    """torch-compile's qk_norm ops are named as its rope ops: Inductor's rope kernels
    with the norms fused in. They replace those ops (same place, same launches) and
    add a row reduction over head rows, which a Llama model's rope kernels lack."""
    stack = loader.load_stack("torch-compile")
    b, c, one = np.array([8]), np.array([1024]), np.array([1])
    qwen = build_kernels(loader.load_model("qwen3-1.7b"), stack, "decode", b, c, one)
    llama = build_kernels(loader.load_model("llama-3.2-1b"), stack, "decode", b, c, one)
    layer = [k.name for k in qwen if k.section == "layer"]
    assert layer == [k.name for k in llama if k.section == "layer"]
    by = {k.name: k for k in qwen}
    rows, row = by["rope_q"].reduction[:, 0]
    assert rows == 8 * 16 and row == 128                 # 16 heads of 128
    rows, row = by["rope_kv_write"].reduction[:, 0]
    assert rows == 8 * 8 and row == 128                  # its k kernel: 8 KV heads
    assert by["rope_kv_write"].launches == 2
    assert {k.name: k for k in llama}["rope_q"].reduction is None


@pytest.mark.parametrize("stack_name,norm_ops", [
    ("torch-fused", ["q_norm_copy", "q_norm", "k_norm_copy", "k_norm"]),
    ("torch-hf", ["q_norm", "k_norm"])])
def test_stack_check_lists_the_q_k_norms_of_a_qwen3_layer(stack_name, norm_ops):
    """`stack check` of a Qwen3 decode trace compares the layer the model runs, its q/k
    norms included (it listed the stack file's own layer only, so their kernels showed
    as traced kernels the stack lacked): the group holding them matches kernel for
    kernel."""
    from gpusim.stackgen.check import check_stack

    gpu, stack = loader.load_gpu("h100-sxm"), loader.load_stack(stack_name)
    path = DATA / "qk_traces" / f"{stack_name}__qwen3-1.7b__decode_b8_ctx1024_q1_n2.json.gz"
    res = check_stack(read_trace(path, 2)[-1], loader.load_model("qwen3-1.7b"), stack, gpu,
                      calibrations.load_calibration("auto", gpu, stack))
    row = next(r for r in res.rows if "q_norm" in r.stack_ops.split(", "))
    assert set(norm_ops) <= set(row.stack_ops.split(", "))
    assert row.stack_kernels == row.traced_kernels
