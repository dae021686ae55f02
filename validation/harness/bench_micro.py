"""Kernel micro-benchmarks: launch, copy, elementwise, gemm, attention (micro.csv).

Every timed kernel runs inside a CUDA graph of ``R`` back-to-back calls whose inputs
rotate over enough buffers that the footprint exceeds 2.5 x L2, so each call streams
HBM; the time per call is the replay time / R (median over replays). Inputs are random.
"""

from __future__ import annotations

from collections.abc import Callable

import reference
import torch
import torch.nn.functional as F
from bench_common import Ctx
from bench_timing import capture, measure, n_slots, repeat, stats

MIN_INNER = 8      # calls per graph for the copy / elementwise sweeps
MIN_INNER_BIG = 2  # calls per graph for gemm / attention (some take milliseconds)


def _row(cx: Ctx, times: list[float], launch: str, **cols: object) -> None:
    st = stats(times, 1e6)
    cx.micro.write(launch=launch, median_us=st["median"], p10_us=st["p10"],
                    p90_us=st["p90"], repeats=st["repeats"], **cols)


def _randn(n: int | tuple[int, ...], ctx: Ctx, dtype: torch.dtype | None = None
           ) -> torch.Tensor:
    size = (n,) if isinstance(n, int) else n
    return torch.randn(size, device=ctx.device, dtype=dtype or ctx.dtype)


def _timed(ctx: Ctx, fn: Callable[[], object], inner: int) -> list[float]:
    return measure(ctx.clock, fn, ctx.policy, graph=True, inner=inner)


# ---------------------------------------------------------------------------- launch
def run_launch(ctx: Ctx) -> None:
    """(a) per kernel in a graph of N adds, (b) eager host time per launch,
    (c) one replay of a 1-kernel graph (CUDA events, and host wall time)."""
    if ctx.stop():
        return
    n = ctx.grid.launch_n
    x = _randn(1, ctx)
    y = _randn(1, ctx) * 1e-3
    ctx.log(f"micro launch: {n} adds on a 1-element tensor")
    cols = {"kind": "launch", "name": "add_1elem", "bytes": 6, "flops": 1}

    def many() -> None:
        for _ in range(n):
            x.add_(y)

    ctx.guard("micro launch graph",
              lambda: _row(ctx, _timed(ctx, many, n), ctx.graph_launch, **cols))

    def eager_many() -> None:
        many()
        ctx.clock.sync()

    ctx.guard("micro launch eager", lambda: _row(
        ctx, [t / n for t in _repeat_wall(ctx, eager_many)], "eager", **cols))

    if ctx.cuda:
        def one() -> None:
            x.add_(y)

        def replay_rows() -> None:
            g = capture(one)
            _row(ctx, repeat(ctx.clock, g.replay, ctx.policy), "graph_replay",
                 **{**cols, "name": "add_1elem_event"})
            _row(ctx, repeat(ctx.clock, g.replay, ctx.policy, timer="wall"), "graph_replay",
                 **{**cols, "name": "add_1elem_wall"})
            del g

        ctx.guard("micro launch graph_replay", replay_rows)


def _repeat_wall(ctx: Ctx, fn: Callable[[], object]) -> list[float]:
    return repeat(ctx.clock, fn, ctx.policy, timer="wall")


# ------------------------------------------------------------------------------ copy
def run_copy(ctx: Ctx) -> None:
    """dst.copy_(src), bf16, device to device; ``bytes`` = read + write."""
    sizes = ctx.grid.copy_bytes
    ctx.log(f"micro copy: {len(sizes)} sizes {sizes[0]}..{sizes[-1]} B")
    for total in sizes:
        if ctx.stop():
            return
        ctx.guard(f"micro copy {total} B", lambda total=total: _copy_one(ctx, total))


def _copy_one(ctx: Ctx, total: int) -> None:
    e = total // 4                      # bf16 elements per buffer (src and dst: total/2 B)
    slots = n_slots(total, ctx.l2_bytes, ctx.grid.slot_cap)
    if slots * total > ctx.micro_mem_bytes:
        ctx.skipped.append(f"copy {total} B: {slots * total} B over the micro memory cap")
        return
    pool = _randn(slots * 2 * e, ctx)
    pairs = [(pool[(2 * i + 1) * e:(2 * i + 2) * e], pool[2 * i * e:(2 * i + 1) * e])
             for i in range(slots)]
    inner = max(slots, MIN_INNER)

    def fn() -> None:
        for j in range(inner):
            dst, src = pairs[j % slots]
            dst.copy_(src)

    _row(ctx, _timed(ctx, fn, inner), ctx.graph_launch, kind="copy", name="d2d",
         bytes=total)


