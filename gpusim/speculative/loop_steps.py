"""The steps of one speculative iteration, planned: which kernels each launches (the
draft's steps, the verify pass with its acceptance kernels, plain decoding's step for
the baseline), the host work before them, and the KV cache they read. Timed and
composed into an iteration by ``speculative.iteration``."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from gpusim import step as step_mod
from gpusim.platform import Platform
from gpusim.specs import ModelSpec
from gpusim.specs.enums import Mode
from gpusim.speculative import kernels as kmod
from gpusim.speculative.drafts import Draft, EagleDraft, MedusaDraft, ModelDraft, NgramDraft
from gpusim.speculative.overhead import SpecOverhead

if TYPE_CHECKING:
    from gpusim.speculative.iteration import Speculation


@dataclass(frozen=True)
class PlannedStep:
    """One launch unit of the loop: a graph replay of ``kernels`` (arrays over shapes)."""

    name: str
    role: str                 # "draft", "verify" or "decode"
    model: ModelSpec          # whose layer count the layer kernels repeat
    kernels: list[step_mod.Kernel]
    host_before_s: float | np.ndarray = 0.0   # host work before the launch, per shape


def _draft_steps(spec: Speculation, platform: Platform, b: np.ndarray, c: np.ndarray,
                 cache_len: np.ndarray | None) -> list[PlannedStep]:
    d = spec.draft
    if isinstance(d, ModelDraft):
        model, extra = d.model, None
    elif isinstance(d, EagleDraft):
        model, extra = d.head_model(spec.target), spec.target
    else:
        return []
    if platform.layout.ep > 1 and not model.is_moe:
        # a dense draft of an expert-parallel MoE target: tensor-parallel only
        platform = platform.with_layout(replace(platform.layout, ep=1))
    steps = []
    before = spec.tree.nodes_before_level()
    for level, q in enumerate(spec.tree.expanded_per_level()):
        # a level of several nodes attends under the tree's mask (each node: its
        # ancestors), which the stack may run with another attention kernel
        mode = "decode" if q == 1 else Mode.TREE
        ks = step_mod.forward_kernels(model, platform, mode, b, c + before[level], q,
                                      cache_len)
        if extra is not None:
            ks = [kmod.eagle_fc_kernel(extra, b * q), *ks]
        ks += kmod.sample_kernels(model, b * q, kmod.DRAFT_SAMPLE_LAUNCHES, "draft_sample")
        steps.append(PlannedStep(f"draft{level}", "draft", model, ks))
    return steps


def plan_iteration(spec: Speculation, platform: Platform, batch: object, ctx: object,
                   overhead: SpecOverhead | None = None, cache_len: object = None
                   ) -> list[PlannedStep]:
    """The steps of one iteration, in launch order, for every (batch, ctx) shape
    (``overhead``: the host's prompt-lookup cost, default the prior; ``cache_len``:
    positions the target's and the draft's KV caches each hold, which only a stack
    attending its whole static cache depends on: ``loop_cache``).

    Raises ValueError for an impossible shape (FieldError, field ``cache_len``, for a
    cache that cannot hold a step's keys).
    """
    b, c = np.broadcast_arrays(np.atleast_1d(np.asarray(batch, dtype=np.float64)),
                               np.atleast_1d(np.asarray(ctx, dtype=np.float64)))
    cache = loop_cache(spec, platform, b, c, cache_len)
    steps = _draft_steps(spec, platform, b, c, cache)
    n = spec.tree.nodes
    t = spec.target
    # a chain verifies under the causal mask (FA2); a tree passes its boolean mask
    mode = "verify" if spec.tree.is_chain else Mode.TREE
    ks = step_mod.forward_kernels(t, platform, mode, b, c, n, cache)
    if isinstance(spec.draft, MedusaDraft):
        ks += kmod.medusa_head_kernels(t, b, spec.k)
    ks += kmod.sample_kernels(t, b * n, 1 + kmod.VERIFY_ACCEPT_LAUNCHES, "accept")
    if not spec.tree.is_chain:
        ks.append(kmod.tree_compaction_kernel(t, b, spec.k))
    steps.append(PlannedStep("verify", "verify", t, ks,
                             host_before_s=lookup_s(spec.draft, overhead, b, c)))
    return steps


def loop_cache(spec: Speculation, platform: Platform, b: np.ndarray, c: np.ndarray,
               cache_len: object = None) -> np.ndarray | None:
    """The positions each KV cache of the loop holds, per shape: ``cache_len`` where
    given; for a stack that attends its whole static cache, by default the fewest that
    hold the verify (ctx + its tokens), one cache every step of the loop reads; else
    None (each step attends its own ctx + q)."""
    if cache_len is None:
        if not platform.stack.attends_allocated_cache:
            return None
        return c + float(spec.tree.nodes)
    return np.broadcast_to(np.asarray(cache_len, dtype=np.float64), b.shape)


def lookup_s(draft: Draft, overhead: SpecOverhead | None, b: np.ndarray, c: np.ndarray
             ) -> np.ndarray:
    """Host seconds of drafting before the verify, per shape: prompt lookup's (a fixed
    time if the draft names one, else the host's measured cost: the lookup and the
    rest of the loop's host work, ``SpecOverhead.ngram_loop_s``), 0 for other drafts."""
    if not isinstance(draft, NgramDraft):
        return np.zeros_like(b)
    if draft.lookup_s is not None:
        return np.full_like(b, draft.lookup_s)
    ov = overhead or SpecOverhead()
    return ov.ngram_lookup_s(b, c) + ov.ngram_loop_s(b)


def plan_plain(target: ModelSpec, platform: Platform, batch: object, ctx: object,
               cache_len: object = None) -> PlannedStep:
    """One step of plain decoding: the target's decode pass and greedy sampling
    (``cache_len``: as ``plan_iteration``'s)."""
    ks = step_mod.forward_kernels(target, platform, "decode", batch, ctx, 1, cache_len)
    b = np.broadcast_to(np.asarray(batch, dtype=np.float64), ks[0].flops.shape)
    ks += kmod.sample_kernels(target, b, kmod.PLAIN_SAMPLE_LAUNCHES, "sample")
    return PlannedStep("decode", "decode", target, ks)
