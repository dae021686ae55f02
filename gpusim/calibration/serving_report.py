"""validation/SERVING_REPORT.md: gpusim's serving simulator against measured serving
runs (``serving_replay``), as Markdown, and the same numbers as a JSON-ready dict."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from gpusim.calibration.serving_metrics import LATENCIES, QUANTILES, saturated
from gpusim.calibration.serving_process import first_load_section, first_loads
from gpusim.calibration.serving_repeat import repeat_section, worst_spread
from gpusim.calibration.serving_replay import RunComparison
from gpusim.calibration.serving_sensitivity import moves, sensitivity_section

TARGETS = {"step": 0.05, "p50": 0.05, "p99": 0.10, "throughput": 0.03, "saturation": 0.10}
METRIC_DEFINITIONS = (
    "Metrics as vLLM's benchmark tool (benchmarks/benchmark_serving.py) defines them: "
    "TTFT = first token - arrival; TPOT = (last token - first token) / (output tokens - "
    "1) per request, the first token excluded, over requests of more than one token; "
    "ITL = every gap between two consecutive tokens of a request, pooled; E2EL = last "
    "token - arrival; percentiles by linear interpolation (numpy); throughput = requests "
    "(or output tokens) / makespan, from the run's start to its last token. A token "
    "counts from the end of the engine step that made it, measured and simulated alike.")
GPU_COMMANDS = """\
Each run's run.json records the exact command that measured it (listed under the
title); the runs of a GPU lie in validation/data/serving/<gpu>/<model>/<load>/, with a
README.md of their lease. The pattern, one model a command:
```
H=validation/harness/bench_serve_engine.py
python3 $H --out /tmp/sv/h200 --gpu h200 --model llama-3.1-8b --rates 2,4,7 \\
    --duration-s 40 --max-model-len 3072 --kv-blocks 16384 \\
    --capture-sizes 1,2,4,8,16,32,64,128,256 --max-wall-s 70 --seed 4
# copied to validation/data/serving/h200, then, here
gpusim serve --replay validation/data/serving/h200 --gpu h200 \\
    --stack harness-serve --report validation/SERVING_REPORT_h200.md
```
About 2-4 minutes a command: the model loads, 108 decode graphs (9 sizes x 12 key
lengths) are captured, eight warm-up requests run, then each load its 40 s window and
its drain. `--kv-blocks 16384` because the default sizing (0.9 of the GPU's memory)
ran out of memory during graph capture (8192 for Llama 3.1 8B on an 80 GB H100).
Prefix caching: `--prefix-caching --shared-prefix-tokens 1024 --conversation-turns 4
--turn-think-s 2` into its own `--out` (H100: `prefix-rate-*`). Still to measure:
prefix caching on the H200. New runs: add `--warmup-s 20` (a 20 s load of its own
seed first, not recorded), so that no measured load is its process's first ("First
loads of a process")."""


KNOWN_GAPS = (
    "What the stack file describes and what it does not (stacks/harness-serve.yaml, "
    "validation/harness/probe_serve_steps.py): decode steps gather every row's keys "
    "into a padded batch at the longest context rounded up to 256 tokens and run "
    "cuDNN's masked SDPA over it; that is priced (the stack's `padded_decode_keys`), "
    "the padded positions' gather reads from the scratch block in cache "
    "(`padding_reads_cached`, down to `padded_gather_min_s_per_key`), and cuDNN's "
    "kernel over every padded key from its profiled decode graphs "
    "(calibration.attention_points). "
    "Prompt chunks run FlashAttention-2 (profiled, validation/data/h100-sxm/"
    "probe_2026-12-07/chunk_attention/): a fresh prompt over its own keys, a chunk after "
    "cached tokens over its keys gathered and repeated to every query head (the stack's "
    "verify-mode ops: the gathers, the repeat's copies priced from their profile, FA2); "
    "a step of several parts concatenates their attention outputs. "
    "Mixed steps (prefill chunks) run eagerly and are host-bound: the harness's Python "
    "costs 25-30 us per kernel launch there, fitted above from the other runs' eager "
    "steps (`host_launch_cost_s`) with each step's launches counted from the parts it "
    "has (its decoding rows, each fresh prompt, each chunk after cached tokens), and how "
    "fast the host runs them moves from run to run (the run-to-run spread above, where "
    "there are repeats): the VM's CPU runs the same eager steps at two speeds about 1.5x "
    "apart, in phases of 5-15 s that neither pinning to one CPU nor freezing the garbage "
    "collector removes (validation/data/h100-sxm/probe_2026-12-07_s27/), so the share of "
    "slow phases in a run sets its eager steps' median and the TTFT that waits on them.")
CUDNN_PLANS = (
    "Runs measured with `eager_sdpa: default` ({runs}) let cuDNN run the eager steps' "
    "SDPA, and cuDNN builds an execution plan the first time a process meets an SDPA "
    "shape (each new prompt length, each new eager decode batch): 45-150 ms once per "
    "shape (probed on the H100), which their TTFT at light load is mostly made of and "
    "gpusim does not price (no serving engine with shape-agnostic attention kernels pays "
    "it). The harness now keeps cuDNN off eager steps by default (`--eager-sdpa "
    "no-cudnn`); those runs wait to be measured again.")


PIECEWISE_RUNS = (
    "In the full_and_piecewise runs ({runs}) a mixed step of up to the largest capture "
    "size replays piecewise graphs instead (the `mixed, piecewise` rows): only its "
    "attention and last-position ops launch one by one, its decoding rows padded to "
    "their capture size on cuDNN's masked kernel (priced) and its prompt chunks under the "
    "eager steps' no-cudnn backends (FlashAttention-2, above). The launches outside its "
    "graphs follow the parts it has (profiled, validation/data/h100-sxm/probe_2026-12-06/"
    "piecewise/: a layer launches 2 kernels with a fresh prompt alone, about 10 with "
    "decoding rows beside it): the stack's attention and cache ops for its decoding "
    "rows, its attention for each fresh prompt, its gathers, repeats and attention for "
    "each chunk after cached tokens, the concatenation of two parts or more and a copy "
    "a layer into the next piece's buffer. The "
    "small model's piecewise steps with decoding rows are host-bound, and the host's "
    "speed moves from process to process (its repeat).")


def known_gaps(results: Sequence[RunComparison]) -> str:
    """KNOWN_GAPS, PIECEWISE_RUNS where a run replayed piecewise graphs, and
    CUDNN_PLANS where a run let cuDNN plan eager steps."""
    text = KNOWN_GAPS
    piecewise = [r.run.load for r in results
                 if r.run.engine.get("cudagraph_mode") == "full_and_piecewise"]
    if piecewise:
        text += " " + PIECEWISE_RUNS.format(runs=", ".join(piecewise))
    planned = [r.run.load for r in results
               if r.run.engine.get("eager_sdpa", "default") == "default"]
    if not planned or all(r.run.on_cpu for r in results):
        return text
    return text + " " + CUDNN_PLANS.format(runs=", ".join(planned))


def _pct(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:+.1f}%"


def _abs_pct(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.1f}%"


def _ms(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{1e3 * x:.2f}"


def _err(sim: float, meas: float) -> float:
    return (sim - meas) / meas if meas else math.nan


def metric_errors(r: RunComparison, which: str = "simulated") -> dict[str, float]:
    """Relative errors of one replay's latency quantiles and throughput."""
    sim = getattr(r, which)
    out = {f"{name}.p{q}": _err(sim[name][f"p{q}"], r.measured[name][f"p{q}"])
           for name in LATENCIES for q in QUANTILES}
    out["throughput"] = _err(sim["output_tokens_per_s"], r.measured["output_tokens_per_s"])
    return out


def as_dict(results: Sequence[RunComparison], sat: dict[str, Any]) -> dict[str, Any]:
    """The report's numbers (JSON-ready)."""
    return {"runs": [{
        "run": str(r.run.path), "device": r.run.device, "gpu": r.run.gpu,
        "model": r.run.model, "load": r.run.load,
        "host": {"serving_step_host_s": r.host.step_s, "serving_seq_host_s": r.host.seq_s,
                 "serving_chunk_host_s": r.host.chunk_s,
                 "serving_prefill_token_host_s": r.host.prefill_token_s,
                 "host_launch_cost_s": r.host.launch_s, "in_sample": r.host_in_sample},
        "eager_sdpa": r.run.engine.get("eager_sdpa", "default"),
        "step_errors": r.step_errors, "mixed_parts": r.mixed_parts,
        "measured": r.measured, "simulated": r.simulated,
        "with_measured_steps": r.with_measured_steps, "steps_matched": r.steps_matched,
        "errors": metric_errors(r),
        "scheduling_errors": metric_errors(r, "with_measured_steps"),
        "slower_steps": r.slower_steps, "sensitivity": moves(r),
        "decoding_rows_p99": {"measured": r.decoding_p99[0],
                              "simulated": r.decoding_p99[1]}} for r in results],
        "saturation": sat, "metric_definitions": METRIC_DEFINITIONS}


def _forward_rows(results: Sequence[RunComparison], table: str,
                  label: Callable[[str, dict[str, float]], list[str]],
                  extra: Callable[[dict[str, float]], list[str]] = lambda e: []
                  ) -> list[str]:
    """Markdown rows of every run's ``table`` (``step_errors`` or ``mixed_parts``): the
    run, ``label``'s cells, the forward's MAPE and bias, then ``extra``'s cells."""
    return ["| " + " | ".join([r.run.load, *label(name, e), _abs_pct(e["forward"]),
                               _pct(e["forward_bias"]), *extra(e)]) + " |"
            for r in results for name, e in getattr(r, table).items()]


def _status(results: Sequence[RunComparison], gpu: str) -> list[str]:
    cpu = [r for r in results if r.run.on_cpu]
    if not cpu:
        return ["Measured on " + ", ".join(sorted({r.run.gpu for r in results})) + ":",
                "", *_provenance(results)]
    return [
        f"**These runs are from a CPU** ({len(cpu)} of {len(results)}: the harness's "
        "engine on a tiny model, `bench_serve_engine.py --device cpu`). Their step times "
        f"are a CPU's, priced here with the {gpu} cost model, so the errors below test the "
        "replay and the report, not gpusim's accuracy. **The real report waits for GPU "
        "runs** (commands at the end); until then the accuracy targets (per-step 5% MAPE, "
        "TTFT/TPOT p50 5% and p99 10%, throughput 3%, saturation load 10%) are not judged."]


def _provenance(results: Sequence[RunComparison]) -> list[str]:
    """One line per distinct (device, torch, CUDA, command) of the runs: what
    run.json's provenance records."""
    seen: dict[tuple[str, ...], list[str]] = {}
    for r in results:
        p = r.run.provenance
        key = (*(str(p.get(k, "?")) for k in ("device_name", "torch", "cuda",
                                               "git_commit", "command")),
               str(r.run.engine.get("eager_sdpa", "default")))
        seen.setdefault(key, []).append(f"{r.run.load} ({p.get('started_utc', '?')!s})")
    return [f"- {', '.join(loads)}: {dev}, torch {torch}, CUDA {cuda}, harness at "
            f"commit {commit[:12]}, eager steps' SDPA {sdpa}: `{command}`"
            for (dev, torch, cuda, commit, command, sdpa), loads in seen.items()]


def markdown(results: Sequence[RunComparison], sat: dict[str, Any], gpu: str, stack: str,
             command: str) -> str:
    """The report (see the module docstring)."""
    lines = ["# Serving: gpusim against a measured continuous-batching engine", "",
             f"Generated by `{command}`: every run below replayed by gpusim's serving "
             f"simulator on {gpu} with the {stack} stack (the same arrivals, lengths, "
             "content, scheduler settings and KV blocks).", "", *_status(results, gpu), "",
             "## Metric definitions", "", METRIC_DEFINITIONS, "", "## Runs", "",
             "Measured / simulated / simulated with the measured step times.", "",
             "| run | device | model | offered req/s | requests | steps | preemptions | "
             "prefix hit rate |", "|---|---|---|---:|---:|---:|---:|---:|"]

    def rate(pc: dict[str, Any] | None) -> str:
        return "-" if pc is None else f"{pc['hit_rate']:.3f}"

    for r in results:
        meas = r.run.prefix_cache if r.run.engine["prefix_caching"] else None
        hits = ("-" if meas is None else f"{rate(meas)} / {rate(r.simulated_prefix)} / "
                f"{rate(r.oracle_prefix)}")
        pre = sum(q.preemptions for q in r.run.requests)
        lines.append(f"| {r.run.load} | {r.run.device} ({r.run.gpu}) | {r.run.model} | "
                     f"{r.run.offered_rate_per_s:.2f} | {len(r.run.requests)} | "
                     f"{len(r.run.steps)} / {r.simulated_steps} / {r.oracle_steps} | "
                     f"{pre} / {r.simulated_preemptions} / {r.oracle_preemptions} | {hits} |")
    lines += ["", "## Per step: the measured compositions priced", "",
              "Forward: the step-time model against the GPU span of the measured forward "
              "(CUDA events around it; a CPU run: its wall time). Host: the fitted host "
              "work per step and per sequence against the rest of the step (scheduling, "
              "inputs, launch call, tokens back, bookkeeping). MAPE; bias: median signed "
              "error of the forward.", "",
              "| run | steps | forward MAPE | forward bias | host MAPE | step MAPE |",
              "|---|---|---:|---:|---:|---:|"]
    lines += _forward_rows(results, "step_errors",
                           lambda kind, e: [f"{kind} ({int(e['count'])})"],
                           lambda e: [_abs_pct(e["host"]), _abs_pct(e["total"])])
    lines += ["", "Mixed steps by the parts they hold (their launches differ: a fresh prompt "
              "launches its attention alone, a chunk after cached tokens its gathers, the "
              "repeat of its keys and its attention, decoding rows their gathers, mask and "
              "attention; each part is one attention call):", "",
              "| run | parts | steps | forward MAPE | forward bias |",
              "|---|---|---:|---:|---:|"]
    lines += _forward_rows(results, "mixed_parts",
                           lambda parts, e: [parts, str(int(e["count"]))])
    lines += ["", "## Latency and throughput", "",
              "Measured, simulated (error), and simulated with the measured step times "
              "(error: what the schedule alone gets wrong). Milliseconds.", "",
              "| run | metric | measured | simulated | error | with measured steps | "
              "error |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        for name in LATENCIES:
            for q in QUANTILES:
                m, s, o = (x[name][f"p{q}"] for x in (r.measured, r.simulated,
                                                      r.with_measured_steps))
                lines.append(f"| {r.run.load} | {name.removesuffix('_s').upper()} p{q} | "
                             f"{_ms(m)} | {_ms(s)} | {_pct(_err(s, m))} | {_ms(o)} | "
                             f"{_pct(_err(o, m))} |")
        m, s, o = (x["output_tokens_per_s"] for x in (r.measured, r.simulated,
                                                     r.with_measured_steps))
        lines.append(f"| {r.run.load} | output tokens/s | {m:.1f} | {s:.1f} | "
                     f"{_pct(_err(s, m))} | {o:.1f} | {_pct(_err(o, m))} |")
    lines += ["", "## Saturation", "",
              "A run is saturated when its queue grows: the median TTFT of its last third "
              "of arrivals is over twice its first third's (throughput below the offered "
              "load over the makespan would count a short run's drain of its last long "
              "requests); the saturation load is the highest throughput of the saturated "
              "runs.", "",
              "| model | run | offered req/s | measured req/s | simulated req/s | "
              "saturated meas / sim |", "|---|---|---:|---:|---:|---|"]
    for x in sat["rows"]:
        lines.append(f"| {x['model']} | {x['load']} | {x['offered']:.2f} | "
                     f"{x['measured']:.2f} | "
                     f"{x['simulated']:.2f} | {'yes' if x['measured_saturated'] else 'no'} / "
                     f"{'yes' if x['simulated_saturated'] else 'no'} |")
    lines.append("")
    for model, x in sat["models"].items():
        ms, ss = x["measured"], x["simulated"]
        lines.append(f"Saturation load of {model}: " + (
            "not reached by these runs." if ms is None else
            f"measured {ms:.2f} req/s, simulated "
            + ("not reached" if ss is None else f"{ss:.2f} req/s ({_pct(_err(ss, ms))})")
            + "."))
        lines.append("")
    lines += _decomposition(results)
    lines += sensitivity_section(results)
    cold = first_loads([r.run for r in results])
    lines += repeat_section(results, cold)
    lines += first_load_section(results, cold)
    lines += _host_section(results, stack)
    lines += _acceptance(results, sat)
    lines += ["## Producing the GPU runs", "", GPU_COMMANDS, ""]
    return "\n".join(lines)


def _decomposition(results: Sequence[RunComparison]) -> list[str]:
    lines = ["## Where the error comes from", "",
             "Step model and host work: the per-step errors above. Scheduling: the "
             "simulation with measured step times against the measurement (steps found "
             "measured: the share of simulated steps whose composition a measured step "
             "ran). Beyond saturation queues diverge, so latency errors there are shown "
             "but not judged. Decoding rows: the 99th percentile of the rows a step "
             "decodes, measured and simulated; where the simulation's outgrow the "
             "measurement's past a CUDA-graph capture size, each of its decode steps pads "
             "to the next size and runs longer, which keeps still more rows decoding: a "
             "step-time error of a percent or two can tip a run near such a size (its "
             "TPOT tail then moves far more than the step error).", "",
             "| run | saturated | forward MAPE | host MAPE | steps found measured | "
             "decoding rows p99 (meas / sim) | "
             "TTFT p50 (sched / all) | TPOT p50 (sched / all) | throughput (sched / all) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        e, sched, all_ = r.step_errors["all"], metric_errors(r, "with_measured_steps"), \
            metric_errors(r)
        sat = saturated(r.measured)
        rows_meas, rows_sim = r.decoding_p99
        lines.append(f"| {r.run.load} | {'yes' if sat else 'no'} | {_abs_pct(e['forward'])} | "
                     f"{_abs_pct(e['host'])} | {_abs_pct(r.steps_matched)} | "
                     f"{rows_meas:.0f} / {rows_sim:.0f} | "
                     f"{_pct(sched['ttft_s.p50'])} / {_pct(all_['ttft_s.p50'])} | "
                     f"{_pct(sched['tpot_s.p50'])} / {_pct(all_['tpot_s.p50'])} | "
                     f"{_pct(sched['throughput'])} / {_pct(all_['throughput'])} |")
    return [*lines, ""]


def _below_saturation(results: Sequence[RunComparison]) -> list[RunComparison]:
    return [r for r in results if not saturated(r.measured)]


def _acceptance(results: Sequence[RunComparison], sat: dict[str, Any]) -> list[str]:
    """Issue 21's targets, on the runs below saturation (beyond it queues diverge)."""
    below = _below_saturation(results)
    cpu = any(r.run.on_cpu for r in results)

    def worst(key: str) -> float | None:
        xs = [abs(metric_errors(r)[key]) for r in below]
        return max(xs) if xs else None

    step = max((r.step_errors["all"]["total"] for r in below), default=None)
    sat_errors = [abs(_err(x["simulated"], x["measured"])) for x in sat["models"].values()
                  if x["measured"] is not None and x["simulated"] is not None]
    rows = [("per-step time, MAPE", step, TARGETS["step"], None),
            ("TTFT p50", worst("ttft_s.p50"), TARGETS["p50"], ("ttft_s", "p50")),
            ("TPOT p50", worst("tpot_s.p50"), TARGETS["p50"], ("tpot_s", "p50")),
            ("TTFT p99", worst("ttft_s.p99"), TARGETS["p99"], ("ttft_s", "p99")),
            ("TPOT p99", worst("tpot_s.p99"), TARGETS["p99"], ("tpot_s", "p99")),
            ("throughput", worst("throughput"), TARGETS["throughput"],
             ("output_tokens_per_s", None)),
            ("saturation load", max(sat_errors, default=None), TARGETS["saturation"], None)]
    lines = ["## Acceptance (issue 21)", "",
             f"Worst error over the runs below saturation ({len(below)} of "
             f"{len(results)}), beside the largest run-to-run spread of the same metric "
             "between repeated runs (\"Run-to-run spread\": the floor under its errors; "
             "- without repeats).", "",
             "| target | worst | limit | run-to-run spread | status |",
             "|---|---:|---:|---:|---|"]
    for name, value, limit, metric in rows:
        status = ("not judged: CPU runs" if cpu else "no data" if value is None
                  else "met" if value <= limit else "NOT met")
        floor = worst_spread(results, *metric) if metric else None
        lines.append(f"| {name} | {_abs_pct(value)} | {100 * limit:.0f}% | "
                     f"{_abs_pct(floor)} | {status} |")
    return [*lines, "", known_gaps(results), ""]


def _host_section(results: Sequence[RunComparison], stack: str) -> list[str]:
    lines = ["## Host work per step (fitted)", "",
             "`HostParams.serving_step_host_s`, `serving_seq_host_s`, "
             "`serving_chunk_host_s` and `serving_prefill_token_host_s` (per step, "
             "sequence, prefill chunk and prefill token) of the stack's "
             "calibration, fitted on the other runs' steps, and `host_launch_cost_s` (per "
             "kernel launch of an eager step), fitted on the other runs' eager steps "
             "(leave one run out)"
             + (", in sample where a run is the only one" if any(r.host_in_sample
                                                                 for r in results) else "")
             + ":", "", "| run | per step (us) | per sequence (us) | per chunk (us) "
             "| per 1k prefill tokens (us) | per eager launch (us) | fitted on |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in results:
        h = r.host
        launch = "-" if h.launch_s is None else f"{1e6 * h.launch_s:.1f}"
        lines.append(f"| {r.run.load} | {1e6 * h.step_s:.1f} | {1e6 * h.seq_s:.2f} | "
                     f"{1e6 * h.chunk_s:.1f} | {1e9 * h.prefill_token_s:.1f} | {launch} | "
                     f"{'this run (in sample)' if r.host_in_sample else 'the other runs'} |")
    if any(r.run.on_cpu for r in results):
        return [*lines, "", "(CPU runs: these values belong to no GPU's calibration.)", ""]
    def mean(field: str) -> float:
        return sum(getattr(r.host, field) for r in results) / len(results)

    lines += ["", "The mean of the fits above; `gpusim calibrate` ships the fit on all of "
              "a GPU's runs of each CUDA-graph mode (full_decode_only: the stack's host "
              "costs; full_and_piecewise: its `piecewise` ones) in its calibration file "
              "(`validation/calibrations/<gpu>.yaml`, `calibration.serving_calibrate`), "
              f"which `gpusim serve --stack {stack}` prices:", "", "```yaml", "stacks:",
              f"  {stack}:",
              *(f"    serving_{name}_host_s: {mean(field):.3g}" for name, field in
                (("step", "step_s"), ("seq", "seq_s"), ("chunk", "chunk_s"),
                 ("prefill_token", "prefill_token_s")))]
    launches = [r.host.launch_s for r in results if r.host.launch_s is not None]
    if launches:
        lines.append(f"    host_launch_cost_s: {sum(launches) / len(launches):.3g}")
    lines += ["```", ""]
    return lines
