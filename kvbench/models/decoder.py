"""What every model family does around its blocks: positions, the loop over layers, the head, the init.

A family (gpt2.py, llama.py) subclasses `Decoder` and supplies only what is its own: its blocks,
final norm and embedding (the properties and `embed` below), rotary positions if it has them
(`rotate`), and which projections feed the residual stream (`residual_projections`). The forward,
the static-shape decode step, the seeded init and the empty build are written once, here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar, TypeVar

import torch
import torch.nn as nn

from kvbench.caches.base import KVCache
from kvbench.caches.ragged import Layout
from kvbench.caches.static import StaticCache
from kvbench.core.presets import GPTConfig, LlamaConfig
from kvbench.models.attention import CachedAttention, Context, StaticStep, check_impl
from kvbench.models.weights import skip_default_init

D = TypeVar("D", bound="Decoder")


class Decoder(nn.Module):
    """A pre-norm decoder-only transformer with an LM head, for the family subclass to fill in."""

    # Names ending the weights that write into the residual stream (attention and MLP output projections):
    # initialised with std 0.02 / sqrt(2 n_layer), so activations stay O(1) through deep random stacks.
    residual_projections: ClassVar[tuple[str, ...]] = ()

    config: GPTConfig | LlamaConfig
    lm_head: nn.Linear

    @property
    def blocks(self) -> nn.ModuleList:
        """The layers in order, each called as block(x, ctx)."""
        raise NotImplementedError

    @property
    def final_norm(self) -> nn.Module:
        """The norm between the last block and the LM head."""
        raise NotImplementedError

    def embed(self, idx: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """The residual stream (B, T, C) for tokens idx (B, T) at positions pos ((T,) or a ragged (B, T))."""
        raise NotImplementedError

    def rotate(self, pos: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Rotary families: what rotates q and k by these positions, in the residual stream's dtype (see
        attention.Context); else None."""
        return None

    def context_limit(self) -> tuple[int, str]:
        """The most positions one sequence may hold, and the config field that says so."""
        return self.config.block_size, "block_size"

    def tie_weights(self) -> None:
        """Share the head with the token embedding where the family does (after a build or `to_empty`)."""

    def fill_buffers(self) -> None:
        """Compute the buffers derived from the config, never loaded, once the model has a device."""

    def attention_layer(self, i: int) -> CachedAttention:
        """Layer i's attention module (its `probe` observes q, K, V): the same call on every family."""
        return [m for m in self.modules() if isinstance(m, CachedAttention)][i]

    def set_attention(self, impl: str) -> None:
        for m in self.modules():
            if isinstance(m, CachedAttention):
                m.attention = check_impl(impl)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # a tied head counted once

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator) -> None:
        """N(0, 0.02) matrices (nanoGPT's and transformers' init), residual projections scaled by
        1/sqrt(2 n_layer), norm scales 1, biases 0; drawn in parameter order, so a seed fixes every weight."""
        std_out = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if p.dim() >= 2 and not p.is_contiguous():
                p = p.t()  # an input-major weight: fill its storage in order (8x faster than strided)
            if name.endswith(self.residual_projections):
                p.normal_(0.0, std_out, generator=generator)
            elif p.dim() >= 2:
                p.normal_(0.0, 0.02, generator=generator)
            elif name.endswith("weight"):  # the only vectors named weight are norm scales
                p.fill_(1.0)
            else:
                p.zero_()

    def run(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        """The residual stream through every block, then the final norm."""
        for block in self.blocks:
            x = block(x, ctx)
        return self.final_norm(x)

    def forward(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        past_len: int = 0,
        last_only: bool = True,
        layout: Layout | None = None,
    ) -> torch.Tensor:
        """Logits for idx (B, T) placed after `past_len` cached positions.

        last_only: return only the last position's logits (B, 1, V), all generation needs,
        which skips most of the LM-head work during prefill, as nanoGPT does at inference.
        layout: a ragged batch's lengths (kvbench/caches/ragged.py): per-sequence positions, a masked gap,
        and each sequence's own last prompt token.
        """
        T = idx.size(1)
        limit, limit_name = self.context_limit()
        if past_len + T > limit:
            raise ValueError(f"sequence of {past_len + T} tokens exceeds {limit_name} {limit}")
        if layout is None:
            pos, mask = torch.arange(past_len, past_len + T, device=idx.device), None
        else:
            pos, mask = layout.positions(past_len, T), layout.mask(past_len, T)
        ctx = Context(cache, past_len, mask=mask, rotate=self.rotate(pos))
        # The embedding is handed over, not kept in a local: the first block's output replaces it, so it is
        # freed there (a prefill's peak memory holds one (B, T, C) stream less).
        x = self.run(self.embed(idx, pos), ctx)
        if last_only:
            x = x[:, -1:, :] if layout is None else layout.last(x, past_len)
        return self.lm_head(x)

    def static_step(self, idx: torch.Tensor, pos: torch.Tensor, cache: StaticCache) -> torch.Tensor:
        """Logits (B, 1, V) of one decode step with static shapes: the step to compile.

        idx (B, 1) is the token at absolute position pos (a (1,) long tensor, not a Python int,
        so the position is data rather than a constant baked into a compiled graph: rotary angles
        too). Attention reads the whole preallocated buffer with the positions after `pos` masked:
        every step has the same shapes, so a compiled step (a CUDA graph on GPU) replays without recompiling.
        """
        ctx = Context(step=StaticStep.at(cache, pos), rotate=self.rotate(pos))
        return self.lm_head(self.run(self.embed(idx, pos), ctx))

    @classmethod
    def empty(cls: type[D], config: GPTConfig | LlamaConfig, device: torch.device | str, dtype: torch.dtype) -> D:
        """The model with uninitialised weights on `device` in `dtype`, for the caller to fill.

        Built on the meta device first, so no fp32 CPU copy is made and no init runs: a gpt2-xl
        on a GPU takes seconds instead of a minute of CPU init.
        """
        with torch.device("meta"), skip_default_init():
            model = cls(config)
        model = model.to(dtype=dtype).to_empty(device=torch.device(device))
        model.tie_weights()  # to_empty materialises a shared parameter twice; tie it again
        model.fill_buffers()
        return model
