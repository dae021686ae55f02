"""A step on several GPUs: one tensor-parallel rank's kernels, and a pipelined step's
time in closed form (``predict_pipeline``) and through the engine
(``simulate_pipeline``), which agree.

Pipeline stages work like a flow shop: ``m`` identical micro-batches pass stages
``1..S`` (each stage's time ``t_s`` for one micro-batch: ``step.predict``'s time of its
kernels, host launch included) and the links between them (``l_s``: the activations'
send, one transfer at a time); each stage and link takes micro-batches one at a time,
in order. The last micro-batch leaves after

    T = sum_s t_s + sum_s l_s + (m - 1) max(t_1..t_S, l_1..l_S-1)

(the first micro-batch's trip, then one bottleneck period per further micro-batch);
the bubble is the share of GPU time spent waiting: 1 - sum_s t_s m / (S T).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpusim.cost import Cost, step_costs
from gpusim.cost.collectives import collective_seconds
from gpusim.engine import HostStep, Stage, Timeline
from gpusim.engine import simulate_pipeline as run_pipeline
from gpusim.errors import FieldError
from gpusim.kernels import Kernel, as_arrays, build_kernels
from gpusim.kernels.parallel import activation_send, stage_kernels
from gpusim.platform import Platform
from gpusim.specs import ModelSpec
from gpusim.specs.enums import KernelKind
from gpusim.step.predict import StepPrediction, predict_kernels, rank_kernels


@dataclass(frozen=True)
class PipelineTiming:
    """A pipelined step's parts (arrays over shapes): each stage's time for one
    micro-batch (host launch included), each link's send time, the micro-batches and
    the share of GPU time the stages wait (the bubble)."""

    stage_s: tuple[np.ndarray, ...]
    send_s: tuple[np.ndarray, ...]
    micro_batches: int
    bubble: np.ndarray


def _micro(platform: Platform, batch: object, ctx: object, q: object
           ) -> tuple[np.ndarray, ...]:
    """(micro-batch size, ctx, q) arrays. Raises FieldError (field ``micro_batches``)
    when it does not divide every batch."""
    m = platform.layout.micro_batches
    b, c, qq = as_arrays(batch, ctx, q)
    if (b % m).any():
        raise FieldError("micro_batches", f"micro_batches={m} must divide the batch "
                         f"(got batch={b[(b % m) != 0][0]:g})")
    return b / m, c, qq


def send_seconds(platform: Platform, model: ModelSpec, tokens: np.ndarray, stage: int
                 ) -> np.ndarray:
    """The activations' send from ``stage`` to the next (``tokens`` per micro-batch):
    over NVLink within a node, over the network where the boundary is a node's (each
    tensor-parallel rank to its peer, in parallel)."""
    gpu, tp = platform.gpu, platform.layout.tp
    crosses = ((stage + 1) * tp) % gpu.links.node_gpus == 0
    return collective_seconds("send", activation_send(model, tokens), 2, gpu,
                              cross_node=crosses)[0]


def _stages(platform: Platform, model: ModelSpec, mode: str, batch: object, ctx: object,
            q: object, cache_len: object) -> tuple[list[list[Kernel]], list[np.ndarray]]:
    mb, c, qq = _micro(platform, batch, ctx, q)
    pp = platform.layout.pp
    full = rank_kernels(build_kernels(model, platform.stack, mode, mb, c, qq, cache_len),
                        model, platform)
    stages = [stage_kernels(full, model.num_hidden_layers, pp, s) for s in range(pp)]
    sends = [send_seconds(platform, model, mb * qq, s) for s in range(pp - 1)]
    return stages, sends


def makespan(stage_s: list[np.ndarray], send_s: list[np.ndarray], m: int) -> np.ndarray:
    """The flow shop's end: sum of stage and link times plus (m - 1) bottlenecks."""
    parts = stage_s + send_s
    return sum(parts, np.zeros_like(parts[0])) + (m - 1) * np.max(np.stack(parts), axis=0)


