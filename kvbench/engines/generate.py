"""One generation path for every decode mode: prefill the prompt, then one token per step.

kv_mode 'none' re-runs the model over the whole sequence each step (nanoGPT's original
`generate`); 'concat' and 'static' feed only the newest token and keep K,V in a cache.
`on_token` is called after each token is chosen (index 0 = the prefill's token), which is
where the benchmark takes its timestamps: the loop itself has no timing code in it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from kvbench.caches.base import CacheShape, KVCache
from kvbench.caches.ragged import Layout
from kvbench.caches.registry import make_cache
from kvbench.models.family import Model


@dataclass
class Sampling:
    temperature: float = 0.0  # 0 = greedy
    top_k: int | None = None
    generator: torch.Generator | None = None
    # Only ids below this can be chosen: a tokenizer smaller than the model's (padded) vocabulary
    # (nanoGPT pads 50257 to 50304) cannot decode the rest.
    vocab_limit: int | None = None

    def pick(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, V) logits -> (B,) next tokens."""
        if self.vocab_limit is not None and self.vocab_limit < logits.size(-1):
            logits = logits[:, : self.vocab_limit]
        if self.temperature <= 0:
            return logits.argmax(dim=-1)
        logits = logits.float() / self.temperature
        if self.top_k is not None:
            kth = torch.topk(logits, min(self.top_k, logits.size(-1))).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(1)


GREEDY = Sampling()


@dataclass
class Generation:
    tokens: torch.Tensor  # (B, new_tokens) the generated tokens only
    cache: KVCache | None
    logits: list[torch.Tensor] | None  # per token, (B, V) float32, when asked for


@dataclass(frozen=True)
class GenerationPlan:
    """What a cell fixes for every generation it runs, handed to `generate` rather than hung on the model.

    kv_options: the cache settings, as make_cache takes them (a kind ignores those of other kinds, so a paged
    cell's plan also runs the static generation it is compared with); layout: a ragged batch or a shared prefix
    (kvbench/caches/ragged.py), None for a rectangular batch. The kv mode stays each call's own argument."""

    kv_options: dict = field(default_factory=dict)
    layout: Layout | None = None


def new_cache(model: Model, kv_mode: str, batch: int, max_len: int, options: dict | None = None) -> KVCache | None:
    cfg = model.config
    w = model.lm_head.weight  # every family has a head, in the model's dtype and on its device
    shape = CacheShape(cfg.n_layer, batch, cfg.kv_heads, max_len, cfg.head_dim, w.dtype, w.device)
    return make_cache(
        kv_mode,
        shape,
        inv_freq=getattr(model, "inv_freq", None),  # rotary models: sliding re-rotates its sinks
        **(options or {}),  # the plan's cache settings (window, sinks, kv_group_size, block_tokens)
    )


def check_length(prompt: torch.Tensor, new_tokens: int, block_size: int) -> int:
    total = prompt.size(1) + new_tokens
    if total > block_size:
        raise ValueError(f"prompt_len + new_tokens = {total} exceeds block_size {block_size}")
    return total


def decode_loop(
    forward: Callable[[torch.Tensor, int], torch.Tensor],
    prompt: torch.Tensor,
    new_tokens: int,
    recompute: bool,
    sampling: Sampling,
    keep_logits: bool,
    on_token: Callable[[int], None] | None,
) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """The loop every engine shares: `forward(ids, start_position)` -> logits (B, T', V).

    recompute: feed the whole sequence each step (no cache) instead of only the newest token.
    """
    B, P = prompt.shape
    seq = torch.empty((B, P + new_tokens), dtype=torch.long, device=prompt.device)
    seq[:, :P] = prompt
    kept: list[torch.Tensor] | None = [] if keep_logits else None
    logits = forward(prompt, 0)
    for i in range(new_tokens):
        if i > 0:
            pos = P + i - 1  # the position of the token fed this step
            logits = forward(seq[:, : pos + 1], 0) if recompute else forward(seq[:, pos : pos + 1], pos)
        last = logits[:, -1, :]
        if kept is not None:  # a copy: a CUDA graph's output buffer is overwritten by the next replay
            kept.append(last.to(torch.float32, copy=True))
        seq[:, P + i] = sampling.pick(last)
        if on_token is not None:
            on_token(i)
    return seq[:, P:], kept


@torch.inference_mode()
def generate(
    model: Model,
    prompt: torch.Tensor,
    new_tokens: int,
    kv_mode: str,
    *,
    sampling: Sampling = GREEDY,
    keep_logits: bool = False,
    on_token: Callable[[int], None] | None = None,
    layout: Layout | None = None,
    plan: GenerationPlan | None = None,
) -> Generation:
    """Generate `new_tokens` tokens after `prompt` (B, P) as `plan` says; `layout` alone: a plan of just a
    ragged batch's lengths (caches/ragged.py), with each kind's default settings."""
    if plan is not None and layout is not None:
        raise ValueError("generate: give the layout in the plan or on its own, not both")
    options = None if plan is None else plan.kv_options
    layout = layout if plan is None else plan.layout
    total = check_length(prompt, new_tokens, model.config.block_size)
    # The last generated token is never fed back: the cache needs total - 1 positions.
    cache = new_cache(model, kv_mode, prompt.size(0), total - 1, options)
    if cache is not None:
        cache.bind(prompt.size(1), layout)

    def forward(ids: torch.Tensor, start: int) -> torch.Tensor:
        if start == 0 and cache is not None and (out := cache.prefill(model, ids, layout)) is not None:
            return out  # the cache's own prefill (paged: a shared prefix's blocks computed once)
        return model(ids, cache, start) if layout is None else model(ids, cache, start, layout=layout)

    tokens, kept = decode_loop(forward, prompt, new_tokens, cache is None, sampling, keep_logits, on_token)
    return Generation(tokens=tokens, cache=cache, logits=kept)
