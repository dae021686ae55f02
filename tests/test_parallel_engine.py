"""Pipeline parallelism: the SimPy engine with several GPU streams and links against the
flow-shop closed form (hand-worked and through step.predict), micro-batches and
bubbles, and the single-stream engine left as it was."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpusim.engine import HostStep, Launch, Stage, simulate_pipeline, simulate_stream
from gpusim.errors import FieldError
from gpusim.io import calibrations, loader
from gpusim.platform import ParallelLayout, Platform
from gpusim.step import layout_summary, predict, simulate
from gpusim.step.pipeline import makespan

ENGINE = {"host_launch_s": 2e-6, "graph_launch_s": 5e-6, "sram_bytes": 1e9}


def kernels(*durations: float) -> tuple[Launch, ...]:
    return tuple(Launch(f"k{i}", "gemm", "layer", 0, d, d / 2, d / 4, 1e6, 1e9)
                 for i, d in enumerate(durations))


def test_three_stages_two_micro_batches_by_hand():
    # graph replays: stage s takes 5 us + its kernels; sends 3 and 1 us.
    # stages 25, 45, 15 us -> T = 25 + 3 + 45 + 1 + 15 + (2 - 1) x 45 = 134 us
    stages = [Stage(HostStep("s0", kernels(10e-6, 10e-6)), send_s=3e-6),
              Stage(HostStep("s1", kernels(40e-6)), send_s=1e-6),
              Stage(HostStep("s2", kernels(4e-6, 6e-6)))]
    tl = simulate_pipeline(stages, 2, **ENGINE)
    assert tl.end_s == pytest.approx(134e-6)
    links = [iv for iv in tl.intervals if iv.resource == "link"]
    assert len(links) == 4 and {iv.gpu for iv in links} == {0, 1}
    assert {iv.gpu for iv in tl.intervals if iv.resource == "sm"} == {0, 1, 2}


@settings(max_examples=60, deadline=None, database=None)
@given(st.lists(st.lists(st.floats(1e-7, 1e-4), min_size=1, max_size=4), min_size=1,
                max_size=5),
       st.lists(st.floats(0.0, 5e-5), min_size=4, max_size=4), st.integers(1, 6),
       st.booleans())
def test_engine_is_the_flow_shop(stage_kernels, sends, m, graph):
    import numpy as np

    stages = [Stage(HostStep(f"s{i}", kernels(*ds), graph=graph), send_s=sends[i]
                    if i < len(sends) else 0.0) for i, ds in enumerate(stage_kernels)]
    # one stage alone: the single-stream engine's step
    alone = [simulate_stream(st_.step.launches, graph=graph, **ENGINE).end_s
             for st_ in stages]
    links = [np.array([s.send_s]) for s in stages[:-1]]
    expect = makespan([np.array([a]) for a in alone], links, m)[0]
    assert simulate_pipeline(stages, m, **ENGINE).end_s == pytest.approx(expect, rel=1e-9)


def test_pipeline_arguments_are_checked():
    with pytest.raises(ValueError, match="micro_batches"):
        simulate_pipeline([Stage(HostStep("s", kernels(1e-6)))], 0, **ENGINE)
    with pytest.raises(ValueError, match="send_s"):
        simulate_pipeline([Stage(HostStep("s", kernels(1e-6)), send_s=-1.0)], 1, **ENGINE)
    with pytest.raises(ValueError, match="at least one stage"):
        simulate_pipeline([], 1, **ENGINE)


@pytest.fixture(scope="module")
def plat():
    g, st_ = loader.load_gpu("h100-sxm"), loader.load_stack(loader.REFERENCE_STACK)
    return Platform(g, st_, calibrations.load_calibration("auto", g, st_))


@settings(max_examples=12, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.sampled_from([(1, 2), (2, 2), (1, 3), (4, 2), (8, 2)]), st.sampled_from([1, 2, 4]),
       st.sampled_from(["decode", "verify", "prefill"]), st.sampled_from(["graph", "eager"]),
       st.integers(1, 4))
def test_closed_form_and_engine_agree_on_several_streams(plat, layout, m, mode, launch, k):
    tp, pp = layout
    model = loader.load_model("llama-3.2-1b" if pp == 3 else "llama-3.1-8b")
    q, ctx = {"decode": (1, 512), "verify": (4, 512), "prefill": (128, 0)}[mode]
    batch = m * k
    p = plat.with_layout(ParallelLayout(tp=tp, pp=pp, micro_batches=m)).with_launch(launch)
    closed = predict(p, model, mode, batch, ctx, q)
    tl = simulate(p, model, mode, batch, ctx, q)
    assert tl.end_s == pytest.approx(float(closed.seconds[0]), rel=1e-9)
    assert 0.0 <= float(closed.pipeline.bubble[0]) < 1.0


def test_micro_batches_fill_the_pipeline(plat):
    m = loader.load_model("llama-3.1-70b")
    one = predict(plat.with_layout(ParallelLayout(tp=4, pp=2)), m, "decode", 32, 1024, 1)
    four = predict(plat.with_layout(ParallelLayout(tp=4, pp=2, micro_batches=4)), m,
                   "decode", 32, 1024, 1)
    # one micro-batch: one stage waits while the other works (bubble about 1/2)
    assert float(one.pipeline.bubble[0]) == pytest.approx(0.5, abs=0.02)
    assert float(four.pipeline.bubble[0]) < float(one.pipeline.bubble[0])
    summary = layout_summary(four, plat.with_layout(ParallelLayout(tp=4, pp=2,
                                                                   micro_batches=4)))
    assert summary["gpus"] == 8 and len(summary["stage_ms"]) == 2
    assert "pp_send" in four.by_op


def test_micro_batches_must_divide_the_batch(plat):
    m = loader.load_model("llama-3.1-8b")
    with pytest.raises(FieldError) as exc:
        predict(plat.with_layout(ParallelLayout(pp=2, micro_batches=3)), m, "decode", 4,
                10, 1)
    assert exc.value.field == "micro_batches"


def test_a_stage_boundary_between_nodes_uses_the_network(plat):
    from gpusim.step.pipeline import send_seconds

    m = loader.load_model("llama-3.1-70b")
    p = plat.with_layout(ParallelLayout(tp=8, pp=2))
    over_network = float(send_seconds(p, m, [4096], 0)[0])
    p = plat.with_layout(ParallelLayout(tp=4, pp=2))
    over_nvlink = float(send_seconds(p, m, [4096], 0)[0])
    assert over_network > 5 * over_nvlink


def test_a_pipeline_timeline_has_lanes_per_gpu(plat):
    from gpusim.report import timeline_figure

    m = loader.load_model("llama-3.2-1b")
    p = plat.with_layout(ParallelLayout(tp=2, pp=2, micro_batches=2))
    fig = timeline_figure(simulate(p, m, "decode", 2, 128, 1), "pp")
    names = {trace.name for trace in fig.data}
    assert {"gpu0 sm", "gpu1 sm", "gpu0 link", "gpu1 host"} <= names
    one = timeline_figure(simulate(plat, m, "decode", 2, 128, 1), "one")
    assert {trace.name for trace in one.data} == {"host", "sm", "hbm"}
