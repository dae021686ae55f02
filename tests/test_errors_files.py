"""Every malformed input file gets one line on stderr and exit 2 (DESIGN.md, Reliability).

The bad GPU, model and stack files are made by mutating the shipped good ones
(hardware/h100-sxm.yaml, workloads/models/llama-3.1-8b.yaml,
stacks/torch-hf.yaml) in tmp_path, so the expected line of each problem
is known: it is the line holding the case's ``marker`` in the mutated text.

Each case is run twice: through the CLI in-process (``gpusim.cli.main``), checking
the one-line contract, and through the loader function, checking ``ConfigError``'s
``.source``, ``.line`` and ``.field``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import run_cli

from gpusim.errors import ConfigError
from gpusim.io import loader

REPO = Path(__file__).resolve().parent.parent
GOOD_GPU = (REPO / "hardware" / "h100-sxm.yaml").read_text(encoding="utf-8")
GOOD_MODEL = (REPO / "workloads" / "models" / "llama-3.1-8b.yaml").read_text(encoding="utf-8")
GOOD_STACK = (REPO / "stacks" / "torch-hf.yaml").read_text(encoding="utf-8")
HF_FIXTURE = REPO / "tests" / "fixtures" / "hf_config_llama.json"

FILE_NAMES = {"gpu": "h100-sxm.yaml", "model": "llama-3.1-8b.yaml",
              "stack": "torch-hf.yaml"}
GOOD_TEXT = {"gpu": GOOD_GPU, "model": GOOD_MODEL, "stack": GOOD_STACK}


# ----------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------
def sub(text: str, old: str, new: str) -> str:
    """Replace the first ``old`` (which must be there: guards against fixture drift)."""
    assert old in text, f"mutation anchor {old!r} not in the good file"
    return text.replace(old, new, 1)


def block(text: str, key_line: str, new: str) -> str:
    """Replace the line ``key_line`` and every following more-indented (or blank) line
    by ``new`` (no trailing newline needed; empty string removes the block)."""
    lines = text.split("\n")
    start = lines.index(key_line)
    indent = len(key_line) - len(key_line.lstrip())
    end = start + 1
    while end < len(lines) and (not lines[end].strip()
                                or len(lines[end]) - len(lines[end].lstrip()) > indent):
        end += 1
    repl = new.split("\n") if new else []
    return "\n".join(lines[:start] + repl + lines[end:])


def line_of(content: str | bytes, marker: str) -> int:
    """1-based line of the only line containing ``marker``."""
    text = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
    hits = [i + 1 for i, line in enumerate(text.split("\n")) if marker in line]
    assert len(hits) == 1, f"marker {marker!r} found on lines {hits}"
    return hits[0]


def assert_one_line_error(rc: int, out: str, err: str) -> str:
    """The contract's invariant part; returns the message line."""
    assert rc == 2, f"exit code {rc}, stderr {err!r}"
    assert out == "", f"stdout not empty: {out[:200]!r}"
    assert "Traceback" not in err
    assert err.startswith("gpusim: error: "), err
    assert err.endswith("\n") and err.count("\n") == 1, f"not exactly one line: {err!r}"
    return err.rstrip("\n")


def assert_where(msg: str, path: str, line: int | tuple[int, ...] | None,
                 field: str | None) -> None:
    """``msg`` names ``path``, the ``:LINE:`` (any of a tuple) and ``: field:``."""
    assert path in msg, f"{path!r} not in {msg!r}"
    if line is not None:
        lines = line if isinstance(line, tuple) else (line,)
        m = re.search(re.escape(path) + r":(\d+):", msg)
        assert m, f"no {path}:LINE: in {msg!r}"
        assert int(m.group(1)) in lines, f"line {m.group(1)} (expected {lines}) in {msg!r}"
    if field is not None:
        assert f": {field}: " in msg, f"field {field!r} not named in {msg!r}"


