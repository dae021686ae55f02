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
serving layer never sees kernels; ``step_tables`` builds the tables) on grids: every m
up to the token budget (and the largest size a step pads to), every n up to the
sequence limit, every decode batch size against a context grid, and a (q, ctx) grid
for chunks; lookups interpolate linearly, so a step costs a few list lookups and no
numpy. On uniform batches the result matches ``step.predict``.

Launch modes: ``graph`` adds one graph replay per step; ``eager`` takes the later of
"GPU-bound" (first launch + all GPU work) and "host-bound" (all launches + the last
kernel), the two ends of ``step.predict``'s eager formula, its launches those of the
parts the step has (``launches``: the per-token and last-position ops, and the
attention and cache ops of its decoding rows, of each fresh prompt chunk and of each
chunk after cached tokens, which differ where the stack runs ops in some modes alone:
``StackOp.modes``). With ``capture_sizes`` (vLLM's
cudagraph_capture_sizes) the platform's launch mode gives way to vLLM's CUDA-graph mode
(``cudagraph_mode``):

* ``full_decode_only``: a decode-only step of up to the largest size replays the full
  graph of the next size up (its token and per-sequence ops run for the padded batch);
  every other step runs eagerly;
* ``full_and_piecewise`` (vLLM V1's default): decode-only steps as above; a mixed step
  of T new tokens, T at most the largest size, replays piecewise graphs at T_pad, the
  next size up: its per-token ops run for T_pad rows inside num_hidden_layers + 1
  pieces (one graph replay each), while attention, cache ops and last-position ops run
  eagerly at the step's real shapes. Its time is the eager formula's two ends with
  only those ops' launches one by one: max(GPU + attention fixed + h, outside launches
  x h + pieces x graph replay + last kernel). Mixed steps above the largest size run
  eagerly.

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
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass

from gpusim.platform import Platform
from gpusim.serving.grids import grid_position
from gpusim.serving.step_tables import padded_size, step_tables, used_capture_sizes
from gpusim.specs import ModelSpec

