"""Draft kinds and the ``--draft`` syntax.

* ``ModelDraft``: a separate, smaller model of the same vocabulary decodes k steps.
* ``MedusaDraft``: ``heads`` extra heads on the target (Medusa-1: each head a residual
  block hidden x hidden plus its own LM head hidden x vocab) read the target's last
  hidden state and guess tokens 1..heads ahead, inside the verify pass.
* ``EagleDraft``: an EAGLE-style autoregressive head: ``layers`` decoder layers of the
  target's width plus an fc layer (2 hidden -> hidden), sharing the target's
  embedding and LM head; it decodes k steps like a tiny draft model.
* ``NgramDraft``: prompt lookup / n-gram matching on the host, no GPU work; costs
  ``lookup_s`` of host time per iteration, or (None) the host's measured lookup cost,
  which grows with the history tokens scanned (``SpecOverhead.ngram_lookup_s``).

Parsing raises ValueError for a malformed kind; a model name goes to the loader
(ConfigError for an unknown model or a bad file).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from gpusim.specs import ModelSpec

MAX_HEADS = 16
MAX_EAGLE_LAYERS = 8

DRAFT_HELP = ("a model (name, YAML or config.json path) | medusa:H (H Medusa heads on the "
              "target, k <= H) | eagle or eagle:N (EAGLE head of N decoder layers, "
              "default 1) | ngram or ngram:US (prompt lookup: the host's measured cost, "
              "which grows with batch x ctx, or US microseconds of host time per "
              "iteration)")


@dataclass(frozen=True)
class ModelDraft:
    model: ModelSpec
    kind: str = "model"

    @property
    def label(self) -> str:
        return self.model.name


@dataclass(frozen=True)
class MedusaDraft:
    heads: int
    kind: str = "medusa"

    def __post_init__(self) -> None:
        if not 1 <= self.heads <= MAX_HEADS:
            raise ValueError(f"heads={self.heads} must be in 1..{MAX_HEADS}")

    @property
    def label(self) -> str:
        return f"medusa:{self.heads}"


@dataclass(frozen=True)
class EagleDraft:
    layers: int = 1
    kind: str = "eagle"

    def __post_init__(self) -> None:
        if not 1 <= self.layers <= MAX_EAGLE_LAYERS:
            raise ValueError(f"layers={self.layers} must be in 1..{MAX_EAGLE_LAYERS}")

    @property
    def label(self) -> str:
        return f"eagle:{self.layers}"

    def head_model(self, target: ModelSpec) -> ModelSpec:
        """The head as a ModelSpec: the target's shape with ``layers`` layers (its
        embedding and LM head are the target's, so their weights are not counted
        again; see ``extra_weight_bytes``)."""
        return target.model_copy(update={"name": f"{target.name}-eagle{self.layers}",
                                         "num_hidden_layers": self.layers})


@dataclass(frozen=True)
class NgramDraft:
    lookup_s: float | None = None   # None: the host's lookup cost (SpecOverhead)
    kind: str = "ngram"

    def __post_init__(self) -> None:
        if self.lookup_s is not None and not (0 <= self.lookup_s < 1.0):
            raise ValueError(f"lookup_s={self.lookup_s} must be in [0, 1) seconds")

    @property
    def label(self) -> str:
        return "ngram" if self.lookup_s is None else f"ngram:{self.lookup_s * 1e6:g}"


Draft = ModelDraft | MedusaDraft | EagleDraft | NgramDraft


def parse_draft(text: str, load_model: Callable[[str], ModelSpec]) -> Draft:
    """Parse the ``--draft`` syntax (DRAFT_HELP).

    Raises ValueError for a malformed kind; ``load_model``'s errors pass through.
    """
    s = text.strip()
    m = re.fullmatch(r"medusa(?::(\d+))?", s)
    if m:
        if m.group(1) is None:
            raise ValueError(f"draft={text!r}: give the number of heads, e.g. medusa:4")
        return MedusaDraft(int(m.group(1)))
    m = re.fullmatch(r"eagle(?::(\d+))?", s)
    if m:
        return EagleDraft(int(m.group(1)) if m.group(1) else 1)
    m = re.fullmatch(r"ngram(?::([0-9.eE+-]+))?", s)
    if m:
        if m.group(1) is None:
            return NgramDraft()
        try:
            us = float(m.group(1))
        except ValueError:
            raise ValueError(f"draft={text!r}: {m.group(1)!r} is not a number") from None
        return NgramDraft(us * 1e-6)
    if re.fullmatch(r"(medusa|eagle|ngram):.*", s):
        raise ValueError(f"draft={text!r} must be one of: {DRAFT_HELP}")
    return ModelDraft(load_model(s))


def kind_of(text: str) -> str:
    """The kind a ``--draft`` string names (medusa, eagle, ngram, or model for anything
    else), without loading a model or checking sizes."""
    m = re.fullmatch(r"(medusa|eagle|ngram)(?::.*)?", text.strip())
    return m.group(1) if m else "model"


def medusa_head_params(target: ModelSpec) -> int:
    """Parameters of one Medusa-1 head: residual block (h x h + bias) and LM head."""
    h = target.hidden_size
    return h * h + h + h * target.vocab_size


def extra_weight_bytes(draft: Draft, target: ModelSpec) -> float:
    """HBM bytes the draft adds on top of the target's weights."""
    dt = target.dtype_bytes
    if isinstance(draft, ModelDraft):
        return draft.model.weight_bytes
    if isinstance(draft, MedusaDraft):
        return draft.heads * medusa_head_params(target) * dt
    if isinstance(draft, EagleDraft):
        per_layer = sum(target.layer_weight_params().values())
        fc = 2 * target.hidden_size * target.hidden_size
        return (draft.layers * per_layer + fc) * dt
    return 0.0


def kv_bytes_per_token(draft: Draft, target: ModelSpec) -> float:
    """KV bytes per cached token of the draft (0 for heads without a cache)."""
    if isinstance(draft, ModelDraft):
        return draft.model.kv_bytes_per_token
    if isinstance(draft, EagleDraft):
        return 2 * draft.layers * target.kv_dim * target.dtype_bytes
    return 0.0
