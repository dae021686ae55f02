"""Piecewise CUDA graphs of mixed steps, as vLLM V1 runs them (CUDAGraphMode
FULL_AND_PIECEWISE): a step of T packed tokens (prefill chunks and decodes) pads to
the next capture size P >= T and replays, per layer boundary, a graph of everything
but attention, captured at P rows; attention runs eagerly between the pieces at the
step's real shapes (its keys differ from step to step).

Pieces of a model of L layers (L + 1 graph replays a step):

* piece 0: the embedding and RoPE tables of the P rows, layer 0 up to attention (norm,
  qkv, RoPE, the new K and V written to their slots: padded rows write the scratch
  block);
* piece i (1 <= i < L): layer i - 1 from its attention output (o GEMM, add, norm, MLP,
  add) and layer i up to attention;
* piece L: the last layer from its attention output.

Attention of layer i reads piece i's q, k, v (its real rows only) and writes its output
into the static [P, H*D] buffer piece i + 1 reads (padded rows keep zeros: no real row
reads them: every op of a piece is row-wise). The final norm, LM head and argmax run
eagerly on the sampled rows only (vLLM computes logits outside its graphs too).

On a CPU the same pieces run as plain calls (tests cover the path).

Needs torch (runs on the GPU machine, which has no gpusim installed).
"""

from __future__ import annotations

import time

import numpy as np
import torch


class PiecewiseGraphs:
    """The pieces of one padded size ``rows`` for a ``serve_model.ModelRunner``."""

    def __init__(self, runner, rows: int) -> None:
        self.runner, self.rows = runner, rows
        s, dev, i64 = runner.shape, runner.device, torch.int64
        self.buf = {"tokens": torch.zeros(rows, dtype=i64, device=dev),
                    "positions": torch.zeros(rows, dtype=i64, device=dev),
                    "slots": torch.full((rows,), runner.scratch_slot, dtype=i64,
                                        device=dev)}
        self.attn = torch.zeros(rows, s.num_attention_heads * s.d, dtype=runner.dtype,
                                device=dev)
        self.layers = len(runner.w.layers)
        self.graphs: list[torch.cuda.CUDAGraph] = []
        self.outs: list[dict[str, torch.Tensor]] = []

    def _piece(self, i: int, prev: dict[str, torch.Tensor] | None
               ) -> dict[str, torch.Tensor]:
        r, b = self.runner, self.buf
        if i == 0:
            x, cos, sin = r.embed(b["tokens"], b["positions"])
        else:
            assert prev is not None
            x, cos, sin = r.post_attention(i - 1, prev["x"], self.attn), prev["cos"], prev["sin"]
        if i == self.layers:
            return {"x": x}
        xq, xk, xv = r.pre_attention(i, x, cos, sin, b["slots"])
        return {"x": x, "cos": cos, "sin": sin, "xq": xq, "xk": xk, "xv": xv}

    def capture(self, pool) -> None:
        """Two eager warm-up passes on a side stream (attention left out), then one
        graph per piece in order, in the runner's shared pool (CUDA only)."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                prev = None
                for i in range(self.layers + 1):
                    prev = self._piece(i, prev)
        torch.cuda.current_stream().wait_stream(stream)
        prev = None
        for i in range(self.layers + 1):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                prev = self._piece(i, prev)
            self.graphs.append(graph)
            self.outs.append(prev)
        torch.cuda.synchronize()

    def load(self, host: dict[str, list[int]], real: int) -> None:
        """Copy a step's ``real`` packed tokens, positions and slots (``host``) into the
        static inputs, padded to ``rows`` (token 0 at position 0 into the scratch slot)."""
        fills = {"tokens": 0, "positions": 0, "slots": self.runner.scratch_slot}
        for name, values in host.items():
            padded = values + [fills[name]] * (self.rows - real)
            self.buf[name].copy_(torch.as_tensor(np.asarray(padded, dtype=np.int64)),
                                 non_blocking=True)

    def run(self, real: int, dec, chunks, sample: torch.Tensor,
            chunk_backends=None) -> torch.Tensor:
        """Next tokens [S] of the loaded step of ``real`` packed tokens: ``dec`` and
        ``chunks`` as ``ModelRunner.attention_inputs`` returns them, ``sample`` the
        sampled rows, ``chunk_backends`` the chunks' SDPA backends (None: torch's)."""
        r = self.runner
        prev = None
        for i in range(self.layers + 1):
            if self.graphs:
                self.graphs[i].replay()
                prev = self.outs[i]
            else:
                prev = self._piece(i, prev)
            if i < self.layers:
                out = r._attention(i, prev["xq"], prev["xk"], prev["xv"], dec, chunks,
                                   chunk_backends)
                self.attn[:real].copy_(out)
        return r.logits_argmax(prev["x"], sample)


def capture_pieces(runner, sizes: tuple[int, ...]) -> dict[int, PiecewiseGraphs]:
    """Every size's pieces (captured on CUDA; built, not captured, on a CPU); the
    capture time adds to ``runner.capture_s``."""
    t0 = time.perf_counter()
    out = {}
    for rows in sizes:
        pieces = PiecewiseGraphs(runner, rows)
        if runner.cuda:
            pieces.capture(runner._pool)
        out[rows] = pieces
    runner.capture_s += time.perf_counter() - t0
    return out
