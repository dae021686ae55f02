"""Speculative decoding: acceptance models, token trees, draft kinds, iteration costs,
sweeps over batch and context, and validation against measured loops.

Built on ``gpusim.step`` (and the engine for event-level iterations); never on
serving. Modules: acceptance (chain acceptance models), trees (token trees, Sequoia
DP), drafts (draft kinds), kernels (sampling/acceptance/head kernels), overhead (host
round trip), iteration (one iteration: closed form and engine), sweep (batch x ctx x
k), measured + validate (harness data, fit, errors), figures + output (formatting),
options (CLI values -> inputs).
"""

from gpusim.speculative.acceptance import (
    EmpiricalAcceptance,
    IidAcceptance,
    MonteCarlo,
    PositionalAcceptance,
    RankedAcceptance,
    monte_carlo,
)
from gpusim.speculative.drafts import (
    EagleDraft,
    MedusaDraft,
    ModelDraft,
    NgramDraft,
    parse_draft,
)
from gpusim.speculative.iteration import (
    IterationPrediction,
    Speculation,
    predict_iteration,
    simulate_iteration,
)
from gpusim.speculative.overhead import SpecOverhead
from gpusim.speculative.trees import TokenTree, best_tree, parse_tree

__all__ = [
    "EagleDraft", "EmpiricalAcceptance", "IidAcceptance", "IterationPrediction",
    "MedusaDraft", "ModelDraft", "MonteCarlo", "NgramDraft", "PositionalAcceptance",
    "RankedAcceptance", "SpecOverhead", "Speculation", "TokenTree", "best_tree",
    "monte_carlo", "parse_draft", "parse_tree",
    "predict_iteration", "simulate_iteration",
]
