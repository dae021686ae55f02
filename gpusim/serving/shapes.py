"""Which step shapes a serving run priced, and for how long: what its error band and
envelope check are judged on (``report.trust_outputs``).

A run prices tens of thousands of steps; the tally keeps one entry per distinct
(binned) shape, with its steps and seconds, so that the run is assessed once per
shape, never per step. A step's shape: its decoding sequences and their mean cached
tokens, its prefill chunks (how many, their mean new tokens, their mean cached tokens
before the chunk) and its speculative k. Token counts are binned to their two most
significant bits (``binned``: bins 33-50% wide whose edges fall on powers of 2, as do
the measured ranges' ends), counts of sequences and chunks are exact.

The tally is off by default (``ServingLoop(shapes=...)``): the planner's many
simulations pay nothing for it.
"""

from __future__ import annotations

from dataclasses import dataclass

SIG_BITS = 2


def binned(tokens: int) -> int:
    """``tokens`` rounded down to its ``SIG_BITS`` most significant bits (exact below
    2**SIG_BITS). Raises nothing for ints >= 0."""
    shift = tokens.bit_length() - SIG_BITS
    return tokens if shift <= 0 else (tokens >> shift) << shift


def bin_top(low: int) -> int:
    """The largest value whose ``binned`` is ``low`` (a bin's upper end)."""
    shift = low.bit_length() - SIG_BITS
    return low if shift <= 0 else low + (1 << shift) - 1


@dataclass(frozen=True)
class StepShape:
    """One binned step shape: ``decode`` sequences at ``decode_ctx`` mean cached
    tokens; ``chunks`` prefill chunks of ``chunk_tokens`` mean new tokens after
    ``chunk_ctx`` mean cached ones (0: fresh prompts); ``spec_k`` draft tokens of a
    speculative step (0: none). Token fields are bin lower ends (``bin_top``)."""

    decode: int
    decode_ctx: int
    chunks: int
    chunk_tokens: int
    chunk_ctx: int
    spec_k: int

    @property
    def mixed(self) -> bool:
        """Decoding sequences and prefill chunks in one step."""
        return self.decode > 0 and self.chunks > 0


class StepShapes:
    """Seconds and steps per distinct binned step shape of one run."""

    __slots__ = ("_tally",)

    def __init__(self) -> None:
        self._tally: dict[tuple[int, int, int, int, int, int], list] = {}

    def add(self, decode: int, decode_ctx_tokens: int,
            chunks: list[tuple[object, int, int]], spec_k: int | None, seconds: float
            ) -> None:
        """Count one step: ``decode`` sequences holding ``decode_ctx_tokens`` cached
        tokens between them, ``chunks`` as (request, cached tokens, new tokens),
        ``spec_k`` (None: not speculative), lasting ``seconds``. (``binned`` inlined:
        this runs on every step.)"""
        if decode:
            dctx = decode_ctx_tokens // decode
            shift = dctx.bit_length() - SIG_BITS
            if shift > 0:
                dctx = (dctx >> shift) << shift
        else:
            dctx = 0
        if chunks:
            n = len(chunks)
            if n == 1:
                _, cctx, cq = chunks[0]
            else:
                cctx = cq = 0
                for _, c, q in chunks:
                    cctx += c
                    cq += q
                cctx //= n
                cq //= n
            key = (decode, dctx, n, binned(cq), binned(cctx), 0)
        else:
            key = (decode, dctx, 0, 0, 0, spec_k or 0)
        hit = self._tally.get(key)
        if hit is None:
            self._tally[key] = [seconds, 1]
        else:
            hit[0] += seconds
            hit[1] += 1

    def items(self) -> list[tuple[StepShape, float, int]]:
        """(shape, seconds, steps) per distinct shape, longest total first."""
        return sorted(((StepShape(*k), v[0], int(v[1])) for k, v in self._tally.items()),
                      key=lambda r: -r[1])

    def __len__(self) -> int:
        return len(self._tally)

    @property
    def steps(self) -> int:
        return int(sum(v[1] for v in self._tally.values()))
