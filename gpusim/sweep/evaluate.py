"""One sweep point, evaluated: its inputs resolved (``prepare``: GPU, stack,
calibration, models, scenario; cheap, run on every point before the sweep starts so a
bad name stops it with the grid's line) and its simulation run (``evaluate``: a step
prediction, a speculative iteration or a serving run), as a flat JSON-ready record.

Runs in the sweep's workers (``run_chunk`` is what an executor is given): loaded files
are cached per process, and each point is evaluated on its own (scalars, never batched
with other points), so its numbers do not depend on which worker ran it or with whom.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from gpusim import capacity, serving, step
from gpusim.errors import ConfigError, FieldError
from gpusim.io import acceptance as acceptance_io
from gpusim.io import calibrations, loader
from gpusim.io import scenario as scenario_io
from gpusim.io.overhead import load_overhead
from gpusim.kernels import default_ctx, default_q
from gpusim.kernels.quant import for_stack
from gpusim.platform import ParallelLayout, Platform
from gpusim.report import serving_output, spec_output
from gpusim.specs import ModelSpec
from gpusim.specs.enums import Launch, Mode
from gpusim.speculative import iteration as it
from gpusim.speculative.acceptance import RankedAcceptance
from gpusim.speculative.drafts import MedusaDraft, parse_draft
from gpusim.speculative.trees import TokenTree, parse_tree
from gpusim.sweep.params import PARAMS, PATH_KEYS, with_defaults

DEFAULT_K = 4   # as gpusim spec


class PointError(Exception):
    """A point's input that cannot run: names the grid key to blame and why (``file``:
    the ConfigError of a file the value named, which names its own file and line)."""

    def __init__(self, key: str, reason: str, file: ConfigError | None = None) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason
        self.file = file


@contextmanager
def blame(simulation: str, default: str) -> Iterator[None]:
    """Within the block, ConfigError and FieldError become PointError naming the grid
    key that set the failing value: the error's own field or option when it is a grid
    key of ``simulation``, else ``default``."""
    names = PARAMS[simulation]
    try:
        yield
    except FieldError as exc:
        raise PointError(exc.field if exc.field in names else default, str(exc)) from None
    except ConfigError as exc:
        if exc.source and Path(exc.source).is_file():   # the file itself is at fault
            raise PointError(default, str(exc), exc) from None
        option = exc.source.removeprefix("--").replace("-", "_")
        key = option if option in names else (exc.field if exc.field in names else default)
        where = "" if exc.source.startswith("--") or exc.source in (
            "", "options", "command line") else exc.source
        raise PointError(key, str(ConfigError(where, exc.reason, None, None, exc.value,
                                              exc.has_value))) from None
    except ValueError as exc:   # a shape or layout the model cannot run
        raise PointError(default, str(exc)) from None


def resolve_paths(params: dict[str, object], base_dir: Path) -> dict[str, object]:
    """``params`` with every value of a file-naming key that is a relative path to a
    file under ``base_dir`` made absolute (names and other values unchanged)."""
    out = dict(params)
    for key in PATH_KEYS & params.keys():
        value = params[key]
        if isinstance(value, str) and ("/" in value or value.endswith(
                (".yaml", ".yml", ".json", ".jsonl", ".csv"))):
            path = Path(value)
            if not path.is_absolute() and (base_dir / path).is_file():
                out[key] = str((base_dir / path).resolve())
    return out


@lru_cache(maxsize=128)
def _platform(gpu: str, stack: str, calibration: str, launch: str, tp: int, pp: int,
              micro_batches: int) -> Platform:
    g, st = loader.load_gpu(gpu), loader.load_stack(stack)
    cal = calibrations.load_calibration(calibration, g, st)
    return Platform(g, st, cal, Launch(launch), ParallelLayout(tp, pp, 1, micro_batches))


@lru_cache(maxsize=256)
def _model(name: str, stack: str, weight_dtype: str | None, kv_dtype: str | None
           ) -> ModelSpec:
    return for_stack(loader.load_model(name), loader.load_stack(stack), weight_dtype,
                     kv_dtype)


def _platform_of(sim: str, p: dict[str, Any]) -> Platform:
    with blame(sim, "gpu"):
        loader.load_gpu(p["gpu"])
    with blame(sim, "stack"):
        loader.load_stack(p["stack"])
    with blame(sim, "calibration"):
        return _platform(p["gpu"], p["stack"], p["calibration"], p["launch"], p["tp"],
                         p.get("pp", 1), p.get("micro_batches", 1))


@dataclass(frozen=True)
class Prepared:
    """A point's inputs, resolved: the platform and what its simulation needs."""

    simulation: str
    params: dict[str, Any]
    platform: Platform
    inputs: dict[str, Any]


