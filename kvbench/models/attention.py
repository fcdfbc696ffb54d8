"""Causal attention shared by every model family: the masks, grouped-query K/V, SDPA or explicit math.

Each family computes its own q, k, v (with or without rotary positions); from there attention is
the same computation, so it lives here once and both families call it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

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
