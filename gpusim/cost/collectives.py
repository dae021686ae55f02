"""Collectives between GPUs -> time, from the GPU's links (``GpuSpec.links``).

A collective among ``n`` GPUs runs one of several algorithms; each takes a latency plus
the bytes it puts on the busiest link over that link's achieved bandwidth, plus the
ramp of a pipelined transfer. The fastest allowed algorithm runs, as NCCL's tuner and
vLLM's all-reduce dispatch both pick by size. Sizes follow nccl-tests: an all-reduce's
buffer, an all-gather's gathered output, a reduce-scatter's input, an all-to-all's
send buffer, a send's message.

* ``ring`` (NCCL): ``steps`` = 2(n-1) for an all-reduce (n-1 for an all-gather or
  reduce-scatter); each GPU sends the bus bytes ``steps / n x S``. Time =
  ``ring_latency_s + steps x hop_latency_s + bus / B + 2 sqrt((steps-1) x
  chunk_overhead_s x bus / B)``, B = ``ring_bus_efficiency`` x link bandwidth. The
  square root is the least fill-and-drain cost of a transfer cut into chunks that pay
  ``chunk_overhead_s`` each and flow through ``steps`` stages (the chunk size that
  balances the two grows as sqrt(S)): the slow ramp of NCCL's bus bandwidth towards
  its peak over 1 MB-8 GB.
* ``nvls`` (NCCL NVLink SHARP, switched NVLink, all-reduce): the switch reduces and
  multicasts, so each GPU's link carries S (1 + 1/n) bytes at ``nvls_efficiency``.
* ``one_shot`` / ``two_shot`` (a stack's custom all-reduce, up to
  ``custom_max_bytes``): every GPU reads its n-1 peers' whole buffers, or reduces
  1/n of the buffer and gathers the rest (2 (n-1)/n S bytes, two stages), over NVLink
  peer-to-peer at ``p2p_efficiency``.
* ``tree`` (NCCL, groups spanning nodes): 2 log2(n) steps, 2 S bytes per GPU.
* ``all_to_all`` and ``send``: one step; (n-1)/n S and S bytes.

Within a node the link is NVLink when the GPU has it, else PCIe; a group larger than a
node runs over the network (per GPU, one NIC each). Pure and vectorised over sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpusim.cost.params import Calibration
from gpusim.cost.record import Cost
from gpusim.errors import FieldError
from gpusim.kernels.records import Kernel
from gpusim.specs import CollectiveParams, GpuSpec

OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send")
LIBRARIES = ("nccl", "custom")
# the group sizes vLLM's custom all-reduce runs on (CustomAllreduce._SUPPORTED_WORLD_SIZES);
# other groups fall back to NCCL
CUSTOM_GROUPS = (2, 4, 6, 8)


@dataclass(frozen=True)
class Fabric:
    """What a group of GPUs talks over: ``link`` nvlink | pcie | network, its
    bandwidth per GPU and direction, one step's latency, whether every GPU reaches
    every other at full bandwidth through a switch, and whether peer-to-peer loads
    and stores work (custom all-reduce kernels need them)."""

    link: str
    bandwidth_bytes_per_s: float
    hop_latency_s: float
    switched: bool
    peer_access: bool


def fabric(gpu: GpuSpec, n: int, cross_node: bool = False) -> Fabric:
    """The fabric a group of ``n`` GPUs of ``gpu`` uses (ranks of a group fill a node
    first; ``cross_node``: a pair on two nodes, as a pipeline's send at a node's
    boundary). Raises FieldError (field ``group``) when the group spans nodes and the
    GPU file gives no network."""
    links = gpu.links
    hop = links.collectives.hop_latency_s
    if n > links.node_gpus or cross_node:
        if links.network is None:
            raise FieldError("group", f"group={n} GPUs spans nodes of {links.node_gpus} "
                             f"{gpu.name}, whose file gives no links.network")
        net = links.network
        return Fabric("network", float(net.bandwidth_bytes_per_s), float(net.latency_s),
                      switched=False, peer_access=False)
    if links.nvlink is not None:
        nv = links.nvlink
        return Fabric("nvlink", float(nv.bandwidth_bytes_per_s),
                      float(nv.latency_s if hop is None else hop),
                      switched=links.nvswitch, peer_access=True)
    pcie = links.pcie
    return Fabric("pcie", float(pcie.bandwidth_bytes_per_s), float(pcie.latency_s),
                  switched=False, peer_access=False)


def _ramp(bus: np.ndarray, stages: float, bw: float, p: CollectiveParams) -> np.ndarray:
    """Fill and drain of ``bus`` bytes pipelined over ``stages`` stages in chunks
    costing ``chunk_overhead_s`` each, at the best chunk size: 2 sqrt((stages-1) o
    bus / B)."""
    if stages <= 1 or p.chunk_overhead_s == 0:
        return np.zeros_like(bus)
    return 2.0 * np.sqrt((stages - 1) * p.chunk_overhead_s * bus / bw)


def _ring(op: str, s: np.ndarray, n: int, f: Fabric, p: CollectiveParams) -> np.ndarray:
    steps = 2 * (n - 1) if op == "all_reduce" else n - 1
    bus = s * steps / n
    bw = f.bandwidth_bytes_per_s * (p.ring_bus_efficiency if f.link != "network" else 1.0)
    return p.ring_latency_s + steps * f.hop_latency_s + bus / bw + _ramp(bus, steps, bw, p)


def algorithm_times(op: str, size_bytes: object, n: int, gpu: GpuSpec,
                    library: str = "nccl", cross_node: bool = False
                    ) -> dict[str, np.ndarray]:
    """{algorithm: seconds per size} of every algorithm ``library`` may run for ``op``
    over ``size_bytes`` among ``n`` GPUs of ``gpu`` (an algorithm it may not run at a
    size is inf there). Raises FieldError for an unknown op or library, a group < 1, a
    negative size, or a group spanning nodes without a network."""
    if op not in OPS:
        raise FieldError("op", f"op={op!r} must be one of {', '.join(OPS)}")
    if library not in LIBRARIES:
        raise FieldError("library", f"library={library!r} must be one of "
                         f"{', '.join(LIBRARIES)}")
    if not isinstance(n, int) or n < 1:
        raise FieldError("group", f"group={n!r} must be an integer >= 1")
    s = np.atleast_1d(np.asarray(size_bytes, dtype=np.float64))
    if (~np.isfinite(s) | (s < 0)).any():
        raise FieldError("size_bytes", f"size_bytes={s[~np.isfinite(s) | (s < 0)][0]:g} "
                         "must be >= 0")
    if n == 1:
        return {"local": np.zeros_like(s)}
    f, p = fabric(gpu, n, cross_node), gpu.links.collectives
    bw = f.bandwidth_bytes_per_s
    if op == "send":
        return {"p2p": p.ring_latency_s + f.hop_latency_s + s / bw}
    if op == "all_to_all":
        moved = s * (n - 1) / n
        return {"all_to_all": p.ring_latency_s + f.hop_latency_s + moved / bw}
    out = {"ring": _ring(op, s, n, f, p)}
    if op != "all_reduce":
        return out
    if f.link == "network":
        steps = 2 * int(np.ceil(np.log2(n)))
        out["tree"] = (p.ring_latency_s + steps * f.hop_latency_s + 2.0 * s / bw
                       + _ramp(2.0 * s, steps, bw, p))
        return out
    if f.switched and p.nvls_efficiency is not None:
        moved = s * (1.0 + 1.0 / n)
        nb = bw * p.nvls_efficiency
        out["nvls"] = p.nvls_latency_s + moved / nb + _ramp(moved, 2, nb, p)
    if library == "custom" and f.peer_access and n in CUSTOM_GROUPS:
        pb = bw * p.p2p_efficiency
        fits = s <= p.custom_max_bytes
        one = p.p2p_latency_s + (n - 1) * s / pb
        two = 2.0 * p.p2p_latency_s + 2.0 * (n - 1) / n * s / pb
        # up to its buffer's size the stack runs its own kernel, faster or not (vLLM
        # dispatches by size alone); above it, NCCL's algorithms
        out = {"one_shot": np.where(fits, one, np.inf),
               "two_shot": np.where(fits, two, np.inf),
               **{k: np.where(fits, np.inf, v) for k, v in out.items()}}
    return out


def collective_seconds(op: str, size_bytes: object, n: int, gpu: GpuSpec,
                       library: str = "nccl", cross_node: bool = False
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(seconds, algorithm name) per size: the fastest algorithm ``library`` runs for
    ``op`` among ``n`` GPUs (``algorithm_times``; raises as it does)."""
    times = algorithm_times(op, size_bytes, n, gpu, library, cross_node)
    names = list(times)
    stacked = np.stack([times[k] for k in names])
    best = np.argmin(stacked, axis=0)
    return stacked[best, np.arange(stacked.shape[1])], np.asarray(names)[best]


def collective_cost(k: Kernel, gpu: GpuSpec, cal: Calibration) -> Cost:
    """Cost of one occurrence of collective kernel ``k``: its link time (as
    ``fixed_s``: neither HBM streaming nor arithmetic, so it neither loads the power
    cap nor reclocks) plus the stream's idle gap before each launch."""
    c = k.collective
    assert c is not None  # built by kernels.parallel
    seconds, _ = collective_seconds(c.op, c.size_bytes, c.group, gpu, c.library)
    seconds = np.broadcast_to(seconds, k.flops.shape).astype(np.float64)
    zero = np.zeros_like(seconds)
    return Cost(seconds=seconds + k.launches * cal.physics.launch_gap_s, fixed_s=seconds,
                memory_s=zero, compute_s=zero, flops=k.flops, bytes=k.bytes)
