"""YAML files read with the line of every key, and pydantic errors turned into one
ConfigError line naming file, line, field, bad value and what is allowed.

Shared by every module that reads a user file (loader, serving scenarios, speculative
overheads); knows no spec.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from gpusim.errors import bad, read_text

M = TypeVar("M", bound=BaseModel)
Path_ = tuple[str | int, ...]


# ----------------------------------------------------------------------------------
# YAML with line numbers
# ----------------------------------------------------------------------------------
MAX_DEPTH = 100          # nesting levels; real files use 4 (far below Python's stack)
MAX_NODES = 100_000      # values after alias expansion ("billion laughs" guard); the
#                          largest shipped file has ~200
MAX_YAML_BYTES = 16 << 20  # a YAML input file; the largest shipped one is ~30 kB


class _TooDeep(Exception):
    def __init__(self, line: int | None) -> None:
        super().__init__(line)
        self.line = line


class _DepthLimitedLoader(yaml.SafeLoader):
    """SafeLoader whose composer stops at MAX_DEPTH levels of nesting (PyYAML's
    composer recurses, so deep input would otherwise end in RecursionError)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooDeep(self.peek_event().start_mark.line + 1)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


# YAML 1.2 floats that PyYAML's YAML 1.1 resolver leaves as strings: an exponent
# without a dot or without a sign (1e-5, 86e9, 1.5e9); the 1.1 forms resolve as before
_DepthLimitedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))

_YAML_TAG = "tag:yaml.org,2002:"
# the tags of plain data; anything else (!!python/object, a custom !tag) is refused
_PLAIN_TAGS = {_YAML_TAG + t for t in ("str", "int", "float", "bool", "null", "map", "seq",
                                       "timestamp", "binary")}


def _check_tag(node: yaml.Node, source: str) -> None:
    """Raise ConfigError for a node tagged with anything but plain data (SafeLoader
    would drop the tag of a mapping and use its value)."""
    if node.tag not in _PLAIN_TAGS:
        shown = "!!" + node.tag[len(_YAML_TAG):] if node.tag.startswith(_YAML_TAG) \
            else node.tag
        raise bad(source, f"YAML tag {shown} is not allowed: write plain values",
                  line=node.start_mark.line + 1)


def _node_to_py(node: yaml.Node, path: Path_, lines: dict[Path_, int], source: str,
                active: set[int] | None = None, budget: list[int] | None = None) -> Any:
    # setdefault: a key's own line (set by its mapping) wins over its block value's
    lines.setdefault(path, node.start_mark.line + 1)
    active = set() if active is None else active
    budget = [MAX_NODES] if budget is None else budget
    budget[0] -= 1
    if budget[0] < 0:
        raise bad(source, f"too many values (over {MAX_NODES:,} after expanding aliases)",
                  line=node.start_mark.line + 1)
    if len(path) > MAX_DEPTH:
        raise bad(source, f"nesting too deep (over {MAX_DEPTH} levels)",
                  line=node.start_mark.line + 1)
    _check_tag(node, source)
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        if id(node) in active:  # an alias to a node that contains it
            raise bad(source, "recursive alias (an anchor used inside itself)",
                      line=node.start_mark.line + 1)
        active.add(id(node))
        try:
            return _collection_to_py(node, path, lines, source, active, budget)
        finally:
            active.discard(id(node))
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node)
    except yaml.YAMLError as exc:
        raise bad(source, f"cannot read value: {exc}", line=node.start_mark.line + 1) from None
    except ValueError:  # an integer too long for int(): 4300 digits (CVE-2020-10735)
        raise bad(source, "cannot read value: an integer of over 4300 digits",
                  line=node.start_mark.line + 1) from None
    finally:
        loader.dispose()


def _collection_to_py(node: yaml.Node, path: Path_, lines: dict[Path_, int], source: str,
                      active: set[int], budget: list[int]) -> Any:
    if isinstance(node, yaml.SequenceNode):
        return [_node_to_py(v, (*path, i), lines, source, active, budget)
                for i, v in enumerate(node.value)]
    out: dict[str, Any] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise bad(source, "keys must be plain strings",
                      line=key_node.start_mark.line + 1)
        key = key_node.value
        if key in out:
            raise bad(source, "duplicate key", field=key,
                      line=key_node.start_mark.line + 1)
        lines[(*path, key)] = key_node.start_mark.line + 1
        out[key] = _node_to_py(value_node, (*path, key), lines, source, active, budget)
    return out


