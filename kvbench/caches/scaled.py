"""The 8-bit static caches: K,V stored one byte per element with one fp32 scale per (token, head), ~4x smaller
than fp32. Each step quantizes only the new K,V; attention reads the dequantized prefix, so the error it
costs shows up in the logits (recorded by the cell's token check).

int8 rounds each vector scaled to its absmax onto -127..127; fp8 stores it as float8 e4m3, as vLLM and
TensorRT-LLM store an fp8 KV cache: e4m3 keeps 3 mantissa bits over a wide range, so a vector scaled to its
absmax loses little. The two differ only in the storage dtype and the quantizer, so one class holds both.

A decode step attends over the codes themselves (kvbench/caches/fused.py: kvbench's C++ kernel, or inductor's fused
loop, with the scales folded into the scores and probabilities and the codes converted in registers), so it reads
the compressed bytes; the prefill, and
attention that a probe watches, take the dequantized prefix from `update`. Both compute the same quantities.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kvbench.caches import fused
from kvbench.caches.base import CacheShape, KVCache

E4M3_MAX = 448.0  # the largest finite float8_e4m3fn

Quantizer = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes, fp32 scale): each vector's absmax lands on 127."""
    scale = x.float().abs().amax(dim=-1, keepdim=True).clamp_min(1e-8) / 127.0
    return torch.round(x.float() / scale).clamp_(-127, 127).to(torch.int8), scale


def quantize_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 values, fp32 scale): each vector scaled so its absmax lands on e4m3's largest value."""
    scale = x.float().abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / E4M3_MAX
    return (x.float() / scale).clamp_(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), scale


def fp8_unsupported_reason(device: torch.device) -> str | None:
    """Why this torch or device cannot hold an e4m3 cache (None: it can), found by trying a cast and a copy."""
    dtype = getattr(torch, "float8_e4m3fn", None)
    if dtype is None:
        return f"kv_mode static-fp8: torch {torch.__version__} has no float8_e4m3fn"
    try:
        x = torch.tensor([0.5, -2.0], device=device)
        buf = torch.zeros(2, dtype=dtype, device=device)
        buf[:] = x.to(dtype)
        if not torch.equal(buf.float(), x):
            return f"kv_mode static-fp8: float8_e4m3fn round trip on {device.type} is wrong"
    except (RuntimeError, TypeError, NotImplementedError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        return f"kv_mode static-fp8: float8_e4m3fn on {device.type} fails: {first}"
    return None


class ScaledStaticCache(KVCache):
    """Preallocated for `shape.max_len` positions of `storage_dtype` codes, which `quantize` makes (with their
    scales) from a (..., head_dim) tensor; `update` returns the dequantized prefix in the model's dtype."""

    def __init__(self, shape: CacheShape, storage_dtype: torch.dtype, quantize: Quantizer):
        self.shape, self.quantize, self.dtype = shape, quantize, shape.dtype
        self.k = torch.zeros(shape.dims(), dtype=storage_dtype, device=shape.device)
        self.v = torch.zeros(shape.dims(), dtype=storage_dtype, device=shape.device)
        self.k_scale = torch.zeros(shape.dims()[:-1] + (1,), dtype=torch.float32, device=shape.device)
        self.v_scale = torch.zeros(shape.dims()[:-1] + (1,), dtype=torch.float32, device=shape.device)
        self.written = 0

    @property
    def max_len(self) -> int:
        return self.shape.max_len

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor, past_len: int) -> int:
        """Quantize the new K,V (each in one vectorized operation) into positions past_len..; the end."""
        end = past_len + k.size(2)
        self.shape.check_fits(end)
        for buf, scales, x in ((self.k, self.k_scale, k), (self.v, self.v_scale, v)):
            q, s = self.quantize(x)
            buf[layer, :, :, past_len:end] = q
            scales[layer, :, :, past_len:end] = s
        self.written = end
        return end

    def update(self, layer, k, v, past_len):
        end = self.store(layer, k, v, past_len)
        if k.size(2) == 1:  # a decode step that did not take the fused path (a probe, math attention)
            self.attention_path = fused.DEQUANTIZE
        return self.dequantized(layer, end)

    def attend_decode(self, layer, q, k, v, past_len):
        end = self.store(layer, k, v, past_len)
        at = (layer, slice(None), slice(None), slice(0, end))
        y, self.attention_path = fused.scaled_decode(q, self.k[at], self.k_scale[at], self.v[at], self.v_scale[at])
        if y is None:  # no compiler here: the reference way, over the codes just stored
            k_all, v_all = self.dequantized(layer, end)
            y = torch.nn.functional.scaled_dot_product_attention(q, k_all, v_all, enable_gqa=k_all.size(1) != q.size(1))
        return y

    def write_at(self, layer: int, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor):
        """The static-shape step: the new codes at the positions in `pos`; the whole buffers, dequantized."""
        self.store_at(layer, k, v, pos)
        return self.dequantized(layer, self.max_len)

    def attend_at(self, layer, q, k, v, pos, mask):
        """The static-shape step over the codes themselves, inside the compiled step (the kernel as an extern call,
        or inductor's fused loop)."""
        self.store_at(layer, k, v, pos)
        y, self.attention_path = fused.scaled_at(q, self.k[layer], self.k_scale[layer], self.v[layer],
                                                 self.v_scale[layer], mask)  # fmt: skip
        return y

    def store_at(self, layer: int, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor) -> None:
        """One index_put_ per buffer on the whole buffer (as StaticCache.write_at: in place when compiled)."""
        at = (pos.new_full(pos.shape, layer), slice(None), slice(None), pos)  # indexed dims first: (T, B, H, D)
        for buf, scales, x in ((self.k, self.k_scale, k), (self.v, self.v_scale, v)):
            q, s = self.quantize(x)
            buf[at] = q.permute(2, 0, 1, 3)
            scales[at] = s.permute(2, 0, 1, 3)

    def dequantized(self, layer: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        at = (layer, slice(None), slice(None), slice(0, end))
        k_all = (self.k[at].float() * self.k_scale[at]).to(self.dtype)
        return k_all, (self.v[at].float() * self.v_scale[at]).to(self.dtype)

    def reset(self) -> None:
        """Empty the cache in place (a compiled step keeps the buffers' addresses)."""
        for t in self.tensors():
            t.zero_()
        self.written = 0

    def tensors(self):
        return [self.k, self.v, self.k_scale, self.v_scale]

    def bytes_used(self) -> int:
        """The written positions' codes and scales."""
        return self.nbytes() // self.max_len * self.written


class Int8StaticCache(ScaledStaticCache):
    def __init__(self, shape: CacheShape):
        super().__init__(shape, torch.int8, quantize_int8)


class Fp8StaticCache(ScaledStaticCache):
    def __init__(self, shape: CacheShape):
        super().__init__(shape, torch.float8_e4m3fn, quantize_fp8)