def prepare(simulation: str, params: dict[str, object], base_dir: Path) -> Prepared:
    """Resolve a point's names and files (cached per process). Raises PointError."""
    p = with_defaults(simulation, resolve_paths(params, base_dir))
    plat = _platform_of(simulation, p)
    inputs: dict[str, Any] = {}
    if simulation == "step":
        with blame(simulation, "model"):
            inputs["model"] = _model(p["model"], p["stack"], p["weight_dtype"], p["kv_dtype"])
    elif simulation == "spec":
        inputs.update(_speculation(p, plat))
    else:
        inputs.update(_serving(p, plat))
    return Prepared(simulation, p, plat, inputs)


def _speculation(p: dict[str, Any], plat: Platform) -> dict[str, Any]:
    """Target, draft, chain or tree, acceptance and host overhead (as ``gpusim spec``)."""
    sim = "spec"
    with blame(sim, "target"):
        target = _model(p["target"], p["stack"], None, None)
    with blame(sim, "draft"):
        try:
            draft = parse_draft(p["draft"], lambda n: _model(n, p["stack"], None, None))
        except ValueError as exc:
            raise FieldError("draft", str(exc)) from None
    with blame(sim, "acceptance"):
        text = p["acceptance"] if isinstance(p["acceptance"], str) else repr(p["acceptance"])
        try:
            acc = acceptance_io.parse_acceptance(text)
        except ValueError as exc:
            raise FieldError("acceptance", str(exc)) from None
    with blame(sim, "tree" if p["tree"] is not None else "k"):
        if p["tree"] is not None and p["k"] is not None:
            raise FieldError("tree", "give either k (a chain) or tree, not both")
        if p["tree"] is not None:
            ranked = acc.p if isinstance(acc, RankedAcceptance) else None
            if ranked is None and hasattr(acc, "rate"):
                ranked = RankedAcceptance.geometric(acc.rate, 16).p  # type: ignore[union-attr]
            try:
                shape = parse_tree(p["tree"], ranked)
            except ValueError as exc:
                raise FieldError("tree", str(exc)) from None
        else:
            k = p["k"] if p["k"] is not None else (
                draft.heads if isinstance(draft, MedusaDraft) else DEFAULT_K)
            shape = TokenTree.chain(k)
        try:
            spec = it.Speculation(target, draft, shape, acc)
        except ValueError as exc:
            raise FieldError("tree" if p["tree"] is not None else "k", str(exc)) from None
    with blame(sim, "overhead"):
        ov = load_overhead(p["overhead"], plat.gpu)
    if p["round_trip_us"] is not None:
        ov = ov.model_copy(update={"host_round_trip_s": p["round_trip_us"] * 1e-6,
                                   "fitted_on": f"round_trip_us {p['round_trip_us']:g}"})
    return {"spec": spec, "overhead": ov}


def _serving(p: dict[str, Any], plat: Platform) -> dict[str, Any]:
    """The model as the stack stores it and the scenario (as ``gpusim serve``), its seed
    left for ``evaluate``."""
    sim = "serve"
    with blame(sim, "model"):
        model = _model(p["model"], p["stack"], p["weight_dtype"], p["kv_dtype"])
    if p["scenario"] is None and p["trace"] is None:
        missing = [k for k in ("prompt_dist", "output_dist", "duration_s") if p[k] is None]
        if p["rate"] is None and p["users"] is None:
            missing.append("rate")
        if missing:
            raise PointError(missing[0], "a serve grid without scenario or trace needs "
                             "prompt_dist, output_dist, duration_s and rate (or arrival: "
                             f"closed with users); missing: {', '.join(missing)}")
    with blame(sim, "scenario"):
        k = p["spec_k"]
        sizes = p["cudagraph_capture_sizes"]
        sc = scenario_io.scenario_from_options(
            Path(p["scenario"]) if p["scenario"] is not None else None,
            prompt_dist=p["prompt_dist"], output_dist=p["output_dist"],
            duration_s=p["duration_s"], arrival=p["arrival"], rate_per_s=p["rate"],
            cv=p["cv"], users=p["users"], think_time_s=p["think_time_s"],
            trace=None if p["trace"] is None else Path(p["trace"]), policy=p["scheduler"],
            max_num_seqs=p["max_num_seqs"], max_num_batched_tokens=p["max_num_batched_tokens"],
            block_size_tokens=p["block_size"], reserve_fraction=p["reserve_fraction"],
            slo_ttft_s=p["slo_ttft_s"], slo_tpot_s=p["slo_tpot_s"],
            spec_draft=p["spec_draft"], spec_acceptance=p["spec_acceptance"],
            spec_k=k, prefix_caching=p["prefix_caching"],
            shared_prefix_tokens=p["shared_prefix_tokens"],
            prefix_prompts=p["prefix_prompts"], conversation_turns=p["conversation_turns"],
            turn_think_s=p["turn_think_s"],
            cudagraph_capture_sizes=None if sizes is None
            else scenario_io.parse_capture_sizes(sizes),
            cudagraph_mode=p["cudagraph_mode"])
    with blame(sim, "spec_draft"):
        draft = scenario_io.scenario_draft(sc, lambda n: _model(n, p["stack"], None, None))
    with blame(sim, "trace"):
        trace = scenario_io.scenario_trace(sc)
    return {"model": model, "scenario": sc, "draft": draft, "trace": trace}