# ----------------------------------------------------------------------------------
# the malformed files
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bad:
    id: str
    kind: str                      # gpu | model | stack
    content: str | bytes | None    # None: see ``special``
    marker: str | None = None      # the problem is on the line holding this text
    field: str | None = None       # ConfigError.field / ": field:" in the message
    also: tuple[str, ...] = ()     # further substrings the message must hold
    near: bool = False             # a syntax error may be detected on the next line
    special: str | None = None     # "dir": a directory; "missing": no such file

    def expected_line(self) -> int | tuple[int, ...] | None:
        if self.marker is None or self.content is None:
            return None
        n = line_of(self.content, self.marker)
        return (n, n + 1) if self.near else n


G, M, S = GOOD_GPU, GOOD_MODEL, GOOD_STACK
SM_SOURCE = '  source: "NVIDIA H100 whitepaper, Table 3 (H100 SXM5): 132 SMs"'

GPU_CASES = [
    # --- YAML syntax ---------------------------------------------------------------
    Bad("gpu-yaml-bad-indent", "gpu", sub(G, "\nl2_bytes:", "\n l2_bytes:"), " l2_bytes:"),
    Bad("gpu-yaml-unclosed-bracket", "gpu", sub(G, "vendor: nvidia", "vendor: [nvidia"),
        "vendor: [nvidia", near=True),
    Bad("gpu-yaml-tab-indent", "gpu", sub(G, "vendor: nvidia", "\tvendor: nvidia"),
        "\tvendor"),
    Bad("gpu-yaml-duplicate-key", "gpu", sub(G, "vendor: nvidia\n",
                                            "vendor: nvidia\nvendor: amd\n"),
        "vendor: amd", "vendor", ("duplicate",)),
    Bad("gpu-yaml-duplicate-nested-key", "gpu", sub(G, "  value: 132\n",
                                                   "  value: 132\n  value: 133\n"),
        "value: 133", "value", ("duplicate",)),
    Bad("gpu-yaml-two-documents", "gpu", G + "---\nname: h100-sxm\n", "---"),
    Bad("gpu-yaml-unknown-tag", "gpu", sub(G, "  value: 132", "  value: !big 132"), "!big"),
    Bad("gpu-yaml-complex-key", "gpu", sub(G, "vendor: nvidia", "? [vendor]\n: nvidia"),
        "? [vendor]"),
    Bad("gpu-yaml-nul-byte", "gpu", sub(G, "architecture: hopper", "architecture: hop\0per"),
        "architecture: hop"),
    Bad("gpu-yaml-deep-nesting", "gpu", G + "deep: " + "[" * 1000 + "]" * 1000 + "\n"),
    Bad("gpu-yaml-recursive-alias", "gpu", G + "loop: &x [*x]\n"),
    # --- unknown keys ------------------------------------------------------------------
    Bad("gpu-unknown-top-level-key", "gpu", G + "cooling: liquid\n", "cooling:", "cooling",
        ("unknown key", "allowed:")),
    Bad("gpu-unknown-key-in-tensor-flops", "gpu",
        sub(G, "  bf16:\n", "  tf32: {value: 4.9e+14, source: whitepaper}\n  bf16:\n"),
        "tf32:", "tensor_flops_per_s.tf32", ("unknown key", "bf16")),
    Bad("gpu-unknown-text-key-in-tensor-flops", "gpu",
        sub(G, "  bf16:\n", "  note: dense rates\n  bf16:\n"),
        "note: dense", "tensor_flops_per_s.note", ("unknown key", "bf16")),
    Bad("gpu-unknown-link", "gpu",
        sub(G, "links:\n", "links:\n  infiniband:\n"
                           "    bandwidth_bytes_per_s: {value: 5.0e+10, source: x}\n"
                           "    latency_s: {value: 1.0e-6, source: x}\n"),
        "infiniband:", "links.infiniband", ("unknown key", "nvlink", "pcie")),
    Bad("gpu-unknown-key-in-link", "gpu", sub(G, "  pcie:\n", "  pcie:\n    lanes: 16x\n"),
        "lanes:", "links.pcie.lanes", ("unknown key", "latency_s")),
    Bad("gpu-unknown-key-in-sourced-number", "gpu",
        sub(G, "  value: 132\n", "  value: 132\n  unit: SMs\n"), "unit: SMs", "sm_count",
        ("unit", "value", "source")),
    # --- wrong types -------------------------------------------------------------------
    Bad("gpu-string-for-number", "gpu", sub(G, "  value: 132", "  value: lots"),
        "value: lots", "sm_count.value", ("'lots'",)),
    Bad("gpu-bool-for-int", "gpu", sub(G, "  value: 132", "  value: true"),
        "value: true", "sm_count.value"),
    Bad("gpu-list-for-mapping", "gpu",
        block(G, "tensor_flops_per_s:", "tensor_flops_per_s: [9.894e+14, 1.9789e+15]"),
        "tensor_flops_per_s: [", "tensor_flops_per_s"),
    Bad("gpu-list-for-links", "gpu", block(G, "links:", "links: [nvlink, pcie]"),
        "links: [", "links"),
    Bad("gpu-mapping-for-string", "gpu",
        sub(G, "display_name: NVIDIA H100 SXM5 80GB HBM3", "display_name: {long: H100}"),
        "display_name:", "display_name"),
    Bad("gpu-unknown-vendor", "gpu", sub(G, "vendor: nvidia", "vendor: intel"),
        "vendor: intel", "vendor", ("'intel'", "nvidia", "amd")),
    # --- values ------------------------------------------------------------------------
    Bad("gpu-negative-bandwidth", "gpu", sub(G, "  value: 3.35e+12", "  value: -3.35e+12"),
        "value: -3.35e+12", "hbm_bandwidth_bytes_per_s.value", ("-3350000000000.0",)),
    Bad("gpu-zero-sm-count", "gpu", sub(G, "  value: 132", "  value: 0"),
        "value: 0", "sm_count.value", ("greater than 0",)),
    Bad("gpu-nan-clock", "gpu", sub(G, "  value: 1.98e+9", "  value: .nan"),
        "value: .nan", "boost_clock_hz.value", ("nan",)),
    Bad("gpu-inf-l2", "gpu", sub(G, "  value: 52428800", "  value: .inf"),
        "value: .inf", "l2_bytes.value", ("inf",)),
    Bad("gpu-nan-tensor-bf16", "gpu", sub(G, "    value: 9.894e+14", "    value: .nan"),
        "value: .nan", "tensor_flops_per_s.bf16.value"),
    Bad("gpu-negative-link-latency", "gpu", sub(G, "      value: 2.0e-6", "      value: -2.0e-6"),
        "value: -2.0e-6", "links.nvlink.latency_s.value"),
    Bad("gpu-zero-pcie-bandwidth", "gpu", sub(G, "      value: 6.4e+10", "      value: 0"),
        "value: 0", "links.pcie.bandwidth_bytes_per_s.value"),
    Bad("gpu-negative-price", "gpu", sub(G, "  value: 2.99", "  value: -2.99"),
        "value: -2.99", "price_usd_per_gpu_hour.value"),
    # --- missing -----------------------------------------------------------------------
    Bad("gpu-missing-vendor", "gpu", sub(G, "vendor: nvidia\n", ""), None, "vendor",
        ("required",)),
    Bad("gpu-missing-bf16", "gpu", block(G, "  bf16:", ""), None, "tensor_flops_per_s.bf16",
        ("required",)),
    Bad("gpu-missing-pcie", "gpu", block(G, "  pcie:", ""), None, "links.pcie",
        ("required",)),
    # --- {value, source} ---------------------------------------------------------------
    Bad("gpu-bare-number", "gpu", block(G, "sm_count:", "sm_count: 132"), "sm_count: 132",
        "sm_count", ("source", "(got 132)")),
    Bad("gpu-missing-source", "gpu", sub(G, SM_SOURCE + "\n", ""), "sm_count:", "sm_count",
        ("source",), near=True),
    Bad("gpu-missing-value", "gpu", sub(G, "  value: 132\n", ""), "sm_count:", "sm_count",
        ("value",), near=True),
    Bad("gpu-empty-source", "gpu", sub(G, SM_SOURCE, '  source: ""'), 'source: ""',
        "sm_count.source", ("non-empty",)),
    Bad("gpu-blank-source", "gpu", sub(G, SM_SOURCE, '  source: "   "'), 'source: "   "',
        "sm_count.source", ("non-empty",)),
    Bad("gpu-number-source", "gpu", sub(G, SM_SOURCE, "  source: 5"), "source: 5",
        "sm_count.source"),
    Bad("gpu-sources-key", "gpu", G + "sources:\n  sm_count: whitepaper\n", "sources:",
        "sources"),
    # --- names -------------------------------------------------------------------------
    Bad("gpu-name-mismatch", "gpu", sub(G, "name: h100-sxm", "name: h100-pcie"),
        "name: h100-pcie", "name", ("'h100-pcie'", "h100-sxm")),
    Bad("gpu-name-bad-pattern", "gpu", sub(G, "name: h100-sxm", "name: H100 SXM"),
        "name: H100 SXM", "name", ("'H100 SXM'",)),
    # --- whole-file problems -----------------------------------------------------------
    Bad("gpu-empty-file", "gpu", "", also=("empty",)),
    Bad("gpu-comments-only", "gpu", "# nothing here\n", also=("empty",)),
    Bad("gpu-top-level-list", "gpu", "- h100-sxm\n- 80GB\n", "- h100-sxm", also=("mapping",)),
    Bad("gpu-top-level-scalar", "gpu", "h100-sxm\n", "h100-sxm", also=("mapping",)),
    Bad("gpu-non-utf8", "gpu",
        sub(G, "display_name: NVIDIA", "display_name: \udcffNVIDIA").encode(
            "utf-8", "surrogateescape"), also=("UTF-8",)),
    Bad("gpu-latin1", "gpu", sub(G, "NVIDIA H100 SXM5 80GB", "NVIDIA H100 SXM5 80GB é")
        .encode("latin-1"), also=("UTF-8",)),
    Bad("gpu-directory", "gpu", None, special="dir"),
    Bad("gpu-missing-file", "gpu", None, special="missing"),
]

