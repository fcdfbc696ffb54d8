"""StreamingLLM's cache: the first `sinks` positions plus a ring buffer of the last `window`, so memory
stays at `sinks + window` positions however long the stream.

Position p < sinks lives in slot p; a later position in slot sinks + (p - sinks) % window, overwriting
the position `window` before it. The prompt attends to itself in full (its keys are all at hand), and
only what the cache keeps afterwards is bounded. A one-token step attends to every held key with no
mask, so the ring's slot order does not matter; until the ring wraps, slots hold positions 0..p in
order and the step is exactly the static cache's.

Positions. StreamingLLM gives each key its position *within the cache* (the sinks 0..sinks-1, the
window after them, the query last). With rotary positions a score depends only on the distance
between query and key, and the window's distances are the same in either numbering (both are
contiguous up to the query); only the sinks move, to sit just before the window. The model caches keys
already rotated at their absolute position p, so a sink is rotated a further `past_len - (held - 1)`
positions, which gives it exactly the rotation at its position within the cache (rotations compose): each
step rotates the sinks' slots in place by the one position it adds (`sink_shift`), so nothing else is copied.
Learned absolute positions (GPT-2) are added to the embeddings before K,V exist, so nothing in the cache can
move them: the window evicts, positions stay absolute (`kv_note`).
"""

from __future__ import annotations

import torch

from kvbench.caches import fused
from kvbench.caches.base import CacheShape, KVCache
from kvbench.core.presets import SLIDING_SINKS, SLIDING_WINDOW

NOTES = {
    "llama": "sliding: sink keys re-rotated to sit just before the window (positions within the cache, "
    "as StreamingLLM assigns them); the window's distances to the query are unchanged",
    "gpt2": "sliding: GPT-2's learned positions are added before K,V are computed, so cached keys keep "
    "their absolute positions: the window evicts but cannot re-assign them, and a stream still ends at "
    "block_size",
}


def kv_note(kv_mode: str, family: str) -> str | None:
    """What the record says about how a sliding cache handles this family's positions."""
    return NOTES.get(family) if kv_mode == "sliding" else None


