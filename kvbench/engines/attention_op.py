"""A growing cache's decode attention as one opaque op inside a compiled step, as vLLM's `unified_attention` is.

A cache that changes shape every step (`static-int4`, `paged`, `concat`) keeps Python bookkeeping (positions as
ints, a block table) that dynamo cannot trace; called from a compiled model, each layer's attention was a graph
break, so a compiled step ran as 13 graphs with 12 eager calls between them, each with its guards (measured on
the 2-core Xeon, gpt2 batch 4, prompt 1000, 2026-12-07: compiled int4 48.3 and paged 55.8 ms/token against 42.0
and 48.9 eager). Here a decode step's attention is `torch.ops.kvbench_engine.cached_attention(q, k, v, layer,
past_len)`: to the compiler one op with a fake output of q's shape, so the step is one graph; run, it finds the
generation's cache (set by that generation's prefill, which runs eagerly) and calls its `attend_decode`, or
stores and attends the reference way. The prefill, a ragged batch's masked step and a probed one stay eager.
"""

from __future__ import annotations

import torch

from kvbench.caches.base import KVCache
from kvbench.models.attention import CachedAttention, Context, attend

_current: list[KVCache] = []  # the cache of the generation running now (set by its eager prefill)


@torch.library.custom_op("kvbench_engine::cached_attention", mutates_args=())
def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int, past_len: int) -> torch.Tensor:
    """One decode step's attention (B, H, 1, D) of layer `layer` over the current generation's cache."""
    cache = _current[-1]
    y = cache.attend_decode(layer, q, k, v, past_len)
    if y is None:
        k_all, v_all = cache.update(layer, k, v, past_len)
        y = attend(q, k_all, v_all, past_len, "sdpa")
    return y.contiguous()


@cached_attention.register_fake
def _(q, k, v, layer, past_len):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


def install(module: CachedAttention) -> None:
    """Give `module` an `attend` that a compiled model calls as one op at a decode step, eagerly otherwise."""
    original = module.attend

    @torch.compiler.disable
    def eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: Context) -> torch.Tensor:
        if ctx.cache is not None:
            _current[:] = [ctx.cache]
        return original(q, k, v, ctx)

    def attend_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: Context) -> torch.Tensor:
        one = ctx.step is None and ctx.cache is not None and ctx.mask is None and q.size(2) == 1
        if not one or module.attention != "sdpa" or module.probe is not None:
            return eager(q, k, v, ctx)
        y = torch.ops.kvbench_engine.cached_attention(q, k, v, module.layer_idx, ctx.past_len)
        B, H, T, hd = y.shape
        return y.transpose(1, 2).reshape(B, T, H * hd)

    module.attend = attend_op