NKV = "num_key_value_heads: 8"
MODEL_CASES = [
    Bad("model-yaml-bad-indent", "model", sub(M, "\nvocab_size:", "\n  vocab_size:"),
        "  vocab_size:"),
    Bad("model-yaml-unclosed-bracket", "model", sub(M, NKV, "num_key_value_heads: [8"),
        "num_key_value_heads: [8", near=True),
    Bad("model-yaml-tab", "model", sub(M, "hidden_size: 4096", "\thidden_size: 4096"),
        "\thidden_size"),
    Bad("model-yaml-duplicate-key", "model",
        sub(M, "hidden_size: 4096\n", "hidden_size: 4096\nhidden_size: 2048\n"),
        "hidden_size: 2048", "hidden_size", ("duplicate",)),
    Bad("model-yaml-mapping-in-scalar", "model",
        sub(M, "torch_dtype: bfloat16", "torch_dtype: bfloat16: x"), "bfloat16: x"),
    Bad("model-unknown-key", "model", M + "rope_scaling: llama3\n", "rope_scaling:",
        "rope_scaling", ("unknown key", "allowed:", "hidden_size")),
    Bad("model-string-for-int", "model", sub(M, "hidden_size: 4096", "hidden_size: big"),
        "hidden_size: big", "hidden_size", ("'big'",)),
    Bad("model-quoted-number", "model",
        sub(M, "num_hidden_layers: 32", "num_hidden_layers: '32'"),
        "num_hidden_layers: '32'", "num_hidden_layers", ("'32'",)),
    Bad("model-list-for-int", "model", sub(M, "vocab_size: 128256", "vocab_size: [128256]"),
        "vocab_size: [", "vocab_size"),
    Bad("model-mapping-for-int", "model",
        sub(M, "vocab_size: 128256", "vocab_size: {value: 128256}"), "vocab_size: {",
        "vocab_size"),
    Bad("model-bool-for-int", "model",
        sub(M, "num_hidden_layers: 32", "num_hidden_layers: true"),
        "num_hidden_layers: true", "num_hidden_layers"),
    Bad("model-int-for-bool", "model",
        sub(M, "tie_word_embeddings: false", "tie_word_embeddings: 3"),
        "tie_word_embeddings: 3", "tie_word_embeddings", ("(got 3)",)),
    Bad("model-negative-hidden", "model", sub(M, "hidden_size: 4096", "hidden_size: -4096"),
        "hidden_size: -4096", "hidden_size", ("(got -4096)",)),
    Bad("model-zero-layers", "model", sub(M, "num_hidden_layers: 32", "num_hidden_layers: 0"),
        "num_hidden_layers: 0", "num_hidden_layers", ("(got 0)",)),
    Bad("model-nan-eps", "model", sub(M, "rms_norm_eps: 1.0e-5", "rms_norm_eps: .nan"),
        "rms_norm_eps: .nan", "rms_norm_eps", ("nan",)),
    Bad("model-inf-rope", "model", sub(M, "rope_theta: 500000.0", "rope_theta: .inf"),
        "rope_theta: .inf", "rope_theta", ("inf",)),
    Bad("model-negative-rope", "model", sub(M, "rope_theta: 500000.0", "rope_theta: -1.0"),
        "rope_theta: -1.0", "rope_theta"),
    Bad("model-fractional-int", "model",
        sub(M, "intermediate_size: 14336", "intermediate_size: 14336.5"),
        "intermediate_size: 14336.5", "intermediate_size", ("14336.5",)),
    Bad("model-zero-head-dim", "model", M + "head_dim: 0\n", "head_dim: 0", "head_dim"),
    Bad("model-null-required", "model", sub(M, "hidden_size: 4096", "hidden_size: ~"),
        "hidden_size: ~", "hidden_size", ("None",)),
    Bad("model-missing-hidden-size", "model", sub(M, "hidden_size: 4096\n", ""), None,
        "hidden_size", ("required",)),
    Bad("model-missing-name", "model", sub(M, "name: llama-3.1-8b\n", ""), None, "name",
        ("required",)),
    Bad("model-heads-not-divisible", "model", sub(M, NKV, "num_key_value_heads: 5"),
        "num_key_value_heads: 5", "num_key_value_heads", ("32", "5")),
    Bad("model-hidden-not-divisible-by-heads", "model",
        sub(M, "hidden_size: 4096", "hidden_size: 4095"), "hidden_size: 4095",
        "hidden_size", ("4095", "head_dim")),
    Bad("model-bad-dtype", "model", sub(M, "torch_dtype: bfloat16", "torch_dtype: int4"),
        "torch_dtype: int4", "torch_dtype", ("'int4'", "bfloat16")),
    Bad("model-name-mismatch", "model", sub(M, "name: llama-3.1-8b", "name: llama-3.1-70b"),
        "name: llama-3.1-70b", "name", ("'llama-3.1-70b'", "llama-3.1-8b")),
    Bad("model-name-bad-pattern", "model", sub(M, "name: llama-3.1-8b", "name: Llama 3.1 8B"),
        "name: Llama", "name", ("'Llama 3.1 8B'",)),
    Bad("model-list-for-string", "model", sub(M, 'source: "https', 'source: ["https')
        .replace('config.json"\n', 'config.json"]\n', 1), "source:", "source"),
    Bad("model-empty-file", "model", "", also=("empty",)),
    Bad("model-top-level-list", "model", "- 4096\n- 32\n", "- 4096", also=("mapping",)),
    Bad("model-non-utf8", "model", M.encode() + b"# caf\xe9\n", also=("UTF-8",)),
    Bad("model-directory", "model", None, special="dir"),
    Bad("model-missing-file", "model", None, special="missing"),
]

