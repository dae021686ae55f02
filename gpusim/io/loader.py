"""Files -> specs: YAML (GPU, model, stack) and Hugging Face config.json.

Every failure is a ConfigError naming file, line, field, the bad value and what is
allowed; nothing here raises anything else for bad input.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from gpusim.cost.attention import FAMILIES
from gpusim.cost.gemm_families import KNOWN as GEMM_FAMILIES
from gpusim.cost.params import overridable
from gpusim.errors import bad
from gpusim.io.hf_config import model_from_hf_config
from gpusim.io.yamlfile import M, Path_, line_for, load_yaml, validate
from gpusim.specs import GpuSpec, ModelSpec, StackSpec
from gpusim.specs.stack import STACK_ALIASES

__all__ = ["available", "gpu_from_yaml", "load_gpu", "load_model", "load_stack",
           "load_yaml", "model_from_hf_config", "model_from_yaml", "validate"]

ROOT = Path(os.environ.get("GPUSIM_DATA", Path(__file__).resolve().parents[2]))
HARDWARE_DIR = ROOT / "hardware"
MODELS_DIR = ROOT / "workloads" / "models"
STACKS_DIR = ROOT / "stacks"
# the stack predict, spec, serve and the planner use unless told: among the measured
# stacks the one closest to what serving engines run (fused norms, RoPE and SiLU*up,
# residual adds in GEMM epilogues, the whole step in a CUDA graph)
DEFAULT_STACK = "torch-compile"
# the stack the committed calibration measurements ran (validation/data/<gpu>/steps.csv):
# what calibrate, validate and spec-validate fit and judge by default
REFERENCE_STACK = "torch-hf"

def _check_name(spec: M, path: Path, lines: dict[Path_, int]) -> M:
    """A YAML file's ``name`` must be its file name (so names and files agree)."""
    name = getattr(spec, "name", None)
    if name != path.stem:
        raise bad(str(path), f"name must match the file name {path.stem!r}", field="name",
                  line=lines.get(("name",)), value=name)
    return spec


# ----------------------------------------------------------------------------------
# name resolution
# ----------------------------------------------------------------------------------
def _resolve(name_or_path: str | os.PathLike[str], directory: Path, what: str,
             exts: tuple[str, ...] = (".yaml",)) -> Path:
    text = str(name_or_path)
    as_path = Path(text)
    if as_path.suffix in (".yaml", ".yml", ".json") or os.sep in text:
        if not as_path.is_file():
            raise bad(text, f"{what} file not found")
        return as_path
    for ext in exts:
        cand = directory / f"{text}{ext}"
        if cand.is_file():
            return cand
    known = available(directory)
    raise bad(f"--{what}", f"unknown {what} {text!r}; known: {', '.join(known) or 'none'}"
              " (or give a file path)")


def available(directory: Path) -> list[str]:
    """Names of the YAML files in ``directory`` (without extension), sorted."""
    if not directory.is_dir():
        return []
    return sorted(p.stem for p in directory.glob("*.yaml"))


# ----------------------------------------------------------------------------------
# GPU
# ----------------------------------------------------------------------------------
def _unwrap_sourced(data: Any, path: Path_, sources: dict[str, str],
                    loc_map: dict[Path_, Path_], source: str,
                    lines: dict[Path_, int]) -> Any:
    """Replace ``{value: x, source: s}`` leaves by x; every number needs a source."""
    if isinstance(data, dict):
        if set(data) == {"value", "source"}:
            if not isinstance(data["source"], str) or not data["source"].strip():
                raise bad(source, "source must be a non-empty string",
                          field=".".join(map(str, (*path, "source"))),
                          line=line_for((*path, "source"), lines))
            sources[".".join(map(str, path))] = data["source"]
            loc_map[path] = (*path, "value")
            return data["value"]
        if "value" in data or "source" in data:
            extra = [k for k in data if k not in ("value", "source")]
            missing = [k for k in ("value", "source") if k not in data]
            reason = "a sourced number needs exactly the keys value and source"
            if extra:
                reason += f"; unknown key(s): {', '.join(map(str, extra))}"
                where = (*path, extra[0])
            else:
                reason += f"; missing: {', '.join(missing)}"
                where = path
            raise bad(source, reason, field=".".join(map(str, path)),
                      line=line_for(where, lines))
        return {k: _unwrap_sourced(v, (*path, k), sources, loc_map, source, lines)
                for k, v in data.items()}
    if isinstance(data, (int, float)) and not isinstance(data, bool):
        raise bad(source, "every number needs its provenance: write {value: ..., source: ...}",
                  field=".".join(map(str, path)), line=line_for(path, lines), value=data)
    return data


