"""Mixture-of-experts kernels: how many experts a step's tokens touch, and the expert
GEMMs that read those experts' weights.

A decode step of a dense model reads every weight; an MoE layer reads only the experts
its tokens route to, a number that grows with the tokens in the step and saturates at
all experts. With T tokens each routed to k of E experts, independently, and expert i
taken by a token with probability pi_i (its inclusion probability; sum_i pi_i = k),
the expected number of distinct experts a layer touches is

    D(T) = sum_i [1 - (1 - pi_i)^T]          (uniform routing: E [1 - (1 - k/E)^T])

by linearity of expectation over the experts: it depends on the per-token inclusion
probabilities only, not on how a token's k picks are drawn together. The skew model
(``inclusion_probabilities``) makes pi_i proportional to (i + 1)^-s over experts
ranked by popularity, capped at 1 (a token cannot pick an expert twice).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpusim.kernels.records import GemmShape, Kernel, Section
from gpusim.specs import ModelSpec
from gpusim.specs.enums import KernelKind
from gpusim.units import DTYPE_BYTES

# what an MoE op's tensor holds per step (T tokens, k picks each, E experts)
MOE_TENSORS = frozenset({"router_logits", "routing", "routed_hidden", "routed_gate_up",
                         "routed_intermediate", "experts"})
EXPERT_FAMILIES = ("grouped_mm", "fused_moe")


def inclusion_probabilities(num_experts: int, top_k: int, skew: float = 0.0) -> np.ndarray:
    """pi_i, the probability that one token routes to expert i (experts ranked by
    popularity): proportional to (i + 1)^-skew, summing to ``top_k``, none above 1
    (experts that would exceed 1 are held at 1 and the rest rescaled). Raises
    ValueError for top_k outside 1..num_experts or a negative skew."""
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k={top_k} must be in 1..num_experts={num_experts}")
    if not skew >= 0.0:
        raise ValueError(f"skew={skew} must be >= 0")
    w = np.arange(1, num_experts + 1, dtype=np.float64) ** -skew
    capped = np.zeros(num_experts, dtype=bool)
    pi = np.zeros(num_experts)
    for _ in range(num_experts):
        free = ~capped
        pi[capped] = 1.0
        pi[free] = w[free] * (top_k - capped.sum()) / w[free].sum()
        over = free & (pi > 1.0)
        if not over.any():
            break
        capped |= over  # w decreases with rank: the most popular cap first
    return np.minimum(pi, 1.0)


def expected_experts(num_experts: int, top_k: int, tokens: object, skew: float = 0.0
                     ) -> np.ndarray:
    """Expected distinct experts one layer's ``tokens`` (an array over step shapes)
    route to: sum_i 1 - (1 - pi_i)^T. Raises ValueError as inclusion_probabilities."""
    t = np.asarray(tokens, dtype=np.float64)
    if skew == 0.0:
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k={top_k} must be in 1..num_experts={num_experts}")
        return num_experts * -np.expm1(t * np.log1p(-top_k / num_experts)) \
            if top_k < num_experts else np.where(t > 0, float(num_experts), 0.0)
    pi = inclusion_probabilities(num_experts, top_k, skew)
    return np.sum(1.0 - np.power(1.0 - pi, t[..., None]), axis=-1)


def expected_row_tiles(num_experts: int, top_k: int, tokens: object, tile: object,
                       skew: float = 0.0) -> np.ndarray:
    """Expected row tiles of ``tile`` rows over one layer's experts: expert i's rows are
    Binomial(T, pi_i) (``inclusion_probabilities``), its tiles ceil(rows / tile), and
    E[ceil(X / t)] = sum_j P(X > j t), summed over the experts (the j = 0 terms are the
    expected touched experts). ``tokens`` (T) and ``tile`` are arrays over step shapes
    (or one value). Raises ValueError as inclusion_probabilities."""
    from scipy.special import betainc
    t, tl = np.broadcast_arrays(np.asarray(tokens, dtype=np.float64),
                                np.asarray(tile, dtype=np.float64))
    pi = inclusion_probabilities(num_experts, top_k, skew)
    # experts of equal probability share one term (all of them under uniform routing)
    probs, counts = np.unique(pi, return_counts=True)
    out = np.zeros(t.shape)
    for p_i, n_i in zip(probs, counts, strict=True):
        if p_i <= 0.0:
            continue
        mean = t * p_i
        # terms past mean + 10 sigma are below 1e-20
        top = np.ceil((mean + 10.0 * np.sqrt(mean * (1.0 - p_i)) + 1.0) / tl)
        j = np.arange(int(np.max(top, initial=0.0)) + 1, dtype=np.float64)
        x = j * tl[..., None]                      # rows already in j full tiles
        n = np.broadcast_to(t[..., None], x.shape)
        # P(X > x) = I_p(x + 1, n - x), the binomial's survival through the
        # regularized incomplete beta, which takes a fractional T (one rank's share of
        # the tokens under expert parallelism); 0 where x >= n
        live = (n - x > 0.0) & (j <= top[..., None])
        sf = np.where(live, betainc(x + 1.0, np.where(live, n - x, 1.0), p_i), 0.0)
        out += n_i * np.sum(sf, axis=-1)
    return out


def tensor_elements(tensor: str, model: ModelSpec, tokens: np.ndarray) -> np.ndarray:
    """Elements of an MoE tensor per step: router logits [T, E], the routing of the
    T x k token-slots [T, k], the slots' gathered hidden rows [T k, h], their gate_up
    and intermediate activations, per-expert counts [E]. Raises ValueError for another
    name or a dense model."""
    if not model.is_moe:
        raise ValueError(f"tensor {tensor!r} is an MoE tensor; {model.name} is dense")
    k, e = model.num_experts_per_tok or 0, model.num_experts
    i = model.moe_intermediate_size or 0
    slots = tokens * k
    per = {"router_logits": tokens * e, "routing": slots,
           "routed_hidden": slots * model.hidden_size, "routed_gate_up": slots * 2 * i,
           "routed_intermediate": slots * i, "experts": np.full_like(tokens, float(e))}
    if tensor not in per:
        raise ValueError(f"unknown MoE tensor {tensor!r}")
    return per[tensor]


@dataclass(frozen=True)
class ExpertGemmShape(GemmShape):
    """The expert GEMM of an MoE layer: ``m`` token-slots (T x k rows, sorted by
    expert) against ``experts`` weights [n, k] of which ``touched`` (expected, per
    step shape) receive rows; each touched expert's rows are its own GEMM problem."""

    experts: int = 0
    touched: np.ndarray | None = None
    top_k: int = 0            # experts per token (the routing, for row tiles)
    routing_skew: float = 0.0
    # every touched expert receives exactly this many rows (a balanced assignment: a
    # kernel microbenchmark's equal groups); None: the routing's random rows
    rows_per_expert: np.ndarray | None = None

    def row_tiles(self, tile: object) -> np.ndarray:
        """Expected row tiles of ``tile`` rows over the experts (``expected_row_tiles``;
        ``m`` is the slots, T x top_k), or ``touched`` x ceil(rows / tile) when each
        expert's rows are given."""
        if self.rows_per_expert is not None:
            touched = np.asarray(self.touched if self.touched is not None else self.experts,
                                 dtype=np.float64)
            return touched * np.ceil(np.asarray(self.rows_per_expert, dtype=np.float64)
                                     / np.asarray(tile, dtype=np.float64))
        # the experts this kernel holds (a rank's, under expert parallelism) and the
        # slots they receive: each expert's rows Binomial(slots / k, k / experts), the
        # same mean as the whole layer's routing
        k = max(min(self.top_k, self.experts), 1)
        tokens = np.asarray(self.m, dtype=np.float64) / k
        return expected_row_tiles(self.experts, k, tokens, tile, self.routing_skew)