QKV = "{op: gemm, name: qkv_proj, weight: qkv}"
ROPE_Q = "{op: elementwise, name: rope_q, tensor: q, kernels: 5, bytes_per_element: 20,"
O_PROJ = "{op: gemm, name: o_proj, weight: o}"
NORM = "{op: elementwise, name: input_norm, tensor: hidden, kernels: 8, bytes_per_element: 36,"
STACK_CASES = [
    Bad("stack-unknown-op-kind", "stack", sub(S, QKV, QKV.replace("op: gemm", "op: conv")),
        "op: conv", "layer.1.op", ("'conv'", "gemm", "attention", "elementwise")),
    Bad("stack-gemm-without-weight", "stack",
        sub(S, QKV, "{op: gemm, name: qkv_proj}"), "name: qkv_proj}", "layer.1",
        ("gemm needs 'weight'",)),
    Bad("stack-elementwise-without-tensor", "stack",
        sub(S, ROPE_Q, ROPE_Q.replace("tensor: q, ", "")), "name: rope_q", "layer.2",
        ("elementwise needs 'tensor'",)),
    Bad("stack-kernels-over-64", "stack", sub(S, NORM, NORM.replace("kernels: 8", "kernels: 65")),
        "kernels: 65", "layer.0.kernels", ("(got 65)", "64")),
    Bad("stack-kernels-negative", "stack",
        sub(S, QKV, QKV.replace("}", ", kernels: -1}")), "kernels: -1", "layer.1.kernels",
        ("(got -1)",)),
    Bad("stack-kernels-bool", "stack", sub(S, QKV, QKV.replace("}", ", kernels: true}")),
        "kernels: true", "layer.1.kernels"),
    Bad("stack-kernels-string", "stack", sub(S, QKV, QKV.replace("}", ", kernels: many}")),
        "kernels: many", "layer.1.kernels", ("'many'",)),
    Bad("stack-unknown-key-in-op", "stack", sub(S, QKV, QKV.replace("}", ", fused: true}")),
        "fused: true", "layer.1.fused", ("unknown key", "weight")),
    Bad("stack-unknown-key-in-block-op", "stack",
        sub(S, "  - " + QKV, "  - op: gemm\n    name: qkv_proj\n    weight: qkv\n"
                             "    fused_with: rope"),
        "fused_with:", "layer.1.fused_with", ("unknown key",)),
    Bad("stack-unknown-top-level-key", "stack", S + "version: 2\n", "version: 2", "version",
        ("unknown key", "layer")),
    Bad("stack-unknown-weight", "stack", sub(S, QKV, QKV.replace("weight: qkv", "weight: qkvz")),
        "weight: qkvz", "layer.1.weight", ("'qkvz'", "gate_up")),
    Bad("stack-unknown-tensor", "stack",
        sub(S, ROPE_Q, ROPE_Q.replace("tensor: q,", "tensor: query,")), "tensor: query",
        "layer.2.tensor", ("'query'",)),
    Bad("stack-negative-bytes", "stack",
        sub(S, NORM, NORM.replace("bytes_per_element: 36", "bytes_per_element: -36")),
        "bytes_per_element: -36", "layer.0.bytes_per_element", ("(got -36)",)),
    Bad("stack-nan-bytes", "stack",
        sub(S, NORM, NORM.replace("bytes_per_element: 36", "bytes_per_element: .nan")),
        "bytes_per_element: .nan", "layer.0.bytes_per_element", ("nan",)),
    Bad("stack-missing-epilogue", "stack", block(S, "epilogue:", ""), None, "epilogue",
        ("required",)),
    Bad("stack-op-without-name", "stack", sub(S, QKV, "{op: gemm, weight: qkv}"),
        "{op: gemm, weight: qkv}", "layer.1.name", ("required",)),
    Bad("stack-layer-not-a-list", "stack", block(S, "layer:", "layer: {op: gemm}"),
        "layer: {op", "layer"),
    Bad("stack-op-not-a-mapping", "stack", sub(S, QKV, "gemm"), "  - gemm", "layer.1"),
    Bad("stack-op-name-pattern", "stack",
        sub(S, QKV, QKV.replace("name: qkv_proj", "name: QKV-proj")), "QKV-proj",
        "layer.1.name", ("'QKV-proj'",)),
    Bad("stack-bool-field-string", "stack",
        sub(S, "last_position_only_in_prefill: true", "last_position_only_in_prefill: maybe"),
        "prefill: maybe", "epilogue.1.last_position_only_in_prefill", ("'maybe'",)),
    Bad("stack-prologue-null", "stack", block(S, "prologue:", "prologue: ~"), "prologue: ~",
        "prologue"),
    Bad("stack-unclosed-flow-mapping", "stack", sub(S, O_PROJ, O_PROJ.rstrip("}")),
        "name: o_proj, weight: o", near=True),
    Bad("stack-duplicate-key-in-op", "stack",
        sub(S, QKV, QKV.replace("}", ", op: attention}")), "op: attention}", "op",
        ("duplicate",)),
    Bad("stack-name-mismatch", "stack",
        sub(S, "name: torch-hf", "name: fused-stack"), "name: fused-stack", "name",
        ("'fused-stack'", "torch-hf")),
    Bad("stack-empty-file", "stack", "", also=("empty",)),
    Bad("stack-top-level-list", "stack", "- " + QKV + "\n", "- {op", also=("mapping",)),
    Bad("stack-directory", "stack", None, special="dir"),
    Bad("stack-missing-file", "stack", None, special="missing"),
]

