"""The cost model's parameters: a calibration, in three parts.

* ``GpuPhysics``: what belongs to the GPU and holds for every stack on it (HBM
  bandwidth and its ramp, tensor efficiency, launch gaps, L2, pointwise and GEMM kernel
  behaviour, the power cap).
* attention families' parameters (``gpusim.cost.attention``), keyed by family name:
  shared by every stack that runs that kernel on this GPU.
* ``HostParams``: what one software stack's host path costs (eager launches, a graph
  replay).

A calibration file (``CalibrationSet``) holds one GPU's physics and families and the
host parameters of each stack it was measured with; ``for_stack`` resolves the
``Calibration`` a prediction uses, and refuses a stack it has nothing for. The
defaults everywhere are the ideal datasheet GPU: full bandwidth and tensor rate, no
fixed costs. ``gpusim calibrate`` fits them from measurements.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, create_model, model_validator

from gpusim.cost.attention import FAMILIES
from gpusim.cost.gemm_families import GEMM_FAMILIES
from gpusim.cost.trust import Trust
from gpusim.specs import Frozen, StackSpec
from gpusim.specs.base import Fraction, NonNeg, PosInt, field_error
from gpusim.specs.stack import STACK_ALIASES

Share = Annotated[float, Field(ge=0.0, le=1.0)]


class SlowPick(Frozen):
    """A GEMM shape for which cuBLAS picks a kernel far slower than its neighbours' in
    m, and by how much (measured: ``gpusim.calibration.gemm_picks``)."""

    n: PosInt
    k: PosInt
    m: PosInt
    slowdown: Annotated[float, Field(ge=1.0, le=100.0)]


class GpuPhysics(Frozen):
    """A GPU's physics as the cost model sees it; holds for every stack."""

    # HBM: sustained fraction of the datasheet bandwidth, and the latency that a
    # kernel's first bytes pay (Little's law: small transfers don't reach peak).
    hbm_bandwidth_efficiency: Fraction = 1.0
    dram_latency_s: NonNeg = 0.0
    # CTAs per SM a kernel needs in flight to reach full bandwidth (0: no limit).
    saturating_ctas_per_sm: NonNeg = 0.0
    # Per-kernel GPU-side cost inside the kernel (prologue/epilogue, tail).
    kernel_fixed_cost_s: NonNeg = 0.0
    # Idle time on the GPU between two kernels of a stream (the next kernel's launch
    # by the front end): in a step's time, not in any kernel's profiled duration.
    launch_gap_s: NonNeg = 0.0
    # Achievable fraction of dense tensor throughput in large GEMMs.
    tensor_efficiency: Fraction = 1.0
    # GEMM output tile (cuBLAS-like) for wave quantisation.
    gemm_tile_m: PosInt = 128
    gemm_tile_n: PosInt = 128
    # Shapes where cuBLAS's kernel pick is measured far slower than the smooth model's
    # (gemm_picks); empty for a GPU without a GEMM sweep.
    gemm_slow_picks: tuple[SlowPick, ...] = ()
    # Extra fixed time per GEMM (pipeline fill and drain, split-K reduction).
    gemm_fixed_cost_s: NonNeg = 0.0
    # Attention kernels, every family: the fraction of HBM bandwidth their KV streams
    # at, and a fixed time per launch.
    attention_bandwidth_efficiency: Fraction = 1.0
    attention_fixed_cost_s: NonNeg = 0.0
    # L2 bandwidth over sustained HBM bandwidth, for pointwise chains whose tensors
    # stay in L2 between kernels (1: L2 ignored, the datasheet model).
    l2_bandwidth_ratio: Annotated[float, Field(ge=1.0, le=20.0)] = 1.0
    # The share of L2 a pointwise chain finds the previous kernel's output in (1: all of
    # it, the datasheet model). Below 1 on Hopper: the L2 is two partitions, a kernel's
    # own writes evict what it has yet to read, and what it writes goes back to HBM:
    # profiled, the reference stack's pointwise kernels take the same time a token from
    # 2048 to 6144 tokens (validation/data/h100-sxm/probe_2026-12-07_s21/prefill_*).
    l2_reuse_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    # Row reductions: time per element of one row, and the rows after which more rows
    # run in parallel (see cost.pointwise.reduction_s).
    reduction_s_per_element: NonNeg = 0.0
    reduction_parallel_rows: Annotated[float, Field(ge=1.0, le=4096.0)] = 16.0
    # PyTorch's in-CTA radix sort (torch.sort / argsort of at most 4096 elements, one CTA
    # per row: sortKeyValueInplace's radixSortKVInPlace): a fixed time, a time per item
    # each thread holds and per thread of the CTA (cost.pointwise.sort_s). Defaults: the
    # H100's profiled sorts (8 to 4096 int64 keys, 6.7 to 33.8 us; the H200's within 4%),
    # a prior for GPUs whose sorts were not profiled; fitted where MoE steps were
    # (calibration.moe_fit).
    sort_fixed_s: NonNeg = 3.5e-6
    sort_s_per_item: NonNeg = 6.7e-7
    sort_s_per_thread: NonNeg = 7.5e-8
    # beyond 4096 keys PyTorch sorts with cub's device-wide radix sort: a histogram, an
    # exclusive sum and 8 onesweep passes over 64-bit keys, each latency-bound at these
    # sizes; default: the H100's profile (54 us at 8192 to 32768 keys, flat)
    sort_device_s: NonNeg = 54e-6
    # Atomic adds into global memory (index_add_ of an MoE layer's slots into their
    # tokens), run by the L2 whatever the bytes the kernel moves: seconds per element
    # added over the whole GPU. Default: the H100's profiled index_add_ calls (125-136
    # G adds/s over 0.7-67 M adds, top-k 2 to 8, hidden 2048 and 4096; the H200's the
    # same), a prior for a GPU whose calls were not profiled; fitted where MoE steps
    # were (calibration.moe_fit).
    atomic_add_s_per_element: NonNeg = 7.7e-12
    # Bandwidth of a non-vectorised (strided) pointwise kernel, as a fraction of a
    # vectorised one's (element-wide loads instead of 16-byte vectors).
    strided_bandwidth_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    # Extra fixed time of a non-vectorised (strided, broadcast, reduction) kernel.
    strided_kernel_extra_s: NonNeg = 0.0
    # Power cap: the share of a back-to-back step's time its matrix work keeps the
    # tensor cores busy at peak (at full clock) before the power manager lowers the SM
    # clock (1: never); see cost.power.power_clock.
    power_cap_tensor_share: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    # HBM streaming's power against the tensor cores': a step's load on the cap is its
    # tensor share plus this times its HBM share (cost.power.power_load).
    power_memory_weight: Annotated[float, Field(ge=0.0, le=2.0)] = 0.0
    # How memory and compute overlap inside a kernel: time = (m^p + c^p)^(1/p).
    overlap_exponent: Annotated[float, Field(ge=1.0, le=64.0)] = 64.0


