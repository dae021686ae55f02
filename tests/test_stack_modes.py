"""Stack ops limited to some step modes (``StackOp.modes``): the serving harness runs its
decoding rows through gathers, a mask and cuDNN's kernel, a chunk after cached tokens
through gathers, a repeat of its keys to every query head and FlashAttention-2, and a
fresh prompt through FlashAttention-2 alone (profiled:
validation/data/h100-sxm/probe_2026-12-07/chunk_attention/)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from gpusim.cost import busy_s, kernel_cost
from gpusim.io import calibrations, loader
from gpusim.kernels.build import build_kernels
from gpusim.specs import StackSpec
from gpusim.specs.enums import KernelKind

ROOT = Path(__file__).resolve().parents[1]
CHUNKS = ROOT / "validation/data/h100-sxm/probe_2026-12-07/chunk_attention/kernels.csv"
HARNESS = loader.load_stack("harness-serve")
MODEL = loader.load_model("llama-3.1-8b")


def _names(mode: str, ctx: float, q: float) -> dict[str, object]:
    return {k.name: k for k in build_kernels(MODEL, HARNESS, mode, 1, ctx, q)}


def test_each_mode_builds_only_the_ops_that_run_in_it() -> None:
    decode, chunk, fresh = _names("decode", 1023, 1), _names("verify", 512, 64), \
        _names("prefill", 0, 64)
    assert {"kv_gather", "attn_mask", "attention", "decode_index"} <= set(decode)
    assert not {"chunk_repeat_kv", "attention_chunk", "attention_fresh",
                "chunk_index"} & set(decode)
    assert {"kv_gather", "chunk_repeat_kv", "attention_chunk", "chunk_index"} <= set(chunk)
    assert not {"attn_mask", "attention", "decode_index"} & set(chunk)
    assert "attention_fresh" in fresh
    assert not {"kv_gather", "chunk_repeat_kv", "attn_mask", "attention"} & set(fresh)
    # a chunk's FlashAttention-2 reads a copy of the keys for every query head
    a = chunk["attention_chunk"].attention
    assert a.family == "fa2" and a.kv_heads == a.heads == MODEL.num_attention_heads
    f = fresh["attention_fresh"].attention
    assert f.family == "fa2" and f.kv_heads == MODEL.num_key_value_heads
    assert decode["attention"].attention.family == "cudnn_masked"
    # ops without modes run in every mode, the same kernel
    for name in ("qkv_proj", "kv_write", "down_proj"):
        assert name in decode and name in chunk and name in fresh


def _stack(**layer_changes: dict) -> dict:
    raw = HARNESS.model_dump(exclude_none=True)
    raw["layer"] = [{**op, **layer_changes.get(op["name"], {})} for op in raw["layer"]]
    return raw


@pytest.mark.parametrize(("changes", "message"), [
    ({"attention_chunk": {"modes": ["verify", "decode"]}},
     "in decode it would run attention, attention_chunk"),
    ({"attention_fresh": {"modes": ["verify"]}, "attention_chunk": {"modes": ["tree"]}},
     "in tree it would run"),
    ({"attention_fresh": {"modes": ["verify"]}, "attention_chunk": {"modes": ["decode"]},
      "attention": {"modes": ["tree"]}}, "attention in prefill steps"),
    ({"kv_gather": {"modes": []}}, "'modes' lists no mode"),
    ({"kv_gather": {"modes": ["chunked"]}}, "chunked"),
])
def test_modes_that_leave_a_mode_without_one_attention_op_are_refused(changes, message
                                                                      ) -> None:
    with pytest.raises(ValidationError, match=message):
        StackSpec.model_validate(_stack(**changes))


def _profiled_repeats() -> list[tuple[str, int, int, float]]:
    """(model, ctx, q, us per copy) of the chunks' repeat_interleave copies."""
    out = []
    for r in csv.DictReader(CHUNKS.open()):
        name = r["kernel_name"]
        if (int(r["ctx"]) > 0 and "direct_copy" in name and "unrolled" not in name
                and "elementwise_kernel<128, 4" in name):
            out.append((r["model"], int(r["ctx"]), int(r["q"]),
                        float(r["total_us"]) / int(r["count"])))
    return out


def test_the_chunks_key_repeat_prices_its_profiled_copies() -> None:
    """The copy's per-element work (fitted to these 40 copies: stacks/harness-serve.yaml)
    prices them within 3% MAPE, none off by more than 15% (the smallest, a few us)."""
    gpu = loader.load_gpu("h100-sxm")
    cal = calibrations.load_calibration(
        str(calibrations.CALIBRATIONS_DIR / "h100-sxm.yaml"), gpu, HARNESS)
    copies = _profiled_repeats()
    assert len(copies) == 40                      # 2 models x 4 contexts x 5 chunk sizes
    errors = []
    for model, ctx, q, us in copies:
        m = loader.load_model(model)
        k = next(k for k in build_kernels(m, HARNESS, "verify", 1, ctx, q)
                 if k.name == "chunk_repeat_kv")
        assert k.kind == KernelKind.ELEMENTWISE and k.launches == 2
        priced = float(busy_s(k, kernel_cost(k, gpu, cal), cal)[0]) / k.launches * 1e6
        errors.append(priced / us - 1.0)
    assert np.mean(np.abs(errors)) < 0.03
    assert np.max(np.abs(errors)) < 0.15
