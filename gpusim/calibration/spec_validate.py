"""Predicted against measured speculative loops; the host round trip fitted from them.

Two predictions of every measured iteration:

* ``composed``: the loop model on the *measured* step times (the draft step and the
  verify pass timed alone): tests the iteration model itself (pipelining of graph
  launches, the host round trip), free of step-model error.
* ``end_to_end``: ``predict_iteration`` with predicted step times (the GPU's
  calibration): what a user gets.

The round trip and the graph launch cost hidden by back-to-back replays are fitted on
the rows of one pair (bounded linear least squares on relative error) and reported on
every row, the fit pair's rows marked in-sample. The
plain decoding loop (one step + one round trip per token) is a fit-free check.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from gpusim.calibration.spec_measured import SpecRow
from gpusim.platform import Platform
from gpusim.specs import ModelSpec
from gpusim.speculative.acceptance import IidAcceptance
from gpusim.speculative.drafts import kind_of, parse_draft
from gpusim.speculative.iteration import Speculation, predict_iteration
from gpusim.speculative.overhead import SpecOverhead
from gpusim.speculative.trees import TokenTree

TARGET_ERROR = 0.05


def loop_parts(r: SpecRow) -> tuple[float, list[float]]:
    """(host work before the first launch, alone times of the launches in order) of a
    measured iteration: a draft model or EAGLE head replays k draft steps then the
    verify; Medusa's heads run inside the verify; prompt lookup is host work (the
    row's draft step) before the verify."""
    kind = kind_of(r.draft)
    if kind == "medusa":
        return 0.0, [r.verify_s]
    if kind == "ngram":
        return r.draft_step_s, [r.verify_s]
    return 0.0, [r.draft_step_s] * r.k + [r.verify_s]


def composed_no_round_trip_s(rows: Sequence[SpecRow], graph_launch_s: float) -> np.ndarray:
    """Iteration time from measured alone step times, before the round trip: the
    launches of ``loop_parts``, each alone = launch + GPU time; launches after the
    first overlap the GPU work (``iteration.pipeline_end_s`` with measured times)."""
    out = []
    for r in rows:
        host_before, alone = loop_parts(r)
        h = min(graph_launch_s, *alone)
        host = host_before
        gpu_end = 0.0
        for t in alone:
            start = host
            host = start + h
            gpu_end = max(gpu_end + (t - h), start + t)
        out.append(max(gpu_end, host))
    return np.asarray(out)


def _fit_relative(meas: np.ndarray, known: np.ndarray, columns: list[np.ndarray],
                  upper: list[float]) -> list[float]:
    """Coefficients x in [0, upper] of ``known + sum(x_i * columns_i)`` that minimise
    its squared relative error against ``meas`` (bounded linear least squares)."""
    from scipy.optimize import lsq_linear

    a = np.stack([c / meas for c in columns], axis=1)
    res = lsq_linear(a, (meas - known) / meas, bounds=([0.0] * len(upper), upper))
    return [float(v) for v in res.x]


def fit_overhead_s(rows: Sequence[SpecRow]) -> tuple[float, float]:
    """(host round trip, graph launch hidden per replay) minimising the squared relative
    error of the composed iteration over ``rows``: host work + sum(T) - h per launch
    after the first + rt (``loop_parts``; 0 <= rt <= 0.1 s, 0 <= h <= 1 ms)."""
    meas = np.array([r.iteration_s for r in rows])
    parts = [loop_parts(r) for r in rows]
    alone = np.array([before + sum(ts) for before, ts in parts])
    hidden = np.array([float(len(ts) - 1) for _, ts in parts])   # launches hidden
    rt, h = _fit_relative(meas, alone, [np.ones_like(meas), -hidden], [0.1, 1e-3])
    return rt, h


def fit_lookup_s(rows: Sequence[SpecRow]) -> tuple[float, float, float]:
    """(fixed seconds, seconds per sequence, seconds per history token) of the host's
    prompt lookup, from the lookup times measured alone (``draft_step_s`` of n-gram
    rows) against batch and batch x ctx tokens scanned, on relative error (all >= 0)."""
    meas = np.array([r.draft_step_s for r in rows])
    seqs = np.array([float(r.batch) for r in rows])
    fixed, per_seq, per_token = _fit_relative(
        meas, np.zeros_like(meas), [np.ones_like(meas), seqs, seqs * [r.ctx for r in rows]],
        [0.1, 1e-3, 1e-6])
    return fixed, per_seq, per_token


