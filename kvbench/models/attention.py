"""Causal attention shared by every model family: the cache, the masks, grouped-query K/V, SDPA or math.

Each family computes its own q, k, v (its projections, rotary positions or not); from there attention
is the same computation, so it lives here once: a family's attention module subclasses
`CachedAttention` and calls its `attend`, whichever way the forward runs (no cache, a growing cache,
a ragged batch's mask, a static-shape step).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from kvbench.caches.base import KVCache
from kvbench.caches.static import StaticCache
from kvbench.core.presets import ATTENTION_IMPLS


@dataclass
class StaticStep:
    """Where a static-shape decode step writes: the positions as a tensor, and the key mask."""

    cache: StaticCache
    pos: torch.Tensor  # (T,) absolute positions of the new tokens
    mask: torch.Tensor  # (T, T_max) True = may attend

    @classmethod
    def at(cls, cache: StaticCache, pos: torch.Tensor) -> StaticStep:
        """The step writing at `pos`, which may attend to every key up to its own position."""
        keys = torch.arange(cache.max_len, device=pos.device)
        return cls(cache, pos, keys.unsqueeze(0) <= pos.unsqueeze(1))


def check_impl(impl: str) -> str:
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention: {impl!r} is not one of {', '.join(ATTENTION_IMPLS)}")
    return impl


def causal_mask(t_q: int, t_k: int, device: torch.device) -> torch.Tensor:
    """Boolean (t_q, t_k) mask, True = may attend. Query i sits at absolute position t_k - t_q + i."""
    offset = t_k - t_q
    q_pos = torch.arange(t_q, device=device).unsqueeze(1) + offset
    return torch.arange(t_k, device=device).unsqueeze(0) <= q_pos


def expand_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Grouped-query attention: each K/V head serves n_head / n_kv_head consecutive query heads."""
    if k.size(1) == q.size(1):
        return k, v
    rep = q.size(1) // k.size(1)
    return k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)


def grouped(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Fewer K/V heads than query heads: SDPA then reads each K/V head for its whole group of query
    heads itself (enable_gqa), where copying K/V out to every query head costs a copy of the cache per
    layer and step (measured: the largest cost after the matrix products in a SmolLM2 CPU decode step)."""
    return k.size(1) != q.size(1)


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Explicit softmax attention, as write-up 003 used to keep fused kernels out of the comparison."""
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))
    if mask is not None:
        att = att.masked_fill(~mask, float("-inf"))
    att = F.softmax(att.float(), dim=-1).to(q.dtype)
    return att @ v


def attend_masked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, impl: str) -> torch.Tensor:
    """Attention over every key with an explicit (T_q, T_k) boolean mask (the static-shape step)."""
    if impl == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=grouped(q, k))
    return math_attention(q, *expand_kv(q, k, v), mask)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past_len: int, impl: str) -> torch.Tensor:
    """Causal attention of T new queries over past_len + T keys."""
    t_q, t_k = q.size(2), k.size(2)
    if impl == "sdpa":
        gqa = grouped(q, k)
        # SDPA's is_causal aligns the mask top-left, which is wrong once keys outnumber queries
        # (a cached decode step would see only key 0), so it is used only without a past.
        if t_k == t_q:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        if t_q == 1:  # one new token attends to everything before it: no mask at all
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(t_q, t_k, q.device), enable_gqa=gqa)
    if impl == "math":
        return math_attention(q, *expand_kv(q, k, v), causal_mask(t_q, t_k, q.device) if t_q > 1 else None)
    raise ValueError(f"attention: {impl!r} is not one of {', '.join(ATTENTION_IMPLS)}")


@dataclass
class Context:
    """What every layer of one forward shares: where the new tokens sit and what they may attend to.

    Made once per forward by the model (kvbench/models/decoder.py), read by each layer's attention.
    """

    cache: KVCache | None = None  # the growing cache this forward extends (None: attend to the new tokens only)
    past_len: int = 0  # positions the cache holds before these tokens
    mask: torch.Tensor | None = None  # a ragged batch's (B, 1, T, T_k) mask (kvbench/caches/ragged.py)
    step: StaticStep | None = None  # a static-shape decode step: the whole buffer, unwritten positions masked
    # Rotary families: rotates (B, T, heads, hd) by each token's position, its tables made once per forward.
    rotate: Callable[[torch.Tensor], torch.Tensor] | None = None


class CachedAttention(nn.Module):
    """Self-attention from q, k, v on, the same for every family: the cache, then causal attention.

    A family's attention module subclasses this, makes q (B, H, T, hd) and k, v (B, Hkv, T, hd) with
    its own projections, calls `attend`, and projects the (B, T, H * hd) result back. The module holds
    no weights of its own, so the family's parameter names and init order are its own.
    """

    def __init__(self, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.attention = "sdpa"  # or "math" (ATTENTION_IMPLS), set by the model's set_attention
        # Optional observer of (q, all K, all V) after the cache update; the visualizer sets it.
        self.probe: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: Context) -> torch.Tensor:
        """The new tokens' attention output (B, T, H * hd), heads side by side, after storing k, v."""
        own = self.attention == "sdpa" and self.probe is None  # the cache may attend over its own storage
        if ctx.step is not None:  # static shapes: the whole buffer, unwritten positions masked
            cache, pos, mask = ctx.step.cache, ctx.step.pos, ctx.step.mask
            y = cache.attend_at(self.layer_idx, q, k, v, pos, mask) if own else None
            if y is None:
                y = attend_masked(q, *cache.write_at(self.layer_idx, k, v, pos), mask, self.attention)
        else:
            unmasked = ctx.mask is None or (ctx.cache is not None and ctx.cache.reads_layout)
            one = own and ctx.cache is not None and unmasked and q.size(2) == 1
            y = ctx.cache.attend_decode(self.layer_idx, q, k, v, ctx.past_len) if one else None
            if y is None:
                y = self.attend_all(q, k, v, ctx)
        B, H, T, hd = y.shape
        return y.transpose(1, 2).reshape(B, T, H * hd)

    def attend_all(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: Context) -> torch.Tensor:
        """Store k, v in the cache (if any) and attend over every key it returns: (B, H, T, hd)."""
        if ctx.cache is not None:  # all keys so far: (B, Hkv, past + T, hd)
            k, v = ctx.cache.update(self.layer_idx, k, v, ctx.past_len)
        if self.probe is not None:
            self.probe(q, k, v)
        if ctx.mask is None:
            return attend(q, k, v, ctx.past_len, self.attention)
        return attend_masked(q, k, v, ctx.mask, self.attention)  # a ragged batch: causal, never into its gap
