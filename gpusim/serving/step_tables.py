"""The tables of the serving step-time model (``step_time.StepTimeModel``), built once
from the kernel cost model: per-token and per-sequence op costs, decode and chunk
attention over context grids, the eager formula's launches and last kernel, and the
CUDA-graph sizes a run's steps pad to (``step_time``'s module docstring says how a
step is priced from them).
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from typing import Any

import numpy as np

from gpusim.errors import FieldError
from gpusim.platform import Platform
from gpusim.serving.grids import chunk_grid, context_grid
from gpusim.serving.scenario import CUDAGRAPH_MODES
from gpusim.serving.step_ops import (
    cache_ops,
    evaluate_ops,
    last_position_ops,
    padding_reads,
)
from gpusim.specs import ModelSpec, StackSpec
from gpusim.step import OpCost, op_costs


def _rows(flat: np.ndarray, rows: int) -> list[array]:
    """Table rows as compact float arrays (8 bytes a cell, list-speed indexing)."""
    return [array("d", r.tobytes()) for r in flat.reshape(rows, -1)]


def used_capture_sizes(sizes: tuple[int, ...] | None, limit: int) -> tuple[int, ...]:
    """The capture sizes a step of up to ``limit`` rows can pad to (a decode batch:
    ``max_num_seqs``; a piecewise mixed step: ``max_num_batched_tokens``): those up to
    the first that holds ``limit`` (sorted, distinct; empty for None)."""
    out: list[int] = []
    for size in sorted(set(sizes or ())):
        out.append(size)
        if size >= limit:
            break
    return tuple(out)


def padded_size(sizes: tuple[int, ...] | list[int], n: int) -> int | None:
    """The smallest of the sorted capture ``sizes`` that holds ``n`` rows (None: none
    does, or no sizes): the size a step pads to and replays a graph of."""
    if not sizes or n > sizes[-1]:
        return None
    return sizes[bisect_left(sizes, n)]


def check_servable(stack: StackSpec) -> None:
    """Raises FieldError (field ``stack``) for a stack serving cannot price: one that
    attends every position of its static KV cache (``attends_allocated_cache``)."""
    if stack.attends_allocated_cache:
        # its steps follow a static cache's length, which no serving engine's sequence
        # sets: priced at each sequence's own context it would be the best case, silently
        raise FieldError("stack", f"stack {stack.name!r} attends every position of its "
                         "static KV cache (attention keys: allocated_cache): serving with "
                         "it is not modelled (predict and spec price it over --cache-len)")


def step_tables(platform: Platform, model: ModelSpec, max_batched_tokens: int,
                max_num_seqs: int, max_ctx_tokens: int | None,
                capture_sizes: tuple[int, ...] | None,
                cudagraph_mode: str) -> dict[str, Any]:
    """The fields of a ``StepTimeModel`` on ``platform`` up to the given limits
    (``step_time.build_step_time_model`` documents the arguments). Raises ValueError
    for a limit < 1, an unknown ``cudagraph_mode``, full_and_piecewise without
    ``capture_sizes``, or a stack whose last op is attention (the eager formula's last
    kernel); FieldError (field ``stack``) for a stack that attends its whole allocated
    cache."""
    stack, cal, launch = platform.stack, platform.calibration, platform.launch.value
    check_servable(stack)
    max_ctx = int(max_ctx_tokens or model.max_position_embeddings)
    for name, v in (("max_batched_tokens", max_batched_tokens),
                    ("max_num_seqs", max_num_seqs), ("max_ctx_tokens", max_ctx)):
        if v < 1:
            raise ValueError(f"{name}(={v}) must be >= 1")
    if cudagraph_mode not in CUDAGRAPH_MODES:
        raise ValueError(f"cudagraph_mode={cudagraph_mode!r}: one of "
                         f"{', '.join(CUDAGRAPH_MODES)}")
    piecewise = cudagraph_mode == "full_and_piecewise"
    # an engine whose mixed steps replay piecewise graphs pays its own host costs
    host = cal.host_piecewise if piecewise and cal.host_piecewise is not None else cal.host
    decode_sizes = used_capture_sizes(capture_sizes, max_num_seqs)
    if piecewise and not decode_sizes:
        raise ValueError("cudagraph_mode='full_and_piecewise' needs capture_sizes (the "
                         "sizes its graphs are captured at)")
    # piecewise: a mixed step of up to max_batched_tokens pads within every size up to
    # the first that holds them (a decode batch never reaches past max_num_seqs' size)
    sizes = used_capture_sizes(capture_sizes, max_batched_tokens) if piecewise else decode_sizes
    # a padded decode batch runs the token and per-sequence ops of its padded size
    max_seqs = max(max_num_seqs, decode_sizes[-1]) if decode_sizes else max_num_seqs
    max_tokens = max(max_batched_tokens, max_seqs)
    # ... and a piecewise mixed step the token ops of its padded size
    table_tokens = max(max_tokens, sizes[-1]) if sizes else max_tokens
    last_ops = last_position_ops(stack)
    with_attention = cache_ops(stack)
    bucket = stack.padded_decode_keys or 0

    def per_token(k: OpCost) -> bool:
        return (k.kind != "attention" and k.name not in last_ops
                and k.name not in with_attention)

    def per_seq(k: OpCost) -> bool:
        return k.kind != "attention" and k.name in last_ops

    def attention(k: OpCost) -> bool:
        return k.kind == "attention" or k.name in with_attention

    m = np.arange(1, table_tokens + 1, dtype=np.float64)
    tok_s, tok_b, _ = evaluate_ops(model, platform, "verify", 1.0, 0.0, m, per_token)
    n_all = np.arange(1, max_seqs + 1, dtype=np.float64)
    seq_s, seq_b, _ = evaluate_ops(model, platform, "prefill", n_all, 0.0, 1.0, per_seq)
    # a padded decode attends every row of its padded batch, at up to the padded keys
    n = n_all if bucket else n_all[:max_num_seqs]
    max_keys = -(-max_ctx // bucket) * bucket if bucket else 0

    ctx_grid = context_grid(max(max_ctx, max_keys))
    cg = np.asarray(ctx_grid, dtype=np.float64)
    b_flat = np.repeat(n, len(cg))
    c_flat = np.tile(cg, len(n))
    dec_s, dec_b, dec_fixed = evaluate_ops(model, platform, "decode", b_flat, c_flat, 1.0,
                                        attention)
    q_grid = chunk_grid(max_tokens)
    qg = np.asarray(q_grid, dtype=np.float64)
    q_flat = np.repeat(qg, len(cg))
    cq_flat = np.tile(cg, len(qg))
    ch_s, ch_b, ch_fixed = evaluate_ops(model, platform, "verify", 1.0, cq_flat, q_flat,
                                     attention)
    fr_s, fr_b, fr_fixed = evaluate_ops(model, platform, "prefill", 1.0, 0.0, qg,
                                     attention)
    attn_fixed = float(dec_fixed[0]) if len(dec_fixed) else 0.0

    # eager: which op launches last, and does its cost follow tokens or sequences?
    probe = op_costs(platform, model, "decode", 1, 0, 1)

    # the kernels of each part of a step (an eager step launches them all one by one; a
    # piecewise step all but its per-token ops): the per-token and last-position ops,
    # and the attention and cache ops of its decoding rows, of a fresh prompt (no cache
    # to read) and of a chunk after cached tokens
    def launched(mode: str, ctx: float, keep) -> int:
        ops = op_costs(platform, model, mode, 1, ctx, 1) if mode != "decode" else probe
        return int(sum(op.launches * op.repeat for op in ops if keep(op)))

    part_launches = {
        "token_launches": launched("decode", 0.0, per_token),
        "seq_launches": launched("decode", 0.0, per_seq),
        "decode_launches": launched("decode", 0.0, attention),
        "fresh_launches": launched("prefill", 0.0, attention),
        "chunk_launches": launched("verify", 1.0, attention),
        "parts_cat_launches": model.num_hidden_layers if stack.concat_attention_parts else 0,
        "piecewise_copy_launches": model.num_hidden_layers * stack.piecewise_copies,
    }
    tail_tok = [0.0] * (table_tokens + 1)
    tail_seq = [0.0] * (max_num_seqs + 1)
    last = next((k for k in reversed(probe) if k.launches > 0), None)
    if (launch == "eager" or sizes) and last is not None:
        if last.kind == "attention":
            raise ValueError("eager step model: a stack ending in attention is not supported")
        def only(k: OpCost) -> bool:
            return k.name == last.name

        if last.name in last_ops:
            s, _, _ = evaluate_ops(model, platform, "prefill", n, 0.0, 1.0, only)
            tail_seq = [0.0, *(s / last.launches).tolist()]
        else:
            s, _, _ = evaluate_ops(model, platform, "verify", 1.0, 0.0, m, only)
            tail_tok = [0.0, *(s / last.launches).tolist()]

    overhead = attn_fixed + (host.host_graph_launch_cost_s if launch == "graph" else 0.0)
    return dict(
        launch=launch, max_batched_tokens=max_batched_tokens, max_num_seqs=max_num_seqs,
        max_ctx_tokens=max_ctx, step_overhead_s=overhead,
        host_launch_s=host.host_launch_cost_s, **part_launches,
        token_s=[0.0, *tok_s.tolist()], token_bytes=[0.0, *tok_b.tolist()],
        seq_s=[0.0, *seq_s.tolist()], seq_bytes=[0.0, *seq_b.tolist()],
        tail_by_tokens_s=tail_tok, tail_by_seqs_s=tail_seq,
        ctx_grid=ctx_grid,
        decode_s=[array("d", bytes(8 * len(cg))), *_rows(dec_s - dec_fixed, len(n))],
        decode_bytes=[array("d", bytes(8 * len(cg))), *_rows(dec_b, len(n))],
        q_grid=q_grid,
        chunk_s=_rows(ch_s - ch_fixed, len(qg)), chunk_bytes=_rows(ch_b, len(qg)),
        fresh_s=(fr_s - fr_fixed).tolist(), fresh_bytes=fr_b.tolist(),
        capture_sizes=sizes, attention_fixed_s=attn_fixed,
        graph_launch_s=host.host_graph_launch_cost_s,
        piecewise=piecewise,
        pieces=model.num_hidden_layers + 1 if piecewise else 0,
        host_step_s=host.serving_step_host_s, host_seq_s=host.serving_seq_host_s,
        host_chunk_s=host.serving_chunk_host_s,
        host_prefill_token_s=host.serving_prefill_token_host_s,
        key_bucket_tokens=bucket, max_keys=max_keys,
        **padding_reads(model, platform, stack))
