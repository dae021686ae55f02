"""An attention family's work on the SMs fitted once per die (calibration.die_physics):
which fields, from which GPU, that a fit holds them, and that a held-out model's or
stack's prediction holds its source's values fitted without it."""

from __future__ import annotations

import numpy as np
import pytest

from gpusim.calibration import die, die_physics, measurements
from gpusim.calibration import fit as cal_fit
from gpusim.cost import Calibration
from gpusim.cost.attention import FAMILIES
from gpusim.io import calibrations, loader

DATA = loader.ROOT / "validation" / "data"
TE = "attention.cudnn_masked.tensor_efficiency"
STREAM = "attention.cudnn_masked.cta_stream_bytes_per_s"


def test_only_the_sms_side_of_a_family_is_die_level() -> None:
    for family in FAMILIES.values():
        assert set(family.FIT) >= family.DIE, family.name
    masked = FAMILIES["cudnn_masked"].DIE
    # the per-CTA stream and how it shares HBM touch memory: each GPU's own
    assert "cta_stream_bytes_per_s" not in masked
    assert "stream_overlap_exponent" not in masked
    assert {"tensor_efficiency", "score_flops", "fixed_s"} <= masked
    fields = die_physics.die_fields(loader.load_stack("torch-hf"))
    assert TE in fields and STREAM not in fields
    # the SMs' matrix pace and the L2's reuse are the die's; HBM's efficiency is not
    assert {"physics.tensor_efficiency", "physics.l2_reuse_fraction",
            "attention.cudnn_prefill.tensor_efficiency",
            "attention.flash_decode.tensor_efficiency"} <= set(fields)
    assert "physics.hbm_bandwidth_efficiency" not in fields
    assert "physics.l2_bandwidth_ratio" not in fields


def test_the_h200_holds_the_h100s_die_level_values() -> None:
    h100 = calibrations.load_calibration(str(calibrations.CALIBRATIONS_DIR / "h100-sxm.yaml"),
                                         loader.load_gpu("h100-sxm"),
                                         loader.load_stack("torch-hf"))
    h200 = calibrations.load_calibration(str(calibrations.CALIBRATIONS_DIR / "h200.yaml"),
                                         loader.load_gpu("h200"), loader.load_stack("torch-hf"))
    for path in die_physics.die_fields(loader.load_stack("torch-hf")):
        assert float(h200.get(path)) == pytest.approx(float(h100.get(path))), path
    # the same absolute L2 bandwidth on both, though each fits its own ratio to its HBM
    l2 = [float(c.get("physics.l2_bandwidth_ratio")) * float(
        c.get("physics.hbm_bandwidth_efficiency")) * g.hbm_bandwidth_bytes_per_s
        for c, g in ((h100, loader.load_gpu("h100-sxm")), (h200, loader.load_gpu("h200")))]
    assert l2[1] == pytest.approx(l2[0], rel=0.10)
    # hf-transformers' own masked-kernel efficiency is a stack parameter on the die
    assert die.die_fields(loader.load_stack("hf-transformers")) == (TE,)


def test_the_same_die_gpu_with_more_profiled_kernels_is_the_source() -> None:
    h100, h200 = loader.load_gpu("h100-sxm"), loader.load_gpu("h200")
    st = loader.load_stack("torch-hf")
    src = die_physics.physics_die_source(h200, st, 0, DATA)
    assert src is not None and src.gpu == "h100-sxm"
    shipped = calibrations.load_calibration(
        str(calibrations.CALIBRATIONS_DIR / "h100-sxm.yaml"), h100, st)
    assert src.shipped()[TE] == pytest.approx(float(shipped.get(TE)))
    assert "harness-serve" in src.stacks() and "torch-fused" in src.stacks()
    # the GPU with the most fits them itself; as does one of no stated die, or one
    # with more profiled kernels than any other
    own = len(die_physics.read_attention_points(DATA / "h100-sxm", h100, loader.load_model,
                                                loader.load_stack))
    assert die_physics.physics_die_source(h100, st, own, DATA) is None
    assert die_physics.physics_die_source(h200.model_copy(update={"die": None}), st, 0,
                                          DATA) is None
    assert die_physics.physics_die_source(h200, st, 10**6, DATA) is None
    assert die_physics.physics_die_source(h200, st, 0, DATA / "no-such-folder") is None


def test_a_held_parameter_stays_out_of_every_stage() -> None:
    ref = measurements.read_step_dir(DATA / "h200" / "steps.csv")
    # a small fit: one model's decode graph steps and its token trees, in seconds
    small = ref.subset((ref.model == "llama-3.2-1b")
                       & (((ref.mode == "decode") & (ref.launch == "graph"))
                          | (ref.mode == "tree")))
    gpu, stack = loader.load_gpu("h200"), loader.load_stack("torch-hf")
    held = {TE: 0.3125, "attention.cudnn_masked.fixed_s": 1.5e-6}
    cal = cal_fit.fit(small, gpu, stack, loader.load_model, held=held).calibration
    assert cal.get(TE) == 0.3125 and cal.get("attention.cudnn_masked.fixed_s") == 1.5e-6
    # the per-GPU fields are still fitted beside them (their default: no stream limit)
    assert float(cal.get(STREAM)) < 1e15
    free = cal_fit.fit(small, gpu, stack, loader.load_model).calibration
    assert free.get(TE) != 0.3125


