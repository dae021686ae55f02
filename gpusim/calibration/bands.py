"""Error bands and the measured envelope of a calibration, and their coverage check.

A band is a quantile (``QUANTILE``, widened by ``MARGIN``) of |predicted/measured - 1| over the
leave-one-model-out (LOMO) predictions of the committed measurements (each row
predicted by a fit that never saw its model), per stack, launch, step mode and batch
range (``BATCH_RANGES``; a cell of fewer than ``MIN_ROWS`` rows takes its (launch,
mode)'s rows together). The envelope is what the fit was measured on: GPU, stacks,
model sizes and, per (launch, mode), the batch, context and q ranges. Both go into the
calibration file's ``trust`` section (``cost.trust.Trust``).

The coverage check is honest about the quantile being taken over the same errors:

* nested leave-one-model-out: each model's held-out errors against bands computed
  from the other models' held-out errors alone;
* held-out sets: the shipped calibration's predictions of measurements no fit saw
  (another machine, another lease, models never fitted) against the shipped bands.

Run alone: ``python -m gpusim.calibration.bands --gpu h100-sxm [--write]`` (the LOMO
fits of one GPU, about 2 minutes on 2 cores) prints the section and, with ``--write``,
replaces only the ``trust:`` section of ``validation/calibrations/<gpu>.yaml``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from gpusim.calibration.measurements import StepData
from gpusim.cost import Calibration
from gpusim.cost.trust import Band, Envelope, ShapeRange, Trust, assess
from gpusim.specs import GpuSpec, ModelSpec

# batch ranges of a band (inclusive); the measured grid has batch 1-256
BATCH_RANGES: tuple[tuple[int, int], ...] = ((1, 4), (5, 32), (33, 256), (257, 1 << 20))
# quantile of |held-out error| a band is: the 95th (times MARGIN, so that on models it
# never saw a band still covers >= 90% of rows: the nested check below)
QUANTILE = 0.95
# fewer held-out rows than this in a batch range: the band of its (launch, mode)'s rows
MIN_ROWS = 8
# the quantile widened by this factor: a model never seen errs beyond the others'
# quantile (nested LOMO coverage on the committed data: 89-91% at 1.0, 95-97% at 1.5)
MARGIN = 1.5
# a band is never narrower than this (the spread between two measurements of the same
# shapes on another lease: validation/REPORT.md)
FLOOR_PCT = 1.0
SOURCE = ("quantile of |predicted/measured - 1| over leave-one-model-out predictions "
          "of the fitted steps (gpusim.calibration.bands)")

Resolver = Callable[[str], ModelSpec]


def _abs_err(data: StepData, predicted_s: np.ndarray) -> np.ndarray:
    return np.abs(predicted_s / data.measured_s - 1.0)


def bands_of(data: StepData, predicted_s: np.ndarray, stack: str,
             quantile: float = QUANTILE) -> tuple[Band, ...]:
    """Bands of ``stack`` from held-out predictions ``predicted_s`` of ``data``'s rows
    (rows predicted NaN are skipped). Raises ValueError when lengths differ."""
    if len(predicted_s) != len(data):
        raise ValueError(f"predicted_s has {len(predicted_s)} rows, data {len(data)}")
    err = _abs_err(data, predicted_s)
    ok = np.isfinite(err)
    out = []
    for launch in sorted(set(data.launch[ok].tolist())):
        for mode in sorted(set(data.mode[ok].tolist())):
            cell_all = ok & (data.launch == launch) & (data.mode == mode)
            if not cell_all.any():
                continue
            for lo, hi in BATCH_RANGES:
                cell = cell_all & (data.batch >= lo) & (data.batch <= hi)
                if not cell.any():
                    continue
                used = cell if cell.sum() >= MIN_ROWS else cell_all
                pct = max(100.0 * MARGIN * float(np.quantile(err[used], quantile)),
                          FLOOR_PCT)
                out.append(Band(stack=stack, launch=launch, mode=mode, batch_min=lo,
                                batch_max=hi, error_pct=round(pct, 2),
                                rows=int(used.sum())))
    return tuple(out)


def envelope_of(data: StepData, gpu: str, stack: str, resolve: Resolver) -> Envelope:
    """What ``data`` (steps of ``stack``) was measured on (its models' parameter counts
    via ``resolve``)."""
    params = [float(resolve(m).param_count) for m in sorted(set(data.model.tolist()))]
    shapes = []
    for launch in sorted(set(data.launch.tolist())):
        for mode in sorted(set(data.mode.tolist())):
            m = (data.launch == launch) & (data.mode == mode)
            if m.any():
                shapes.append(ShapeRange(
                    stack=stack, launch=launch, mode=mode,
                    batch=(float(data.batch[m].min()), float(data.batch[m].max())),
                    ctx=(float(data.ctx[m].min()), float(data.ctx[m].max())),
                    q=(float(data.q[m].min()), float(data.q[m].max()))))
    return Envelope(gpu=gpu, stacks=(stack,), model_params=(min(params), max(params)),
                    shapes=tuple(shapes))


def merged(trusts: Sequence[Trust]) -> Trust:
    """One trust section from several stacks' (the first's quantile and source; the
    stacks in order, the first the reference). Raises ValueError for none."""
    if not trusts:
        raise ValueError("no trust sections to merge")
    envs = [t.envelope for t in trusts]
    return Trust(quantile=trusts[0].quantile, source=trusts[0].source,
                 bands=tuple(b for t in trusts for b in t.bands),
                 envelope=Envelope(
                     gpu=envs[0].gpu, stacks=tuple(s for e in envs for s in e.stacks),
                     model_params=(min(e.model_params[0] for e in envs),
                                   max(e.model_params[1] for e in envs)),
                     shapes=tuple(r for e in envs for r in e.shapes)))


def trust_of(data: StepData, lomo_s: np.ndarray, gpu: str, stack: str,
             resolve: Resolver, quantile: float = QUANTILE) -> Trust:
    """The ``trust`` section of ``stack``'s calibration on ``gpu`` from its LOMO
    predictions ``lomo_s`` of ``data``."""
    return Trust(quantile=quantile, source=SOURCE, bands=bands_of(data, lomo_s, stack,
                                                                   quantile),
                 envelope=envelope_of(data, gpu, stack, resolve))


def covered(trust: Trust, data: StepData, predicted_s: np.ndarray, gpu: str, stack: str,
            resolve: Resolver) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``data``: whether its error lies within its band (False without a
    band), and whether the shape lies inside the envelope."""
    err = 100.0 * _abs_err(data, predicted_s)
    params: dict[str, float] = {}
    within = np.zeros(len(data), bool)
    inside = np.zeros(len(data), bool)
    for i in range(len(data)):
        name = str(data.model[i])
        if name not in params:
            params[name] = float(resolve(name).param_count)
        a = assess(trust, gpu=gpu, stack=stack, launch=str(data.launch[i]),
                   mode=str(data.mode[i]), batch=float(data.batch[i]),
                   ctx=float(data.ctx[i]), q=float(data.q[i]), model_params=params[name])
        within[i] = a.band_pct is not None and err[i] <= a.band_pct
        inside[i] = not a.outside
    return within, inside


