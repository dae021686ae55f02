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
# # A capacity plan for a 70B chat service: H100, H200 or B200?
#
# Llama 3.1 70B in bf16 is 141 GB of weights: it needs several H100s or H200s per
# replica (tensor parallelism), and fits one B200 only with little room for the KV
# cache. Which GPU and which tensor-parallel degree serve a chat workload at the least
# cost while meeting its latency targets?
#
# The recipe, with the library directly: for every GPU and tp whose memory plan leaves
# room for a KV cache, simulate one replica (continuous batching, paged KV cache,
# chunked prefill, the collectives priced from the GPU's NVLink) at rising request
# rates until its p99 latencies miss the SLOs; the last rate that meets them is what a
# replica can carry. Replicas for the target traffic, GPUs, and dollars follow.
# (`gpusim plan` automates this search; here every step is in view.)

# %%
import math

import plotly.graph_objects as go

from gpusim import capacity, serving
from gpusim.io import calibrations, loader
from gpusim.io import scenario as scenario_io
from gpusim.platform import ParallelLayout, Platform

MODEL = "llama-3.1-70b"
GPUS = ["h100-sxm", "h200", "b200"]
TPS = [1, 2, 4, 8]
TARGET_RATE = 12.0        # requests per second for the whole service
DURATION_S = 20.0         # simulated seconds of arrivals per trial (short: a sketch)
RATES = [0.5, 1, 1.5, 2, 3, 4, 6, 8, TARGET_RATE]   # per replica, in order, up to the target
MIN_KV_TOKENS = 32_768    # a replica needs room for a few long conversations

chat = scenario_io.load_scenario(loader.ROOT / "workloads" / "scenarios" / "chat-poisson.yaml")
model = loader.load_model(MODEL)
stack = loader.load_stack()
SLO_TTFT_S, SLO_TPOT_S = chat.slo.ttft_s, chat.slo.tpot_s
print(f"{MODEL}: {model.weight_bytes / 1e9:.0f} GB of weights; chat traffic "
      f"({chat.description}); SLO p99 TTFT <= {SLO_TTFT_S} s, p99 TPOT <= "
      f"{SLO_TPOT_S * 1e3:.0f} ms; target {TARGET_RATE} req/s")


def scenario(rate_per_s: float):
    return scenario_io.with_overrides(chat, duration_s=DURATION_S, rate_per_s=rate_per_s)


def meets_slo(summary) -> bool:
    lat = summary["latency_s"]
    return (summary["requests"]["rejected"] == 0 and lat["ttft_s"]["p99"] <= SLO_TTFT_S
            and lat["tpot_s"]["p99"] <= SLO_TPOT_S)


# %% [markdown]
# ## Which layouts fit
#
# The memory planner's view of the fullest GPU of each layout: weights per GPU and the
# KV tokens left. A layout without room for `MIN_KV_TOKENS` cached tokens is dropped
# with its reason.

# %%
candidates, dropped = [], []
for name in GPUS:
    gpu = loader.load_gpu(name)
    cal = calibrations.load_calibration("auto", gpu, stack)
    for tp in TPS:
        plan = capacity.memory_plan(gpu, model, tp=tp)
        if plan.kv_tokens() < MIN_KV_TOKENS:
            dropped.append(f"{name} tp={tp}: {plan.kv_tokens():,} KV tokens fit "
                           f"({plan.weight_bytes / 1e9:.0f} GB of weights per GPU)")
            continue
        plat = Platform(gpu, stack, cal, layout=ParallelLayout(tp=tp))
        candidates.append({"gpu": name, "tp": tp, "platform": plat,
                           "kv_tokens": plan.kv_tokens(),
                           "usd_per_gpu_hour": gpu.price_usd_per_gpu_hour})
for line in dropped:
    print("dropped:", line)
for c in candidates:
    print(f"candidate: {c['gpu']} tp={c['tp']}: {c['kv_tokens']:,} KV tokens per replica")

# %% [markdown]
# ## What one replica carries
#
# Each candidate's engine is built once (its step-time tables); the scenario's rate
# changes between trials. A trial fails when a p99 misses its SLO or a request is
# rejected; the search stops at the first failure, or at the target rate (a replica
# that carries the whole service needs no more). The cost per million output tokens
# uses the mean answer length over every trial.

