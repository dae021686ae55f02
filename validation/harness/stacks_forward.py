"""Measured software stacks: Llama forward steps over the reference stack's conventions.

Every stack runs one forward step of a Llama model over a static KV cache in which all
sequences of the batch sit at the same position, as reference.py does: ``ctx`` tokens
cached, ``q`` new; modes ``decode`` (q == 1), ``verify`` (q new tokens, causal, aligned
to the end of the cache: query i sees keys 0..ctx+i) and ``prefill`` (ctx == 0, causal
over the prompt, logits of the last position only). ``STACKS`` names them:

* ``torch-hf``: reference.forward itself (Hugging Face style RMSNorm, 8 kernels a norm).
* ``torch-fused``: reference.forward with torch's fused ``F.rms_norm`` (one kernel a
  norm, the weight applied inside); nothing else changes (fused_forward.py, the forward
  that the quantized and MoE stacks of quant_forward.py share).
* ``torch-compile``: the torch-fused forward under ``torch.compile`` (Inductor) with the
  token count dynamic and the cache position a tensor (``CompileStack``).
* ``hf-transformers``: the transformers library's ``LlamaForCausalLM`` with sdpa
  attention and its ``StaticCache`` (``HfStack``); ``Qwen3ForCausalLM`` for a model with
  Qwen3's per-head q/k norms (``Shape.qk_norm``), which every stack runs after the qkv
  projection and before RoPE.

The interface is the same for all (``Stack``): ``load`` builds a model with random
weights, ``new_cache`` a cache of ``max_len`` positions filled with random values, and
``step`` a callable that runs one step and returns its logits, [B*q, V] (prefill
[B, V]). A step can be called again and again, each call writing the same cache
positions, so it can be timed, captured in a CUDA graph and replayed.

Imports torch; transformers only when hf-transformers builds a model (the GPU machine
has torch, Triton, numpy, pyyaml and transformers, and no gpusim).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import reference
import torch
from bench_steps import make_cache
from fused_forward import Model, check_mode, fused_model, run_layers, sdpa
from fused_forward import forward as fused_forward
from reference import Shape

StepFn = Callable[[], torch.Tensor]
# transformers' LlamaConfig.max_position_embeddings: more than any ctx + q measured (with
# the default RoPE it changes no kernel)
HF_MAX_POSITIONS = 131072


class Stack(Protocol):
    """What a measured stack provides (see the module docstring)."""

    name: str
    graphs: int   # graphs compiled so far for the loaded model (0: nothing compiles)

    def load(self, shape: Shape, device: torch.device, dtype: torch.dtype) -> object: ...

    def new_cache(self, model: object, batch: int, max_len: int, device: torch.device,
                  dtype: torch.dtype) -> object: ...

    def cache_len(self, cache: object) -> int: ...

    def step(self, model: object, cache: object, mode: str, batch: int, ctx: int, q: int,
             tokens: torch.Tensor | None = None) -> StepFn: ...


def check_step(mode: str, batch: int, ctx: int, q: int, cache_batch: int, cache_len: int
               ) -> None:
    """Raises ValueError for a step the stacks do not run: an unknown mode, decode with
    q != 1, prefill with ctx != 0, a batch other than the cache's, or a KV write past the
    cache's end."""
    check_mode(mode, q, ctx)
    if q < 1 or ctx < 0:
        raise ValueError(f"need q >= 1 and ctx >= 0 (got q={q}, ctx={ctx})")
    if batch != cache_batch:
        raise ValueError(f"batch {batch} but the cache holds {cache_batch} sequences")
    if ctx + q > cache_len:
        raise ValueError(f"KV write {ctx}..{ctx + q} outside a cache of {cache_len}")


def random_tokens(vocab: int, batch: int, q: int, device: torch.device, seed: int = 2
                  ) -> torch.Tensor:
    """Token ids [B, q], the same for every stack given the same seed."""
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.randint(0, vocab, (batch, q), device=device, generator=g)


# ---------------------------------------------------------------- torch-hf, torch-fused
def _as_is(w: reference.Weights) -> reference.Weights:
    return w


