"""A forward step's time in closed form, vectorised over many shapes (the fast path).

Under a CUDA graph the step is the graph launch plus the sum of kernel times. In eager
mode the host issues kernels one by one; kernel i ends at E_i = max(I_i, E_{i-1}) + d_i
with issue time I_i = i*h, so the step ends at max_j (I_j + sum_{i>=j} d_i). Within an
op of identical launches and across identical layers that expression is linear in the
index, so only the first and last launch of each op in the first and last layer are
candidates for the max. ``step.simulate`` gives the same number through the engine.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpusim.cost import Cost, distinct_costs, power_clock, step_cost, step_costs
from gpusim.errors import FieldError
from gpusim.kernels import Kernel, build_kernels, kernel_launches, launches_per_shape
from gpusim.kernels.parallel import shard
from gpusim.platform import Platform
from gpusim.specs import ModelSpec


@dataclass(frozen=True)
class StepPrediction:
    """A step's predicted time (arrays over shapes) and its parts.

    ``seconds``: end-to-end step time; ``gpu_s``: sum of kernel times; ``host_bound``:
    whether host launches, not the GPU, set the pace (eager only).
    """

    seconds: np.ndarray
    gpu_s: np.ndarray
    host_s: np.ndarray
    host_bound: np.ndarray
    total: Cost | SummedCost
    by_op: Mapping[str, Cost]
    kernels: list[Kernel]
    launches: int         # at the shapes that launch the most
    dtype: str = "bf16"   # the model's: its matrix peak is the roofline's
    # a pipelined step's stages, sends and bubble (step.pipeline.PipelineTiming)
    pipeline: Any = None
    # launches per shape, where a kernel does not launch at some (None: ``launches``)
    launches_by_shape: np.ndarray | None = None

    @property
    def shape_launches(self) -> np.ndarray:
        """Kernel launches per shape (fewer where a kernel does not launch)."""
        if self.launches_by_shape is not None:
            return self.launches_by_shape
        return np.full(len(self.seconds), float(self.launches))

    @property
    def weight_bytes(self) -> np.ndarray:
        return _repeat_sum([k.weight_bytes for k in self.kernels], self.kernels,
                           np.zeros(1))

    @property
    def kv_bytes(self) -> np.ndarray:
        return _repeat_sum([k.kv_bytes for k in self.kernels], self.kernels, np.zeros(1))


def _eager_end(kernels: list[Kernel], costs: list[Cost], model_layers: int,
               host_s: float) -> np.ndarray:
    """max_j (j*h + suffix work from launch j): the eager step's end time."""
    n = len(costs[0].seconds)
    # per-launch GPU time of each op, and its launches, in step order
    per_launch = [c.seconds / max(k.launches, 1) for k, c in zip(kernels, costs, strict=True)]
    # each op's launches per shape (none where it does not launch: Kernel.launched)
    count = [k.shape_launches() for k in kernels]
    layer_ops = [i for i, k in enumerate(kernels) if k.section == "layer"]
    layer_launches = sum(count[i] for i in layer_ops)
    layer_time = sum((costs[i].seconds for i in layer_ops), np.zeros(n))
    total_gpu = sum((c.seconds * k.repeat for k, c in zip(kernels, costs, strict=True)),
                    np.zeros(n))
    best = np.full(n, -np.inf)
    issued: int | np.ndarray = 0   # launches issued before the current op (first layer)
    done_before = np.zeros(n)  # GPU work of launches before the current op
    for i, (k, c) in enumerate(zip(kernels, costs, strict=True)):
        if k.launches == 0:
            continue
        for j in (1, k.launches):
            before = done_before + per_launch[i] * (j - 1)
            cand = (issued + j) * host_s + (total_gpu - before)
            if k.launched is not None:   # no launch j where it does not launch
                cand = np.where(k.launched > 0, cand, -np.inf)
            best = np.maximum(best, cand)
            if k.section == "layer" and model_layers > 1:
                shift = (model_layers - 1) * (layer_launches * host_s - layer_time)
                best = np.maximum(best, cand + shift)
        if k.section == "layer":
            issued = issued + count[i]
            done_before = done_before + c.seconds
        else:
            reps = k.repeat
            issued = issued + count[i] * reps
            done_before = done_before + c.seconds * reps
        if layer_ops and i == layer_ops[-1]:
            # the remaining layers come before the epilogue
            issued += layer_launches * (model_layers - 1)
            done_before = done_before + layer_time * (model_layers - 1)
    return np.where(np.isfinite(best), best, 0.0)


