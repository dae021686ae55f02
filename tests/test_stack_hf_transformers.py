"""The hf-transformers stack's repeat_kv copy: priced by its per-element work (the
``flops_per_element`` of a pointwise op), off the L2 chain, against its committed
profiles on H100 and H200 (validation/data/<gpu>/stacks/hf-transformers/kernels.csv)."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from gpusim.calibration.fit import for_stack
from gpusim.cost import Calibration, busy_s, kernel_cost
from gpusim.io import calibrations, loader
from gpusim.kernels.build import build_kernels

ROOT = Path(__file__).resolve().parents[1]
GPUS = ("h100-sxm", "h200")


def _repeat_kv(model: str, batch: int, cache: int):  # type: ignore[no-untyped-def]
    stack = loader.load_stack("hf-transformers")
    m = for_stack(loader.load_model(model), stack)
    ks = build_kernels(m, stack, "decode", batch, cache - 1, 1, cache)
    return m, next(k for k in ks if k.name == "repeat_kv")


def test_flops_per_element_scales_the_ops_work_not_its_bytes():
    m, k = _repeat_kv("llama-3.2-1b", 8, 1025)
    elements = 8 * 1025 * m.q_dim                         # one copy's tensor
    op = next(o for o in loader.load_stack("hf-transformers").layer if o.name == "repeat_kv")
    assert k.flops[0] == pytest.approx(op.flops_per_element * elements)
    # the cache read once, the expansion written, by each of the two copies
    assert k.bytes[0] == pytest.approx(2 * (2 * elements + 2 * 8 * 1025 * m.kv_dim))
    assert not k.l2_chain


def test_an_op_bound_by_its_work_costs_the_same_on_faster_hbm():
    """The copy's time follows the SMs (same on H100 and H200), not HBM (43% faster on
    H200); the same bytes with a flop per element follow HBM."""
    _, k = _repeat_kv("llama-3.1-8b", 8, 1025)
    plain = replace(k, flops=k.flops / 270.0)
    t = {g: float(kernel_cost(k, loader.load_gpu(g), Calibration()).seconds[0])
         for g in GPUS}
    hbm = {g: float(kernel_cost(plain, loader.load_gpu(g), Calibration()).seconds[0])
           for g in GPUS}
    assert t["h200"] == pytest.approx(t["h100-sxm"], rel=0.03)
    assert hbm["h200"] < 0.8 * hbm["h100-sxm"]


def _profiled_copies(gpu: str) -> list[tuple[str, int, float]]:
    """(model, batch, us per copy) of the decode profiles' repeat_kv copies."""
    path = ROOT / f"validation/data/{gpu}/stacks/hf-transformers/kernels.csv"
    out = []
    for r in csv.DictReader(path.open()):
        name = r["kernel_name"]
        if (r["mode"] == "decode" and "direct_copy" in name and "unrolled" not in name
                and "elementwise_kernel<128, 4" in name):
            out.append((r["model"], int(r["batch"]), float(r["total_us"]) / int(r["count"])))
    return out


@pytest.mark.parametrize("gpu", GPUS)
def test_repeat_kv_prices_its_profiled_copies_within_5pct(gpu):
    """Within 5% on average and 9% each: the smallest copy (Llama 3.2 1B at batch 1,
    6.4 us on an H200) is 8.1% under, since the physics fitted across stacks gives a
    non-vectorised kernel's fixed extra 1.42 us there (1.46 before session 21's row-walk
    refit moved the fit), not 1.78. The constant stays at 270: 282, the copies' own best
    fit, raised the hf-transformers steps' decode leave-one-model-out error from 2.5% to
    3.7% on the H100 (validate, session 19)."""
    g = loader.load_gpu(gpu)
    cal = calibrations.load_calibration(
        str(calibrations.CALIBRATIONS_DIR / f"{gpu}.yaml"), g, loader.load_stack("torch-hf"))
    copies = _profiled_copies(gpu)
    assert len(copies) == 4                      # 1B and 8B, batch 1 and 8
    errors = []
    for model, batch, us in copies:
        _, k = _repeat_kv(model, batch, 1025)    # profiled at ctx 1024: a cache of 1025
        priced = busy_s(k, kernel_cost(k, g, cal), cal)[0] / k.launches * 1e6
        errors.append(priced / us - 1.0)
        assert abs(errors[-1]) < 0.09, (model, batch, priced, us)
    assert np.mean(np.abs(errors)) < 0.05
