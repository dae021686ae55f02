"""A GPU as its datasheet describes it (``hardware/<name>.yaml``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from gpusim.specs.base import NAME_PATTERN, Frozen, field_error


def _within(low: float, high: float) -> object:
    """A finite number in [low, high]: generous bounds, far outside any real GPU's
    figure, that catch a typo or a unit slip (MHz for Hz, GB for B)."""
    return Annotated[float, Field(ge=low, le=high, allow_inf_nan=False)]


# Physical ranges of a GPU file's numbers (SI units). Real GPUs sit well inside: 1-304
# SMs, 1.4-2.5 GHz, 0.9-8 TB/s, 24-192 GB, 0.2-4.5 PFLOP/s dense.
Bytes = _within(2**30, 2**44)                  # HBM: 1 GiB .. 16 TiB
Bandwidth = _within(1e10, 1e14)                # HBM: 10 GB/s .. 100 TB/s
CacheBytes = _within(2**16, 2**34)             # L2: 64 KiB .. 16 GiB
SmemBytes = _within(2**14, 2**24)              # shared memory per SM: 16 KiB .. 16 MiB
ClockHz = _within(1e8, 5e9)                    # 100 MHz .. 5 GHz
VectorFlops = _within(1e11, 1e17)              # fp32: 0.1 TFLOP/s .. 100 PFLOP/s
TensorRate = _within(1e12, 1e18)               # dense tensor: 1 TFLOP/s .. 1 EFLOP/s
LinkBandwidth = _within(1e8, 1e14)             # 100 MB/s .. 100 TB/s per direction
LinkLatency = _within(0.0, 1e-2)               # 0 .. 10 ms
Price = _within(0.0, 1e4)                      # USD per GPU-hour
# what one SM (compute unit) does per clock cycle: fp32 CUDA cores (A100: 128, H100: 256)
# and dense tensor cores (A100 bf16: 2048, B200 fp8: ~15400); the rates a file gives
# must fit its SM count and clock within these
FP32_FLOPS_PER_SM_CLOCK = (16.0, 4096.0)
TENSOR_FLOPS_PER_SM_CLOCK = (64.0, 131072.0)


class LinkSpec(Frozen):
    """A GPU-to-GPU, host or network link: per-direction bandwidth (per GPU, summed over
    its lanes or links) and one-way latency; ``generation`` of NVLink or PCIe."""

    bandwidth_bytes_per_s: LinkBandwidth
    latency_s: LinkLatency
    generation: Annotated[int, Field(ge=1, le=20)] | None = None


class CollectiveParams(Frozen):
    """What collectives achieve over the GPU's scale-up link, as fractions of its
    bandwidth and fixed latencies (``gpusim.cost.collectives`` prices them). The
    defaults are the datasheet link: full bandwidth, a hop's latency per step, no NCCL
    overheads; a GPU file gives fitted values with their sources (validation/
    COLLECTIVES.md reports their error against published measurements).

    * NCCL ring (Simple/LL128 protocols): ``ring_latency_s`` once per collective plus
      ``hop_latency_s`` per ring step, the bus bytes at ``ring_bus_efficiency`` times
      the link bandwidth, and the pipeline's ramp: ``chunk_overhead_s`` per chunk of a
      transfer pipelined over the ring's steps.
    * NCCL NVLink SHARP (NVLS, switched NVLink only; None: not used): each GPU moves
      ``S (1 + 1/n)`` bytes at ``nvls_efficiency`` of the link after ``nvls_latency_s``.
    * Custom all-reduce (vLLM/TensorRT-LLM one-shot and two-shot kernels over NVLink
      peer-to-peer reads, up to ``custom_max_bytes``): ``p2p_latency_s`` per stage,
      peers' bytes at ``p2p_efficiency`` of the link.
    """

    ring_bus_efficiency: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 1.0
    ring_latency_s: LinkLatency = 0.0
    hop_latency_s: LinkLatency | None = None   # None: the link's latency_s
    chunk_overhead_s: LinkLatency = 0.0
    nvls_efficiency: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] | None = None
    nvls_latency_s: LinkLatency = 0.0
    p2p_efficiency: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 1.0
    p2p_latency_s: LinkLatency = 0.0
    custom_max_bytes: _within(1.0, 2**40) = 8 * 2**20  # type: ignore[valid-type]


class TensorFlops(Frozen):
    """Dense (no sparsity) tensor-core throughput per dtype; None where unsupported."""

    bf16: TensorRate
    fp16: TensorRate | None = None
    fp8: TensorRate | None = None
    int8: TensorRate | None = None


class Links(Frozen):
    """How a GPU talks to others: its scale-up link (NVLink; AMD Infinity Fabric under
    the same key) and whether a switch connects every GPU of the node at full bandwidth
    (``nvswitch``), PCIe, the GPUs per node, the inter-node network (per GPU: one NIC
    each on a rail-optimised fabric), and what collectives achieve over them."""

    nvlink: LinkSpec | None = None
    nvswitch: bool = False
    pcie: LinkSpec
    node_gpus: Annotated[int, Field(ge=1, le=1024)] = 1
    network: LinkSpec | None = None
    collectives: CollectiveParams = CollectiveParams()


class GpuSpec(Frozen):
    """One GPU as its datasheet describes it (SI units, names carry the unit)."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    display_name: str
    vendor: Literal["nvidia", "amd"]
    architecture: str
    # the chip and its configuration (GH100 with 132 SMs: H100 SXM and H200): GPUs that
    # share one share their kernels' arithmetic, so a quantized GEMM family's
    # arithmetic parameters are fitted once per die (``calibration.die``); None: its own
    die: Annotated[str, Field(pattern=NAME_PATTERN)] | None = None
    hbm_capacity_bytes: Bytes
    hbm_bandwidth_bytes_per_s: Bandwidth
    l2_bytes: CacheBytes
    sram_per_sm_bytes: SmemBytes
    sm_count: Annotated[int, Field(gt=0, le=1024)]
    boost_clock_hz: ClockHz
    fp32_flops_per_s: VectorFlops
    tensor_flops_per_s: TensorFlops
    links: Links
    price_usd_per_gpu_hour: Annotated[float, Field(gt=0.0, le=1e4, allow_inf_nan=False)]
    sources: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _rates_fit_the_sms(self) -> GpuSpec:
        """Each throughput divided by SMs x clock must be what one SM can do per cycle:
        the cost model takes the rates as given and uses the SM count for wave
        quantization, so a rate the SMs cannot deliver would be priced silently."""
        cycles = self.sm_count * self.boost_clock_hz
        checks = [("fp32_flops_per_s", self.fp32_flops_per_s, FP32_FLOPS_PER_SM_CLOCK)]
        checks += [(f"tensor_flops_per_s.{d}", v, TENSOR_FLOPS_PER_SM_CLOCK)
                   for d, v in self.tensor_flops_per_s.model_dump().items() if v is not None]
        for field, rate, (low, high) in checks:
            per = rate / cycles
            if not low <= per <= high:
                raise field_error(field, f"{rate:.4g} FLOP/s over sm_count {self.sm_count} "
                                  f"x boost_clock_hz {self.boost_clock_hz:.4g} is "
                                  f"{per:.4g} FLOP per SM per clock; a GPU does "
                                  f"{low:g}..{high:g}: check the rate, the SM count and "
                                  "the clock (in Hz)")
        return self

    def tensor_peak_flops_per_s(self, dtype: str) -> float:
        """Dense tensor throughput for ``dtype``; raises ValueError if unsupported."""
        value = getattr(self.tensor_flops_per_s, dtype, None)
        if value is None:
            raise ValueError(f"{self.name} has no tensor throughput for dtype {dtype!r}")
        return float(value)

    def matmul_peak_flops_per_s(self, dtype: str) -> float:
        """Dense matrix throughput for arithmetic in ``dtype``: the tensor cores' for
        bf16, fp16, fp8 and int8; the CUDA cores' for fp32 (PyTorch runs fp32 matmuls
        without TF32 unless told to). Raises ValueError where unsupported."""
        if dtype == "fp32":
            return float(self.fp32_flops_per_s)
        return self.tensor_peak_flops_per_s(dtype)

