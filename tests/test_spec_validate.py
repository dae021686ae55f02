"""spec-validate: reading spec.csv, fitting the host overhead, error tables."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from gpusim.calibration.spec_measured import SPEC_COLUMNS, SpecRow, read_spec_csv
from gpusim.calibration.spec_validate import (
    composed_no_round_trip_s,
    fit_lookup_s,
    fit_ngram_loop_s,
    fit_overhead_s,
    loop_parts,
    markdown,
    validate_gpu,
)
from gpusim.cost import Calibration
from gpusim.errors import ConfigError
from gpusim.io.loader import load_model
from gpusim.io.overhead import from_yaml, to_yaml
from gpusim.platform import Platform
from gpusim.speculative.overhead import SpecOverhead

RT, H = 60e-6, 15e-6
PAIRS = (("llama-3.1-8b", "llama-3.2-1b"), ("llama-3.2-3b", "llama-3.2-1b"))


def write_spec_csv(path: Path, rt: float = RT, h: float = H, noise: float = 0.0) -> None:
    """A synthetic measurement: the loop exactly as the composed model says."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SPEC_COLUMNS)
        w.writeheader()
        i = 0
        for t, d in PAIRS:
            for b in (1, 16):
                for c in (1024, 4096):
                    draft = 2.2e-3 * (1 + b / 64) * (1 + c / 65536)
                    target = (8e-3 if "8b" in t else 4.8e-3) * (1 + b / 64)
                    for k in (1, 2, 4, 8):
                        verify = target * (1 + 0.01 * k)
                        it = k * draft + verify - k * h + rt
                        it *= 1 + noise * ((i % 3) - 1)
                        i += 1
                        w.writerow({
                            "pair": f"{t}+{d}", "target": t, "draft": d, "k": k, "batch": b,
                            "ctx": c, "launch": "graph", "iteration_ms": it * 1e3,
                            "iteration_p10_ms": it * 1e3, "iteration_p90_ms": it * 1e3,
                            "repeats": 20, "draft_step_ms": draft * 1e3,
                            "verify_ms": verify * 1e3, "target_step_ms": target * 1e3,
                            "plain_iteration_ms": (target + rt) * 1e3, "plain_p10_ms": "",
                            "plain_p90_ms": "", "accepted_mean": 0})


def test_fit_recovers_round_trip_and_launch(tmp_path):
    f = tmp_path / "h100-sxm" / "spec.csv"
    write_spec_csv(f)
    rows = read_spec_csv(f)
    rt, h = fit_overhead_s(rows)
    assert rt == pytest.approx(RT, rel=1e-6) and h == pytest.approx(H, rel=1e-6)


def test_validate_gpu_composed_is_exact_on_synthetic_data(tmp_path, h100, stack):
    f = tmp_path / "h100-sxm" / "spec.csv"
    write_spec_csv(f, noise=0.01)
    v = validate_gpu(Platform(h100, stack), read_spec_csv(f), load_model)
    assert v.fit_pair == "llama-3.1-8b+llama-3.2-1b"
    summ = {(s["prediction"], s["rows"]): s for s in v.summary()}
    assert summ[("composed", "all rows")]["max"] < 0.02
    assert summ[("composed", "held-out pairs")]["n"] == 16
    assert summ[("plain loop (composed)", "all rows")]["max"] < 0.01
    assert {p["in_fit"] for p in v.points()} == {True, False}
    md = markdown([v], "gpusim spec-validate")
    assert "host_round_trip_us" in md and "held-out pairs" in md
    ov = v.overhead
    assert ov.graph_launch_s is not None and ov.host_round_trip_s > 0
    assert from_yaml(_write(tmp_path / "ov.yaml", to_yaml(ov))) == ov


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_unknown_fit_pair(tmp_path, h100, stack):
    f = tmp_path / "h100-sxm" / "spec.csv"
    write_spec_csv(f)
    with pytest.raises(ValueError, match="fit_pair"):
        validate_gpu(Platform(h100, stack), read_spec_csv(f), load_model, "nope")


@pytest.mark.parametrize("edit,line,field", [
    (lambda t: re.sub(r"graph,[0-9.]+,", "graph,x,", t, count=1), 2, "iteration_ms"),
    (lambda t: t.replace("llama-3.1-8b,llama-3.2-1b,1,", "llama-3.1-8b,llama-3.2-1b,0,", 1),
     2, "k"),
    (lambda t: t.replace("pair,", "pairs,", 1), 1, None),
    (lambda t: t.splitlines()[0] + "\n", None, None),
])
def test_read_errors(tmp_path, edit, line, field):
    f = tmp_path / "h100-sxm" / "spec.csv"
    write_spec_csv(f)
    f.write_text(edit(f.read_text()))
    with pytest.raises(ConfigError) as exc:
        read_spec_csv(f)
    msg = str(exc.value)
    if line is not None:
        assert f"{f}:{line}" in msg
    if field is not None:
        assert f": {field}:" in msg