__all__ = ["StepTimeModel", "build_step_time_model", "used_capture_sizes"]


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
    capture_sizes: tuple[int, ...] = ()   # CUDA-graph sizes steps pad to (empty: none)
    attention_fixed_s: float = 0.0        # attention launches' fixed cost, once a step
    graph_launch_s: float = 0.0           # one graph replay (capture_sizes)
    piecewise: bool = False               # mixed steps replay piecewise graphs
    pieces: int = 0                       # ... replaying this many graphs
    # the kernels a step launches, by the parts it has: its per-token ops, its
    # last-position ops, and the attention and cache ops (and those the stack runs in
    # that mode alone) of its decoding rows, of each fresh prompt chunk and of each chunk
    # after cached tokens; a piecewise step launches all but the first one by one
    token_launches: int = 0
    seq_launches: int = 0
    decode_launches: int = 0
    fresh_launches: int = 0
    chunk_launches: int = 0
    # ... and with two parts or more, the concatenation of their outputs (a stack's
    # ``concat_attention_parts``); a piecewise step also its copies between pieces
    parts_cat_launches: int = 0
    piecewise_copy_launches: int = 0
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
    def _finish(self, gpu_s: float, tokens: int, seqs: int, launches: int) -> float:
        if self.launch == "graph":
            return gpu_s + self.step_overhead_s
        h = self.host_launch_s
        tail = self.tail_by_tokens_s[tokens] + self.tail_by_seqs_s[seqs]
        return max(gpu_s + self.step_overhead_s + h, launches * h + tail)

    def _eager(self, gpu_s: float, tokens: int, seqs: int, launches: int) -> float:
        """An eagerly launched step (``_finish``'s eager formula, no graph replay)."""
        h = self.host_launch_s
        tail = self.tail_by_tokens_s[tokens] + self.tail_by_seqs_s[seqs]
        return max(gpu_s + self.attention_fixed_s + h, launches * h + tail)

    def outside_launches(self, decode_batch: int, chunks: Iterable[tuple[int, int]]
                         ) -> int:
        """Launches a piecewise step of ``decode_batch`` decoding rows and prefill
        ``chunks`` of (q, ctx) makes outside its graphs, its copies between them aside:
        its last-position ops, the attention of the parts it has and, with two parts or
        more, their concatenation (profiled on the serving harness, Llama 3.2 1B: 2
        kernels a layer with a fresh prompt alone, its attention and the copy into the
        next piece; about 10 with decoding rows beside it)."""
        chunks = list(chunks)
        parts = len(chunks) + (1 if decode_batch else 0)
        return (self.seq_launches + (self.decode_launches if decode_batch else 0)
                + sum(self.chunk_launches if ctx else self.fresh_launches
                      for _, ctx in chunks)
                + (self.parts_cat_launches if parts > 1 else 0))

    def launches(self, decode_batch: int, chunks: Iterable[tuple[int, int]] = ()) -> int:
        """Kernels an eager step of ``decode_batch`` decoding rows and prefill ``chunks``
        of (q, ctx) launches: its per-token ops and every part's (``outside_launches``)."""
        return self.token_launches + self.outside_launches(decode_batch, chunks)

    def _piecewise(self, gpu_s: float, tokens: int, seqs: int, launches: int) -> float:
        """A mixed step replaying piecewise graphs: the eager formula's two ends, with
        only the ``launches`` outside the graphs one by one and one replay a piece.
        (The last launch, after the graphs as vLLM samples, at the real rows.)"""
        h = self.host_launch_s
        tail = self.tail_by_tokens_s[tokens] + self.tail_by_seqs_s[seqs]
        return max(gpu_s + self.attention_fixed_s + h,
                   launches * h + self.pieces * self.graph_launch_s + tail)

    def padded_tokens(self, tokens: int) -> int | None:
        """The captured size a mixed step of ``tokens`` new tokens replays piecewise
        graphs at (None: it runs eagerly: not piecewise, or above the largest size)."""
        return padded_size(self.capture_sizes, tokens) if self.piecewise else None

    def padded_batch(self, batch: int) -> int | None:
        """The captured size a decode-only step of ``batch`` replays (None: eager)."""
        return padded_size(self.capture_sizes, batch)

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
            t = (self._eager(gpu, batch, batch, self.launches(batch)) if pad is None
                 else gpu + self.attention_fixed_s + self.graph_launch_s)
            return self._host(t, batch), moved
        gpu = self.token_s[batch] + self.seq_s[batch] + row[i] + f * (row[i + 1] - row[i])
        moved = (self.token_bytes[batch] + self.seq_bytes[batch]
                 + brow[i] + f * (brow[i + 1] - brow[i]))
        if self.launch == "graph":
            return self._host(gpu + self.step_overhead_s, batch), moved
        return self._host(self._finish(gpu, batch, batch, self.launches(batch)), batch), moved

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
            t = self._eager(gpu, batch, batch, self.launches(batch))
        else:
            t = self._finish(gpu, batch, batch, self.launches(batch))
        return self._host(t, batch), moved

    def step(self, decode_batch: int, decode_ctx_sum: float,
             chunks: Iterable[tuple[int, int]], longest: int = 0) -> tuple[float, float]:
        """(seconds, bytes) of a mixed step: ``decode_batch`` decoding sequences with
        ``decode_ctx_sum`` cached tokens in all (the longest ``longest``: read only
        when the stack pads its decode keys), plus prefill ``chunks`` of (q, ctx).
        Piecewise (``padded_tokens``; with chunks, as a decode-only batch replays a
        full graph, ``decode_step``): the per-token ops at the padded size, and a stack
        that pads its decode keys runs the decode part at its capture size too (the
        rows its decode graphs run: the serving harness reuses their attention plans)."""
        chunks = list(chunks)
        tokens = decode_batch + sum(q for q, _ in chunks)
        seqs = decode_batch + len(chunks)
        pad = self.padded_tokens(tokens) if chunks else None
        gpu = 0.0
        moved = 0.0
        if decode_batch:
            if self.key_bucket_tokens:
                dec_rows = ((self.padded_batch(decode_batch) or decode_batch)
                            if pad is not None else decode_batch)
                gpu, moved = self.padded_attention(dec_rows, decode_batch, decode_ctx_sum,
                                                   longest)
            else:
                gpu, moved = self.decode_attention(decode_batch,
                                                   decode_ctx_sum / decode_batch)
        for q, ctx in chunks:
            s, b = self.chunk_attention(q, ctx)
            gpu += s
            moved += b
        rows = tokens if pad is None else pad
        gpu += self.token_s[rows] + self.seq_s[seqs]
        moved += self.token_bytes[rows] + self.seq_bytes[seqs]
        chunks_n, prefill = seqs - decode_batch, tokens - decode_batch
        if pad is not None:
            t = self._piecewise(gpu, tokens, seqs, self.outside_launches(decode_batch, chunks)
                                + self.piecewise_copy_launches)
        elif self.capture_sizes:
            t = self._eager(gpu, tokens, seqs, self.launches(decode_batch, chunks))
        else:
            t = self._finish(gpu, tokens, seqs, self.launches(decode_batch, chunks))
        return self._host(t, seqs, chunks_n, prefill), moved


def build_step_time_model(platform: Platform, model: ModelSpec,
                          max_batched_tokens: int = 8192, max_num_seqs: int = 256,
                          max_ctx_tokens: int | None = None,
                          capture_sizes: tuple[int, ...] | None = None,
                          cudagraph_mode: str = "full_decode_only") -> StepTimeModel:
    """Tabulate the step-time model on ``platform`` up to the given limits.

    ``max_ctx_tokens`` defaults to the model's context window; ``capture_sizes``: the
    CUDA-graph sizes (vLLM's cudagraph_capture_sizes; None: none) and
    ``cudagraph_mode`` what runs as graphs (``full_decode_only``: decode-only steps;
    ``full_and_piecewise``: mixed steps too, piecewise; see the module docstring).
    Raises ValueError for a limit < 1, an unknown mode, or full_and_piecewise without
    capture sizes.
    """
    return StepTimeModel(**step_tables(platform, model, max_batched_tokens, max_num_seqs,
                                       max_ctx_tokens, capture_sizes, cudagraph_mode))
