"""What a stack launches for a step: (model, stack, step shape) -> [Kernel].

Pure, no SimPy, no costs: ``records`` (Kernel, GemmShape, AttentionShape), ``shape``
(step shapes and their checks), ``build`` (a forward pass's kernels).
"""

from gpusim.kernels.build import build_kernels, gemm_nk
from gpusim.kernels.records import (
    AttentionShape,
    GemmShape,
    Kernel,
    Section,
    attention_flops,
    attention_kernel,
    gemm_kernel,
    kernel_launches,
    launches_per_shape,
    step_totals,
)
from gpusim.kernels.shape import as_arrays, check_shape, default_ctx, default_q

__all__ = ["AttentionShape", "GemmShape", "Kernel", "Section", "as_arrays",
           "attention_flops", "attention_kernel", "build_kernels", "check_shape",
           "default_ctx", "default_q", "gemm_kernel", "gemm_nk", "kernel_launches",
           "launches_per_shape", "step_totals"]
