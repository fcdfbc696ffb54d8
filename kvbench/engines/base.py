"""The engine interface: `Engine` (what runs a cell's generation on its own copy of the weights) and `Runner`
(the one call that runs a generation). Each engine is a file beside this one; registry.py picks them by name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar, Protocol

import torch

from kvbench.core.presets import KV_MODES, OWN_KV_HEADS_ENGINES
from kvbench.engines.generate import GREEDY, Generation, Sampling


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


def compile_mode(device: torch.device) -> str:
    """CUDA graphs on a GPU (a step is one replay instead of hundreds of launches); inductor's default on a CPU."""
    return "reduce-overhead" if device.type == "cuda" else "default"
