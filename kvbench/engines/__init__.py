"""Engines: what runs a cell's generation. One module per engine, one small interface.

A cell builds its weights once (our GPT: random or a checkpoint) and hands them to an engine:

    engine = engines.build(name, model)            # its own copy/conversion of the same weights
    run = engine.generate                          # or engine.compiled_runner(kv_mode, prompt, n)
    gen = run(prompt, n, kv_mode, keep_logits=..., on_token=timer.mark)

`generate` calls `on_token(i)` right after token i is chosen (0 = the prefill's token), which is
where the cell takes its timestamps, and returns a `Generation` whose `cache.nbytes()` measures
the cache from its tensors (None where the engine keeps it out of reach). `check` validates a
cell's settings for the engine before anything is built, with one-line messages.

    kvbench  this repository's GPT-2 (engines/kvbench.py)
    hf       Hugging Face transformers' GPT2LMHeadModel (engines/hf.py)
    ct2      CTranslate2's Generator, converted from the hf engine's model (engines/ct2.py)
    llamacpp llama.cpp (llama-cpp-python), the hf engine's model converted to GGUF (engines/llamacpp.py)
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar, Protocol

import torch

from kvbench.generate import GREEDY, Generation, Sampling
from kvbench.model import GPT
from kvbench.presets import ENGINES, KV_MODES, OWN_KV_HEADS_ENGINES


class Runner(Protocol):
    """The one call that runs a generation: `Engine.generate`, and what `compiled_runner` returns.

    `on_token(i)` is called right after token i is chosen (0 = the prefill's token); `keep_logits`
    asks for each step's logits (the token check compares them); `sampling` defaults to greedy.
    """

    def __call__(
        self,
        prompt: torch.Tensor,
        new_tokens: int,
        kv_mode: str,
        *,
        sampling: Sampling = GREEDY,
        keep_logits: bool = False,
        on_token: Callable[[int], None] | None = None,
    ) -> Generation: ...


class Engine(ABC):
    name: ClassVar[str]
    kv_modes: ClassVar[tuple[str, ...]] = KV_MODES
    # Set where the engine runs on its own copy of the weights: the cell then frees ours after the
    # token check, so the memory measured is the engine's alone.
    owns_weights: ClassVar[bool] = False
    # Said in the record (memory.kv_cache_note) where the cache is not ours to measure.
    kv_cache_note: ClassVar[str | None] = None
    # The torch module holding the engine's weights, whose tensors the CPU allocator-peak tracker
    # counts as resident; None where the engine's memory lives outside torch.
    module: torch.nn.Module | None = None
    # The library whose own attention kernels the engine runs, where it does: only the default `sdpa`
    # stands for them.
    own_attention: ClassVar[str | None] = None

    @classmethod
    def check(cls, *, kv_mode: str, n_kv_head: int | None, attention: str, compile: bool) -> None:
        """Raise ValueError (one line naming the field and the allowed values) for a setting this engine lacks."""
        if kv_mode not in cls.kv_modes:
            raise ValueError(f"kv_mode (engine {cls.name}): {kv_mode!r} is not one of {', '.join(cls.kv_modes)}")
        if cls.name in OWN_KV_HEADS_ENGINES and n_kv_head is not None:
            raise ValueError(
                f"n_kv_head: engine {cls.name} runs the model's own K/V heads (a preset's or a checkpoint's): leave "
                "it out or give that count; another count fakes grouped-query attention, which is engine kvbench's"
            )
        if cls.own_attention is not None and attention != "sdpa":
            raise ValueError(
                f"attention (engine {cls.name}): {attention!r} is not one of sdpa ({cls.own_attention} runs its own "
                f"attention kernels; sdpa is the default that stands for them)"
            )

    @classmethod
    def check_shape(cls, *, kv_mode: str, head_dim: int) -> None:
        """Raise ValueError (one line) where this engine's cache for `kv_mode` cannot hold the model's heads."""
        return None  # every engine but llamacpp caches any head size

    @abstractmethod
    def generate(self, prompt, new_tokens, kv_mode, *, sampling=GREEDY, keep_logits=False, on_token=None) -> Generation:
        """This engine's `Runner` (the call and its arguments are typed there)."""

    def compiled_runner(self, kv_mode: str, prompt: torch.Tensor, new_tokens: int) -> Runner:
        """The generate function a `--compile` cell times, built (not yet traced) for these shapes."""
        raise ValueError(f"compile: engine {self.name} has no compiled form")


def engine_class(name: str) -> type[Engine]:
    """The engine's class; imports only that engine's module (transformers, ctranslate2 stay unloaded otherwise)."""
    if name not in ENGINES:
        raise ValueError(f"engine: {name!r} is not one of {', '.join(ENGINES)}")
    return importlib.import_module(f"kvbench.engines.{name}").ENGINE


def check(
    name: str, *, kv_mode: str, n_kv_head: int | None = None, attention: str = "sdpa", compile: bool = False
) -> None:
    engine_class(name).check(kv_mode=kv_mode, n_kv_head=n_kv_head, attention=attention, compile=compile)


def build(name: str, model: GPT) -> Engine:
    return engine_class(name)(model)


def compile_mode(device: torch.device) -> str:
    """CUDA graphs on a GPU (a step is one replay instead of hundreds of launches); inductor's default on a CPU."""
    return "reduce-overhead" if device.type == "cuda" else "default"
