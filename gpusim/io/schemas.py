"""JSON schemas of the input files, for editors that check YAML against a schema."""

from __future__ import annotations

from typing import Any

from gpusim.cost import CalibrationSet
from gpusim.specs import GpuSpec, ModelSpec, StackSpec


def _sourced(schema: dict[str, Any]) -> dict[str, Any]:
    """GPU files write each number as {value, source}: rewrite numeric leaves so."""
    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("type") in ("number", "integer"):
                return {"type": "object", "additionalProperties": False,
                        "required": ["value", "source"],
                        "properties": {"value": node, "source": {"type": "string",
                                                                  "minLength": 1}}}
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    out = walk(schema)
    out.get("properties", {}).pop("sources", None)
    return out


def all_schemas() -> dict[str, dict[str, Any]]:
    """{kind: JSON schema} for gpu, model, stack and calibration files."""
    return {
        "gpu": _sourced(GpuSpec.model_json_schema()),
        "model": ModelSpec.model_json_schema(),
        "stack": StackSpec.model_json_schema(),
        "calibration": CalibrationSet.model_json_schema(),
    }
