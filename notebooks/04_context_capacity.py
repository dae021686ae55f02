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
# # Context length as a capacity bill
#
# Every cached token holds its keys and values in HBM for every layer. A longer context
# window is paid three times: in memory (fewer sequences fit next to the weights), in
# bandwidth (each decode step reads the whole cache), and in prefill time (a long prompt
# is a long prefill before the first token). This notebook prices each: KV bytes per
# sequence by model, the concurrency a GPU can hold, and what a serving engine's latency
# tails do as the window grows at a fixed request rate.

# %%
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gpusim import capacity, serving
from gpusim.io import calibrations, loader
from gpusim.io import scenario as scenario_io
from gpusim.platform import Platform

WINDOWS = [2048, 4096, 8192, 16384, 32768, 65536]
MODELS = ["llama-2-7b", "llama-3.1-8b", "qwen2.5-7b", "mistral-7b"]
GB = 1e9

models = {name: loader.load_model(name) for name in MODELS}
for name, m in models.items():
    print(f"{name:14s} {m.num_key_value_heads:2d} KV heads x {m.num_hidden_layers} layers: "
          f"{m.kv_bytes_per_token / 1e3:6.1f} kB per token, "
          f"{m.kv_bytes_per_token * 32768 / GB:5.2f} GB per 32k-token sequence")

# %% [markdown]
# ## The bill per sequence, and how many fit
#
# Left: KV cache of one sequence filled to the window. Multi-head attention (Llama 2
# 7B: a KV head per query head) pays four times what grouped-query attention does
# (Llama 3.1 8B, Mistral 7B: 8 KV heads), Qwen2.5 7B (4 KV heads) half again. Right:
# full-window sequences of Llama 3.1 8B that fit in the KV cache the memory planner
# leaves next to the weights and a 10% runtime reserve, on an H100 and an H200.

# %%
gpus = {name: loader.load_gpu(name) for name in ("h100-sxm", "h200")}
plans = {name: capacity.memory_plan(g, models["llama-3.1-8b"]) for name, g in gpus.items()}
fig = make_subplots(rows=1, cols=2, subplot_titles=(
    "KV cache per sequence (GB)", "Llama 3.1 8B: full-window sequences that fit"))
for name, m in models.items():
    fig.add_trace(go.Scatter(x=WINDOWS, y=[m.kv_bytes_per_token * w / GB for w in WINDOWS],
                             name=name), 1, 1)
for name, plan in plans.items():
    fig.add_trace(go.Scatter(x=WINDOWS, y=[plan.kv_tokens() // w for w in WINDOWS],
                             name=f"{name} ({plan.kv_capacity_bytes / GB:.0f} GB for KV)",
                             line={"dash": "dot"}), 1, 2)
fig.update_xaxes(type="log", title_text="context window (tokens)")
fig.update_yaxes(type="log")
fig.update_layout(height=430, title="Context length as memory")
fig.show()
for name, plan in plans.items():
    print(f"{name}: {plan.describe()}; {plan.kv_tokens():,} tokens")

# %% [markdown]
# ## What the latency tails do
#
# A serving engine (continuous batching, paged KV cache, chunked prefill, vLLM's
# defaults) on one H100 at 1.5 requests per second, each request a prompt that fills
# the window less 256 tokens and a 256-token answer, 20 simulated seconds of arrivals.
# The same traffic in requests is a growing load in tokens: short windows leave the GPU
# mostly idle; from 16-32k tokens the prefills queue up, TTFT's tail explodes, and the
# decodes of running requests slow down behind the prefill chunks (TPOT).

# %%
gpu = gpus["h100-sxm"]
stack = loader.load_stack()
plat = Platform(gpu, stack, calibrations.load_calibration("auto", gpu, stack))
model = models["llama-3.1-8b"]
RATE, OUTPUT, DURATION_S = 1.5, 256, 20.0


def scenario(window: int):
    return scenario_io.scenario_from_options(
        None, prompt_dist=str(window - OUTPUT), output_dist=str(OUTPUT),
        duration_s=DURATION_S, rate_per_s=RATE, seed=1)


engine = serving.build_engine(plat, model, scenario(WINDOWS[0]))  # same limits for all
runs = {w: serving.simulate(engine, scenario(w)) for w in WINDOWS}
lat = {w: r["latency_s"] for w, r in runs.items()}
for w, r in runs.items():
    print(f"window {w:6d}: TTFT p50 {lat[w]['ttft_s']['p50']:7.3f} s p99 "
          f"{lat[w]['ttft_s']['p99']:7.3f} s  TPOT p99 {lat[w]['tpot_s']['p99'] * 1e3:6.1f} ms"
          f"  max KV use {r['engine']['max_kv_utilisation']:.0%}"
          f"  completed {r['requests']['completed']}/{r['requests']['arrived']}")

fig = make_subplots(rows=1, cols=3, subplot_titles=(
    "time to first token (s)", "time per output token (ms)", "KV cache in use"))
for q, dash in (("p50", "solid"), ("p99", "dash")):
    fig.add_trace(go.Scatter(x=WINDOWS, y=[lat[w]["ttft_s"][q] for w in WINDOWS],
                             name=f"TTFT {q}", line={"dash": dash}), 1, 1)
    fig.add_trace(go.Scatter(x=WINDOWS, y=[lat[w]["tpot_s"][q] * 1e3 for w in WINDOWS],
                             name=f"TPOT {q}", line={"dash": dash}), 1, 2)
fig.add_trace(go.Scatter(x=WINDOWS, y=[runs[w]["engine"]["mean_kv_utilisation"]
                                       for w in WINDOWS], name="mean KV use"), 1, 3)
fig.add_trace(go.Scatter(x=WINDOWS, y=[runs[w]["engine"]["max_kv_utilisation"]
                                       for w in WINDOWS], name="max KV use"), 1, 3)
fig.update_xaxes(type="log", title_text="context window (tokens)")
fig.update_yaxes(type="log", col=1)
fig.update_layout(height=430, title=f"Llama 3.1 8B on one H100 at {RATE} req/s: the tails "
                                    "against the window")
fig.show()

# %% [markdown]
# ## Checked on every run
#
# KV per sequence grows with the window and with the KV heads; fewer sequences fit as
# the window grows; the TTFT tail and the KV in use grow with the window.

# %%
assert models["llama-2-7b"].kv_bytes_per_token == 4 * models["llama-3.1-8b"].kv_bytes_per_token
for plan in plans.values():
    fit = [plan.kv_tokens() // w for w in WINDOWS]
    assert fit == sorted(fit, reverse=True) and fit[0] > fit[-1]
p99 = [lat[w]["ttft_s"]["p99"] for w in WINDOWS]
assert p99 == sorted(p99)
kv = [runs[w]["engine"]["mean_kv_utilisation"] for w in WINDOWS]
assert kv[-1] > kv[0]