class HostParams(Frozen):
    """One software stack's host path: the cost to launch one kernel from eager
    PyTorch, and one CUDA-graph replay; and a serving engine's host work per step
    (scheduling, input preparation, reading sampled tokens back), fitted from measured
    serving runs (``gpusim serve --replay``): a fixed part per step, a part per
    sequence in the step, and, for a step that prefills, a part per prefill chunk (its
    request's metadata) and per prefill token (positions, slots and token ids built on
    the host). 0 (the default) leaves serving step times as the kernels alone give
    them."""

    host_launch_cost_s: NonNeg = 0.0
    host_graph_launch_cost_s: NonNeg = 0.0
    serving_step_host_s: NonNeg = 0.0
    serving_seq_host_s: NonNeg = 0.0
    serving_chunk_host_s: NonNeg = 0.0
    serving_prefill_token_host_s: NonNeg = 0.0


def overridable(path: str) -> bool:
    """Whether a stack may set ``path`` for itself: a GPU-physics number
    (``physics.<name>``, not the measured slow GEMM picks), an attention family's
    (``attention.<family>.<name>``) or a GEMM kernel family's (``gemm.<family>.<name>``:
    a quantized projection kernel only its stack runs)."""
    parts = path.split(".")
    if parts[0] == "physics" and len(parts) == 2:
        return parts[1] in GpuPhysics.model_fields and parts[1] != "gemm_slow_picks"
    if parts[0] == "attention" and len(parts) == 3 and parts[1] in FAMILIES:
        return parts[2] in FAMILIES[parts[1]].Params.model_fields
    if parts[0] == "gemm" and len(parts) == 3 and parts[1] in GEMM_FAMILIES:
        return parts[2] in GEMM_FAMILIES[parts[1]].Params.model_fields
    return False


