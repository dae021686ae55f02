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
# # The memory wall: one decode step, layer by layer
#
# A decode step at batch 1 does almost no arithmetic: every weight of the model is read
# from HBM once to produce one token per sequence. This notebook plays one Llama 3.1 8B
# decode step (batch 1, 1024 tokens cached) through gpusim's SimPy engine on several
# GPUs and looks at where the time goes: which kernel runs when, how many bytes each
# layer streams, and how close each GPU gets to its datasheet bandwidth.
#
# Open as a notebook with `jupytext --to notebook notebooks/01_memory_wall.py`, or run
# it as a script.

# %%
import plotly.graph_objects as go

from gpusim import step
from gpusim.io import calibrations, loader
from gpusim.platform import Platform
from gpusim.report import timeline_figure
from gpusim.specs.enums import Mode

MODEL = "llama-3.1-8b"
GPUS = ["a100-sxm-80gb", "h100-sxm", "h200", "b200"]
BATCH, CTX = 1, 1024

model = loader.load_model(MODEL)
stack = loader.load_stack()


def platform(gpu_name: str) -> Platform:
    """The GPU with the default stack and its calibration (measured, else carried over
    from a measured GPU of the same vendor)."""
    gpu = loader.load_gpu(gpu_name)
    return Platform(gpu, stack, calibrations.load_calibration("auto", gpu, stack))


platforms = {name: platform(name) for name in GPUS}
timelines = {name: step.simulate(p, model, Mode.DECODE, BATCH, CTX, 1)
             for name, p in platforms.items()}
for name, tl in timelines.items():
    print(f"{name:14s} step {tl.end_s * 1e3:6.2f} ms, {len(tl.intervals)} busy intervals")

# %% [markdown]
# ## The timeline on an H100
#
# Host, SM and HBM lanes of the first layers (hover for each kernel's bytes and FLOPs).
# In a CUDA graph the host launches once; the SMs then run one kernel after another,
# and the HBM lane is busy almost the whole time: the projections (`qkv_proj`,
# `o_proj`, `gate_up_proj`, `down_proj`) are weight reads.

# %%
h100 = timelines["h100-sxm"]
layer_ms = h100.end_s * 1e3 / model.num_hidden_layers
fig = timeline_figure(h100, f"{MODEL} decode, batch {BATCH}, ctx {CTX} on h100-sxm")
fig.update_xaxes(range=[0, 3 * layer_ms])
fig.show()

# %% [markdown]
# ## Layer by layer, per GPU
#
# The first two transformer layers on each GPU, one lane per GPU from the start of
# layer 0, each kernel colored by what it reads: GEMMs stream the weights, attention
# streams the KV cache, the rest (norms, RoPE, activations, residual adds) moves
# activations. All 32 layers repeat this pattern; the GEMMs take most of every layer on
# every GPU, and a layer shrinks with the GPU's bandwidth.

# %%
KIND_COLORS = {"gemm": "#636efa", "attention": "#ef553b", "elementwise": "#00cc96",
               "embedding": "#ab63fa"}
KIND_NAMES = {"gemm": "GEMM (weights)", "attention": "attention (KV cache)",
              "elementwise": "pointwise (activations)", "embedding": "embedding"}
kinds = {op.name: op.kind for op in
         step.op_costs(platforms["h100-sxm"], model, Mode.DECODE, BATCH, CTX, 1)}
fig = go.Figure()
for kind, color in KIND_COLORS.items():
    for name, tl in timelines.items():
        start = min(iv.start_s for iv in tl.intervals if iv.layer == 0)
        ivs = [iv for iv in tl.intervals if iv.resource == "sm" and iv.layer in (0, 1)
               and kinds.get(iv.name) == kind]
        if not ivs:
            continue
        fig.add_trace(go.Bar(
            base=[(iv.start_s - start) * 1e3 for iv in ivs],
            x=[(iv.end_s - iv.start_s) * 1e3 for iv in ivs],
            y=[name] * len(ivs), orientation="h", marker_color=color, name=KIND_NAMES[kind],
            legendgroup=kind, showlegend=name == GPUS[0],
            customdata=[[iv.name, iv.layer, iv.bytes / 1e6] for iv in ivs],
            hovertemplate="%{customdata[0]} (layer %{customdata[1]}): %{x:.4f} ms, "
                          "%{customdata[2]:.1f} MB<extra></extra>"))
