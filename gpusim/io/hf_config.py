"""A Hugging Face config.json -> ModelSpec: Llama-architecture keys, the MoE keys of
Mixtral and Qwen2/Qwen3-MoE, Qwen3's q/k norms, and ``quantization_config``.

Every key is either modelled, known to leave the forward's cost alone (``NO_COST``:
token ids, training-only router losses, RoPE frequency scaling, ...), or refused by
name with the file's line: a key gpusim does not model is never dropped (a Qwen3-MoE
config read with Llama keys alone would be a dense 3B model). Raises ConfigError.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gpusim.errors import bad, read_text
from gpusim.io import jsontext
from gpusim.io.yamlfile import Path_, validate
from gpusim.specs import ModelSpec

LLAMA_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "intermediate_size", "vocab_size",
              "tie_word_embeddings", "rms_norm_eps", "rope_theta", "max_position_embeddings")
MOE_KEYS = ("num_experts", "num_local_experts", "num_experts_per_tok",
            "moe_intermediate_size", "shared_expert_intermediate_size", "norm_topk_prob",
            "decoder_sparse_step", "mlp_only_layers")
# keys that change nothing gpusim prices: ids, initialisation, training-only router
# losses, the library's bookkeeping, RoPE's frequencies (the same kernels), biases
# fused into cuBLAS's epilogue; checked values where one would change the forward
NO_COST = frozenset({
    "_name_or_path", "architectures", "attention_dropout", "bos_token_id", "eos_token_id",
    "pad_token_id", "initializer_range", "transformers_version", "use_cache",
    "rope_scaling", "rope_parameters", "output_router_logits", "router_aux_loss_coef",
    "router_jitter_noise", "tokenizer_class", "attention_bias", "mlp_bias",
    "use_bfloat16", "_attn_implementation_autoset", "model_type", "hidden_act",
    "pretraining_tp", "sliding_window", "use_sliding_window", "max_window_layers",
    "layer_types", "torch_dtype", "dtype", "quantization_config"})
MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe")
QUANT_METHODS = ("fp8", "awq", "gptq", "mxfp4")
# quantization_config keys of the checkpoint's packing and tooling (not of its sizes)
QUANT_NO_COST = frozenset({
    "quant_method", "bits", "group_size", "weight_block_size", "fmt", "desc_act",
    "zero_point", "sym", "modules_to_not_convert", "ignored_layers", "activation_scheme",
    "version", "backend", "use_exllama", "exllama_config", "max_input_length",
    "damp_percent", "true_sequential", "model_name_or_path", "model_file_base_name",
    "static_groups", "checkpoint_format", "meta"})
# modules a checkpoint keeps unquantized that gpusim keeps unquantized too
UNQUANTIZED_OK = re.compile(r"(lm_head|embed_tokens|norm|router|\.gate|^gate|shared_expert_gate"
                            r"|self_attn)$")


def _read(path: Path) -> tuple[dict[str, Any], dict[Path_, int]]:
    source = str(path)
    text = read_text(path)
    raw = jsontext.loads(text, source)
    if not isinstance(raw, dict):
        raise bad(source, "expected a JSON object")
    lines: dict[Path_, int] = {}
    for key in raw:
        m = re.search(r'^\s*"' + re.escape(key) + r'"\s*:', text, re.MULTILINE)
        if m:
            lines[(key,)] = text.count("\n", 0, m.start()) + 1
    return raw, lines


def _check_values(raw: dict[str, Any], source: str, lines: dict[Path_, int]) -> None:
    """Refuse a key gpusim does not model, and a cost-free key's value that would
    change the forward (another activation, sliding-window attention, a model type
    whose layers differ)."""
    def no(key: str, reason: str) -> None:
        raise bad(source, reason, field=key, line=lines.get((key,)), value=raw[key])

    known = {*LLAMA_KEYS, *MOE_KEYS, *NO_COST}
    for key in raw:
        if key not in known:
            no(key, "not modelled by gpusim (a key it cannot price is refused, not "
               "dropped); its model keys are Llama's, Mixtral's and Qwen-MoE's")
    mt = raw.get("model_type", "llama")
    if mt not in MODEL_TYPES:
        no("model_type", f"not modelled; gpusim reads {', '.join(MODEL_TYPES)}")
    if raw.get("hidden_act", "silu") != "silu":
        no("hidden_act", "only silu (SwiGLU) MLPs are modelled")
    if raw.get("pretraining_tp", 1) != 1:
        no("pretraining_tp", "only 1 (one GEMM per projection) is modelled")
    window = raw.get("sliding_window")
    if window is not None and (not isinstance(window, int) or isinstance(window, bool)):
        no("sliding_window", "must be an integer or null")
    if window is not None and raw.get("use_sliding_window", True) is not False \
            and window < raw.get("max_position_embeddings", float("inf")):
        no("sliding_window", "sliding-window attention is not modelled (every layer "
           "attends to its whole context)")
    if raw.get("use_sliding_window") is True:
        no("use_sliding_window", "sliding-window attention is not modelled")
    types = raw.get("layer_types")
    if types is not None and (not isinstance(types, list)
                              or any(t != "full_attention" for t in types)):
        no("layer_types", "only full_attention layers are modelled")
    if raw.get("decoder_sparse_step", 1) != 1:
        no("decoder_sparse_step", "only every layer an MoE layer (1) is modelled")
    if raw.get("mlp_only_layers") not in (None, []):
        no("mlp_only_layers", "dense layers among MoE layers are not modelled")


def _moe(raw: dict[str, Any], source: str, lines: dict[Path_, int]) -> dict[str, Any]:
    """The ModelSpec's MoE keys from a Mixtral or Qwen-MoE config (nothing for a dense
    one); an MoE key on a dense model type is refused."""
    mt = raw.get("model_type", "llama")
    present = [k for k in MOE_KEYS if k in raw and k not in ("decoder_sparse_step",
                                                            "mlp_only_layers")]
    if mt not in ("mixtral", "qwen2_moe", "qwen3_moe"):
        if present:
            raise bad(source, f"an MoE key on model_type {mt!r} (MoE: mixtral, qwen2_moe, "
                      "qwen3_moe)", field=present[0], line=lines.get((present[0],)),
                      value=raw[present[0]])
        return {}
    out: dict[str, Any] = {"num_experts_per_tok": raw.get("num_experts_per_tok")}
    if mt == "mixtral":
        out["num_experts"] = raw.get("num_local_experts")
        out["moe_intermediate_size"] = raw.get("intermediate_size")  # each expert's
        for ours, theirs in (("num_experts", "num_local_experts"),
                             ("moe_intermediate_size", "intermediate_size")):
            if (theirs,) in lines:
                lines[(ours,)] = lines[(theirs,)]
        for key in ("num_experts", "moe_intermediate_size", "shared_expert_intermediate_size"):
            if key in raw:
                raise bad(source, "not a Mixtral key (Mixtral: num_local_experts, "
                          "intermediate_size per expert)", field=key, line=lines.get((key,)),
                          value=raw[key])
    else:
        out["num_experts"] = raw.get("num_experts")
        out["moe_intermediate_size"] = raw.get("moe_intermediate_size")
        out["norm_topk_prob"] = bool(raw.get("norm_topk_prob", False))
        # intermediate_size is the dense MLP's, of dense layers (mlp_only_layers): none
        shared = raw.get("shared_expert_intermediate_size") or 0
        if shared:
            out["shared_expert_intermediate_size"] = shared
            out["shared_expert_gate"] = mt == "qwen2_moe"   # a sigmoid gate on it
        if "num_local_experts" in raw:
            raise bad(source, "a Mixtral key; Qwen-MoE's is num_experts",
                      field="num_local_experts", line=lines.get(("num_local_experts",)),
                      value=raw["num_local_experts"])
    missing = [k for k, v in out.items() if v is None]
    if missing:
        raise bad(source, f"an MoE config ({mt}) needs it", field=missing[0])
    return out


def _quantization(raw: dict[str, Any], source: str, lines: dict[Path_, int]
                  ) -> dict[str, Any] | None:
    """ModelSpec's ``quantization`` from ``quantization_config`` (fp8: per tensor, or
    DeepSeek-style blocks; awq, gptq: int4/int8 groups with fp16 scales and zeros;
    mxfp4: fp4 groups of 32 with e8m0 scales, the experts only). Refuses another method,
    a key of it that would change the kernels, or an unquantized module gpusim would
    quantize."""
    qc = raw.get("quantization_config")
    if qc is None:
        return None
    line = lines.get(("quantization_config",))

    def no(key: str, reason: str, value: object) -> None:
        raise bad(source, reason, field=f"quantization_config.{key}", line=line, value=value)

    if not isinstance(qc, dict):
        raise bad(source, "expected an object", field="quantization_config", line=line)
    for key in qc:
        if key not in QUANT_NO_COST:
            no(key, "not modelled by gpusim", qc[key])
    method = qc.get("quant_method")
    if method not in QUANT_METHODS:
        no("quant_method", f"not modelled; gpusim reads {', '.join(QUANT_METHODS)}", method)
    keep = [*(qc.get("modules_to_not_convert") or []), *(qc.get("ignored_layers") or [])]
    odd = [m for m in keep if not UNQUANTIZED_OK.search(str(m))]
    if odd:
        no("modules_to_not_convert", "gpusim keeps only the embedding, LM head, norms and "
           "router unquantized (and attention under mxfp4)", odd[0])
    if method == "fp8":
        if qc.get("fmt", "e4m3") != "e4m3":
            no("fmt", "only e4m3 fp8 weights are modelled", qc.get("fmt"))
        block = qc.get("weight_block_size")
        if block is None:
            return {"weight_dtype": "fp8", "scales": "tensor"}
        if not (isinstance(block, list) and len(block) == 2 and block[0] == block[1]):
            no("weight_block_size", "only square blocks are modelled", block)
        return {"weight_dtype": "fp8", "scales": "block", "group_size": block[0]}
    if method == "mxfp4":
        return {"weight_dtype": "fp4", "scales": "group", "group_size": 32,
                "scale_dtype": "e8m0", "modules": "experts"}
    bits, group = qc.get("bits"), qc.get("group_size", 128)
    if bits not in (4, 8):
        no("bits", "only 4- and 8-bit weights are modelled", bits)
    if qc.get("desc_act"):
        no("desc_act", "act-order (a gathered group index per channel) is not modelled",
           qc.get("desc_act"))
    grouped = isinstance(group, int) and group > 0
    return {"weight_dtype": f"int{bits}", "scales": "group" if grouped else "channel",
            "group_size": group if grouped else None, "scale_dtype": "fp16",
            "zero_points": True}


def _name(raw: dict[str, Any], path: Path, name: str | None) -> str:
    default = re.sub(r"[^a-z0-9._-]", "-", (path.parent.name or "model").lower())
    default = default.strip("-.") or "model"
    chosen = name or (raw.get("_name_or_path", "") or default)
    return re.sub(r"[^a-z0-9._-]", "-", str(chosen).lower()).strip("-.") or "model"


def model_from_hf_config(path: Path, name: str | None = None) -> ModelSpec:
    """A ModelSpec from a Hugging Face config.json (see the module's docstring).
    Raises ConfigError naming the file, line and key."""
    source = str(path)
    raw, lines = _read(path)
    _check_values(raw, source, lines)
    data = {k: raw[k] for k in LLAMA_KEYS if k in raw and raw[k] is not None}
    if "num_key_value_heads" not in data and "num_attention_heads" in data:
        data["num_key_value_heads"] = data["num_attention_heads"]  # HF's default: MHA
    dtype = raw.get("torch_dtype") or raw.get("dtype")
    if dtype is not None:
        data["torch_dtype"] = dtype
        if "torch_dtype" not in raw:
            lines[("torch_dtype",)] = lines.get(("dtype",), 0)
    moe = _moe(raw, source, lines)
    if moe:
        data.pop("intermediate_size", None)   # Mixtral: the experts'; Qwen: dense layers'
        data.update(moe)
    mt = raw.get("model_type", "llama")
    if mt in ("qwen3", "qwen3_moe"):
        data["qk_norm"] = True                 # Qwen3's per-head q/k RMSNorm
    quant = _quantization(raw, source, lines)
    if quant is not None:
        data["quantization"] = quant
    data["name"] = _name(raw, path, name)
    data["source"] = source
    return validate(ModelSpec, data, source, lines)
