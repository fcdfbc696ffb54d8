"""A 4-bit static cache, grouped as KIVI quantizes it: keys per channel, values per token.

Keys have a few outlier channels, so each channel gets its own scale, shared by a group of
`group_size` consecutive tokens; values have no such channels and are quantized per token, over
groups of `group_size` channels. Both are asymmetric (a scale and a zero point, fp16, per group) and
stored as 4-bit codes packed two per byte, so the bytes the cache holds are the bytes it counts. A
key group can only be quantized once its tokens are all there: until then they wait in a
full-precision residual of `group_size` positions (KIVI's residual), which is why a cache shorter
than one group holds its keys exactly.

A decode step attends over the packed codes themselves (kvbench/caches/fused.py: kvbench's C++ kernel, or
inductor's int4_attention, unpack and dequantize inside the dot products, the residual's keys beside them), so it
reads the 4-bit bytes; the prefill
quantizes every complete group of its keys in one operation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kvbench.caches import fused
from kvbench.caches.base import CacheShape, KVCache
from kvbench.core.presets import KV_GROUP_SIZE
from kvbench.kernels import int4_store

LEVELS = 15  # 4 bits: codes 0..15


def pack(q: torch.Tensor) -> torch.Tensor:
    """uint8 codes 0..15 (..., D) -> (..., D/2) bytes, two codes each (low nibble first)."""
    return q[..., 0::2] | (q[..., 1::2] << 4)


def unpack(p: torch.Tensor) -> torch.Tensor:
    """(..., D/2) packed bytes -> (..., D) uint8 codes."""
    return torch.stack((p & 0xF, p >> 4), dim=-1).flatten(-2)


def quantize(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric 4-bit codes of x over `dim`: (uint8 codes, fp16 scale, fp16 zero point), keepdim.

    The scale and zero point are rounded to fp16 first and the codes computed from the rounded
    values, so dequantizing with what is stored errs by at most half a step.
    """
    x = x.float()
    lo, hi = x.amin(dim=dim, keepdim=True), x.amax(dim=dim, keepdim=True)
    zero = lo.half()
    scale = ((hi - zero.float()) / LEVELS).clamp_min(1e-6).half()
    q = torch.round((x - zero.float()) / scale.float()).clamp_(0, LEVELS).to(torch.uint8)
    return q, scale, zero


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float() + zero.float()