def load_yaml(path: Path) -> tuple[Any, dict[Path_, int]]:
    """Parse one YAML document; returns (data, {key path: line}). Raises ConfigError."""
    source = str(path)
    text = read_text(path, limit_bytes=MAX_YAML_BYTES)
    too_deep = f"nesting too deep (over {MAX_DEPTH} levels)"
    try:
        node = yaml.compose(text, Loader=_DepthLimitedLoader)
    except _TooDeep as exc:
        raise bad(source, too_deep, line=exc.line) from None
    except RecursionError:
        raise bad(source, too_deep) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        reason = f"YAML syntax error: {exc.problem or exc.context}"
        raise bad(source, reason, line=line) from None
    except yaml.reader.ReaderError as exc:  # a NUL or other control character; no mark
        line = text.count("\n", 0, exc.position) + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character[:1])
        raise bad(source, f"YAML error: unacceptable character #x{code:04x}: {exc.reason}",
                  line=line) from None
    except yaml.YAMLError as exc:
        raise bad(source, f"YAML error: {exc}") from None
    if node is None:
        raise bad(source, "file is empty; expected a mapping of fields")
    lines: dict[Path_, int] = {}
    try:
        data = _node_to_py(node, (), lines, source)
    except RecursionError:
        raise bad(source, too_deep) from None
    if not isinstance(data, dict):
        raise bad(source, "expected a mapping of fields at the top level", line=1)
    return data, lines


# ----------------------------------------------------------------------------------
# pydantic -> ConfigError
# ----------------------------------------------------------------------------------
def line_for(loc: Path_, lines: dict[Path_, int]) -> int | None:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def validate(cls: type[M], data: dict[str, Any], source: str,
             lines: dict[Path_, int] | None = None,
             loc_map: dict[Path_, Path_] | None = None) -> M:
    """Build ``cls`` from ``data``; the first problem becomes a one-line ConfigError."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        kind = err["type"]
        ctx = err.get("ctx") or {}
        if kind == "field_value" and isinstance(ctx.get("field"), str):
            # a cross-field check (specs.field_error) names the key to blame (dotted:
            # a nested key)
            loc = (*loc, *ctx["field"].split("."))
            value = _get(data, loc)
            if value is not _MISSING:
                err = {**err, "input": value}
        # an unknown key is reported as written, not as its unwrapped {value: ...}
        file_loc = loc_map[loc] if loc_map and loc in loc_map and \
            kind != "extra_forbidden" else loc
        field = ".".join(str(p) for p in file_loc) or None
        if kind == "extra_forbidden":
            allowed = _allowed_keys(cls, loc[:-1])
            reason = "unknown key" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
            raise bad(source, reason, field=field,
                      line=line_for(file_loc, lines or {})) from None
        if kind == "missing":
            raise bad(source, "required field is missing", field=field,
                      line=line_for(file_loc[:-1], lines or {})) from None
        msg = err["msg"].removeprefix("Value error, ")
        kwargs: dict[str, Any] = {}
        if "input" in err and not isinstance(err["input"], dict):
            kwargs["value"] = err["input"]
        raise bad(source, msg, field=field, line=line_for(file_loc, lines or {}),
                  **kwargs) from None


_MISSING = object()


def _get(data: Any, loc: Path_) -> Any:
    """``data[loc[0]][loc[1]]...``, or _MISSING."""
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return data


def _allowed_keys(cls: type[BaseModel], loc: Path_) -> list[str]:
    model: Any = cls
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        for cand in getattr(ann, "__args__", (ann,)):
            inner = getattr(cand, "__args__", (cand,))
            found = next((c for c in (cand, *inner)
                          if isinstance(c, type) and issubclass(c, BaseModel)), None)
            if found is not None:
                model = found
                break
        else:
            return []
    return sorted(getattr(model, "model_fields", {}))
