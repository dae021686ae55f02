"""Step times of mixed serving batches, tabulated once from the kernel cost model.

A serving step runs some sequences decoding (one new token each, at their own
context) and some prefill chunks (q new tokens after ctx cached ones). Its kernels
split by what their cost depends on:

* per-token ops (GEMMs, norms, RoPE, residuals, embedding): the total new tokens m;
* last-position ops (the LM head): one row per sequence in the batch, n;
* attention: each sequence's (ctx, q). Decoding sequences are costed as one decode
  kernel of their count at their mean context; each prefill chunk as a batch-1
  prefill kernel (no cached context) or verify-shaped kernel (after cached context).
  The attention launches' fixed cost is paid once per step.

``build_step_time_model`` evaluates the step's per-op costs (``step.op_costs``; the
serving layer never sees kernels) on grids: every m up to the token budget, every n up
to the sequence limit, every decode batch size against a context grid, and a (q, ctx) grid
for chunks; lookups interpolate linearly, so a step costs a few list lookups and no
numpy. On uniform batches the result matches ``step.predict``.

Launch modes: ``graph`` adds one graph replay per step; ``eager`` takes the later of
"GPU-bound" (first launch + all GPU work) and "host-bound" (all launches + the last
kernel), the two ends of ``step.predict``'s eager formula. With ``capture_sizes`` (vLLM's
cudagraph_capture_sizes) a decode-only step of up to the largest size replays the graph
of the next size up (its token and per-sequence ops run for the padded batch) and every
other step runs eagerly, whatever the platform's launch mode.

A stack that pads its decode batch (``StackSpec.padded_decode_keys``: every decoding
row gathers and attends the batch's longest context rounded up to that many tokens)
prices decode attention and its ops over ``kv_cache`` tensors (the gather) at that key
length for every row it runs (the padded batch of a graph, the decoding sequences of an
eager step); callers pass the longest decoding sequence's cached tokens (``longest``).

The serving engine's own host work (scheduling, preparing inputs, reading the sampled
tokens back: ``HostParams.serving_step_host_s`` per step, ``serving_seq_host_s`` per
sequence in it, ``serving_chunk_host_s`` per prefill chunk and
``serving_prefill_token_host_s`` per prefill token) adds to every step.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from gpusim.platform import Platform
from gpusim.serving.grids import chunk_grid, context_grid, grid_position
from gpusim.serving.step_ops import (
    cache_ops,
    evaluate_ops,
    last_position_ops,
    padding_reads,
)
from gpusim.specs import ModelSpec
from gpusim.step import OpCost, op_costs


@dataclass(frozen=True)
class StepTimeModel:
    """Tabulated step-time model for one (GPU, model, stack, calibration, launch).

    All times in seconds, traffic in bytes. Build it with ``build_step_time_model``.
    Inputs beyond the tabulated limits raise IndexError (the scheduler keeps within).
    """

    launch: str
    max_batched_tokens: int
    max_num_seqs: int
    max_ctx_tokens: int
    step_overhead_s: float        # graph replay (graph) + attention fixed costs
    host_launch_s: float          # eager: host cost per launch
    launches_per_step: int
    token_s: list[float]          # [m] per-token ops
    token_bytes: list[float]
    seq_s: list[float]            # [n] last-position ops
    seq_bytes: list[float]
    tail_by_tokens_s: list[float]  # eager: the step's last launch, if per-token
    tail_by_seqs_s: list[float]    # eager: the step's last launch, if per-sequence
    ctx_grid: list[int]
    decode_s: list[array]         # [b][ctx index] decode attention (no fixed cost)
    decode_bytes: list[array]
    q_grid: list[int]
    chunk_s: list[array]          # [q index][ctx index] chunk attention (no fixed cost)
    chunk_bytes: list[array]
    fresh_s: list[float]          # [q index] attention of a chunk with no cache (prefill)
    fresh_bytes: list[float]
    capture_sizes: tuple[int, ...] = ()   # CUDA-graph decode batch sizes (empty: none)
    attention_fixed_s: float = 0.0        # attention launches' fixed cost, once a step
    graph_launch_s: float = 0.0           # one graph replay (capture_sizes)
    host_step_s: float = 0.0              # the engine's host work per step
    host_seq_s: float = 0.0               # ... and per sequence in the step
    host_chunk_s: float = 0.0             # ... per prefill chunk
    host_prefill_token_s: float = 0.0     # ... per prefill token
    key_bucket_tokens: int = 0            # padded decode keys (0: each its own context)
    max_keys: int = 0                     # ... at most (the context window rounded up)
    padding_read_s: float = 0.0           # a padded key's HBM read the gather skips
    padding_read_bytes: float = 0.0       # ... and its bytes
    gather_s: float = 0.0                 # the gather's time per key position (all layers)
    gather_floor_s: float = 0.0           # ... at least, however many are padding

    # --- attention lookups --------------------------------------------------------
    def _ctx_index(self, ctx: float) -> tuple[int, float]:
        return grid_position(self.ctx_grid, ctx)

    def decode_attention(self, batch: int, mean_ctx: float) -> tuple[float, float]:
        """(seconds, bytes) of decode attention for ``batch`` sequences at ``mean_ctx``."""
        i, f = self._ctx_index(mean_ctx)
        row, brow = self.decode_s[batch], self.decode_bytes[batch]
        return (row[i] + f * (row[i + 1] - row[i]),
                brow[i] + f * (brow[i + 1] - brow[i]))

    def chunk_attention(self, q: int, ctx: int) -> tuple[float, float]:
        """(seconds, bytes) of attention for one prefill chunk of ``q`` after ``ctx``."""
        qg = self.q_grid
        j = bisect_right(qg, q) - 1
        if j >= len(qg) - 1:
            j = len(qg) - 2
        fq = (q - qg[j]) / (qg[j + 1] - qg[j]) if len(qg) > 1 else 0.0
        if ctx == 0:  # a fresh prompt: the prefill kernel
            s, b = self.fresh_s, self.fresh_bytes
            if len(qg) == 1:
                return s[0], b[0]
            return s[j] + fq * (s[j + 1] - s[j]), b[j] + fq * (b[j + 1] - b[j])
        i, fc = self._ctx_index(ctx)
        out = []
        for table in (self.chunk_s, self.chunk_bytes):
            lo, hi = table[j], table[j + 1] if len(qg) > 1 else table[j]
            a = lo[i] + fc * (lo[i + 1] - lo[i])
            b = hi[i] + fc * (hi[i + 1] - hi[i])
            out.append(a + fq * (b - a))
        return out[0], out[1]

    # --- whole steps ----------------------------------------------------------------
    def _finish(self, gpu_s: float, tokens: int, seqs: int) -> float:
        if self.launch == "graph":
            return gpu_s + self.step_overhead_s
        h = self.host_launch_s
        tail = self.tail_by_tokens_s[tokens] + self.tail_by_seqs_s[seqs]
        return max(gpu_s + self.step_overhead_s + h, self.launches_per_step * h + tail)

    def _eager(self, gpu_s: float, tokens: int, seqs: int) -> float:
        """An eagerly launched step (``_finish``'s eager formula, no graph replay)."""
        h = self.host_launch_s
        tail = self.tail_by_tokens_s[tokens] + self.tail_by_seqs_s[seqs]
        return max(gpu_s + self.attention_fixed_s + h, self.launches_per_step * h + tail)

    def padded_batch(self, batch: int) -> int | None:
        """The captured size a decode-only step of ``batch`` replays (None: eager)."""
        sizes = self.capture_sizes
        if not sizes or batch > sizes[-1]:
            return None
        return sizes[bisect_left(sizes, batch)]

    def padded_ctx(self, longest: int) -> int:
        """The cached tokens a padded decode row is priced at: the longest decoding
        sequence's keys (``longest`` + 1) rounded up to ``key_bucket_tokens`` (at most
        ``max_keys``), less the new one."""
        bucket = self.key_bucket_tokens
        return min(-(-(longest + 1) // bucket) * bucket, self.max_keys) - 1

    def _host(self, seconds: float, seqs: int, chunks: int = 0,
              prefill_tokens: int = 0) -> float:
        return (seconds + self.host_step_s + self.host_seq_s * seqs
                + self.host_chunk_s * chunks + self.host_prefill_token_s * prefill_tokens)

    def decode_step(self, batch: int, ctx_sum: float, longest: int = 0
                    ) -> tuple[float, float]:
        """(seconds, bytes) of a decode-only step: ``batch`` sequences, ``ctx_sum``
        cached tokens between them, the longest holding ``longest`` (read only when
        the stack pads its decode keys). (``decode_attention`` inlined: the hot path.)"""
        if self.key_bucket_tokens:
            return self._padded_decode_step(batch, ctx_sum, longest)
        ctx = ctx_sum / batch
        g = self.ctx_grid
        i = bisect_right(g, ctx) - 1
        if i >= len(g) - 1:
            i = len(g) - 2
        f = (ctx - g[i]) / (g[i + 1] - g[i])
        row, brow = self.decode_s[batch], self.decode_bytes[batch]
        if self.capture_sizes:
            pad = self.padded_batch(batch)
            m = batch if pad is None else pad
            gpu = self.token_s[m] + self.seq_s[m] + row[i] + f * (row[i + 1] - row[i])
            moved = (self.token_bytes[m] + self.seq_bytes[m]
                     + brow[i] + f * (brow[i + 1] - brow[i]))
            t = (self._eager(gpu, batch, batch) if pad is None
                 else gpu + self.attention_fixed_s + self.graph_launch_s)
            return self._host(t, batch), moved
        gpu = self.token_s[batch] + self.seq_s[batch] + row[i] + f * (row[i + 1] - row[i])
        moved = (self.token_bytes[batch] + self.seq_bytes[batch]
                 + brow[i] + f * (brow[i + 1] - brow[i]))
        if self.launch == "graph":
            return self._host(gpu + self.step_overhead_s, batch), moved
        return self._host(self._finish(gpu, batch, batch), batch), moved

    def padded_attention(self, rows: int, batch: int, ctx_sum: float, longest: int
                         ) -> tuple[float, float]:
        """(seconds, bytes) of a padded decode's attention and gather: ``rows`` rows
        at the padded key length, less the reads of key positions no sequence holds
        (``batch`` sequences hold ``ctx_sum`` cached tokens and one new each) where the
        stack's gather finds them in cache (``padding_read_s`` a position)."""
        ctx = self.padded_ctx(longest)
        attn, attn_bytes = self.decode_attention(rows, ctx)
        positions = rows * (ctx + 1)
        empty = max(positions - ctx_sum - batch, 0.0)
        full = positions * self.gather_s
        gather = max(full - empty * self.padding_read_s, positions * self.gather_floor_s)
        return attn - (full - min(gather, full)), attn_bytes - empty * self.padding_read_bytes

    def _padded_decode_step(self, batch: int, ctx_sum: float, longest: int
                            ) -> tuple[float, float]:
        """``decode_step`` of a stack that pads its decode keys: every row it runs
        (the captured size a graph pads to, else the batch) at the padded key length."""
        pad = self.padded_batch(batch) if self.capture_sizes else None
        rows = batch if pad is None else pad
        attn, attn_bytes = self.padded_attention(rows, batch, ctx_sum, longest)
        gpu = self.token_s[rows] + self.seq_s[rows] + attn
        moved = self.token_bytes[rows] + self.seq_bytes[rows] + attn_bytes
        if pad is not None:
            t = gpu + self.attention_fixed_s + self.graph_launch_s
        elif self.capture_sizes:
            t = self._eager(gpu, batch, batch)
        else:
            t = self._finish(gpu, batch, batch)
        return self._host(t, batch), moved

    def step(self, decode_batch: int, decode_ctx_sum: float,
             chunks: Iterable[tuple[int, int]], longest: int = 0) -> tuple[float, float]:
        """(seconds, bytes) of a mixed step: ``decode_batch`` decoding sequences with
        ``decode_ctx_sum`` cached tokens in all (the longest ``longest``: read only
        when the stack pads its decode keys), plus prefill ``chunks`` of (q, ctx)."""
        tokens = decode_batch
        seqs = decode_batch
        gpu = 0.0
        moved = 0.0
        if decode_batch:
            gpu, moved = (self.padded_attention(decode_batch, decode_batch, decode_ctx_sum,
                                                longest) if self.key_bucket_tokens
                          else self.decode_attention(decode_batch,
                                                     decode_ctx_sum / decode_batch))
        for q, ctx in chunks:
            s, b = self.chunk_attention(q, ctx)
            gpu += s
            moved += b
            tokens += q
            seqs += 1
        gpu += self.token_s[tokens] + self.seq_s[seqs]
        moved += self.token_bytes[tokens] + self.seq_bytes[seqs]
        chunks_n, prefill = seqs - decode_batch, tokens - decode_batch
        if self.capture_sizes:
            return self._host(self._eager(gpu, tokens, seqs), seqs, chunks_n,
                              prefill), moved
        return self._host(self._finish(gpu, tokens, seqs), seqs, chunks_n, prefill), moved


# ----------------------------------------------------------------------------------
# building the tables
# ----------------------------------------------------------------------------------
def _rows(flat: np.ndarray, rows: int) -> list[array]:
    """Table rows as compact float arrays (8 bytes a cell, list-speed indexing)."""
    return [array("d", r.tobytes()) for r in flat.reshape(rows, -1)]


def used_capture_sizes(sizes: tuple[int, ...] | None, max_num_seqs: int) -> tuple[int, ...]:
    """The capture sizes a batch of up to ``max_num_seqs`` can pad to: those up to the
    first that holds ``max_num_seqs`` (sorted, distinct; empty for None)."""
    out: list[int] = []
    for size in sorted(set(sizes or ())):
        out.append(size)
        if size >= max_num_seqs:
            break
    return tuple(out)


def build_step_time_model(platform: Platform, model: ModelSpec,
                          max_batched_tokens: int = 8192, max_num_seqs: int = 256,
                          max_ctx_tokens: int | None = None,
                          capture_sizes: tuple[int, ...] | None = None) -> StepTimeModel:
    """Tabulate the step-time model on ``platform`` up to the given limits.

    ``max_ctx_tokens`` defaults to the model's context window; ``capture_sizes``: the
    CUDA-graph decode batch sizes (see the module docstring; None: none). Raises
    ValueError for a limit < 1.
    """
    stack, cal, launch = platform.stack, platform.calibration, platform.launch.value
    max_ctx = int(max_ctx_tokens or model.max_position_embeddings)
    for name, v in (("max_batched_tokens", max_batched_tokens),
                    ("max_num_seqs", max_num_seqs), ("max_ctx_tokens", max_ctx)):
        if v < 1:
            raise ValueError(f"{name}(={v}) must be >= 1")
    sizes = used_capture_sizes(capture_sizes, max_num_seqs)
    # a padded decode batch runs the token and per-sequence ops of its padded size
    max_seqs = max(max_num_seqs, sizes[-1]) if sizes else max_num_seqs
    max_tokens = max(max_batched_tokens, max_seqs)
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

    m = np.arange(1, max_tokens + 1, dtype=np.float64)
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
    launches = sum(op.launches * op.repeat for op in probe)
    tail_tok = [0.0] * (max_tokens + 1)
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

    overhead = attn_fixed + (cal.host.host_graph_launch_cost_s if launch == "graph" else 0.0)
    return StepTimeModel(
        launch=launch, max_batched_tokens=max_batched_tokens, max_num_seqs=max_num_seqs,
        max_ctx_tokens=max_ctx, step_overhead_s=overhead,
        host_launch_s=cal.host.host_launch_cost_s, launches_per_step=launches,
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
        graph_launch_s=cal.host.host_graph_launch_cost_s,
        host_step_s=cal.host.serving_step_host_s, host_seq_s=cal.host.serving_seq_host_s,
        host_chunk_s=cal.host.serving_chunk_host_s,
        host_prefill_token_s=cal.host.serving_prefill_token_host_s,
        key_bucket_tokens=bucket, max_keys=max_keys,
        **padding_reads(model, platform, stack))

