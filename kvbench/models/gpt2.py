"""A nanoGPT-style GPT-2: learned positions, pre-LayerNorm blocks, GELU MLP, tied LM head.

The only addition to nanoGPT's model is an optional KV cache threaded through `forward`:
positions continue from the cache length, and the causal mask is offset when there are
fewer queries than keys. Optional grouped-query attention (`n_kv_head < n_head`) shrinks
the cache for the GQA experiment; GPT-2 itself has `n_kv_head == n_head`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from kvbench.caches.base import KVCache
from kvbench.caches.ragged import Layout
from kvbench.caches.static import StaticCache
from kvbench.core.presets import ATTENTION_IMPLS, PRESETS, GPTConfig, preset  # noqa: F401  (re-exported)
from kvbench.models.attention import StaticStep, attend, attend_masked, check_impl
from kvbench.models.weights import prepare_for_decoding, seeded_init, skip_default_init  # noqa: F401  (re-exported)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        qkv_out = (self.n_head + 2 * self.n_kv_head) * self.head_dim
        self.c_attn = nn.Linear(config.n_embd, qkv_out, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attention = "sdpa"
        # Optional observer of (q, all K, all V) after the cache update; the visualizer sets it.
        self.probe: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None,
        past_len: int,
        step: StaticStep | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        hd = self.head_dim
        q, k, v = self.c_attn(x).split([self.n_head * hd, self.n_kv_head * hd, self.n_kv_head * hd], dim=2)
        q = q.view(B, T, self.n_head, hd).transpose(1, 2)
        k = k.view(B, T, self.n_kv_head, hd).transpose(1, 2)
        v = v.view(B, T, self.n_kv_head, hd).transpose(1, 2)
        if step is not None:  # static shapes: the whole buffer, unwritten positions masked
            k, v = step.cache.write_at(self.layer_idx, k, v, step.pos)
            y = attend_masked(q, k, v, step.mask, self.attention)
        else:
            if cache is not None:
                k, v = cache.update(self.layer_idx, k, v, past_len)  # all keys so far: (B, Hkv, past+T, hd)
            if self.probe is not None:
                self.probe(q, k, v)
            if mask is None:
                y = attend(q, k, v, past_len, self.attention)
            else:  # a ragged batch's (B, 1, T, T_k) mask (kvbench/caches/ragged.py): causal, never into its gap
                y = attend_masked(q, k, v, mask, self.attention)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))  # GPT-2's gelu_new


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None,
        past_len: int,
        step: StaticStep | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, past_len, step, mask)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        if config.family != "gpt2":
            raise ValueError(f"GPT: a {config.family} config builds with kvbench.models.family.build_random, not GPT-2")
        config.validate()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        self.lm_head.weight = self.transformer.wte.weight

    def attention_layer(self, i: int) -> CausalSelfAttention:
        """Layer i's attention module (its `probe` observes q, K, V): the same call on every family."""
        return self.transformer.h[i].attn

    def set_attention(self, impl: str) -> None:
        for block in self.transformer.h:
            block.attn.attention = check_impl(impl)

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator) -> None:
        """nanoGPT's init: N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layer)."""
        std_proj = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if p.dim() >= 2 and not p.is_contiguous():
                p = p.t()  # an input-major weight: fill its storage in order (8x faster than strided)
            if name.endswith("c_proj.weight"):
                p.normal_(0.0, std_proj, generator=generator)
            elif p.dim() >= 2:
                p.normal_(0.0, 0.02, generator=generator)
            elif ".ln" in name or name.startswith("transformer.ln_f"):
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                p.zero_()

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied head counted once

    def forward(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        past_len: int = 0,
        last_only: bool = True,
        layout: Layout | None = None,
    ) -> torch.Tensor:
        """Logits for idx (B, T) placed after `past_len` cached positions.

        last_only: return only the last position's logits (B, 1, V), all generation needs,
        which skips most of the LM-head work during prefill, as nanoGPT does at inference.
        layout: a ragged batch's lengths (kvbench/caches/ragged.py): per-sequence positions, a masked gap,
        and each sequence's own last prompt token.
        """
        B, T = idx.shape
        if past_len + T > self.config.block_size:
            raise ValueError(f"sequence of {past_len + T} tokens exceeds block_size {self.config.block_size}")
        if layout is None:
            pos, mask = torch.arange(past_len, past_len + T, device=idx.device), None
        else:
            pos, mask = layout.positions(past_len, T), layout.mask(past_len, T)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x, cache, past_len, None, mask)
        x = self.transformer.ln_f(x)
        if last_only:
            x = x[:, -1:, :] if layout is None else layout.last(x, past_len)
        return self.lm_head(x)

    def static_step(self, idx: torch.Tensor, pos: torch.Tensor, cache: StaticCache) -> torch.Tensor:
        """Logits (B, 1, V) of one decode step with static shapes: the step to compile.

        idx (B, 1) is the token at absolute position pos (a (1,) long tensor, not a Python int,
        so the position is data rather than a constant baked into a compiled graph). Attention
        reads the whole preallocated buffer with the positions after `pos` masked: every step
        has the same shapes, so a compiled step (a CUDA graph on GPU) replays without recompiling.
        """
        step = StaticStep.at(cache, pos)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x, None, 0, step)
        return self.lm_head(self.transformer.ln_f(x))


def empty_gpt(config: GPTConfig, device: torch.device | str, dtype: torch.dtype) -> GPT:
    """A GPT with uninitialised weights on `device` in `dtype`, for the caller to fill.

    Built on the meta device first, so no fp32 CPU copy is made and no init runs: a gpt2-xl
    on a GPU takes seconds instead of a minute of CPU init.
    """
    with torch.device("meta"), skip_default_init():
        model = GPT(config)
    model = model.to(dtype=dtype).to_empty(device=torch.device(device))
    model.tie_weights()  # to_empty materialises the shared parameter twice; tie it again
    return model


def build_random(
    config: GPTConfig, device: torch.device | str, dtype: torch.dtype, seed: int, for_decoding: bool = False
) -> GPT:
    """A GPT with seeded random weights (nanoGPT's init, run once), directly on `device` in `dtype`."""
    return seeded_init(empty_gpt(config, device, dtype), seed, for_decoding)
