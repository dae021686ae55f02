"""Step-time campaign of the quantized (fp8, int4, int8 weight-only) and MoE forwards.

    python3 validation/harness/bench_quant_moe.py --out DIR --gpu NAME
        --stack torch-fp8|torch-int4|torch-int8wo|torch-fused[,...] [--models m1,...]
        [--device cuda|cpu] [--budget-s S] [--only steps|profile|trace] [--quick]
        [--step-shapes mode:batch:ctx:q,...] [--profile-shapes ...] [--trace-shapes ...]
        [--fp8-pad-m auto|0|16] [--int8wo-mode MODE] [--moe-impl auto|grouped_mm|loop]

Models: dense names from workloads/models/<name>.yaml (bench.load_models), MoE names
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
* ``trace``: gzip'd Chrome traces (record_shapes=True) of 2 eager steps per shape, each
  inside record_function("gpusim_step_<i>"), into DIR/traces/.

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
import gzip
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # imported from tests (run as a script, it is there already)
    sys.path.insert(0, str(HERE))

import bench  # noqa: E402
import moe_forward as mf  # noqa: E402
import quant_forward as qf  # noqa: E402
import reference  # noqa: E402
from bench_common import KERNELS_COLUMNS, STEPS_COLUMNS, Logged, Step  # noqa: E402
from bench_steps import (  # noqa: E402
    BatchPlan,
    StepShape,
    kv_bytes_per_token,
    make_cache,
    profile_kernels,
)
from bench_timing import (  # noqa: E402
    Budget,
    Clock,
    CsvSink,
    GiB,
    MiB,
    Policy,
    free_memory,
    measure,
    stats,
)
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


@dataclass
class QCtx(Logged):
    """Everything a phase needs (duck-types bench_common.Ctx where profile_kernels and
    Logged look)."""

    out: Path
    device: torch.device
    grid: QGrid
    budget: Budget
    clock: Clock
    policy: Policy
    stacks: list[str]
    models: dict[str, Spec]
    steps: CsvSink
    kernels: CsvSink
    opts: dict
    moe_impl: str | None = None
    kv_budget_bytes: int | None = None
    n_errors: int = 0
    skipped: list[str] = field(default_factory=list)
    checks: dict[str, dict] = field(default_factory=dict)
    traces: list[str] = field(default_factory=list)
    _budget_logged: bool = False

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def graph_launch(self) -> str:
        return "graph" if self.cuda else "cpu"

    def stop(self) -> bool:
        if self.budget.over():
            if not self._budget_logged:
                self.log(f"budget of {self.budget.seconds:.0f} s reached: no new measurements")
                self._budget_logged = True
            return True
        return False


# ----------------------------------------------------------------------------- models

def resolve_models(names: list[str], models_dir: Path, moe_json: Path) -> dict[str, Spec]:
    """Spec per name: built-in tiny shapes, moe_models.json, then workloads/models.
    Raises SystemExit for an unknown name (bench.load_models) and ValueError for an MoE
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
            out[name] = Spec(name, "dense", bench.load_models([name], {}, models_dir)[name])
    return out


def build(ctx: QCtx, stack: str, spec: Spec, check: bool) -> qf.Model:
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
        hn = qf.randn((64, spec.shape.hidden_size), 1.0, g, ctx.device, torch.bfloat16)
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


def kv_budget(ctx: QCtx) -> int:
    """KV bytes a model may use now: free memory less a reserve for activations and
    graph pools (smaller than bench_steps' 12%: the MoE models leave ~20 GiB free),
    at most half the GPU."""
    if ctx.kv_budget_bytes is not None:
        return ctx.kv_budget_bytes
    if not ctx.cuda:
        return 256 * MiB
    free, total = torch.cuda.mem_get_info()
    reserve = max(4 * GiB, int(0.06 * total))
    return max(0, min(int(0.5 * total), free - reserve))


