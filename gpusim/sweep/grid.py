"""Sweep grid files -> points: which simulation, its parameters, every combination.

A grid file names one simulation (``step``: ``gpusim predict``'s step, ``spec``:
``gpusim spec``'s speculative iteration, ``serve``: ``gpusim serve``'s serving run), a
root ``seed`` and a ``grid`` mapping. A grid key is the command's option name with
underscores (``--max-num-seqs`` -> ``max_num_seqs``); its value is one value or a list
of values (an axis). The points are every combination of the axes, the first key
varying slowest, in the order the file writes them; a point's identity (``key``) is its
parameters as written, and its seed comes from numpy's SeedSequence of the root seed and
that identity, so neither depends on the executor, the worker count or the other points.

Every problem is a one-line ConfigError naming the file, line and field
(``grid.batch.2: Input should be greater than or equal to 1 (got 0)``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from gpusim.errors import bad
from gpusim.io import yamlfile
from gpusim.sweep.params import PARAMS, REQUIRED, Param

SIMULATIONS = tuple(PARAMS)
MAX_POINTS = 1_000_000
MAX_AXIS_VALUES = 100_000


class GridFile(BaseModel):
    """The file's top level: the simulation, the root seed, a description, the grid."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    simulation: Literal["step", "spec", "serve"]
    seed: Annotated[int, Field(strict=True, ge=0, lt=2**63)] = 0
    description: str = ""
    grid: dict[str, Any]


@dataclass(frozen=True)
class Point:
    """One combination of the grid's values: its place in the grid (``index``), its
    parameters as written (grid order), the index of each value in its axis, its
    identity (``key``, the ledger's key) and its seed."""

    index: int
    params: dict[str, object]
    positions: dict[str, int | None]   # None: the key was written as one value
    key: str
    seed: int


@dataclass(frozen=True)
class Grid:
    """A validated grid: ``axes`` in file order (a single value is an axis of one),
    ``lines`` of every key and list element (for errors), ``base_dir`` against which
    relative file paths in values resolve."""

    source: str
    simulation: str
    seed: int
    axes: tuple[tuple[str, tuple[object, ...]], ...]
    scalars: frozenset[str]
    lines: dict[tuple[str | int, ...], int]
    base_dir: Path
    description: str = ""

    @property
    def size(self) -> int:
        """The number of points."""
        return math.prod(len(values) for _, values in self.axes)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.axes)

    def points(self) -> list[Point]:
        """Every point, in grid order (the first key varies slowest)."""
        names = self.keys
        ranges = [range(len(values)) for _, values in self.axes]
        out = []
        for index, combo in enumerate(itertools.product(*ranges)):
            params = {k: self.axes[j][1][i] for j, (k, i) in enumerate(zip(names, combo,
                                                                           strict=True))}
            positions = {k: (None if k in self.scalars else i)
                         for k, i in zip(names, combo, strict=True)}
            out.append(Point(index, params, positions, point_key(self.simulation, self.seed,
                                                                 params),
                             point_seed(self.simulation, self.seed, params)))
        return out

    def where(self, key: str, position: int | None) -> tuple[str, int | None]:
        """The field name and line of ``key`` (its ``position``-th value, if a list)."""
        if position is None:
            return f"grid.{key}", self.lines.get(("grid", key))
        return (f"grid.{key}.{position}",
                self.lines.get(("grid", key, position), self.lines.get(("grid", key))))


