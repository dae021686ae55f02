"""Leave-one-model-out of a quantized stack on one GPU with some of its parameters taken
from another GPU of the same die, beside its own fit of all of them: the comparison that
led to ``gpusim.calibration.die`` (which ships the family's ``DIE`` fields so) and the
way to try any other choice of shared parameters.

    python validation/die_shared_lomo.py --gpu h200 --from h100-sxm --stack torch-int4 \
        --shared gemm.tinygemm.dequant_flops_per_element[,...]

The H100 SXM and the H200 share one die (GH100: 132 SMs, the same clocks and L2); only
their HBM differs. A quantized GEMM kernel's compute side (the CUDA-core work to
dequantize a weight, a tensor-core efficiency) is then a property of the die, not of
the GPU, and the torch-int4 steps say so: tinygemm's decode steps take 4.38 and 4.14 ms
(Llama 3.1 8B, batch 1) and 133.3 and 134.0 ms (batch 256) on the two, where HBM
alone would make the H200's 30% shorter.

For each model M of the stack's steps on ``--gpu``, this fits the stack's ``calibrate``
parameters without M's steps, as ``validation/REPORT.md``'s leave-one-model-out does,
except that the ``--shared`` ones are held at the values ``--from``'s own
leave-one-model-out fit gives without M (so no step of M, on either GPU, enters M's
prediction), and prints the held-out MAPE per mode beside the report's own fit.
Both GPUs' physics are their shipped calibrations'. Raises SystemExit for a stack
without steps on either GPU or a ``--shared`` parameter it does not calibrate.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from gpusim.calibration.measurements import read_steps
from gpusim.calibration.stacks_report import StackEvaluation, evaluate_stack
from gpusim.io import calibrations, loader
from gpusim.specs import StackSpec

BASELINE = "torch-fused"   # whose calibration holds the physics every fit starts from


def _evaluate(gpu_name: str, stack: StackSpec,
              shared: dict[str, dict[str, float]] | None = None) -> StackEvaluation:
    """The stack's leave-one-model-out on ``gpu_name``; ``shared``: per held-out model,
    parameters held at the given values (not fitted)."""
    gpu = loader.load_gpu(gpu_name)
    cal_file = str(calibrations.CALIBRATIONS_DIR / f"{gpu.name}.yaml")
    physics = calibrations.load_calibration(cal_file, gpu, loader.load_stack(BASELINE))
    path = loader.ROOT / "validation" / "data" / gpu.name / "stacks" / stack.name / "steps.csv"
    if not path.is_file():
        raise SystemExit(f"die_shared_lomo: no steps of {stack.name} on {gpu.name} ({path})")
    data = read_steps(path, stack.name)
    held = None if shared is None else shared.__getitem__
    return evaluate_stack(stack, data, gpu, physics, loader.load_model, held=held)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpu", default="h200")
    ap.add_argument("--from", dest="source", default="h100-sxm")
    ap.add_argument("--stack", default="torch-int4")
    ap.add_argument("--shared", required=True,
                    help="comma list of the stack's calibrate parameters taken from --from")
    args = ap.parse_args(argv)
    stack = loader.load_stack(args.stack)
    names = [p for p in args.shared.split(",") if p]
    unknown = [p for p in names if p not in stack.calibrate]
    if unknown:
        raise SystemExit(f"die_shared_lomo: {args.stack} does not calibrate {unknown} "
                         f"(its calibrate: {', '.join(stack.calibrate)})")
    source = _evaluate(args.source, stack)
    shared = {m: {p: float(c.get(p)) for p in names}  # type: ignore[arg-type]
              for m, c in source.lomo_calibrations.items()}
    own = _evaluate(args.gpu, stack)
    models = sorted(set(map(str, own.data.model)))
    missing = [m for m in models if m not in shared]
    if missing:
        raise SystemExit(f"die_shared_lomo: {args.source} has no fold without {missing}")
    mixed = _evaluate(args.gpu, stack, {m: shared[m] for m in models})
    print(f"{args.stack} on {args.gpu}, leave-one-model-out; shared from {args.source}'s "
          f"fold without the held-out model: {', '.join(names)}")
    for m in models:
        print(f"  without {m}: " + ", ".join(f"{p} = {v:.4g}" for p, v in shared[m].items()))
    print("mode      n  own fit: MAPE  max    shared: MAPE  max")
    d = own.data
    for mode in ("decode", "verify", "prefill"):
        mask = (d.launch == "graph") & (d.mode == mode)
        if not mask.any():
            continue
        a, b = own.errors("lomo", mask), mixed.errors("lomo", mask)
        print(f"{mode:8s} {a.n:3d}  {100 * a.mape:11.1f}% {100 * a.max:5.1f}%  "
              f"{100 * b.mape:10.1f}% {100 * b.max:5.1f}%")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
