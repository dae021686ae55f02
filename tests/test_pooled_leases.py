"""The reference stack's steps of other leases pooled into the physics fit
(calibration.pooled_leases): which steps join, which leases never do, and that every
lease and stack is judged by a physics fitted without its own lease."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpusim.calibration import validate as val
from gpusim.calibration.fit_inputs import read_fit_inputs
from gpusim.calibration.joint import described, without_model
from gpusim.calibration.pooled_leases import (
    POOLED_LEASES,
    lease_of,
    lease_steps,
    pooled,
    without_lease,
)
from gpusim.cost import Calibration
from gpusim.io import loader

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "validation/data"
FITTED = {"llama-2-7b", "llama-3.1-8b", "llama-3.2-1b", "llama-3.2-3b", "qwen2.5-7b"}


@pytest.fixture(scope="module")
def h100_leases():
    return lease_steps(DATA / "h100-sxm", loader.load_stack("torch-hf"), FITTED)


def test_only_graph_steps_of_fitted_models_join(h100_leases):
    names = [lease_of(d) for d, _ in h100_leases]
    assert names == [s for s in POOLED_LEASES if s in names] and len(names) >= 4
    for data, stack in h100_leases:
        assert stack.name == "torch-hf"
        assert set(data.launch) == {"graph"} and "tree" not in set(data.mode)
        assert set(data.model) <= FITTED
    # the 19:55 lease measured Qwen3 models no fit has seen: only its Llama anchors join
    whole = loader.ROOT / "validation/data/h100-sxm/lease_2026-12-07_1955/steps.csv"
    from gpusim.calibration.measurements import read_steps
    raw = read_steps(whole)
    (anchors,) = [d for d, _ in h100_leases if lease_of(d) == "lease_2026-12-07_1955"]
    assert any(str(m).startswith("qwen3") for m in raw.model)
    assert 0 < len(anchors) < len(raw)


def test_the_stacks_campaign_leases_never_join():
    # the other stacks' judged steps were measured there: pooling its reference steps
    # would fit the physics on the lease a stack is judged on
    for gpu, campaign in (("h100-sxm", "lease_2026-12-06_0447"),
                          ("h200", "lease_2026-12-06_0722")):
        assert (DATA / gpu / campaign / "steps.csv").is_file()
        assert campaign not in POOLED_LEASES
        inputs = read_fit_inputs(loader.load_gpu(gpu), loader.load_stack("torch-hf"), DATA)
        assert campaign not in pooled(inputs.joint)
        assert pooled(inputs.joint)                      # and others do
        assert " on second_lease (" in described(inputs.joint)


def test_leaving_a_lease_or_a_model_out(h100_leases):
    lease = lease_of(h100_leases[0][0])
    kept = without_lease(h100_leases, lease)
    assert lease not in pooled(kept) and len(kept) == len(h100_leases) - 1
    assert without_lease(h100_leases, "no-such-lease") == list(h100_leases)
    # leave-one-model-out removes the held-out model's rows from every lease too
    assert all("llama-3.2-1b" not in set(d.model)
               for d, _ in without_model(h100_leases, "llama-3.2-1b"))


def test_a_pooled_lease_is_judged_without_its_steps(monkeypatch, h100_leases):
    """judging_physics refits without the lease (and the stack) it is asked about,
    once per pair, and gives the shipped physics where nothing of it was fitted."""
    calls = []

    class Res:
        calibration = Calibration(gpu="h100-sxm")

    def fake_fit(data, gpu, stack, resolve, note="", **kw):
        calls.append((note, pooled(kw["also"]), [s.name for _, s in kw["also"]]))
        return Res()

    monkeypatch.setattr(val, "fit", fake_fit)
    gpu, ref = loader.load_gpu("h100-sxm"), loader.load_stack("torch-hf")
    fused = (h100_leases[0][0], loader.load_stack("torch-fused"))   # a stand-in
    also = [fused, *h100_leases]
    shipped = Calibration(gpu="h100-sxm", fitted_on="shipped")
    physics = val.judging_physics(shipped, h100_leases[0][0], gpu, ref, loader.load_model,
                                  also=also)
    lease = lease_of(h100_leases[1][0])
    assert physics("hf-transformers") is shipped and not calls
    physics("torch-fused", lease)
    physics("torch-fused", lease)                         # made once
    assert len(calls) == 1
    note, leases, stacks = calls[0]
    assert note == f"without torch-fused on {lease}"
    assert lease not in leases and len(leases) == len(h100_leases) - 1
    assert "torch-fused" not in stacks
    physics("hf-transformers", lease)                     # the lease alone left out
    assert lease not in calls[1][1] and "torch-fused" in calls[1][2]
    physics("torch-fused")                                # the stack alone left out
    assert calls[2][1] == pooled(h100_leases) and "torch-fused" not in calls[2][2]


def test_the_shipped_calibrations_are_fitted_on_the_pooled_leases():
    from gpusim.io import calibrations

    for gpu in ("h100-sxm", "h200"):
        cal = calibrations.load_calibration(
            str(calibrations.CALIBRATIONS_DIR / f"{gpu}.yaml"), loader.load_gpu(gpu),
            loader.load_stack("torch-hf"))
        assert "torch-hf on second_lease (" in cal.fitted_on
        assert "0447" not in cal.fitted_on and "0722" not in cal.fitted_on
