"""A GPU as its datasheet describes it (``hardware/<name>.yaml``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from gpusim.specs.base import NAME_PATTERN, Frozen, NonNeg, Pos, PosInt


class LinkSpec(Frozen):
    """A GPU-to-GPU, host or network link: per-direction bandwidth (per GPU, summed over
    its lanes or links) and one-way latency; ``generation`` of NVLink or PCIe."""

    bandwidth_bytes_per_s: Pos
    latency_s: NonNeg
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
    ring_latency_s: NonNeg = 0.0
    hop_latency_s: NonNeg | None = None   # None: the link's latency_s
    chunk_overhead_s: NonNeg = 0.0
    nvls_efficiency: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] | None = None
    nvls_latency_s: NonNeg = 0.0
    p2p_efficiency: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 1.0
    p2p_latency_s: NonNeg = 0.0
    custom_max_bytes: Pos = 8 * 2**20


class TensorFlops(Frozen):
    """Dense (no sparsity) tensor-core throughput per dtype; None where unsupported."""

    bf16: Pos
    fp16: Pos | None = None
    fp8: Pos | None = None
    int8: Pos | None = None


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
    hbm_capacity_bytes: Pos
    hbm_bandwidth_bytes_per_s: Pos
    l2_bytes: Pos
    sram_per_sm_bytes: Pos
    sm_count: PosInt
    boost_clock_hz: Pos
    fp32_flops_per_s: Pos
    tensor_flops_per_s: TensorFlops
    links: Links
    price_usd_per_gpu_hour: Pos
    sources: dict[str, str] = Field(default_factory=dict)

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

