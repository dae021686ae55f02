"""Shared fixtures: shipped GPUs, models and the reference stack, loaded once.

Only fixtures and plain helpers live here; no global hypothesis profile is loaded (each
property test carries its own ``@settings``), so other test files are unaffected.
"""

from __future__ import annotations

import pytest
from hypothesis import strategies as st

from gpusim.cost import Calibration
from gpusim.io.loader import load_gpu, load_model, load_stack
from gpusim.specs import GpuSpec, Links, LinkSpec, ModelSpec, TensorFlops

SHIPPED_GPUS = ("h100-sxm", "h200", "a100-sxm-80gb", "l40s")
PROPERTY_MODELS = ("llama-3.2-1b", "llama-3.1-8b", "llama-2-7b", "qwen2.5-7b")


@pytest.fixture(scope="session")
def stack():
    """The reference software stack (stacks/torch-hf.yaml)."""
    return load_stack("torch-bf16-static-kv")


@pytest.fixture(scope="session")
def gpus() -> dict[str, GpuSpec]:
    return {name: load_gpu(name) for name in SHIPPED_GPUS}


@pytest.fixture(scope="session")
def models() -> dict[str, ModelSpec]:
    return {name: load_model(name) for name in PROPERTY_MODELS}


@pytest.fixture(scope="session")
def h100(gpus: dict[str, GpuSpec]) -> GpuSpec:
    return gpus["h100-sxm"]


@pytest.fixture(scope="session")
def datasheet() -> Calibration:
    return Calibration()


def toy_gpu(**update: object) -> GpuSpec:
    """A hand-built GPU with round numbers: 100 SMs, 1 TB/s, 1 PFLOP/s bf16 (10 TFLOP/s
    per SM), 50 TFLOP/s fp32. ``update`` overrides fields (validated)."""
    fields: dict[str, object] = dict(
        name="toy-gpu",
        display_name="Toy GPU",
        vendor="nvidia",
        architecture="test",
        hbm_capacity_bytes=80e9,
        hbm_bandwidth_bytes_per_s=1e12,
        l2_bytes=50e6,
        sram_per_sm_bytes=200e3,
        sm_count=100,
        boost_clock_hz=1.5e9,
        fp32_flops_per_s=50e12,
        tensor_flops_per_s=TensorFlops(bf16=1e15),
        links=Links(pcie=LinkSpec(bandwidth_bytes_per_s=64e9, latency_s=1e-5)),
        price_usd_per_gpu_hour=1.0,
    )
    fields.update(update)
    return GpuSpec(**fields)


def tiny_model(layers: int = 2, hidden: int = 256, heads: int = 4, kv_heads: int = 2,
               intermediate: int = 512, vocab: int = 1000, tied: bool = False,
               head_dim: int | None = None) -> ModelSpec:
    """A small Llama-architecture ModelSpec built inline (no file)."""
    return ModelSpec(name=f"tiny-{layers}l", hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, num_key_value_heads=kv_heads,
                     head_dim=head_dim, intermediate_size=intermediate, vocab_size=vocab,
                     tie_word_embeddings=tied)


@st.composite
def calibrations(draw) -> Calibration:
    """Cost-model parameters in physical ranges (sustained <= datasheet bandwidth)."""
    tile_m = draw(st.sampled_from([64, 128, 256]))
    return Calibration(
        physics={
            "hbm_bandwidth_efficiency": draw(st.floats(0.5, 1.0)),
            "dram_latency_s": draw(st.floats(0.0, 2e-6)),
            "saturating_ctas_per_sm": draw(st.one_of(st.just(0.0), st.floats(0.05, 1.0))),
            "kernel_fixed_cost_s": draw(st.floats(0.0, 5e-6)),
            "tensor_efficiency": draw(st.floats(0.3, 1.0)),
            "gemm_tile_m": tile_m,
            "gemm_tile_n": draw(st.sampled_from([64, 128, 256])),
            "attention_bandwidth_efficiency": draw(st.floats(0.5, 1.0)),
            "attention_fixed_cost_s": draw(st.floats(0.0, 5e-6)),
            "overlap_exponent": draw(st.floats(1.0, 64.0)),
        },
        host={
            "host_launch_cost_s": draw(st.floats(0.0, 1e-5)),
            "host_graph_launch_cost_s": draw(st.floats(0.0, 3e-5)),
        },
        attention={
            "flash_decode": {"tensor_efficiency": draw(st.floats(0.3, 1.0))},
            "cudnn_prefill": {"tensor_efficiency": draw(st.floats(0.3, 1.0))},
        },
    )


def run_cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    """``gpusim ARGV`` in this process: (exit status, stdout, stderr). A traceback is the
    bug the command-line tests hunt: any exception escaping ``main`` fails the test."""
    from gpusim.cli import main

    problem = None
    try:
        rc = main(argv)
    except (Exception, SystemExit) as exc:
        problem = f"gpusim {' '.join(argv)} raised {type(exc).__name__}: {exc}"
    if problem:  # failed outside the handler: no chained (possibly huge) traceback
        pytest.fail(problem, pytrace=False)
    out, err = capsys.readouterr()
    return rc, out, err


def with_link(platform, factor: float):
    """``platform`` (a gpusim.platform.Platform) with its GPU's NVLink bandwidth scaled
    by ``factor``: the link-bandwidth properties of the parallel tests."""
    from gpusim.platform import Platform

    g = platform.gpu
    nv = g.links.nvlink.model_copy(update={
        "bandwidth_bytes_per_s": g.links.nvlink.bandwidth_bytes_per_s * factor})
    gpu = g.model_copy(update={"links": g.links.model_copy(update={"nvlink": nv})})
    return Platform(gpu, platform.stack, platform.calibration, platform.launch,
                    platform.layout)