def fit_ngram_loop_s(rows: Sequence[SpecRow], composed_s: np.ndarray
                     ) -> tuple[float, float]:
    """(fixed seconds, seconds per sequence) of a prompt-lookup iteration's host work
    besides the lookup (``SpecOverhead.ngram_loop_s``): what the measured iterations of
    ``rows`` take over ``composed_s``, their composed times (lookup, verify, round
    trip), on relative error (both >= 0)."""
    meas = np.array([r.iteration_s for r in rows])
    seqs = np.array([float(r.batch) for r in rows])
    fixed, per_seq = _fit_relative(meas, composed_s, [np.ones_like(meas), seqs],
                                   [0.1, 1e-3])
    return fixed, per_seq


def _errors(pred: np.ndarray, meas: np.ndarray) -> dict[str, float]:
    if len(pred) == 0:
        return {"n": 0, "mape": float("nan"), "p90": float("nan"), "max": float("nan"),
                "bias": float("nan")}
    e = pred / meas - 1.0
    a = np.abs(e)
    return {"n": len(e), "mape": float(a.mean()), "p90": float(np.percentile(a, 90)),
            "max": float(a.max()), "bias": float(e.mean())}


@dataclass(frozen=True)
class GpuValidation:
    """One GPU's measured rows, the fitted overhead and per-row predictions."""

    gpu: str
    fit_pair: str
    overhead: SpecOverhead
    rows: list[SpecRow]
    composed_s: np.ndarray
    end_to_end_s: np.ndarray
    plain_predicted_s: np.ndarray
    ngram_fit_pair: str | None = None  # its iterations fit the lookup loop's host work

    def in_fit(self, pair: str) -> bool:
        """Whether ``pair``'s iterations fitted any of the overhead."""
        return pair in (self.fit_pair, self.ngram_fit_pair)

    def points(self) -> list[dict[str, object]]:
        out = []
        for i, r in enumerate(self.rows):
            out.append({
                "gpu": self.gpu, "pair": r.pair, "k": r.k, "batch": r.batch, "ctx": r.ctx,
                "in_fit": self.in_fit(r.pair), "measured_ms": r.iteration_s * 1e3,
                "composed_ms": float(self.composed_s[i]) * 1e3,
                "composed_error": float(self.composed_s[i]) / r.iteration_s - 1.0,
                "end_to_end_ms": float(self.end_to_end_s[i]) * 1e3,
                "end_to_end_error": float(self.end_to_end_s[i]) / r.iteration_s - 1.0})
        return out

    def summary(self) -> list[dict[str, object]]:
        meas = np.array([r.iteration_s for r in self.rows])
        held = np.array([not self.in_fit(r.pair) for r in self.rows])
        out = []
        for label, pred in (("composed", self.composed_s), ("end_to_end", self.end_to_end_s)):
            for subset, mask in (("all rows", np.ones(len(meas), bool)),
                                 ("held-out pairs", held)):
                e = _errors(pred[mask], meas[mask])
                out.append({"gpu": self.gpu, "prediction": label, "rows": subset, **e,
                            "within_5pct": bool(e["n"] and e["max"] <= TARGET_ERROR)})
        plain = [(p, r.plain_iteration_s) for p, r in zip(self.plain_predicted_s, self.rows,
                                                          strict=True)
                 if r.plain_iteration_s]
        if plain:
            p, m = (np.array(x) for x in zip(*plain, strict=True))
            e = _errors(p, m)
            out.append({"gpu": self.gpu, "prediction": "plain loop (composed)",
                        "rows": "all rows", **e,
                        "within_5pct": bool(e["max"] <= TARGET_ERROR)})
        return out

    def by_pair(self) -> list[dict[str, object]]:
        meas = np.array([r.iteration_s for r in self.rows])
        out = []
        for pair in sorted({r.pair for r in self.rows}):
            m = np.array([r.pair == pair for r in self.rows])
            out.append({"gpu": self.gpu, "pair": pair, "in_fit": self.in_fit(pair),
                        "composed_mape": _errors(self.composed_s[m], meas[m])["mape"],
                        "composed_max": _errors(self.composed_s[m], meas[m])["max"],
                        "end_to_end_mape": _errors(self.end_to_end_s[m], meas[m])["mape"],
                        "end_to_end_max": _errors(self.end_to_end_s[m], meas[m])["max"]})
        return out


