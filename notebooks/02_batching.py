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
# # Batching: where a decode step turns compute-bound
#
# Batching reuses each weight read for more tokens: the step time stays flat while the
# weights dominate the bytes, then bends up once arithmetic (or the KV cache) takes
# over. Where it bends depends on the GPU's ratio of FLOP/s to bytes/s (its ridge
# point), the model, and the context. Here: Llama 3.1 8B decode steps at 512 tokens of
# context, batch 1 to 2048, on six GPUs, predicted in closed form (vectorised over the
# whole batch range in one call per GPU).

# %%
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gpusim import capacity, step
from gpusim.io import calibrations, loader
from gpusim.platform import Platform
from gpusim.specs.enums import Mode

MODEL = "llama-3.1-8b"
GPUS = ["l40s", "a100-sxm-80gb", "h100-sxm", "h200", "b200", "mi300x"]
CTX = 512
BATCHES = np.unique(np.round(np.geomspace(1, 2048, 45)).astype(int))

model = loader.load_model(MODEL)
stack = loader.load_stack()
curves = {}
for name in GPUS:
    gpu = loader.load_gpu(name)
    plat = Platform(gpu, stack, calibrations.load_calibration("auto", gpu, stack))
    pred = step.predict(plat, model, Mode.DECODE, BATCHES, CTX, 1)
    rows = [step.summary(pred, gpu, i) for i in range(len(BATCHES))]
    # the op with the most FLOPs (the MLP's up projection): memory- or compute-bound
    gemm = [max(step.breakdown(pred, gpu, i), key=lambda r: r["flops"])["bound"]
            for i in range(len(BATCHES))]
    plan = capacity.memory_plan(gpu, model)   # weights, KV per token, runtime reserve
    curves[name] = {
        "gpu": gpu, "rows": rows,
        "step_ms": np.array([r["step_ms"] for r in rows]),
        "gb_per_s": np.array([r["achieved_bandwidth_gb_per_s"] for r in rows]),
        "tflops": np.array([r["achieved_tflops"] for r in rows]),
        "bound": [r["bound"] for r in rows], "gemm_bound": gemm,
        "max_batch": plan.kv_tokens() // (CTX + 1),
    }

# %% [markdown]
# ## Step time and achieved bandwidth against batch
#
# Solid where the batch's KV cache fits next to the weights (90% of HBM), dotted
# beyond. A diamond marks the first batch at which the largest projection (the MLP's
# up projection) is compute-bound: its FLOPs at the datasheet matrix rate take longer
# than its bytes at the datasheet bandwidth.

# %%
fig = make_subplots(rows=1, cols=2, subplot_titles=(
    "decode step time (ms)", "achieved HBM bandwidth (GB/s)"))
palette = ["#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3"]
for color, (name, c) in zip(palette, curves.items(), strict=True):
    fits = c["max_batch"] >= BATCHES
    for col, y in ((1, c["step_ms"]), (2, c["gb_per_s"])):
        fig.add_trace(go.Scatter(x=BATCHES[fits], y=y[fits], name=name, legendgroup=name,
                                 line={"color": color}, showlegend=col == 1), 1, col)
        fig.add_trace(go.Scatter(x=BATCHES[~fits], y=y[~fits], name=name, legendgroup=name,
                                 line={"color": color, "dash": "dot"}, showlegend=False),
                      1, col)
    if "compute" in c["gemm_bound"]:
        i = c["gemm_bound"].index("compute")
        fig.add_trace(go.Scatter(x=[BATCHES[i]], y=[c["step_ms"][i]], mode="markers",
                                 marker={"color": color, "size": 11, "symbol": "diamond"},
                                 legendgroup=name, showlegend=False,
                                 hovertext=f"{name}: projections compute-bound from batch "
                                 f"{BATCHES[i]}"), 1, 1)
fig.update_xaxes(type="log", title_text="batch")
fig.update_yaxes(type="log", col=1)
fig.update_layout(height=450, title=f"{MODEL} decode at ctx {CTX}: flat, then bending up")
fig.show()

