"""The cache kinds by name: `make_cache` builds one for a generation. It sits above the kinds (one file each,
beside it), which import only the interface (base.py)."""

from __future__ import annotations

import torch

from kvbench.caches.base import KVCache
from kvbench.caches.concat import ConcatCache
from kvbench.caches.fp8 import Fp8StaticCache
from kvbench.caches.int4 import Int4StaticCache
from kvbench.caches.int8 import Int8StaticCache
from kvbench.caches.paged import PagedCache
from kvbench.caches.sliding import SlidingCache
from kvbench.caches.static import StaticCache
from kvbench.core.presets import BLOCK_TOKENS, KV_GROUP_SIZE, KV_MODES, SLIDING_SINKS, SLIDING_WINDOW


def make_cache(
    kv_mode: str,
    *,
    n_layer: int,
    batch: int,
    n_kv_head: int,
    max_len: int,
    head_dim: int,
    dtype: torch.dtype,
    device: torch.device | str,
    kv_group_size: int = KV_GROUP_SIZE,
    window: int = SLIDING_WINDOW,
    sinks: int = SLIDING_SINKS,
    inv_freq: torch.Tensor | None = None,
    block_tokens: int = BLOCK_TOKENS,
) -> KVCache | None:
    """A fresh cache for one generation of at most `max_len` cached positions (None for mode 'none').

    kv_group_size: static-int4's; window, sinks: sliding's; block_tokens: paged's; inv_freq: the model's
    rotary frequencies (None for learned positions), with which sliding re-assigns positions within the cache.
    """
    if kv_mode == "none":
        return None
    if kv_mode == "concat":
        return ConcatCache(n_layer)
    shape = (n_layer, batch, n_kv_head, max_len, head_dim, dtype, device)
    if kv_mode == "static":
        return StaticCache(*shape)
    if kv_mode == "static-int8":
        return Int8StaticCache(*shape)
    if kv_mode == "static-int4":
        return Int4StaticCache(*shape, group_size=kv_group_size)
    if kv_mode == "static-fp8":
        return Fp8StaticCache(*shape)
    if kv_mode == "sliding":
        return SlidingCache(*shape, window=window, sinks=sinks, inv_freq=inv_freq)
    if kv_mode == "paged":
        return PagedCache(*shape, block_tokens=block_tokens)
    raise ValueError(f"kv_mode: {kv_mode!r} is not one of {', '.join(KV_MODES)}")