def nested_coverage(data: StepData, lomo_s: np.ndarray, gpu: str, stack: str,
                    resolve: Resolver) -> np.ndarray:
    """Per row: whether its LOMO error lies within the band computed from the other
    models' LOMO errors alone (its own model's errors never set its band)."""
    out = np.zeros(len(data), bool)
    for model in sorted(set(data.model.tolist())):
        held = data.model == model
        others = data.subset(~held)
        trust = Trust(quantile=QUANTILE, bands=bands_of(others, lomo_s[~held], stack),
                      envelope=envelope_of(data, gpu, stack, resolve))
        within, _ = covered(trust, data.subset(held), lomo_s[held], gpu, stack, resolve)
        out[held] = within
    return out


def _by_mode(gpu: str, what: str, data: StepData, within: np.ndarray
             ) -> list[dict[str, object]]:
    rows = []
    for launch in ("graph", "eager"):
        for mode in sorted(set(data.mode.tolist())):
            m = (data.launch == launch) & (data.mode == mode)
            if m.any():
                rows.append({"gpu": gpu, "rows": what, "launch": launch, "mode": mode,
                             "n": int(m.sum()), "covered": float(within[m].mean())})
    return rows


HeldSet = tuple[str, StepData, np.ndarray]   # label, data, shipped calibration's predictions


