"""Compiled decoding: the `--compile` option of a cell.

kv_mode `static` gets gpt-fast's recipe: the prompt is prefilled eagerly, and the one-token
decode step, whose shapes never change (the whole preallocated cache, the unwritten positions
masked, the position passed as a tensor), is compiled once with `torch.compile` — with CUDA
graphs on a GPU (`mode="reduce-overhead"`), so a step is one graph replay instead of hundreds
of kernel launches from Python. A CUDA graph holds its buffers' addresses, so the cache is
allocated once per cell and reset in place before each generation, as HF's StaticCache.reset
does; a fresh allocation would re-record the graph inside a timing.

The growing caches (`none`, `concat`, `static-int8`) change shape every step; they are compiled
with dynamic shapes instead, which saves less but never recompiles per step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kvbench.generate import GREEDY, Generation, Sampling, check_length, decode_loop, generate, new_cache
from kvbench.kv_cache import StaticCache
from kvbench.model import GPT

Runner = Callable[..., Generation]  # (prompt, new_tokens, kv_mode, *, sampling, keep_logits, on_token)


def compile_mode(device: torch.device) -> str:
    return "reduce-overhead" if device.type == "cuda" else "default"


class CompiledStaticDecoder:
    """kvbench's static cache with a compiled static-shape decode step; one per cell (fixed batch and length)."""

    def __init__(self, model: GPT, batch: int, max_len: int):
        self.model = model
        cache = new_cache(model, "static", batch, max_len)
        assert isinstance(cache, StaticCache)
        self.cache = cache
        self.device = cache.k.device
        if self.device.type == "cuda":  # the graph may keep these addresses: the cache is never reallocated
            torch._dynamo.mark_static_address(cache.k)
            torch._dynamo.mark_static_address(cache.v)
        self.pos = torch.zeros(1, dtype=torch.long, device=self.device)
        self.step = torch.compile(model.static_step, mode=compile_mode(self.device), fullgraph=True, dynamic=False)

    @torch.no_grad()
    def __call__(self, prompt: torch.Tensor, new_tokens: int, kv_mode: str = "static", *,
                 sampling: Sampling = GREEDY, keep_logits: bool = False,
                 on_token: Callable[[int], None] | None = None) -> Generation:
        if kv_mode != "static":
            raise ValueError(f"kv_mode: the compiled static decoder runs 'static', not {kv_mode!r}")
        total = check_length(prompt, new_tokens, self.model.config.block_size)
        if total - 1 > self.cache.max_len or prompt.size(0) != self.cache.k.size(1):
            raise ValueError(f"compiled decoder was built for batch {self.cache.k.size(1)} and "
                             f"{self.cache.max_len} positions, not batch {prompt.size(0)} and {total - 1}")
        self.cache.reset()

        def forward(ids: torch.Tensor, start: int) -> torch.Tensor:
            if start == 0:
                return self.model(ids, self.cache, 0)  # eager prefill, written into the same buffers
            self.pos.fill_(start)
            return self.step(ids, self.pos, self.cache)

        tokens, kept = decode_loop(forward, prompt, new_tokens, False, sampling, keep_logits, on_token)
        return Generation(tokens=tokens, cache=self.cache, logits=kept)


class HFCompiledStatic:
    """transformers' GPT-2 with its StaticCache and its forward compiled for decoding, the way its docs
    recommend (prefill eager, the static-shape step compiled); one cache per cell, reset each generation."""

    def __init__(self, hf, prompt: torch.Tensor, max_len: int):
        from transformers import StaticCache
        self.hf = hf
        self.cache = StaticCache(config=hf.config, max_cache_len=max_len)
        device = prompt.device
        with torch.no_grad():  # materialise the cache's tensors eagerly (they mark their static addresses)
            hf(prompt[:, :1], past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        self.cache.reset()
        self.step = torch.compile(hf.forward, mode=compile_mode(device), dynamic=False)

    @torch.no_grad()
    def __call__(self, prompt: torch.Tensor, new_tokens: int, kv_mode: str = "static", *,
                 sampling: Sampling = GREEDY, keep_logits: bool = False,
                 on_token: Callable[[int], None] | None = None) -> Generation:
        from kvbench.hf_engine import HFCacheBytes, hf_forward
        check_length(prompt, new_tokens, self.hf.config.n_positions)
        self.cache.reset()
        eager = hf_forward(self.hf, self.cache, prompt.size(0), prompt.device)
        compiled = hf_forward(self.step, self.cache, prompt.size(0), prompt.device)

        def forward(ids: torch.Tensor, start: int) -> torch.Tensor:
            return eager(ids, start) if start == 0 else compiled(ids, start)

        tokens, kept = decode_loop(forward, prompt, new_tokens, False, sampling, keep_logits, on_token)
        return Generation(tokens=tokens, cache=HFCacheBytes(self.cache), logits=kept)


def compiled_runner(model, engine: str, kv_mode: str, prompt: torch.Tensor, new_tokens: int) -> Runner:
    """The generate function a `--compile` cell times. `model` is ours, or transformers' for engine hf."""
    max_len = prompt.size(1) + new_tokens - 1  # the last token is never fed back
    if kv_mode == "static":
        if engine == "hf":
            return HFCompiledStatic(model, prompt, max_len)
        return CompiledStaticDecoder(model, prompt.size(0), max_len)
    # Growing caches: the whole model compiled with dynamic shapes (one graph for every length).
    compiled = torch.compile(model, dynamic=True)
    if engine == "hf":
        from kvbench.hf_engine import hf_generate
        return lambda *a, **kw: hf_generate(compiled, *a, **kw)
    return lambda *a, **kw: generate(compiled, *a, **kw)