def evaluate(prep: Prepared, seed: int) -> dict[str, object]:
    """Run a prepared point's simulation with ``seed`` (serving's arrivals, the
    speculative Monte-Carlo check); returns its record. Raises PointError for a point
    the model cannot run (a layout the model does not split into, a model that does not
    fit)."""
    sim, p, plat = prep.simulation, prep.params, prep.platform
    if sim == "step":
        return _step_record(plat, prep.inputs["model"], p)
    if sim == "spec":
        spec, ov = prep.inputs["spec"], prep.inputs["overhead"]
        with blame(sim, "batch"):
            pred = it.predict_iteration(plat, ov, spec, p["batch"], p["ctx"],
                                        p["reserve_fraction"])
        mc = (spec.monte_carlo(p["batch"], p["mc_iterations"], np.random.default_rng(seed))
              if p["mc_iterations"] else None)
        return spec_output.spec_record(pred, plat.gpu, plat.calibration, ov, mc)
    sc = prep.inputs["scenario"].model_copy(update={"seed": seed})
    with blame(sim, "model"):
        engine = serving.build_engine(plat, prep.inputs["model"], sc, prep.inputs["draft"],
                                      load_overhead("auto", plat.gpu)
                                      if sc.speculative is not None else None)
    summary = serving.simulate(engine, sc, None, prep.inputs["trace"])
    return {str(r["metric"]): r["value"] for r in serving_output.flat_rows(summary)}


def _step_record(plat: Platform, model: ModelSpec, p: dict[str, Any]) -> dict[str, object]:
    """``gpusim predict``'s step summary for one shape, with tokens per second and
    whether weights and KV fit the fullest GPU."""
    mode = Mode(p["mode"])
    batch, ctx, q = p["batch"], default_ctx(mode, p["ctx"]), default_q(mode, p["q"])
    tp, pp = plat.layout.tp, plat.layout.pp
    with blame("step", "batch"):
        pred = step.predict(plat, model, mode, batch, ctx, q)
        plan = capacity.memory_plan(plat.gpu, model, reserve_fraction=0.0, tp=tp, pp=pp)
    s = step.summary(pred, plat.gpu)
    tokens = batch * (ctx + q)
    need = float(plan.bytes_for(tokens))
    return {
        "gpu": plat.gpu.name, "model": model.name, "stack": plat.stack.name,
        "mode": mode.value, "batch": batch, "ctx": ctx, "q": q,
        "launch": plat.launch.value, "tp": tp, "pp": pp,
        "calibration": plat.calibration.fitted_on,
        "weights": model.quantization.describe() if model.quantization else model.dtype,
        "kv_dtype": model.kv_dtype_eff, **s,
        "tokens_per_s": batch * q / (float(s["step_ms"]) * 1e-3),
        "memory_bytes": need, "fits_in_memory": bool(need <= plan.hbm_capacity_bytes),
        **step.layout_summary(pred, plat),
    }


def _plain(value: object) -> object:
    """numpy scalars as Python numbers; non-finite floats as None (JSON has neither)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def run_point(simulation: str, params: dict[str, object], seed: int, base_dir: str
              ) -> dict[str, object]:
    """One point's ledger record: ``status`` (ok, error), ``error`` (the key to blame
    and why) and the simulation's figures. Never raises for a point that cannot run."""
    try:
        record = evaluate(prepare(simulation, params, Path(base_dir)), seed)
    except PointError as exc:
        return {"seed": seed, "status": "error", "error": str(exc)}
    return {"seed": seed, "status": "ok", "error": "",
            **{k: _plain(v) for k, v in record.items()}}


def run_chunk(simulation: str, base_dir: str,
              chunk: list[tuple[int, dict[str, object], int]]
              ) -> list[tuple[int, dict[str, object]]]:
    """What an executor runs: each ``(index, params, seed)`` of ``chunk`` -> ``(index,
    record)``."""
    return [(index, run_point(simulation, params, seed, base_dir))
            for index, params, seed in chunk]