def _canonical(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def point_key(simulation: str, seed: int, params: dict[str, object]) -> str:
    """A point's identity: the SHA-256 of its simulation, root seed and parameters as
    written (canonical JSON)."""
    text = _canonical({"simulation": simulation, "seed": seed, "params": params})
    return hashlib.sha256(text.encode()).hexdigest()


def point_seed(simulation: str, seed: int, params: dict[str, object]) -> int:
    """A point's seed (0 <= seed < 2**63): numpy's SeedSequence of the root ``seed``
    and the hash of the point's simulation and parameters. The same point gets the same
    seed in every grid, executor and worker."""
    digest = hashlib.sha256(_canonical({"simulation": simulation, "params": params})
                            .encode()).digest()
    words = [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]
    state = np.random.SeedSequence([seed, *words]).generate_state(1, np.uint64)
    return int(state[0]) >> 1


def _adapter(param: Param) -> TypeAdapter[Any]:
    return TypeAdapter(param.kind)


def _value(source: str, param: Param, value: object, field: str, line: int | None
           ) -> object:
    """One grid value checked against its parameter's type. Raises ConfigError."""
    if isinstance(value, (dict, list)):
        raise bad(source, f"expected {param.expect}; a list of values is an axis, one "
                  "level deep", field=field, line=line, value=value)
    try:
        return _adapter(param).validate_python(value)
    except ValidationError as exc:
        err = exc.errors(include_url=False)
        msg = err[0]["msg"].removeprefix("Value error, ") if len(err) == 1 else \
            f"expected {param.expect}"
        raise bad(source, msg, field=field, line=line, value=value) from None


def grid_from_dict(data: dict[str, Any], source: str,
                   lines: dict[tuple[str | int, ...], int] | None = None,
                   base_dir: Path | None = None) -> Grid:
    """A Grid from a parsed grid file (``lines``: each key's line, as
    ``io.yamlfile.load_yaml`` gives them). Raises ConfigError naming ``source``, the
    line and the field."""
    lines = lines or {}
    top = yamlfile.validate(GridFile, data, source, lines)
    params = PARAMS[top.simulation]
    if not top.grid:
        raise bad(source, "the grid is empty; give the parameters to sweep",
                  field="grid", line=lines.get(("grid",)))
    axes: list[tuple[str, tuple[object, ...]]] = []
    scalars: set[str] = set()
    for key, raw in top.grid.items():
        field, line = f"grid.{key}", lines.get(("grid", key))
        if key == "seed":
            raise bad(source, "seeds come from the top-level seed and each point; for "
                      "repeats sweep replicate: [0, 1, 2]", field=field, line=line)
        if key not in params:
            raise bad(source, f"unknown key for simulation {top.simulation}; allowed: "
                      f"{', '.join(params)}", field=field, line=line)
        values = raw if isinstance(raw, list) else [raw]
        if isinstance(raw, list):
            if not raw:
                raise bad(source, "an axis needs at least one value", field=field, line=line)
            if len(raw) > MAX_AXIS_VALUES:
                raise bad(source, f"at most {MAX_AXIS_VALUES:,} values per axis",
                          field=field, line=line)
        else:
            scalars.add(key)
        checked = []
        for i, v in enumerate(values):
            where = (field, line) if not isinstance(raw, list) else \
                (f"{field}.{i}", lines.get(("grid", key, i), line))
            value = _value(source, params[key], v, *where)
            if value in checked:
                raise bad(source, "repeated value in this axis", field=where[0],
                          line=where[1], value=v)
            checked.append(value)
        axes.append((key, tuple(checked)))
    missing = [name for name, p in params.items() if p.default is REQUIRED
               and name not in top.grid]
    if missing:
        raise bad(source, f"required key is missing for simulation {top.simulation}",
                  field=f"grid.{missing[0]}", line=lines.get(("grid",)))
    grid = Grid(source, top.simulation, top.seed, tuple(axes), frozenset(scalars), lines,
                base_dir if base_dir is not None else Path.cwd(), top.description)
    if grid.size > MAX_POINTS:
        raise bad(source, f"the grid has {grid.size:,} points; at most {MAX_POINTS:,}",
                  field="grid", line=lines.get(("grid",)))
    return grid


def load_grid(path: Path) -> Grid:
    """Read and check a grid YAML file; relative file paths in its values resolve
    against the file's folder. Raises ConfigError naming the file, line and field."""
    path = Path(path)
    data, lines = yamlfile.load_yaml(path)
    return grid_from_dict(data, str(path), lines, path.resolve().parent)