def test_overhead_yaml_errors(tmp_path):
    f = _write(tmp_path / "ov.yaml", "host_round_trip_s: 5\n")
    with pytest.raises(ConfigError, match=r"ov.yaml:1: host_round_trip_s"):
        from_yaml(f)
    f = _write(tmp_path / "ov.yaml", "host_round_trip_s: 1.0e-5\nbogus: 1\n")
    with pytest.raises(ConfigError, match=r"ov.yaml:2: bogus: unknown key"):
        from_yaml(f)
    assert SpecOverhead().calibration_for_loop(Calibration()) == Calibration()


def _row(draft: str, k: int = 3, draft_s: float = 1e-3, verify_s: float = 8e-3) -> SpecRow:
    return SpecRow(line=2, pair=f"t+{draft}", target="llama-3.1-8b", draft=draft, k=k,
                   batch=4, ctx=1024, launch="graph", iteration_s=1e-2, draft_step_s=draft_s,
                   verify_s=verify_s, target_step_s=7e-3, plain_iteration_s=None)


def test_loop_parts_of_each_draft_kind():
    """A model or EAGLE head replays k draft steps; Medusa's heads are inside the
    verify; prompt lookup is host work before the verify's launch."""
    assert loop_parts(_row("llama-3.2-1b")) == (0.0, [1e-3] * 3 + [8e-3])
    assert loop_parts(_row("eagle:1")) == (0.0, [1e-3] * 3 + [8e-3])
    assert loop_parts(_row("medusa:4")) == (0.0, [8e-3])
    assert loop_parts(_row("ngram")) == (1e-3, [8e-3])
    got = composed_no_round_trip_s([_row("llama-3.2-1b"), _row("medusa:4"), _row("ngram")],
                                   graph_launch_s=20e-6)
    # the model draft: launches after the first hide 20 us each behind the GPU's work
    assert got == pytest.approx([3e-3 + 8e-3 - 3 * 20e-6, 8e-3, 1e-3 + 8e-3])


def test_fit_lookup_recovers_fixed_and_per_token_cost():
    rows = [_row("ngram", draft_s=40e-6 + 3e-6 * b + 6e-9 * b * c) for b in (1, 4, 16, 64)
            for c in (1024, 4096)]
    rows = [SpecRow(**{**r.__dict__, "batch": b, "ctx": c})
            for r, (b, c) in zip(rows, [(b, c) for b in (1, 4, 16, 64) for c in (1024, 4096)],
                                 strict=True)]
    fixed, per_seq, per_token = fit_lookup_s(rows)
    assert fixed == pytest.approx(40e-6, rel=1e-6) and per_seq == pytest.approx(3e-6, rel=1e-6)
    assert per_token == pytest.approx(6e-9, rel=1e-6)


def test_fit_ngram_loop_recovers_the_host_work_besides_the_lookup():
    """Iterations that take 150 us + 2 us per sequence over their composed time."""
    batches = (1, 4, 16, 64)
    composed = np.array([5e-3 + 1e-4 * b for b in batches])
    rows = [SpecRow(**{**_row("ngram").__dict__, "batch": b,
                       "iteration_s": float(c) + 150e-6 + 2e-6 * b})
            for b, c in zip(batches, composed, strict=True)]
    fixed, per_seq = fit_ngram_loop_s(rows, composed)
    assert fixed == pytest.approx(150e-6, rel=1e-6)
    assert per_seq == pytest.approx(2e-6, rel=1e-6)
    # never negative: iterations faster than composed fit zero
    fast = [SpecRow(**{**r.__dict__, "iteration_s": float(c) * 0.9})
            for r, c in zip(rows, composed, strict=True)]
    assert fit_ngram_loop_s(fast, composed) == pytest.approx((0.0, 0.0), abs=1e-12)


def test_lookup_iteration_adds_the_loop_host_work_to_the_lookup():
    from gpusim.speculative.drafts import NgramDraft
    from gpusim.speculative.loop_steps import lookup_s

    ov = SpecOverhead(ngram_lookup_fixed_s=30e-6, ngram_loop_fixed_s=100e-6,
                      ngram_loop_s_per_sequence=2e-6)
    b, c = np.array([1.0, 64.0]), np.array([1024.0, 1024.0])
    assert lookup_s(NgramDraft(), ov, b, c) == pytest.approx([132e-6, 258e-6])
    # a lookup time the user names is the whole host time of the iteration
    assert lookup_s(NgramDraft(lookup_s=5e-6), ov, b, c) == pytest.approx([5e-6, 5e-6])
