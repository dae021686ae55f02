"""The ``gpusim spec`` result: one flat record, and the columns its table shows."""

from __future__ import annotations

from gpusim.cost import Calibration
from gpusim.specs import GpuSpec
from gpusim.speculative.acceptance import MonteCarlo
from gpusim.speculative.drafts import ModelDraft
from gpusim.speculative.iteration import IterationPrediction
from gpusim.speculative.overhead import SpecOverhead

TABLE_COLUMNS = ("iteration_ms", "draft_step_ms", "draft_ms", "verify_ms", "target_step_ms",
                 "overhead_ms", "tokens_per_iteration", "ms_per_token",
                 "baseline_ms_per_token", "speedup", "fits_in_memory", "band_pct",
                 "speedup_band_pct")


def spec_record(pred: IterationPrediction, gpu: GpuSpec, cal: Calibration,
                overhead: SpecOverhead, mc: MonteCarlo | None = None,
                cache_len: int | None = None) -> dict[str, object]:
    """Inputs that identify the run, then the predicted figures (JSON contract keys;
    ``cache_len``, after ``ctx``, for a stack that attends its whole static cache)."""
    s = pred.spec
    rec: dict[str, object] = {
        "gpu": gpu.name, "target": s.target.name, "draft": s.draft.label,
        "draft_kind": s.draft.kind,
        "draft_model": s.draft.model.name if isinstance(s.draft, ModelDraft) else None,
        "k": s.k, "tree": s.tree.label(), "verify_q": s.tree.nodes,
        "batch": int(pred.batch[0]), "ctx": int(pred.ctx[0]),
        **({} if cache_len is None else {"cache_len": cache_len}),
        "acceptance": s.acceptance.label, "launch": pred.launch, "stack": cal.stack,
        "calibration": cal.fitted_on, "overhead_source": overhead.fitted_on,
        **pred.record(0),
    }
    if mc is not None:
        rec.update({"mc_samples": mc.samples, "mc_tokens_per_iteration": mc.mean,
                    "mc_stderr": mc.stderr, "mc_z": mc.z, "mc_agrees_4se": mc.agrees(4.0)})
    return rec
