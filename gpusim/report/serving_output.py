"""A serving run's summary as JSON text, CSV text and table rows (formatting only)."""

from __future__ import annotations

import math
from typing import Any

from gpusim import report

SERIES_KEYS = ("time_series", "latency_cdf")


def json_text(summary: dict[str, Any]) -> str:
    """The whole summary (time series and CDFs included) as JSON."""
    return report.to_json(report.json_safe(summary))


def flat_rows(summary: dict[str, Any]) -> list[dict[str, object]]:
    """(metric, value) rows: nested keys joined with dots, time series left out."""
    rows: list[dict[str, object]] = []

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            rows.append({"metric": prefix, "value": "" if node is None else node})

    walk("", {k: v for k, v in report.json_safe(summary).items() if k not in SERIES_KEYS})
    return rows


def csv_text(summary: dict[str, Any]) -> str:
    return report.to_csv(flat_rows(summary), ["metric", "value"])


LATENCY_COLUMNS = ["metric", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms", "count"]
OVERVIEW_COLUMNS = ["metric", "value"]


def latency_rows(summary: dict[str, Any]) -> list[dict[str, object]]:
    """One row per latency metric, in milliseconds."""
    rows = []
    for name, s in summary["latency_s"].items():
        row: dict[str, object] = {"metric": name.removesuffix("_s")}
        for key in ("mean", "p50", "p90", "p99", "max"):
            v = s[key]
            row[f"{key}_ms"] = v * 1e3 if isinstance(v, float) and math.isfinite(v) else "-"
        row["count"] = int(s["count"])
        rows.append(row)
    return rows


def overview_rows(summary: dict[str, Any]) -> list[dict[str, object]]:
    """Throughput, goodput, engine and Little's law figures worth a glance."""
    r, t, g, e, ll = (summary[k] for k in ("requests", "throughput", "goodput", "engine",
                                          "littles_law"))
    items: list[tuple[str, object]] = [
        ("requests completed", r["completed"]),
        ("requests rejected", r["rejected"]),
        ("preemptions", r["preemptions"]),
        ("throughput (req/s)", t["requests_per_s"]),
        ("output tokens/s", t["output_tokens_per_s"]),
        ("total tokens/s", t["total_tokens_per_s"]),
        ("goodput (req/s)", g["requests_per_s"]),
        ("SLO attainment", g["fraction"]),
        ("mean running", e["mean_running"]),
        ("mean queue length", e["mean_queue_length"]),
        ("mean KV utilisation", e["mean_kv_utilisation"]),
        ("max KV utilisation", e["max_kv_utilisation"]),
        ("achieved HBM GB/s", e["achieved_hbm_bandwidth_bytes_per_s"] / 1e9),
        ("HBM bandwidth fraction", e["hbm_bandwidth_fraction"]),
        ("Little's law gap", ll["relative_gap"]),
        ("makespan (s)", summary["makespan_s"]),
    ]
    return [{"metric": k, "value": v} for k, v in items]


def title(summary: dict[str, Any]) -> str:
    s = summary["scheduler"]
    return (f"{summary['model']} on {summary['gpu']}: {summary['scenario']}, "
            f"{s['policy']} batching (max_num_seqs={s['max_num_seqs']}, "
            f"max_num_batched_tokens={s['max_num_batched_tokens']}), seed {summary['seed']}, "
            f"calibration: {summary['calibration']}")