def _repeat_sum(values: Sequence[object], kernels: Sequence[Kernel],
                start: np.ndarray) -> np.ndarray:
    """``start`` plus each kernel's value times its repeat, added in step order: one
    reduction over the stacked values where they are arrays of ``start``'s length (or
    of one length, ``start`` of one element), bit for bit the one-by-one sums (numpy
    reduces the first axis row by row, in order), else one by one. With one shape the
    stack is contiguous along the kernels, and numpy would sum it pairwise: one by one
    too."""
    try:
        stacked = np.array(values, dtype=np.float64)
    except ValueError:  # ragged: some value a scalar or of another length
        stacked = None
    if (stacked is None or stacked.ndim != 2 or stacked.shape[1] < 2
            or len(start) not in (1, stacked.shape[1])):
        return sum((v * k.repeat for v, k in zip(values, kernels, strict=True)), start)
    reps = np.array([float(k.repeat) for k in kernels])[:, None]
    return np.add.reduce(stacked * reps, axis=0)


class SummedCost:
    """A step's cost, each kernel's times its repeat summed (``Cost``'s fields, read
    only), each field summed when first read (``_repeat_sum``): the fast path's callers
    read one to three of the six, and a sum is numpy's per-call overhead at a group's
    few hundred shapes."""

    def __init__(self, kernels: Sequence[Kernel], costs: Sequence[Cost], n: int) -> None:
        self._kernels, self._costs, self._n = kernels, costs, n
        self._fields: dict[str, np.ndarray] = {}

    def _get(self, name: str) -> np.ndarray:
        got = self._fields.get(name)
        if got is None:
            got = self._fields[name] = _repeat_sum([getattr(c, name) for c in self._costs],
                                                   self._kernels, np.zeros(self._n))
        return got

    seconds = property(lambda self: self._get("seconds"))
    fixed_s = property(lambda self: self._get("fixed_s"))
    memory_s = property(lambda self: self._get("memory_s"))
    compute_s = property(lambda self: self._get("compute_s"))
    flops = property(lambda self: self._get("flops"))
    bytes = property(lambda self: self._get("bytes"))


class OpCosts(Mapping[str, Cost]):
    """A step's cost per op name (each kernel's cost times its repeat; kernels of one
    name summed in step order), computed on first use: most callers of the fast path
    need the step's total alone."""

    def __init__(self, kernels: Sequence[Kernel], costs: Sequence[Cost]) -> None:
        self._kernels, self._costs = kernels, costs
        self._by_op: dict[str, Cost] | None = None

    def _table(self) -> dict[str, Cost]:
        if self._by_op is None:
            by_op: dict[str, Cost] = {}
            for k, c in zip(self._kernels, self._costs, strict=True):
                part = c.scaled(k.repeat)
                by_op[k.name] = by_op[k.name] + part if k.name in by_op else part
            self._by_op = by_op
        return self._by_op

    def __getitem__(self, name: str) -> Cost:
        return self._table()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())


def predict_kernels(kernels: list[Kernel], model: ModelSpec, platform: Platform,
                    clock: np.ndarray | None = None,
                    full_clock: Sequence[Cost] | None = None) -> StepPrediction:
    """Closed-form step time from an already-built kernel list on ``platform``, at the
    step's own power-capped clock or at ``clock`` (per shape: the clock of a loop it
    runs in); ``full_clock``: the kernels' costs at full clock if already known
    (``program_costs``)."""
    gpu, cal = platform.gpu, platform.calibration
    costs = step_costs(kernels, gpu, cal, clock, full_clock)
    n = len(kernels[0].flops)
    total = SummedCost(kernels, costs, n)
    gpu_s = total.seconds
    launches = kernel_launches(kernels)
    per_shape = launches_per_shape(kernels, n)
    host_cost = cal.host
    if platform.graph:
        host = np.full(n, host_cost.host_graph_launch_cost_s)
        seconds = host + gpu_s
        host_bound = np.zeros(n, dtype=bool)
    else:
        host = per_shape * host_cost.host_launch_cost_s
        seconds = _eager_end(kernels, costs, model.num_hidden_layers,
                             host_cost.host_launch_cost_s)
        host_bound = seconds > gpu_s + host_cost.host_launch_cost_s + 1e-15
    return StepPrediction(seconds=seconds, gpu_s=gpu_s, host_s=host, host_bound=host_bound,
                          total=total, by_op=OpCosts(kernels, costs), kernels=kernels,
                          launches=launches, dtype=model.dtype,
                          launches_by_shape=per_shape)


