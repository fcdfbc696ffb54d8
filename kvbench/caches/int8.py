"""An int8 static cache: one absmax scale per (token, head), ~4x smaller than fp32."""

from __future__ import annotations

import torch

from kvbench.caches.base import KVCache


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
