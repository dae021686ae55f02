"""The serving engine's model runner: one packed forward step over a paged KV cache, CUDA
graphs of decode-only steps per batch size, piecewise graphs of mixed steps per token
count where asked (serve_pieces.py), greedy sampling on the device.

A step packs every scheduled token into one batch of T tokens (vLLM's layout): first
one token per decoding sequence, then each prefill chunk's tokens. The GEMMs, norms,
RoPE and MLP run once over [T, h]; attention runs per part:

* decoding sequences together: each one's keys gathered from its blocks into a padded
  [B, Hkv, K, D] (K: the longest context in the batch rounded up to ``kv_bucket_tokens``),
  the query heads of one KV head as G rows, a mask of each sequence's length
  (scaled_dot_product_attention with a boolean mask);
* each prefill chunk alone: a fresh prompt over its own keys (causal), a chunk after
  cached tokens over its gathered keys (repeated per query head) with the causal mask
  aligned to the end (reference.verify_mask).

Eager steps (mixed, or decode past the largest capture size) run SDPA without cuDNN by
default (``eager_sdpa``): FlashAttention-2 for fresh prompts and for chunks after
cached tokens (their lower-right causal bias runs FA2, profiled:
validation/data/h100-sxm/probe_2026-12-07/chunk_attention/), the memory-efficient kernel
or math only where FA2 cannot run; cuDNN's per-shape plan builds would otherwise cost
45-150 ms at every new shape.

The layer is the torch-fused stack's (fused_forward.py) op for op: fused RMSNorm, one
qkv GEMM, rotate-half RoPE, the KV write (here ``index_copy_`` into token slots), o
GEMM, add, fused RMSNorm, gate-up GEMM, silu * up, down GEMM, add; logits only for the
sampled positions (vLLM's logits indices), argmax on the device.

Decode-only steps of up to the largest capture size replay a CUDA graph captured at the
next size up (padded rows write to and read from a scratch block) and at their key
length; a graph missing at run time is captured then (counted: ``late_captures``). On
a CPU the same padded path runs eagerly, so tests cover it.

Needs torch and numpy (runs on the GPU machine, which has no gpusim installed).
"""

from __future__ import annotations

import bisect
import contextlib
import time

import numpy as np
import reference
import torch
import torch.nn.functional as F
from reference import Shape
from serve_pieces import PiecewiseGraphs, capture_pieces
from serve_step import StepInput, StepOutput
from torch.nn.attention import SDPBackend, sdpa_kernel

# eager steps' SDPA backends (graph steps keep torch's choice: their plans are built
# once, at capture)
EAGER_SDPA: dict[str, list[SDPBackend] | None] = {
    "no-cudnn": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                 SDPBackend.MATH],
    "default": None}


def _next_size(sizes: tuple[int, ...], n: int) -> int | None:
    """The smallest of the sorted ``sizes`` that holds ``n`` rows (None: none does)."""
    if not sizes or n > sizes[-1]:
        return None
    return sizes[bisect.bisect_left(sizes, n)]