def validate_gpu(platform: Platform, rows: list[SpecRow],
                 load_model: Callable[[str], ModelSpec], fit_pair: str | None = None,
                 source: str = "spec.csv") -> GpuValidation:
    """Fit the round trip on ``fit_pair`` (default: the first pair in the file) and
    predict every graph row. Raises ValueError for an unknown fit pair or no rows."""
    gpu = platform.gpu
    graph = [r for r in rows if r.launch == "graph"]
    if not graph:
        raise ValueError(f"{source}: no rows with launch=graph")
    pairs = list(dict.fromkeys(r.pair for r in graph))
    fp = fit_pair or pairs[0]
    if fp not in pairs:
        raise ValueError(f"fit_pair={fp!r} is not in {source} (pairs: {', '.join(pairs)})")
    fit_rows = [r for r in graph if r.pair == fp]
    rt, h = fit_overhead_s(fit_rows)
    composed0 = composed_no_round_trip_s(graph, h)
    is_ngram = np.array([kind_of(r.draft) == "ngram" for r in graph])
    ngram = [r for r, n in zip(graph, is_ngram, strict=True) if n]
    fitted_on = f"{source} pair {fp} ({len(fit_rows)} rows)"
    lookup = {}
    nfp = None
    if ngram:
        fixed, per_seq, per_token = fit_lookup_s(ngram)
        # the rest of the lookup loop's host work: on the first n-gram pair's
        # iterations (the other n-gram pairs are held out)
        nfp = ngram[0].pair
        mine = np.array([r.pair == nfp for r in graph])
        loop_fixed, loop_per_seq = fit_ngram_loop_s(
            [r for r, m in zip(graph, mine, strict=True) if m], composed0[mine] + rt)
        lookup = {"ngram_lookup_fixed_s": fixed, "ngram_lookup_s_per_sequence": per_seq,
                  "ngram_lookup_s_per_token": per_token, "ngram_loop_fixed_s": loop_fixed,
                  "ngram_loop_s_per_sequence": loop_per_seq}
        fitted_on += (f"; prompt lookup: its {len(ngram)} n-gram rows' lookup times, "
                      f"the rest of its loop on pair {nfp}")
    ov = SpecOverhead(gpu=gpu.name, fitted_on=fitted_on, host_round_trip_s=rt,
                      graph_launch_s=h, **lookup,
                      notes="gpusim spec-validate: bounded least squares on the relative "
                            "error of the composed iteration (measured step times) and "
                            "of the lookup time alone")
    batch = np.array([float(r.batch) for r in graph])
    composed0 = composed0 + np.where(is_ngram, ov.ngram_loop_s(batch), 0.0)
    e2e = np.empty(len(graph))
    groups: dict[tuple[str, str, int], list[int]] = {}
    for i, r in enumerate(graph):
        groups.setdefault((r.target, r.draft, r.k), []).append(i)
    for (tname, dname, k), idx in groups.items():
        spec = Speculation(load_model(tname), parse_draft(dname, load_model),
                           TokenTree.chain(k), IidAcceptance(0.0))
        b = np.array([graph[i].batch for i in idx])
        c = np.array([graph[i].ctx for i in idx])
        p = predict_iteration(platform.with_launch("graph"), ov, spec, b, c)
        e2e[idx] = p.iteration_s
    plain = np.array([r.target_step_s + rt for r in graph])
    return GpuValidation(gpu=gpu.name, fit_pair=fp, overhead=ov, rows=graph,
                         composed_s=composed0 + rt, end_to_end_s=e2e, plain_predicted_s=plain,
                         ngram_fit_pair=nfp)


REPORT_ACCEPTANCES = (0.6, 0.8, 0.9)


def measured_speedups(rows: Sequence[SpecRow], rates: Sequence[float] = REPORT_ACCEPTANCES
                      ) -> list[dict[str, object]]:
    """Speedup of the measured loops over the measured plain loop, best k per (pair,
    ctx, batch), for i.i.d. acceptance ``rates``: plain ms per token / (iteration ms /
    E[tokens])."""
    out = []
    keys = sorted({(r.pair, r.ctx, r.batch) for r in rows if r.plain_iteration_s})
    for a in rates:
        acc = IidAcceptance(a)
        for pair, ctx, batch in keys:
            cell = [r for r in rows if (r.pair, r.ctx, r.batch) == (pair, ctx, batch)]
            sp = {r.k: r.plain_iteration_s / (r.iteration_s / acc.expected_tokens(r.k))
                  for r in cell if r.plain_iteration_s}
            k = max(sp, key=lambda kk: sp[kk])
            out.append({"acceptance": a, "pair": pair, "ctx": ctx, "batch": batch,
                        "best_k": k, "speedup": sp[k]})
    return out