def coverage_rows(gpu: str, stack: str, data: StepData, lomo_s: np.ndarray,
                  shipped: Trust | None, held: Sequence[HeldSet], resolve: Resolver
                  ) -> list[dict[str, object]]:
    """The coverage table's rows of one GPU: nested LOMO per (launch, mode), then each
    held-out set inside the envelope under the shipped bands (none without them)."""
    rows = _by_mode(gpu, "LOMO, band from the other models",
                    data, nested_coverage(data, lomo_s, gpu, stack, resolve))
    if shipped is None:
        return rows
    for label, hdata, pred in held:
        within, inside = covered(shipped, hdata, pred, gpu, stack, resolve)
        if inside.any():
            rows += _by_mode(gpu, f"{label} (inside the envelope)", hdata.subset(inside),
                             within[inside])
        if (~inside).any():
            rows.append({"gpu": gpu, "rows": f"{label}: outside the envelope, warned",
                         "launch": "", "mode": "", "n": int((~inside).sum()),
                         "covered": float(within[~inside].mean())})
    return rows


def section(rows: Sequence[dict[str, object]]) -> str:
    """validation/REPORT.md's "Error bands" section from ``coverage_rows`` of every GPU."""
    from gpusim.report import markdown_table

    lomo = [r for r in rows if str(r["rows"]).startswith("LOMO")]
    n = sum(int(r["n"]) for r in lomo)  # type: ignore[call-overload]
    share = sum(float(r["covered"]) * int(r["n"]) for r in lomo) / n if n else float("nan")  # type: ignore[call-overload]
    worst = min((float(r["covered"]) for r in lomo), default=float("nan"))  # type: ignore[arg-type]
    return "\n".join([
        "## Error bands: coverage of held-out errors", "",
        "Every prediction carries a band (`band_pct`, and the measured times it allows, "
        "`band_low_ms`-`band_high_ms`) and an envelope check (`envelope: ok`, or the "
        "dimensions outside what the calibration was measured on: batch, context, q, "
        "model size, GPU, stack, launch). A band is the "
        f"{100 * QUANTILE:.0f}th percentile, times {MARGIN:g}, of |predicted/measured - 1| "
        "over the "
        "leave-one-model-out predictions of the fitted steps, per stack, launch, mode "
        f"and batch range ({', '.join(f'{lo}-{hi}' for lo, hi in BATCH_RANGES[:-1])}, "
        f">{BATCH_RANGES[-1][0] - 1}; fewer than {MIN_ROWS} rows: the mode's rows "
        f"together), at least {FLOOR_PCT:g}%; it is stored in the calibration file's "
        "`trust:` section (`python -m gpusim.calibration.bands --gpu G --write`).", "",
        "Coverage is the share of rows whose error lies within their band. The bands "
        "are quantiles of the same held-out errors, so coverage on those rows would be "
        "in-sample; instead each model's LOMO errors are checked against bands computed "
        "from the other models' LOMO errors alone (\"LOMO, band from the other "
        "models\"), and the shipped bands are checked on measurements no fit saw (the "
        "held-out sets, predicted by the shipped calibration; rows outside the "
        "envelope are warned about and listed apart). Target: >= 90% per GPU and mode.",
        "",
        f"Nested LOMO coverage, all rows: {100 * share:.1f}% of {n}; lowest cell "
        f"{100 * worst:.1f}%.", "",
        markdown_table(rows, ["gpu", "rows", "launch", "mode", "n", "covered"],
                       ("covered",)), ""])


_TRUST_BLOCK = re.compile(r"^trust:.*?(?=^\S|\Z)", re.S | re.M)


