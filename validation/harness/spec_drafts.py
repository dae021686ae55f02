"""Draft kinds other than a separate model, for bench_spec.py's loops.

Named in ``--pairs`` as the draft: ``eagleN`` (an EAGLE head of N decoder layers),
``medusaH`` (H Medusa-1 heads), ``ngram`` (prompt lookup on the host). Each is built
the way gpusim/speculative/drafts.py and kernels.py price it:

* EAGLE: the target's layer shapes, N layers, its own KV cache; the input is
  fc(concat(token embedding, feature)) [2h -> h]; embedding and LM head are the
  target's (shared tensors).
* Medusa: inside the verify pass, after acceptance, k heads on one hidden state per
  sequence: x + SiLU(x W1) (a GEMM h x h, two pointwise kernels), its own LM head
  (h x vocab), argmax; head i writes draft token i + 1 for the next iteration.
* n-gram: on the host before each verify: for every sequence, the longest of its last
  3, 2, 1 tokens that occurred before in its history, and the k tokens that followed
  it (a vectorised numpy search over the batch's [B, ctx] token history); the
  proposals are copied into the verify's input buffer (one H2D copy).

Weights are random; timing does not depend on which tokens are accepted. Needs only
numpy and torch.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import numpy as np
import reference
import torch
import torch.nn.functional as F
from reference import Shape

NGRAM_MAX_N = 3          # longest suffix tried first, as prompt-lookup decoding does
HISTORY_VOCAB = 64       # small alphabet: the random histories repeat their n-grams
HISTORY_SLACK = 1024     # appended tokens before the history buffer shifts back


@dataclass(frozen=True)
class DraftKind:
    """A non-model draft: kind (eagle, medusa, ngram) and its size (layers, heads)."""

    kind: str
    size: int = 0

    @property
    def label(self) -> str:
        """The draft as gpusim's ``--draft`` syntax spells it."""
        return self.kind if self.kind == "ngram" else f"{self.kind}:{self.size}"


def parse_kind(name: str) -> DraftKind | None:
    """``eagleN`` / ``medusaH`` / ``ngram`` -> DraftKind; any other name -> None (a
    model). Raises SystemExit for a size outside 1..16."""
    m = re.fullmatch(r"(eagle|medusa)(\d+)|ngram", name)
    if m is None:
        return None
    if name == "ngram":
        return DraftKind("ngram")
    size = int(m.group(2))
    if not 1 <= size <= 16:
        raise SystemExit(f"--pairs: {name}: size must be in 1..16")
    return DraftKind(m.group(1), size)


def eagle_shape(target: Shape, layers: int) -> Shape:
    """The EAGLE head's decoder: the target's layer shapes, ``layers`` of them."""
    return dataclasses.replace(target, num_hidden_layers=layers)


class EagleWeights(reference.Weights):
    """An EAGLE head: its layers and fc [h, 2h]; embedding and LM head the target's."""

    def __init__(self, target: reference.Weights, layers: int, device: str,
                 dtype: torch.dtype, seed: int = 3):
        # built with a token-sized vocabulary so the embedding and LM head, replaced below by
        # the target's, are not allocated (a 128k-vocab head is a GiB)
        small = dataclasses.replace(eagle_shape(target.shape, layers), vocab_size=8,
                                    tie_word_embeddings=True)
        super().__init__(small, device, dtype, seed)
        self.shape = eagle_shape(target.shape, layers)
        self.embed, self.lm_head = target.embed, target.lm_head      # shared
        h = target.shape.hidden_size
        g = torch.Generator(device=device).manual_seed(seed + 1)
        self.fc = (torch.randn(h, 2 * h, generator=g, device=device, dtype=torch.float32)
                   / (2 * h) ** 0.5).to(dtype)                        # [h, 2h]


class MedusaHeads:
    """``heads`` Medusa-1 heads: residual block W1 [h, h] and LM head [V, h] each."""

    def __init__(self, shape: Shape, heads: int, device: str, dtype: torch.dtype,
                 seed: int = 4):
        g = torch.Generator(device=device).manual_seed(seed)
        h, v = shape.hidden_size, shape.vocab_size

        def rnd(*size: int) -> torch.Tensor:
            return (torch.randn(*size, generator=g, device=device, dtype=torch.float32)
                    / size[-1] ** 0.5).to(dtype)

        self.w1 = [rnd(h, h) for _ in range(heads)]
        self.lm = [rnd(v, h) for _ in range(heads)]

    def run(self, hidden: torch.Tensor, tok: torch.Tensor, k: int, cut: int | None) -> None:
        """Heads 0..k-1 on hidden [B, h]: head i's argmax into tok[:, i + 1]."""
        for i in range(k):
            x = hidden + F.silu(F.linear(hidden, self.w1[i]))     # GEMM, silu, add
            logits = F.linear(x, self.lm[i])                       # [B, V]
            tok[:, i + 1].copy_(logits[:, :cut].argmax(-1))         # argmax, copy


class PromptLookup:
    """Host-side n-gram proposals from each sequence's last ``ctx`` tokens.

    The tokens sit in a buffer with room to grow, so accepting a token writes one
    column (O(batch), as an engine appends to its requests' token lists); the buffer
    shifts back once per ``HISTORY_SLACK`` iterations.
    """

    def __init__(self, batch: int, ctx: int, seed: int = 11):
        rng = np.random.default_rng(seed)
        self.window = max(ctx, NGRAM_MAX_N + 1)
        self.buffer = np.zeros((batch, self.window + HISTORY_SLACK), dtype=np.int32)
        self.buffer[:, :self.window] = rng.integers(0, HISTORY_VOCAB, (batch, self.window))
        self.end = self.window

    @property
    def history(self) -> np.ndarray:
        """[B, ctx] the tokens searched (a view)."""
        return self.buffer[:, self.end - self.window:self.end]

    def propose(self, k: int) -> np.ndarray:
        """[B, k] proposed tokens (0 where no n-gram matched or the match ran out)."""
        hist = self.history
        b, length = hist.shape
        out = np.zeros((b, k), dtype=np.int32)
        todo = np.ones(b, dtype=bool)
        for n in range(NGRAM_MAX_N, 0, -1):
            if not todo.any():
                break
            # hit[s, j]: hist[s, j:j+n] equals the last n tokens, j < length - n (never
            # the suffix itself); n shifted compares of the whole batch at once
            span = length - n
            hit = todo[:, None] & (hist[:, :span] == hist[:, span:span + 1])
            for i in range(1, n):
                hit &= hist[:, i:span + i] == hist[:, span + i:span + i + 1]
            found = hit.any(1)
            last = hit.shape[1] - 1 - np.argmax(hit[:, ::-1], axis=1)       # last match
            for s in np.flatnonzero(found):
                start = last[s] + n
                seg = hist[s, start:start + k]
                out[s, :len(seg)] = seg
            todo &= ~found
        return out

    def accept(self, tokens: np.ndarray) -> None:
        """Append one accepted token per sequence (the window keeps its length)."""
        if self.end == self.buffer.shape[1]:
            self.buffer[:, :self.window] = self.history.copy()
            self.end = self.window
        self.buffer[:, self.end] = tokens % HISTORY_VOCAB
        self.end += 1
