"""The collective cost model (gpusim/cost/collectives.py): hand-worked oracles for each
algorithm, the choice by size, the fabric (NVLink, PCIe, network), the published
figures it was fitted on and judged against (validation/COLLECTIVES.md), and the
reader of those figures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import toy_gpu
from hypothesis import given, settings
from hypothesis import strategies as st

from gpusim.calibration import collectives as cc
from gpusim.cost import Calibration, kernel_cost
from gpusim.cost.collectives import algorithm_times, collective_seconds, fabric
from gpusim.errors import ConfigError, FieldError
from gpusim.kernels.records import CollectiveShape, Kernel
from gpusim.specs import CollectiveParams, Links, LinkSpec
from gpusim.specs.enums import KernelKind

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "validation" / "data" / "published"
GB, US = 1e9, 1e-6


def nv_gpu(bw: float = 100 * GB, node: int = 8, switched: bool = True,
           network: LinkSpec | None = None, **params: object):
    """A toy GPU on switched NVLink of ``bw`` per direction and round collective
    parameters."""
    base = {"ring_bus_efficiency": 0.5, "ring_latency_s": 10 * US, "hop_latency_s": 1 * US,
            "chunk_overhead_s": 0.0, "nvls_efficiency": 0.25, "nvls_latency_s": 20 * US,
            "p2p_efficiency": 0.5, "p2p_latency_s": 5 * US, "custom_max_bytes": 8e6}
    base.update(params)
    links = Links(nvlink=LinkSpec(bandwidth_bytes_per_s=bw, latency_s=2 * US, generation=4),
                  nvswitch=switched, pcie=LinkSpec(bandwidth_bytes_per_s=32 * GB,
                                                   latency_s=10 * US),
                  node_gpus=node, network=network,
                  collectives=CollectiveParams(**base))
    return toy_gpu(links=links)


def test_ring_all_reduce_by_hand():
    # 4 GPUs: 6 steps; 1 MB buffer -> bus 1.5 MB at 0.5 x 100 GB/s = 30 us
    g = nv_gpu()
    t = algorithm_times("all_reduce", 1e6, 4, g)["ring"][0]
    assert t == pytest.approx(10 * US + 6 * 1 * US + 1.5e6 / 50e9)


def test_ring_ramp_by_hand():
    # the pipeline's fill: 2 sqrt((steps - 1) o bus / B)
    g = nv_gpu(chunk_overhead_s=0.5 * US)
    t = algorithm_times("all_reduce", 1e6, 4, g)["ring"][0]
    ramp = 2 * math.sqrt(5 * 0.5e-6 * 1.5e6 / 50e9)
    assert t == pytest.approx(16 * US + 30 * US + ramp)


def test_all_gather_and_reduce_scatter_take_half_the_steps():
    g = nv_gpu()
    for op in ("all_gather", "reduce_scatter"):
        t = algorithm_times(op, 4e6, 8, g)["ring"][0]
        assert t == pytest.approx(10 * US + 7 * US + 4e6 * 7 / 8 / 50e9)


def test_nvls_by_hand():
    # each GPU moves S (1 + 1/n) at 0.25 x 100 GB/s
    g = nv_gpu()
    t = algorithm_times("all_reduce", 8e6, 8, g)["nvls"][0]
    assert t == pytest.approx(20 * US + 8e6 * 9 / 8 / 25e9)


def test_one_and_two_shot_by_hand():
    g = nv_gpu()
    times = algorithm_times("all_reduce", 1e6, 8, g, "custom")
    assert times["one_shot"][0] == pytest.approx(5 * US + 7 * 1e6 / 50e9)
    assert times["two_shot"][0] == pytest.approx(10 * US + 2 * 7 / 8 * 1e6 / 50e9)


def test_custom_all_reduce_hands_large_buffers_to_nccl():
    g = nv_gpu()
    s = np.array([4e6, 16e6])
    _, names = collective_seconds("all_reduce", s, 8, g, "custom")
    assert names[0] in ("one_shot", "two_shot") and names[1] in ("ring", "nvls")
    # groups the custom kernel does not run on: NCCL throughout
    _, names = collective_seconds("all_reduce", s, 3, g, "custom")
    assert list(names) == ["ring", "ring"]


def test_small_messages_take_one_shot_larger_two_shot():
    g = nv_gpu()
    _, names = collective_seconds("all_reduce", np.array([8e3, 4e6]), 8, g, "custom")
    assert list(names) == ["one_shot", "two_shot"]


def test_nvls_needs_a_switch():
    assert "nvls" not in algorithm_times("all_reduce", 1e6, 8, nv_gpu(switched=False))
    assert "nvls" not in algorithm_times("all_reduce", 1e6, 8,
                                         nv_gpu(nvls_efficiency=None))


def test_all_to_all_and_send_by_hand():
    g = nv_gpu()
    a2a = algorithm_times("all_to_all", 8e6, 8, g)["all_to_all"][0]
    assert a2a == pytest.approx(10 * US + 1 * US + 8e6 * 7 / 8 / 100e9)
    send = algorithm_times("send", 1e6, 2, g)["p2p"][0]
    assert send == pytest.approx(10 * US + 1 * US + 1e6 / 100e9)


def test_one_gpu_moves_nothing():
    t, names = collective_seconds("all_reduce", np.array([1e6, 1e9]), 1, nv_gpu())
    assert list(t) == [0.0, 0.0] and list(names) == ["local", "local"]


def test_fabrics():
    net = LinkSpec(bandwidth_bytes_per_s=50 * GB, latency_s=3 * US)
    g = nv_gpu(network=net)
    assert fabric(g, 8).link == "nvlink"
    assert fabric(g, 16).link == "network"
    assert fabric(g, 2, cross_node=True).link == "network"
    pcie_only = toy_gpu(links=Links(pcie=LinkSpec(bandwidth_bytes_per_s=32 * GB,
                                                  latency_s=1e-5), node_gpus=4))
    assert fabric(pcie_only, 4).link == "pcie"
    with pytest.raises(FieldError, match="spans nodes"):
        fabric(pcie_only, 8)


def test_groups_across_nodes_run_ring_or_tree_over_the_network():
    net = LinkSpec(bandwidth_bytes_per_s=50 * GB, latency_s=3 * US)
    times = algorithm_times("all_reduce", 1e6, 16, nv_gpu(network=net))
    assert set(times) == {"ring", "tree"}
    # the tree's log-depth latency wins for a tiny buffer on 16 GPUs
    _, names = collective_seconds("all_reduce", 1e3, 16, nv_gpu(network=net))
    assert names[0] == "tree"


def test_bad_arguments_name_their_field():
    g = nv_gpu()
    for kwargs, field in (({"op": "gather"}, "op"), ({"library": "mpi"}, "library"),
                          ({"n": 0}, "group"), ({"size_bytes": -1.0}, "size_bytes")):
        args = {"op": "all_reduce", "size_bytes": 1e6, "n": 4, "gpu": g, **kwargs}
        with pytest.raises(FieldError) as exc:
            algorithm_times(**args)
        assert exc.value.field == field


@settings(max_examples=60, deadline=None, database=None)
@given(st.sampled_from(["all_reduce", "all_gather", "reduce_scatter", "all_to_all"]),
       st.sampled_from([2, 4, 6, 8]), st.floats(1e3, 1e9), st.floats(1.01, 4.0),
       st.sampled_from(["nccl", "custom"]))
def test_more_bytes_or_less_bandwidth_is_never_faster(op, n, size, factor, library):
    g = nv_gpu(chunk_overhead_s=0.3 * US)
    base = collective_seconds(op, size, n, g, library)[0][0]
    assert collective_seconds(op, size * factor, n, g, library)[0][0] >= base
    slower = nv_gpu(bw=100 * GB / factor, chunk_overhead_s=0.3 * US)
    assert collective_seconds(op, size, n, slower, library)[0][0] >= base * (1 - 1e-12)


def test_a_collective_kernel_costs_its_link_time_plus_the_launch_gap():
    g = nv_gpu()
    s = np.array([1e6, 2e6])
    k = Kernel(name="o_proj_all_reduce", kind=KernelKind.COLLECTIVE, section="layer",
               launches=1, repeat=80, flops=np.zeros(2), weight_bytes=np.zeros(2),
               kv_bytes=np.zeros(2), act_bytes=2 * s,
               collective=CollectiveShape("all_reduce", s, 4))
    cal = Calibration(physics={"launch_gap_s": 1e-6})
    c = kernel_cost(k, g, cal)
    link = collective_seconds("all_reduce", s, 4, g)[0]
    np.testing.assert_allclose(c.seconds, link + 1e-6)
    np.testing.assert_allclose(c.fixed_s, link)
    assert not c.memory_s.any() and not c.compute_s.any()


# --- published figures ------------------------------------------------------------------
@pytest.fixture(scope="module")
def published() -> list[cc.Published]:
    return [p for f in sorted(PUBLISHED.glob("nccl_*.csv")) for p in cc.read_published(f)]


def test_every_published_row_has_a_source(published):
    assert published and all(p.source.startswith("https://") and p.what for p in published)


def test_all_reduce_within_15_percent_of_published_over_8kb_to_1gb(published):
    from gpusim.io import loader

    gpus = {name: loader.load_gpu(name) for name in {p.gpu for p in published}}
    judged = [r for r in cc.judge(gpus, published) if r.point.judged
              and r.point.collective == "all_reduce" and 8192 <= r.point.size_bytes <= 2**30]
    assert len(judged) >= 30
    worst = max(judged, key=lambda r: abs(r.error))
    assert abs(worst.error) <= 0.15, (worst.point, worst.error)


def test_the_report_is_what_the_command_writes(published):
    from gpusim.io import loader

    gpus = {name: loader.load_gpu(name) for name in sorted({p.gpu for p in published})}
    md = cc.markdown(cc.judge(gpus, published), gpus,
                     "gpusim collectives-validate --data validation/data/published")
    assert md == (REPO / "validation" / "COLLECTIVES.md").read_text(), (
        "regenerate: gpusim collectives-validate")


def test_reader_names_file_line_and_field(tmp_path):
    bad = tmp_path / "nccl_bad.csv"
    head = ",".join(cc.COLUMNS)
    bad.write_text(head + "\nh100-sxm,4,all_reduce,nccl,ring,0,lots,1,1,,1,https://x,y\n")
    with pytest.raises(ConfigError) as exc:
        cc.read_published(bad)
    assert exc.value.line == 2 and exc.value.field == "size_bytes"
    bad.write_text(head + "\nh100-sxm,4,gather,nccl,ring,0,8,1,1,,1,https://x,y\n")
    with pytest.raises(ConfigError, match="collective"):
        cc.read_published(bad)
    bad.write_text("gpu,gpus\nh100-sxm,4\n")
    with pytest.raises(ConfigError, match="missing column"):
        cc.read_published(bad)


def test_cli_writes_the_report_and_prints_a_fit(tmp_path, capsys):
    from gpusim.cli import main

    out = tmp_path / "C.md"
    assert main(["collectives-validate", "--report", str(out)]) == 0
    assert out.read_text() == (REPO / "validation" / "COLLECTIVES.md").read_text()
    assert main(["collectives-validate", "--data-dir", str(tmp_path)]) == 2


def test_the_shipped_parameters_are_the_fit(capsys):
    from gpusim.cli import main
    from gpusim.io import loader

    assert main(["collectives-validate", "--fit", "h100-sxm"]) == 0
    fitted = dict(line.split(": ") for line in capsys.readouterr().out.splitlines())
    shipped = loader.load_gpu("h100-sxm").links.collectives
    for name in cc.FIT_BOUNDS:
        assert float(fitted[name]) == pytest.approx(getattr(shipped, name), rel=0.02), name