# %% [markdown]
# ## Where it bends, per GPU
#
# *knee*: the first batch whose step takes 25% longer than batch 1 (until then a bigger
# batch is almost free throughput). *projections compute-bound*: the first batch at
# which the largest GEMM is compute-bound; it tracks the *ridge*, the datasheet FLOP/s
# per byte/s (a GPU with more bandwidth per FLOP, H200 against H100, turns earlier).
# *step compute-bound*: the same test on the whole step. At 512 tokens of context it
# rarely happens: every sequence adds 67 MB of KV reads to each step, so the step's
# arithmetic intensity levels off near 16 GFLOP per token / 67 MB = 240 FLOP/B, below
# most ridges. Attention keeps a long-context decode memory-bound at any batch.

# %%
table = []
for name, c in curves.items():
    gpu = c["gpu"]
    knee = int(BATCHES[np.argmax(c["step_ms"] > 1.25 * c["step_ms"][0])])
    compute = int(BATCHES[c["bound"].index("compute")]) if "compute" in c["bound"] else None
    gemm = (int(BATCHES[c["gemm_bound"].index("compute")]) if "compute" in c["gemm_bound"]
            else None)
    ridge = gpu.matmul_peak_flops_per_s(model.dtype) / gpu.hbm_bandwidth_bytes_per_s
    table.append({"gpu": name, "ridge_flop_per_byte": ridge, "knee_batch": knee,
                  "projections_compute_bound_from": gemm, "step_compute_bound_from": compute,
                  "max_batch_in_memory": c["max_batch"],
                  "peak_tokens_per_s": float(np.max(BATCHES / c["step_ms"] * 1e3))})
    # the physics: flat at first, then growing; bandwidth rises with batch
    assert c["step_ms"][1] < 1.05 * c["step_ms"][0]
    assert np.all(np.diff(c["step_ms"]) >= -1e-9)
    assert c["gb_per_s"].max() > c["gb_per_s"][0]
    assert "compute" in c["gemm_bound"]       # the projections do turn compute-bound
for row in table:
    print(f"{row['gpu']:14s} ridge {row['ridge_flop_per_byte']:4.0f} FLOP/B  knee at batch "
          f"{row['knee_batch']:4d}  projections compute-bound from "
          f"{row['projections_compute_bound_from']}  step from {row['step_compute_bound_from']}"
          f"  fits batch {row['max_batch_in_memory']:5d}  peak "
          f"{row['peak_tokens_per_s']:6.0f} tok/s")

fig = go.Figure([
    go.Bar(name="knee batch", x=[r["gpu"] for r in table], y=[r["knee_batch"] for r in table]),
    go.Bar(name="projections compute-bound from", x=[r["gpu"] for r in table],
           y=[r["projections_compute_bound_from"] or 0 for r in table]),
    go.Bar(name="largest batch in memory", x=[r["gpu"] for r in table],
           y=[r["max_batch_in_memory"] for r in table]),
])
fig.update_layout(barmode="group", yaxis_type="log", yaxis_title="batch",
                  title=f"{MODEL} decode at ctx {CTX}: where batching stops being free")
fig.show()

# %% [markdown]
# ## Throughput: what the bend buys
#
# Tokens per second (batch / step time) keep rising past the knee, but each doubling of
# the batch buys less; past the compute-bound point the curve is flat and only latency
# grows.

# %%
fig = go.Figure()
for color, (name, c) in zip(palette, curves.items(), strict=True):
    fits = c["max_batch"] >= BATCHES
    fig.add_trace(go.Scatter(x=BATCHES[fits], y=(BATCHES / c["step_ms"] * 1e3)[fits],
                             name=name, line={"color": color}))
fig.update_layout(xaxis_type="log", yaxis_type="log", xaxis_title="batch",
                  yaxis_title="output tokens per second", height=420,
                  title=f"{MODEL} decode throughput at ctx {CTX} (batches that fit)")
fig.show()
