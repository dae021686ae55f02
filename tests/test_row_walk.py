"""Row walks: torch's fused RMSNorm (vectorized_layer_norm_kernel) gives each token row
one CTA that walks the row serially, so its time follows the hidden size, not the rows
(cost.pointwise.ROW_WALKS). Checked against every committed profile of that kernel:
the table's two constants are what the profiles of four hidden sizes give, and they
predict three others, never fitted (one of them, 8192, past the widest fitted)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from scipy.optimize import least_squares

import gpusim.cost.pointwise as pointwise
from gpusim.cost import kernel_cost
from gpusim.cost.kernel import busy_s
from gpusim.io import calibrations, loader
from gpusim.kernels import build_kernels
from gpusim.kernels.quant import for_stack
from gpusim.specs import StackOp

ROOT = Path(__file__).resolve().parents[1]
KERNEL = "vectorized_layer_norm_kernel"
# the hidden sizes the walk's constants are fitted on; the profiles of every other width
# are held out
FITTED_WIDTHS = (896, 2048, 4096, 5120)


def _profiled() -> list[tuple[str, str, str, int, int, int, float]]:
    """(gpu, model, mode, batch, ctx, q, us per call) of every committed profile of the
    kernel; Qwen3's are left out (its q/k norms over head rows share the name)."""
    seen: dict[tuple, float] = {}
    for f in sorted((ROOT / "validation/data").glob("*/**/kernels*.csv")):
        with f.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        if not rows or not {"batch", "ctx", "q", "mode"} <= set(rows[0]):
            continue
        for r in rows:
            if KERNEL not in r["kernel_name"] or r["model"].startswith("qwen3"):
                continue
            key = (f.relative_to(ROOT / "validation/data").parts[0], r["model"], r["mode"],
                   int(float(r["batch"])), int(float(r["ctx"])), int(float(r["q"])))
            seen.setdefault(key, float(r["total_us"]) / int(r["count"]))
    return [(*k, v) for k, v in sorted(seen.items())]


POINTS = _profiled()


def _norm_us(points, stack, cals) -> np.ndarray:
    """The kernel's time as a profiler reports it (its cost less the idle launch gap
    before it), us, per point."""
    out = []
    for gpu, model, mode, b, c, q, _ in points:
        m = for_stack(loader.load_model(model), stack)
        ks = build_kernels(m, stack, mode, np.array([b]), np.array([c]), np.array([q]))
        k = next(k for k in ks if k.name == "input_norm")
        cost = kernel_cost(k, loader.load_gpu(gpu), cals[gpu])
        out.append(busy_s(k, cost, cals[gpu])[0] * 1e6)
    return np.array(out)


@pytest.fixture(scope="module")
def fused():
    stack = loader.load_stack("torch-fused")
    cals = {g: calibrations.load_calibration("auto", loader.load_gpu(g), stack)
            for g in ("h100-sxm", "h200")}
    return stack, cals


def test_the_profiles_cover_seven_hidden_sizes_on_both_gpus():
    hidden = {loader.load_model(p[1]).hidden_size for p in POINTS}
    assert hidden == {896, 2048, 3072, 3584, 4096, 5120, 8192}
    assert {p[0] for p in POINTS} == {"h100-sxm", "h200"}
    assert len(POINTS) >= 70


def test_the_walk_constants_come_from_four_hidden_sizes_and_predict_three_others(
        fused, monkeypatch):
    stack, cals = fused
    hidden = np.array([loader.load_model(p[1]).hidden_size for p in POINTS])
    measured = np.array([p[-1] for p in POINTS])
    fitted = np.isin(hidden, FITTED_WIDTHS)
    train = [p for p, f in zip(POINTS, fitted, strict=True) if f]
    held = [p for p, f in zip(POINTS, fitted, strict=True) if not f]

    def residuals(x):
        monkeypatch.setitem(pointwise.ROW_WALKS, "torch_layer_norm",
                            (x[0] * 1e-6, x[1] * 1e-9))
        return np.log(_norm_us(train, stack, cals) / measured[fitted])

    fit = least_squares(residuals, [1.0, 1.0], bounds=([0, 0], [5, 5])).x
    shipped = pointwise.ROW_WALKS["torch_layer_norm"]
    np.testing.assert_allclose(fit * [1e-6, 1e-9], shipped, rtol=0.03)
    monkeypatch.setitem(pointwise.ROW_WALKS, "torch_layer_norm", tuple(fit * [1e-6, 1e-9]))
    err = _norm_us(held, stack, cals) / measured[~fitted] - 1
    rows = np.array([p[3] * p[5] for p in held])
    # a few rows a CTA each: the walk alone; hundreds of rows: their bytes too
    assert np.mean(np.abs(err[rows <= 128])) < 0.03, err
    assert np.mean(np.abs(err)) < 0.05, err