# ----------------------------------------------------------------------- elementwise
def _elem_ops() -> dict[str, tuple[int, torch.dtype | None, int, Callable]]:
    """name -> (inputs, output dtype (None: bf16), bytes per element, op(x, y, out))."""
    return {
        "mul": (2, None, 6, lambda x, y, o: torch.mul(x, y, out=o)),
        "add": (2, None, 6, lambda x, y, o: torch.add(x, y, out=o)),
        "float": (1, torch.float32, 6, lambda x, y, o: o.copy_(x)),   # == x.float()
        "rsqrt": (1, None, 4, lambda x, y, o: torch.rsqrt(x, out=o)),
    }


def run_elementwise(ctx: Ctx) -> None:
    sizes = ctx.grid.elem_sizes
    for name, spec in _elem_ops().items():
        ctx.log(f"micro elementwise {name}: {len(sizes)} sizes {sizes[0]}..{sizes[-1]}")
        for n in sizes:
            if ctx.stop():
                return
            ctx.guard(f"micro elementwise {name} {n}",
                      lambda n=n, name=name, spec=spec: _elem_one(ctx, name, spec, n))


def _elem_one(ctx: Ctx, name: str, spec: tuple, n: int) -> None:
    n_in, out_dtype, bpe, op = spec
    out_dtype = out_dtype or ctx.dtype
    slot_bytes = n * (2 * n_in + out_dtype.itemsize)
    slots = n_slots(slot_bytes, ctx.l2_bytes, ctx.grid.slot_cap)
    if slots * slot_bytes > ctx.micro_mem_bytes:
        ctx.skipped.append(f"elementwise {name} {n}: over the micro memory cap")
        return
    xs = _randn((slots, n), ctx)
    if name == "rsqrt":
        xs.abs_().add_(0.5)          # positive inputs: no NaN
    ys = _randn((slots, n), ctx) if n_in == 2 else xs
    os_ = torch.empty((slots, n), device=ctx.device, dtype=out_dtype)
    inner = max(slots, MIN_INNER)

    def fn() -> None:
        for j in range(inner):
            i = j % slots
            op(xs[i], ys[i], os_[i])

    _row(ctx, _timed(ctx, fn, inner), ctx.graph_launch, kind="elementwise", name=name,
         m=n, bytes=bpe * n, flops=n)


# ------------------------------------------------------------------------------ gemm
def gemm_pairs(ctx: Ctx) -> dict[tuple[int, int], str]:
    """(N, K) of every projection of the models -> label ``model.proj|...``."""
    out: dict[tuple[int, int], list[str]] = {}
    for model, s in ctx.models.items():
        h, hd = s.hidden_size, s.num_attention_heads * s.d
        projs = {
            "qkv": ((s.num_attention_heads + 2 * s.num_key_value_heads) * s.d, h),
            "o": (h, hd),
            "gate_up": (2 * s.intermediate_size, h),
            "down": (h, s.intermediate_size),
            "lm_head": (s.vocab_size, h),
        }
        for proj, nk in projs.items():
            out.setdefault(nk, []).append(f"{model}.{proj}")
    return {nk: "|".join(labels) for nk, labels in out.items()}


def run_gemm(ctx: Ctx) -> None:
    pairs = gemm_pairs(ctx)
    ms = ctx.grid.gemm_m
    for (n, k), label in pairs.items():
        ctx.log(f"micro gemm N={n} K={k} ({label}): M in {ms[0]}..{ms[-1]}")
        for m in ms:
            if ctx.stop():
                return
            ctx.guard(f"micro gemm {label} M={m}",
                      lambda m=m, n=n, k=k, label=label: _gemm_one(ctx, label, m, n, k))


