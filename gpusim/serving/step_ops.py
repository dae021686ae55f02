"""What the serving step model tabulates, op by op (``serving.step_time`` builds its
tables from these): which of a stack's ops follow the tokens, the sequences or each
sequence's cached positions, their costs summed over many step shapes at once, and
what a padded decode's gather costs per key position.
"""

from __future__ import annotations

import numpy as np

from gpusim.platform import Platform
from gpusim.specs import ModelSpec, StackSpec
from gpusim.step import OpCost, op_costs

_EVAL_CHUNK = 16384           # shapes per vectorised cost evaluation (bounds memory)


def _cost_sum(ops: list[OpCost], keep) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(seconds, bytes, fixed seconds) of the kept ops (repeats included)."""
    n = len(ops[0].seconds)
    secs, moved, fixed = np.zeros(n), np.zeros(n), np.zeros(n)
    for op in ops:
        if keep(op):
            secs += op.seconds
            moved += op.bytes
            fixed += op.fixed_s
    return secs, moved, fixed


def evaluate_ops(model: ModelSpec, platform: Platform, mode: str, batch: np.ndarray,
              ctx: np.ndarray, q: np.ndarray, keep
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_cost_sum`` over many shapes, in slices of ``_EVAL_CHUNK`` to bound memory."""
    batch, ctx, q = np.broadcast_arrays(batch, ctx, q)
    parts = []
    for lo in range(0, len(batch), _EVAL_CHUNK):
        sl = slice(lo, lo + _EVAL_CHUNK)
        ops = op_costs(platform, model, mode, batch[sl], ctx[sl], q[sl])
        parts.append(_cost_sum(ops, keep))
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))  # type: ignore


def padding_reads(model: ModelSpec, platform: Platform, stack: StackSpec
                   ) -> dict[str, float]:
    """``padding_read_s``, ``padding_read_bytes``, ``gather_s`` and ``gather_floor_s``
    of a stack whose padded decode gathers key positions no sequence holds from one
    scratch block (``StackSpec.padding_reads_cached``): the time its gather ops (those
    that ``reads: kv_cache``) add per key position, their read share of it (what a
    padded position saves), and the stack's floor per position
    (``padded_gather_min_s_per_key`` a layer). Zero for other stacks."""
    if not (stack.padded_decode_keys and stack.padding_reads_cached):
        return {}
    ops = {op.name: op for op in stack.layer if op.op == "elementwise" and
           op.reads == "kv_cache" and op.runs_in("decode")}
    if not ops:
        return {}

    def gather(k: OpCost) -> bool:
        return k.name in ops

    # time and bytes per key position: the gather at two key lengths of a batch whose
    # gathered keys outgrow L2 (the batches where padding matters)
    rows, lo, hi = 64.0, 1023.0, 2047.0
    s, b, _ = evaluate_ops(model, platform, "decode", rows, np.array([lo, hi]), 1.0, gather)
    share = [op.read_bytes_per_element / (op.read_bytes_per_element + op.bytes_per_element)
             for op in ops.values()]
    read = sum(share) / len(share)
    per = rows * (hi - lo)
    return {"padding_read_s": float(s[1] - s[0]) / per * read,
            "padding_read_bytes": float(b[1] - b[0]) / per * read,
            "gather_s": float(s[1] - s[0]) / per,
            "gather_floor_s": stack.padded_gather_min_s_per_key * model.num_hidden_layers}


def last_position_ops(stack: StackSpec) -> set[str]:
    """Names of the stack's ops that run for the last position only in prefill (the LM
    head): tabulated per sequence, not per token."""
    return {op.name for ops in (stack.prologue, stack.layer, stack.epilogue)
            for op in ops if op.last_position_only_in_prefill}


CACHE_TENSORS = ("kv_cache", "kv_cache_expanded", "mask")


def cache_ops(stack: StackSpec) -> set[str]:
    """Names of the stack's streaming ops tabulated with attention, per sequence and
    context, not per token: those whose size follows each sequence's cached positions
    (a tensor or a read of ``kv_cache``, ``kv_cache_expanded`` or ``mask``), and those
    the stack runs in some step modes alone (``StackOp.modes``: they belong to the part
    of a step that runs in that mode, its decoding rows or a chunk)."""
    return {op.name for ops in (stack.prologue, stack.layer, stack.epilogue)
            for op in ops if op.op != "attention" and (
                op.tensor in CACHE_TENSORS or op.reads in CACHE_TENSORS
                or op.modes is not None)}
