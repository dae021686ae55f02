# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Speculative decoding: where it stops paying
#
# A draft proposes k tokens; the target verifies k + 1 positions in one pass. With
# acceptance rate a, a chain yields (1 - a^(k+1)) / (1 - a) tokens per iteration. It
# pays while a verify pass costs about as much as one decode step, that is while the
# target is memory-bound. As the batch grows the target turns compute-bound and the
# k + 1 positions cost k + 1 times as much: speculation stops paying. At long context
# the KV reads keep the target memory-bound for longer, but the verify pass reads them
# too, with its own attention kernel: the last section shows what that costs.
#
# Llama 3.1 8B with a Llama 3.2 1B draft on an H100, chains of k = 1..8 (the best k per
# point), acceptance 0.6-0.9, context 1k-16k, batch 1-256.

# %%
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gpusim.io import calibrations, loader
from gpusim.io.overhead import load_overhead
from gpusim.platform import Platform
from gpusim.speculative import IidAcceptance, parse_draft
from gpusim.speculative import sweep as spec_sweep

GPU, TARGET, DRAFT = "h100-sxm", "llama-3.1-8b", "llama-3.2-1b"
ACCEPTANCES = [0.6, 0.7, 0.8, 0.9]
CTXS = [1024, 4096, 16384]
BATCHES = [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256]

gpu, stack = loader.load_gpu(GPU), loader.load_stack()
plat = Platform(gpu, stack, calibrations.load_calibration("auto", gpu, stack))
overhead = load_overhead("auto", gpu)        # host round trip per iteration
target = loader.load_model(TARGET)
draft = parse_draft(DRAFT, loader.load_model)
accs = [IidAcceptance(a) for a in ACCEPTANCES]
result = spec_sweep.sweep(plat, overhead, target, draft, accs,
                          spec_sweep.SweepGrid(BATCHES, CTXS, range(1, 9),
                                               max_dense_batch=256))
best = result.best
print(f"{len(result.rows)} (acceptance, ctx, batch, k) points; host round trip "
      f"{overhead.host_round_trip_s * 1e6:.0f} us ({overhead.fitted_on})")


def curve(acceptance: str, ctx: int, key: str = "speedup") -> list[float]:
    """The best-k figure ``key`` against batch for one acceptance and context."""
    return [r[key] for r in best if r["acceptance"] == acceptance and r["ctx"] == ctx]


labels = [a.label for a in accs]

# %% [markdown]
# ## Speedup against batch
#
# Left: each acceptance rate at 4k tokens of context. Right: each context at
# acceptance 0.8. Above 1 speculation pays; the best k shrinks as the batch grows.

# %%
fig = make_subplots(rows=1, cols=2, shared_yaxes=True, subplot_titles=(
    "by acceptance (ctx 4096)", "by context (acceptance 0.8)"))
for label in labels:
    fig.add_trace(go.Scatter(x=BATCHES, y=curve(label, 4096), name=label,
                             customdata=curve(label, 4096, "best_k"),
                             hovertemplate="batch %{x}: %{y:.2f}x (k=%{customdata})"), 1, 1)
a08 = next(label for label, a in zip(labels, ACCEPTANCES, strict=True) if a == 0.8)
for ctx in CTXS:
    fig.add_trace(go.Scatter(x=BATCHES, y=curve(a08, ctx), name=f"ctx {ctx}",
                             line={"dash": "dot"}), 1, 2)
fig.add_hline(y=1.0, line={"color": "grey", "dash": "dash"})
fig.update_xaxes(type="log", title_text="batch")
fig.update_yaxes(title_text="speedup over plain decoding", col=1)
fig.update_layout(height=450, title=f"{TARGET} + {DRAFT} draft on {GPU}: best-k speedup")
fig.show()

# %% [markdown]
# ## Where it stops paying
#
# The break-even batch (every batch from 1 to 256 searched): the smallest batch at which
# even the best k is slower than plain decoding. Blank: it pays at every batch searched.

# %%
z = [[next(r["break_even_batch"] for r in result.break_even
           if r["acceptance"] == label and r["ctx"] == ctx) for ctx in CTXS]
     for label in labels]
fig = go.Figure(go.Heatmap(z=z, x=[f"ctx {c}" for c in CTXS], y=labels,
                           colorscale="Viridis", colorbar={"title": "batch"},
                           text=[[str(v) if v else "pays" for v in row] for row in z],
                           texttemplate="%{text}"))
fig.update_layout(title="Break-even batch: speculation loses from here on", height=380)
fig.show()
for r in result.break_even:
    print(f"{r['acceptance']:12s} ctx {r['ctx']:6d}: {r['verdict']} "
          f"(batch 1: {r['speedup_at_batch_1']:.2f}x with k={r['best_k_at_batch_1']})")

# %% [markdown]
# ## Why long context stops paying earlier here
#
# The textbook argument says long context keeps the target memory-bound, so speculation
# should pay to larger batches. With this stack it stops paying *earlier*. One
# iteration at acceptance 0.8, k = 4, split into its parts: the draft's k steps, the
# target's verify pass of k + 1 positions, and a plain target decode step for scale.
# At long context the verify pass costs several decode steps. Its attention kernel
# (the stack's `verify` family: FlashAttention-2, as PyTorch runs a causal verify) pads
# the k + 1 query rows to a tile of 64-128 rows and runs one CTA per query head, which
# re-reads its KV head: at 16k tokens it is compute-bound on padding (`gpusim predict
# --mode verify --batch 8 --ctx 16384 --q 5` shows about 13 TFLOP/s and 670 GB/s),
# where the decode kernel streams the same cache near full bandwidth. The draft's own
# KV reads grow with context too. Whether speculation pays at long context is a
# question about the verify kernel as much as about the roofline.

# %%
from gpusim.speculative import Speculation, TokenTree, predict_iteration  # noqa: E402

spec = Speculation(target, draft, TokenTree.chain(4), IidAcceptance(0.8))
parts = {ctx: predict_iteration(plat, overhead, spec, 8, ctx).record(0) for ctx in CTXS}
fig = go.Figure([
    go.Bar(name=name, x=[f"ctx {c}" for c in CTXS], y=[parts[c][key] for c in CTXS])
    for name, key in (("draft (k steps)", "draft_ms"), ("verify (k + 1 positions)",
                                                        "verify_ms"),
                      ("plain decode step", "target_step_ms"))])
fig.update_layout(barmode="group", yaxis_title="ms", height=400,
                  title="One iteration at batch 8 (acceptance 0.8, k = 4) against a "
                        "decode step")
fig.show()
for c in CTXS:
    r = parts[c]
    print(f"ctx {c:6d}: verify {r['verify_ms']:6.2f} ms = "
          f"{r['verify_ms'] / r['target_step_ms']:.1f} decode steps, draft "
          f"{r['draft_ms']:5.2f} ms, speedup {r['speedup']:.2f}x")

# %% [markdown]
# ## Checked on every run
#
# Speculation pays at batch 1; the speedup falls as the batch grows; a higher
# acceptance rate pays more; the verify pass costs more decode steps as context grows.

# %%
for label in labels:
    for ctx in CTXS:
        s = curve(label, ctx)
        assert s[0] > 1.0, (label, ctx)
        assert s[-1] < s[0], (label, ctx)
for ctx in CTXS:
    at_batch_1 = [curve(label, ctx)[0] for label in labels]
    assert at_batch_1 == sorted(at_batch_1)
ratios = [parts[c]["verify_ms"] / parts[c]["target_step_ms"] for c in CTXS]
assert ratios == sorted(ratios)