def plan(steps: tuple[Step, ...], shape: Shape, budget: int
         ) -> tuple[list[BatchPlan], list[StepShape]]:
    """Graph step shapes grouped by batch (one cache per batch) and those whose KV does
    not fit ``budget`` bytes."""
    wanted = [StepShape(m, b, c, q, "graph") for m, b, c, q in steps]
    per_tok = kv_bytes_per_token(shape)
    fits = [s for s in wanted if s.batch * s.end * per_tok <= budget]
    skipped = [s for s in wanted if s not in fits]
    order = {"decode": 0, "verify": 1, "prefill": 2}
    plans = []
    for b in sorted({s.batch for s in fits}):
        mine = sorted((s for s in fits if s.batch == b),
                      key=lambda s: (order.get(s.mode, 3), s.ctx, s.q))
        plans.append(BatchPlan(b, max(s.end for s in mine), tuple(mine)))
    return plans, skipped


def make_step(model: qf.Model, cache: reference.KVCache, s: StepShape, device: torch.device
              ) -> Callable[[], torch.Tensor]:
    """A closure running one step of shape ``s`` on fixed random tokens. Raises
    ValueError when the cache is too short."""
    if s.end > cache.k.shape[3]:
        raise ValueError(f"KV write {s.ctx}..{s.end} outside a cache of {cache.k.shape[3]}")
    g = torch.Generator(device=device).manual_seed(1000 * s.batch + s.q)
    tokens = torch.randint(0, model.shape.vocab_size, (s.batch, s.q), device=device,
                           generator=g)
    mask = reference.verify_mask(s.q, s.end) if s.mode == "verify" else None
    return lambda: qf.forward(model, cache, tokens, s.ctx, s.mode, mask)


def _pairs(ctx: QCtx) -> list[tuple[str, Spec]]:
    """(stack, model) in run order; MoE models only with torch-fused (others skipped)."""
    out = []
    for stack in ctx.stacks:
        for spec in ctx.models.values():
            if spec.kind == "moe" and stack != "torch-fused":
                ctx.skipped.append(f"{stack} {spec.name}: MoE models run with torch-fused only")
                continue
            out.append((stack, spec))
    return out


# ----------------------------------------------------------------------------- steps

def run_steps(ctx: QCtx) -> None:
    for stack, spec in _pairs(ctx):
        if ctx.stop():
            return
        ctx.guard(f"steps {stack} {spec.name}", lambda stack=stack, spec=spec:
                  _steps_model(ctx, stack, spec))
        free_memory(ctx.device)


def _steps_model(ctx: QCtx, stack: str, spec: Spec) -> None:
    model = build(ctx, stack, spec, check=True)
    budget = kv_budget(ctx)
    plans, skipped = plan(ctx.grid.steps, spec.shape, budget)
    n = sum(len(p.shapes) for p in plans)
    ctx.log(f"steps {stack} {spec.name}: {n} shapes in {len(plans)} batches, KV budget "
            f"{budget / GiB:.1f} GiB, {len(skipped)} skipped (KV does not fit)")
    ctx.skipped += [f"steps {stack} {spec.name} {s.mode} b={s.batch} ctx={s.ctx} q={s.q}: "
                    "KV over budget" for s in skipped]
    for p in plans:
        if ctx.stop():
            break
        holder: dict[str, reference.KVCache] = {}

        def alloc(p: BatchPlan = p, holder: dict = holder) -> None:
            holder["cache"] = make_cache(spec.shape, p.batch, p.max_len, ctx.device,
                                         torch.bfloat16)

        if not ctx.guard(f"steps {stack} {spec.name} cache b={p.batch} len={p.max_len}",
                         alloc):
            continue
        for s in p.shapes:
            if ctx.stop():
                break
            ctx.guard(f"steps {stack} {spec.name} {s.mode} b={s.batch} ctx={s.ctx} q={s.q}",
                      lambda s=s, holder=holder:
                      _step_one(ctx, stack, spec, model, holder["cache"], s))
            if ctx.cuda:
                torch.cuda.empty_cache()   # the graph's private pool
        holder.clear()
        free_memory(ctx.device)


