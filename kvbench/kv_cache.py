"""Key/value caches for decoding: how past keys and values are kept between steps.

`ConcatCache` is the write-ups' cache: every step concatenates the new K,V onto the old
ones, so each step allocates and copies the whole cache again. `StaticCache` preallocates
(B, H_kv, T_max, D) per layer once and writes each step's K,V in place, as gpt-fast,
nanochat and Hugging Face's StaticCache do.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

# The byte count lives with the shapes (importable without torch, for the analysis side).
from kvbench.presets import (  # noqa: F401  (re-exported)
    BLOCK_TOKENS,
    INT8_SCALE_BYTES,
    KV_GROUP_SIZE,
    KV_MODES,
    SLIDING_SINKS,
    SLIDING_WINDOW,
    kv_cache_bytes,
)


class KVCache(ABC):
    """Interface: `update` stores the new K,V of one layer and returns all K,V so far."""

    @abstractmethod
    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, past_len: int
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def nbytes(self) -> int:
        """Bytes held by the cache's tensors, measured from the tensors themselves."""
        return sum(t.numel() * t.element_size() for t in self.tensors())

    @abstractmethod
    def tensors(self) -> list[torch.Tensor]: ...


class ConcatCache(KVCache):
    def __init__(self, n_layer: int):
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer

    def update(self, layer, k, v, past_len):
        if self.k[layer] is None:
            self.k[layer], self.v[layer] = k, v
        else:
            if self.k[layer].size(2) != past_len:
                raise ValueError(f"cache holds {self.k[layer].size(2)} positions, step claims {past_len}")
            self.k[layer] = torch.cat([self.k[layer], k], dim=2)
            self.v[layer] = torch.cat([self.v[layer], v], dim=2)
        return self.k[layer], self.v[layer]

    def tensors(self):
        return [t for t in self.k + self.v if t is not None]

    def length(self) -> int:
        return 0 if self.k[0] is None else self.k[0].size(2)


class StaticCache(KVCache):
    def __init__(
        self,
        n_layer: int,
        batch: int,
        n_kv_head: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ):
        shape = (n_layer, batch, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len

    def update(self, layer, k, v, past_len):
        end = past_len + k.size(2)
        if end > self.max_len:
            raise ValueError(f"static cache holds {self.max_len} positions, step needs {end}")
        self.k[layer, :, :, past_len:end] = k
        self.v[layer, :, :, past_len:end] = v
        # Views of the prefix: no copy, and the buffer's storage never moves.
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def write_at(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store K,V at the positions held in the tensor `pos`; return the *whole* buffers.

        The static-shape step: every call sees the same shapes whatever the position, so a
        compiled step (a CUDA graph on GPU) replays without recompiling. The caller masks
        the positions not written yet.
        """
        # One index_put_ on the whole buffer, not index_copy_ into a per-layer view: inductor turns a
        # view's mutation into a copy of the layer's cache plus a copy back, while a whole-buffer
        # index_put_ is written in place (measured under torch.profiler, compiled gpt2 CPU step at
        # prompt 128: 28.5 -> 20.1 ms).
        at = (pos.new_full(pos.shape, layer), slice(None), slice(None), pos)  # indexed dims first: (T, B, H, D)
        self.k[at] = k.permute(2, 0, 1, 3)
        self.v[at] = v.permute(2, 0, 1, 3)
        return self.k[layer], self.v[layer]

    def reset(self) -> None:
        """Empty the cache in place (a compiled step keeps the buffers' addresses)."""
        self.k.zero_()
        self.v.zero_()

    def tensors(self):
        return [self.k, self.v]


class Int8StaticCache(KVCache):
    """A static cache stored as int8 with one absmax scale per (token, head): ~4x smaller than fp32.

    Each step quantises only the new K,V; attention reads the dequantised prefix, so the
    error it costs shows up in the logits (recorded by the cell's token check).
    """

    def __init__(
        self,
        n_layer: int,
        batch: int,
        n_kv_head: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ):
        shape = (n_layer, batch, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=torch.int8, device=device)
        self.v = torch.zeros(shape, dtype=torch.int8, device=device)
        self.k_scale = torch.zeros(shape[:-1] + (1,), dtype=torch.float32, device=device)
        self.v_scale = torch.zeros(shape[:-1] + (1,), dtype=torch.float32, device=device)
        self.max_len, self.dtype = max_len, dtype

    @staticmethod
    def _quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = x.float().abs().amax(dim=-1, keepdim=True).clamp_min(1e-8) / 127.0
        return torch.round(x.float() / scale).clamp_(-127, 127).to(torch.int8), scale

    def update(self, layer, k, v, past_len):
        end = past_len + k.size(2)
        if end > self.max_len:
            raise ValueError(f"static cache holds {self.max_len} positions, step needs {end}")
        for buf, scales, x in ((self.k, self.k_scale, k), (self.v, self.v_scale, v)):
            q, s = self._quantize(x)
            buf[layer, :, :, past_len:end] = q
            scales[layer, :, :, past_len:end] = s
        k_all = (self.k[layer, :, :, :end].float() * self.k_scale[layer, :, :, :end]).to(self.dtype)
        v_all = (self.v[layer, :, :, :end].float() * self.v_scale[layer, :, :, :end]).to(self.dtype)
        return k_all, v_all

    def tensors(self):
        return [self.k, self.v, self.k_scale, self.v_scale]


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
    # The approximate caches live beside this module and import its interface.
    if kv_mode == "static-int4":
        from kvbench.kv_cache_int4 import Int4StaticCache

        return Int4StaticCache(*shape, group_size=kv_group_size)
    if kv_mode == "static-fp8":
        from kvbench.kv_cache_fp8 import Fp8StaticCache

        return Fp8StaticCache(*shape)
    if kv_mode == "sliding":
        from kvbench.kv_cache_sliding import SlidingCache

        return SlidingCache(*shape, window=window, sinks=sinks, inv_freq=inv_freq)
    if kv_mode == "paged":
        from kvbench.kv_cache_paged import PagedCache

        return PagedCache(*shape, block_tokens=block_tokens)
    raise ValueError(f"kv_mode: {kv_mode!r} is not one of {', '.join(KV_MODES)}")