@dataclass
class TorchStack:
    """A reference.py style forward over reference.Weights and a reference.KVCache.

    ``forward(prepare(weights), cache, tokens, ctx, mode, mask)`` runs a step: torch-hf
    is reference.forward itself; torch-fused is fused_forward.forward over the same
    tensors (``fused_model``, made once per model).
    """

    name: str
    forward: Callable[..., torch.Tensor]
    prepare: Callable[[reference.Weights], object] = _as_is
    graphs: int = 0

    def load(self, shape: Shape, device: torch.device, dtype: torch.dtype
             ) -> reference.Weights:
        return reference.Weights(shape, str(device), dtype)

    def new_cache(self, model: reference.Weights, batch: int, max_len: int,
                  device: torch.device, dtype: torch.dtype) -> reference.KVCache:
        return make_cache(model.shape, batch, max_len, device, dtype)

    def cache_len(self, cache: reference.KVCache) -> int:
        return cache.k.shape[3]

    def step(self, model: reference.Weights, cache: reference.KVCache, mode: str,
             batch: int, ctx: int, q: int, tokens: torch.Tensor | None = None) -> StepFn:
        """One step over ``cache`` (raises ValueError, see check_step)."""
        check_step(mode, batch, ctx, q, cache.k.shape[1], self.cache_len(cache))
        if tokens is None:
            tokens = random_tokens(model.shape.vocab_size, batch, q, cache.k.device)
        mask = reference.verify_mask(q, ctx + q) if mode == "verify" else None
        fwd, m = self.forward, self.prepare(model)
        return lambda: fwd(m, cache, tokens, ctx, mode, mask)


# ---------------------------------------------------------------------- torch-compile
@dataclass
class LayerKV:
    """torch-compile's cache: one k and one v tensor per layer, [B, Hkv, S, D] each.

    Separate tensors, not views into one [L, ...] tensor: Inductor writes a mutated
    graph input in place, but a mutated view of one (``k[i]`` of a [L, ...] input) was
    copied whole, every layer and every step (seen in the generated code on the CPU).
    """

    k: list[torch.Tensor]
    v: list[torch.Tensor]


class IndexKV:
    """fused_forward's KV protocol for torch.compile: each layer's cache cut to the
    step's keys, ``ks``/``vs`` [B, Hkv, ctx + q, D], written by ``index_copy_`` at the
    ``positions`` tensor [q] (ctx..ctx+q-1), as gpt-fast and transformers' StaticCache
    write; the RoPE angles come from the same tensor. So a new batch size, q or ctx
    compiles no new graph: no Python int of the step enters the traced code, and the
    attention's key length is the dynamic length of ``ks``/``vs``."""

    def __init__(self, ks: list[torch.Tensor], vs: list[torch.Tensor],
                 positions: torch.Tensor, mode: str):
        self.ks, self.vs, self.positions, self.mode = ks, vs, positions, mode

    def rope(self, inv_freq: torch.Tensor, dtype: torch.dtype
             ) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = self.positions[:, None].float() * inv_freq[None, :]              # [q, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)                                   # [q, D]
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def attend(self, i: int, xq: torch.Tensor, xk: torch.Tensor, xv: torch.Tensor
               ) -> torch.Tensor:
        keys, values = self.ks[i], self.vs[i]
        keys.index_copy_(2, self.positions, xk)
        values.index_copy_(2, self.positions, xv)
        if self.mode != "verify":
            return sdpa(xq, keys, values, self.mode)
        if xq.is_cuda:
            # FlashAttention-2, whose causal mask is aligned to the end of the keys
            # (what reference.verify_mask dispatches to on a GPU; the CausalBias object
            # itself breaks torch.compile's graph)
            return torch.ops.aten._scaled_dot_product_flash_attention(
                xq, keys, values, 0.0, True)[0]
        # the CPU has no FlashAttention: the same mask, materialized from the positions
        allowed = torch.arange(keys.shape[2], device=xq.device)[None, :] \
            <= self.positions[:, None]
        return sdpa(xq, keys, values, "verify", allowed)