def _step_one(ctx: QCtx, stack: str, spec: Spec, model: qf.Model, cache: reference.KVCache,
              s: StepShape) -> None:
    fn = make_step(model, cache, s, ctx.device)
    touched = mf.experts_touched(model, fn)      # eager, before the capture: not timed
    times = measure(ctx.clock, fn, ctx.policy, graph=True)
    st = stats(times, 1e3)
    ctx.steps.write(model=spec.name, mode=s.mode, batch=s.batch, ctx=s.ctx, q=s.q,
                    launch=ctx.graph_launch, median_ms=st["median"], p10_ms=st["p10"],
                    p90_ms=st["p90"], repeats=st["repeats"], kernels=None, stack=stack,
                    weight_dtype=model.weight_dtype, experts_touched_mean=touched)


# ----------------------------------------------------------------------------- profile

def run_profile(ctx: QCtx) -> None:
    for stack, spec in _pairs(ctx):
        if ctx.stop():
            return
        ctx.guard(f"profile {stack} {spec.name}", lambda stack=stack, spec=spec:
                  _profile_model(ctx, stack, spec))
        free_memory(ctx.device)


def _profile_model(ctx: QCtx, stack: str, spec: Spec) -> None:
    model = build(ctx, stack, spec, check=False)
    for mode, b, c, q in ctx.grid.profile:
        if ctx.stop():
            break

        def one(mode: str = mode, b: int = b, c: int = c, q: int = q) -> None:
            s = StepShape(mode, b, c, q, "eager")
            cache = make_cache(spec.shape, b, s.end, ctx.device, torch.bfloat16)
            fn = make_step(model, cache, s, ctx.device)
            touched = mf.experts_touched(model, fn)
            for _ in range(3):
                fn()
            agg = profile_kernels(ctx, fn)
            if not agg:
                raise RuntimeError("the profiler recorded no kernels")
            for name, (count, total) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
                ctx.kernels.write(model=spec.name, mode=mode, batch=b, ctx=c, q=q,
                                  kernel_name=name, count=count, total_us=total, stack=stack)
            ctx.log(f"profile {stack} {spec.name} {mode} b={b} ctx={c} q={q}: "
                    f"{int(sum(v[0] for v in agg.values()))} kernels, {len(agg)} distinct"
                    + (f", experts touched {touched:.1f}" if touched is not None else ""))

        ctx.guard(f"profile {stack} {spec.name} {mode} b={b} ctx={c} q={q}", one)
        free_memory(ctx.device)


# ----------------------------------------------------------------------------- trace

def run_trace(ctx: QCtx) -> None:
    (ctx.out / "traces").mkdir(exist_ok=True)
    for stack, spec in _pairs(ctx):
        if ctx.stop():
            return
        ctx.guard(f"trace {stack} {spec.name}", lambda stack=stack, spec=spec:
                  _trace_model(ctx, stack, spec))
        free_memory(ctx.device)


def trace_name(stack: str, model: str, s: Step) -> str:
    mode, b, c, q = s
    return f"{stack}__{model}__{mode}_b{b}_ctx{c}_q{q}.json.gz"


