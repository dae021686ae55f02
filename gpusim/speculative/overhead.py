"""The host side of a speculative loop: the round trip per iteration, the graph launch.

After the verify pass the host must learn how many draft tokens each sequence
accepted before it can launch the next iteration: a stream synchronisation, a small
device-to-host copy and the host's own bookkeeping (accept/reject, KV pointer moves,
stop checks). Plain decoding pays the same round trip once per token. Between the
steps of one iteration the host issues CUDA graph replays back to back, so all but
the first replay's launch cost hide behind GPU work.

Prompt lookup (n-gram drafting) is host work before the verify: a fixed cost plus
costs per sequence and per history token scanned. All are per GPU (and host), fitted from measured
loops by ``gpusim spec-validate --write-overhead`` into
``validation/calibrations/speculative/<gpu>.yaml``; without that file the round trip
and the lookup are priors and the launch cost the calibration's.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from gpusim.cost.params import Calibration

PRIOR_ROUND_TRIP_S = 50e-6   # sync + 4..1 KB D2H copy + Python bookkeeping (a prior)
PRIOR_NGRAM_LOOKUP_S = 20e-6  # prompt lookup per iteration when none was measured


class SpecOverhead(BaseModel):
    """Host-side cost of one iteration of a speculative (or plain) decoding loop."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpu: str | None = None
    fitted_on: str = "prior"
    host_round_trip_s: Annotated[float, Field(ge=0, le=0.1, allow_inf_nan=False)] = (
        PRIOR_ROUND_TRIP_S)
    # Host cost of one CUDA graph replay as the loop sees it: the part of a step's
    # alone time that back-to-back replays hide. None: the calibration's
    # host_graph_launch_cost_s.
    graph_launch_s: Annotated[float, Field(ge=0, le=1e-3, allow_inf_nan=False)] | None = None
    # Prompt lookup (``--draft ngram``) on this host: a fixed cost per iteration, a cost
    # per sequence (its proposal's bookkeeping) and per history token scanned (every
    # sequence's ctx tokens are searched for its last n-gram). The prior: a fixed 20 us.
    ngram_lookup_fixed_s: Annotated[float, Field(ge=0, le=0.1, allow_inf_nan=False)] = (
        PRIOR_NGRAM_LOOKUP_S)
    ngram_lookup_s_per_sequence: Annotated[
        float, Field(ge=0, le=1e-3, allow_inf_nan=False)] = 0.0
    ngram_lookup_s_per_token: Annotated[float, Field(ge=0, le=1e-6, allow_inf_nan=False)] = 0.0
    # The rest of a prompt-lookup iteration's host work, which the lookup timed alone
    # leaves out: staging the proposals and copying them into the verify's input, and
    # appending each sequence's accepted token to its history. Fixed and per sequence.
    ngram_loop_fixed_s: Annotated[float, Field(ge=0, le=0.1, allow_inf_nan=False)] = 0.0
    ngram_loop_s_per_sequence: Annotated[float, Field(ge=0, le=1e-3, allow_inf_nan=False)] = 0.0
    notes: str = ""

    def ngram_lookup_s(self, batch: np.ndarray, ctx: np.ndarray) -> np.ndarray:
        """Host seconds of one prompt lookup over ``batch`` histories of ``ctx`` tokens."""
        return (self.ngram_lookup_fixed_s + self.ngram_lookup_s_per_sequence * batch
                + self.ngram_lookup_s_per_token * batch * ctx)

    def ngram_loop_s(self, batch: np.ndarray) -> np.ndarray:
        """Host seconds of a prompt-lookup iteration besides the lookup itself."""
        return self.ngram_loop_fixed_s + self.ngram_loop_s_per_sequence * batch

    def calibration_for_loop(self, cal: Calibration) -> Calibration:
        """``cal`` with the graph launch cost the loop measured (if fitted)."""
        if self.graph_launch_s is None:
            return cal
        return cal.replace({"host.host_graph_launch_cost_s": self.graph_launch_s})