class StackParams(HostParams):
    """One stack's calibration on a GPU: its host costs, and the GPU-physics or
    attention-family parameters its kernels genuinely run differently (a stack file
    names them in ``calibrate``; ``gpusim calibrate`` fits them on that stack's own
    steps with the physics held). Overrides are partial: a field not named keeps the
    physics' value."""

    physics: dict[str, float] = Field(default_factory=dict)
    attention: dict[str, dict[str, float]] = Field(default_factory=dict)
    gemm: dict[str, dict[str, float]] = Field(default_factory=dict)
    # a serving engine's host costs when its mixed steps replay piecewise CUDA graphs
    # (cudagraph_mode full_and_piecewise), fitted on such runs: its launches outside
    # the graphs and its loop cost otherwise than in the default mode. None: the
    # fields above serve both modes
    piecewise: HostParams | None = None
    notes: str = ""

    @model_validator(mode="after")
    def _known_fields(self) -> StackParams:
        for path in self.overrides():
            if not overridable(path):
                raise field_error(path, "not a GPU physics number or an attention or "
                                  "GEMM family's parameter a stack may set for itself")
        return self

    def overrides(self) -> dict[str, float]:
        """The overridden parameters as dotted paths (``Calibration.replace`` takes)."""
        out = {f"physics.{k}": v for k, v in self.physics.items()}
        for section in ("attention", "gemm"):
            for family, values in getattr(self, section).items():
                out.update({f"{section}.{family}.{k}": v for k, v in values.items()})
        return out

    def host_params(self) -> HostParams:
        """The host costs alone."""
        return HostParams(**{k: getattr(self, k) for k in HostParams.model_fields})

    @staticmethod
    def of(cal: Calibration, own: tuple[str, ...] = (), notes: str = "") -> StackParams:
        """``cal``'s host costs, and its values of the parameters ``own`` (dotted
        paths) as this stack's overrides."""
        physics: dict[str, float] = {}
        families: dict[str, dict[str, dict[str, float]]] = {"attention": {}, "gemm": {}}
        for path in own:
            parts = path.split(".")
            value = float(cal.get(path))  # type: ignore[arg-type]
            if parts[0] == "physics":
                physics[parts[1]] = value
            else:
                families[parts[0]].setdefault(parts[1], {})[parts[2]] = value
        return StackParams(**cal.host.model_dump(), physics=physics, notes=notes,
                           **families)


# one field per attention family, typed by the family's own parameter record (built
# from the registry: a new family's module brings its fields with it)
AttentionParams: type[Frozen] = create_model(  # type: ignore[call-overload]
    "AttentionParams", __base__=Frozen,
    **{name: (fam.Params, fam.Params()) for name, fam in FAMILIES.items()})
# likewise one field per GEMM kernel family other than cuBLAS's (cost.gemm_families)
GemmParams: type[Frozen] = create_model(  # type: ignore[call-overload]
    "GemmParams", __base__=Frozen,
    **{name: (fam.Params, fam.Params()) for name, fam in GEMM_FAMILIES.items()})