# %%
output_tokens = completed = 0
for c in candidates:
    engine = serving.build_engine(c["platform"], model, scenario(RATES[0]))
    c["trials"], c["max_rate"], c["at_max"] = [], 0.0, None
    for rate in RATES:
        summary = serving.simulate(engine, scenario(rate))
        output_tokens += summary["tokens"]["output"]
        completed += summary["requests"]["completed"]
        ok = meets_slo(summary)
        c["trials"].append((rate, summary["latency_s"]["ttft_s"]["p99"],
                            summary["latency_s"]["tpot_s"]["p99"], ok))
        if not ok:
            break
        c["max_rate"], c["at_max"] = rate, summary
    if c["max_rate"]:
        c["replicas"] = math.ceil(TARGET_RATE / c["max_rate"])
        c["gpus"] = c["replicas"] * c["tp"]
        c["usd_per_hour"] = c["gpus"] * c["usd_per_gpu_hour"]
mean_output = output_tokens / completed
for c in candidates:
    if not c["max_rate"]:
        print(f"{c['gpu']:9s} tp={c['tp']}: misses the SLO at {RATES[0]} req/s")
        continue
    c["usd_per_million_tokens"] = c["usd_per_hour"] / (TARGET_RATE * mean_output * 3600 / 1e6)
    carries = ("the whole target" if c["max_rate"] == TARGET_RATE
               else f"{c['max_rate']:g} req/s")
    plural = "s" if c["replicas"] > 1 else ""
    print(f"{c['gpu']:9s} tp={c['tp']}: a replica carries {carries} -> {c['replicas']} "
          f"replica{plural}, {c['gpus']} GPUs, ${c['usd_per_hour']:.0f}/h, "
          f"${c['usd_per_million_tokens']:.2f} per million output tokens")
print(f"mean answer: {mean_output:.0f} tokens")

# %% [markdown]
# ## The plan
#
# Left to right: the rate one replica carries within the SLOs, and the bill for the
# whole service at the target rate (bar labels: GPUs). More tensor parallelism makes a
# replica faster (the weights stream from more HBM at once) but costs GPUs and
# all-reduces; the cheapest layout is the one whose replica carries the most traffic
# per GPU-dollar.

# %%
served = [c for c in candidates if c["max_rate"]]
labels = [f"{c['gpu']} tp={c['tp']}" for c in served]
fig = go.Figure(go.Bar(x=labels, y=[c["max_rate"] for c in served],
                       marker_color=[{"h100-sxm": "#636efa", "h200": "#ef553b",
                                      "b200": "#00cc96"}[c["gpu"]] for c in served]))
fig.update_layout(yaxis_title="req/s per replica within the SLOs (searched to the target)",
                  title=f"{MODEL}, chat traffic: what one replica carries")
fig.show()

fig = go.Figure(go.Bar(x=labels, y=[c["usd_per_hour"] for c in served],
                       text=[f"{c['gpus']} GPUs" for c in served], textposition="outside"))
fig.update_layout(yaxis_title="$ per hour for the service",
                  title=f"{MODEL} at {TARGET_RATE} req/s: the bill per layout")
fig.show()

fig = go.Figure()
for c, label in zip(served, labels, strict=True):
    fig.add_trace(go.Scatter(
        x=[c["usd_per_hour"]], y=[c["at_max"]["latency_s"]["ttft_s"]["p99"]],
        mode="markers+text", text=[label], textposition="top center", name=label))
fig.add_hline(y=SLO_TTFT_S, line={"dash": "dash", "color": "grey"})
fig.update_layout(xaxis_title="$ per hour", yaxis_title="p99 TTFT at a replica's max rate (s)",
                  showlegend=False, title="Cost against tail latency")
fig.show()

best = min(served, key=lambda c: (c["usd_per_hour"], c["gpus"]))
print(f"cheapest: {best['gpu']} tp={best['tp']}, {best['replicas']} replica(s) = "
      f"{best['gpus']} GPUs, ${best['usd_per_hour']:.0f}/h")
for name in GPUS:
    own = [c for c in served if c["gpu"] == name]
    if own:
        top = min(own, key=lambda c: c["usd_per_hour"])
        print(f"  best on {name}: tp={top['tp']}, ${top['usd_per_hour']:.0f}/h "
              f"({top['usd_per_hour'] / best['usd_per_hour']:.2f}x the cheapest)")

# %% [markdown]
# ## Checked on every run
#
# The plan's replicas meet the SLOs at the rate each would actually see (target over
# replicas, at most its tested maximum), and every layout that was kept fits.

# %%
share = TARGET_RATE / best["replicas"]
assert share <= best["max_rate"]
check = serving.simulate(serving.build_engine(best["platform"], model, scenario(share)),
                         scenario(share))
assert meets_slo(check), check["latency_s"]
assert all(c["kv_tokens"] >= MIN_KV_TOKENS for c in candidates)
assert served, "no layout meets the SLOs"