class ModelRunner:
    """Weights (random, reference.Weights), the paged KV cache and the step graphs."""

    def __init__(self, shape: Shape, device: torch.device, dtype: torch.dtype,
                 block_size: int, max_model_len: int, capture_sizes: tuple[int, ...] = (),
                 kv_bucket_tokens: int = 256, seed: int = 0,
                 eager_sdpa: str = "no-cudnn", piecewise_sizes: tuple[int, ...] = ()
                 ) -> None:
        """Weights now; the KV cache with ``allocate_kv`` (sized from what is left).
        ``eager_sdpa``: ``no-cudnn`` (eager steps' SDPA from FlashAttention-2, the
        memory-efficient kernel or math, never cuDNN) or ``default`` (torch's choice);
        raises ValueError for anything else. ``piecewise_sizes``: the token counts a
        mixed step pads to and replays piecewise graphs at (serve_pieces; empty: mixed
        steps run eagerly)."""
        if eager_sdpa not in EAGER_SDPA:
            raise ValueError(f"eager_sdpa {eager_sdpa!r}: one of {', '.join(EAGER_SDPA)}")
        self.eager_sdpa = eager_sdpa
        self.shape, self.device, self.dtype = shape, device, dtype
        self.block_size = block_size
        self.w = reference.Weights(shape, str(device), dtype, seed)
        bucket = max(block_size, -(-kv_bucket_tokens // block_size) * block_size)
        self.bucket = bucket
        self.max_keys = -(-max_model_len // bucket) * bucket
        self.k = self.v = torch.empty(0)
        self.scratch_slot = 0
        self.cuda = device.type == "cuda"
        self.capture_sizes = tuple(sorted(set(capture_sizes)))
        self.piecewise_sizes = tuple(sorted(set(piecewise_sizes)))
        self._pieces: dict[int, PiecewiseGraphs] = {}
        self._graphs: dict[tuple[int, int], tuple[object, dict[str, torch.Tensor]]] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.cuda else None
        self.late_captures = 0
        self.capture_s = 0.0
        if self.cuda:
            self._t0 = torch.cuda.Event(enable_timing=True)
            self._t1 = torch.cuda.Event(enable_timing=True)

    def allocate_kv(self, num_blocks: int) -> None:
        """The paged cache: ``num_blocks`` blocks, and one scratch block past them where
        padded rows write and read. Drops any graphs (they captured the old one)."""
        slots = (num_blocks + 1) * self.block_size
        self.scratch_slot = num_blocks * self.block_size
        s = self.shape
        size = (s.num_hidden_layers, slots, s.num_key_value_heads, s.d)
        self.k = self.v = torch.empty(0)
        self._graphs.clear()
        self._pieces.clear()
        self.k = torch.zeros(size, device=self.device, dtype=self.dtype)
        self.v = torch.zeros(size, device=self.device, dtype=self.dtype)

    # --- the forward -------------------------------------------------------------------
    def _slots_of(self, tables: torch.Tensor) -> torch.Tensor:
        """Token slots [..., blocks * block_size] of block tables [..., blocks]."""
        bs = self.block_size
        offsets = torch.arange(bs, device=tables.device)
        return (tables[..., None] * bs + offsets).flatten(-2)

    def _attention(self, i: int, xq: torch.Tensor, xk: torch.Tensor, xv: torch.Tensor,
                   dec: tuple[torch.Tensor, torch.Tensor, int] | None,
                   chunks: list[tuple[int, int, int, torch.Tensor | None]],
                   chunk_backends: list[SDPBackend] | None = None) -> torch.Tensor:
        """Attention of layer ``i`` for the packed queries xq [T, H, D] (the step's own
        keys and values xk, xv [T, Hkv, D]) -> [T, H*D]. ``dec``'s rows past its real
        ones (its third item) attend with zero queries (a padded decode part);
        ``chunk_backends``: the chunks' SDPA backends (None: the caller's)."""
        s = self.shape
        h_, hkv, d = s.num_attention_heads, s.num_key_value_heads, s.d
        g = h_ // hkv
        kc, vc = self.k[i], self.v[i]                                    # [slots, Hkv, D]
        parts = []
        if dec is not None:
            key_slots, mask, real = dec                                  # [B, K], [B,1,1,K]
            b, k = key_slots.shape
            flat = key_slots.reshape(-1)
            keys = kc.index_select(0, flat).view(b, k, hkv, d).transpose(1, 2)  # [B,Hkv,K,D]
            vals = vc.index_select(0, flat).view(b, k, hkv, d).transpose(1, 2)
            q = xq[:real].reshape(real, hkv, g, d)                       # [B, Hkv, G, D]
            if b > real:
                q = torch.cat((q, q.new_zeros(b - real, hkv, g, d)))
            o = F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask)
            parts.append(o[:real].reshape(real, h_ * d))
        use = sdpa_kernel(chunk_backends) if chunk_backends else contextlib.nullcontext()
        with use:
            for start, q_len, ctx, key_slots in chunks:
                qc = xq[start:start + q_len].transpose(0, 1)[None]        # [1, H, q, D]
                if key_slots is None:   # a fresh prompt: its own keys, causal
                    keys = xk[start:start + q_len].transpose(0, 1)[None]  # [1, Hkv, q, D]
                    vals = xv[start:start + q_len].transpose(0, 1)[None]
                    o = F.scaled_dot_product_attention(qc, keys, vals, is_causal=True,
                                                       enable_gqa=True)
                else:
                    # keys repeated per query head (no enable_gqa): SDPA under a
                    # causal bias takes no GQA; FlashAttention-2 runs it (profiled:
                    # probe_2026-12-07/chunk_attention)
                    n = key_slots.shape[0]
                    keys = kc.index_select(0, key_slots).view(1, n, hkv, d).transpose(1, 2)
                    vals = vc.index_select(0, key_slots).view(1, n, hkv, d).transpose(1, 2)
                    o = F.scaled_dot_product_attention(
                        qc, keys.repeat_interleave(g, 1), vals.repeat_interleave(g, 1),
                        attn_mask=reference.verify_mask(q_len, ctx + q_len))
                parts.append(o[0].transpose(0, 1).reshape(q_len, h_ * d))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def attention_inputs(self, dec: tuple[torch.Tensor, torch.Tensor] | None,
                         chunks: list[tuple[int, int, int, torch.Tensor | None]],
                         dec_rows: int | None = None):
        """What ``_attention`` takes, once for every layer: the decoding sequences'
        key slots and length mask from their block tables [B, K / block size] and key
        counts [B] (``dec_rows``: how many of the B rows are real; default all); each
        chunk's key slots from its block table (None: fresh)."""
        if dec is not None:
            tables, lens = dec
            key_slots = self._slots_of(tables)                           # [B, K]
            keys = torch.arange(key_slots.shape[1], device=lens.device)
            dec = (key_slots, (keys[None, :] < lens[:, None])[:, None, None, :],
                   key_slots.shape[0] if dec_rows is None else dec_rows)
        chunks = [(start, q, ctx, None if table is None else self._slots_of(table)[:ctx + q])
                  for start, q, ctx, table in chunks]
        return dec, chunks

    def embed(self, tokens: torch.Tensor, positions: torch.Tensor):
        """x [T, h] and the RoPE tables cos, sin [T, 1, D] of the packed tokens."""
        w = self.w
        x = F.embedding(tokens, w.embed)                                 # [T, h]
        freqs = positions[:, None].float() * w.inv_freq[None, :]          # [T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        return x, emb.cos().to(x.dtype)[:, None], emb.sin().to(x.dtype)[:, None]

    def pre_attention(self, i: int, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                      slots: torch.Tensor):
        """Layer ``i`` up to attention: norm, qkv, RoPE, the new K and V written to
        their slots; -> xq [T, H, D], xk, xv [T, Hkv, D]."""
        s, lw = self.shape, self.w.layers[i]
        h_, hkv, d, t = s.num_attention_heads, s.num_key_value_heads, s.d, x.shape[0]
        qkv = F.linear(F.rms_norm(x, (x.shape[-1],), lw["norm1"], s.rms_norm_eps),
                       lw["wqkv"])
        xq = reference.apply_rope(qkv[:, :h_ * d].view(t, h_, d), cos, sin)
        xk = reference.apply_rope(qkv[:, h_ * d:(h_ + hkv) * d].view(t, hkv, d), cos, sin)
        xv = qkv[:, (h_ + hkv) * d:].view(t, hkv, d)
        self.k[i].index_copy_(0, slots, xk)
        self.v[i].index_copy_(0, slots, xv)
        return xq, xk, xv

    def post_attention(self, i: int, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Layer ``i`` from its attention output attn [T, H*D]: o GEMM, add, norm, MLP,
        add; -> the layer's output [T, h]."""
        s, lw = self.shape, self.w.layers[i]
        x = x + F.linear(attn, lw["wo"])
        gate, up = F.linear(F.rms_norm(x, (x.shape[-1],), lw["norm2"], s.rms_norm_eps),
                            lw["wgu"]).chunk(2, -1)
        return x + F.linear(F.silu(gate) * up, lw["wd"])

    def logits_argmax(self, x: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """Next tokens [S]: the final norm and LM head over the sampled rows, argmax."""
        x = F.rms_norm(x.index_select(0, sample), (x.shape[-1],), self.w.norm_f,
                       self.shape.rms_norm_eps)                           # [S, h]
        return F.linear(x, self.w.lm_head).argmax(-1)                     # [S]

    def _forward(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                 dec: tuple[torch.Tensor, torch.Tensor] | None,
                 chunks: list[tuple[int, int, int, torch.Tensor | None]],
                 sample: torch.Tensor) -> torch.Tensor:
        """Next tokens [S] (argmax) of the packed step; tokens/positions/slots [T];
        ``dec``: the decoding sequences' block tables [B, K / block size] and key
        counts [B]; a chunk after cached tokens: its block table."""
        dec, chunks = self.attention_inputs(dec, chunks)
        x, cos, sin = self.embed(tokens, positions)
        for i in range(len(self.w.layers)):
            xq, xk, xv = self.pre_attention(i, x, cos, sin, slots)
            x = self.post_attention(i, x, self._attention(i, xq, xk, xv, dec, chunks))
        return self.logits_argmax(x, sample)

    # --- steps -------------------------------------------------------------------------
    def key_len(self, longest: int) -> int:
        """Keys per decoding sequence for a batch whose longest has ``longest``."""
        return min(self.max_keys, -(-longest // self.bucket) * self.bucket)

    def padded_batch(self, batch: int) -> int | None:
        """The capture size a decode-only batch pads to (None: runs eagerly)."""
        return _next_size(self.capture_sizes, batch)

    def _decode_host(self, inp: StepInput, rows: int, k: int
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Block tables [rows, k / block size] (the scratch block past each one's end)
        and key counts [rows] of the decoding sequences; padded rows: one scratch key."""
        scratch = self.scratch_slot // self.block_size
        tables = np.full((rows, k // self.block_size), scratch, dtype=np.int64)
        for i, table in enumerate(inp.decode_tables):
            tables[i, :len(table)] = table
        lens = np.ones(rows, dtype=np.int64)
        lens[:len(inp.decode_keys)] = inp.decode_keys
        return tables, lens

    def _static(self, p: int, k: int) -> dict[str, torch.Tensor]:
        dev, i64 = self.device, torch.int64
        return {"tokens": torch.zeros(p, dtype=i64, device=dev),
                "positions": torch.zeros(p, dtype=i64, device=dev),
                "slots": torch.full((p,), self.scratch_slot, dtype=i64, device=dev),
                "tables": torch.full((p, k // self.block_size),
                                     self.scratch_slot // self.block_size, dtype=i64,
                                     device=dev),
                "lens": torch.ones(p, dtype=i64, device=dev),
                "sample": torch.arange(p, dtype=i64, device=dev)}

    def _run_static(self, buf: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._forward(buf["tokens"], buf["positions"], buf["slots"],
                             (buf["tables"], buf["lens"]), [], buf["sample"])

    def capture(self, p: int, k: int) -> None:
        """Capture the decode graph of ``p`` rows and ``k`` keys (CUDA; after two warm-up
        runs on a side stream, in the runner's shared memory pool)."""
        t0 = time.perf_counter()
        buf = self._static(p, k)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._run_static(buf)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            buf["out"] = self._run_static(buf)
        torch.cuda.synchronize()
        self._graphs[(p, k)] = (graph, buf)
        self.capture_s += time.perf_counter() - t0

    def capture_all(self) -> int:
        """Capture every (capture size, key length) decode graph and every piecewise
        size's pieces up front, as vLLM captures at start-up; returns how many graphs
        (none on a CPU)."""
        if not self.cuda:
            return 0
        for p in self.capture_sizes:
            for k in range(self.bucket, self.max_keys + 1, self.bucket):
                if (p, k) not in self._graphs:
                    self.capture(p, k)
        missing = tuple(p for p in self.piecewise_sizes if p not in self._pieces)
        self._pieces.update(capture_pieces(self, missing))
        return len(self._graphs) + sum(len(p.graphs) for p in self._pieces.values())

    def padded_tokens(self, tokens: int) -> int | None:
        """The piecewise size a mixed step of ``tokens`` pads to (None: runs eagerly)."""
        return _next_size(self.piecewise_sizes, tokens)

    def run(self, inp: StepInput) -> StepOutput:
        """Run one step and return its sampled tokens (a host sync: ``.tolist()``)."""
        b = len(inp.decode_tables)
        pad = self.padded_batch(b) if b and not inp.chunks else None
        k = self.key_len(max(inp.decode_keys)) if b else 0
        if pad is not None:
            tables, lens = self._decode_host(inp, pad, k)
            fill = pad - b
            host = {"tokens": inp.tokens + [0] * fill,
                    "positions": inp.positions + [0] * fill,
                    "slots": inp.slots + [self.scratch_slot] * fill,
                    "tables": tables, "lens": lens}
            if self.cuda:
                if (pad, k) not in self._graphs:
                    self.late_captures += 1
                    self.capture(pad, k)
                graph, buf = self._graphs[(pad, k)]
            else:
                graph, buf = None, self._static(pad, k)
            for name, values in host.items():
                src = torch.as_tensor(np.asarray(values, dtype=np.int64))
                buf[name].copy_(src.view(buf[name].shape), non_blocking=True)
            return self._timed(lambda: (graph.replay(), buf["out"])[1] if graph is not None
                               else self._run_static(buf), inp, "graph" if self.cuda
                               else "padded", pad, k)
        dev = self.device

        def t(values) -> torch.Tensor:
            return torch.as_tensor(np.asarray(values, dtype=np.int64)).to(dev,
                                                                         non_blocking=True)

        dec = None
        if b:
            tables, lens = self._decode_host(inp, b, k)
            dec = (t(tables), t(lens))
        chunks, start = [], b
        for ctx, q, table in inp.chunks:
            chunks.append((start, q, ctx, t(table) if ctx else None))
            start += q
        rows = self.padded_tokens(len(inp.tokens)) if inp.chunks else None
        backends = EAGER_SDPA[self.eager_sdpa]
        if rows is not None:
            if rows not in self._pieces:
                self.late_captures += int(self.cuda)
                self._pieces.update(capture_pieces(self, (rows,)))
            pieces = self._pieces[rows]
            pieces.load({"tokens": inp.tokens, "positions": inp.positions,
                         "slots": inp.slots}, len(inp.tokens))
            sample = t(inp.sample)
            # the decode part pads to its capture size and runs torch's SDPA choice
            # (cuDNN's masked kernel, as the decode graphs): capture_all built those
            # plans for every (capture size, key length); only the chunks keep the
            # eager backends
            dec_rows = (self.padded_batch(b) or b) if b else 0
            if dec_rows > b:
                tables, lens = self._decode_host(inp, dec_rows, k)
                dec = (t(tables), t(lens))

            def fn():
                return pieces.run(len(inp.tokens), *self.attention_inputs(dec, chunks, b),
                                  sample, backends)
            return self._timed(fn, inp, "piecewise", dec_rows, k, rows)
        args = (t(inp.tokens), t(inp.positions), t(inp.slots), dec, chunks, t(inp.sample))
        if backends is None:
            return self._timed(lambda: self._forward(*args), inp, "eager", b, k)
        # cuDNN builds an execution plan the first time it meets an SDPA shape (45-150 ms
        # on an H100, validation/data/h100-sxm/serve_probe_2026-12-06): every new prompt
        # length and eager decode batch would pay it, a cost no serving engine with
        # shape-agnostic attention kernels (vLLM's FlashAttention varlen) has
        with sdpa_kernel(backends):
            return self._timed(lambda: self._forward(*args), inp, "eager", b, k)

    def _timed(self, fn, inp: StepInput, launch: str, rows: int, k: int,
               padded_tokens: int = 0) -> StepOutput:
        if self.cuda:
            self._t0.record()
            out = fn()
            self._t1.record()
            tokens = out[:len(inp.sample)].tolist()                       # the host sync
            gpu_s = self._t0.elapsed_time(self._t1) / 1e3
        else:
            t0 = time.perf_counter()
            tokens = fn()[:len(inp.sample)].tolist()
            gpu_s = time.perf_counter() - t0
        return StepOutput(tokens, gpu_s, launch, rows, k, padded_tokens)
