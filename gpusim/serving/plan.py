"""What a serving loop's step did: its plan (``ServingLoop.peek``'s prediction,
``ServingLoop.step``'s record), frozen records of request ids and token counts."""

from __future__ import annotations

from dataclasses import dataclass


class LoopStateError(RuntimeError):
    """A ``ServingLoop`` method called at the wrong time (stepping a finished run,
    summarising an unfinished one)."""


@dataclass(frozen=True)
class Chunk:
    """A prefill chunk: ``new_tokens`` of request ``rid`` after its ``cached_tokens``."""

    rid: int
    cached_tokens: int
    new_tokens: int


@dataclass(frozen=True)
class StepPlan:
    """One engine step's work and time (``peek``'s prediction, ``step``'s record).

    ``decoding`` are the requests decoding one token each (plus ``accepted_tokens``
    accepted draft tokens between them when ``speculative_k`` is set),
    ``decode_ctx_tokens`` their cached tokens in all; ``prefill`` the chunks of the
    requests catching up. ``admitted`` and ``preempted`` are the requests the
    scheduler moved out of and into the waiting queue for this step.
    """

    index: int
    start_s: float
    duration_s: float
    end_s: float
    hbm_bytes: float
    decoding: tuple[int, ...]
    decode_ctx_tokens: int
    prefill: tuple[Chunk, ...]
    speculative_k: int | None
    accepted_tokens: int
    tokens: int
    admitted: tuple[int, ...]
    preempted: tuple[int, ...]


@dataclass(frozen=True)
class StepRecord:
    """What ``step()`` did: its plan, and the requests that completed at its end
    (in admission order)."""

    plan: StepPlan
    finished: tuple[int, ...]