CASES = GPU_CASES + MODEL_CASES + STACK_CASES


def test_enough_malformed_files() -> None:
    assert len(CASES) >= 50
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"
    real = [c for c in CASES if c.content is not None]
    assert all(c.content != GOOD_TEXT[c.kind] for c in real), "a mutation changed nothing"


def write_case(case: Bad, tmp_path: Path) -> Path:
    path = tmp_path / FILE_NAMES[case.kind]
    if case.special == "dir":
        path.mkdir()
    elif case.special == "missing":
        path = tmp_path / "no-such-dir" / FILE_NAMES[case.kind]
    elif isinstance(case.content, bytes):
        path.write_bytes(case.content)
    else:
        assert case.content is not None
        path.write_text(case.content, encoding="utf-8")
    return path


def argv_for(kind: str, path: Path) -> list[str]:
    argv = ["predict", "--gpu", "h100-sxm", "--model", "llama-3.1-8b",
            "--calibration", "none", "--format", "json"]
    opt = {"gpu": "--gpu", "model": "--model", "stack": "--stack"}[kind]
    if opt in argv:
        argv[argv.index(opt) + 1] = str(path)
    else:
        argv += [opt, str(path)]
    return argv


@pytest.mark.parametrize("kind", ["gpu", "model", "stack"])
def test_good_file_copies_predict(kind: str, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The unmutated files pass the same pipeline, so each mutation is what fails."""
    path = tmp_path / FILE_NAMES[kind]
    path.write_text(GOOD_TEXT[kind], encoding="utf-8")
    rc, out, err = run_cli(capsys, argv_for(kind, path))
    assert rc == 0, err
    assert json.loads(out)["step_ms"] > 0


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_file_cli(case: Bad, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_case(case, tmp_path)
    rc, out, err = run_cli(capsys, argv_for(case.kind, path))
    msg = assert_one_line_error(rc, out, err)
    assert_where(msg, str(path), case.expected_line(), case.field)
    for text in case.also:
        assert text.lower() in msg.lower(), f"{text!r} not in {msg!r}"


def load_direct(kind: str, path: Path) -> object:
    if kind == "gpu":
        return loader.gpu_from_yaml(path)
    if kind == "model":
        return loader.model_from_yaml(path)
    return loader.load_stack(path)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_file_loader(case: Bad, tmp_path: Path) -> None:
    path = write_case(case, tmp_path)
    err: ConfigError | None = None
    problem = "accepted a malformed file"
    try:
        load_direct(case.kind, path)
    except ConfigError as exc:
        err = exc
    except (Exception, SystemExit) as exc:
        problem = f"raised {type(exc).__name__} instead of ConfigError: {exc}"
    if err is None:
        pytest.fail(problem, pytrace=False)
    assert err.source == str(path)
    want = case.expected_line()
    if want is not None:
        assert err.line in (want if isinstance(want, tuple) else (want,)), str(err)
    if case.field is not None:
        assert err.field == case.field, str(err)
    assert "\n" not in str(err)


# ----------------------------------------------------------------------------------
# Hugging Face config.json
# ----------------------------------------------------------------------------------
HF = json.loads(HF_FIXTURE.read_text(encoding="utf-8"))
HF_GOOD = json.dumps(HF, indent=2)


def hf_with(**update: object) -> str:
    return json.dumps({**HF, **update}, indent=2)


@dataclass(frozen=True)
class BadHf:
    id: str
    content: str | bytes
    marker: str | None = None
    field: str | None = None
    also: tuple[str, ...] = ()
    near: bool = False

    def expected_line(self) -> int | tuple[int, ...] | None:
        if self.marker is None:
            return None
        n = line_of(self.content, self.marker)
        return (n, n + 1) if self.near else n


HF_CASES = [
        BadHf("hf-invalid-json-missing-comma",
              sub(HF_GOOD, '"hidden_size": 2048,', '"hidden_size": 2048'),
              '"hidden_size": 2048', also=("invalid JSON",), near=True),
        BadHf("hf-invalid-json-trailing-comma", sub(HF_GOOD, '"vocab_size": 128256',
                                                   '"vocab_size": 128256,'),
              '"vocab_size": 128256,', also=("invalid JSON",), near=True),
        BadHf("hf-empty-file", "", also=("invalid JSON",)),
        BadHf("hf-missing-hidden-size",
              json.dumps({k: v for k, v in HF.items() if k != "hidden_size"}, indent=2),
              None, "hidden_size", ("required",)),
        BadHf("hf-string-for-int", hf_with(hidden_size="big"), '"hidden_size"', "hidden_size",
              ("'big'",)),
        BadHf("hf-bool-for-int", hf_with(hidden_size=True), '"hidden_size"', "hidden_size"),
        BadHf("hf-negative", hf_with(num_hidden_layers=-16), '"num_hidden_layers"',
              "num_hidden_layers", ("(got -16)",)),
        BadHf("hf-fractional", hf_with(vocab_size=1.5), '"vocab_size"', "vocab_size",
              ("1.5",)),
        BadHf("hf-bad-dtype", hf_with(torch_dtype="int8"), '"torch_dtype"', "torch_dtype",
              ("'int8'",)),
        BadHf("hf-heads-not-divisible", hf_with(num_key_value_heads=5),
              '"num_key_value_heads"', "num_key_value_heads", ("32", "5")),
        BadHf("hf-array-top-level", json.dumps([HF], indent=2), also=("JSON object",)),
        BadHf("hf-non-utf8", HF_GOOD.encode() + b"\xff", also=("UTF-8",)),
]


@pytest.mark.parametrize("case", HF_CASES, ids=lambda c: c.id)
def test_bad_hf_config_cli(case: BadHf, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.json"
    if isinstance(case.content, bytes):
        path.write_bytes(case.content)
    else:
        path.write_text(case.content, encoding="utf-8")
    rc, out, err = run_cli(capsys, argv_for("model", path))
    msg = assert_one_line_error(rc, out, err)
    assert_where(msg, str(path), case.expected_line(), case.field)
    for text in case.also:
        assert text.lower() in msg.lower(), f"{text!r} not in {msg!r}"


@pytest.mark.parametrize("case", HF_CASES, ids=lambda c: c.id)
def test_bad_hf_config_loader(case: BadHf, tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    if isinstance(case.content, bytes):
        path.write_bytes(case.content)
    else:
        path.write_text(case.content, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        loader.model_from_hf_config(path)
    err = info.value
    assert err.source == str(path)
    want = case.expected_line()
    if want is not None:
        assert err.line in (want if isinstance(want, tuple) else (want,)), str(err)
    if case.field is not None:
        assert err.field == case.field, str(err)


def test_good_hf_config_predicts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.json"
    path.write_text(HF_GOOD, encoding="utf-8")
    rc, out, err = run_cli(capsys, argv_for("model", path))
    assert rc == 0, err
    assert json.loads(out)["step_ms"] > 0


def test_hf_config_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nowhere" / "config.json"
    rc, out, err = run_cli(capsys, argv_for("model", path))
    msg = assert_one_line_error(rc, out, err)
    assert str(path) in msg
    with pytest.raises(ConfigError) as info:
        loader.model_from_hf_config(path)
    assert info.value.source == str(path)
