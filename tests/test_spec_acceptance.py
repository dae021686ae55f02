"""Acceptance models: closed forms, Monte-Carlo agreement, edge cases, histogram files.

Statistical tolerance: the sampled mean must lie within 4 standard errors of the
closed form (two-sided; about 6e-5 false alarms per check), over several seeds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpusim.errors import ConfigError
from gpusim.io.acceptance import parse_acceptance, read_histogram
from gpusim.speculative.acceptance import (
    EmpiricalAcceptance,
    IidAcceptance,
    PositionalAcceptance,
    RankedAcceptance,
    monte_carlo,
)

Z_MAX = 4.0
SEEDS = (0, 1, 2)


@pytest.mark.parametrize("a", [0.0, 0.3, 0.6, 0.8, 0.95, 1.0])
@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_iid_closed_form(a, k):
    m = IidAcceptance(a)
    expected = k + 1 if a == 1.0 else (1 - a ** (k + 1)) / (1 - a)
    assert m.expected_tokens(k) == pytest.approx(expected, rel=1e-12)
    pmf = m.accepted_pmf(k)
    assert len(pmf) == k + 1 and pmf.sum() == pytest.approx(1.0)
    assert 1 + np.dot(np.arange(k + 1), pmf) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_edges_zero_and_one(k):
    rng = np.random.default_rng(0)
    assert IidAcceptance(0.0).expected_tokens(k) == 1.0
    assert IidAcceptance(1.0).expected_tokens(k) == k + 1
    assert (IidAcceptance(0.0).sample_tokens(k, 100, rng) == 1).all()
    assert (IidAcceptance(1.0).sample_tokens(k, 100, rng) == k + 1).all()


MODELS = [
    IidAcceptance(0.7),
    PositionalAcceptance((0.9, 0.8, 0.6, 0.4)),
    EmpiricalAcceptance((5, 3, 2, 2, 1, 4, 0, 1, 3)),
    RankedAcceptance((0.6, 0.2, 0.1)),
]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("k", [1, 4, 8])
@pytest.mark.parametrize("seed", SEEDS)
def test_monte_carlo_agrees_with_closed_form(model, k, seed):
    mc = monte_carlo(model, k, batch=64, iterations=400, rng=np.random.default_rng(seed))
    assert mc.samples == 64 * 400
    assert mc.agrees(Z_MAX), (mc.mean, mc.expected, mc.stderr)
    assert 1.0 <= mc.mean <= k + 1


def test_monte_carlo_detects_a_wrong_closed_form():
    """The check has power: a rate off by 0.05 is flagged."""
    samples = IidAcceptance(0.75).sample_tokens(4, 20000, np.random.default_rng(3))
    wrong = IidAcceptance(0.70).expected_tokens(4)
    se = samples.std(ddof=1) / np.sqrt(samples.size)
    assert abs(samples.mean() - wrong) / se > Z_MAX


def test_sampling_is_reproducible_and_uses_no_global_state():
    a = IidAcceptance(0.8).sample_tokens(6, 50, np.random.default_rng(11))
    np.random.seed(123)  # global state must not matter
    b = IidAcceptance(0.8).sample_tokens(6, 50, np.random.default_rng(11))
    assert (a == b).all()


@settings(max_examples=40, deadline=None, database=None)
@given(rates=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=10), k=st.integers(0, 12))
def test_positional_matches_survival_sum(rates, k):
    m = PositionalAcceptance(tuple(rates))
    r = list(rates[:k]) + [rates[-1]] * max(0, k - len(rates))
    assert m.expected_tokens(k) == pytest.approx(1 + np.cumprod(r).sum() if k else 1.0)
    assert m.accepted_pmf(k).sum() == pytest.approx(1.0)
    # constant rates are the i.i.d. model
    assert PositionalAcceptance((rates[0],)).expected_tokens(k) == pytest.approx(
        IidAcceptance(rates[0]).expected_tokens(k))


def test_empirical_truncates_at_k_and_refuses_longer_chains():
    m = EmpiricalAcceptance((1, 1, 1, 1))          # accepted 0..3 equally likely
    assert m.expected_tokens(3) == pytest.approx(1 + 1.5)
    assert m.accepted_pmf(1).tolist() == pytest.approx([0.25, 0.75])
    with pytest.raises(ValueError, match="k_max=3"):
        m.expected_tokens(4)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_bad_rates(bad):
    with pytest.raises(ValueError, match="probability"):
        IidAcceptance(bad)
    with pytest.raises(ValueError, match="probability"):
        PositionalAcceptance((0.5, bad))


def test_ranked_must_sum_to_at_most_one():
    with pytest.raises(ValueError, match="sum"):
        RankedAcceptance((0.7, 0.4))
    g = RankedAcceptance.geometric(0.6, 4)
    assert g.p[0] == 0.6 and sum(g.p) < 1


def test_parse_acceptance_forms(tmp_path):
    assert parse_acceptance("0.8") == IidAcceptance(0.8)
    assert parse_acceptance("0.9,0.8") == PositionalAcceptance((0.9, 0.8))
    assert parse_acceptance("ranked:0.5,0.2") == RankedAcceptance((0.5, 0.2))
    f = tmp_path / "h.csv"
    f.write_text("accepted,count\n0,3\n2,1\n")
    m = parse_acceptance(f"file:{f}")
    assert isinstance(m, EmpiricalAcceptance) and m.counts == (3.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="not a number"):
        parse_acceptance("0.8,x")


def test_histogram_json_forms(tmp_path):
    f = tmp_path / "h.json"
    f.write_text(json.dumps({"counts": [1, 2, 3]}))
    assert read_histogram(f).counts == (1.0, 2.0, 3.0)
    f.write_text(json.dumps({"accepted": [1, 0], "count": [4, 1]}))
    assert read_histogram(f).counts == (1.0, 4.0)


@pytest.mark.parametrize("name,text,line,field", [
    ("h.csv", "accepted,count\n0,3\n1,-2\n", 3, "count"),
    ("h.csv", "accepted,count\n0,3\nx,2\n", 3, "accepted"),
    ("h.csv", "accepted,count\n0,3\n1.5,2\n", 3, "accepted"),
    ("h.csv", "accepted,count\n0,3\n0,2\n", 3, "accepted"),
    ("h.csv", "acc,count\n0,3\n", 1, None),
    ("h.csv", "accepted,count\n0,3\n", None, None),          # k_max must be >= 1
    ("h.json", '{\n  "counts": [1, "a"]\n}', 2, "count"),
    ("h.json", '{"counts": [1, 2,]}', 1, None),
    ("h.json", '[1, 2]', 1, None),
])
def test_histogram_errors_name_file_line_field(tmp_path, name, text, line, field):
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(ConfigError) as exc:
        read_histogram(f)
    msg = str(exc.value)
    assert msg.startswith(str(f)) and "\n" not in msg
    if line is not None:
        assert f"{f}:{line}" in msg
    if field is not None:
        assert f": {field}:" in msg
