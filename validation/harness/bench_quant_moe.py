"""Step-time campaign of the quantized (fp8, int4, int8 weight-only) and MoE forwards.

    python3 validation/harness/bench_quant_moe.py --out DIR --gpu NAME
        --stack torch-fp8|torch-int4|torch-int8wo|torch-fused[,...] [--models m1,...]
        [--device cuda|cpu] [--budget-s S] [--only steps|profile|trace] [--quick]
        [--step-shapes mode:batch:ctx:q,...] [--profile-shapes ...] [--trace-shapes ...]
        [--fp8-pad-m auto|0|16] [--int8wo-mode MODE] [--moe-impl auto|grouped_mm|loop]

Models: dense names from workloads/models/<name>.yaml (bench_campaign.load_models), MoE names
from moe_models.json (beside this file), or the built-in CPU shapes ``tiny`` (dense),
``tiny-moe`` (Qwen3-MoE), ``tiny-moe-shared`` (Qwen2-MoE, a gated shared expert),
``tiny-mixtral``. Quantized stacks take dense models only; an MoE model runs with
``torch-fused`` (bf16), other stacks skip it (listed in summary.json's ``skipped``).
The bf16 rows a quantized stack is compared with come from a ``--stack torch-fused``
run over the same grid.

Phases (``--only``; default all three, in this order; the README's rule: never time
after the profiler, so give each phase its own process on a GPU):

* ``steps``: CUDA-graph steps (capture, then the median of replays; CPU: eager) into
  steps.csv = bench_common.STEPS_COLUMNS + stack, weight_dtype, experts_touched_mean
  (MoE: the mean over layers of the distinct experts the step's tokens are routed to,
  from one eager call on the same inputs before the capture; empty for dense).
* ``profile``: kernel names, counts and GPU microseconds of one eager step per shape
  under torch.profiler into kernels.csv = KERNELS_COLUMNS + stack.
* ``trace``: gzip'd Chrome traces (bench_steps.record_trace) of 2 eager steps per
  shape, each inside record_function("gpusim_step_<i>") and synchronized before the
  range closes, into DIR/traces/.

Before timing a quantized stack or an MoE model, its layer-0 projections (or MoE layer)
are checked against a float32 oracle on the device (quant_forward.check_model,
moe_forward.check_layer): a wrong packing layout or offset fails that model's rows
(errors.log) instead of timing a wrong kernel; the errors go to summary.json ``checks``.

Writes into DIR: steps.csv, kernels.csv (appended, flushed per row), traces/,
env.json and summary.json (env.2.json, summary.2.json, ... when a run before wrote
into DIR), errors.log. No new measurement starts after --budget-s seconds.

Imports only stdlib, numpy, yaml, torch (the GPU machine has no gpusim).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # imported from tests (run as a script, it is there already)
    sys.path.insert(0, str(HERE))

import bench_campaign as bc  # noqa: E402
import bench_steps as bs  # noqa: E402
import fused_forward as ff  # noqa: E402
import moe_forward as mf  # noqa: E402
import quant_forward as qf  # noqa: E402
import reference  # noqa: E402
from bench_common import KERNELS_COLUMNS, STEPS_COLUMNS, Step, StepRun  # noqa: E402
from bench_steps import make_cache  # noqa: E402
from bench_timing import Clock, CsvSink, GiB, MiB, Policy  # noqa: E402
from reference import Shape  # noqa: E402

STEPS_Q_COLUMNS = [*STEPS_COLUMNS, "stack", "weight_dtype", "experts_touched_mean"]
KERNELS_Q_COLUMNS = [*KERNELS_COLUMNS, "stack"]
PHASES = ("steps", "profile", "trace")
MOE_JSON = HERE / "moe_models.json"
DEFAULT_DENSE = ("llama-3.1-8b", "llama-3.2-1b")
DEFAULT_MOE = ("qwen3-30b-a3b", "mixtral-8x7b-8l")
CHECK_TOL = 3e-2   # relative error of a projection / MoE layer against its fp32 oracle

# built-in CPU shapes: every dim a multiple of 128 where int4's tinygemm needs it
TINY = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 32, "intermediate_size": 256,
        "vocab_size": 256, "tie_word_embeddings": False, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0}
TINY_MOE = {"model_type": "qwen3_moe", "hidden_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
            "intermediate_size": 256, "moe_intermediate_size": 64, "num_experts": 8,
            "num_experts_per_tok": 2, "norm_topk_prob": True, "vocab_size": 256,
            "tie_word_embeddings": False, "rms_norm_eps": 1e-6, "rope_theta": 1e6}
BUILTIN_MOE = {
    "tiny-moe": TINY_MOE,
    "tiny-moe-shared": {**TINY_MOE, "model_type": "qwen2_moe", "norm_topk_prob": False,
                        "shared_expert_intermediate_size": 128},
    "tiny-mixtral": {**{k: v for k, v in TINY_MOE.items()
                        if k not in ("num_experts", "moe_intermediate_size", "norm_topk_prob")},
                     "model_type": "mixtral", "num_local_experts": 8,
                     "intermediate_size": 64},
}


@dataclass(frozen=True)
class QGrid:
    """Step shapes (mode, batch, ctx, q) of each phase."""

    name: str
    steps: tuple[Step, ...]
    profile: tuple[Step, ...]
    trace: tuple[Step, ...]


GRIDS = {
    # ~16 graph steps per model: decode over batch at 1k (the quantized crossover),
    # two batches at 4k, verify of 4 tokens, prefill of 512 and 2048 tokens
    "full": QGrid(
        name="full",
        steps=(*(("decode", b, 1024, 1) for b in (1, 2, 4, 8, 16, 32, 64, 128, 256)),
               ("decode", 16, 4096, 1), ("decode", 64, 4096, 1),
               *(("verify", b, 1024, 4) for b in (1, 16, 64)),
               ("prefill", 1, 0, 512), ("prefill", 1, 0, 2048)),
        profile=(("decode", 1, 1024, 1), ("decode", 16, 1024, 1), ("decode", 128, 1024, 1),
                 ("verify", 16, 1024, 4), ("prefill", 1, 0, 512)),
        trace=(("decode", 8, 1024, 1), ("prefill", 1, 0, 512)),
    ),
    "quick": QGrid(
        name="quick",
        steps=(("decode", 1, 1024, 1), ("decode", 32, 1024, 1), ("verify", 16, 1024, 4),
               ("prefill", 1, 0, 512)),
        profile=(("decode", 8, 1024, 1),),
        trace=(("decode", 8, 1024, 1),),
    ),
    "cpu": QGrid(
        name="cpu",
        steps=(("decode", 1, 16, 1), ("decode", 2, 16, 1), ("decode", 2, 48, 1),
               ("verify", 2, 16, 4), ("prefill", 1, 0, 16), ("prefill", 2, 0, 8)),
        profile=(("decode", 2, 16, 1), ("verify", 2, 16, 4), ("prefill", 1, 0, 16)),
        trace=(("decode", 2, 16, 1),),
    ),
}


@dataclass
class Spec:
    """A model to build: dense (a Shape) or MoE (an HF config dict)."""

    name: str
    kind: str                     # "dense" or "moe"
    shape: Shape
    cfg: dict | None = None


@dataclass(kw_only=True)
class QCtx(StepRun):
    """Everything a phase needs."""

    grid: QGrid
    stacks: list[str]
    models: dict[str, Spec]
    opts: dict
    moe_impl: str | None = None
    checks: dict[str, dict] = field(default_factory=dict)
    traces: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- models

def resolve_models(names: list[str], models_dir: Path, moe_json: Path) -> dict[str, Spec]:
    """Spec per name: built-in tiny shapes, moe_models.json, then workloads/models.
    Raises SystemExit for an unknown name (bench_campaign.load_models) and ValueError for an MoE
    config moe_forward cannot build."""
    moe_cfgs = dict(BUILTIN_MOE)
    if moe_json.exists():
        moe_cfgs.update(json.loads(moe_json.read_text()))
    out = {}
    for name in names:
        if name in moe_cfgs:
            shape, _ = mf.parse_config(moe_cfgs[name])
            out[name] = Spec(name, "moe", shape, moe_cfgs[name])
        elif name == "tiny":
            out[name] = Spec(name, "dense", Shape.from_dict(TINY))
        else:
            out[name] = Spec(name, "dense", bc.load_models([name], {}, models_dir)[name])
    return out


def build(ctx: QCtx, stack: str, spec: Spec, check: bool) -> ff.Model:
    """The model of ``spec`` in ``stack`` on the device; with ``check``, its layer-0
    projections or MoE layer against their float32 oracle (RuntimeError over CHECK_TOL)."""
    t0 = time.monotonic()
    if spec.kind == "moe":
        model = mf.build_moe(spec.cfg, ctx.device, torch.bfloat16, impl=ctx.moe_impl)
    else:
        model = qf.build_dense(spec.shape, stack, ctx.device, **ctx.opts)
    ctx.clock.sync()
    ctx.log(f"{stack} {spec.name}: weights built in {time.monotonic() - t0:.1f} s"
            + (f", {torch.cuda.memory_allocated() / GiB:.1f} GiB allocated" if ctx.cuda else ""))
    if not check:
        return model
    if spec.kind == "moe":
        g = torch.Generator(device=ctx.device).manual_seed(7)
        hn = ff.randn((64, spec.shape.hidden_size), 1.0, g, ctx.device, torch.bfloat16)
        errs = {"moe_layer0": mf.check_layer(model.layers[0].mlp, hn)}
    elif stack != "torch-fused":
        errs = qf.check_model(model)
    else:
        return model
    ctx.checks[f"{stack}/{spec.name}"] = errs
    ctx.log(f"{stack} {spec.name}: oracle check " + ", ".join(f"{k} {v:.2e}"
                                                               for k, v in errs.items()))
    bad = {k: v for k, v in errs.items() if not v < CHECK_TOL}
    if bad:
        raise RuntimeError(f"{stack} {spec.name}: relative error over {CHECK_TOL} against "
                           f"the float32 oracle: {bad}")
    return model


def make_step(model: ff.Model, cache: reference.KVCache, s: bs.StepShape,
              device: torch.device) -> Callable[[], torch.Tensor]:
    """A closure running one step of shape ``s`` on fixed random tokens. Raises
    ValueError when the cache is too short."""
    if s.end > cache.k.shape[3]:
        raise ValueError(f"KV write {s.ctx}..{s.end} outside a cache of {cache.k.shape[3]}")
    g = torch.Generator(device=device).manual_seed(1000 * s.batch + s.q)
    tokens = torch.randint(0, model.shape.vocab_size, (s.batch, s.q), device=device,
                           generator=g)
    mask = reference.verify_mask(s.q, s.end) if s.mode == "verify" else None
    return lambda: ff.forward(model, cache, tokens, s.ctx, s.mode, mask)


def _eager_step(ctx: QCtx, model: ff.Model, spec: Spec, step: Step
                ) -> Callable[[], torch.Tensor]:
    """A step of shape ``step`` over a cache that just fits it."""
    s = bs.StepShape(*step, "eager")
    cache = make_cache(spec.shape, s.batch, s.end, ctx.device, torch.bfloat16)
    return make_step(model, cache, s, ctx.device)


def _pairs(ctx: QCtx, phase: str, fn: Callable[[QCtx, str, Spec], None]
           ) -> Iterator[tuple[str, Callable[[], None]]]:
    """bench_steps.each's jobs: ``fn`` of each (stack, model) in run order; MoE models
    only with torch-fused (others skipped)."""
    for stack in ctx.stacks:
        for spec in ctx.models.values():
            if spec.kind == "moe" and stack != "torch-fused":
                ctx.skipped.append(f"{stack} {spec.name}: MoE models run with torch-fused only")
                continue
            yield f"{phase} {stack} {spec.name}", partial(fn, ctx, stack, spec)


# ----------------------------------------------------------------------------- steps

def run_steps(ctx: QCtx) -> None:
    bs.each(ctx, _pairs(ctx, "steps", _steps_model))


def _steps_model(ctx: QCtx, stack: str, spec: Spec) -> None:
    """CUDA-graph steps, one cache per batch; the KV reserve is smaller than bench_steps'
    12% (the MoE models leave ~20 GiB free)."""
    model = build(ctx, stack, spec, check=True)
    bs.steps_model(
        ctx, f"steps {stack} {spec.name}", spec.shape,
        [bs.StepShape(*st, "graph") for st in ctx.grid.steps],
        alloc=lambda p: make_cache(spec.shape, p.batch, p.max_len, ctx.device, torch.bfloat16),
        graph=lambda cache, s: _step_one(ctx, stack, spec, model, cache, s),
        eager=lambda cache, shapes: None,
        kv_budget=bs.kv_budget_bytes(ctx, reserve=0.06, reserve_min=4 * GiB))


def _step_one(ctx: QCtx, stack: str, spec: Spec, model: ff.Model, cache: reference.KVCache,
              s: bs.StepShape) -> None:
    fn = make_step(model, cache, s, ctx.device)
    touched = mf.experts_touched(model, fn)      # eager, before the capture: not timed
    bs.write_step(ctx, spec.name, s, ctx.graph_launch, bs.time_graph(ctx, fn), stack=stack,
                  weight_dtype=model.weight_dtype, experts_touched_mean=touched)


# ----------------------------------------------------------------------------- profile

def run_profile(ctx: QCtx) -> None:
    bs.each(ctx, _pairs(ctx, "profile", _profile_model))


def _profile_model(ctx: QCtx, stack: str, spec: Spec) -> None:
    model = build(ctx, stack, spec, check=False)

    def one(step: Step) -> None:
        fn = _eager_step(ctx, model, spec, step)
        touched = mf.experts_touched(model, fn)
        for _ in range(3):
            fn()
        bs.write_profile(ctx, fn, spec.name, step, f"{stack} {spec.name}", stack=stack,
                         note="" if touched is None else f", experts touched {touched:.1f}")

    bs.each(ctx, ((f"profile {stack} {spec.name} {bs.label(st)}", partial(one, st))
                  for st in ctx.grid.profile))


# ----------------------------------------------------------------------------- trace

def run_trace(ctx: QCtx) -> None:
    (ctx.out / "traces").mkdir(exist_ok=True)
    bs.each(ctx, _pairs(ctx, "trace", _trace_model))


def trace_name(stack: str, model: str, s: Step) -> str:
    mode, b, c, q = s
    return f"{stack}__{model}__{mode}_b{b}_ctx{c}_q{q}.json.gz"


def _trace_model(ctx: QCtx, stack: str, spec: Spec) -> None:
    model = build(ctx, stack, spec, check=False)

    def one(step: Step) -> None:
        fn = _eager_step(ctx, model, spec, step)
        for _ in range(2):
            fn()
        path = ctx.out / "traces" / trace_name(stack, spec.name, step)
        bs.record_trace(ctx, fn, path, steps=2)
        ctx.traces.append(str(path.relative_to(ctx.out)))
        ctx.log(f"trace {path.name}: {path.stat().st_size / MiB:.1f} MiB")

    bs.each(ctx, ((f"trace {stack} {spec.name} {st}", partial(one, st))
                  for st in ctx.grid.trace))


# ----------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bc.add_run_args(p, budget_s=300.0, quick_help="a few shapes (GPU sanity run)")
    p.add_argument("--stack", default="torch-fused",
                   help=f"comma list of: {', '.join(qf.STACKS)}")
    bc.add_model_args(p, "comma list: workloads/models names, moe_models.json names, tiny, "
                         "tiny-moe, tiny-moe-shared, tiny-mixtral (default: "
                         f"{','.join(DEFAULT_DENSE + DEFAULT_MOE)}; CPU: tiny,tiny-moe)",
                      shapes_json=False)
    p.add_argument("--only", default="", help="comma list of: steps, profile, trace")
    bc.add_shape_args(p, "step", "profile", "trace")
    p.add_argument("--moe-json", default=str(MOE_JSON))
    bc.add_kv_arg(p, "free memory less a reserve")
    p.add_argument("--fp8-pad-m", default="auto",
                   help="pad fp8 GEMMs' token count to a multiple of this (0: never; auto: "
                        "16 only where _scaled_mm refuses an unpadded M)")
    p.add_argument("--int4-group", type=int, default=128)
    p.add_argument("--int8wo-mode", default="default",
                   help="torch.compile mode of torch-int8wo (default, max-autotune-no-cudagraphs, "
                        "...); 'eager' runs it uncompiled")
    p.add_argument("--moe-impl", choices=("auto", "grouped_mm", "loop"), default="auto")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """CLI entry (see the module docstring); returns the exit status."""
    argv, args, budget, out = bc.start(argv, parse_args)
    phases = bc.select_phases(args.only, PHASES)
    device = bc.open_device(args.device)
    if device is None:
        return 2
    stacks = bc.split_names(args.stack)
    bad = [s for s in stacks if s not in qf.STACKS]
    if bad or not stacks:
        raise SystemExit(f"--stack: unknown {bad} (known: {', '.join(qf.STACKS)})")
    names = bc.split_names(args.models) or (
        ["tiny", "tiny-moe"] if device.type == "cpu" else [*DEFAULT_DENSE, *DEFAULT_MOE])
    models = resolve_models(names, Path(args.models_dir), Path(args.moe_json))

    if device.type == "cuda":
        grid = GRIDS["quick" if args.quick else "full"]
        policy = Policy()
    else:
        grid = GRIDS["cpu"]                        # tiny shapes whatever --quick says
        policy = Policy(warmup=1, target=5, min_reps=3, max_s=0.05)
    for flag, name in ((args.step_shapes, "steps"), (args.profile_shapes, "profile"),
                       (args.trace_shapes, "trace")):
        if flag:
            grid = QGrid(**{**grid.__dict__, name: bc.parse_steps(flag),
                            "name": f"{grid.name}+{name}"})

    probes: dict[str, object] = {}
    if "torch-fp8" in stacks:
        probes["scaled_mm_unpadded_ok"] = qf.scaled_mm_accepts_unpadded(device)
    if args.fp8_pad_m == "auto":
        pad_m = 0 if probes.get("scaled_mm_unpadded_ok", True) else 16
    else:
        pad_m = int(args.fp8_pad_m)
    moe_impl = None if args.moe_impl == "auto" else args.moe_impl
    if any(s.kind == "moe" for s in models.values()):
        probes["grouped_mm_bf16_ok"] = mf.grouped_mm_supported(device, torch.bfloat16)
    mode = None if args.int8wo_mode == "default" else args.int8wo_mode
    opts = {"fp8_pad_m": pad_m, "int4_group": args.int4_group,
            "int8wo_compiled": args.int8wo_mode != "eager",
            "int8wo_mode": None if args.int8wo_mode == "eager" else mode}

    env = bc.environment(args, argv, device, __file__)
    env.update({
        "stack": args.stack, "stacks": stacks, "phases": phases, "grid": grid.name,
        "grid_shapes": {"steps": grid.steps, "profile": grid.profile, "trace": grid.trace},
        "models": {n: {"kind": s.kind, **(s.cfg or vars(s.shape))} for n, s in models.items()},
        "options": {**opts, "moe_impl": args.moe_impl, "check_tol": CHECK_TOL},
        "probes": probes,
    })
    bc.write_json(bc.fresh_path(out, "env"), env)

    ctx = QCtx(out=out, device=device, grid=grid, budget=budget, clock=Clock(device),
               policy=policy, stacks=stacks, models=models,
               steps=CsvSink(out / "steps.csv", STEPS_Q_COLUMNS),
               kernels=CsvSink(out / "kernels.csv", KERNELS_Q_COLUMNS),
               opts=opts, moe_impl=moe_impl, kv_budget_bytes=bc.kv_budget_arg(args.kv_budget_gb))
    ctx.log(f"bench_quant_moe on {env.get('gpu_name') or device} ({args.gpu}), stacks "
            f"{', '.join(stacks)}, models {', '.join(models)}, grid {grid.name}, phases "
            f"{', '.join(phases)}, budget {args.budget_s:.0f} s, probes {probes} -> {out}")
    runners: dict[str, Callable[[QCtx], None]] = {
        "steps": run_steps, "profile": run_profile, "trace": run_trace}
    summary = bc.run_phases(
        ctx, phases, lambda ph: ctx.guard(f"phase {ph}", lambda: runners[ph](ctx)),
        lambda done: {**bc.base_summary(ctx, done), "stacks": stacks,
                      "rows": {"steps": len(ctx.steps.rows), "kernels": len(ctx.kernels.rows),
                               "traces": len(ctx.traces)},
                      "traces": ctx.traces, "checks": ctx.checks},
        bc.fresh_path(out, "summary"), (ctx.steps, ctx.kernels))
    bc.print_header("bench_quant_moe", summary)
    groups: dict[tuple, list[dict]] = {}
    for r in ctx.steps.rows:
        groups.setdefault((r["stack"], r["model"], r["mode"]), []).append(r)
    for (stack, model, mode), rows in groups.items():
        cells = " ".join(f"{r['batch']}x{r['q']}@{r['ctx']}:{r['median_ms']:.3g}" for r in rows)
        print(f"  {stack:<13} {model:<18} {mode:<8} {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