def _gemm_one(ctx: Ctx, label: str, m: int, n: int, k: int) -> None:
    it = ctx.dtype.itemsize
    slot_bytes = it * (m * k + n * k)
    slots = n_slots(slot_bytes, ctx.l2_bytes, min(ctx.grid.slot_cap, 64))
    slots = max(1, min(slots, (ctx.micro_mem_bytes - it * m * n) // slot_bytes))
    if slot_bytes + it * m * n > ctx.micro_mem_bytes:
        ctx.skipped.append(f"gemm {label} M={m}: over the micro memory cap")
        return
    xs = [_randn((m, k), ctx) for _ in range(slots)]
    ws = [_randn((n, k), ctx) for _ in range(slots)]
    inner = max(slots, MIN_INNER_BIG)

    def fn() -> None:
        for j in range(inner):
            F.linear(xs[j % slots], ws[j % slots])

    _row(ctx, _timed(ctx, fn, inner), ctx.graph_launch, kind="gemm", name=label, m=m, n=n,
         k=k, bytes=it * (m * k + n * k + m * n), flops=2 * m * n * k)


# ------------------------------------------------------------------------- attention
def head_configs(ctx: Ctx) -> dict[tuple[int, int, int], str]:
    """(H, Hkv, D) of the models -> label."""
    out: dict[tuple[int, int, int], list[str]] = {}
    for model, s in ctx.models.items():
        out.setdefault((s.num_attention_heads, s.num_key_value_heads, s.d), []).append(model)
    return {hc: "|".join(v) for hc, v in out.items()}


def attention_shapes(ctx: Ctx) -> list[tuple[str, int, int, int]]:
    """(mode, batch, ctx, q) of the attention sweep."""
    g = ctx.grid
    out = [("decode", b, c, 1) for b in g.attn_dec_b for c in g.attn_dec_ctx]
    out += [("verify", b, c, q) for q in g.attn_ver_q for b in g.attn_ver_b
            for c in g.attn_ver_ctx]
    out += [("prefill", b, 0, q) for b, q in g.attn_pre]
    return out


def run_attention(ctx: Ctx) -> None:
    shapes = attention_shapes(ctx)
    for (h, hkv, d), label in head_configs(ctx).items():
        ctx.log(f"micro attention H={h} Hkv={hkv} D={d} ({label}): {len(shapes)} shapes")
        for mode, b, c, q in shapes:
            if ctx.stop():
                return
            ctx.guard(f"micro attention {label} {mode} b={b} ctx={c} q={q}",
                      lambda mode=mode, b=b, c=c, q=q, h=h, hkv=hkv, d=d:
                      _attn_one(ctx, mode, b, c, q, h, hkv, d))


def attn_bytes_flops(b: int, c: int, q: int, h: int, hkv: int, d: int, itemsize: int
                     ) -> tuple[int, int]:
    """KV read + Q + O bytes; 4 B H q (ctx+q) D flops (non-causal upper bound)."""
    end = c + q
    nbytes = itemsize * (2 * b * hkv * end * d + 2 * b * h * q * d)
    return nbytes, 4 * b * h * q * end * d


def _attn_one(ctx: Ctx, mode: str, b: int, c: int, q: int, h: int, hkv: int, d: int
              ) -> None:
    end = c + q
    s_max = end + 16                 # a slice of a larger static buffer, like the cache
    it = ctx.dtype.itemsize
    kv_bytes = 2 * b * hkv * s_max * d * it
    slot_bytes = kv_bytes + b * h * q * d * it
    if kv_bytes > ctx.attn_kv_bytes:
        ctx.skipped.append(f"attention {mode} b={b} ctx={c} H={h} Hkv={hkv} D={d}: KV "
                           f"{kv_bytes / 2**30:.1f} GiB")
        return
    slots = n_slots(slot_bytes, ctx.l2_bytes, min(ctx.grid.slot_cap, 64))
    slots = max(1, min(slots, ctx.attn_kv_bytes // slot_bytes))
    qs = [_randn((b, h, q, d), ctx) for _ in range(slots)]
    ks = [_randn((b, hkv, s_max, d), ctx)[:, :, :end] for _ in range(slots)]
    vs = [_randn((b, hkv, s_max, d), ctx)[:, :, :end] for _ in range(slots)]
    mask = reference.verify_mask(q, end) if mode == "verify" else None
    inner = max(slots, MIN_INNER_BIG)

    def call(i: int) -> torch.Tensor:
        # exactly as reference.forward calls SDPA
        if mode == "decode":
            return F.scaled_dot_product_attention(qs[i], ks[i], vs[i], enable_gqa=True)
        if mode == "prefill":
            return F.scaled_dot_product_attention(qs[i], ks[i], vs[i], is_causal=True,
                                                  enable_gqa=True)
        return F.scaled_dot_product_attention(qs[i], ks[i], vs[i], attn_mask=mask,
                                              enable_gqa=True)

    def fn() -> None:
        for j in range(inner):
            call(j % slots)

    nbytes, flops = attn_bytes_flops(b, c, q, h, hkv, d, it)
    _row(ctx, _timed(ctx, fn, inner), ctx.graph_launch, kind="attention", name=mode,
         batch=b, ctx=c, q=q, heads=h, kv_heads=hkv, head_dim=d, bytes=nbytes, flops=flops)

