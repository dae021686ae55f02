"""A generated battery of malformed inputs (issue 22, item 7): mutations derived from the
JSON schemas that ``gpusim schema`` exports (wrong types, values outside the schema's
bounds, unknown and missing keys) plus hand-written raw cases (bad YAML, BOM, non-UTF-8,
deep nesting, tags, bad JSON, bad CSV cells). Every case must give exit 2, exactly one
stderr line naming the file, no traceback, nothing on stdout and no output file; file
errors name their line in >= 95% of the cases.

Runs in-process through ``gpusim.cli.main``; each group loops over its cases and
reports every failure at once.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from gpusim.cli import main
from gpusim.io import loader, schemas

REPO = loader.ROOT
GOOD = {
    "gpu": yaml.safe_load((REPO / "hardware" / "h100-sxm.yaml").read_text("utf-8")),
    "stack": None,
    "model": yaml.safe_load((REPO / "workloads" / "models" / "llama-3.1-8b.yaml")
                            .read_text("utf-8")),
}
HF = json.loads((REPO / "tests" / "fixtures" / "hf_config_llama.json").read_text("utf-8"))
SCHEMAS = schemas.all_schemas()


@dataclass(frozen=True)
class Case:
    id: str
    kind: str                 # gpu | model | scenario | hf | rows | trace | acceptance
    content: bytes
    file_line: bool = True    # a file error where a line is expected


def _run(case: Case, tmp: Path, capsys: pytest.CaptureFixture[str]) -> str | None:
    """None when the case holds the contract, else what went wrong; with the message
    line appended to ``LINES`` for the file:line ratio."""
    d = tmp / case.id.replace("/", "_")
    d.mkdir()
    name = {"gpu": "h100-sxm.yaml", "model": "llama-3.1-8b.yaml", "scenario": "s.yaml",
            "stack": "torch-hf.yaml",
            "hf": "config.json", "rows": "rows.csv", "trace": "trace.jsonl",
            "acceptance": "acc.json"}[case.kind]
    path = d / name
    path.write_bytes(case.content)
    out = d / "out.csv"
    argv = {
        "gpu": ["predict", "--gpu", str(path), "--model", "llama-3.1-8b", "--format", "json"],
        "model": ["predict", "--gpu", "h100-sxm", "--model", str(path), "--format", "json"],
        "stack": ["predict", "--gpu", "h100-sxm", "--model", "llama-3.1-8b", "--stack",
                  str(path), "--format", "json"],
        "hf": ["predict", "--gpu", "h100-sxm", "--model", str(path), "--format", "json"],
        "scenario": ["serve", "--gpu", "h100-sxm", "--model", "llama-3.2-1b", "--quiet",
                     "--scenario", str(path), "--out-json", str(out)],
        "rows": ["predict", "--gpu", "h100-sxm", "--in", str(path), "--out", str(out)],
        "trace": ["serve", "--gpu", "h100-sxm", "--model", "llama-3.2-1b", "--quiet",
                  "--trace", str(path), "--out-json", str(out)],
        "acceptance": ["spec", "--gpu", "h100-sxm", "--target", "llama-3.1-8b", "--draft",
                       "llama-3.2-1b", "--acceptance", str(path), "--format", "json"],
    }[case.kind]
    try:
        rc = main(argv)
    except (Exception, SystemExit) as exc:
        capsys.readouterr()
        return f"raised {type(exc).__name__}: {str(exc)[:200]}"
    stdout, err = capsys.readouterr()
    if rc != 2:
        return f"exit {rc} (stderr {err[:200]!r})"
    if stdout:
        return f"stdout not empty: {stdout[:100]!r}"
    if "Traceback" in err or not err.startswith("gpusim: error: ") or err.count("\n") != 1:
        return f"not one error line: {err[:300]!r}"
    if str(path) not in err:
        return f"file not named: {err.strip()}"
    left = sorted(p.name for p in d.iterdir() if p.name != name)
    if left:
        return f"left files behind: {left}"
    if case.file_line:
        LINES.append(bool(re.search(re.escape(str(path)) + r":\d+:", err)))
    return None


LINES: list[bool] = []


def _check(cases: list[Case], tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert len({c.id for c in cases}) == len(cases), "case ids must be unique"
    failures = [f"{c.id}: {why}" for c in cases
                if (why := _run(c, tmp, capsys)) is not None]
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(
        failures)


# ----------------------------------------------------------------------------------
# schema-derived mutations of YAML files
# ----------------------------------------------------------------------------------
def _bad_values(prop: dict) -> Iterator[tuple[str, object]]:
    """Values the schema ``prop`` refuses (labelled)."""
    kind = prop.get("type")
    if kind in ("integer", "number"):
        yield "string", "abc"
        yield "list", [1, 2]
        yield "mapping", {"a": 1}
        low = prop.get("exclusiveMinimum", prop.get("minimum"))
        if low is not None:
            yield "negative", -abs(float(low)) - 1.0
            if "exclusiveMinimum" in prop:
                yield "at-exclusive-min", prop["exclusiveMinimum"]
        if "maximum" in prop:
            yield "over-max", float(prop["maximum"]) * 10 + 1
        if kind == "integer":
            yield "fraction", 1.5
    elif kind == "string":
        yield "list", ["a", "b"]
        yield "mapping", {"a": 1}
        if "enum" in prop:
            yield "not-in-enum", "no-such-choice"
        if "pattern" in prop:
            yield "pattern", "Bad Name!"
    elif kind == "boolean":
        yield "string", "maybe"
        yield "list", [True]


def _schema_cases(kind: str) -> list[Case]:
    schema, good = SCHEMAS[kind], GOOD[kind]
    cases: list[Case] = []

    def add(label: str, data: dict) -> None:
        text = yaml.safe_dump(data, sort_keys=False)
        cases.append(Case(f"{kind}/{label}", kind, text.encode()))

    for key, prop in schema["properties"].items():
        inner = prop.get("properties", {}).get("value") if prop.get("type") == "object" \
            and "value" in prop.get("properties", {}) else None
        for label, value in _bad_values(inner if inner is not None else prop):
            data = copy.deepcopy(good)
            if inner is not None:
                data[key] = {**(data.get(key) or {"source": "x"}), "value": value}
            else:
                data[key] = value
            add(f"{key}-{label}", data)
        if inner is not None and key in good:
            data = copy.deepcopy(good)
            data[key] = {**data[key], "typo": 1}
            add(f"{key}-wrapper-unknown-key", data)
            data = copy.deepcopy(good)
            data[key] = {"value": data[key]["value"]}
            add(f"{key}-wrapper-no-source", data)
        data = copy.deepcopy(good)
        data[key + "_typo"] = 1
        add(f"{key}-unknown-key", data)
    for key in schema.get("required", []):
        data = copy.deepcopy(good)
        data.pop(key, None)
        add(f"{key}-missing", data)
    return cases


SCHEMA_CASES = _schema_cases("gpu") + _schema_cases("model")


# ----------------------------------------------------------------------------------
# raw YAML, JSON and CSV cases
# ----------------------------------------------------------------------------------
RAW_YAML = {
    "empty": b"",
    "only-comment": b"# nothing\n",
    "top-list": b"- 1\n- 2\n",
    "top-scalar": b"42\n",
    "unclosed-bracket": b"name: [a\n",
    "unclosed-quote": b'name: "abc\n',
    "bad-indent": b"name: a\n  x: 1\n y: 2\n",
    "tab-indent": b"name:\n\t- a\n",
    "duplicate-key": b"name: a\nname: b\n",
    "non-utf8": b"name: caf\xe9\n",
    "utf16-bom": b"\xff\xfen\x00a\x00",
    "bom-then-garbage": b"\xef\xbb\xbfname: [\n",
    "nul-char": b"name: a\x00b\n",
    "deep-flow": b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n",
    "deep-block": b"".join(b"  " * i + b"k:\n" for i in range(300)) + b"  " * 300 + b"v\n",
    "python-tag": b"name: !!python/object/apply:os.system [echo hi]\n",
    "python-tag-map": b"a: !!python/object:os.system {x: 1}\n",
    "custom-tag": b"name: !mytag a\n",
    "recursive-alias": b"a: &x [*x]\n",
    "billion-laughs": b"a: &a [x,x,x,x,x,x,x,x,x,x]\n" + b"".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 10)}]\n".encode()
        for i in range(7)),
    "complex-key": b"? [a, b]\n: 1\n",
    "binary-junk": bytes(range(1, 32)) * 4,
    "two-documents": b"name: a\n---\nname: b\n",
    "huge-number": b"hidden_size: " + b"9" * 5000 + b"\n",
}


def _raw_yaml_cases(kind: str) -> list[Case]:
    return [Case(f"{kind}/raw-{k}", kind, v, file_line=k not in (
        "empty", "only-comment", "non-utf8", "utf16-bom", "binary-junk"))
        for k, v in RAW_YAML.items()]


def _hf_cases() -> list[Case]:
    cases: list[Case] = []

    def add(label: str, text: str | bytes, file_line: bool = True) -> None:
        data = text.encode() if isinstance(text, str) else text
        cases.append(Case(f"hf/{label}", "hf", data, file_line))

    numeric = [k for k, v in HF.items() if isinstance(v, int) and not isinstance(v, bool)
               and k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                         "num_key_value_heads", "intermediate_size", "vocab_size",
                         "max_position_embeddings", "head_dim")]
    for key in numeric:
        for label, value in (("string", '"abc"'), ("negative", "-1"), ("zero", "0"),
                             ("inf", "1e999"), ("nan", "NaN"), ("list", "[1]"),
                             ("object", '{"a": 1}'), ("fraction", "1.5"),
                             ("huge-int", "9" * 5000)):
            text = json.dumps({**HF, key: 12345}, indent=2).replace(
                f'"{key}": 12345', f'"{key}": {value}')
            add(f"{key}-{label}", text)
    for key in ("torch_dtype", "hidden_act", "tie_word_embeddings"):
        if key in HF:
            add(f"{key}-wrong", json.dumps({**HF, key: [1, 2]}, indent=2))
    add("unknown-key", json.dumps({**HF, "gpusim_unknown_key": 1}, indent=2))
    add("moe-keys", json.dumps({**HF, "num_local_experts": 8, "num_experts_per_tok": 0},
                               indent=2))
    add("truncated", json.dumps(HF, indent=2)[:-20])
    add("trailing-comma", json.dumps(HF, indent=2)[:-2] + ",\n}")
    add("top-list", "[1, 2]", file_line=False)
    add("empty", "", file_line=True)
    add("non-utf8", b'{"hidden_size": "\xff"}', file_line=False)
    add("deep", '{"a":\n' + "[" * 100_000 + "]" * 100_000 + "}")
    add("single-quotes", "{'hidden_size': 1}")
    add("comment", "// config\n" + json.dumps(HF))
    return cases


ROW_HEADER = "model,mode,batch,ctx,q\n"
ROW_VALUES = {
    "model": ["", "no-such-model", "../etc/passwd"],
    "mode": ["", "decoder", "DECODE!", "1"],
    "batch": ["", "abc", "-1", "0", "1.5", "1e400", "nan", "inf", "10000000000", "9" * 5000,
              "+-1", "1e3.5", " ", "true", "[1]"],
    "ctx": ["", "abc", "-1", "1.5", "nan", "1000000000", "9" * 5000, "-0.5", "true"],
    "q": ["", "abc", "0", "-2", "2.5", "nan", "5", "1e400", "true"],
}


def _rows_cases() -> list[Case]:
    good = {"model": "llama-3.1-8b", "mode": "decode", "batch": "1", "ctx": "1024", "q": "1"}
    cases = []
    for col, values in ROW_VALUES.items():
        for i, v in enumerate(values):
            row = ",".join(v if c == col else good[c] for c in good)
            text = ROW_HEADER + "llama-3.1-8b,decode,1,1024,1\n" + row + "\n"
            cases.append(Case(f"rows/{col}-{i}", "rows", text.encode()))
    for label, text, line in (
            ("header-only", ROW_HEADER.encode(), False),
            ("empty", b"", False),
            ("missing-column", b"model,mode,batch\nllama-3.1-8b,decode,1\n", True),
            ("non-utf8", (ROW_HEADER + "llama\xe9,decode,1,1024,1\n").encode("latin-1"),
             False),
            ("too-many-cells", (ROW_HEADER + "llama-3.1-8b,decode,1,1024,1,9\n").encode(),
             True),
            ("too-few-cells", (ROW_HEADER + "llama-3.1-8b,decode,1\n").encode(), True),
            ("bad-weight-dtype", (b"model,mode,batch,ctx,q,weight_dtype\n"
                                  b"llama-3.1-8b,decode,1,1024,1,int3\n"), True),
            ("bad-tp", (b"model,mode,batch,ctx,q,tp\nllama-3.1-8b,decode,1,1024,1,3\n")
, True),
    ):
        cases.append(Case(f"rows/{label}", "rows", text, line))
    return cases


TRACE_GOOD = {"arrival_s": 0.5, "prompt_tokens": 100, "output_tokens": 20}


def _trace_cases() -> list[Case]:
    cases = []
    first = json.dumps(TRACE_GOOD) + "\n"
    for key in TRACE_GOOD:
        for i, v in enumerate(('"abc"', "-1", "NaN", "1e999", "[1]", "null", "1.5",
                               "true")):
            if key == "arrival_s" and v == "1.5":
                continue
            rec = json.dumps({**TRACE_GOOD, key: 12345}).replace("12345", v)
            cases.append(Case(f"trace/{key}-{i}", "trace", (first + rec + "\n").encode()))
    for label, text in (("not-json", "arrival_s=1\n"), ("list", "[1, 2]\n"),
                        ("deep", "[" * 50_000 + "]" * 50_000 + "\n"),
                        ("missing-key", '{"arrival_s": 1}\n'),
                        ("unknown-key", json.dumps({**TRACE_GOOD, "colour": 1}) + "\n")):
        cases.append(Case(f"trace/{label}", "trace", (first + text).encode()))
    return cases


def _acceptance_cases() -> list[Case]:
    return [Case(f"acceptance/{label}", "acceptance", text.encode(), line)
            for label, text, line in (
                ("not-object", "[1, 2, 3]", True), ("no-counts", '{"x": [1]}', False),
                ("counts-string", '{"counts": "abc"}', True),
                ("counts-negative", '{"counts": [-1, 2]}', True),
                ("counts-nan", '{"counts": [NaN, 2]}', True),
                ("counts-inf", '{"counts": [1e999]}', True),
                ("counts-zero", '{"counts": [0, 0, 0]}', True),
                ("counts-empty", '{"counts": []}', True),
                ("deep", '{"counts":\n' + "[" * 100_000 + "]" * 100_000 + "}", True),
                ("truncated", '{"counts": [1, 2', True),
                ("counts-bool", '{"counts": [true, 1]}', True),
                ("counts-object", '{"counts": {"a": 1}}', True),
                ("bom-truncated", '\ufeff{"counts": [1,', True))]


SCENARIO_GOOD = {"name": "s", "duration_s": 5, "scheduler": {"max_num_seqs": 8},
                 "arrival": {"process": "poisson", "rate_per_s": 2},
                 "prompt": {"dist": "fixed", "tokens": 50},
                 "output": {"dist": "fixed", "tokens": 10}}


def _scenario_cases() -> list[Case]:
    cases = []
    edits: dict[str, list[tuple[str, object]]] = {
        "duration_s": [("neg", -1), ("zero", 0), ("huge", 1e12), ("str", "abc")],
        "arrival.rate_per_s": [("neg", -2), ("zero", 0), ("absurd", 1e9), ("str", "x")],
        "arrival.process": [("unknown", "uniform"), ("list", [1])],
        "prompt.tokens": [("neg", -5), ("zero", 0), ("str", "x"), ("huge", 10**9)],
        "output.tokens": [("neg", -5), ("zero", 0), ("frac", 2.5)],
        "seed": [("neg", -1), ("str", "x")],
        "scheduler.max_num_seqs": [("neg", -1), ("zero", 0), ("str", "x")],
        "colour": [("unknown-key", 1)],
    }
    for path, values in edits.items():
        for label, value in values:
            data = copy.deepcopy(SCENARIO_GOOD)
            *parents, leaf = path.split(".")
            node = data
            for p in parents:
                node = node[p]
            node[leaf] = value
            cases.append(Case(f"scenario/{path}-{label}", "scenario",
                              yaml.safe_dump(data, sort_keys=False).encode()))
    return cases


GROUPS = {
    "schema": SCHEMA_CASES,
    "raw-yaml": _raw_yaml_cases("gpu") + _raw_yaml_cases("model") + _raw_yaml_cases(
        "scenario") + _raw_yaml_cases("stack"),
    "hf": _hf_cases(),
    "rows": _rows_cases(),
    "serving-and-spec": _trace_cases() + _acceptance_cases() + _scenario_cases(),
}


def test_battery_is_large_enough() -> None:
    assert sum(len(c) for c in GROUPS.values()) >= 500


@pytest.mark.parametrize("group", list(GROUPS))
def test_battery(group: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _check(GROUPS[group], tmp_path, capsys)


def test_battery_names_lines() -> None:
    """Of the file errors where a line applies, >= 95% name it (file:line)."""
    if len(LINES) < 100:
        pytest.skip("run with the battery groups")
    assert sum(LINES) / len(LINES) >= 0.95, f"{sum(LINES)} of {len(LINES)}"