def test_a_held_out_model_or_stack_is_left_out_of_the_sources_fit(monkeypatch) -> None:
    src = die_physics.PhysicsDieSource("h100-sxm", "torch-hf", (TE,), DATA)
    seen: list[tuple[set[str], set[str], set[str], set[str]]] = []

    class _Res:
        def __init__(self, value: float) -> None:
            self.calibration = Calibration(gpu="h100-sxm").replace({TE: value})

    def fake_fit(data, gpu, stack, resolve, **kw):
        seen.append((set(map(str, data.model)), {p.stack for p in kw["attention"]},
                     {s.name for _, s in kw["also"]},
                     {str(m) for d, _ in kw["also"] for m in d.model}))
        return _Res(0.25 + 0.01 * len(seen))

    monkeypatch.setattr(die_physics, "fit", fake_fit)
    die_physics._without.cache_clear()
    try:
        a = src.without_model("llama-3.2-1b")
        models, _, _, joined_models = seen[-1]
        assert "llama-3.2-1b" not in models | joined_models and models and joined_models
        b = src.without_stack("harness-serve")
        _, stacks, _, _ = seen[-1]
        assert "harness-serve" not in stacks and stacks
        c = src.without_stack("torch-fused")
        _, _, joined, _ = seen[-1]
        assert "torch-fused" not in joined and "torch-compile" in joined
        assert len({a[TE], b[TE], c[TE]}) == 3
        # a model or stack the source never measured: its shipped values, no fit
        n = len(seen)
        assert src.without_model("no-such-model") == src.shipped()
        assert src.without_stack("no-such-stack") == src.shipped()
        assert len(seen) == n
    finally:
        die_physics._without.cache_clear()


def test_the_shipped_h200_calibration_holds_the_h100s_die_fields() -> None:
    h100, h200 = loader.load_gpu("h100-sxm"), loader.load_gpu("h200")
    st = loader.load_stack("torch-hf")
    a = calibrations.load_calibration(str(calibrations.CALIBRATIONS_DIR / "h100-sxm.yaml"),
                                      h100, st)
    b = calibrations.load_calibration(str(calibrations.CALIBRATIONS_DIR / "h200.yaml"),
                                      h200, st)
    for path in die_physics.die_fields(st):
        assert np.isclose(float(a.get(path)), float(b.get(path))), path
    assert "from h100-sxm (same die)" in b.fitted_on


def test_each_held_out_model_and_stack_holds_its_own_source_values(monkeypatch) -> None:
    from gpusim.calibration import validate

    ref = measurements.read_step_dir(DATA / "h200" / "steps.csv")
    small = ref.subset((ref.mode == "decode") & (ref.launch == "graph")
                       & np.isin(ref.model, ["llama-3.2-1b", "llama-3.1-8b"]))

    class Source:
        def without_model(self, model: str) -> dict[str, float]:
            return {TE: {"llama-3.1-8b": 0.31, "llama-3.2-1b": 0.27}[model]}

        def without_stack(self, name: str) -> dict[str, float]:
            return {TE: len(name) / 1000.0}

        def stacks(self) -> set[str]:
            return {"hf-transformers"}

    seen: list[tuple[str, object]] = []
    real_fit = validate.fit

    def spy(data, *a, **kw):
        seen.append((kw.get("note", ""), kw.get("held")))
        return real_fit(data, *a, **kw)

    monkeypatch.setattr(validate, "fit", spy)
    gpu, stack = loader.load_gpu("h200"), loader.load_stack("torch-hf")
    ev = validate.leave_one_model_out(small, gpu, stack, loader.load_model,
                                      die=Source())  # type: ignore[arg-type]
    assert dict(seen) == {"LOMO without llama-3.1-8b": {TE: 0.31},
                          "LOMO without llama-3.2-1b": {TE: 0.27}}
    for model, cal in ev.calibrations.items():
        assert cal.get(TE) == {"llama-3.1-8b": 0.31, "llama-3.2-1b": 0.27}[model]
    # a stack the source fitted on is judged with the physics fitted without it there
    shipped = Calibration(gpu="h200")
    physics = validate.judging_physics(shipped, small, gpu, stack, loader.load_model,
                                       die=Source())  # type: ignore[arg-type]
    assert physics("torch-fp8") is shipped
    assert physics("hf-transformers").get(TE) == len("hf-transformers") / 1000.0
