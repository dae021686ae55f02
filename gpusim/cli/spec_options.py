"""Command-line values -> speculative-decoding inputs, every error a ConfigError that
names the option (so the CLI prints one line and exits 2)."""

from __future__ import annotations

import re

import numpy as np

from gpusim.errors import ConfigError, bad, draft_error
from gpusim.io import loader
from gpusim.io.acceptance import parse_acceptance
from gpusim.io.overhead import load_overhead
from gpusim.kernels.quant import for_stack
from gpusim.specs import GpuSpec, ModelSpec, StackSpec
from gpusim.speculative.acceptance import Acceptance, RankedAcceptance
from gpusim.speculative.drafts import MedusaDraft, parse_draft
from gpusim.speculative.iteration import IterationPrediction, Speculation
from gpusim.speculative.overhead import SpecOverhead
from gpusim.speculative.trees import TokenTree, parse_tree

DEFAULT_K = 4
# Monte-Carlo samples (batch x iterations) one run may draw: about a second and a few
# hundred MB for a chain (a tree's sampler is slower); the stderr of the mean is
# already ~0.1% of a token there
MAX_MC_SAMPLES = 1_000_000


def acceptance_option(text: str) -> Acceptance:
    """Parse one ``--acceptance`` value. Raises ConfigError."""
    try:
        return parse_acceptance(text)
    except ValueError as exc:
        raise bad("--acceptance", str(exc)) from None


def speculation_from_options(target: str, draft: str, acceptance: str, k: int | None,
                             tree: str | None, stack: StackSpec | None = None
                             ) -> Speculation:
    """Target, draft, chain (``k``) or tree, acceptance; target and draft model as
    ``stack`` stores them (its quantization: ``kernels.quant.for_stack``). Raises
    ConfigError."""
    def load(name: str) -> ModelSpec:
        m = loader.load_model(name)
        return m if stack is None else for_stack(m, stack)

    try:
        t = load(target)
    except ValueError as exc:  # FieldError: a dtype the stack cannot run
        raise bad("--model", str(exc)) from None
    try:
        d = parse_draft(draft, load)
    except ValueError as exc:
        raise bad("--draft", str(exc)) from None
    except ConfigError as exc:  # the loader names --model for an unknown name
        raise draft_error(exc) from None
    acc = acceptance_option(acceptance)
    if tree is not None and k is not None:
        raise bad("--tree", "give either --k (a chain) or --tree, not both")
    if tree is not None:
        ranked = acc.p if isinstance(acc, RankedAcceptance) else None
        if ranked is None and hasattr(acc, "rate"):
            ranked = RankedAcceptance.geometric(acc.rate, 16).p  # type: ignore[union-attr]
        try:
            shape = parse_tree(tree, ranked)
        except ValueError as exc:
            raise bad("--tree", str(exc)) from None
    else:
        kk = k if k is not None else (d.heads if isinstance(d, MedusaDraft) else DEFAULT_K)
        if not 1 <= kk <= 64:
            raise bad("--k", "must be an integer in 1..64", value=kk)
        shape = TokenTree.chain(kk)
    try:
        return Speculation(t, d, shape, acc)
    except ValueError as exc:
        field = "--tree" if tree is not None else ("--acceptance" if "acceptance" in str(exc)
                                                   or "histogram" in str(exc) else "--k")
        raise bad(field, str(exc)) from None


def overhead_from_options(which: str, round_trip_us: float | None, gpu: GpuSpec
                          ) -> SpecOverhead:
    """The fitted/prior overhead, optionally with the round trip overridden."""
    ov = load_overhead(which, gpu)
    if round_trip_us is None:
        return ov
    if not (np.isfinite(round_trip_us) and 0 <= round_trip_us <= 1e5):
        raise bad("--round-trip-us", "must be a number of microseconds in 0..100000",
                  value=round_trip_us)
    return ov.model_copy(update={"host_round_trip_s": round_trip_us * 1e-6,
                                 "fitted_on": f"--round-trip-us {round_trip_us:g}"})


def int_list(text: str, option: str, low: int = 0) -> list[int]:
    """``1,2,4`` or ``1-8`` (or a mix: ``1-4,8,16``) -> sorted unique ints >= low."""
    out: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        m = re.fullmatch(r"(\d+)-(\d+)", part)
        if m and int(m.group(1)) <= int(m.group(2)) <= 1 << 24:
            out.update(range(int(m.group(1)), int(m.group(2)) + 1))
        elif re.fullmatch(r"\d+", part):
            out.add(int(part))
        else:
            raise bad(option, "expected integers like 1,2,4 or a range 1-8", value=text)
    vals = sorted(out)
    if not vals or vals[0] < low:
        raise bad(option, f"values must be integers >= {low}", value=text)
    return vals


def check_monte_carlo(iterations: int, batch: int, seed: int | None) -> None:
    """Refuse, before any work, a Monte-Carlo check that cannot run or would not end:
    ``--mc-iterations`` < 0, ``--seed`` < 0 (numpy seeds are non-negative) or given
    without a Monte-Carlo check (None: not given), or more than MAX_MC_SAMPLES samples
    (``batch`` x ``iterations``). Raises ConfigError."""
    if iterations < 0:
        raise bad("--mc-iterations", "must be >= 0 (0: no Monte-Carlo check)",
                  value=iterations)
    if seed is not None and seed < 0:
        raise bad("--seed", "must be >= 0", value=seed)
    if seed is not None and not iterations:
        raise bad("--seed", "seeds the Monte-Carlo check: give --mc-iterations too",
                  value=seed)
    if iterations and batch >= 1 and iterations * batch > MAX_MC_SAMPLES:
        raise bad("--mc-iterations", f"batch {batch} x {iterations} iterations = "
                  f"{iterations * batch:,} samples; at most {MAX_MC_SAMPLES:,} are drawn "
                  f"(at most {max(MAX_MC_SAMPLES // batch, 1):,} iterations at this batch)",
                  value=iterations)


def check_weights_fit(pred: IterationPrediction) -> None:
    """Raise ConfigError when the weights alone exceed the usable HBM."""
    if pred.weight_bytes > pred.capacity_bytes:
        s = pred.spec
        raise bad("--draft", f"weights of {s.target.name} + draft {s.draft.label} "
                  f"({pred.weight_bytes / 1e9:.1f} GB) exceed the usable HBM "
                  f"({pred.capacity_bytes / 1e9:.1f} GB)")
