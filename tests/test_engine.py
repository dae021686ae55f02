"""engine: the SimPy world agrees with the closed form, checks its inputs, and keeps
its timeline consistent."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from conftest import calibrations, tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpusim.cost import kernel_cost
from gpusim.engine import HostStep, Launch, ProgramRunner, simulate_program, simulate_stream
from gpusim.kernels import build_kernels, kernel_launches
from gpusim.platform import Platform
from gpusim.step import expand_launches, predict, simulate

SETTINGS = settings(max_examples=40, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def tiny_models(draw):
    kv_heads = draw(st.sampled_from([1, 2, 4]))
    heads = kv_heads * draw(st.sampled_from([1, 2, 4]))
    head_dim = draw(st.sampled_from([32, 64, 128]))
    return tiny_model(layers=draw(st.integers(1, 3)), hidden=heads * head_dim, heads=heads,
                      kv_heads=kv_heads, intermediate=draw(st.sampled_from([256, 688, 1024])),
                      vocab=draw(st.integers(100, 5000)), tied=draw(st.booleans()))


@st.composite
def step_shapes(draw):
    mode = draw(st.sampled_from(["decode", "verify", "prefill"]))
    batch = draw(st.integers(1, 64))
    if mode == "decode":
        return mode, batch, draw(st.integers(0, 4096)), 1
    if mode == "verify":
        return mode, batch, draw(st.integers(0, 4096)), draw(st.integers(1, 16))
    return mode, draw(st.integers(1, 4)), 0, draw(st.integers(1, 1024))


def _rel_close(a: float, b: float, rel: float = 1e-9) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)


# ---------------------------------------------------------------------------------
# simulate (event by event) == predict (closed form)
# ---------------------------------------------------------------------------------
@SETTINGS
@given(shape=step_shapes(), cal=calibrations(), launch=st.sampled_from(["graph", "eager"]),
       gpu=st.sampled_from(["h100-sxm", "l40s"]))
def test_simulate_agrees_with_predict_llama_1b(gpus, models, stack, shape, cal, launch, gpu):
    mode, b, c, q = shape
    spec = models["llama-3.2-1b"]
    p = predict(Platform(gpus[gpu], stack, cal, launch), spec, mode, b, c, q)
    tl = simulate(Platform(gpus[gpu], stack, cal, launch), spec, mode, b, c, q, record=False)
    assert _rel_close(tl.end_s, float(p.seconds[0])), (tl.end_s, float(p.seconds[0]))


@SETTINGS
@given(model=tiny_models(), shape=step_shapes(), cal=calibrations(),
       launch=st.sampled_from(["graph", "eager"]),
       host_scale=st.sampled_from([0.0, 0.01, 1.0, 100.0]))
def test_simulate_agrees_with_predict_tiny_models(h100, stack, model, shape, cal, launch,
                                                  host_scale):
    # host_scale sweeps eager mode from GPU-bound to launch-bound
    cal = cal.replace({"host.host_launch_cost_s": cal.host.host_launch_cost_s * host_scale})
    mode, b, c, q = shape
    p = predict(Platform(h100, stack, cal, launch), model, mode, b, c, q)
    tl = simulate(Platform(h100, stack, cal, launch), model, mode, b, c, q)
    assert _rel_close(tl.end_s, float(p.seconds[0])), (tl.end_s, float(p.seconds[0]))
    _check_timeline(tl, launch, kernel_launches(p.kernels))


def test_predict_vector_matches_simulate_per_shape(h100, models, stack):
    from gpusim.cost import Calibration
    cal = Calibration(
        physics={
            "kernel_fixed_cost_s": 2e-6,
            "saturating_ctas_per_sm": 0.3,
            "dram_latency_s": 5e-7,
            "overlap_exponent": 4,
        },
        host={"host_launch_cost_s": 6e-6},
    )
    spec = models["llama-3.2-1b"]
    b = np.array([1, 8, 64, 256])
    c = np.array([0, 100, 4000, 20000])
    for launch in ("graph", "eager"):
        p = predict(Platform(h100, stack, cal, launch), spec, "decode", b, c, 1)
        for i in range(len(b)):
            tl = simulate(
                Platform(h100, stack, cal, launch),
                spec,
                "decode",
                int(b[i]),
                int(c[i]),
                1,
                record=False,
            )
            assert _rel_close(tl.end_s, float(p.seconds[i]))


def test_eager_launch_bound_and_gpu_bound_limits(h100, models, stack):
    from gpusim.cost import Calibration

    spec = models["llama-3.2-1b"]
    n = 9 + 38 * 16 + 9  # 626 launches (see test_ops)
    # host far slower than any kernel: the step ends one (last) kernel after the last issue
    slow = Calibration(host={"host_launch_cost_s": 1e-3})
    p = predict(Platform(h100, stack, slow, "eager"), spec, "decode", 1, 10, 1)
    tl = simulate(Platform(h100, stack, slow, "eager"), spec, "decode", 1, 10, 1)
    last = [i for i in tl.intervals if i.resource == "sm"][-1]
    assert _rel_close(tl.end_s, n * 1e-3 + (last.end_s - last.start_s))
    assert _rel_close(tl.end_s, float(p.seconds[0]))
    assert bool(p.host_bound[0])
    # free host: eager == graph == sum of kernels
    free = Calibration(host={"host_launch_cost_s": 0.0})
    pe = predict(Platform(h100, stack, free, "eager"), spec, "decode", 1, 10, 1)
    pg = predict(Platform(h100, stack, free, "graph"), spec, "decode", 1, 10, 1)
    assert _rel_close(float(pe.seconds[0]), float(pg.seconds[0]), 1e-12)
    assert not bool(pe.host_bound[0])


# ---------------------------------------------------------------------------------
# timeline invariants
# ---------------------------------------------------------------------------------
def _check_timeline(tl, launch: str, launches: int) -> None:
    sm = [i for i in tl.intervals if i.resource == "sm"]
    hbm = [i for i in tl.intervals if i.resource == "hbm"]
    host = [i for i in tl.intervals if i.resource == "host"]
    assert len(sm) == launches
    for a_, b_ in itertools.pairwise(sm):
        assert a_.start_s <= a_.end_s
        assert b_.start_s >= a_.end_s - 1e-18  # one stream: no overlap, in order
    assert tl.end_s == sm[-1].end_s
    sm_busy = sum(i.end_s - i.start_s for i in sm)
    hbm_busy = sum(i.end_s - i.start_s for i in hbm)
    assert hbm_busy <= sm_busy * (1 + 1e-12)
    # each HBM phase lies inside its kernel's SM interval
    assert len(hbm) == len(sm)
    for h_, s_ in zip(sorted(hbm, key=lambda i: i.start_s), sm, strict=True):
        assert h_.name == s_.name and h_.layer == s_.layer
        assert s_.start_s - 1e-18 <= h_.start_s and h_.end_s <= s_.end_s + 1e-15
    if launch == "graph":
        assert len(host) == 1 and host[0].name == "graph_launch"
        assert sm[0].start_s >= host[0].end_s - 1e-18
    else:
        assert len(host) == launches
        # a kernel never starts before the host has issued it
        for h_, s_ in zip(host, sm, strict=True):
            assert (h_.name, h_.layer) == (s_.name, s_.layer)
            assert s_.start_s >= h_.end_s - 1e-15
        for a_, b_ in itertools.pairwise(host):
            assert b_.start_s >= a_.end_s - 1e-18
    assert tl.sram_peak_bytes >= 0


@pytest.mark.parametrize("launch", ["graph", "eager"])
@pytest.mark.parametrize(
    ("mode", "b", "c", "q"), [("decode", 4, 1000, 1), ("verify", 2, 500, 5), ("prefill", 1, 0, 128)]
)
def test_timeline_invariants_llama_1b(h100, models, stack, launch, mode, b, c, q):
    from gpusim.cost import Calibration

    cal = Calibration(
        physics={"kernel_fixed_cost_s": 1.5e-6, "dram_latency_s": 4e-7, "overlap_exponent": 3.0},
        host={"host_launch_cost_s": 4e-6, "host_graph_launch_cost_s": 10e-6},
    )
    spec = models["llama-3.2-1b"]
    tl = simulate(Platform(h100, stack, cal, launch), spec, mode, b, c, q)
    _check_timeline(tl, launch, 626)
    # every layer appears, in order; prologue and epilogue carry layer -1
    layers = [i.layer for i in tl.intervals if i.resource == "sm"]
    assert layers[:9] == [-1] * 9 and layers[-9:] == [-1] * 9
    body = layers[9:-9]
    assert body == sorted(body) and set(body) == set(range(16))
    # staged bytes never exceed on-chip memory
    sram = h100.l2_bytes + h100.sram_per_sm_bytes * h100.sm_count
    assert tl.sram_peak_bytes <= sram
    # bytes and flops on the SM intervals add up to the step's
    p = predict(Platform(h100, stack, cal, launch), spec, mode, b, c, q)
    sm = [i for i in tl.intervals if i.resource == "sm"]
    assert _rel_close(sum(i.bytes for i in sm), float(p.total.bytes[0]))
    assert _rel_close(sum(i.flops for i in sm), float(p.total.flops[0]))
    if launch == "graph":
        assert _rel_close(sum(i.end_s - i.start_s for i in sm), float(p.gpu_s[0]))


def test_expand_launches_order_and_split(h100, models, stack):
    from gpusim.cost import Calibration

    spec = models["llama-3.2-1b"]
    cal = Calibration(physics={"kernel_fixed_cost_s": 1e-6})
    ks = build_kernels(spec, stack, "decode", 2, 64, 1)
    costs = [kernel_cost(k, h100, cal) for k in ks]
    las = expand_launches(ks, costs, spec.num_hidden_layers)
    assert len(las) == 626
    assert [la.name for la in las[:9]] == ["embedding"] + ["rope_tables"] * 8
    assert [la.name for la in las[-9:]] == ["final_norm"] * 8 + ["lm_head"]
    # an op's cost is split evenly over its launches
    norm = next(c for k, c in zip(ks, costs, strict=True) if k.name == "input_norm")
    norm_launches = [la for la in las if la.name == "input_norm" and la.layer == 0]
    assert len(norm_launches) == 8
    assert math.isclose(
        sum(la.gpu_s for la in norm_launches), float(norm.seconds[0]), rel_tol=1e-12
    )


# ---------------------------------------------------------------------------------
# error paths: bad values are rejected with the value (and the field) in the message
# ---------------------------------------------------------------------------------
def _launch(**kw) -> Launch:
    base = dict(
        name="k",
        kind="gemm",
        section="layer",
        layer=0,
        gpu_s=1e-6,
        memory_s=5e-7,
        compute_s=2e-7,
        bytes=1e6,
        flops=1e9,
    )
    base.update(kw)
    return Launch(**base)


@pytest.mark.parametrize(
    ("kwargs", "field", "shown"),
    [
        ({"host_launch_s": -1.0}, "host_launch_s", "-1.0"),
        ({"graph_launch_s": -2e-6}, "graph_launch_s", "-2e-06"),
        ({"host_launch_s": float("nan")}, "host_launch_s", "nan"),
    ],
)
def test_negative_host_costs_rejected(kwargs, field, shown):
    args = dict(host_launch_s=1e-6, graph_launch_s=1e-6, graph=False, sram_bytes=1e6)
    args.update(kwargs)
    with pytest.raises(ValueError) as err:
        simulate_stream([_launch()], **args)
    assert field in str(err.value) and shown in str(err.value)


@pytest.mark.parametrize("value", [-1e-6, float("nan")])
def test_negative_kernel_time_rejected(value):
    with pytest.raises(ValueError) as err:
        simulate_stream(
            [_launch(), _launch(name="bad", gpu_s=value)],
            host_launch_s=0.0,
            graph_launch_s=0.0,
            graph=True,
            sram_bytes=1e6,
        )
    assert "bad.gpu_s" in str(err.value) and f"{value}" in str(err.value)


@pytest.mark.parametrize("sram", [0.0, -5.0])
def test_empty_sram_rejected(sram):
    with pytest.raises(ValueError, match=rf"sram_bytes\(={sram}\) must be > 0"):
        simulate_stream(
            [_launch()], host_launch_s=0.0, graph_launch_s=0.0, graph=True, sram_bytes=sram
        )


@pytest.mark.parametrize("field", ["memory_s", "compute_s"])
def test_negative_phase_durations_rejected_where_they_enter(field):
    """GAP: simulate_stream checks gpu_s but not memory_s/compute_s. A negative
    memory_s surfaces mid-run as SimPy's 'Negative delay -2e-06' (no field name); a
    negative compute_s is accepted silently. DESIGN: every argument checked where it
    enters, with the bad value in the message."""
    with pytest.raises(ValueError) as err:
        simulate_stream(
            [_launch(name="bad", **{field: -2e-6})],
            host_launch_s=0.0,
            graph_launch_s=0.0,
            graph=True,
            sram_bytes=1e6,
        )
    assert f"bad.{field}" in str(err.value) and "-2e-06" in str(err.value)


def test_bad_launch_mode_rejected(h100, models, stack, datasheet):
    with pytest.raises(ValueError, match="launch='cuda' must be one of graph, eager"):
        simulate(
            Platform(h100, stack, datasheet, "cuda"), models["llama-3.2-1b"], "decode", 1, 0, 1
        )
    with pytest.raises(ValueError, match="launch='cuda'"):
        predict(Platform(h100, stack, datasheet, "cuda"), models["llama-3.2-1b"], "decode", 1, 0, 1)


def test_bad_shape_rejected_by_simulate(h100, models, stack, datasheet):
    with pytest.raises(ValueError, match="batch=0"):
        simulate(Platform(h100, stack, datasheet), models["llama-3.2-1b"], "decode", 0, 0, 1)


def test_record_false_keeps_end_time_only(h100, models, stack, datasheet):
    spec = models["llama-3.2-1b"]
    a = simulate(Platform(h100, stack, datasheet, "eager"), spec, "verify", 2, 100, 4, record=True)
    b = simulate(Platform(h100, stack, datasheet, "eager"), spec, "verify", 2, 100, 4, record=False)
    assert a.end_s == b.end_s
    assert b.intervals == [] and len(a.intervals) > 0


def test_zero_duration_kernels_run():
    tl = simulate_stream(
        [_launch(gpu_s=0.0, memory_s=0.0, bytes=0.0)] * 3,
        host_launch_s=1e-6,
        graph_launch_s=0.0,
        graph=False,
        sram_bytes=1.0,
    )
    assert tl.end_s == pytest.approx(3e-6, rel=1e-12)
    assert len([i for i in tl.intervals if i.resource == "sm"]) == 3


# ---------------------------------------------------------------------------------
# host programs: the runner's processes and the host's sync, worked by hand
# ---------------------------------------------------------------------------------
def test_program_with_a_sync_by_hand():
    """Two eager launches of 2 us kernels at 1 us each, then a sync and 1 us of host
    work: the GPU runs 1-3 and 3-5 us, the host waits 2-5 us and works 5-6 us."""
    ks = (
        _launch(name="k1", gpu_s=2e-6, memory_s=1e-6, bytes=0.0),
        _launch(name="k2", gpu_s=2e-6, memory_s=1e-6, bytes=0.0),
    )
    program = [HostStep("a", ks, graph=False, sync_after=True, host_after_s=1e-6)]
    runner = ProgramRunner(program, host_launch_s=1e-6, graph_launch_s=0.0, sram_bytes=1e6)
    tl = runner.run()
    assert tl.end_s == pytest.approx(6e-6, rel=1e-12)
    assert runner.kernels_done == 2
    spans = {
        (iv.resource, iv.name): (round(iv.start_s * 1e6, 9), round(iv.end_s * 1e6, 9))
        for iv in tl.intervals
    }
    assert spans == {
        ("host", "k1"): (0, 1),
        ("host", "k2"): (1, 2),
        ("host", "a:sync"): (2, 5),
        ("host", "a:host"): (5, 6),
        ("sm", "k1"): (1, 3),
        ("sm", "k2"): (3, 5),
        ("hbm", "k1"): (1, 2),
        ("hbm", "k2"): (3, 4),
    }
    again = simulate_program(program, host_launch_s=1e-6, graph_launch_s=0.0, sram_bytes=1e6)
    assert again.end_s == tl.end_s and again.intervals == tl.intervals
    with pytest.raises(RuntimeError, match="runs once"):
        runner.run()


def test_no_sync_interval_when_the_gpu_is_already_done():
    """The GPU runs a 1 us kernel at 10-11 us while the host works 10-15 us: the host's
    sync then finds it done and does not wait."""
    program = [
        HostStep("a", (_launch(gpu_s=1e-6, memory_s=0.0),)),
        HostStep("b", (), graph=False, host_before_s=5e-6, sync_after=True),
    ]
    tl = simulate_program(program, host_launch_s=0.0, graph_launch_s=10e-6, sram_bytes=1e6)
    host = [iv.name for iv in tl.intervals if iv.resource == "host"]
    assert host == ["a", "b:host"]
    assert tl.end_s == pytest.approx(15e-6, rel=1e-12)
