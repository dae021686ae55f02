"""What one serving-engine step hands the model runner (serve_model.py) and what it gets
back.

Needs the standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StepInput:
    """One step's tokens, in packed order: ``decode`` sequences' tokens first, then the
    chunks'. Per decoding sequence its block table and key count (cached + this one);
    per chunk (cached tokens, new tokens, block table). ``sample``: packed indices whose
    next token is sampled."""

    tokens: list[int]
    positions: list[int]
    slots: list[int]
    decode_tables: list[list[int]] = field(default_factory=list)
    decode_keys: list[int] = field(default_factory=list)
    chunks: list[tuple[int, int, list[int]]] = field(default_factory=list)
    sample: list[int] = field(default_factory=list)


@dataclass
class StepOutput:
    tokens: list[int]        # sampled, one per ``sample`` index
    gpu_s: float             # CUDA events around the forward (CPU: its wall time)
    launch: str              # graph | piecewise | eager | padded (graph path run eagerly: CPU)
    padded_batch: int        # rows the decode part ran (0: no decode)
    key_len: int             # keys per decoding sequence (padded)
    padded_tokens: int = 0   # rows a piecewise mixed step ran (0: not piecewise)