def with_trust(text: str, trust: Trust | None) -> str:
    """A calibration file's text with its ``trust:`` section replaced by ``trust``'s
    (appended when absent; removed for None); every other line byte-identical."""
    import yaml

    body = _TRUST_BLOCK.sub("", text)
    if not body.endswith("\n"):
        body += "\n"
    if trust is None:
        return body
    return body + yaml.safe_dump({"trust": trust.model_dump(mode="json")},
                                 sort_keys=False, width=100)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gpusim.calibration.bands --gpu G [--write] [--data-dir D]``: one
    GPU's LOMO fits, its bands, and the coverage section on stdout; ``--write``
    replaces the trust section of the shipped calibration file. Returns the exit code."""
    import argparse

    from gpusim.calibration.die_physics import physics_die_source
    from gpusim.calibration.fit_inputs import read_fit_inputs
    from gpusim.calibration.held_out import held_out_sets, read_held_out
    from gpusim.calibration.validate import (
        in_sample,
        judging_physics,
        leave_one_model_out,
    )
    from gpusim.io import calibrations, loader

    ap = argparse.ArgumentParser(prog="python -m gpusim.calibration.bands")
    ap.add_argument("--gpu", required=True)
    ap.add_argument("--data-dir", type=Path, default=loader.ROOT / "validation" / "data")
    ap.add_argument("--write", action="store_true",
                    help="replace the trust section of validation/calibrations/<gpu>.yaml")
    args = ap.parse_args(argv)
    gpu, st = loader.load_gpu(args.gpu), loader.load_stack(loader.REFERENCE_STACK)
    inputs = read_fit_inputs(gpu, st, args.data_dir)
    data, profiles, sweep, clocks, attention, joint = (
        inputs.data, inputs.profiles, inputs.sweep, inputs.clocks, inputs.attention,
        inputs.joint)
    print(f"{gpu.name}: leave-one-model-out fits of {len(data)} rows ...", file=sys.stderr)
    die = physics_die_source(gpu, st, len(attention), args.data_dir)
    lomo = leave_one_model_out(data, gpu, st, loader.load_model, (), profiles, sweep,
                               clocks, attention, joint, die)
    trusts = [trust_of(data, lomo.predicted_s, gpu.name, st.name, loader.load_model)]
    cal_file = calibrations.CALIBRATIONS_DIR / f"{gpu.name}.yaml"
    held: list[HeldSet] = []
    if cal_file.is_file():
        shipped = calibrations.load_calibration(str(cal_file), gpu, st)
        physics = judging_physics(shipped, data, gpu, st, loader.load_model, (), profiles,
                                  sweep, clocks, attention, joint, die)
        trusts += stack_trusts(args.data_dir / gpu.name / "stacks", gpu, physics, st.name)
        for h in held_out_sets({gpu.name: read_held_out(args.data_dir / gpu.name)}):
            d = h.data[gpu.name]
            ev = in_sample(d, gpu, st, shipped, loader.load_model, h.label)
            held.append((h.label, d, ev.predicted_s))
    trust = merged(trusts)
    if args.write:
        from gpusim import report

        report.write_atomic(cal_file, with_trust(cal_file.read_text(), trust))
        print(f"wrote the trust section of {cal_file}", file=sys.stderr)
    print(section(coverage_rows(gpu.name, st.name, data, lomo.predicted_s, trust, held,
                                loader.load_model)))
    return 0


def stack_trusts(directory: Path, gpu: GpuSpec,
                 physics: Callable[[str], Calibration], reference: str) -> list[Trust]:
    """Bands and envelopes of every other stack measured under ``directory``
    (``<stack>/steps.csv``): its own parameters fitted leaving one model out, the
    physics held (``physics``, by the stack's name: fitted without its measurements
    where they went into the shipped one); a stack of one model has no held-out rows,
    hence no band."""
    from gpusim.calibration.die import fold_values
    from gpusim.calibration.measurements import read_steps
    from gpusim.calibration.stacks_report import evaluate_stack
    from gpusim.io import loader

    out = []
    for steps_csv in sorted(directory.glob("*/steps.csv")):
        stack = loader.load_stack(steps_csv.parent.name)
        if stack.name == reference:
            continue
        data = read_steps(steps_csv, stack.name)
        held = fold_values(gpu, stack, set(map(str, data.model)), directory.parent.parent)
        ev = evaluate_stack(stack, data, gpu, physics(stack.name), loader.load_model,
                            held=held)
        bands = bands_of(data, ev.lomo_s, stack.name)
        if bands:
            out.append(Trust(quantile=QUANTILE, source=SOURCE, bands=bands,
                             envelope=envelope_of(data, gpu.name, stack.name,
                                                  loader.load_model)))
            print(f"{gpu.name} {stack.name}: {len(bands)} bands", file=sys.stderr)
    return out


if __name__ == "__main__":
    sys.exit(main())