def expert_nk(weight: str, model: ModelSpec) -> tuple[int, int]:
    """(n, k) of one expert's weight: gate_up [2I, h], down [h, I]."""
    h, i = model.hidden_size, model.moe_intermediate_size or 0
    return {"experts_gate_up": (2 * i, h), "experts_down": (h, i)}[weight]


def experts_kernel(name: str, weight: str, family: str, model: ModelSpec, section: Section,
                   repeat: int, tokens: np.ndarray, launches: int = 1) -> Kernel:
    """The grouped GEMM over the experts the step's ``tokens`` route to: reads each
    touched expert's weight once (quantization scales included), the slots' rows in and
    their outputs out; flops of every slot's row. Arithmetic in fp8 when both operands
    are (fp8 weights under a fused-MoE kernel), else in the activations' dtype.
    Raises ValueError for a dense model."""
    if not model.is_moe:
        raise ValueError(f"op {name!r}: expert weights on the dense model {model.name}")
    n, k = expert_nk(weight, model)
    top_k = model.num_experts_per_tok or 0
    slots = np.asarray(tokens, dtype=np.float64) * top_k
    touched = expected_experts(model.num_experts, top_k, tokens, model.routing_skew)
    w_dtype = model.quantization.weight_dtype if model.quantized(weight) else model.dtype
    dtype = "fp8" if (w_dtype == "fp8" and family == "fused_moe") else model.dtype
    x_bytes, out_bytes = DTYPE_BYTES[dtype], DTYPE_BYTES[model.dtype]
    return Kernel(name=name, kind=KernelKind.GEMM, section=section, launches=launches,
                  repeat=repeat, flops=2.0 * slots * n * k,
                  weight_bytes=touched * model.matrix_bytes(weight, n, k),
                  kv_bytes=np.zeros_like(slots),
                  act_bytes=slots * k * x_bytes + slots * n * out_bytes, dtype=dtype,
                  gemm=ExpertGemmShape(m=slots, n=n, k=k, x_dtype=dtype, w_dtype=w_dtype,
                                       family=family, experts=model.num_experts,
                                       touched=touched, top_k=top_k,
                                       routing_skew=model.routing_skew))
