"""The few kernels a speculative loop adds to the model's forward passes.

Built as ``Kernel`` records (``step`` passes them on) so the cost model prices them
like any other:

* sampling: greedy argmax over each row of logits (reads rows x vocab logits) and a
  copy of the chosen token into the next step's input;
* acceptance: compare the target's tokens with the draft's, cumulative product, sum,
  gather the next root token, copy results for the host (tiny, fixed-cost bound);
* Medusa heads and the EAGLE fc layer (GEMMs of the target's width);
* tree KV compaction: move the accepted path's K/V to consecutive cache slots.

validation/harness/bench_spec.py launches exactly these sampling and acceptance
kernels; keep the launch counts here in step with it.
"""

from __future__ import annotations

import numpy as np

from gpusim.specs import ModelSpec
from gpusim.specs.enums import KernelKind
from gpusim.step import Kernel, gemm_kernel

DRAFT_SAMPLE_LAUNCHES = 2    # argmax, copy into the next input
PLAIN_SAMPLE_LAUNCHES = 2    # argmax, copy into the next input (plain decoding)
VERIFY_ACCEPT_LAUNCHES = 8   # eq, cast, cumprod, sum, gather, copy token, 2 result copies
TOKEN_BYTES = 8.0            # int64 token ids


def _arr(x: object) -> np.ndarray:
    return np.atleast_1d(np.asarray(x, dtype=np.float64))


def _elementwise(name: str, launches: int, elements: np.ndarray, bytes_: np.ndarray
                 ) -> Kernel:
    z = np.zeros_like(elements)
    return Kernel(name=name, kind=KernelKind.ELEMENTWISE, section="epilogue",
                  launches=launches, repeat=1, flops=elements, weight_bytes=z, kv_bytes=z,
                  act_bytes=bytes_)


def sample_kernels(model: ModelSpec, rows: object, launches: int, name: str
                   ) -> list[Kernel]:
    """Greedy sampling of ``rows`` logit rows: one argmax over the vocabulary plus
    ``launches - 1`` tiny kernels (copies, comparisons) of ``rows`` tokens each."""
    r = _arr(rows)
    logits = r * model.vocab_size
    out = [_elementwise(f"{name}_argmax", 1, logits,
                        logits * model.dtype_bytes + r * TOKEN_BYTES)]
    if launches > 1:
        out.append(_elementwise(f"{name}_tokens", launches - 1, r * (launches - 1),
                                r * (launches - 1) * 2 * TOKEN_BYTES))
    return out


def medusa_head_kernels(target: ModelSpec, batch: object, heads: int) -> list[Kernel]:
    """``heads`` Medusa-1 heads on one hidden state per sequence: residual block GEMM,
    SiLU + residual add, LM head GEMM, top-k over the vocabulary."""
    b = _arr(batch)
    h, v, dt = target.hidden_size, target.vocab_size, target.dtype
    out: list[Kernel] = []
    for i in range(heads):
        out.append(gemm_kernel(b, h, h, dt, name=f"medusa{i}_res", section="epilogue"))
        out.append(_elementwise(f"medusa{i}_act", 2, b * h, b * h * 5 * target.dtype_bytes))
        out.append(gemm_kernel(b, v, h, dt, name=f"medusa{i}_lm_head", section="epilogue"))
        out.append(_elementwise(f"medusa{i}_topk", 1, b * v, b * v * target.dtype_bytes))
    return out


def eagle_fc_kernel(target: ModelSpec, tokens: object) -> Kernel:
    """EAGLE's fc layer: concat(token embedding, target feature) [2h] -> h."""
    h = target.hidden_size
    return gemm_kernel(_arr(tokens), h, 2 * h, target.dtype, name="eagle_fc", section="prologue")


def tree_compaction_kernel(target: ModelSpec, batch: object, moved_tokens: int) -> Kernel:
    """Copy the K/V of up to ``moved_tokens`` accepted tree nodes to consecutive slots
    (read + write): a K and a V gather per layer."""
    b = _arr(batch)
    moved = b * moved_tokens * target.kv_bytes_per_token          # bytes, all layers
    return _elementwise("tree_kv_compact", 2 * target.num_hidden_layers,
                        moved / target.dtype_bytes, 2.0 * moved)