def compile_forward(m: Model, ks: list[torch.Tensor], vs: list[torch.Tensor],
                    tokens: torch.Tensor, positions: torch.Tensor, mode: str
                    ) -> torch.Tensor:
    """The torch-fused forward (fused_forward.run_layers) as torch.compile traces it,
    over IndexKV. tokens [B, q]; positions [q]. Returns logits [B*q, V] (prefill:
    [B, V])."""
    return run_layers(m, tokens, IndexKV(ks, vs, positions, mode))


class CompileStack:
    """``compile_forward`` under ``torch.compile`` as a serving engine uses it.

    Inductor (``backend``; tests pass ``"eager"`` for Dynamo alone), weights static, the
    batch, token count and key length dynamic (``maybe_mark_dynamic``), the position a
    tensor: one graph per mode for every batch size >= 2, ctx and q, and one more per
    mode for batch 1 (Dynamo specializes sizes 0 and 1). Duck sizing is off, so that two
    sizes that happen to be equal (batch 4, q 4) are not tied together by a guard, and
    a recompile past ``torch._dynamo.config.recompile_limit`` raises instead of running
    the step uncompiled; both settings are process-wide (``load`` sets them).

    The cache has one position more than asked for: a key view ``[:, :, :ctx + q]`` of
    it is then never contiguous, and a contiguous one would compile another graph (the
    compiled code guards the strides' relation).

    ``graphs`` counts the graphs compiled since ``load``. Once a call has compiled, the
    whole step (Dynamo's guards, Inductor's kernels) is captured in one CUDA graph. On an
    H100 with torch 2.11 a graph took 16-31 s to compile for Llama 3.2 1B and 53 s for
    Llama 3.1 8B, and its 1B decode step ran 211 kernels (torch-fused: 412): the KV
    writes fused into Triton kernels, no copy of the cache, cuDNN decode and
    FlashAttention-2 verify attention as in the eager stacks.
    """

    name = "torch-compile"

    def __init__(self, backend: str = "inductor"):
        self.backend = backend
        self.graphs = 0
        self.backend_s = 0.0    # seconds spent in the backend (Inductor), not in Dynamo
        self._fn: Callable[..., torch.Tensor] | None = None

    def _compile(self, gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        t0 = time.perf_counter()
        out = torch._dynamo.lookup_backend(self.backend)(gm, example_inputs)
        self.backend_s += time.perf_counter() - t0
        self.graphs += 1
        return out

    def settings(self) -> dict[str, object]:
        """The compile settings ``load`` applies (for env.json)."""
        return {"backend": self.backend, "mode": "default",
                "dynamic": "maybe_mark_dynamic: batch, q, key length",
                "use_duck_shape": False, "fail_on_recompile_limit_hit": True,
                "recompile_limit": torch._dynamo.config.recompile_limit}

    def load(self, shape: Shape, device: torch.device, dtype: torch.dtype
             ) -> reference.Weights:
        """Random weights, and a fresh compiled function: Dynamo's caches are reset, so
        the graphs (and ``graphs``) are this model's alone."""
        import torch.fx.experimental._config as fx_config
        fx_config.use_duck_shape = False
        torch._dynamo.config.fail_on_recompile_limit_hit = True
        torch._dynamo.reset()
        self.graphs, self.backend_s = 0, 0.0
        self._fn = torch.compile(compile_forward, backend=self._compile)
        return reference.Weights(shape, str(device), dtype)

    def new_cache(self, model: reference.Weights, batch: int, max_len: int,
                  device: torch.device, dtype: torch.dtype, seed: int = 1) -> LayerKV:
        s = model.shape
        size = (batch, s.num_key_value_heads, max_len + 1, s.d)
        g = torch.Generator(device=device).manual_seed(seed)

        def rnd() -> torch.Tensor:
            return torch.empty(size, device=device, dtype=dtype).normal_(generator=g)

        return LayerKV([rnd() for _ in range(s.num_hidden_layers)],
                       [rnd() for _ in range(s.num_hidden_layers)])

    def cache_len(self, cache: LayerKV) -> int:
        return cache.k[0].shape[2]

    def step(self, model: reference.Weights, cache: LayerKV, mode: str, batch: int,
             ctx: int, q: int, tokens: torch.Tensor | None = None) -> StepFn:
        """One compiled step (compiles on its first call unless a graph fits; raises
        ValueError, see check_step, and RuntimeError before ``load``)."""
        if self._fn is None:
            raise RuntimeError("CompileStack.step before load")
        check_step(mode, batch, ctx, q, cache.k[0].shape[0], self.cache_len(cache))
        device = cache.k[0].device
        if tokens is None:
            tokens = random_tokens(model.shape.vocab_size, batch, q, device)
        end = ctx + q
        ks = [t[:, :, :end] for t in cache.k]                              # [B, Hkv, end, D]
        vs = [t[:, :, :end] for t in cache.v]
        positions = torch.arange(ctx, end, device=device)                  # [q]
        for t in (*ks, *vs):
            torch._dynamo.maybe_mark_dynamic(t, 0)
            torch._dynamo.maybe_mark_dynamic(t, 2)
        torch._dynamo.maybe_mark_dynamic(tokens, 0)
        if q > 1:
            torch._dynamo.maybe_mark_dynamic(tokens, 1)
            torch._dynamo.maybe_mark_dynamic(positions, 0)
        fn, m = self._fn, fused_model(model)
        return lambda: fn(m, ks, vs, tokens, positions, mode)


# -------------------------------------------------------------------- hf-transformers
@dataclass
class HfCache:
    """A transformers StaticCache whose layers' write positions (``cumulative_length``)
    are views of one tensor ``written`` [L], so that one fill_ rewinds them all."""

    cache: object          # transformers.StaticCache
    written: torch.Tensor  # [L] int64
    max_len: int
    batch: int


def hf_config(shape: Shape) -> object:
    """A transformers config of ``shape`` (default RoPE, as reference.py): a LlamaConfig,
    or a Qwen3Config for a model with per-head q/k norms (no attention bias, every
    layer full attention: what reference.py runs)."""
    from transformers import LlamaConfig, Qwen3Config
    s = shape
    sizes = dict(
        vocab_size=s.vocab_size, hidden_size=s.hidden_size,
        intermediate_size=s.intermediate_size, num_hidden_layers=s.num_hidden_layers,
        num_attention_heads=s.num_attention_heads,
        num_key_value_heads=s.num_key_value_heads, head_dim=s.d,
        rms_norm_eps=s.rms_norm_eps, rope_theta=s.rope_theta,
        tie_word_embeddings=s.tie_word_embeddings, max_position_embeddings=HF_MAX_POSITIONS)
    if s.qk_norm:
        return Qwen3Config(**sizes, attention_bias=False, use_sliding_window=False)
    return LlamaConfig(**sizes)


def hf_model_class(shape: Shape) -> type:
    """transformers' causal-LM class of ``shape``: Qwen3's with q/k norms, else Llama's."""
    from transformers import LlamaForCausalLM, Qwen3ForCausalLM
    return Qwen3ForCausalLM if shape.qk_norm else LlamaForCausalLM


@torch.no_grad()
def hf_load_weights(model: torch.nn.Module, w: reference.Weights) -> None:
    """Copy reference.Weights into a transformers LlamaForCausalLM (Qwen3ForCausalLM) of
    the same shape (q/k/v and gate/up are row blocks of reference's fused wqkv and wgu;
    the q/k norms where the shape has them). Raises
    RuntimeError where a shape differs."""
    s = w.shape
    hd, kvd, inter = s.num_attention_heads * s.d, s.num_key_value_heads * s.d, s.intermediate_size
    inner = model.model  # type: ignore[attr-defined]
    inner.embed_tokens.weight.copy_(w.embed)
    for lw, layer in zip(w.layers, inner.layers, strict=True):
        att, mlp = layer.self_attn, layer.mlp
        att.q_proj.weight.copy_(lw["wqkv"][:hd])
        att.k_proj.weight.copy_(lw["wqkv"][hd: hd + kvd])
        att.v_proj.weight.copy_(lw["wqkv"][hd + kvd:])
        att.o_proj.weight.copy_(lw["wo"])
        mlp.gate_proj.weight.copy_(lw["wgu"][:inter])
        mlp.up_proj.weight.copy_(lw["wgu"][inter:])
        mlp.down_proj.weight.copy_(lw["wd"])
        layer.input_layernorm.weight.copy_(lw["norm1"])
        if s.qk_norm:
            att.q_norm.weight.copy_(lw["q_norm"])
            att.k_norm.weight.copy_(lw["k_norm"])
        layer.post_attention_layernorm.weight.copy_(lw["norm2"])
    inner.norm.weight.copy_(w.norm_f)
    if not s.tie_word_embeddings:
        model.lm_head.weight.copy_(w.lm_head)  # type: ignore[attr-defined]


class HfStack:
    """transformers' LlamaForCausalLM (Qwen3ForCausalLM: ``hf_model_class``; sdpa
    attention) over its StaticCache.

    The model is built from a config with the library's random initialisation, in
    ``dtype`` directly on the device. The cache is allocated for ``max_len`` positions
    (all of them random) and, as the library's static cache does, every step's
    attention reads all ``max_len`` of them: decode and verify (and, under CUDA-graph
    capture, prefill too) build a boolean mask over the whole cache, and with a mask
    sdpa gets the KV heads repeated to the query heads (``repeat_kv``). Eager prefill
    reads only its own keys, after a host sync that checks that the cache is empty.

    Each step first rewinds the cache's write position to ``ctx`` (one fill_ kernel;
    a decode loop advances it instead), then calls the model with ``logits_to_keep=1``
    in prefill (logits of the last position only). Checked with transformers 5.17 on an
    H100: eager and captured in a CUDA graph, decode, verify and prefill.
    """

    name = "hf-transformers"
    graphs = 0

    def load(self, shape: Shape, device: torch.device, dtype: torch.dtype
             ) -> torch.nn.Module:
        """Raises ImportError without transformers."""
        with torch.device(device):
            model = hf_model_class(shape)._from_config(hf_config(shape), dtype=dtype,
                                                       attn_implementation="sdpa")
        return model.eval().requires_grad_(False)

    def new_cache(self, model: torch.nn.Module, batch: int, max_len: int,
                  device: torch.device, dtype: torch.dtype, seed: int = 1) -> HfCache:
        """A StaticCache of ``max_len`` random positions. Raises RuntimeError where the
        installed transformers' static layers keep no ``cumulative_length`` tensor
        (checked with 5.17; the write position is read from it)."""
        from transformers import StaticCache
        cfg = model.config
        cache = StaticCache(config=cfg, max_cache_len=max_len)
        cache.early_initialization(batch, cfg.num_key_value_heads, cfg.head_dim, dtype,
                                   device)
        written = torch.zeros(len(cache.layers), dtype=torch.long, device=device)
        g = torch.Generator(device=device).manual_seed(seed)
        for i, layer in enumerate(cache.layers):
            if not isinstance(getattr(layer, "cumulative_length", None), torch.Tensor):
                raise RuntimeError(f"{type(layer).__name__} has no cumulative_length "
                                   "tensor: this transformers version is not supported")
            layer.keys.normal_(generator=g)
            layer.values.normal_(generator=g)
            layer.cumulative_length = written[i]
        return HfCache(cache, written, max_len, batch)

    def cache_len(self, cache: HfCache) -> int:
        return cache.max_len

    def step(self, model: torch.nn.Module, cache: HfCache, mode: str, batch: int,
             ctx: int, q: int, tokens: torch.Tensor | None = None) -> StepFn:
        """One model call (raises ValueError, see check_step)."""
        check_step(mode, batch, ctx, q, cache.batch, cache.max_len)
        vocab = model.config.vocab_size
        if tokens is None:
            tokens = random_tokens(vocab, batch, q, cache.written.device)
        keep = 1 if mode == "prefill" else 0     # 0: every position
        written = cache.written

        def run() -> torch.Tensor:
            written.fill_(ctx)
            out = model(input_ids=tokens, past_key_values=cache.cache, use_cache=True,
                        logits_to_keep=keep)
            return out.logits.reshape(-1, vocab)                           # [T_out, V]

        return run


STACKS: dict[str, Stack] = {
    "torch-hf": TorchStack("torch-hf", reference.forward),
    "torch-fused": TorchStack("torch-fused", fused_forward, fused_model),
    "torch-compile": CompileStack(),
    "hf-transformers": HfStack(),
}
