"""The one memory planner: what a GPU holds for a model (weights, KV cache, a runtime
reserve), per GPU of the parallel layout.

Every command that asks "does it fit" asks here: ``predict`` (a step's weights and KV),
``spec`` (target and draft weights, both KV caches), ``serve`` (how many KV blocks fit
next to the weights) and the planner. The reserve stands for what an engine needs
besides weights and KV: activations of the largest step, CUDA graphs, the allocator's
fragmentation, NCCL and cuBLAS workspaces. Its default mirrors vLLM's
``gpu_memory_utilization=0.9``. Errors name the field (``model``, ``batch``,
``reserve_fraction``); the command line maps fields to its flags.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpusim.errors import ConfigError, FieldError, bad
from gpusim.kernels.parallel import rank_kv_bytes_per_token, rank_weight_bytes
from gpusim.specs import GpuSpec, ModelSpec

DEFAULT_RESERVE_FRACTION = 0.10
GB = 1e9


@dataclass(frozen=True)
class MemoryPlan:
    """One GPU's memory for one model (bytes): capacity, reserve, weights, and what
    is left for the KV cache, which needs ``kv_bytes_per_token`` per cached token. On
    several GPUs (``tp`` x ``pp``) the fullest GPU's share; ``hint``: the smallest
    layout that fits, when this one does not."""

    gpu: str
    model: str
    hbm_capacity_bytes: float
    reserve_fraction: float
    weight_bytes: float
    kv_bytes_per_token: float
    tp: int = 1
    pp: int = 1
    hint: str = ""
    ep: int = 1

    @property
    def reserve_bytes(self) -> float:
        return self.reserve_fraction * self.hbm_capacity_bytes

    @property
    def usable_bytes(self) -> float:
        """HBM for weights and KV: capacity less the reserve."""
        return self.hbm_capacity_bytes * (1.0 - self.reserve_fraction)

    @property
    def kv_capacity_bytes(self) -> float:
        """HBM left for the KV cache (negative when the weights do not fit)."""
        return self.hbm_capacity_bytes - self.weight_bytes - self.reserve_bytes

    def kv_tokens(self) -> int:
        """Cached tokens (all sequences together) that fit next to the weights."""
        if self.kv_capacity_bytes <= 0:
            return 0
        return int(self.kv_capacity_bytes // self.kv_bytes_per_token)

    def bytes_for(self, tokens: np.ndarray | float) -> np.ndarray:
        """Weights plus the KV of ``tokens`` cached tokens (per shape)."""
        return self.weight_bytes + np.asarray(tokens, dtype=np.float64) * self.kv_bytes_per_token

    def describe(self) -> str:
        """The numbers, for error messages."""
        return (f"weights {self.weight_bytes / GB:.2f} GB + runtime reserve "
                f"{self.reserve_bytes / GB:.2f} GB ({self.reserve_fraction:.0%} of HBM) "
                f"leave {self.kv_capacity_bytes / GB:.2f} GB of "
                f"{self.hbm_capacity_bytes / GB:.2f} GB HBM for the KV cache, which needs "
                f"{self.kv_bytes_per_token / 1e6:.4f} MB per token")

    @property
    def where(self) -> str:
        """``h100-sxm``, or ``8 x h100-sxm (tp=8, pp=1, per GPU)`` (``ep=8`` too when
        experts are split)."""
        if self.tp * self.pp == 1:
            return self.gpu
        ep = f", ep={self.ep}" if self.ep > 1 else ""
        return f"{self.tp * self.pp} x {self.gpu} (tp={self.tp}, pp={self.pp}{ep}, per GPU)"

    def check_weights(self) -> None:
        """Raise ConfigError (field ``model``) when the weights leave no room at all;
        the message gives the numbers and the smallest layout that fits."""
        if self.kv_capacity_bytes <= 0:
            raise bad("", f"{self.model} does not fit on {self.where}: {self.describe()}"
                      f"{self.hint}", field="model")

    def check_tokens(self, tokens: np.ndarray, what: str = "batch") -> None:
        """Raise ConfigError (field ``what``) when ``tokens`` cached tokens (per shape)
        do not fit next to the weights; the message gives the first such shape's
        numbers and how many tokens fit."""
        self.check_weights()
        t = np.atleast_1d(np.asarray(tokens, dtype=np.float64))
        over = t * self.kv_bytes_per_token > self.kv_capacity_bytes
        if over.any():
            first = float(t[over][0])
            raise bad("", f"{first:.0f} cached tokens need "
                      f"{first * self.kv_bytes_per_token / GB:.2f} GB of KV cache on "
                      f"{self.where}, where {self.describe()} ({self.kv_tokens()} tokens fit)",
                      field=what)


def memory_plan(gpu: GpuSpec, model: ModelSpec,
                reserve_fraction: float = DEFAULT_RESERVE_FRACTION,
                extra_weight_bytes: float = 0.0,
                extra_kv_bytes_per_token: float = 0.0, tp: int = 1,
                pp: int = 1, ep: int | None = None) -> MemoryPlan:
    """``model`` on one ``gpu``, or on the fullest GPU of ``tp`` x ``pp`` (its share
    of weights and KV heads: ``kernels.parallel``; an MoE model's experts split over
    ``ep`` of them, None: the split modelled, ep = tp), with a speculative draft's
    weights and KV per token (``extra_*``: each cached token is held by target and
    draft). Raises ConfigError (field ``reserve_fraction``) for a reserve outside
    [0, 1), FieldError (``tp``, ``pp``, ``ep``) for a split the model does not allow."""
    if not 0.0 <= reserve_fraction < 1.0:
        raise bad("", "must be in [0, 1)", field="reserve_fraction", value=reserve_fraction)
    ep_ = (tp if model.is_moe else 1) if ep is None else ep
    single = tp * pp == 1 and ep_ == 1
    weights = float(model.weight_bytes) if single else rank_weight_bytes(model, tp, pp, ep_)
    kv = float(model.kv_bytes_per_token) if single else rank_kv_bytes_per_token(model, tp, pp)
    capacity = float(gpu.hbm_capacity_bytes)
    weights += extra_weight_bytes
    fits = capacity - weights - reserve_fraction * capacity > 0
    return MemoryPlan(gpu=gpu.name, model=model.name, hbm_capacity_bytes=capacity,
                      reserve_fraction=reserve_fraction, weight_bytes=weights,
                      kv_bytes_per_token=kv + extra_kv_bytes_per_token, tp=tp, pp=pp,
                      ep=ep_, hint="" if fits else _smallest_layout(gpu, model, reserve_fraction,
                                                            extra_weight_bytes))


def _smallest_layout(gpu: GpuSpec, model: ModelSpec, reserve_fraction: float,
                     extra_weight_bytes: float, most_gpus: int = 64) -> str:
    """``; the smallest layout that fits: tp=8 (8 GPUs)`` (fewest GPUs, then the least
    pipelining), or that none of up to ``most_gpus`` GPUs fits. Tensor parallelism
    stays within a node; pipeline stages may span nodes."""
    room = gpu.hbm_capacity_bytes * (1.0 - reserve_fraction)
    best: tuple[int, int, int] | None = None
    tps = [t for t in (1, 2, 4, 8, 16, 32, 64) if t <= gpu.links.node_gpus]
    for tp in tps:
        for pp in range(1, most_gpus // tp + 1):
            try:
                w = rank_weight_bytes(model, tp, pp) + extra_weight_bytes
            except FieldError:
                continue
            if w < room and (best is None or (tp * pp, pp) < (best[0], best[2])):
                best = (tp * pp, tp, pp)
                break
    if best is None:
        return f"; it fits no layout of up to {most_gpus} {gpu.name} (tp <= node size)"
    gpus, tp, pp = best
    flags = f"--tp {tp}" + (f" --pp {pp}" if pp > 1 else "") + (
        f" --ep {tp}" if model.is_moe and tp > 1 else "")
    return f"; the smallest layout that fits: tp={tp}, pp={pp} on {gpus} GPUs ({flags})"


def check_step_fits(gpu: GpuSpec, model: ModelSpec, batch: object, ctx: object,
                    q: object, tp: int = 1, pp: int = 1, ep: int | None = None) -> None:
    """Raise ConfigError when a step's weights and KV (``batch`` x (ctx + q) tokens)
    exceed the HBM of the fullest GPU of ``tp`` x ``pp`` (``ep`` as ``memory_plan``;
    no reserve: a step alone may use it all)."""
    plan = memory_plan(gpu, model, reserve_fraction=0.0, tp=tp, pp=pp, ep=ep)
    b, c, qq = (np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (batch, ctx, q))
    plan.check_tokens(b * (c + qq))


def context_overflow(model: ModelSpec, ctx: object, q: object) -> np.ndarray:
    """Indices of the shapes (``ctx``, ``q``: scalars or arrays) whose ``ctx`` + ``q``
    tokens exceed ``model``'s context window (``max_position_embeddings``); empty when
    all fit."""
    return np.flatnonzero(_tokens(ctx, q) > model.max_position_embeddings)


def check_context(model: ModelSpec, ctx: object, q: object) -> None:
    """Raise ConfigError (field ``ctx``) when a shape's ``ctx`` + ``q`` tokens exceed
    ``model``'s context window: positions beyond it were never trained (RoPE), and no
    engine serves them. The message gives both numbers."""
    over = context_overflow(model, ctx, q)
    if len(over):
        tokens = float(_tokens(ctx, q)[over[0]])
        raise bad("", f"ctx + q = {tokens:.0f} tokens exceed {model.name}'s context window "
                  f"of {model.max_position_embeddings} tokens (max_position_embeddings)",
                  field="ctx")


def _tokens(ctx: object, q: object) -> np.ndarray:
    c, qq = (np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (ctx, q))
    return np.broadcast_arrays(c, qq)[0] + qq


def fitting_model_loader(gpu: GpuSpec, load, tp: int | None = 1,  # type: ignore[no-untyped-def]
                         pp: int = 1):
    """A model resolver for ``step.rows.predict_rows``: ``load(name)``, then a check
    that its weights fit on the fullest GPU of ``tp`` x ``pp`` (``tp`` None: no check
    here; ``predict_rows`` checks each row's own layout). Its errors carry no location
    of their own where the row's line says it all (an unknown name, a model too large),
    so the row's error reads ``rows.csv:3: model: ...``; errors inside a model file
    keep that file's line."""

    def resolve(name: str) -> ModelSpec:
        try:
            model = load(name)
        except ConfigError as exc:
            if exc.source.startswith("--"):  # "--model: unknown model ...": the row says
                raise ConfigError("", exc.reason, exc.field, exc.line, exc.value,
                                  exc.has_value) from None
            raise
        if tp is not None:
            memory_plan(gpu, model, reserve_fraction=0.0, tp=tp, pp=pp).check_weights()
        return model

    return resolve