def rotate(x: torch.Tensor, inv_freq: torch.Tensor, by: int | torch.Tensor) -> torch.Tensor:
    """Rotate x (..., D) by `by` positions in the half-split rotary layout (kvbench.models.llama.Rotary's); `by` a
    (1,) tensor in a compiled step, where the position is data."""
    angles = (by.float() if isinstance(by, torch.Tensor) else float(by)) * inv_freq.float()
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class SlidingCache(KVCache):
    """`inv_freq`: the model's rotary frequencies (None for learned positions: nothing is re-rotated)."""

    settings = ("window", "sinks", "inv_freq")

    def __init__(
        self,
        shape: CacheShape,
        window: int = SLIDING_WINDOW,
        sinks: int = SLIDING_SINKS,
        inv_freq: torch.Tensor | None = None,
    ):
        if window < 1 or sinks < 0:
            raise ValueError(f"window, sinks: {window}, {sinks} must be >= 1 and >= 0")
        self.window, self.sinks, self.inv_freq = window, sinks, inv_freq
        self.capacity = min(shape.max_len, sinks + window)  # never more than the stream needs
        self.k = torch.zeros(shape.dims(self.capacity), dtype=shape.dtype, device=shape.device)
        self.v = torch.zeros(shape.dims(self.capacity), dtype=shape.dtype, device=shape.device)
        self.max_len = shape.max_len
        self.written = 0  # positions streamed through so far (the slots hold the last `capacity` of them)
        # Rotary models: how far each layer's sink keys have been rotated in their slots so far (a step rotates them
        # on by what its shift adds, a few rows in place, so the window is never copied).
        self.sink_shift = [0] * shape.n_layer
        self.sink_shift_at = torch.zeros(shape.n_layer, dtype=torch.long, device=shape.device)  # the compiled step's

    def slot(self, pos: int) -> int:
        return pos if pos < self.sinks else self.sinks + (pos - self.sinks) % self.window

    def update(self, layer, k, v, past_len):
        T = k.size(2)
        end = past_len + T
        if end > self.max_len:
            raise ValueError(f"sliding cache was built for {self.max_len} positions, step needs {end}")
        if past_len > 0 and T > 1:
            raise ValueError("sliding cache: after the prompt, steps feed one token at a time")
        if T == 1:  # a decode step: one slot, written in place
            at = self.slot(past_len)
            self.k[layer, :, :, at : at + 1] = k
            self.v[layer, :, :, at : at + 1] = v
        # What stays of a prompt: the sinks and its last `window` positions.
        elif keep := [p for p in range(past_len, end) if p < self.sinks or p >= end - self.window]:
            src = torch.tensor([p - past_len for p in keep], device=k.device)
            dst = torch.tensor([self.slot(p) for p in keep], device=k.device)
            self.k[layer].index_copy_(2, dst, k.index_select(2, src))
            self.v[layer].index_copy_(2, dst, v.index_select(2, src))
        self.written = end
        if past_len == 0:
            return k, v  # the prompt attends to all of itself, as every other mode's prefill does
        held = min(end, self.capacity)
        shift = past_len - (held - 1)  # how far the query's absolute position is past its place in the cache
        if self.inv_freq is not None and self.sinks and shift > self.sink_shift[layer]:  # the sinks, in place
            sinks = self.k[layer, :, :, : self.sinks]
            sinks.copy_(rotate(sinks, self.inv_freq, shift - self.sink_shift[layer]))
            self.sink_shift[layer] = shift
        return self.k[layer, :, :, :held], self.v[layer, :, :, :held]

    def attend_decode(self, layer, q, k, v, past_len):
        """A decode step: the new key and value into their slot, then kvbench's C++ kernel over every held slot (no
        mask: a one-token step attends to all of them); None (the module's SDPA) where the kernel does not run."""
        if not fused.use_kernel(q, self.k):
            return None
        k_all, v_all = self.update(layer, k, v, past_len)
        self.attention_path = fused.KERNEL
        return fused.dense_decode(q, k_all, v_all)

    def write_at(self, layer: int, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor):
        """The static-shape step (one token, its position a tensor): the new K,V into their slot, the sinks rotated on
        in place by what this step adds to their shift (rotary models), every slot returned (`slot_mask` says which
        hold a position). Whole-buffer index_put_s and copies, as StaticCache.write_at, so a compiled step writes in
        place."""
        slot = torch.where(pos < self.sinks, pos, self.sinks + (pos - self.sinks) % self.window)
        at = (slot.new_full(slot.shape, layer), slice(None), slice(None), slot)  # indexed dims first: (T, B, H, D)
        self.k[at] = k.permute(2, 0, 1, 3)
        self.v[at] = v.permute(2, 0, 1, 3)
        if self.inv_freq is not None and self.sinks:
            shift = (pos[-1:] + 1 - self.capacity).clamp(min=0)  # how far past its place in the cache the query is
            by = shift - self.sink_shift_at[layer : layer + 1]  # 0 until the ring wraps: the identity
            rotated = rotate(self.k[layer, :, :, : self.sinks], self.inv_freq, by)
            # An index_put_ on the whole buffer, not a copy into a view of it: inductor turns a view's mutation
            # into a copy of the whole cache and back (smollm2-135m b4 p1000: 78 against 44 ms/token a step).
            sink = torch.arange(min(self.sinks, self.capacity), device=pos.device)
            self.k[(sink.new_full(sink.shape, layer), slice(None), slice(None), sink)] = rotated.permute(2, 0, 1, 3)
            self.sink_shift_at[layer : layer + 1] = shift
        return self.k[layer], self.v[layer]

    def slot_mask(self, pos: torch.Tensor) -> torch.Tensor:
        """(1, capacity): the slots holding a position once position `pos` is written (all of them after the wrap)."""
        return torch.arange(self.capacity, device=pos.device).unsqueeze(0) <= pos[-1:].unsqueeze(1)

    def attend_at(self, layer, q, k, v, pos, mask):
        """The static-shape step's attention over every held slot (the step's own `mask` is over stream positions,
        not slots): kvbench's C++ kernel where it runs, else one fused loop of torch ops (any device)."""
        if q.size(2) != 1:
            raise ValueError("sliding cache: the static-shape step feeds one token at a time")
        k_all, v_all = self.write_at(layer, k, v, pos)
        held = self.slot_mask(pos)
        if fused.use_kernel(q, k_all):
            self.attention_path = fused.KERNEL
            return fused.dense_decode(q, k_all, v_all, held)
        return fused.one_query_attention(q, k_all, v_all, held)

    def reset(self) -> None:
        """Empty the cache in place (a compiled step keeps the buffers' addresses)."""
        for t in (self.k, self.v, self.sink_shift_at):
            t.zero_()
        self.sink_shift = [0] * len(self.sink_shift)
        self.written = 0

    def tensors(self):
        return [self.k, self.v]

    def bytes_used(self) -> int:
        """The slots holding a position: every slot once the stream has filled them."""
        return self.nbytes() // self.capacity * min(self.written, self.capacity)
