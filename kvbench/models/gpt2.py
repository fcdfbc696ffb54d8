"""A nanoGPT-style GPT-2: learned positions, pre-LayerNorm blocks, GELU MLP, tied LM head.

The only addition to nanoGPT's model is an optional KV cache threaded through `forward`:
positions continue from the cache length, and the causal mask is offset when there are
fewer queries than keys. Optional grouped-query attention (`n_kv_head < n_head`) shrinks
the cache for the GQA experiment; GPT-2 itself has `n_kv_head == n_head`. The forward, the
attention from q, k, v on and the init are every family's (decoder.py, attention.py): what is
here is GPT-2's own projections, norms and embeddings.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kvbench.core.presets import ATTENTION_IMPLS, PRESETS, GPTConfig, preset  # noqa: F401  (re-exported)
from kvbench.models.attention import CachedAttention, Context
from kvbench.models.decoder import Decoder
from kvbench.models.weights import prepare_for_decoding, seeded_init, skip_default_init  # noqa: F401  (re-exported)


class CausalSelfAttention(CachedAttention):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__(layer_idx)
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        qkv_out = (self.n_head + 2 * self.n_kv_head) * self.head_dim
        self.c_attn = nn.Linear(config.n_embd, qkv_out, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        B, T, _ = x.shape
        hd = self.head_dim
        q, k, v = self.c_attn(x).split([self.n_head * hd, self.n_kv_head * hd, self.n_kv_head * hd], dim=2)
        q = q.view(B, T, self.n_head, hd).transpose(1, 2)
        k = k.view(B, T, self.n_kv_head, hd).transpose(1, 2)
        v = v.view(B, T, self.n_kv_head, hd).transpose(1, 2)
        return self.c_proj(self.attend(q, k, v, ctx))


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

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), ctx)
        return x + self.mlp(self.ln_2(x))


class GPT(Decoder):
    residual_projections = ("c_proj.weight",)  # attention's and the MLP's: nanoGPT's scaled init

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

    @property
    def blocks(self) -> nn.ModuleList:
        return self.transformer.h

    @property
    def final_norm(self) -> nn.Module:
        return self.transformer.ln_f

    def tie_weights(self) -> None:
        self.lm_head.weight = self.transformer.wte.weight

    def embed(self, idx: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.transformer.wte(idx) + self.transformer.wpe(pos)  # learned absolute positions


def empty_gpt(config: GPTConfig, device: torch.device | str, dtype: torch.dtype) -> GPT:
    """A GPT with uninitialised weights on `device` in `dtype`, for the caller to fill (Decoder.empty)."""
    return GPT.empty(config, device, dtype)


def build_random(
    config: GPTConfig, device: torch.device | str, dtype: torch.dtype, seed: int, for_decoding: bool = False
) -> GPT:
    """A GPT with seeded random weights (nanoGPT's init, run once), directly on `device` in `dtype`."""
    return seeded_init(empty_gpt(config, device, dtype), seed, for_decoding)