def predict(platform: Platform, model: ModelSpec, mode: str, batch: object, ctx: object,
            q: object, cache_len: object = None) -> StepPrediction:
    """Fast path: predicted step times for arrays of (batch, ctx, q) on ``platform``
    (``cache_len``: positions each KV cache holds, default ctx + q; see
    ``kernels.build_kernels``).

    On several GPUs (``platform.layout``) the time is one tensor-parallel rank's, its
    collectives included; a pipelined step (pp > 1) is ``step.pipeline``'s.
    Raises ValueError for an impossible shape, an unknown mode or a layout the model
    does not allow.
    """
    if platform.layout.pp > 1:
        from gpusim.step.pipeline import predict_pipeline  # built on this module

        return predict_pipeline(platform, model, mode, batch, ctx, q, cache_len)
    kernels = rank_kernels(build_kernels(model, platform.stack, mode, batch, ctx, q,
                                         cache_len), model, platform)
    return predict_kernels(kernels, model, platform)


def rank_kernels(kernels: list[Kernel], model: ModelSpec, platform: Platform
                 ) -> list[Kernel]:
    """One GPU's kernels of a forward under ``platform``'s layout: ``kernels`` sharded
    over its tensor-parallel ranks with the stack's all-reduce, an MoE model's experts
    split over ``ep`` = ``tp`` of them with their all-to-all (the busiest rank's:
    ``kernels.parallel``, ``kernels.expert_parallel``; tp = ep = 1: ``kernels``
    itself). Raises FieldError (``tp``, ``ep``) for a split the model does not allow
    or that is not modelled (ep on a dense model, ep != tp)."""
    layout = platform.layout
    return shard(kernels, model, platform.stack, layout.tp, platform.stack.all_reduce,
                 layout.ep)


def forward_kernels(model: ModelSpec, platform: Platform, mode: str, batch: object,
                    ctx: object, q: object, cache_len: object = None) -> list[Kernel]:
    """The kernels of one forward pass on ``platform``'s stack for arrays of (batch,
    ctx, q), in launch order (``mode``: decode, verify, prefill or tree, a verify under
    a token-tree mask): one tensor-parallel rank's, collectives included
    (``cache_len``: positions each KV cache holds, default ctx + q). Raises
    ValueError for an impossible shape or an unknown mode, FieldError (field ``pp``)
    for a pipelined layout (its kernels are per stage: ``step.predict`` prices it)."""
    if platform.layout.pp > 1:
        raise FieldError("pp", f"pp={platform.layout.pp}: pipeline parallelism is "
                         "modelled for single steps (predict); speculative decoding and "
                         "serving take pp = 1")
    return rank_kernels(build_kernels(model, platform.stack, mode, batch, ctx, q, cache_len),
                        model, platform)


def kernels_cost(kernels: Sequence[Kernel], platform: Platform,
                 clock: np.ndarray | None = None) -> Cost:
    """GPU-side cost of a kernel list (each op times its repeat), arrays over shapes,
    at their own power-capped clock or at ``clock``."""
    return step_cost(list(kernels), platform.gpu, platform.calibration, clock)


def program_costs(kernel_lists: Sequence[Sequence[Kernel]], platform: Platform
                  ) -> tuple[np.ndarray, list[list[Cost]]]:
    """(SM clock, each list's kernel costs at full clock) of several kernel lists run
    back to back in a loop: the power cap acts on their average (``cost.power_clock``
    over all of them), not on each list's own. The costs let the caller price each
    list at that clock without costing its kernels again (``predict_kernels``)."""
    gpu, cal = platform.gpu, platform.calibration
    full = [distinct_costs(ks, gpu, cal) for ks in kernel_lists]
    kernels = [k for ks in kernel_lists for k in ks]
    clock = power_clock(kernels, [c for cs in full for c in cs], cal)
    return (np.ones(len(kernels[0].flops)) if clock is None else clock), full


def program_clock(kernel_lists: Sequence[Sequence[Kernel]], platform: Platform
                  ) -> np.ndarray:
    """The SM clock (fraction of full, per shape) of several kernel lists run back to
    back in a loop (``program_costs``)."""
    return program_costs(kernel_lists, platform)[0]