def gpu_from_yaml(path: Path) -> GpuSpec:
    """Load one hardware/*.yaml file. Raises ConfigError."""
    data, lines = load_yaml(path)
    sources: dict[str, str] = {}
    loc_map: dict[Path_, Path_] = {}
    if "sources" in data:
        raise bad(str(path), "sources are given per number, not as a 'sources' key",
                  field="sources", line=lines.get(("sources",)))
    plain = _unwrap_sourced(data, (), sources, loc_map, str(path), lines)
    plain["sources"] = sources
    return _check_name(validate(GpuSpec, plain, str(path), lines, loc_map), path, lines)


@lru_cache(maxsize=64)
def _gpu_cached(path: str, mtime: float) -> GpuSpec:
    return gpu_from_yaml(Path(path))


def load_gpu(name_or_path: str | os.PathLike[str]) -> GpuSpec:
    """A GPU by name (hardware/<name>.yaml) or path. Raises ConfigError."""
    path = _resolve(name_or_path, HARDWARE_DIR, "gpu")
    return _gpu_cached(str(path), path.stat().st_mtime)


# ----------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------
def model_from_yaml(path: Path) -> ModelSpec:
    """Load one workloads/models/*.yaml file. Raises ConfigError."""
    data, lines = load_yaml(path)
    return _check_name(validate(ModelSpec, data, str(path), lines), path, lines)


@lru_cache(maxsize=256)
def _model_cached(path: str, mtime: float) -> ModelSpec:
    p = Path(path)
    return model_from_hf_config(p) if p.suffix == ".json" else model_from_yaml(p)


def load_model(name_or_path: str | os.PathLike[str]) -> ModelSpec:
    """A model by name, YAML path or config.json path. Raises ConfigError."""
    path = _resolve(name_or_path, MODELS_DIR, "model")
    return _model_cached(str(path), path.stat().st_mtime)


# ----------------------------------------------------------------------------------
# stacks
# ----------------------------------------------------------------------------------
@lru_cache(maxsize=32)
def _stack_cached(path: str, mtime: float) -> StackSpec:
    data, lines = load_yaml(Path(path))
    stack = _check_name(validate(StackSpec, data, path, lines), Path(path), lines)
    for mode, name in stack.attention.items():
        if name not in FAMILIES:
            raise bad(path, f"unknown attention family; known: {', '.join(FAMILIES)}",
                      field=f"attention.{mode}", line=lines.get(("attention", mode)),
                      value=name)
    for section in ("prologue", "layer", "epilogue", "moe", "qk_norm"):
        for i, op in enumerate(getattr(stack, section) or ()):
            if op.family is not None and op.family not in GEMM_FAMILIES:
                raise bad(path, f"unknown GEMM family; known: {', '.join(GEMM_FAMILIES)}",
                          field=f"{section}[{i}].family",
                          line=lines.get((section, i, "family"), lines.get((section, i))),
                          value=op.family)
    for i, param in enumerate(stack.calibrate):
        if not overridable(param):
            raise bad(path, "not a parameter a stack may fit for itself "
                      "(physics.<name> or attention.<family>.<name>)",
                      field=f"calibrate[{i}]",
                      line=lines.get(("calibrate", i), lines.get(("calibrate",))),
                      value=param)
    return stack


def load_stack(name_or_path: str | os.PathLike[str] = DEFAULT_STACK) -> StackSpec:
    """A software stack by name (stacks/<name>.yaml; an old name resolves to the stack
    it was renamed to) or path. Raises ConfigError."""
    name = str(name_or_path)
    path = _resolve(STACK_ALIASES.get(name, name), STACKS_DIR, "stack")
    return _stack_cached(str(path), path.stat().st_mtime)