def _trace_model(ctx: QCtx, stack: str, spec: Spec) -> None:
    from torch.profiler import ProfilerActivity, profile, record_function

    model = build(ctx, stack, spec, check=False)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ctx.cuda else [])
    for step in ctx.grid.trace:
        if ctx.stop():
            break

        def one(step: Step = step) -> None:
            mode, b, c, q = step
            s = StepShape(mode, b, c, q, "eager")
            cache = make_cache(spec.shape, b, s.end, ctx.device, torch.bfloat16)
            fn = make_step(model, cache, s, ctx.device)
            for _ in range(2):
                fn()
            ctx.clock.sync()
            with profile(activities=acts, record_shapes=True) as prof:
                for i in range(2):
                    with record_function(f"gpusim_step_{i}"):
                        fn()
                    ctx.clock.sync()
            path = ctx.out / "traces" / trace_name(stack, spec.name, step)
            raw = path.with_suffix("")                       # .json
            prof.export_chrome_trace(str(raw))
            with open(raw, "rb") as fin, gzip.open(path, "wb") as fout:
                shutil.copyfileobj(fin, fout)
            raw.unlink()
            ctx.traces.append(str(path.relative_to(ctx.out)))
            ctx.log(f"trace {path.name}: {path.stat().st_size / MiB:.1f} MiB")

        ctx.guard(f"trace {stack} {spec.name} {step}", one)
        free_memory(ctx.device)


# ----------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output directory (created; appended to)")
    p.add_argument("--gpu", required=True, help="GPU name as the project calls it (h100-sxm)")
    p.add_argument("--stack", default="torch-fused",
                   help=f"comma list of: {', '.join(qf.STACKS)}")
    p.add_argument("--models", default="",
                   help="comma list: workloads/models names, moe_models.json names, tiny, "
                        "tiny-moe, tiny-moe-shared, tiny-mixtral (default: "
                        f"{','.join(DEFAULT_DENSE + DEFAULT_MOE)}; CPU: tiny,tiny-moe)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--budget-s", type=float, default=300.0,
                   help="no new measurement starts after this many seconds")
    p.add_argument("--only", default="", help="comma list of: steps, profile, trace")
    p.add_argument("--quick", action="store_true", help="a few shapes (GPU sanity run)")
    p.add_argument("--step-shapes", default="", help="replace the steps grid: "
                   "comma list of mode:batch:ctx:q")
    p.add_argument("--profile-shapes", default="", help="replace the profiled shapes")
    p.add_argument("--trace-shapes", default="", help="replace the traced shapes")
    p.add_argument("--models-dir", default=str(bench.MODELS_DIR))
    p.add_argument("--moe-json", default=str(MOE_JSON))
    p.add_argument("--kv-budget-gb", type=float, default=None,
                   help="KV cache bytes per model (default: free memory less a reserve)")
    p.add_argument("--fp8-pad-m", default="auto",
                   help="pad fp8 GEMMs' token count to a multiple of this (0: never; auto: "
                        "16 only where _scaled_mm refuses an unpadded M)")
    p.add_argument("--int4-group", type=int, default=128)
    p.add_argument("--int8wo-mode", default="default",
                   help="torch.compile mode of torch-int8wo (default, max-autotune-no-cudagraphs, "
                        "...); 'eager' runs it uncompiled")
    p.add_argument("--moe-impl", choices=("auto", "grouped_mm", "loop"), default="auto")
    return p.parse_args(argv)


def _phases(only: str) -> list[str]:
    want = {t.strip() for t in only.split(",") if t.strip()} or set(PHASES)
    unknown = want - set(PHASES)
    if unknown:
        raise SystemExit(f"--only: unknown phase(s) {sorted(unknown)} (known: {PHASES})")
    return [p for p in PHASES if p in want]


def _fresh(out: Path, stem: str) -> Path:
    """DIR/stem.json, or stem.2.json, stem.3.json, ... if taken by an earlier run."""
    path, n = out / f"{stem}.json", 1
    while path.exists():
        n += 1
        path = out / f"{stem}.{n}.json"
    return path