def predict_pipeline(platform: Platform, model: ModelSpec, mode: str, batch: object,
                     ctx: object, q: object, cache_len: object = None) -> StepPrediction:
    """Closed-form time of a pipelined step (``platform.layout.pp`` stages, its
    micro-batches): ``seconds`` the last micro-batch's exit, ``gpu_s`` the same without
    host launch costs, ``total`` and ``by_op`` every stage's work for every micro-batch
    (GPU-seconds, summed over the GPUs) plus the sends (``pp_send``), ``pipeline`` the
    parts. Raises FieldError for a bad shape or layout."""
    stages, sends = _stages(platform, model, mode, batch, ctx, q, cache_len)
    m = platform.layout.micro_batches
    # each stage's eager launch order follows its own layers
    preds = [predict_kernels(ks, model.model_copy(update={"num_hidden_layers": _layers(ks)}),
                             platform) for ks in stages]
    stage_s = [p.seconds for p in preds]
    seconds = makespan(stage_s, sends, m)
    gpu_s = makespan([p.gpu_s for p in preds], sends, m)
    total = Cost.zero(len(seconds))
    by_op: dict[str, Cost] = {}
    for p in preds:
        for name, c in p.by_op.items():
            part = c.scaled(m)
            by_op[name] = by_op[name] + part if name in by_op else part
            total = total + part
    link = sum(sends, np.zeros_like(seconds)) * m
    zero = np.zeros_like(seconds)
    by_op["pp_send"] = Cost(link, link, zero, zero, zero, zero)
    total = total + by_op["pp_send"]
    busy = sum(stage_s, np.zeros_like(seconds)) * m
    timing = PipelineTiming(tuple(stage_s), tuple(sends), m,
                            1.0 - busy / (len(stages) * seconds))
    kernels = [k for ks in stages for k in ks]
    return StepPrediction(seconds=seconds, gpu_s=gpu_s, host_s=seconds - gpu_s,
                          host_bound=np.any([p.host_bound for p in preds], axis=0),
                          total=total, by_op=by_op, kernels=kernels,
                          launches=sum(p.launches for p in preds) * m, dtype=model.dtype,
                          pipeline=timing,
                          launches_by_shape=sum(p.shape_launches for p in preds) * m)


def simulate_pipeline(platform: Platform, model: ModelSpec, mode: str, batch: int,
                      ctx: int, q: int, record: bool = True,
                      cache_len: int | None = None) -> Timeline:
    """Event simulation of a pipelined step (one shape): each stage's GPU runs its
    kernels per micro-batch, the sends cross the links; ``end_s`` equals
    ``predict_pipeline``'s seconds. Raises FieldError for a bad shape or layout."""
    from gpusim.step.simulate import expand_launches

    stages, sends = _stages(platform, model, mode, batch, ctx, q, cache_len)
    cal = platform.calibration
    programs = []
    for i, ks in enumerate(stages):
        costs = step_costs(ks, platform.gpu, cal)
        launches = tuple(expand_launches(ks, costs, _layers(ks)))
        send = float(sends[i][0]) if i < len(sends) else 0.0
        programs.append(Stage(HostStep(name=f"stage{i}", launches=launches,
                                       graph=platform.graph), send_s=send))
    return run_pipeline(programs, platform.layout.micro_batches,
                        host_launch_s=cal.host.host_launch_cost_s,
                        graph_launch_s=cal.host.host_graph_launch_cost_s,
                        sram_bytes=platform.sram_bytes, record=record)


def _layers(kernels: list[Kernel]) -> int:
    """A stage's layers: its per-layer ops' repeat."""
    return next((k.repeat for k in kernels if k.section == "layer"), 0)


def layout_summary(pred: StepPrediction, platform: Platform, index: int = 0
                   ) -> dict[str, object]:
    """A multi-GPU step's figures for one shape (empty on one GPU): the layout, the
    collectives' time and share of the step (for pp > 1: of the GPU-seconds), and a
    pipeline's stage and send times and bubble."""
    layout = platform.layout
    if layout.single and layout.ep == 1:
        return {}
    kinds = {k.name: k.kind for k in pred.kernels}
    coll = sum(float(c.seconds[index]) for name, c in pred.by_op.items()
               if kinds.get(name, KernelKind.COLLECTIVE) == KernelKind.COLLECTIVE)
    base = (float(pred.seconds[index]) if pred.pipeline is None
            else float(pred.total.seconds[index]))
    out: dict[str, object] = {"tp": layout.tp, "pp": layout.pp, "ep": layout.ep,
                              "gpus": layout.gpus, "collectives_ms": coll * 1e3,
                              "collectives_share": coll / base if base else 0.0}
    t = pred.pipeline
    if t is not None:
        out.update({"micro_batches": t.micro_batches,
                    "stage_ms": [float(s[index]) * 1e3 for s in t.stage_s],
                    "send_ms": [float(s[index]) * 1e3 for s in t.send_s],
                    "bubble": float(t.bubble[index])})
    return out