def test_shipped_walk_prices_every_profiled_call_within_10pct_on_average(fused):
    stack, cals = fused
    err = _norm_us(POINTS, stack, cals) / np.array([p[-1] for p in POINTS]) - 1
    assert np.mean(np.abs(err)) < 0.06
    assert np.max(np.abs(err)) < 0.2


def test_the_walk_follows_the_width_not_the_rows_until_the_bytes_bind(fused):
    stack, cals = fused
    gpu, cal = loader.load_gpu("h100-sxm"), cals["h100-sxm"]

    def norm_s(model, batch, mode="decode", q=1, ctx=1024):
        m = for_stack(loader.load_model(model), stack)
        ks = build_kernels(m, stack, mode, np.array([batch]), np.array([ctx]),
                           np.array([q]))
        return kernel_cost(next(k for k in ks if k.name == "input_norm"), gpu,
                           cal).seconds[0]

    one, many = norm_s("llama-3.1-8b", 1), norm_s("llama-3.1-8b", 64)
    assert many == pytest.approx(one, rel=0.05)
    assert norm_s("llama-3.1-8b", 1) > 1.5 * norm_s("llama-3.2-1b", 1)
    # 8192 rows of 4096: 134 MB streamed, far past any row's walk
    big = norm_s("llama-3.1-8b", 8, mode="prefill", q=1024, ctx=0)
    assert big > 5 * one


@pytest.mark.parametrize("bad", [
    {"op": "gemm", "name": "x", "weight": "qkv", "row_walk": "torch_layer_norm"},
    {"op": "elementwise", "name": "x", "tensor": "logits", "row_walk": "torch_layer_norm"},
    {"op": "elementwise", "name": "x", "tensor": "hidden", "row_walk": "cub_sort"},
])
def test_a_row_walk_only_on_token_rows_of_a_known_kernel(bad):
    with pytest.raises(ValidationError):
        StackOp(**bad)


def _qwen3_norm_calls() -> dict[tuple, float]:
    """Every profiled Qwen3 step under torch-fused: the kernel's summed time (its hidden
    norms and its per-head q/k norms, which share the name), us, by (model, mode,
    batch, ctx, q)."""
    out: dict[tuple, float] = {}
    for f in (ROOT / "validation/data/h100-sxm/qwen3_2026-12-07/kernels.csv",
              ROOT / "validation/data/h100-sxm/moe/kernels.csv"):
        with f.open(newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                if (r["model"].startswith("qwen3") and KERNEL in r["kernel_name"]
                        and r.get("stack", "torch-fused") == "torch-fused"):
                    key = (r["model"], r["mode"], int(r["batch"]), int(r["ctx"]),
                           int(r["q"]))
                    out[key] = out.get(key, 0.0) + float(r["total_us"])
    return out


def test_per_head_norms_walk_their_rows_in_rounds_of_16_ctas_an_sm(fused):
    """Qwen3's per-head norms at a 512-token prefill walk 8192-16384 rows of head_dim:
    past 132 SMs x 16 CTAs (128-thread CTAs, 2048 threads an SM) they take rounds.
    The kernel's profiled time per step, never fitted, against the model's: within 10%
    (one round per walk priced them 36-44% low); decode and verify steps, a round
    each, within 10% too."""
    stack, cals = fused
    gpu, cal = loader.load_gpu("h100-sxm"), cals["h100-sxm"]
    calls = _qwen3_norm_calls()
    assert sum(1 for k in calls if k[1] == "prefill") >= 3
    for (model, mode, b, c, q), us in calls.items():
        m = for_stack(loader.load_model(model), stack)
        ks = build_kernels(m, stack, mode, np.array([b]), np.array([c]), np.array([q]))
        priced = sum(busy_s(k, kernel_cost(k, gpu, cal), cal)[0] * k.repeat
                     for k in ks if k.row_walk) * 1e6
        assert priced == pytest.approx(us, rel=0.10), (model, mode, b, q, priced, us)


def test_rows_past_the_resident_ctas_take_rounds():
    one = pointwise.row_walk_s("torch_layer_norm", np.array([128.0]))
    sms = 132
    full = sms * pointwise.ROW_WALK_CTAS_PER_SM
    got = pointwise.row_walk_s("torch_layer_norm", np.full(4, 128.0),
                               np.array([1.0, full, full + 1, 8 * full]), sms)
    np.testing.assert_allclose(got, one[0] * np.array([1, 1, 2, 8]))
    with pytest.raises(ValueError, match="SM count"):
        pointwise.row_walk_s("torch_layer_norm", np.full(1, 128.0), np.array([1.0]))