def _measured_section(results: Sequence[GpuValidation]) -> list[str]:
    from gpusim import report

    lines = ["", "## Measured speedup over plain decoding (best k)", "",
             "From the measured loops alone (no model): plain-loop ms per token over "
             "iteration ms / E[tokens] for i.i.d. acceptance a. `first loss`: the smallest "
             "measured batch where the best k is slower than plain decoding.", ""]
    for r in results:
        ms = measured_speedups(r.rows)
        batches = sorted({int(m["batch"]) for m in ms})  # type: ignore[call-overload]
        table = []
        for (a, pair, ctx) in dict.fromkeys((m["acceptance"], m["pair"], m["ctx"])
                                            for m in ms):
            cells = {m["batch"]: m for m in ms
                     if (m["acceptance"], m["pair"], m["ctx"]) == (a, pair, ctx)}
            row: dict[str, object] = {"gpu": r.gpu, "pair": pair, "a": a, "ctx": ctx}
            for b in batches:
                c = cells.get(b)
                row[f"b={b}"] = f"{c['speedup']:.2f} (k={c['best_k']})" if c else ""
            losing = [b for b in batches if b in cells and float(cells[b]["speedup"]) < 1]  # type: ignore[arg-type]
            row["first loss"] = losing[0] if losing else "-"
            table.append(row)
        lines.append(report.markdown_table(
            table, ["gpu", "pair", "a", "ctx", *[f"b={b}" for b in batches], "first loss"]))
        lines.append("")
    return lines


def markdown(results: Sequence[GpuValidation], command: str) -> str:
    """The validation report: fitted round trips, error tables, per pair."""
    from gpusim import report

    lines = ["# Speculative decoding: predicted vs measured iteration times", "",
             f"Generated by `{command}`. Target: every row within "
             f"{TARGET_ERROR:.0%} of the measured loop.", "",
             "`composed`: the iteration model on measured step times (tests the loop "
             "model); `end_to_end`: predicted step times from the GPU's calibration "
             "(what a user gets). The host round trip is fitted on one pair's rows; "
             "`held-out pairs` are rows it never saw. Prompt lookup's host cost (fixed, "
             "per sequence, per history token) is fitted on the n-gram rows' lookup "
             "times measured alone; the rest of a lookup iteration's host work (copying "
             "the proposals to the GPU, appending accepted tokens to the histories; "
             "fixed and per sequence) on the iterations of one n-gram pair "
             "(`ngram_fit_pair`), the others held out.", "",
             "## Fitted host round trip", ""]
    lines.append(report.markdown_table(
        [{"gpu": r.gpu, "fit_pair": r.fit_pair,
          "host_round_trip_us": r.overhead.host_round_trip_s * 1e6,
          "graph_launch_us": (r.overhead.graph_launch_s or 0.0) * 1e6,
          "ngram_lookup_us": r.overhead.ngram_lookup_fixed_s * 1e6,
          "ngram_us_per_sequence": r.overhead.ngram_lookup_s_per_sequence * 1e6,
          "ngram_ns_per_token": r.overhead.ngram_lookup_s_per_token * 1e9,
          "ngram_fit_pair": r.ngram_fit_pair or "-",
          "ngram_loop_us": r.overhead.ngram_loop_fixed_s * 1e6,
          "ngram_loop_us_per_sequence": r.overhead.ngram_loop_s_per_sequence * 1e6,
          "rows": len(r.rows)}
         for r in results], ["gpu", "fit_pair", "host_round_trip_us", "graph_launch_us",
                             "ngram_lookup_us", "ngram_us_per_sequence", "ngram_ns_per_token",
                             "ngram_fit_pair", "ngram_loop_us", "ngram_loop_us_per_sequence",
                             "rows"]))
    lines += ["", "## Errors", ""]
    summ = [s for r in results for s in r.summary()]
    lines.append(report.markdown_table(
        summ, ["gpu", "prediction", "rows", "n", "mape", "p90", "max", "bias", "within_5pct"],
        percent=("mape", "p90", "max", "bias")))
    lines += ["", "## By pair", ""]
    bp = [s for r in results for s in r.by_pair()]
    lines.append(report.markdown_table(
        bp, ["gpu", "pair", "in_fit", "composed_mape", "composed_max", "end_to_end_mape",
             "end_to_end_max"],
        percent=("composed_mape", "composed_max", "end_to_end_mape", "end_to_end_max")))
    lines += _measured_section(results)
    return "\n".join(lines).rstrip("\n") + "\n"
