"""The preallocated cache: (B, H_kv, T_max, D) per layer once, each step's K,V written in place, as gpt-fast,
nanochat and Hugging Face's StaticCache do."""

from __future__ import annotations

import torch

from kvbench.caches import fused
from kvbench.caches.base import CacheShape, KVCache


class StaticCache(KVCache):
    """`written`: the positions `update` has stored (`write_at` leaves it to its caller: its positions are a
    tensor, which a compiled step cannot read back without a device sync)."""

    def __init__(self, shape: CacheShape):
        self.shape = shape
        self.k = torch.zeros(shape.dims(), dtype=shape.dtype, device=shape.device)
        self.v = torch.zeros(shape.dims(), dtype=shape.dtype, device=shape.device)
        self.written = 0

    @property
    def max_len(self) -> int:
        return self.shape.max_len

    def update(self, layer, k, v, past_len):
        end = past_len + k.size(2)
        self.shape.check_fits(end)
        self.k[layer, :, :, past_len:end] = k
        self.v[layer, :, :, past_len:end] = v
        self.written = end
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

    def attend_decode(self, layer, q, k, v, past_len):
        """An eager decode step on a CPU: kvbench's C++ kernel over the written prefix (caches/fused.py); None
        (the module's SDPA) where it does not run."""
        if not fused.use_kernel(q, self.k):
            return None
        k_all, v_all = self.update(layer, k, v, past_len)
        self.attention_path = fused.KERNEL
        return fused.dense_decode(q, k_all, v_all)

    def attend_at(self, layer, q, k, v, pos, mask):
        """The static-shape step on a CPU: one query per head over the whole buffer, the unwritten positions masked,
        inside the compiled step: kvbench's C++ kernel as an extern call, else one fused loop of inductor's
        (fused.one_query_attention), where SDPA was a call of ~80-130 us a layer at a short context (the 2-core
        Xeon, under torch.profiler); elsewhere SDPA (None)."""
        if q.device.type != "cpu" or q.size(2) != 1:
            return None
        k_all, v_all = self.write_at(layer, k, v, pos)
        if fused.use_kernel(q, k_all):
            self.attention_path = fused.KERNEL
            return fused.dense_decode(q, k_all, v_all, mask)
        return fused.one_query_attention(q, k_all, v_all, mask)

    def reset(self) -> None:
        """Empty the cache in place (a compiled step keeps the buffers' addresses)."""
        self.k.zero_()
        self.v.zero_()
        self.written = 0

    def tensors(self):
        return [self.k, self.v]

    def bytes_used(self) -> int:
        """The written positions' share of the buffers (every sequence, layer and K/V head)."""
        return self.nbytes() // self.max_len * self.written
