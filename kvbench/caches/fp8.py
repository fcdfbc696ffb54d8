"""An fp8 static cache: K,V stored as float8 e4m3 with one fp32 scale per (token, head), as vLLM and
TensorRT-LLM store an fp8 KV cache. e4m3 keeps 3 mantissa bits over a wide range, so a vector scaled to
its absmax loses little; the bytes are those of the int8 cache (1 per element plus the scales).
"""

from __future__ import annotations

import torch

from kvbench.caches.base import KVCache

E4M3_MAX = 448.0  # the largest finite float8_e4m3fn


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


class Fp8StaticCache(KVCache):
    """Preallocated for `max_len` positions; `update` returns the dequantized prefix in the model's dtype."""

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
        self.k = torch.zeros(shape, dtype=torch.float8_e4m3fn, device=device)
        self.v = torch.zeros(shape, dtype=torch.float8_e4m3fn, device=device)
        self.k_scale = torch.zeros(shape[:-1] + (1,), dtype=torch.float32, device=device)
        self.v_scale = torch.zeros(shape[:-1] + (1,), dtype=torch.float32, device=device)
        self.max_len, self.dtype = max_len, dtype

    @staticmethod
    def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(e4m3 values, fp32 scale): each vector scaled so its absmax lands on e4m3's largest value."""
        scale = x.float().abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / E4M3_MAX
        return (x.float() / scale).clamp_(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), scale

    def update(self, layer, k, v, past_len):
        end = past_len + k.size(2)
        if end > self.max_len:
            raise ValueError(f"static cache holds {self.max_len} positions, step needs {end}")
        for buf, scales, x in ((self.k, self.k_scale, k), (self.v, self.v_scale, v)):
            q, s = self.quantize(x)
            buf[layer, :, :, past_len:end] = q
            scales[layer, :, :, past_len:end] = s
        k_all = (self.k[layer, :, :, :end].float() * self.k_scale[layer, :, :, :end]).to(self.dtype)
        v_all = (self.v[layer, :, :, :end].float() * self.v_scale[layer, :, :, :end]).to(self.dtype)
        return k_all, v_all

    def tensors(self):
        return [self.k, self.v, self.k_scale, self.v_scale]
