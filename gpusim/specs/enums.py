"""The vocabulary every layer shares: step modes, launch modes, kernel kinds.

String enums, so a member equals its value (``Mode.DECODE == "decode"``) and prints as
it. Text from files and command lines is turned into them once, where it enters
(``parse``), with the field named in the error; the layers below compare members.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from gpusim.errors import FieldError


class Mode(StrEnum):
    """What a forward step does: ``decode`` one new token per sequence, ``verify`` q new
    tokens under a causal mask (speculative decoding, chunked prefill), ``prefill`` a
    prompt from an empty cache, ``tree`` a verify under a token-tree mask (a mode of the
    kernel model, not of the rows contract)."""

    DECODE = "decode"
    VERIFY = "verify"
    PREFILL = "prefill"
    TREE = "tree"


# the modes of the predict rows contract and of measured steps.csv
ROW_MODES: tuple[Mode, ...] = (Mode.DECODE, Mode.VERIFY, Mode.PREFILL)


class Launch(StrEnum):
    """How the host issues a step: one CUDA-graph replay, or kernel by kernel (eager)."""

    GRAPH = "graph"
    EAGER = "eager"


class KernelKind(StrEnum):
    """What a kernel is, for the cost model: a GEMM, an attention kernel, a pointwise
    (elementwise) kernel, an embedding gather, or a collective between GPUs (priced by
    ``cost.collectives`` from the links)."""

    GEMM = "gemm"
    ATTENTION = "attention"
    ELEMENTWISE = "elementwise"
    EMBEDDING = "embedding"
    COLLECTIVE = "collective"


E = TypeVar("E", bound=StrEnum)


def parse(enum: type[E], value: object, field: str, allowed: tuple[E, ...] | None = None
          ) -> E:
    """``value`` as a member of ``enum`` (among ``allowed`` if given). Raises
    ValueError naming ``field``, the value and what is allowed."""
    choices = allowed if allowed is not None else tuple(enum)
    if isinstance(value, str):
        for member in choices:
            if value == member.value:
                return member
    names = ", ".join(m.value for m in choices)
    raise FieldError(field, f"{field}={value!r} must be one of {names}")
