"""Engine `kvbench`: this repository's models (GPT-2, the Llama family) and every cache kind.

`--compile` for the caches whose buffers keep one shape (`static`; the 8-bit `static-int8` and `static-fp8`, whose
step attends over the codes as stored: kvbench/caches/fused.py; `static-int4`, its key groups quantized in place as
they fill; `sliding`, a ring of sinks + window slots; `paged` for a rectangular batch, its block bookkeeping done
once per step outside the graph, which reads the step's slots and block table as tensors) is
gpt-fast's recipe: the
prompt is prefilled eagerly, and the one-token decode step, whose shapes never change (the whole
preallocated cache, the unwritten positions masked, the position passed as a tensor),
is compiled once with `torch.compile` —
with CUDA graphs on a GPU (`mode="reduce-overhead"`), so a step is one graph replay instead of
hundreds of kernel launches from Python. A CUDA graph holds its buffers' addresses, so the cache
is allocated once per cell and reset in place before each generation, as HF's StaticCache.reset
does; a fresh allocation would re-record the graph inside a timing. On a CPU the step is compiled
by inductor with the weights frozen into the graph and each matrix product autotuned
(`CPU_INDUCTOR_OPTIONS`); inductor's on-disk caches make the next cell's compile cheap.

The other kinds (`none`, `concat`, and `paged` for a ragged batch) change shape every step; their prompt is prefilled
eagerly too and each decode step compiled with the same inductor settings, its attention one opaque op
(engines/attention_op.py): the projections, norms and MLP one graph, the cache read its own way (`CompiledSteps`).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable

import torch

from kvbench.caches.int4 import Int4StaticCache
from kvbench.caches.paged import PagedCache
from kvbench.caches.scaled import ScaledStaticCache
from kvbench.caches.sliding import SlidingCache
from kvbench.caches.static import StaticCache
from kvbench.core import disk_cache
from kvbench.engines import attention_op
from kvbench.engines.base import Engine, Runner, compile_mode
from kvbench.engines.generate import (
    GREEDY,
    Generation,
    GenerationPlan,
    Sampling,
    check_length,
    decode_loop,
    generate,
    new_cache,
)
from kvbench.models.attention import CachedAttention
from kvbench.models.family import Model

# The CPU decode step is matrix-vector products over every weight: reading the weights is the step.
# freezing: the weights become graph constants, packed once for the GEMM kernels. max_autotune with
# only the C++ GEMM template (ATen's kernel where the template does not apply, e.g. a dtype the CPU
# has no instructions for): autotuning between the two times each GEMM on one weight hot in cache,
# while a decode step reads every weight cold from memory, and its timings of the template were
# erratic besides (8-10 ms for a 0.1 ms SmolLM2 down-projection), so it chose ATen for the widest
# matrices by noise. Measured on this 2-core CPU (smollm2-135m fp32, 30 cold copies of each matrix in
# one compiled graph, 2026-12-06): the template 22-34 GB/s, ATen 8-17 GB/s, for every shape. Whole
# compiled steps, alternating processes: smollm2-135m batch 1 18-21 ms against 23-26 ms with autotuned
# choices; batch 4 and gpt2 at batch 1 and 8 level within the noise.
# The graph keeps a second, packed copy of the weights (the eager prefill reads the originals); matrices
# that kvbench's small-batch kernel runs (models/decode_linear.py) are extern calls on the one packed copy.
# cpp_wrapper: the step's ~100 kernel and extern calls made from generated C++, not Python: under
# torch.profiler (gpt2 batch 1, 2-core Xeon, 2026-12-07) the time outside the matrix products fell from
# 4.5 ms a step (the Python wrapper 3.0 ms, SDPA 1.5 ms) to 2.7 ms, at ~10 s more on a cell's first compile.
CPU_INDUCTOR_OPTIONS = {
    "cpp_wrapper": True,
    "freezing": True,
    "max_autotune": True,
    "max_autotune_gemm_backends": "CPP",
    "autotune_fallback_to_aten": True,
}


def inductor_options(device: torch.device) -> contextlib.AbstractContextManager:
    """Inductor settings for compiling the static step on `device`, set around every call (a recompile gets them)."""
    if device.type != "cpu":
        return contextlib.nullcontext()
    # Compiled kernels and autotuning results on disk beside kvbench's other caches, so every cell
    # of a sweep after the first finds them (latency.compile_s says what it cost); checked before
    # reuse, since a damaged kernel there would fail every later compiled cell. A folder the user
    # chose is theirs to keep.
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(disk_cache.verified(disk_cache.inductor_dir(), "inductor"))
    import torch._inductor.config

    return torch._inductor.config.patch(CPU_INDUCTOR_OPTIONS)


# The kinds with a static-shape step (a `write_at` over the whole buffer, or their own `attend_at`).
STATIC_SHAPE = {
    "static": StaticCache,
    "static-int8": ScaledStaticCache,
    "static-fp8": ScaledStaticCache,
    "static-int4": Int4StaticCache,  # its codes, group parameters and residual written in place, the position as data
    "paged": PagedCache,  # a rectangular batch: the pool and the step's slot and block-table tensors keep their shapes
    "sliding": SlidingCache,  # its ring of sinks + window slots: the same shapes every step
}


class KvbenchEngine(Engine):
    name = "kvbench"

    def __init__(self, model: Model, plan: GenerationPlan | None = None):
        self.model = self.module = model
        # The cell's cache settings and ragged layout, for every generation this engine runs, compiled or not
        # (the cell sets it; only this engine runs a ragged batch). None: each kind's defaults, a rectangular batch.
        self.plan = plan

    def generate(self, prompt, new_tokens, kv_mode, *, sampling=GREEDY, keep_logits=False, on_token=None):
        return generate(
            self.model,
            prompt,
            new_tokens,
            kv_mode,
            sampling=sampling,
            keep_logits=keep_logits,
            on_token=on_token,
            plan=self.plan,
        )

    def compiled_runner(self, kv_mode: str, prompt: torch.Tensor, new_tokens: int) -> Runner:
        layout = self.plan.layout if self.plan is not None else None
        if kv_mode in STATIC_SHAPE and (kv_mode != "paged" or layout is None):
            options = self.plan.kv_options if self.plan is not None else None
            return CompiledStaticDecoder(self.model, prompt.size(0), prompt.size(1) + new_tokens - 1, kv_mode, options)
        # A cache that changes shape each step: the model compiled with each decode step's attention one opaque op
        # (engines/attention_op.py) that calls the cache's own decode. Traced, the cache's Python ints (a layer's
        # index, a slot, a run of blocks) would be guards: a graph per layer and step, past dynamo's recompile limit.
        for module in self.model.modules():
            if isinstance(module, CachedAttention) and "attend" not in vars(module):
                attention_op.install(module)
        return functools.partial(generate, CompiledSteps(self.model), plan=self.plan)


class CompiledSteps:
    """A growing cache's model for `generate`: the prompt prefilled eagerly (as CompiledStaticDecoder does), each
    decode step through one compiled graph with the static step's inductor settings (frozen weights, the C++
    GEMM templates, cpp_wrapper) and its attention one op (engines/attention_op.py). Shapes are the same every
    step but the position, which the first recompile makes symbolic (dynamo's automatic dynamic shapes), so a
    cell compiles twice in its warm-up and never in its timed steps. A ragged batch's steps (masked) run eagerly."""

    def __init__(self, model: Model):
        self.model = model
        self.options = inductor_options(model.lm_head.weight.device)  # before torch.compile fixes the cache folder
        # No CUDA graphs: a replay would skip the cache's own Python bookkeeping inside the attention op.
        self.step = torch.compile(model, mode="default")

    def __getattr__(self, name: str):
        return getattr(self.model, name)  # config, inv_freq, lm_head: what generate reads off the model

    def __call__(self, idx: torch.Tensor, cache=None, past_len: int = 0, **kwargs) -> torch.Tensor:
        if (cache is not None and idx.size(1) > 1) or kwargs.get("layout") is not None:
            return self.model(idx, cache, past_len, **kwargs)
        with self.options:
            return self.step(idx, cache, past_len, **kwargs)


class CompiledStaticDecoder:
    """kvbench's static cache with a compiled static-shape decode step; one per cell (fixed batch and length)."""

    def __init__(self, model: Model, batch: int, max_len: int, kv_mode: str = "static", options: dict | None = None):
        self.model, self.kv_mode = model, kv_mode
        cache = new_cache(model, kv_mode, batch, max_len, options)  # options: the cell's cache settings (window, sinks)
        assert isinstance(cache, STATIC_SHAPE[kv_mode])
        self.cache, self.batch = cache, batch
        self.device = model.lm_head.weight.device
        self.pos = torch.zeros(1, dtype=torch.long, device=self.device)
        # The step's token goes through this buffer: the decode loop's slice of its sequence has that
        # sequence's strides, which differ with new_tokens, and a compiled step would recompile for them.
        self.ids = torch.zeros((batch, 1), dtype=torch.long, device=self.device)
        self.options = inductor_options(self.device)  # before torch.compile, which fixes the cache folder
        self.step = torch.compile(model.static_step, mode=compile_mode(self.device), fullgraph=True, dynamic=False)
        # Once the step has compiled, every later call passes the same tensors (the cache, `ids`, `pos`), so the
        # guards that tell graphs apart are all that needs checking: dynamo's full guard check over the frozen
        # weights and buffers took 0.3-0.6 ms a step (gpt2 / smollm2-135m batch 1, 2-core Xeon, torch.profiler).
        self.compiled = False

    @torch.no_grad()
    def __call__(
        self,
        prompt: torch.Tensor,
        new_tokens: int,
        kv_mode: str = "static",
        *,
        sampling: Sampling = GREEDY,
        keep_logits: bool = False,
        on_token: Callable[[int], None] | None = None,
    ) -> Generation:
        if kv_mode != self.kv_mode:
            raise ValueError(f"kv_mode: this compiled static-shape decoder runs {self.kv_mode!r}, not {kv_mode!r}")
        total = check_length(prompt, new_tokens, self.model.config.block_size)
        if total - 1 > self.cache.max_len or prompt.size(0) != self.batch:
            raise ValueError(
                f"compiled decoder was built for batch {self.batch} and "
                f"{self.cache.max_len} positions, not batch {prompt.size(0)} and {total - 1}"
            )
        self.cache.reset()

        def forward(ids: torch.Tensor, start: int) -> torch.Tensor:
            if start == 0:
                logits = self.model(ids, self.cache, 0)  # eager prefill, written into the same buffers
                if self.device.type == "cuda":  # the graph may keep these addresses: the cache is never reallocated
                    for t in self.cache.tensors():  # (paged's pool exists once its prefill has bound it)
                        torch._dynamo.mark_static_address(t)
                return logits
            self.cache.before_step(start)  # bookkeeping outside the graph (paged: its blocks and slot tensors)
            self.pos.fill_(start)
            self.ids.copy_(ids)
            guards = (
                torch.compiler.set_stance(skip_guard_eval_unsafe=True) if self.compiled else contextlib.nullcontext()
            )
            with self.options, guards:
                logits = self.step(self.ids, self.pos, self.cache)
            self.compiled = True
            return logits

        tokens, kept = decode_loop(forward, prompt, new_tokens, False, sampling, keep_logits, on_token)
        return Generation(tokens=tokens, cache=self.cache, logits=kept)


ENGINE = KvbenchEngine
