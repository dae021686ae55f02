"""A stack that pads its decode batch (``StackSpec.padded_decode_keys``,
stacks/harness-serve.yaml): decode attention and the KV gather priced at the longest
context rounded up, for every row run; GQA packed into query rows in decode; the
serving loop and the replay pass the longest context through."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gpusim.calibration.serving_host import step_seconds
from gpusim.calibration.serving_measured import read_serving_run
from gpusim.calibration.serving_replay import compare_runs
from gpusim.cost import Calibration
from gpusim.errors import ConfigError
from gpusim.io import loader
from gpusim.kernels import build_kernels
from gpusim.platform import Platform
from gpusim.serving.kv_cache import PagedKVCache
from gpusim.serving.prefix_cache import PrefixKVCache
from gpusim.serving.step_ops import cache_ops
from gpusim.serving.step_time import build_step_time_model
from gpusim.specs import StackSpec
from gpusim.specs.enums import KernelKind

GPU = loader.load_gpu("h100-sxm")
MODEL = loader.load_model("llama-3.2-1b")
STACK = loader.load_stack("harness-serve")
FIXTURE = Path(__file__).parent / "fixtures" / "serve_run_cpu"


@pytest.fixture(scope="module")
def model_1k():
    plat = Platform(GPU, STACK, Calibration(gpu=GPU.name))
    return build_step_time_model(plat, MODEL, 512, 16, 1000, (1, 2, 4, 8, 16))


def test_the_harness_stack_pads_decode_keys_and_gathers_the_padded_cache() -> None:
    assert STACK.padded_decode_keys == 256
    assert STACK.status == "measured" and STACK.host_costs_from == "torch-fused"
    assert cache_ops(STACK) >= {"kv_gather", "attn_mask"}
    gather = next(op for op in STACK.layer if op.name == "kv_gather")
    # index_select of K and of V: write 2 B and read 2 B per element each
    assert (gather.tensor, gather.kernels, gather.bytes_per_element) == ("kv_cache", 2, 4.0)
    assert (gather.reads, gather.read_bytes_per_element) == ("kv_cache", 4.0)
    assert STACK.padding_reads_cached and STACK.padded_gather_min_s_per_key > 0


def test_padded_decode_keys_must_be_positive() -> None:
    raw = STACK.model_dump()
    with pytest.raises(ValueError):
        StackSpec.model_validate({**raw, "padded_decode_keys": 0})


def test_decode_packs_gqa_folds_query_heads_into_rows_in_decode_only() -> None:
    g = MODEL.num_attention_heads // MODEL.num_key_value_heads
    dec = next(k for k in build_kernels(MODEL, STACK, "decode", 4, 100, 1)
               if k.name == "attention")
    assert (dec.attention.heads, float(dec.attention.q[0])) == (MODEL.num_key_value_heads, g)
    pre = next(k for k in build_kernels(MODEL, STACK, "prefill", 1, 0, 64)
               if k.kind == KernelKind.ATTENTION)
    assert (pre.attention.heads, float(pre.attention.q[0])) == (MODEL.num_attention_heads, 64)
    # the same K/V traffic, and the arithmetic within the causal tail the flop count
    # gives q > 1 rows (under 2% here)
    plain = STACK.model_copy(update={"layer": tuple(
        op.model_copy(update={"decode_packs_gqa": False}) for op in STACK.layer)})
    dec2 = next(k for k in build_kernels(MODEL, plain, "decode", 4, 100, 1)
                if k.name == "attention")
    assert np.allclose(dec.kv_bytes, dec2.kv_bytes)
    assert np.allclose(dec.flops, dec2.flops, rtol=0.02)


def test_padded_context_rounds_the_longest_up_to_the_bucket_and_caps_it(model_1k) -> None:
    assert model_1k.key_bucket_tokens == 256 and model_1k.max_keys == 1024
    assert model_1k.padded_ctx(0) == 255          # 1 key -> 256
    assert model_1k.padded_ctx(255) == 255        # 255 cached + the new one: 256 keys
    assert model_1k.padded_ctx(256) == 511        # 257 keys -> 512
    assert model_1k.padded_ctx(999) == 1023       # capped at the window rounded up


def test_a_padded_decode_costs_the_longest_not_the_mean(model_1k) -> None:
    short = model_1k.decode_step(3, 3 * 10, 300)
    same_bucket = model_1k.decode_step(3, 3 * 300, 500)      # 301 and 501 keys: 512
    longer = model_1k.decode_step(3, 3 * 10, 600)
    # the same padded keys; only the cached ones are read from HBM by the gather
    assert same_bucket[0] >= short[0] and same_bucket[1] > short[1]
    assert same_bucket[0] < 1.05 * short[0]
    assert longer[0] > short[0] and longer[1] > short[1]
    # a graph step runs its padded rows: 3 decoding sequences cost what 4 do, but for
    # the one key the fourth row would hold
    assert model_1k.decode_step(3, 0, 300)[0] == pytest.approx(
        model_1k.decode_step(4, 0, 300)[0], rel=1e-3)


def test_padding_positions_skip_their_reads_down_to_the_floor(model_1k) -> None:
    """Key positions no sequence holds cost the gather its write only, until the
    stack's floor per position: 16 rows of 512 keys, all cached against none."""
    full = model_1k.decode_step(16, 16 * 511, 511)
    empty = model_1k.decode_step(16, 0, 511)
    positions = 16 * 512
    saved = max(0.0, min((positions - 16) * model_1k.padding_read_s,
                         positions * (model_1k.gather_s - model_1k.gather_floor_s)))
    assert full[0] - empty[0] == pytest.approx(saved, rel=1e-6, abs=1e-12)
    assert full[1] - empty[1] == pytest.approx((positions - 16)
                                               * model_1k.padding_read_bytes, rel=1e-6)
    assert 0 < model_1k.padding_read_s < model_1k.gather_s