class Calibration(Frozen):
    """The parameters one prediction uses: one GPU's physics and attention families,
    and one stack's host costs (``stack``; ``host_from`` names another stack when its
    host costs stand in for this one's, as its stack file asks)."""

    gpu: str | None = None
    stack: str | None = None
    host_from: str | None = None
    fitted_on: str = "datasheet"
    physics: GpuPhysics = GpuPhysics()
    attention: AttentionParams = AttentionParams()  # type: ignore[valid-type]
    host: HostParams = HostParams()
    # the host costs of a serving step model in full_and_piecewise mode (None: ``host``)
    host_piecewise: HostParams | None = None
    notes: str = ""
    gemm: GemmParams = GemmParams()  # type: ignore[valid-type]
    # error bands and measured envelope of the file it came from (None: none given)
    trust: Trust | None = None

    def family_params(self, name: str) -> Frozen:
        """The parameters of attention family ``name``; raises KeyError if unknown."""
        return getattr(self.attention, name)

    def gemm_params(self, name: str) -> Frozen:
        """The parameters of GEMM family ``name``; raises AttributeError if unknown."""
        return getattr(self.gemm, name)

    def replace(self, values: dict[str, object]) -> Calibration:
        """A copy with ``values`` set, keyed by dotted path (``physics.launch_gap_s``,
        ``attention.fa2.score_flops``, ``host.host_launch_cost_s``, ``gpu``). Raises
        KeyError for a path that names no parameter."""
        physics: dict[str, object] = {}
        host: dict[str, object] = {}
        families: dict[str, dict[str, object]] = {}
        gemms: dict[str, dict[str, object]] = {}
        top: dict[str, object] = {}
        for path, value in values.items():
            parts = path.split(".")
            if parts[0] == "physics" and len(parts) == 2 and parts[1] in GpuPhysics.model_fields:
                physics[parts[1]] = value
            elif parts[0] == "host" and len(parts) == 2 and parts[1] in HostParams.model_fields:
                host[parts[1]] = value
            elif (parts[0] == "attention" and len(parts) == 3
                  and parts[1] in AttentionParams.model_fields
                  and parts[2] in type(self.family_params(parts[1])).model_fields):
                families.setdefault(parts[1], {})[parts[2]] = value
            elif (parts[0] == "gemm" and len(parts) == 3 and parts[1] in GEMM_FAMILIES
                  and parts[2] in GEMM_FAMILIES[parts[1]].Params.model_fields):
                gemms.setdefault(parts[1], {})[parts[2]] = value
            elif len(parts) == 1 and parts[0] in ("gpu", "stack", "host_from", "fitted_on",
                                                  "notes"):
                top[parts[0]] = value
            else:
                raise KeyError(f"{path}: not a calibration parameter")
        attention = self.attention.model_copy(update={
            name: self.family_params(name).model_copy(update=upd)
            for name, upd in families.items()})
        gemm = self.gemm.model_copy(update={
            name: self.gemm_params(name).model_copy(update=upd)
            for name, upd in gemms.items()})
        return self.model_copy(update={
            **top, "physics": self.physics.model_copy(update=physics),
            "host": self.host.model_copy(update=host), "attention": attention,
            "gemm": gemm})

    def transferred(self, gpu: str, same_architecture: bool) -> Calibration:
        """This calibration carried to another GPU: efficiencies and fixed costs carry
        over (bandwidth and FLOP/s are the target's datasheet); cuBLAS's slow picks,
        measured on one GPU, do not; nor does the power cap across architectures (a
        chip's power budget over its tensor cores' draw)."""
        update: dict[str, object] = {"gpu": gpu, "physics.gemm_slow_picks": (),
                                     "fitted_on": f"transferred from {self.gpu}"}
        if not same_architecture:
            update["physics.power_cap_tensor_share"] = 1.0
        return self.replace(update)

    def get(self, path: str) -> object:
        """The value at a dotted path (as ``replace`` takes). Raises KeyError."""
        parts = path.split(".")
        try:
            obj: object = self
            for p in parts:
                obj = getattr(obj, p)
            return obj
        except (AttributeError, IndexError):
            raise KeyError(f"{path}: not a calibration parameter") from None

    def is_set(self, path: str) -> bool:
        """Whether the parameter at ``path`` was given (not left at its default)."""
        parts = path.split(".")
        if parts[0] == "attention":
            return parts[2] in self.family_params(parts[1]).model_fields_set
        if parts[0] == "gemm":
            return parts[2] in self.gemm_params(parts[1]).model_fields_set
        owner = {"physics": self.physics, "host": self.host}.get(parts[0])
        return owner is not None and parts[1] in owner.model_fields_set


class CalibrationSet(Frozen):
    """A calibration file: one GPU's physics and attention families, fitted across the
    stacks it was measured with, and each stack's host costs."""

    gpu: str
    fitted_on: str = "datasheet"
    physics: GpuPhysics = GpuPhysics()
    attention: AttentionParams = AttentionParams()  # type: ignore[valid-type]
    stacks: dict[str, StackParams] = Field(default_factory=dict)
    notes: str = ""
    gemm: GemmParams = GemmParams()  # type: ignore[valid-type]
    # optional: held-out error bands and the measured envelope (cost.trust); an old
    # file without it loads, and its predictions say they have no band
    trust: Trust | None = None

    def for_stack(self, stack: StackSpec) -> Calibration:
        """The calibration for ``stack`` on this GPU: its own host costs, or those of the
        stack its file names in ``host_costs_from``. Raises ValueError (field
        ``stack``) when this file has neither."""
        named = stack.host_costs_from
        named = STACK_ALIASES.get(named, named) if named is not None else None
        source = stack.name if stack.name in self.stacks else named
        if source is None or source not in self.stacks:
            have = ", ".join(sorted(self.stacks)) or "none"
            raise ValueError(
                f"stack={stack.name!r}: this calibration of {self.gpu} has no host costs "
                f"for {stack.name} (it has: {have}); measure it and run `gpusim calibrate`, "
                "name a measured stack in its file's host_costs_from, or use "
                "--calibration none")
        own = self.stacks[source]
        cal = Calibration(gpu=self.gpu, stack=stack.name,
                          host_from=None if source == stack.name else source,
                          fitted_on=self.fitted_on, physics=self.physics,
                          attention=self.attention, host=own.host_params(),
                          host_piecewise=own.piecewise, notes=self.notes,
                          gemm=self.gemm, trust=self.trust)
        # a stack's own kernel parameters are its own: never lent to another stack
        return cal.replace(own.overrides()) if source == stack.name else cal

    @staticmethod
    def of(cal: Calibration, stacks: dict[str, StackParams]) -> CalibrationSet:
        """The file holding ``cal``'s physics and families with ``stacks``' own
        parameters."""
        return CalibrationSet(gpu=cal.gpu or "", fitted_on=cal.fitted_on,
                              physics=cal.physics, attention=cal.attention, stacks=stacks,
                              notes=cal.notes, gemm=cal.gemm)
