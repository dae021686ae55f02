"""Frozen input records: GPU, model, software stack (and their shared base)."""

from gpusim.specs.base import NAME_PATTERN, Frozen, field_error
from gpusim.specs.hardware import CollectiveParams, GpuSpec, Links, LinkSpec, TensorFlops
from gpusim.specs.model import ModelSpec
from gpusim.specs.stack import StackOp, StackSpec

__all__ = ["NAME_PATTERN", "CollectiveParams", "Frozen", "GpuSpec", "LinkSpec", "Links",
           "ModelSpec", "StackOp", "StackSpec", "TensorFlops", "field_error"]