def test_the_shipped_calibration_saves_padding_reads_above_the_floor() -> None:
    # on the H100's calibration the 8B's gather (2 KB rows) runs above the floor: half
    # its positions padding saves it about its reads
    from gpusim.io import calibrations
    cal = calibrations.load_calibration(str(calibrations.CALIBRATIONS_DIR / "h100-sxm.yaml"),
                                        GPU, STACK)
    m8 = loader.load_model("llama-3.1-8b")
    sm = build_step_time_model(Platform(GPU, STACK, cal), m8, 8192, 64, 3072, (32,))
    full = sm.decode_step(32, 32 * 2303, 2303)[0]
    half = sm.decode_step(32, 32 * 1151, 2303)[0]
    assert full - half == pytest.approx(32 * 1152 * sm.padding_read_s, rel=1e-6)
    assert sm.gather_s - sm.padding_read_s > sm.gather_floor_s


def test_the_gather_moves_the_padded_rows_keys(model_1k) -> None:
    """Bytes of a padded decode step whose rows hold all their keys grow by exactly the
    gathered and attended K and V of the extra keys, 8 B (gather) + 2 B x 2 (attention
    reads K and V) per element, and the [rows, keys] mask ops (5 B a layer, 20 B once a
    step)."""
    rows, kv = 16, MODEL.num_key_value_heads * MODEL.head_dim_eff
    a = model_1k.decode_step(16, 16 * 511, 511)[1]   # 512 keys, all cached
    b = model_1k.decode_step(16, 16 * 767, 767)[1]   # 768 keys
    layers = MODEL.num_hidden_layers
    per_key = rows * (kv * layers * (8 + 4) + 5 * layers + 20)
    assert b - a == pytest.approx(256 * per_key, rel=1e-6)


def test_mixed_steps_price_the_decode_part_padded_too(model_1k) -> None:
    a = model_1k.step(2, 0, [(64, 0)], 100)
    b = model_1k.step(2, 0, [(64, 0)], 700)
    assert b[0] > a[0]


def test_stacks_that_do_not_pad_ignore_the_longest() -> None:
    plat = Platform(GPU, loader.load_stack("torch-fused"), Calibration(gpu=GPU.name))
    m = build_step_time_model(plat, MODEL, 512, 16, 1000, (1, 2, 4, 8, 16))
    assert m.key_bucket_tokens == 0
    assert m.decode_step(3, 300, 0) == m.decode_step(3, 300, 900)


@pytest.mark.parametrize("cache", [PagedKVCache(100, 16), PrefixKVCache(100, 16)])
def test_the_decoding_groups_longest_member(cache) -> None:
    assert cache.group_longest_tokens() == 0
    for seq, tokens in ((1, 40), (2, 7)):
        if isinstance(cache, PrefixKVCache):
            cache.allocate_prefix(_req(seq, tokens), 0, tokens)
        else:
            cache.allocate(seq, tokens)
        cache.join_group(seq)
    cache.group_step()
    assert cache.group_longest_tokens() == 41


def _req(rid: int, tokens: int):
    from gpusim.serving.requests import Request
    return Request(rid=rid, arrival_s=0.0, prompt_tokens=tokens, output_tokens=4)


def test_measured_steps_carry_their_padded_key_length() -> None:
    run = read_serving_run(FIXTURE / "rate-30")
    dec = [s for s in run.steps if s.decode]
    assert dec and all(s.key_len > 0 and s.longest == s.key_len - 1 for s in dec)
    # a padded stack prices the measured step at the key length it recorded
    plat = Platform(GPU, STACK, Calibration(gpu=GPU.name))
    m = build_step_time_model(plat, MODEL, 8192, 256, 3072, (1, 2, 4, 8, 16, 32))
    s = next(s for s in dec if not s.chunks)
    assert step_seconds(m, s.composition, s.longest) == m.decode_step(
        s.decode, s.decode_ctx_tokens, s.key_len - 1)[0]


def test_the_cpu_fixture_replays_with_the_harness_stack() -> None:
    runs = [read_serving_run(FIXTURE / d) for d in ("rate-30", "rate-150")]
    plat = Platform(GPU, STACK, Calibration(gpu=GPU.name))
    out = compare_runs(runs, plat, lambda run: loader.load_model(run.config_path))
    assert all(r.simulated_steps > 0 for r in out)


def test_an_unknown_stack_key_is_refused(tmp_path: Path) -> None:
    text = Path(loader.__file__).parents[2].joinpath("stacks", "harness-serve.yaml")
    bad = tmp_path / "s.yaml"
    bad.write_text(text.read_text().replace("padded_decode_keys: 256",
                                            "padded_decode_key: 256"))
    with pytest.raises(ConfigError):
        loader.load_stack(str(bad))