class Int4StaticCache(KVCache):
    """Preallocated for `shape.max_len` positions; `update` returns the dequantized prefix in the model's dtype."""

    settings = ("kv_group_size",)

    def __init__(self, shape: CacheShape, kv_group_size: int = KV_GROUP_SIZE):
        group_size, head_dim, max_len = kv_group_size, shape.head_dim, shape.max_len
        value_group = min(group_size, head_dim)
        if head_dim % 2 or head_dim % value_group:
            raise ValueError(f"kv_group_size: {group_size} must divide head_dim {head_dim} or be at least it")
        self.shape, self.G, self.vg, self.D = shape, group_size, value_group, head_dim
        self.full = max_len // group_size  # key groups that can fill; later positions stay in the residual
        lbh = shape.dims()[:3]
        u8, f16 = dict(dtype=torch.uint8, device=shape.device), dict(dtype=torch.float16, device=shape.device)
        self.kq = torch.zeros(lbh + (self.full * group_size, head_dim // 2), **u8)
        self.k_scale = torch.zeros(lbh + (self.full, 1, head_dim), **f16)
        self.k_zero = torch.zeros(lbh + (self.full, 1, head_dim), **f16)
        self.k_res = torch.zeros(shape.dims(min(group_size, max_len)), dtype=shape.dtype, device=shape.device)
        self.vq = torch.zeros(lbh + (max_len, head_dim // 2), **u8)
        self.v_scale = torch.zeros(lbh + (max_len, head_dim // value_group, 1), **f16)
        self.v_zero = torch.zeros(lbh + (max_len, head_dim // value_group, 1), **f16)
        self.max_len, self.dtype = max_len, shape.dtype
        self.written = 0
        # The static-shape step's store through kvbench's C++ kernel where it runs (asked here, outside a compiled
        # region); else in torch ops, which quantize the open group every step.
        self.store_kernel = int4_store.fits(self.k_res, self.tensors()) and int4_store.available()

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor, past_len: int) -> int:
        """Quantize the new K,V into positions past_len..; the end."""
        end = past_len + k.size(2)
        self.shape.check_fits(end)
        self._store_values(layer, v, past_len, end)
        self._store_keys(layer, k, past_len, end)
        self.written = end
        return end

    def update(self, layer, k, v, past_len):
        if k.size(2) == 1:  # a decode step that did not take the fused path (a probe, math attention)
            self.attention_path = fused.DEQUANTIZE
        end = self.store(layer, k, v, past_len)
        return self._keys(layer, end), self._values(layer, end)

    def _store_values(self, layer: int, v: torch.Tensor, start: int, end: int) -> None:
        B, H, T, D = v.shape
        q, scale, zero = quantize(v.reshape(B, H, T, D // self.vg, self.vg), dim=-1)
        self.vq[layer, :, :, start:end] = pack(q.reshape(B, H, T, D))
        self.v_scale[layer, :, :, start:end] = scale
        self.v_zero[layer, :, :, start:end] = zero

    def _store_keys(self, layer: int, k: torch.Tensor, start: int, end: int) -> None:
        """Positions start..end: the open group's rows into the residual (quantized once it fills), every complete
        group after it quantized per channel in one operation, the tail into the residual."""
        G, B, H, _, D = self.G, *k.shape
        mid = min(end, -(-start // G) * G)  # the open group's end (start itself at a group boundary)
        if mid > start:
            self.k_res[layer, :, :, start % G : start % G + mid - start] = k[:, :, : mid - start]
            if mid % G == 0 and mid // G - 1 < self.full:
                self._store_groups(layer, self.k_res[layer].unsqueeze(2), mid - G)
        full_end = max(mid, min(end // G, self.full) * G)  # complete groups that start at or after `mid`
        if full_end > mid:
            n = (full_end - mid) // G
            self._store_groups(layer, k[:, :, mid - start : full_end - start].reshape(B, H, n, G, D), mid)
        if end > full_end:  # a group still open (or one past the last that can fill): the residual
            self.k_res[layer, :, :, full_end % G : full_end % G + end - full_end] = k[:, :, full_end - start :]

    def _store_groups(self, layer: int, groups: torch.Tensor, at: int) -> None:
        """Quantize (B, H, n, G, D) complete key groups per channel over their tokens, from position `at`."""
        B, H, n, G, D = groups.shape
        q, scale, zero = quantize(groups, dim=-2)
        self.kq[layer, :, :, at : at + n * G] = pack(q.reshape(B, H, n * G, D))
        self.k_scale[layer, :, :, at // G : at // G + n] = scale
        self.k_zero[layer, :, :, at // G : at // G + n] = zero

    def attend_decode(self, layer, q, k, v, past_len):
        """One token per sequence: store it, then attend over the packed codes and the residual in one kernel
        (caches/fused.py: kvbench's C++ kernel, or inductor's int4_attention), unpacking and dequantizing inside
        the dot products."""
        end = self.store(layer, k, v, past_len)
        done = min(end // self.G, self.full)
        kq, ks, kz = self.kq[layer], self.k_scale[layer], self.k_zero[layer]
        keys = (kq[:, :, : done * self.G], ks[:, :, :done], kz[:, :, :done])
        values = (self.vq[layer, :, :, :end], self.v_scale[layer, :, :, :end], self.v_zero[layer, :, :, :end])
        held = end - done * self.G  # the residual's rows holding a position
        y, self.attention_path = fused.int4_decode(q, *keys, self.k_res[layer], held, *values)
        if y is None:
            k_all, v_all = self._keys(layer, end), self._values(layer, end)
            y = F.scaled_dot_product_attention(q, k_all, v_all, enable_gqa=k_all.size(1) != q.size(1))
        return y

    def store_at(self, layer: int, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor) -> None:
        """The static-shape step's store (one token at the position held in the tensor `pos`), in whole-buffer
        index_put_s so a compiled step writes in place: the value's codes at pos; the key into its residual row
        (pos % G, as `store` puts it) and the residual quantized into its group's slot (pos // G). Only a complete
        group's slot is ever read (the open group's keys are read from the residual), so the slot is written again
        each step until the group's last row arrives, which quantizes exactly the rows `store` would."""
        if k.size(2) != 1:
            raise ValueError("static-int4: the static-shape step feeds one token at a time")
        if self.store_kernel:  # kvbench's C++ store: the group quantized only when this token completes it
            int4_store.store_at(*self.tensors(), k, v, pos, layer, self.G)
            return
        B, H, _, D = v.shape
        at = (pos.new_full(pos.shape, layer), slice(None), slice(None), pos)  # indexed dims first
        codes, scale, zero = quantize(v.reshape(B, H, 1, D // self.vg, self.vg), dim=-1)
        self.vq[at] = pack(codes.reshape(B, H, 1, D)).permute(2, 0, 1, 3)
        self.v_scale[at] = scale.permute(2, 0, 1, 3, 4)
        self.v_zero[at] = zero.permute(2, 0, 1, 3, 4)
        # The residual rewritten whole with k in its row (pos % G): the rows read are the rows written, which inductor
        # does in place, where writing one row and reading all of them made it copy the whole residual (every
        # layer's) twice a layer: gpt2 b4 p1000, 15.6 against 1.9 ms a step for the 12 layers' stores.
        rows = torch.arange(self.k_res.size(3), device=pos.device)
        group = torch.where((rows == pos % self.G).view(-1, 1), k, self.k_res[layer])  # (B, H, rows, D)
        self.k_res[(rows.new_full(rows.shape, layer), slice(None), slice(None), rows)] = group.permute(2, 0, 1, 3)
        if self.full:
            self._store_open_group(layer, pos, group)

    def _store_open_group(self, layer: int, pos: torch.Tensor, group: torch.Tensor) -> None:
        """The open group's keys (B, H, G, D) quantized per channel into the slot of position pos's group; past the
        last group that fits (a residual that never fills) nothing changes."""
        G, D = self.G, self.D
        slot = torch.div(pos[-1:], G, rounding_mode="floor")
        inside = slot < self.full
        slot = slot.clamp(max=self.full - 1)
        codes, scale, zero = quantize(group.unsqueeze(2), dim=-2)  # (B, H, 1, G, D), (B, H, 1, 1, D)
        rows = slot * G + torch.arange(G, device=pos.device)
        at = (rows.new_full(rows.shape, layer), slice(None), slice(None), rows)  # (G, B, H, D/2)
        self.kq[at] = torch.where(inside, pack(codes.reshape(*codes.shape[:2], G, D)).permute(2, 0, 1, 3), self.kq[at])
        at = (slot.new_full(slot.shape, layer), slice(None), slice(None), slot)  # (1, B, H, 1, D)
        self.k_scale[at] = torch.where(inside, scale.permute(2, 0, 1, 3, 4), self.k_scale[at])
        self.k_zero[at] = torch.where(inside, zero.permute(2, 0, 1, 3, 4), self.k_zero[at])

    def write_at(self, layer: int, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor):
        """The static-shape step without the kernel: the new token stored, every position's key and value
        dequantized (the caller masks those after pos): a position in the open group, or past the last group that
        fits, from the residual, the others from their group's codes."""
        self.store_at(layer, k, v, pos)
        B, H, n = self.shape.batch, self.shape.n_kv_head, self.full
        codes = unpack(self.kq[layer]).reshape(B, H, n, self.G, self.D)
        k_groups = dequantize(codes, self.k_scale[layer], self.k_zero[layer]).reshape(B, H, n * self.G, self.D)
        t = torch.arange(self.max_len, device=pos.device)
        from_res = self.k_res[layer][:, :, t % self.G]  # (B, H, max_len, D)
        in_groups = torch.nn.functional.pad(k_groups.to(self.dtype), (0, 0, 0, self.max_len - n * self.G))
        open_from = torch.div(pos[-1:] + 1, self.G, rounding_mode="floor") * self.G  # complete groups end here
        keys = torch.where((t >= open_from).unsqueeze(-1), from_res, in_groups)
        return keys, self._values(layer, self.max_len)

    def attend_at(self, layer, q, k, v, pos, mask):
        """The static-shape step over the packed codes and the residual, inside the compiled step: kvbench's C++
        kernel as one extern call with the position as data; None (write_at, then the module's masked attention)
        where the kernel does not run."""
        if q.size(2) != 1 or not fused.int4_fits(q, self.kq, self.v_scale):
            return None
        self.store_at(layer, k, v, pos)
        self.attention_path = fused.KERNEL
        return fused.int4_at(q, self.kq[layer], self.k_scale[layer], self.k_zero[layer], self.k_res[layer],
                             self.vq[layer], self.v_scale[layer], self.v_zero[layer], pos)  # fmt: skip

    def reset(self) -> None:
        """Empty the cache in place (a compiled step keeps the buffers' addresses)."""
        for t in self.tensors():
            t.zero_()
        self.written = 0

    def _keys(self, layer: int, end: int) -> torch.Tensor:
        done = min(end // self.G, self.full)  # complete groups, already quantized
        codes = unpack(self.kq[layer, :, :, : done * self.G])
        B, H = codes.shape[:2]
        grouped = codes.reshape(B, H, done, self.G, self.D)
        k = dequantize(grouped, self.k_scale[layer, :, :, :done], self.k_zero[layer, :, :, :done])
        rest = self.k_res[layer, :, :, : end - done * self.G]
        return torch.cat([k.reshape(B, H, done * self.G, self.D).to(self.dtype), rest], dim=2)

    def _values(self, layer: int, end: int) -> torch.Tensor:
        codes = unpack(self.vq[layer, :, :, :end])
        B, H, T, D = codes.shape
        grouped = codes.reshape(B, H, T, D // self.vg, self.vg)
        v = dequantize(grouped, self.v_scale[layer, :, :, :end], self.v_zero[layer, :, :, :end])
        return v.reshape(B, H, T, D).to(self.dtype)

    def tensors(self):
        return [self.kq, self.k_scale, self.k_zero, self.k_res, self.vq, self.v_scale, self.v_zero]

    def bytes_used(self) -> int:
        """The written positions' bytes: every value's codes and scales; a key's codes and its group's scales once
        its group is quantized, else its row of the residual (the residual's other rows are reserved, not used)."""
        end, G, D = self.written, self.G, self.D
        done = min(end // G, self.full)
        keys = done * G * (D // 2) + done * 2 * D * 2 + (end - done * G) * D * self.k_res.element_size()
        values = end * (D // 2 + 2 * (D // self.vg) * 2)
        return self.shape.n_layer * self.shape.batch * self.shape.n_kv_head * (keys + values)