def _print_table(ctx: QCtx, summary: dict) -> None:
    print(f"bench_quant_moe: {summary['elapsed_s']} s, budget {summary['budget_s']:.0f} s"
          f"{' (stopped by budget)' if summary['stopped_by_budget'] else ''}, "
          f"{summary['errors']} errors, {len(summary['skipped'])} skipped; rows: steps "
          f"{summary['rows']['steps']}, kernels {summary['rows']['kernels']}, traces "
          f"{summary['rows']['traces']}")
    groups: dict[tuple, list[dict]] = {}
    for r in ctx.steps.rows:
        groups.setdefault((r["stack"], r["model"], r["mode"]), []).append(r)
    for (stack, model, mode), rows in groups.items():
        cells = " ".join(f"{r['batch']}x{r['q']}@{r['ctx']}:{r['median_ms']:.3g}" for r in rows)
        print(f"  {stack:<13} {model:<18} {mode:<8} {cells}")


def main(argv: list[str] | None = None) -> int:
    """CLI entry (see the module docstring); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    phases = _phases(args.only)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    stacks = [s.strip() for s in args.stack.split(",") if s.strip()]
    bad = [s for s in stacks if s not in qf.STACKS]
    if bad or not stacks:
        raise SystemExit(f"--stack: unknown {bad} (known: {', '.join(qf.STACKS)})")
    if args.models:
        names = [m.strip() for m in args.models.split(",") if m.strip()]
    else:
        names = ["tiny", "tiny-moe"] if device.type == "cpu" else [*DEFAULT_DENSE, *DEFAULT_MOE]
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
            grid = QGrid(**{**grid.__dict__, name: bench.parse_steps(flag),
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

    env = bench.environment(args, argv, device)
    env["command"] = [sys.executable, str(Path(__file__)), *argv]
    env.update({
        "stack": args.stack, "stacks": stacks, "phases": phases, "grid": grid.name,
        "grid_shapes": {"steps": grid.steps, "profile": grid.profile, "trace": grid.trace},
        "models": {n: {"kind": s.kind, **(s.cfg or vars(s.shape))} for n, s in models.items()},
        "options": {**opts, "moe_impl": args.moe_impl, "check_tol": CHECK_TOL},
        "probes": probes,
    })
    _fresh(out, "env").write_text(json.dumps(env, indent=2, default=str) + "\n")

    ctx = QCtx(out=out, device=device, grid=grid, budget=budget, clock=Clock(device),
               policy=policy, stacks=stacks, models=models,
               steps=CsvSink(out / "steps.csv", STEPS_Q_COLUMNS),
               kernels=CsvSink(out / "kernels.csv", KERNELS_Q_COLUMNS),
               opts=opts, moe_impl=moe_impl,
               kv_budget_bytes=None if args.kv_budget_gb is None
               else int(args.kv_budget_gb * GiB))
    ctx.log(f"bench_quant_moe on {env.get('gpu_name') or device} ({args.gpu}), stacks "
            f"{', '.join(stacks)}, models {', '.join(models)}, grid {grid.name}, phases "
            f"{', '.join(phases)}, budget {args.budget_s:.0f} s, probes {probes} -> {out}")
    runners: dict[str, Callable[[QCtx], None]] = {
        "steps": run_steps, "profile": run_profile, "trace": run_trace}
    done: list[str] = []
    t0 = time.monotonic()
    try:
        for ph in phases:
            if ctx.stop():
                break
            ctx.guard(f"phase {ph}", lambda ph=ph: runners[ph](ctx))
            done.append(ph)
    finally:
        summary = {
            "elapsed_s": round(budget.elapsed(), 1),
            "budget_s": budget.seconds,
            "stopped_by_budget": budget.hit,
            "phases_run": done,
            "stacks": stacks,
            "rows": {"steps": len(ctx.steps.rows), "kernels": len(ctx.kernels.rows),
                     "traces": len(ctx.traces)},
            "traces": ctx.traces,
            "checks": ctx.checks,
            "errors": ctx.n_errors,
            "skipped": ctx.skipped,
            "nvidia_smi_end": bench._nvidia_smi() if ctx.cuda else None,
        }
        _fresh(out, "summary").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        ctx.steps.close()
        ctx.kernels.close()
    ctx.log(f"done in {time.monotonic() - t0:.1f} s")
    _print_table(ctx, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
