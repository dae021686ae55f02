"""Kernel microbenchmarks (validation/data/<gpu>/micro.csv) -> kernels with measured times.

The harness times single GEMMs and SDPA calls over many shapes; each row becomes the
same ``ops.Kernel`` the step model would build, so calibration can hold the kernel
cost model to them alongside whole steps. Rows are tagged with the models whose
shapes they are, so leave-one-model-out can drop a held-out model's kernels too.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpusim.calibration.gemm_picks import gemm_owners
from gpusim.errors import bad
from gpusim.kernels import Kernel, attention_kernel, gemm_kernel
from gpusim.specs import ModelSpec, StackOp, StackSpec

DTYPE = "bf16"  # the harness measures bf16


@dataclass(frozen=True)
class MicroGroup:
    """Rows sharing one kernel shape family, with their kernel built once."""

    kernel: Kernel
    measured_s: np.ndarray
    models: frozenset[str]  # models this kernel shape belongs to


def _attention_op(stack: StackSpec) -> StackOp:
    ops = [op for op in stack.layer if op.op == "attention"]
    if not ops:
        raise ValueError(f"stack {stack.name} has no attention op")
    return ops[0]


def read_micro(path: Path, stack: StackSpec, models: Iterable[ModelSpec],
               kinds: tuple[str, ...] = ("attention",)) -> list[MicroGroup]:
    """Rows of a harness micro.csv (of the given ``kinds``: gemm, attention) as
    kernel groups.

    Calibration uses the attention rows by default: they isolate per-mode attention
    behaviour the steps alone can't separate. The GEMM rows, timed back to back on
    rotating weights, run 5-15% slower than the same GEMMs inside a step (profiled),
    so they would bias the step model.

    Raises ConfigError for a malformed file.
    """
    source = str(path)
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise bad(source, f"cannot read file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise bad(source, "file is not UTF-8 text") from None
    models = list(models)
    heads = {m.name: (m.num_attention_heads, m.num_key_value_heads, m.head_dim_eff)
             for m in models}
    attn_op = _attention_op(stack)
    gemm: dict[tuple[int, int, frozenset[str]], list[tuple[float, float]]] = {}
    attn: dict[tuple[str, int, int, int], list[tuple[float, ...]]] = {}
    for line, r in enumerate(rows, start=2):
        try:
            if r["kind"] not in kinds:
                continue
            if r["kind"] == "gemm":
                key = (int(r["n"]), int(r["k"]), gemm_owners(r["name"]))
                gemm.setdefault(key, []).append((float(r["m"]), float(r["median_us"])))
            elif r["kind"] == "attention":
                key = (r["name"], int(r["heads"]), int(r["kv_heads"]), int(r["head_dim"]))
                attn.setdefault(key, []).append((float(r["batch"]), float(r["ctx"]),
                                                 float(r["q"]), float(r["median_us"])))
        except (KeyError, ValueError) as exc:
            raise bad(source, f"malformed row: {exc}", line=line) from None
    out: list[MicroGroup] = []
    for (n, k, owners), vals in sorted(gemm.items(), key=lambda kv: (kv[0][:2], sorted(kv[0][2]))):
        m = np.array([v[0] for v in vals])
        kern = gemm_kernel(m, n, k, DTYPE, name=f"gemm_{n}x{k}")
        out.append(MicroGroup(kern, np.array([v[1] for v in vals]) * 1e-6, owners))
    for (mode, h, hkv, d), vals in sorted(attn.items()):
        b, c, q, t = (np.array(x) for x in zip(*vals, strict=True))
        kv_len = c + q
        owners = frozenset(name for name, hd in heads.items() if hd == (h, hkv, d))
        kern = attention_kernel(f"attention_{mode}_{h}_{hkv}_{d}", mode, stack.family(mode),
                                b, q, kv_len, h, hkv, d, launches=attn_op.kernels)
        out.append(MicroGroup(kern, t * 1e-6, owners))
    return out


def without_models(groups: list[MicroGroup], held_out: set[str]) -> list[MicroGroup]:
    """Groups whose shapes belong to none of ``held_out`` (shapes of unknown models
    are kept)."""
    return [g for g in groups if not (g.models and g.models <= held_out)]
