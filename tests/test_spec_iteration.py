"""The speculative iteration: engine against closed form, physics edge cases, memory."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import calibrations, tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpusim import step as step_mod
from gpusim.cost import Calibration
from gpusim.platform import Platform
from gpusim.speculative.acceptance import IidAcceptance, PositionalAcceptance
from gpusim.speculative.drafts import (
    EagleDraft,
    MedusaDraft,
    ModelDraft,
    NgramDraft,
    extra_weight_bytes,
)
from gpusim.speculative.iteration import (
    Speculation,
    pipeline_end_s,
    predict_iteration,
    simulate_iteration,
    step_times,
)
from gpusim.speculative.loop_steps import plan_iteration
from gpusim.speculative.overhead import SpecOverhead
from gpusim.speculative.trees import TokenTree, best_tree

SETTINGS = settings(max_examples=25, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])
TARGET = tiny_model(layers=2, hidden=256, heads=4, kv_heads=2, intermediate=512, vocab=1000)
DRAFT = tiny_model(layers=1, hidden=128, heads=2, kv_heads=1, intermediate=256, vocab=1000)
DRAFTS = [ModelDraft(DRAFT), MedusaDraft(4), EagleDraft(1), NgramDraft(30e-6), NgramDraft()]


def _rel_close(a: float, b: float, rel: float = 1e-9) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)


@SETTINGS
@given(cal=calibrations(), launch=st.sampled_from(["graph", "eager"]),
       draft=st.sampled_from(DRAFTS), k=st.integers(1, 4), batch=st.integers(1, 32),
       ctx=st.integers(0, 2048), tree=st.booleans(),
       rt=st.floats(0.0, 1e-4), gl=st.one_of(st.none(), st.floats(0.0, 3e-5)))
def test_engine_agrees_with_closed_form(h100, stack, cal, launch, draft, k, batch, ctx, tree,
                                        rt, gl):
    shape = best_tree((0.6, 0.2, 0.1), 2 * k + 1, k) if tree else TokenTree.chain(k)
    spec = Speculation(TARGET, draft, shape, IidAcceptance(0.7))
    ov = SpecOverhead(host_round_trip_s=rt, graph_launch_s=gl, ngram_lookup_s_per_token=2e-9)
    p = predict_iteration(Platform(h100, stack, cal, launch), ov, spec, batch, ctx)
    tl = simulate_iteration(Platform(h100, stack, cal, launch), ov, spec, batch, ctx, record=False)
    assert _rel_close(tl.end_s, float(p.iteration_s[0])), (tl.end_s, p.iteration_s)


@SETTINGS
@given(cal=calibrations(), cap=st.floats(0.05, 0.6), sensitivity=st.floats(0.0, 1.0),
       draft=st.sampled_from(DRAFTS), k=st.integers(1, 4), batch=st.integers(1, 64),
       ctx=st.integers(0, 2048))
def test_engine_agrees_with_closed_form_under_the_power_cap(h100, stack, cal, cap,
                                                            sensitivity, draft, k, batch,
                                                            ctx):
    cal = cal.replace({"physics.power_cap_tensor_share": cap,
                       "attention.fa2.clock_sensitivity": sensitivity})
    spec = Speculation(TARGET, draft, TokenTree.chain(k), IidAcceptance(0.7))
    ov = SpecOverhead(host_round_trip_s=20e-6)
    p = predict_iteration(Platform(h100, stack, cal), ov, spec, batch, ctx)
    tl = simulate_iteration(Platform(h100, stack, cal), ov, spec, batch, ctx, record=False)
    assert _rel_close(tl.end_s, float(p.iteration_s[0])), (tl.end_s, p.iteration_s)


def test_memory_bound_drafts_let_the_verify_run_faster_than_alone(models, h100, stack):
    # the power cap acts on the loop: k decode steps of a draft model lower its tensor
    # share, so the verify pass runs at a higher clock than back to back on its own
    cal = Calibration(
        physics={"power_cap_tensor_share": 0.2, "tensor_efficiency": 0.8},
        attention={"fa2": {"tensor_efficiency": 0.4}},
    )
    spec = Speculation(
        models["llama-3.1-8b"],
        ModelDraft(models["llama-3.2-1b"]),
        TokenTree.chain(4),
        IidAcceptance(0.8),
    )
    plat = Platform(h100, stack, cal)
    steps = plan_iteration(spec, plat, 64, 1024)
    alone = step_mod.program_clock([steps[-1].kernels], plat)[0]
    loop = step_mod.program_clock([s.kernels for s in steps], plat)[0]
    assert alone < loop <= 1.0
    ov = SpecOverhead(host_round_trip_s=20e-6)
    p = predict_iteration(Platform(h100, stack, cal), ov, spec, 64, 1024)
    own = pipeline_end_s(
        [step_times(s, plat) for s in steps], [s.host_before_s for s in steps], 20e-6
    )
    assert float(p.iteration_s[0]) < float(own[0])
    # the breakdown is at the loop's clock: the verify pass faster than on its own
    own_verify = float(step_times(steps[-1], plat).alone_s[0])
    loop_verify = float(step_times(steps[-1], plat, np.full(1, loop)).alone_s[0])
    assert float(p.verify_s[0]) == pytest.approx(loop_verify)
    assert loop_verify < own_verify


def test_timeline_names_steps_and_sync(h100, stack):
    cal = Calibration(
        physics={"kernel_fixed_cost_s": 2e-6}, host={"host_graph_launch_cost_s": 10e-6}
    )
    spec = Speculation(TARGET, ModelDraft(DRAFT), TokenTree.chain(3), IidAcceptance(0.8))
    tl = simulate_iteration(Platform(h100, stack, cal), SpecOverhead(host_round_trip_s=40e-6),
                            spec, 4, 512)
    host = [iv.name for iv in tl.intervals if iv.resource == "host"]
    assert host[:4] == ["draft0", "draft1", "draft2", "verify"]
    assert "verify:sync" in host and host[-1] == "verify:host"
    sm = {iv.name.split("/")[0] for iv in tl.intervals if iv.resource == "sm"}
    assert sm == {"draft0", "draft1", "draft2", "verify"}
    last_gpu = max(iv.end_s for iv in tl.intervals if iv.resource == "sm")
    assert tl.end_s == pytest.approx(last_gpu + 40e-6)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_acceptance_edges_in_the_iteration(models, h100, stack, datasheet, k):
    t, d = models["llama-3.1-8b"], models["llama-3.2-1b"]
    for a, tokens in ((0.0, 1.0), (1.0, k + 1.0)):
        spec = Speculation(t, ModelDraft(d), TokenTree.chain(k), IidAcceptance(a))
        p = predict_iteration(Platform(h100, stack, datasheet), SpecOverhead(), spec, 1, 1024)
        assert p.tokens_per_iteration == tokens
        assert float(p.s_per_token[0]) == pytest.approx(float(p.iteration_s[0]) / tokens)


@pytest.mark.parametrize("k", [1, 2, 4, 8])
@pytest.mark.parametrize("batch", [1, 16, 128])
def test_costly_draft_with_zero_acceptance_is_slower_than_plain(models, h100, stack, k, batch):
    cal = Calibration(
        physics={"kernel_fixed_cost_s": 3e-6}, host={"host_graph_launch_cost_s": 8e-6}
    )
    t, d = models["llama-3.1-8b"], models["llama-3.2-1b"]
    spec = Speculation(t, ModelDraft(d), TokenTree.chain(k), IidAcceptance(0.0))
    p = predict_iteration(Platform(h100, stack, cal), SpecOverhead(), spec, batch, 1024)
    assert float(p.speedup[0]) < 1.0
    # and it costs at least the verify plus k draft steps' GPU time
    assert float(p.iteration_s[0]) > float(p.verify_s[0]) + 0.9 * k * float(p.draft_step_s[0])


def test_speedup_rises_with_acceptance(models, h100, stack, datasheet):
    t, d = models["llama-3.1-8b"], models["llama-3.2-1b"]
    sp = []
    for a in (0.0, 0.3, 0.6, 0.8, 0.95):
        spec = Speculation(t, ModelDraft(d), TokenTree.chain(4), IidAcceptance(a))
        sp.append(
            float(
                predict_iteration(
                    Platform(h100, stack, datasheet), SpecOverhead(), spec, 8, 2048
                ).speedup[0]
            )
        )
    assert sp == sorted(sp) and sp[0] < 1 < sp[-1]


def test_draft_kind_costs_are_ordered(models, h100, stack, datasheet):
    """n-gram adds only host time; Medusa heads run inside the verify; a draft model
    runs k forward passes."""
    t = models["llama-3.1-8b"]
    it = {}
    for draft in (
        NgramDraft(20e-6),
        MedusaDraft(4),
        EagleDraft(1),
        ModelDraft(models["llama-3.2-1b"]),
    ):
        spec = Speculation(t, draft, TokenTree.chain(4), IidAcceptance(0.8))
        p = predict_iteration(Platform(h100, stack, datasheet), SpecOverhead(), spec, 4, 1024)
        it[draft.kind] = float(p.iteration_s[0])
        if draft.kind == "ngram":
            assert float(p.draft_s[0]) == 20e-6
            assert it["ngram"] == pytest.approx(
                float(p.verify_s[0]) + 20e-6 + SpecOverhead().host_round_trip_s
            )
    assert it["ngram"] < it["medusa"] < it["model"]
    assert it["ngram"] < it["eagle"] < it["model"]


def test_host_lookup_grows_with_the_history_scanned(models, h100, stack, datasheet):
    """``ngram`` without a time takes the host's fitted lookup cost: fixed, per sequence
    and per history token (batch x ctx); ``ngram:US`` a fixed time."""
    t = models["llama-3.1-8b"]
    ov = SpecOverhead(
        ngram_lookup_fixed_s=50e-6, ngram_lookup_s_per_sequence=2e-6, ngram_lookup_s_per_token=5e-9
    )
    spec = Speculation(t, NgramDraft(), TokenTree.chain(4), IidAcceptance(0.8))
    b, c = np.array([1, 64, 64]), np.array([1024, 1024, 4096])
    p = predict_iteration(Platform(h100, stack, datasheet), ov, spec, b, c)
    assert p.draft_s == pytest.approx(50e-6 + 2e-6 * b + 5e-9 * b * c)
    fixed = predict_iteration(
        Platform(h100, stack, datasheet),
        ov,
        Speculation(t, NgramDraft(30e-6), TokenTree.chain(4), IidAcceptance(0.8)),
        b,
        c,
    )
    assert fixed.draft_s == pytest.approx([30e-6] * 3)
    assert (p.iteration_s - fixed.iteration_s) == pytest.approx(p.draft_s - 30e-6)


def test_verify_cost_uses_tree_nodes(models, h100, stack, datasheet):
    t = models["llama-3.1-8b"]
    small = Speculation(t, NgramDraft(0.0), TokenTree.full(2, 2), IidAcceptance(0.7))
    big = Speculation(t, NgramDraft(0.0), TokenTree.full(4, 3), IidAcceptance(0.7))
    ps = predict_iteration(Platform(h100, stack, datasheet), SpecOverhead(), small, 64, 1024)
    pb = predict_iteration(Platform(h100, stack, datasheet), SpecOverhead(), big, 64, 1024)
    assert float(pb.verify_s[0]) > float(ps.verify_s[0])
    assert pb.tokens_per_iteration > ps.tokens_per_iteration


def test_memory_counts_draft_weights_and_both_caches(models, h100, stack, datasheet):
    t, d = models["llama-3.1-8b"], models["llama-3.2-1b"]
    spec = Speculation(t, ModelDraft(d), TokenTree.chain(4), IidAcceptance(0.8))
    p = predict_iteration(Platform(h100, stack, datasheet), SpecOverhead(), spec, [1, 64], 4096)
    kv = np.array([1, 64]) * (4096 + 5) * (t.kv_bytes_per_token + d.kv_bytes_per_token)
    assert p.memory_bytes.tolist() == pytest.approx((t.weight_bytes + d.weight_bytes + kv).tolist())
    assert p.fits.tolist() == [True, True]
    huge = predict_iteration(Platform(h100, stack, datasheet), SpecOverhead(), spec, 512, 16384)
    assert not bool(huge.fits[0])
    assert extra_weight_bytes(MedusaDraft(2), t) == pytest.approx(
        2 * (t.hidden_size**2 + t.hidden_size + t.hidden_size * t.vocab_size) * 2
    )
    assert extra_weight_bytes(NgramDraft(), t) == 0.0


def test_speculation_rejects_impossible_inputs(models):
    t = models["llama-3.1-8b"]
    with pytest.raises(ValueError, match="Medusa heads"):
        Speculation(t, MedusaDraft(2), TokenTree.chain(3), IidAcceptance(0.8))
    with pytest.raises(ValueError, match="token tree"):
        Speculation(t, NgramDraft(), TokenTree.full(2, 2), PositionalAcceptance((0.9, 0.5)))
    with pytest.raises(ValueError, match="k=0"):
        Speculation(t, NgramDraft(), TokenTree.chain(0), IidAcceptance(0.8))


def test_tree_monte_carlo_via_speculation(models):
    spec = Speculation(
        models["llama-3.1-8b"], NgramDraft(), best_tree((0.6, 0.2), 12, 4), IidAcceptance(0.6)
    )
    for seed in (0, 1):
        mc = spec.monte_carlo(32, 300, np.random.default_rng(seed))
        assert mc.agrees(4.0), (mc.mean, mc.expected)


def test_a_tree_verifies_with_the_tree_kernel_and_a_chain_with_fa2(models, h100, stack):
    # a slow tree kernel slows a tree's verify and a tree-shaped draft level, not a chain
    t, d = models["llama-3.1-8b"], models["llama-3.2-1b"]
    fast = Calibration(gpu="h100-sxm")
    slow = Calibration(gpu="h100-sxm", attention={"cudnn_masked": {"tensor_efficiency": 0.05}})
    tree = TokenTree.full(2, 3)
    for draft in (NgramDraft(0.0), ModelDraft(d)):
        s = Speculation(t, draft, tree, IidAcceptance(0.7))
        pf = predict_iteration(Platform(h100, stack, fast), SpecOverhead(), s, 16, 4096)
        ps = predict_iteration(Platform(h100, stack, slow), SpecOverhead(), s, 16, 4096)
        assert float(ps.verify_s[0]) > 1.5 * float(pf.verify_s[0])
    s = Speculation(t, ModelDraft(d), tree, IidAcceptance(0.7))
    ps = predict_iteration(Platform(h100, stack, slow), SpecOverhead(), s, 16, 4096)
    pf = predict_iteration(Platform(h100, stack, fast), SpecOverhead(), s, 16, 4096)
    assert float(ps.draft_s[0]) > float(pf.draft_s[0])  # levels of 2 and 4 nodes
    chain = Speculation(t, ModelDraft(d), TokenTree.chain(3), IidAcceptance(0.7))
    a = predict_iteration(Platform(h100, stack, fast), SpecOverhead(), chain, 16, 4096)
    b = predict_iteration(Platform(h100, stack, slow), SpecOverhead(), chain, 16, 4096)
    assert float(a.iteration_s[0]) == float(b.iteration_s[0])