fig.update_layout(barmode="overlay", xaxis_title="time from the start of layer 0 (ms)",
                  height=380, title=f"{MODEL}: layers 0 and 1 of a decode step (batch "
                                    f"{BATCH}, ctx {CTX}) on each GPU")
fig.show()

# %% [markdown]
# ## Inside one layer: which kernels reach the bandwidth
#
# Each op of the first layer: the share of the datasheet bandwidth it achieves (bytes
# over its time). The big GEMMs come close; the small pointwise kernels move a few
# hundred kilobytes and spend most of their time in fixed per-kernel cost, on every GPU.


# %%
def layer_ops(tl, layer=0):
    """(op, ms, bytes) of one layer's kernels, in launch order (ops launched more than
    once per layer are summed)."""
    ops: dict[str, list[float]] = {}
    for iv in tl.intervals:
        if iv.resource == "sm" and iv.layer == layer:
            ms_bytes = ops.setdefault(iv.name, [0.0, 0.0])
            ms_bytes[0] += (iv.end_s - iv.start_s) * 1e3
            ms_bytes[1] += iv.bytes
    return [(op, ms, nbytes) for op, (ms, nbytes) in ops.items()]


fig = go.Figure()
for name, tl in timelines.items():
    peak = platforms[name].gpu.hbm_bandwidth_bytes_per_s
    ops = layer_ops(tl)
    fig.add_trace(go.Bar(x=[op for op, *_ in ops], name=name,
                         y=[b / (ms * 1e-3) / peak for _, ms, b in ops]))
fig.update_layout(barmode="group", yaxis_title="achieved / datasheet HBM bandwidth",
                  yaxis_tickformat=".0%", height=420,
                  title="Layer 0 of a batch-1 decode step: bandwidth each op achieves")
fig.show()

summary = []
for name, tl in timelines.items():
    peak = platforms[name].gpu.hbm_bandwidth_bytes_per_s / 1e9
    total_bytes = sum(iv.bytes for iv in tl.intervals if iv.resource == "hbm")
    hbm_busy = sum(iv.end_s - iv.start_s for iv in tl.intervals if iv.resource == "hbm")
    summary.append({"gpu": name, "step_ms": tl.end_s * 1e3,
                    "roofline_ms": total_bytes / (peak * 1e9) * 1e3,
                    "achieved_gb_per_s": total_bytes / tl.end_s / 1e9,
                    "peak_gb_per_s": peak, "hbm_busy_share": hbm_busy / tl.end_s})

# %% [markdown]
# ## The wall, per GPU
#
# Step time against the pure-bandwidth roofline (bytes / datasheet bandwidth). The
# HBM lane is busy for most of the step on every GPU: at batch 1 the step is the time
# to stream the weights, and a faster GPU is a GPU with more bandwidth.

# %%
for row in summary:
    print(f"{row['gpu']:14s} step {row['step_ms']:6.2f} ms  roofline {row['roofline_ms']:5.2f} ms"
          f"  {row['achieved_gb_per_s']:6.0f} of {row['peak_gb_per_s']:5.0f} GB/s"
          f" ({row['achieved_gb_per_s'] / row['peak_gb_per_s']:.0%}),"
          f" HBM busy {row['hbm_busy_share']:.0%} of the step")
    assert row["achieved_gb_per_s"] <= row["peak_gb_per_s"]
    assert row["hbm_busy_share"] > 0.5     # memory-bound: the HBM lane sets the pace

fig = go.Figure([
    go.Bar(name="simulated step", x=[r["gpu"] for r in summary],
           y=[r["step_ms"] for r in summary]),
    go.Bar(name="bandwidth roofline", x=[r["gpu"] for r in summary],
           y=[r["roofline_ms"] for r in summary]),
])
fig.update_layout(barmode="group", yaxis_title="ms per decode step",
                  title="Batch-1 decode: simulated step against the bandwidth roofline")
fig.show()
