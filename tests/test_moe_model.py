"""Mixture-of-experts models: their files and HF configs, the kernels an MoE layer
launches, the bytes a step reads as the batch touches more experts, the memory that
holds every expert, and the CLI's breakdown of routing costs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from gpusim.cli import main
from gpusim.errors import ConfigError
from gpusim.io import loader
from gpusim.kernels import build_kernels
from gpusim.kernels.moe import expected_experts
from gpusim.kernels.variants import TORCH_MOE, layer_ops, op_roles
from gpusim.specs import ModelSpec

REPO = Path(__file__).resolve().parents[1]
HARNESS_MOE = json.loads((REPO / "validation/harness/moe_models.json").read_text())

# published totals (billions of parameters: total, active per token)
TOTALS = {"mixtral-8x7b": (46.7, 12.9), "mixtral-8x22b": (140.6, 39.1),
          "qwen3-30b-a3b": (30.5, 3.3), "qwen3-235b-a22b": (235.1, 22.2),
          "qwen1.5-moe-a2.7b": (14.3, 2.7), "gpt-oss-120b": (116.8, 5.7)}


def moe(**update: object) -> ModelSpec:
    """A small Qwen3-MoE-like model built inline."""
    fields: dict[str, object] = dict(
        name="tiny-moe", hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=64, vocab_size=1000, num_experts=16,
        num_experts_per_tok=4, moe_intermediate_size=128, norm_topk_prob=True)
    fields.update(update)
    return ModelSpec(**fields)


@pytest.mark.parametrize("name", sorted(TOTALS))
def test_shipped_moe_models_have_their_published_sizes(name: str) -> None:
    m = loader.load_model(name)
    total, active = TOTALS[name]
    assert m.param_count / 1e9 == pytest.approx(total, abs=0.1)
    assert m.active_param_count / 1e9 == pytest.approx(active, abs=0.1)


def test_weights_hold_every_expert_and_scale_with_experts() -> None:
    small, big = moe(), moe(num_experts=32)
    h, i = 256, 128
    per_expert = 3 * h * i * 2.0                        # gate, up, down in bf16
    assert big.weight_bytes - small.weight_bytes == pytest.approx(
        2 * 16 * (per_expert + h * 2.0))                # 16 more experts and router rows
    m = loader.load_model("qwen3-30b-a3b")
    assert m.weight_bytes / 1e9 == pytest.approx(61.06, abs=0.01)   # 30.5B x 2 bytes


def test_bytes_read_grow_with_the_experts_a_batch_touches() -> None:
    m = loader.load_model("qwen3-30b-a3b")
    stack = loader.load_stack("torch-fused")
    b = np.array([1.0, 4.0, 16.0, 64.0, 256.0])
    ks = build_kernels(m, stack, "decode", b, 1024, 1)
    experts = {k.name: k for k in ks}
    gate_up = experts["experts_gate_up"]
    per_expert = 2 * 768 * 2048 * 2.0
    want = expected_experts(128, 8, b) * per_expert
    assert gate_up.weight_bytes == pytest.approx(want)
    assert np.all(np.diff(gate_up.weight_bytes) > 0)
    # at batch 256 (2048 slots) nearly every expert is read: the dense bytes of them all
    assert gate_up.weight_bytes[-1] == pytest.approx(128 * per_expert, rel=1e-3)
    assert gate_up.flops == pytest.approx(2.0 * b * 8 * 2 * 768 * 2048)


def test_an_moe_layer_launches_router_permutation_experts_and_combine() -> None:
    stack = loader.load_stack("torch-fused")
    names = [op.name for op in layer_ops(moe(), stack)]
    assert "gate_up_proj" not in names and "silu_mul" not in names
    assert names.index("post_norm") < names.index("router") < names.index("experts_gate_up") \
        < names.index("experts_down") < names.index("combine_add") < names.index("residual_mlp")
    assert "route_renorm" in names            # norm_topk_prob
    no_renorm = [op.name for op in layer_ops(moe(norm_topk_prob=False), stack)]
    assert "route_renorm" not in no_renorm
    shared = [op.name for op in layer_ops(moe(shared_expert_intermediate_size=256,
                                              shared_expert_gate=True), stack)]
    assert [n for n in shared if n.startswith("shared")] == [
        "shared_gate_up_proj", "shared_silu_mul", "shared_down_proj", "shared_gate",
        "shared_gate_scale", "shared_add"]
    qk = [op.name for op in layer_ops(moe(qk_norm=True), stack)]
    at = qk.index("qkv_proj")
    assert qk[at + 1:at + 5] == ["q_norm_copy", "q_norm", "k_norm_copy", "k_norm"]
    roles = op_roles(moe(), stack)
    assert roles["router"] == "routing" and roles["permute_gather"] == "routing"
    assert roles["experts_gate_up"] == "experts" and "attention" not in roles


def test_the_permutation_launches_what_the_h100_profile_shows() -> None:
    # validation/data/h100-sxm/moe/kernels.csv (Qwen3-30B-A3B, torch 2.11): the stable
    # argsort is one radixSortKVInPlace kernel; arange, floor-div, float cast, histc's
    # fill and count, cumsum's scan init and scan, int32 cast are eight more; top-k,
    # the sort, the index kernels and index_add_ take PyTorch's non-vectorised path
    ops = {op.name: op for op in layer_ops(moe(), loader.load_stack("torch-fused"))}
    assert (ops["permute_sort"].kernels, ops["permute_sort"].strided_kernels) == (1, 1)
    assert ops["permute_index"].kernels == 8
    assert ops["route_topk"].strided_kernels == 2          # gatherTopK, bitonic sort
    assert ops["combine_scale"].strided_kernels == 2
    assert ops["combine_add"].strided_kernels == 1
    assert op_roles(moe(), loader.load_stack("torch-fused"))["permute_sort"] == "routing"


@pytest.mark.parametrize("mode, b, c, q, us", [
    ("decode", 64, 1024, 1, 9.56),
    ("prefill", 1, 0, 512, 61.81),
])
def test_index_add_costs_what_the_h100_profile_shows(mode: str, b: int, c: int, q: int,
                                                     us: float) -> None:
    # Qwen3-30B-A3B's index_add_ (indexFuncLargeIndex): 9.56 us at decode batch 64
    # (512 slots) and 61.81 us at a 512-token prefill (4096 slots), both x 2048 wide:
    # its atomic adds at the L2's rate (physics.atomic_add_s_per_element)
    from gpusim.cost import kernel_cost
    from gpusim.io import calibrations

    gpu, st = loader.load_gpu("h100-sxm"), loader.load_stack("torch-fused")
    cal = calibrations.load_calibration(
        str(calibrations.CALIBRATIONS_DIR / "h100-sxm.yaml"), gpu, st)
    m = loader.load_model("qwen3-30b-a3b")
    k = {k.name: k for k in build_kernels(m, st, mode, [b], c, q)}["combine_add"]
    busy = kernel_cost(k, gpu, cal).seconds[0] - cal.physics.launch_gap_s
    assert busy == pytest.approx(us * 1e-6, rel=0.1), mode


def test_shared_expert_kernels_are_sized_to_it() -> None:
    m = moe(shared_expert_intermediate_size=384)
    ks = {k.name: k for k in build_kernels(m, loader.load_stack("torch-fused"), "decode",
                                           [2.0], 64, 1)}
    assert ks["shared_gate_up_proj"].gemm.n == 2 * 384
    assert ks["shared_down_proj"].gemm.k == 384
    assert ks["experts_down"].gemm.k == 128


def test_every_default_moe_op_is_a_known_op() -> None:
    assert {op.op for op in TORCH_MOE} <= {"gemm", "elementwise", "dense_mlp"}


@pytest.mark.parametrize("update,field", [
    ({"num_experts_per_tok": 17}, "num_experts_per_tok"),
    ({"intermediate_size": 512}, "intermediate_size"),
    ({"moe_intermediate_size": None}, "moe_intermediate_size"),
    ({"shared_expert_gate": True}, "shared_expert_gate"),
])
def test_inconsistent_moe_fields_are_refused(update: dict, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        moe(**update)
    err = info.value.errors()[0]
    assert err.get("ctx", {}).get("field", err["loc"][0] if err["loc"] else None) == field


def test_dense_model_refuses_moe_fields() -> None:
    with pytest.raises(ValidationError, match="only for an MoE model"):
        ModelSpec(name="d", hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=2, intermediate_size=128, vocab_size=10,
                  num_experts_per_tok=2)


# ------------------------------------------------------------------ HF config.json
def _write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    return path


def test_qwen3_moe_config_is_read_as_an_moe_model(tmp_path: Path) -> None:
    cfg = {k: v for k, v in HARNESS_MOE["qwen3-30b-a3b"].items() if k != "source"}
    m = loader.model_from_hf_config(_write(tmp_path, cfg), name="q")
    shipped = loader.load_model("qwen3-30b-a3b")
    assert m.is_moe and m.qk_norm and m.norm_topk_prob
    assert m.param_count == shipped.param_count       # not a dense 3B model
    assert (m.num_experts, m.num_experts_per_tok, m.moe_intermediate_size) == (128, 8, 768)


def test_mixtral_and_qwen2_moe_configs(tmp_path: Path) -> None:
    cfg = {k: v for k, v in HARNESS_MOE["mixtral-8x7b-8l"].items() if k != "source"}
    m = loader.model_from_hf_config(_write(tmp_path, cfg))
    assert m.param_count == loader.load_model("mixtral-8x7b-8l").param_count
    cfg = {k: v for k, v in HARNESS_MOE["qwen1.5-moe-a2.7b"].items() if k != "source"}
    m = loader.model_from_hf_config(_write(tmp_path, cfg))
    assert m.shared_expert_gate and m.shared_expert_intermediate_size == 5632
    assert m.param_count == loader.load_model("qwen1.5-moe-a2.7b").param_count


@pytest.mark.parametrize("update,field", [
    ({"n_routed_experts": 256}, "n_routed_experts"),          # DeepSeek's: not modelled
    ({"mlp_only_layers": [0]}, "mlp_only_layers"),
    ({"decoder_sparse_step": 2}, "decoder_sparse_step"),
    ({"model_type": "deepseek_v3"}, "model_type"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"num_local_experts": 8}, "num_local_experts"),
])
def test_unmodelled_moe_keys_are_refused_by_name(tmp_path: Path, update: dict,
                                                 field: str) -> None:
    cfg = {k: v for k, v in HARNESS_MOE["qwen3-30b-a3b"].items() if k != "source"}
    path = _write(tmp_path, {**cfg, **update})
    with pytest.raises(ConfigError) as info:
        loader.model_from_hf_config(path)
    assert info.value.field == field and info.value.line is not None, str(info.value)


def test_an_moe_key_on_a_dense_llama_config_is_refused(tmp_path: Path) -> None:
    cfg = json.loads((REPO / "tests/fixtures/hf_config_llama.json").read_text())
    with pytest.raises(ConfigError, match="MoE key"):
        loader.model_from_hf_config(_write(tmp_path, {**cfg, "num_experts": 8}))


# ------------------------------------------------------------------ the command line
def test_predict_breaks_out_routing_and_expert_costs(capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    rc = main(["predict", "--gpu", "h100-sxm", "--model", "qwen3-30b-a3b", "--stack",
               "torch-fused", "--batch", "8", "--format", "json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    doc = json.loads(out)
    ops = {r["op"]: r for r in doc["ops"]}
    assert doc["routing_ms"] == pytest.approx(sum(
        ops[n]["ms"] for n in ("router", "route_topk", "route_renorm", "permute_sort",
                               "permute_copies",
                               "permute_index", "permute_gather", "combine_scale",
                               "combine_zero", "combine_add")))
    assert doc["experts_ms"] > doc["routing_ms"] > 0
    assert doc["weight_bytes"] < loader.load_model("qwen3-30b-a3b").weight_bytes


def test_a_model_too_large_for_the_gpu_is_refused(capsys: pytest.CaptureFixture[str]
                                                  ) -> None:
    rc = main(["predict", "--gpu", "h100-sxm", "--model", "mixtral-8x22b", "--stack",
               "torch-fused"])
    _, err = capsys.readouterr()
    assert rc == 2 and "does not fit" in err and len(err.strip().splitlines()) == 1


def test_a_fused_moe_stack_runs_gpt_oss_mxfp4_experts() -> None:
    from gpusim.cost import Calibration, kernel_cost
    from gpusim.kernels.quant import for_stack
    from gpusim.specs import StackSpec

    base = loader.load_stack("torch-fused")
    with pytest.raises(Exception, match="grouped_mm"):     # plain PyTorch: bf16 experts
        for_stack(loader.load_model("gpt-oss-120b"), base)
    fused = StackSpec.model_validate({**base.model_dump(), "name": "fused-moe-test", "moe": [
        {"op": "gemm", "name": "router", "weight": "router"},
        {"op": "elementwise", "name": "route_topk", "tensor": "router_logits",
         "kernels": 2, "bytes_per_element": 6},
        {"op": "gemm", "name": "experts_gate_up", "weight": "experts_gate_up",
         "family": "fused_moe"},
        {"op": "elementwise", "name": "experts_act", "tensor": "routed_intermediate",
         "kernels": 1, "bytes_per_element": 6},
        {"op": "gemm", "name": "experts_down", "weight": "experts_down",
         "family": "fused_moe"},
        {"op": "elementwise", "name": "combine", "tensor": "routed_hidden", "kernels": 1,
         "bytes_per_element": 4}]})
    m = for_stack(loader.load_model("gpt-oss-120b"), fused)
    ks = {k.name: k for k in build_kernels(m, fused, "decode", [1.0, 64.0], 1024, 1)}
    gu = ks["experts_gate_up"]
    per_expert = 2 * 2880 * 2880 * (0.5 + 1 / 32)         # fp4 + one e8m0 per 32
    assert gu.weight_bytes == pytest.approx(expected_experts(128, 4, [1.0, 64.0])
                                            * per_expert)
    assert gu.gemm.w_dtype == "fp4" and gu.dtype == "bf16"
    assert ks["qkv_proj"].gemm.family == "cublas"           # attention stays bf16
    c = kernel_cost(gu, loader.load_gpu("h100-sxm"), Calibration())
    assert np.all(c.compute_s > 0) and c.compute_s[1] > c.compute_s[0]


def test_few_slots_walk_pytorchs_small_index_kernels_one_by_one() -> None:
    from gpusim.cost.pointwise import SMALL_INDEX_MAX, small_index_s

    n = np.array([1.0, 8.0, 16.0, 17.0, 64.0])
    assert small_index_s(n, 0.5e-6) == pytest.approx([0.5e-6, 4e-6, 8e-6, 0.0, 0.0])
    assert SMALL_INDEX_MAX == 16
    # Qwen3 routes 8 slots a token: 2 tokens take the SmallIndex kernels (16 slots), 3 the
    # parallel ones, so the gather and the index_add_ take longer at batch 2 than at 3
    model = loader.load_model("qwen3-30b-a3b")
    times = {}
    for b in (2, 3):
        rc_doc = _predict_ops(model.name, b)
        times[b] = {k: rc_doc[k] for k in ("permute_gather", "combine_add")}
    for op in ("permute_gather", "combine_add"):
        assert times[2][op] > times[3][op]


def _predict_ops(model: str, batch: int) -> dict[str, float]:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["predict", "--gpu", "h100-sxm", "--model", model, "--stack",
                   "torch-fused", "--batch", str(batch), "--format", "json"])
    assert rc == 0
    return {r["op"]: r["ms"] for r in json.loads(buf.getvalue())["ops"]}


def test_a_small_index_op_on_a_dense_model_is_refused(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    text = (loader.ROOT / "stacks" / "torch-fused.yaml").read_text()
    old = "name: input_norm,"
    assert old in text
    stack = tmp_path / "indexed.yaml"
    stack.write_text(text.replace(old, "name: input_norm, small_index_s: 1.0e-7,", 1)
                     .replace("name: torch-fused\n", "name: indexed\n", 1))
    rc = main(["predict", "--gpu", "h100-sxm", "--model", "llama-3.2-1b", "--stack",
               str(stack)])
    _, err = capsys.readouterr()
    assert rc == 2 and "small_index_s" in err and len(err.strip().splitlines()) == 1


def test_vllm_runs_its_own_fused_moe_and_fa3_like_attention() -> None:
    # vLLM's stack (described from its source) runs an MoE layer through FusedMoE, not
    # plain PyTorch's permutation and grouped GEMM, and its attention as FA3 on Hopper:
    # split-KV with packed GQA for decode and verify, a Hopper-native causal prefill
    vllm = loader.load_stack("vllm")
    assert (vllm.family("decode"), vllm.family("verify"), vllm.family("prefill")) == \
        ("flash_decode", "flash_decode", "cudnn_prefill")
    model = loader.load_model("qwen1.5-moe-a2.7b")      # shared expert and its gate
    ks = {k.name: k for k in build_kernels(model, vllm, "decode", [1.0, 64.0], 1024, 1)}
    assert ks["experts_gate_up"].gemm.family == "fused_moe"
    assert ks["experts_down"].gemm.family == "fused_moe"
    assert {"topk_softmax", "moe_align", "moe_sum", "shared_gate_up_proj",
            "shared_gate", "shared_add"} <= set(ks)
    assert not {"route_topk", "permute_sort", "permute_gather", "combine_add"} & set(ks)
    # moe_sum reads the k expert rows of each token and writes the token's row
    h, k = model.hidden_size, model.num_experts_per_tok
    assert ks["moe_sum"].act_bytes == pytest.approx(np.array([1.0, 64.0]) * h * (2 * k + 2))
    # Qwen3's q/k norms: vLLM's strided rms_norm, one kernel each (no contiguous copy)
    qwen3 = {k.name: k for k in build_kernels(loader.load_model("qwen3-30b-a3b"), vllm,
                                              "decode", [1.0], 1024, 1)}
    assert qwen3["q_norm"].launches == qwen3["k_norm"].launches == 1
